//! The mesh's certificates: the offline root, one intermediate issuer per cluster, and the
//! short-lived leaves those issuers sign for gateways, workloads and operators. Certificates are
//! dated from the `now` they are given; keeping them in files is the IO shell's business.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::identity::{ClusterName, SpiffeId, TrustDomain};

/// How long a root lives unless told otherwise.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a cluster intermediate lives unless told otherwise.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a workload or gateway leaf lives unless told otherwise.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this far in the past, so small clock skew between clusters is harmless.
const BACKDATE: Duration = Duration::from_secs(300);

/// What went wrong with certificates, keys or the files that hold them (`Read` and `Write` are
/// the IO shell's failures, named here so that every caller meets one error type).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("{0}")]
    Identity(String),
}

/// A certificate chain (leaf first) and its private key, as PEM text.
#[derive(Clone)]
pub struct Credential {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Credential {
    /// The chain as DER certificates, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        parse_certs(&self.chain_pem, Path::new("<credential>"))
    }

    /// The private key as DER.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| PkiError::Pem {
            path: PathBuf::from("<credential>"),
            what: format!("no usable private key: {e}"),
        })
    }
}

/// The cluster a cluster issuer's certificate (the first of a PEM chain) names in its
/// `spiffe://<trust domain>/cluster/<name>` URI; `path` names it in errors.
pub fn issuer_cluster(
    chain_pem: &str,
    path: &Path,
) -> Result<(TrustDomain, ClusterName), PkiError> {
    let certs = parse_certs(chain_pem, path)?;
    let uris = certs
        .first()
        .map(crate::certificate::uris_of)
        .unwrap_or_default();
    uris.iter()
        .find_map(|uri| {
            let (domain, cluster) = uri.strip_prefix("spiffe://")?.split_once("/cluster/")?;
            Some((
                TrustDomain::new(domain).ok()?,
                ClusterName::new(cluster).ok()?,
            ))
        })
        .ok_or_else(|| PkiError::Pem {
            path: path.to_owned(),
            what: "not a cluster issuer (no spiffe://<trust domain>/cluster/<name> URI)".into(),
        })
}

/// Parses every certificate of a PEM text.
pub fn parse_certs(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Pem {
        path: path.to_owned(),
        what: format!("bad certificate PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_owned(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn key_pair(pem: &str, path: &Path) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::Pem {
        path: path.to_owned(),
        what: format!("bad private key: {e}"),
    })
}

fn validity(params: &mut CertificateParams, lifetime: Duration, now: SystemTime) {
    let now = OffsetDateTime::from(now);
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn ca_params(common_name: &str, uri: String, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "strait");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Ok(uri) = uri.try_into() {
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    // Names alone cannot tell two roots of one trust domain apart (rotation): key ids can.
    params.use_authority_key_identifier_extension = true;
    params
}

fn key_ids(cert: &CertificateDer<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    use x509_parser::extensions::ParsedExtension;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return (None, None);
    };
    let (mut subject, mut authority) = (None, None);
    for extension in parsed.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            _ => {}
        }
    }
    (subject, authority)
}

/// The fingerprint of a certificate: `sha256:` and the hex digest of its DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// The mesh's root of trust. Its key is kept offline; it signs cluster issuers only.
pub struct Root {
    pub trust_domain: TrustDomain,
    pub cert_pem: String,
    key: KeyPair,
}

impl Root {
    /// Makes a new root for a trust domain, valid from `now` for `lifetime`.
    pub fn generate(
        trust_domain: &TrustDomain,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            &format!("strait root {trust_domain}"),
            format!("spiffe://{trust_domain}"),
            Some(1),
        );
        validity(&mut params, lifetime, now);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A root from its certificate and key as PEM text; `key_path` names the key in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        cert_pem: String,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<Self, PkiError> {
        Ok(Self {
            trust_domain,
            cert_pem,
            key: key_pair(key_pem, key_path)?,
        })
    }

    /// The private key as PEM (to keep it, owner-only, offline).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The root certificate as DER.
    pub fn cert(&self) -> Result<CertificateDer<'static>, PkiError> {
        Ok(parse_certs(&self.cert_pem, Path::new("root.crt"))?.remove(0))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// Signs the intermediate issuer of one cluster. Its SAN names the cluster, and verifiers
    /// accept from it only identities of that cluster.
    pub fn issue_cluster(
        &self,
        cluster: &ClusterName,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<ClusterIssuer, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            &format!("strait issuer {cluster}"),
            SpiffeId::cluster_uri(&self.trust_domain, cluster),
            Some(0),
        );
        validity(&mut params, lifetime, now);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(ClusterIssuer {
            trust_domain: self.trust_domain.clone(),
            cluster: cluster.clone(),
            chain_pem: cert.pem(),
            key,
        })
    }

    /// Signs a cluster's new issuer from a CSR its gateway made (a root rotation: the issuer's
    /// key never leaves the gateway). Only the CSR's public key is used. Returns the issuer's
    /// certificate as PEM.
    pub fn sign_cluster_csr(
        &self,
        csr_der: &[u8],
        cluster: &ClusterName,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = ca_params(
            &format!("strait issuer {cluster}"),
            SpiffeId::cluster_uri(&self.trust_domain, cluster),
            Some(0),
        );
        validity(&mut params, lifetime, now);
        Ok(params
            .signed_by(&request.public_key, &self.issuer()?)?
            .pem())
    }
}

/// A certificate as PEM text.
pub fn pem_of(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A cluster's intermediate CA: signs the leaves of its own cluster's gateway, workloads and
/// operators.
pub struct ClusterIssuer {
    pub trust_domain: TrustDomain,
    pub cluster: ClusterName,
    /// The intermediate certificate (PEM).
    pub chain_pem: String,
    key: KeyPair,
}

impl ClusterIssuer {
    /// An issuer from its chain and key as PEM text, checked to be the issuer of `cluster`;
    /// the paths name the two in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        cluster: ClusterName,
        chain_pem: String,
        cert_path: &Path,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<Self, PkiError> {
        let expected = SpiffeId::cluster_uri(&trust_domain, &cluster);
        let uris = crate::certificate::uris_of(&parse_certs(&chain_pem, cert_path)?[0]);
        if !uris.contains(&expected) {
            return Err(PkiError::Pem {
                path: cert_path.to_owned(),
                what: format!(
                    "this is the issuer of {}, not of cluster {cluster} ({expected})",
                    uris.first()
                        .and_then(|u| u.rsplit('/').next())
                        .map_or_else(|| "no cluster".to_owned(), |c| format!("cluster {c}"))
                ),
            });
        }
        Ok(Self {
            trust_domain,
            cluster,
            chain_pem,
            key: key_pair(key_pem, key_path)?,
        })
    }

    /// The private key as PEM (to keep it, owner-only).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn check_identity(&self, identity: &SpiffeId) -> Result<(), PkiError> {
        if identity.trust_domain() != &self.trust_domain || identity.cluster() != &self.cluster {
            return Err(PkiError::Identity(format!(
                "the issuer of cluster {} in {} cannot sign {identity}",
                self.cluster, self.trust_domain
            )));
        }
        Ok(())
    }

    fn leaf_params(
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "strait");
        name.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e| PkiError::Identity(format!("{identity}: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime, now);
        Ok(params)
    }

    /// Generates a key and a leaf for an identity of this cluster, valid from `now`.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Credential, PkiError> {
        self.check_identity(identity)?;
        self.issue_unchecked(identity, lifetime, now)
    }

    /// Signs any identity: only for tests that need a forged certificate.
    pub(crate) fn issue_unchecked(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let cert = Self::leaf_params(identity, lifetime, now)?
            .signed_by(&key, &Issuer::from_ca_cert_pem(&self.chain_pem, &self.key)?)?;
        Ok(Credential {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request for an identity the caller was authenticated as.
    /// Only the CSR's public key is used: the identity comes from the issuer's caller, never from
    /// the request. Returns the chain (leaf, intermediate) as PEM.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        self.check_identity(identity)?;
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| PkiError::Csr(e.to_string()))?;
        let cert = Self::leaf_params(identity, lifetime, now)?.signed_by(
            &request.public_key,
            &Issuer::from_ca_cert_pem(&self.chain_pem, &self.key)?,
        )?;
        Ok(format!("{}{}", cert.pem(), self.chain_pem))
    }
}

/// A cluster issuer's new key, waiting for the root to sign it (a root rotation).
pub struct PendingIssuer {
    pub trust_domain: TrustDomain,
    pub cluster: ClusterName,
    /// The certificate signing request for the key (DER).
    pub csr_der: Vec<u8>,
    key: KeyPair,
}

impl PendingIssuer {
    /// A fresh key for `cluster`'s issuer and its CSR.
    pub fn generate(trust_domain: TrustDomain, cluster: ClusterName) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let csr_der = CertificateParams::default()
            .serialize_request(&key)?
            .der()
            .to_vec();
        Ok(Self {
            trust_domain,
            cluster,
            csr_der,
            key,
        })
    }

    /// The issuer, once `cert_pem` (signed from the CSR) is checked to hold this key and to be
    /// the issuer of this cluster.
    pub fn install(&self, cert_pem: String) -> Result<ClusterIssuer, PkiError> {
        let path = Path::new("the new issuer certificate");
        let cert = parse_certs(&cert_pem, path)?.remove(0);
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| PkiError::Pem {
                path: path.to_owned(),
                what: e.to_string(),
            })?;
        if parsed.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&self.key)
        {
            return Err(PkiError::Pem {
                path: path.to_owned(),
                what: "it was not signed from this gateway's request (another key)".into(),
            });
        }
        ClusterIssuer::from_pem(
            self.trust_domain.clone(),
            self.cluster.clone(),
            cert_pem,
            path,
            &self.key.serialize_pem(),
            Path::new("the pending issuer key"),
        )
    }
}

/// Makes a fresh key and a certificate signing request for it (the identity is decided by the
/// issuer, not by the request). Returns (key PEM, CSR DER).
pub fn new_csr() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The roots a cluster trusts: one normally, two while a root is being rotated.
#[derive(Clone)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pem: String,
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle from the PEM text of one or more roots; `source` names it in errors.
    pub fn from_pem(trust_domain: TrustDomain, pem: &str, source: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            trust_domain,
            roots: parse_certs(pem, source)?,
            pem: pem.to_owned(),
        })
    }

    /// The bundle as PEM text.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The fingerprints of the roots (`sha256:...`).
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(fingerprint).collect()
    }

    /// Whether a root with this fingerprint is in the bundle.
    pub fn contains_fingerprint(&self, wanted: &str) -> bool {
        self.roots.iter().any(|root| fingerprint(root) == wanted)
    }

    /// The fingerprint of the root that issued a certificate (the last of a PEM chain), found by
    /// key identifier; `None` when no root of the bundle issued it.
    pub fn fingerprint_of_issuer(&self, chain_pem: &str) -> Option<String> {
        let chain = parse_certs(chain_pem, Path::new("<chain>")).ok()?;
        let (_, authority) = key_ids(chain.last()?);
        let authority = authority?;
        self.roots
            .iter()
            .find(|root| key_ids(root).0.as_ref() == Some(&authority))
            .map(fingerprint)
    }

    /// The roots as a rustls store.
    pub fn root_store(&self) -> Result<rustls::RootCertStore, PkiError> {
        let mut store = rustls::RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(|e| PkiError::Pem {
                path: PathBuf::from("<trust bundle>"),
                what: format!("root not usable as a trust anchor: {e}"),
            })?;
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> (Root, ClusterIssuer) {
        let td = TrustDomain::new("example.mesh").unwrap();
        let root = Root::generate(&td, ROOT_LIFETIME, SystemTime::now()).unwrap();
        let issuer = root
            .issue_cluster(
                &ClusterName::new("west").unwrap(),
                ISSUER_LIFETIME,
                SystemTime::now(),
            )
            .unwrap();
        (root, issuer)
    }

    #[test]
    fn an_issuer_signs_only_its_own_cluster() {
        let (root, issuer) = mesh();
        let own = SpiffeId::gateway(&root.trust_domain, &issuer.cluster);
        assert!(issuer.issue(&own, LEAF_LIFETIME, SystemTime::now()).is_ok());
        let other = SpiffeId::gateway(&root.trust_domain, &ClusterName::new("east").unwrap());
        let err = issuer
            .issue(&other, LEAF_LIFETIME, SystemTime::now())
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot sign"), "{err}");
    }

    #[test]
    fn a_csr_gets_the_identity_of_the_issuer_not_of_the_request() {
        let (root, issuer) = mesh();
        let (_key, csr) = new_csr().unwrap();
        let id = SpiffeId::gateway(&root.trust_domain, &issuer.cluster);
        let chain = issuer
            .sign_csr(&csr, &id, LEAF_LIFETIME, SystemTime::now())
            .unwrap();
        let certs = parse_certs(&chain, Path::new("x")).unwrap();
        assert_eq!(certs.len(), 2, "leaf and intermediate");
        let ids = crate::certificate::identities_of(&certs[0]).unwrap();
        assert_eq!(ids, vec![id]);
        assert!(
            issuer
                .sign_csr(b"garbage", &ids[0], LEAF_LIFETIME, SystemTime::now())
                .is_err()
        );
    }

    #[test]
    fn bundles_round_trip_through_pem_and_know_their_fingerprints() {
        let (root, _) = mesh();
        let bundle =
            TrustBundle::from_pem(root.trust_domain.clone(), &root.cert_pem, Path::new("b"))
                .unwrap();
        let again = parse_certs(bundle.to_pem(), Path::new("bundle.pem")).unwrap();
        assert_eq!(again, bundle.roots());
        assert!(bundle.contains_fingerprint(&fingerprint(&root.cert().unwrap())));
        assert!(!bundle.contains_fingerprint("sha256:00"));
    }

    #[test]
    fn the_issuing_root_is_found_among_roots_of_the_same_name() {
        let (old, issuer) = mesh();
        let new = Root::generate(&old.trust_domain, ROOT_LIFETIME, SystemTime::now()).unwrap();
        let both = format!("{}{}", new.cert_pem, old.cert_pem);
        let bundle =
            TrustBundle::from_pem(old.trust_domain.clone(), &both, Path::new("b")).unwrap();
        assert_eq!(
            bundle.fingerprint_of_issuer(&issuer.chain_pem),
            Some(fingerprint(&old.cert().unwrap()))
        );
        let alone =
            TrustBundle::from_pem(old.trust_domain.clone(), &new.cert_pem, Path::new("b")).unwrap();
        assert_eq!(alone.fingerprint_of_issuer(&issuer.chain_pem), None);
    }

    #[test]
    fn a_new_root_signs_a_clusters_issuer_from_its_request_and_only_for_that_key() {
        let (old, _) = mesh();
        let new = Root::generate(&old.trust_domain, ROOT_LIFETIME, SystemTime::now()).unwrap();
        let west = ClusterName::new("west").unwrap();
        let pending = PendingIssuer::generate(old.trust_domain.clone(), west.clone()).unwrap();
        let cert = new
            .sign_cluster_csr(&pending.csr_der, &west, ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        let issuer = pending.install(cert).unwrap();
        let bundle =
            TrustBundle::from_pem(old.trust_domain.clone(), &new.cert_pem, Path::new("b")).unwrap();
        assert_eq!(
            bundle.fingerprint_of_issuer(&issuer.chain_pem),
            Some(fingerprint(&new.cert().unwrap()))
        );
        let leaf = issuer
            .issue(
                &SpiffeId::gateway(&old.trust_domain, &west),
                LEAF_LIFETIME,
                SystemTime::now(),
            )
            .unwrap();
        assert!(leaf.chain().unwrap().len() == 2);
        // A certificate signed from another request does not install.
        let other = PendingIssuer::generate(old.trust_domain.clone(), west.clone()).unwrap();
        let foreign = new
            .sign_cluster_csr(&other.csr_der, &west, ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        let err = pending.install(foreign).err().unwrap();
        assert!(err.to_string().contains("another key"), "{err}");
        // Nor one for another cluster.
        let east = new
            .sign_cluster_csr(
                &pending.csr_der,
                &ClusterName::new("east").unwrap(),
                ISSUER_LIFETIME,
                SystemTime::now(),
            )
            .unwrap();
        let err = pending.install(east).err().unwrap();
        assert!(err.to_string().contains("not of cluster west"), "{err}");
    }

    #[test]
    fn an_issuer_of_another_cluster_is_not_taken_as_ours() {
        let (root, issuer) = mesh();
        let east = ClusterName::new("east").unwrap();
        let err = ClusterIssuer::from_pem(
            root.trust_domain.clone(),
            east,
            issuer.chain_pem.clone(),
            Path::new("issuer.crt"),
            &issuer.key_pem(),
            Path::new("issuer.key"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("issuer of cluster west"), "{err}");
    }

    #[test]
    fn a_root_rebuilt_from_its_pem_still_signs() {
        let (root, _) = mesh();
        let loaded = Root::from_pem(
            root.trust_domain.clone(),
            root.cert_pem.clone(),
            &root.key_pem(),
            Path::new("root.key"),
        )
        .unwrap();
        assert_eq!(loaded.cert_pem, root.cert_pem);
        assert!(
            loaded
                .issue_cluster(
                    &ClusterName::new("east").unwrap(),
                    ISSUER_LIFETIME,
                    SystemTime::now()
                )
                .is_ok()
        );
    }
}

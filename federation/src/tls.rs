//! rustls configurations for the mesh: verify a peer's chain to the trust bundle, then its SPIFFE
//! identity: the role it must play, the cluster it must belong to, and that it was signed by that
//! cluster's own issuer. ring is the only crypto provider.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::certificate::{peer_identity, uris_of};
use crate::identity::{ClusterName, Namespace, Role, SpiffeId};
use crate::pki::{Credential, PkiError, TrustBundle};

/// The ALPN of the gateway-to-gateway protocol.
pub const PEER_ALPN: &[u8] = b"strait/1";

/// The ALPN of a gateway's API (gRPC).
pub const API_ALPN: &[u8] = b"h2";

/// The one crypto provider of strait (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide provider, for libraries that build their own configs.
/// Harmless when called twice.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Which peers a configuration accepts.
#[derive(Debug, Clone)]
pub struct PeerRule {
    /// Roles accepted.
    pub roles: Vec<Role>,
    /// When set, only identities of this cluster.
    pub cluster: Option<ClusterName>,
    /// When set, only workloads of this namespace (the namespace of the service being called:
    /// a service is served by workloads of its own namespace, in every cluster).
    pub namespace: Option<Namespace>,
}

impl PeerRule {
    /// Accept one role from any cluster.
    pub fn role(role: Role) -> Self {
        Self {
            roles: vec![role],
            cluster: None,
            namespace: None,
        }
    }

    /// Accept workloads of one namespace, from any cluster.
    pub fn workloads_in(namespace: Namespace) -> Self {
        Self {
            roles: vec![Role::Workload],
            cluster: None,
            namespace: Some(namespace),
        }
    }

    /// Accept one role from one cluster.
    pub fn role_in(role: Role, cluster: ClusterName) -> Self {
        Self {
            roles: vec![role],
            cluster: Some(cluster),
            namespace: None,
        }
    }
}

#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

fn refuse(reason: String) -> rustls::Error {
    tracing::warn!(reason = %reason, "peer certificate refused");
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refusal(reason)),
    )))
}

/// Checks, after the chain was verified, that the identity fits the rule and that the single
/// intermediate is the issuer of the identity's own cluster.
fn check_identity(
    bundle: &TrustBundle,
    rule: &PeerRule,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<SpiffeId, rustls::Error> {
    let id = peer_identity(std::slice::from_ref(end_entity)).map_err(|e| refuse(e.to_string()))?;
    if id.trust_domain() != &bundle.trust_domain {
        return Err(refuse(format!(
            "{id} is not in trust domain {}",
            bundle.trust_domain
        )));
    }
    if !rule.roles.contains(&id.role()) {
        return Err(refuse(format!(
            "{id} is a {} identity; expected {}",
            id.role(),
            rule.roles
                .iter()
                .map(Role::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    if let Some(cluster) = &rule.cluster
        && id.cluster() != cluster
    {
        return Err(refuse(format!(
            "{id} belongs to cluster {}; expected cluster {cluster}",
            id.cluster()
        )));
    }
    if let Some(namespace) = &rule.namespace {
        match &id {
            SpiffeId::Workload {
                namespace: theirs, ..
            } if theirs == namespace => {}
            _ => {
                return Err(refuse(format!(
                    "{id} is not a workload of namespace {namespace}"
                )));
            }
        }
    }
    let [intermediate] = intermediates else {
        return Err(refuse(format!(
            "{id} came with {} intermediate certificates; expected exactly its cluster's issuer",
            intermediates.len()
        )));
    };
    let expected = SpiffeId::cluster_uri(id.trust_domain(), id.cluster());
    if !uris_of(intermediate).contains(&expected) {
        return Err(refuse(format!(
            "{id} was not signed by the issuer of cluster {}",
            id.cluster()
        )));
    }
    Ok(id)
}

/// Verifies servers (used by dialers): chain to the bundle, then the identity rule.
#[derive(Debug)]
struct MeshServerVerifier {
    trust: TrustStore,
    rule: PeerRule,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.fingerprints())
            .finish()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let trusted = self.trust.get();
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &trusted.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_identity(&trusted.bundle, &self.rule, end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies clients (used by servers): webpki's chain check, then the identity rule.
#[derive(Debug)]
struct MeshClientVerifier {
    trust: TrustStore,
    rule: PeerRule,
    /// Whether a client without a certificate is refused at the handshake.
    mandatory: bool,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the roots change during a rotation, and strait's clients present their one
        // certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trusted = self.trust.get();
        trusted
            .verifier(self.mandatory)
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(&trusted.bundle, &self.rule, end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .get()
            .verifier(self.mandatory)
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .get()
            .verifier(self.mandatory)
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust
            .get()
            .verifier(self.mandatory)
            .supported_verify_schemes()
    }
}

/// The trust bundle a process verifies peers with, replaceable while connections are live (a
/// root rotation): every configuration built from one store verifies each new handshake with
/// the bundle it holds then. Established connections keep the trust they were made with.
#[derive(Clone)]
pub struct TrustStore {
    current: Arc<RwLock<Arc<Trusted>>>,
}

/// One bundle, with what verifying against it needs, built once per bundle.
struct Trusted {
    bundle: TrustBundle,
    roots: Arc<rustls::RootCertStore>,
    /// webpki's client verifiers: certificates required, and optional.
    required: Arc<dyn ClientCertVerifier>,
    optional: Arc<dyn ClientCertVerifier>,
}

impl Trusted {
    fn verifier(&self, mandatory: bool) -> &Arc<dyn ClientCertVerifier> {
        if mandatory {
            &self.required
        } else {
            &self.optional
        }
    }

    fn new(bundle: TrustBundle) -> Result<Arc<Self>, TlsError> {
        let roots = Arc::new(bundle.root_store()?);
        let builder = || WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        Ok(Arc::new(Self {
            required: builder().build()?,
            optional: builder().allow_unauthenticated().build()?,
            roots,
            bundle,
        }))
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustStore").field(&self.bundle()).finish()
    }
}

impl TrustStore {
    /// A store holding `bundle`.
    pub fn new(bundle: TrustBundle) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Trusted::new(bundle)?)),
        })
    }

    /// Verifies new handshakes with `bundle` from now on.
    pub fn replace(&self, bundle: TrustBundle) -> Result<(), TlsError> {
        let trusted = Trusted::new(bundle)?;
        match self.current.write() {
            Ok(mut current) => *current = trusted,
            Err(poisoned) => *poisoned.into_inner() = trusted,
        }
        Ok(())
    }

    /// The bundle in force.
    pub fn bundle(&self) -> TrustBundle {
        self.get().bundle.clone()
    }

    fn get(&self) -> Arc<Trusted> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The certificate a process presents, replaceable while connections are live (renewal).
#[derive(Debug, Clone)]
pub struct CertStore {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl CertStore {
    /// A store holding one credential.
    pub fn new(credential: &Credential) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(certified_key(credential)?)),
        })
    }

    /// Presents a new credential from now on; live connections keep theirs.
    pub fn replace(&self, credential: &Credential) -> Result<(), TlsError> {
        let key = certified_key(credential)?;
        match self.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    /// The leaf certificate presented now.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.get().cert.first().cloned()
    }

    /// The chain presented now (leaf, issuer).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.get().cert.clone()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn certified_key(credential: &Credential) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = credential.chain()?;
    let key = provider()
        .key_provider
        .load_private_key(credential.key()?)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS 1.3 server configuration requiring client certificates that fit `rule`.
pub fn server_config(
    trust: &TrustStore,
    certs: &CertStore,
    rule: PeerRule,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(trust, certs, rule, alpn, true)
}

/// A TLS 1.3 server configuration where a client certificate is optional, but one presented
/// must fit `rule`. The server then decides per request what an anonymous client may do.
pub fn server_config_optional_client(
    trust: &TrustStore,
    certs: &CertStore,
    rule: PeerRule,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(trust, certs, rule, alpn, false)
}

fn server_config_with(
    trust: &TrustStore,
    certs: &CertStore,
    rule: PeerRule,
    alpn: &[&[u8]],
    mandatory: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = MeshClientVerifier {
        trust: trust.clone(),
        rule,
        mandatory,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(certs.clone()));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 client configuration that presents `certs` and accepts servers fitting `rule`.
pub fn client_config(
    trust: &TrustStore,
    certs: &CertStore,
    rule: PeerRule,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(trust, Some(certs), rule, alpn)
}

/// A TLS 1.3 client configuration without a certificate of its own (a sidecar asking for its
/// first one), accepting servers fitting `rule`.
pub fn anonymous_client_config(
    trust: &TrustStore,
    rule: PeerRule,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(trust, None, rule, alpn)
}

fn client_config_with(
    trust: &TrustStore,
    certs: Option<&CertStore>,
    rule: PeerRule,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = MeshServerVerifier {
        trust: trust.clone(),
        rule,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match certs {
        Some(certs) => config.with_client_cert_resolver(Arc::new(certs.clone())),
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::identity::{AccountName, Namespace, TrustDomain};
    use crate::pki::{ISSUER_LIFETIME, LEAF_LIFETIME, Root};
    use std::path::Path;

    struct Mesh {
        bundle: TrustBundle,
        root: Root,
    }

    fn mesh() -> Mesh {
        let td = TrustDomain::new("example.mesh").unwrap();
        let root = Root::generate(&td, crate::pki::ROOT_LIFETIME, SystemTime::now()).unwrap();
        let bundle = TrustBundle::from_pem(td, &root.cert_pem, Path::new("root")).unwrap();
        Mesh { bundle, root }
    }

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn credential(root: &Root, issuer_cluster: &str, id: &SpiffeId) -> Credential {
        let issuer = root
            .issue_cluster(&cluster(issuer_cluster), ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        issuer.issue(id, LEAF_LIFETIME, SystemTime::now()).unwrap()
    }

    /// Runs a real TLS handshake in memory and returns the server's verdict on the client and
    /// the client's verdict on the server.
    fn handshake(
        bundle_server: &TrustBundle,
        server: &Credential,
        server_rule: PeerRule,
        bundle_client: &TrustBundle,
        client: &Credential,
        client_rule: PeerRule,
    ) -> Result<(), rustls::Error> {
        handshake_live(
            &TrustStore::new(bundle_server.clone()).unwrap(),
            server,
            server_rule,
            &TrustStore::new(bundle_client.clone()).unwrap(),
            client,
            client_rule,
        )
    }

    /// [`handshake`] with trust stores that the caller may replace between handshakes.
    fn handshake_live(
        trust_server: &TrustStore,
        server: &Credential,
        server_rule: PeerRule,
        trust_client: &TrustStore,
        client: &Credential,
        client_rule: PeerRule,
    ) -> Result<(), rustls::Error> {
        let server_config = server_config(
            trust_server,
            &CertStore::new(server).unwrap(),
            server_rule,
            &[PEER_ALPN],
        )
        .unwrap();
        let client_config = client_config(
            trust_client,
            &CertStore::new(client).unwrap(),
            client_rule,
            &[PEER_ALPN],
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut c = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("west").unwrap(),
        )
        .unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn gateway(m: &Mesh, c: &str) -> SpiffeId {
        SpiffeId::gateway(&m.bundle.trust_domain, &cluster(c))
    }

    #[test]
    fn two_gateways_of_one_root_accept_each_other() {
        let m = mesh();
        let west = credential(&m.root, "west", &gateway(&m, "west"));
        let east = credential(&m.root, "east", &gateway(&m, "east"));
        handshake(
            &m.bundle,
            &west,
            PeerRule::role(Role::Gateway),
            &m.bundle,
            &east,
            PeerRule::role_in(Role::Gateway, cluster("west")),
        )
        .unwrap();
    }

    #[test]
    fn a_workload_certificate_is_not_accepted_as_a_gateway() {
        let m = mesh();
        let west = credential(&m.root, "west", &gateway(&m, "west"));
        let workload = SpiffeId::Workload {
            trust_domain: m.bundle.trust_domain.clone(),
            cluster: cluster("east"),
            namespace: Namespace::new("shop").unwrap(),
            service_account: AccountName::new("api").unwrap(),
        };
        let east = credential(&m.root, "east", &workload);
        let err = handshake(
            &m.bundle,
            &west,
            PeerRule::role(Role::Gateway),
            &m.bundle,
            &east,
            PeerRule::role(Role::Gateway),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected gateway"), "{err}");
    }

    #[test]
    fn a_peer_under_another_root_is_refused() {
        let m = mesh();
        let other = mesh();
        let west = credential(&m.root, "west", &gateway(&m, "west"));
        let east = credential(&other.root, "east", &gateway(&other, "east"));
        assert!(
            handshake(
                &m.bundle,
                &west,
                PeerRule::role(Role::Gateway),
                &other.bundle,
                &east,
                PeerRule::role(Role::Gateway),
            )
            .is_err()
        );
    }

    #[test]
    fn a_dialer_refuses_a_gateway_of_another_cluster_than_expected() {
        let m = mesh();
        let west = credential(&m.root, "west", &gateway(&m, "west"));
        let east = credential(&m.root, "east", &gateway(&m, "east"));
        let err = handshake(
            &m.bundle,
            &west,
            PeerRule::role(Role::Gateway),
            &m.bundle,
            &east,
            PeerRule::role_in(Role::Gateway, cluster("north")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected cluster north"), "{err}");
    }

    #[test]
    fn a_caller_accepts_only_a_server_of_the_called_services_namespace() {
        let m = mesh();
        let workload = |cluster_name: &str, namespace: &str| {
            let id = SpiffeId::Workload {
                trust_domain: m.bundle.trust_domain.clone(),
                cluster: cluster(cluster_name),
                namespace: Namespace::new(namespace).unwrap(),
                service_account: AccountName::new("app").unwrap(),
            };
            credential(&m.root, cluster_name, &id)
        };
        let caller = workload("east", "shop");
        let shop = PeerRule::workloads_in(Namespace::new("shop").unwrap());
        // The same namespace, in another cluster: accepted.
        handshake(
            &m.bundle,
            &workload("west", "shop"),
            PeerRule::role(Role::Workload),
            &m.bundle,
            &caller,
            shop.clone(),
        )
        .unwrap();
        // Any other workload answering for shop's service: refused.
        let err = handshake(
            &m.bundle,
            &workload("west", "billing"),
            PeerRule::role(Role::Workload),
            &m.bundle,
            &caller,
            shop,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not a workload of namespace shop"),
            "{err}"
        );
    }

    #[test]
    fn one_clusters_issuer_cannot_vouch_for_another_clusters_identity() {
        let m = mesh();
        let west = credential(&m.root, "west", &gateway(&m, "west"));
        // A leaf for east's gateway, but signed by west's issuer and sent with east's issuer.
        // West's issuer signs a leaf claiming east's gateway identity.
        let west_issuer = m
            .root
            .issue_cluster(&cluster("west"), ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        let forged = west_issuer
            .issue_unchecked(&gateway(&m, "east"), LEAF_LIFETIME, SystemTime::now())
            .unwrap();
        assert!(
            handshake(
                &m.bundle,
                &west,
                PeerRule::role(Role::Gateway),
                &m.bundle,
                &forged,
                PeerRule::role(Role::Gateway),
            )
            .is_err()
        );
    }

    /// A second root of the mesh's trust domain: (the root, a bundle of it alone, a bundle of
    /// both roots).
    fn second_root(old: &Mesh) -> (Root, TrustBundle, TrustBundle) {
        let root = Root::generate(
            &old.bundle.trust_domain,
            crate::pki::ROOT_LIFETIME,
            SystemTime::now(),
        )
        .unwrap();
        let bundle = |pem: &str| {
            TrustBundle::from_pem(old.bundle.trust_domain.clone(), pem, Path::new("bundle"))
                .unwrap()
        };
        let alone = bundle(&root.cert_pem);
        let both = bundle(&format!("{}{}", old.root.cert_pem, root.cert_pem));
        (root, alone, both)
    }

    #[test]
    fn a_bundle_with_two_roots_accepts_peers_of_either() {
        let old = mesh();
        let (new_root, _, both) = second_root(&old);
        let west = credential(&old.root, "west", &gateway(&old, "west"));
        let east = credential(&new_root, "east", &gateway(&old, "east"));
        handshake(
            &both,
            &west,
            PeerRule::role(Role::Gateway),
            &both,
            &east,
            PeerRule::role(Role::Gateway),
        )
        .unwrap();
    }

    #[test]
    fn a_replaced_bundle_holds_for_the_next_handshake_of_configurations_already_built() {
        let old = mesh();
        let (new_root, only_new, both) = second_root(&old);
        let west = credential(&old.root, "west", &gateway(&old, "west"));
        let east = credential(&new_root, "east", &gateway(&old, "east"));
        let (trust_west, trust_east) = (
            TrustStore::new(old.bundle.clone()).unwrap(),
            TrustStore::new(both.clone()).unwrap(),
        );
        let rule = || PeerRule::role(Role::Gateway);
        // West knows only the old root: east, under the new one, is refused.
        assert!(handshake_live(&trust_west, &west, rule(), &trust_east, &east, rule()).is_err());
        // Stage (a): west adds the new root.
        trust_west.replace(both.clone()).unwrap();
        handshake_live(&trust_west, &west, rule(), &trust_east, &east, rule()).unwrap();
        assert_eq!(trust_west.bundle().fingerprints(), both.fingerprints());
        // Stage (c) too early: the old root retired while west's certificate is under it.
        trust_east.replace(only_new).unwrap();
        assert!(handshake_live(&trust_west, &west, rule(), &trust_east, &east, rule()).is_err());
    }
}

//! The gateway's trust, live: the bundle it verifies peers, operators and workloads with, and
//! its cluster's issuer. A root rotation replaces both without a restart: new handshakes use
//! the new bundle at once, and the issuer is re-keyed from a request whose key never leaves the
//! gateway. What a rotation changed is kept in `stateDir/trust/` and read before the
//! credentials folder (which Kubernetes mounts read-only). It also knows which of its
//! workloads still hold a certificate of an earlier issuer, so a root is retired only once none
//! does. See docs/trust.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use strait_federation::identity::SpiffeId;
use strait_federation::pki::{ClusterIssuer, PendingIssuer, PkiError, TrustBundle};
use strait_federation::tls::{TlsError, TrustStore};

use crate::config::GatewayConfig;
use crate::lock;

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Refused(String),
}

/// The bundle and issuer in force, and the rotation in progress.
pub struct Trust {
    store: TrustStore,
    issuer: RwLock<InForce>,
    pending: Mutex<Option<PendingIssuer>>,
    /// Workload identities watching this gateway: how many sidecars, and the fingerprint of the
    /// issuer that signed their certificate (as last seen).
    workloads: Mutex<HashMap<SpiffeId, Holder>>,
    dir: PathBuf,
}

/// The issuer in force and its fingerprint, found once per issuer (views and `Status` name
/// it, and every certification compares against it).
struct InForce {
    issuer: Arc<ClusterIssuer>,
    fingerprint: String,
}

impl InForce {
    fn new(issuer: ClusterIssuer) -> Self {
        Self {
            fingerprint: issuer_fingerprint(&issuer.chain_pem).unwrap_or_default(),
            issuer: Arc::new(issuer),
        }
    }
}

#[derive(Debug, Default)]
struct Holder {
    watching: usize,
    issuer: String,
}

/// Where a rotation keeps what it changed.
pub fn rotated_dir(config: &GatewayConfig) -> PathBuf {
    config.state_dir.join("trust")
}

/// The file of a trust folder that counts its rotations.
pub const GENERATION: &str = "generation";

/// The rotation generation of the trust files in `dir`: 0 for the credentials as `strait trust
/// issue` wrote them, one more for each change an operator made since, on any replica. A
/// replica takes the credentials Secret's files when they are of a later generation than its
/// own, and writes its own into the Secret when they are of a later one.
pub fn generation_of(dir: &Path) -> u64 {
    std::fs::read(dir.join(GENERATION)).map_or(0, |bytes| parse_generation(&bytes))
}

/// A generation as its file (or a Secret's key) holds it: 0 when it is not a number.
pub fn parse_generation(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The bundle and issuer to start with: a rotation's, else the credentials folder's.
pub fn load(config: &GatewayConfig) -> Result<(TrustBundle, ClusterIssuer), PkiError> {
    let rotated = rotated_dir(config);
    let bundle_dir = if rotated.join("bundle.pem").exists() {
        rotated.clone()
    } else {
        config.credentials().to_owned()
    };
    let issuer_dir = if rotated.join("issuer.key").exists() {
        rotated
    } else {
        config.credentials().to_owned()
    };
    let bundle =
        strait_io::pki::read_bundle(&bundle_dir.join("bundle.pem"), config.trust_domain.clone())?;
    let issuer = strait_io::pki::load_issuer(
        &issuer_dir,
        config.trust_domain.clone(),
        config.cluster.clone(),
    )?;
    Ok((bundle, issuer))
}

/// The fingerprint of the issuer certificate in a chain (leaf, issuer) or of a lone issuer.
pub fn issuer_fingerprint(chain_pem: &str) -> Option<String> {
    let certs = strait_federation::pki::parse_certs(chain_pem, Path::new("chain")).ok()?;
    certs
        .get(1)
        .or_else(|| certs.first())
        .map(strait_federation::pki::fingerprint)
}

impl Trust {
    /// Trust in force from `bundle` and `issuer`; rotations write into `dir`.
    pub fn new(bundle: TrustBundle, issuer: ClusterIssuer, dir: PathBuf) -> Result<Self, TlsError> {
        Ok(Self {
            store: TrustStore::new(bundle)?,
            issuer: RwLock::new(InForce::new(issuer)),
            pending: Mutex::new(None),
            workloads: Mutex::new(HashMap::new()),
            dir,
        })
    }

    /// The live store TLS configurations verify with.
    pub fn store(&self) -> &TrustStore {
        &self.store
    }

    /// The bundle in force.
    pub fn bundle(&self) -> TrustBundle {
        self.store.bundle()
    }

    fn in_force<T>(&self, read: impl FnOnce(&InForce) -> T) -> T {
        match self.issuer.read() {
            Ok(in_force) => read(&in_force),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// The issuer in force.
    pub fn issuer(&self) -> Arc<ClusterIssuer> {
        self.in_force(|in_force| in_force.issuer.clone())
    }

    /// The fingerprint of the issuer in force.
    pub fn issuer_fingerprint(&self) -> String {
        self.in_force(|in_force| in_force.fingerprint.clone())
    }

    /// Replaces the bundle: refused when the issuer would not chain to it, or when it drops a
    /// root while workloads still hold certificates of an earlier issuer. Written before it is
    /// used. Returns whether it changed.
    pub fn replace_bundle(&self, bundle: TrustBundle) -> Result<bool, TrustError> {
        let current = self.bundle();
        if current.to_pem() == bundle.to_pem() {
            return Ok(false);
        }
        let issuer = self.issuer();
        if bundle.fingerprint_of_issuer(&issuer.chain_pem).is_none() {
            return Err(TrustError::Refused(format!(
                "this gateway's issuer (cluster {}) chains to none of these roots: install an issuer under one of them first (strait trust rotate reissue)",
                issuer.cluster
            )));
        }
        let dropped: Vec<String> = current
            .fingerprints()
            .into_iter()
            .filter(|f| !bundle.contains_fingerprint(f))
            .collect();
        let awaiting = self.awaiting_renewal();
        if !dropped.is_empty() && awaiting > 0 {
            return Err(TrustError::Refused(format!(
                "{awaiting} workload identities still hold a certificate of an earlier issuer: retiring {} now would cut them off; wait until they renew (strait check shows how many are left)",
                dropped.join(", ")
            )));
        }
        strait_io::files::write_file(&self.dir.join("bundle.pem"), bundle.to_pem(), false)?;
        self.store.replace(bundle)?;
        Ok(true)
    }

    /// Records the generation of the trust in force (written beside its files).
    pub fn set_generation(&self, generation: u64) -> Result<(), TrustError> {
        strait_io::files::write_file(
            &self.dir.join(GENERATION),
            &format!("{generation}\n"),
            false,
        )?;
        Ok(())
    }

    /// A request for a new issuer key: the same one until an issuer is installed.
    pub fn issuer_request(&self) -> Result<Vec<u8>, TrustError> {
        let mut pending = lock(&self.pending);
        if let Some(pending) = pending.as_ref() {
            return Ok(pending.csr_der.clone());
        }
        let issuer = self.issuer();
        let made = PendingIssuer::generate(issuer.trust_domain.clone(), issuer.cluster.clone())?;
        let csr = made.csr_der.clone();
        *pending = Some(made);
        Ok(csr)
    }

    /// Installs the issuer signed from the pending request, once it chains to the bundle.
    /// Written before it is used. Returns the root it chains to.
    pub fn install_issuer(&self, certificate_pem: String) -> Result<String, TrustError> {
        let mut pending = lock(&self.pending);
        let Some(request) = pending.as_ref() else {
            return Err(TrustError::Refused(
                "no issuer request is pending on this gateway: ask for one first (CreateIssuerRequest)".into(),
            ));
        };
        let issuer = request.install(certificate_pem)?;
        let root = self.put_in_force(issuer)?;
        *pending = None;
        Ok(root)
    }

    /// Puts an issuer another replica installed (read from the credentials folder) in force,
    /// once it chains to the bundle. Written before it is used. Returns the root it chains
    /// to, or `None` when it is the issuer in force already.
    pub fn adopt_issuer(&self, issuer: ClusterIssuer) -> Result<Option<String>, TrustError> {
        if issuer_fingerprint(&issuer.chain_pem).as_deref() == Some(&self.issuer_fingerprint()) {
            return Ok(None);
        }
        self.put_in_force(issuer).map(Some)
    }

    fn put_in_force(&self, issuer: ClusterIssuer) -> Result<String, TrustError> {
        let root = self
            .bundle()
            .fingerprint_of_issuer(&issuer.chain_pem)
            .ok_or_else(|| {
                TrustError::Refused(
                    "the new issuer chains to no root of this gateway's bundle: add its root first (strait trust rotate add)".into(),
                )
            })?;
        strait_io::pki::save_issuer(&issuer, &self.dir)?;
        let in_force = InForce::new(issuer);
        match self.issuer.write() {
            Ok(mut current) => *current = in_force,
            Err(poisoned) => *poisoned.into_inner() = in_force,
        }
        Ok(root)
    }

    /// A sidecar of `identity` started watching with a certificate signed by `issuer` (its
    /// connection's, by fingerprint); the returned guard counts it until the watch ends.
    pub fn watching(self: &Arc<Self>, identity: SpiffeId, issuer: Option<String>) -> Watching {
        let mut workloads = lock(&self.workloads);
        let holder = workloads.entry(identity.clone()).or_default();
        holder.watching += 1;
        if let Some(issuer) = issuer
            && holder.issuer.is_empty()
        {
            holder.issuer = issuer;
        }
        Watching {
            trust: self.clone(),
            identity,
        }
    }

    /// `identity` was just certified by the issuer in force.
    pub fn certified(&self, identity: &SpiffeId) {
        let issuer = self.issuer_fingerprint();
        if let Some(holder) = lock(&self.workloads).get_mut(identity) {
            holder.issuer = issuer;
        }
    }

    /// Watching identities whose certificate an earlier issuer signed.
    pub fn awaiting_renewal(&self) -> u32 {
        let issuer = self.issuer_fingerprint();
        let count = lock(&self.workloads)
            .values()
            .filter(|h| h.watching > 0 && h.issuer != issuer)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

/// A sidecar's watch, counted while it lasts.
pub struct Watching {
    trust: Arc<Trust>,
    identity: SpiffeId,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut workloads = lock(&self.trust.workloads);
        if let Some(holder) = workloads.get_mut(&self.identity) {
            holder.watching = holder.watching.saturating_sub(1);
            if holder.watching == 0 {
                workloads.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use strait_federation::identity::{ClusterName, TrustDomain};
    use strait_federation::pki::{ISSUER_LIFETIME, ROOT_LIFETIME, Root, fingerprint};

    use super::*;

    struct Rotation {
        old: Root,
        new: Root,
        trust: Arc<Trust>,
        dir: tempfile::TempDir,
    }

    fn bundle(roots: &[&Root]) -> TrustBundle {
        let pem: String = roots.iter().map(|r| r.cert_pem.as_str()).collect();
        TrustBundle::from_pem(roots[0].trust_domain.clone(), &pem, Path::new("b")).unwrap()
    }

    fn rotation() -> Rotation {
        let domain = TrustDomain::new("example.mesh").unwrap();
        let old = Root::generate(&domain, ROOT_LIFETIME, SystemTime::now()).unwrap();
        let new = Root::generate(&domain, ROOT_LIFETIME, SystemTime::now()).unwrap();
        let west = ClusterName::new("west").unwrap();
        let issuer = old
            .issue_cluster(&west, ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(Trust::new(bundle(&[&old]), issuer, dir.path().to_owned()).unwrap());
        Rotation {
            old,
            new,
            trust,
            dir,
        }
    }

    fn workload(name: &str) -> SpiffeId {
        format!("spiffe://example.mesh/cluster/west/ns/shop/sa/{name}")
            .parse()
            .unwrap()
    }

    #[test]
    fn a_rotation_goes_through_its_stages_and_each_is_written_before_it_holds() {
        let Rotation {
            old,
            new,
            trust,
            dir,
        } = rotation();
        // A workload watching with a certificate of the issuer in force.
        let web = trust.watching(workload("web"), Some(trust.issuer_fingerprint()));
        assert_eq!(trust.awaiting_renewal(), 0);

        // The new root alone is refused: the issuer would chain to nothing.
        let refused = trust.replace_bundle(bundle(&[&new])).unwrap_err();
        assert!(refused.to_string().contains("chains to none"), "{refused}");
        // (a) both roots.
        assert!(trust.replace_bundle(bundle(&[&old, &new])).unwrap());
        assert!(!trust.replace_bundle(bundle(&[&old, &new])).unwrap());
        assert!(dir.path().join("bundle.pem").exists());

        // (b) a new issuer from the gateway's own request; the same request until installed.
        let csr = trust.issuer_request().unwrap();
        assert_eq!(trust.issuer_request().unwrap(), csr);
        let west = ClusterName::new("west").unwrap();
        let cert = new
            .sign_cluster_csr(&csr, &west, ISSUER_LIFETIME, SystemTime::now())
            .unwrap();
        let root = trust.install_issuer(cert.clone()).unwrap();
        assert_eq!(root, fingerprint(&new.cert().unwrap()));
        assert!(trust.install_issuer(cert).is_err(), "installed twice");
        assert!(dir.path().join("issuer.key").exists());
        // The workload still holds the old issuer's certificate: the old root stays.
        assert_eq!(trust.awaiting_renewal(), 1);
        let early = trust.replace_bundle(bundle(&[&new])).unwrap_err();
        assert!(
            early.to_string().contains("1 workload identities"),
            "{early}"
        );

        // Renewed: (c) the old root goes.
        trust.certified(&workload("web"));
        assert_eq!(trust.awaiting_renewal(), 0);
        assert!(trust.replace_bundle(bundle(&[&new])).unwrap());
        assert_eq!(
            trust.bundle().fingerprints(),
            [fingerprint(&new.cert().unwrap())]
        );
        drop(web);
        assert_eq!(crate::lock(&trust.workloads).len(), 0);
    }

    #[test]
    fn an_issuer_signed_by_a_root_the_gateway_does_not_trust_is_refused() {
        let Rotation { new, trust, .. } = rotation();
        let before = trust.issuer_fingerprint();
        let csr = trust.issuer_request().unwrap();
        let cert = new
            .sign_cluster_csr(
                &csr,
                &ClusterName::new("west").unwrap(),
                ISSUER_LIFETIME,
                SystemTime::now(),
            )
            .unwrap();
        let refused = trust.install_issuer(cert).unwrap_err();
        assert!(
            refused.to_string().contains("add its root first"),
            "{refused}"
        );
        assert_eq!(
            trust.issuer_fingerprint(),
            before,
            "the issuer in force stays"
        );
    }
}

//! The trust material in files: a root (`root.crt`, `root.key`), a cluster issuer
//! (`issuer.crt`, `issuer.key`), a credential (`NAME.crt`, `NAME.key`) and a trust bundle (one
//! PEM file of roots). Keys are written owner-only.

use std::path::Path;

use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::pki::{ClusterIssuer, Credential, PkiError, Root, TrustBundle};

use crate::files::{read_file, write_file};

/// Loads a root from `root.crt` and `root.key` in a folder.
pub fn load_root(dir: &Path, trust_domain: TrustDomain) -> Result<Root, PkiError> {
    let key_path = dir.join("root.key");
    let cert_pem = read_file(&dir.join("root.crt"))?;
    Root::from_pem(trust_domain, cert_pem, &read_file(&key_path)?, &key_path)
}

/// Writes `root.crt` and `root.key` (owner-only) into a folder.
pub fn save_root(root: &Root, dir: &Path) -> Result<(), PkiError> {
    write_file(&dir.join("root.crt"), &root.cert_pem, false)?;
    write_file(&dir.join("root.key"), &root.key_pem(), true)
}

/// Loads `issuer.crt` and `issuer.key` from a folder, checked to be `cluster`'s issuer.
pub fn load_issuer(
    dir: &Path,
    trust_domain: TrustDomain,
    cluster: ClusterName,
) -> Result<ClusterIssuer, PkiError> {
    let key_path = dir.join("issuer.key");
    let cert_path = dir.join("issuer.crt");
    let chain_pem = read_file(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    ClusterIssuer::from_pem(
        trust_domain,
        cluster,
        chain_pem,
        &cert_path,
        &key_pem,
        &key_path,
    )
}

/// Writes `issuer.crt` and `issuer.key` (owner-only) into a folder.
pub fn save_issuer(issuer: &ClusterIssuer, dir: &Path) -> Result<(), PkiError> {
    write_file(&dir.join("issuer.crt"), &issuer.chain_pem, false)?;
    write_file(&dir.join("issuer.key"), &issuer.key_pem(), true)
}

/// Writes `NAME.crt` and `NAME.key` (owner-only) into a folder.
pub fn write_credential(credential: &Credential, dir: &Path, name: &str) -> Result<(), PkiError> {
    write_file(
        &dir.join(format!("{name}.crt")),
        &credential.chain_pem,
        false,
    )?;
    write_file(&dir.join(format!("{name}.key")), &credential.key_pem, true)
}

/// Reads `NAME.crt` and `NAME.key` from a folder.
pub fn read_credential(dir: &Path, name: &str) -> Result<Credential, PkiError> {
    Ok(Credential {
        chain_pem: read_file(&dir.join(format!("{name}.crt")))?,
        key_pem: read_file(&dir.join(format!("{name}.key")))?,
    })
}

/// Reads a PEM file of one or more roots.
pub fn read_bundle(path: &Path, trust_domain: TrustDomain) -> Result<TrustBundle, PkiError> {
    TrustBundle::from_pem(trust_domain, &read_file(path)?, path)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use strait_federation::identity::SpiffeId;
    use strait_federation::pki::{ISSUER_LIFETIME, LEAF_LIFETIME, ROOT_LIFETIME};

    use super::*;

    #[test]
    fn trust_material_saved_and_loaded_still_signs() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("mesh.test").unwrap();
        let west = ClusterName::new("west").unwrap();
        let now = SystemTime::now();
        let root = Root::generate(&td, ROOT_LIFETIME, now).unwrap();
        save_root(&root, dir.path()).unwrap();
        let root = load_root(dir.path(), td.clone()).unwrap();
        let issuer = root.issue_cluster(&west, ISSUER_LIFETIME, now).unwrap();
        save_issuer(&issuer, dir.path()).unwrap();
        let issuer = load_issuer(dir.path(), td.clone(), west.clone()).unwrap();
        let gateway = SpiffeId::gateway(&td, &west);
        let credential = issuer.issue(&gateway, LEAF_LIFETIME, now).unwrap();
        write_credential(&credential, dir.path(), "gateway").unwrap();
        assert_eq!(
            read_credential(dir.path(), "gateway").unwrap().chain_pem,
            credential.chain_pem
        );
        std::fs::write(dir.path().join("bundle.pem"), &root.cert_pem).unwrap();
        let bundle = read_bundle(&dir.path().join("bundle.pem"), td).unwrap();
        assert_eq!(
            bundle.fingerprint_of_issuer(&credential.chain_pem).unwrap(),
            bundle.fingerprints()[0]
        );
    }

    #[test]
    fn an_issuer_of_another_cluster_is_not_loaded_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("mesh.test").unwrap();
        let now = SystemTime::now();
        let root = Root::generate(&td, ROOT_LIFETIME, now).unwrap();
        let east = root
            .issue_cluster(&ClusterName::new("east").unwrap(), ISSUER_LIFETIME, now)
            .unwrap();
        save_issuer(&east, dir.path()).unwrap();
        let error = load_issuer(dir.path(), td, ClusterName::new("west").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("this is the issuer of cluster east, not of cluster west"),
            "{error}"
        );
    }
}

//! The cluster's credentials Secret (`kubernetes.credentialsSecret`, which the chart mounts
//! read-only as `credentialsDir`) kept in step with root rotations, so that a rotation
//! outlives the pod that took it and reaches every replica. Each change an operator makes is
//! one generation more ([`crate::trust::generation_of`]), written beside the trust files:
//!
//! - when this replica's generation (in `stateDir/trust/`) is later than the Secret's, its
//!   bundle and issuer are written into the Secret, with the generation;
//! - when the mounted Secret (the kubelet refreshes its volume within about a minute) is of a
//!   later generation than this replica's, the replica takes its files: the union of both
//!   bundles first (always safe), then the issuer, then the bundle as mounted. A step refused
//!   (a root retired while workloads still hold certificates of an earlier issuer) is tried
//!   again on the next tick.
//!
//! A pod started afterwards reads the Secret's files through its mount.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use strait_federation::pki::{TrustBundle, fingerprint, pem_of};

use super::{FIELD_MANAGER, Health};
use crate::Shared;
use crate::trust::{GENERATION, generation_of};

/// The files of the credentials folder a rotation changes.
const FILES: [&str; 3] = ["bundle.pem", "issuer.crt", "issuer.key"];
/// How often the mount and the rotation folder are read.
const PERIOD: Duration = Duration::from_secs(2);

/// The trust files present in a folder, by name.
pub type Files = BTreeMap<&'static str, String>;

/// Reads the trust files present in `dir`.
pub fn read(dir: &Path) -> Files {
    FILES
        .into_iter()
        .filter_map(|name| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|text| (name, text))
        })
        .collect()
}

/// The bundle holding every root of `current` and of `other`.
pub fn union(current: &TrustBundle, other: &TrustBundle) -> String {
    let mut pem = current.to_pem().to_owned();
    for root in other.roots() {
        if !current.contains_fingerprint(&fingerprint(root)) {
            pem.push_str(&pem_of(root));
        }
    }
    pem
}

/// Keeps the Secret and this replica's trust in step until the gateway stops.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    namespace: String,
    secret: String,
    health: Arc<Health>,
) {
    let secrets = Api::<Secret>::namespaced(client, &namespace);
    let mounted_dir = shared.config.credentials().to_owned();
    let rotated_dir = crate::trust::rotated_dir(&shared.config);
    let mut published = 0;
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let mounted = generation_of(&mounted_dir);
        let local = generation_of(&rotated_dir);
        if mounted > local {
            let adopted = adopt(&shared, &mounted_dir, &read(&mounted_dir)).and_then(|()| {
                shared
                    .trust
                    .set_generation(mounted)
                    .map_err(|e| e.to_string())
            });
            match adopted {
                Ok(()) => health.clear("credentials"),
                Err(reason) => health.fail(
                    "credentials",
                    format!("cannot take generation {mounted} of Secret {secret} yet: {reason}"),
                ),
            }
        } else if local > mounted && local > published {
            match publish(&secrets, &secret, &read(&rotated_dir), local).await {
                Ok(written) => {
                    if written {
                        tracing::info!(secret = %secret, generation = local, "rotated credentials written to the Kubernetes API");
                    }
                    health.clear("credentials");
                    published = local;
                }
                Err(reason) => health.fail(
                    "credentials",
                    format!("cannot write generation {local} into Secret {secret}: {reason}"),
                ),
            }
        }
    }
}

/// Writes `files` and `generation` into the Secret unless it holds that generation or a later
/// one already; whether it wrote.
async fn publish(
    secrets: &Api<Secret>,
    name: &str,
    files: &Files,
    generation: u64,
) -> Result<bool, String> {
    let current = tokio::time::timeout(PERIOD * 5, secrets.get_opt(name))
        .await
        .map_err(|_| "the Kubernetes API did not answer".to_owned())?
        .map_err(|e| super::describe(&e))?
        .ok_or_else(|| format!("there is no Secret {name}"))?;
    let held = current
        .data
        .as_ref()
        .and_then(|data| data.get(GENERATION))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if held >= generation {
        return Ok(false);
    }
    let mut data: BTreeMap<&str, k8s_openapi::ByteString> = files
        .iter()
        .map(|(key, text)| (*key, k8s_openapi::ByteString(text.as_bytes().to_vec())))
        .collect();
    data.insert(
        GENERATION,
        k8s_openapi::ByteString(format!("{generation}\n").into_bytes()),
    );
    let patch = serde_json::json!({ "data": data });
    tokio::time::timeout(
        PERIOD * 5,
        secrets.patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        ),
    )
    .await
    .map_err(|_| "the Kubernetes API did not answer".to_owned())?
    .map_err(|e| super::describe(&e))?;
    Ok(true)
}

/// Takes what the mount shows: the union of both bundles, then the issuer, then the bundle as
/// mounted.
fn adopt(shared: &Arc<Shared>, dir: &Path, files: &Files) -> Result<(), String> {
    let mounted = match files.get("bundle.pem") {
        Some(pem) => Some(
            TrustBundle::from_pem(
                shared.config.trust_domain.clone(),
                pem,
                &dir.join("bundle.pem"),
            )
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let replace = |pem: &str| {
        crate::api::rotation::update_bundle(shared, pem)
            .map(|_| ())
            .map_err(|status| status.message().to_owned())
    };
    if let Some(mounted) = &mounted {
        replace(&union(&shared.trust.bundle(), mounted))?;
    }
    if files.contains_key("issuer.crt") && files.contains_key("issuer.key") {
        let issuer = strait_io::pki::load_issuer(
            dir,
            shared.config.trust_domain.clone(),
            shared.config.cluster.clone(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(root) = shared
            .trust
            .adopt_issuer(issuer)
            .map_err(|e| e.to_string())?
        {
            crate::api::rotation::issuer_replaced(shared, &root).map_err(|e| e.to_string())?;
        }
    }
    if let Some(mounted) = &mounted {
        replace(mounted.to_pem())?;
    }
    tracing::info!(
        roots = ?shared.trust.bundle().fingerprints(),
        issuer = %shared.trust.issuer_fingerprint(),
        "credentials taken from the mounted Secret"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::identity::TrustDomain;
    use strait_federation::pki::Root;

    #[test]
    fn the_union_of_two_bundles_holds_each_root_once() {
        let domain = TrustDomain::new("example.mesh").unwrap();
        let bundle = |roots: &[&Root]| {
            let pem: String = roots.iter().map(|r| r.cert_pem.clone()).collect();
            TrustBundle::from_pem(domain.clone(), &pem, Path::new("b")).unwrap()
        };
        let root = || {
            Root::generate(
                &domain,
                Duration::from_secs(3600),
                std::time::SystemTime::now(),
            )
            .unwrap()
        };
        let (old, new) = (root(), root());
        let both = union(&bundle(&[&old]), &bundle(&[&old, &new]));
        let both = TrustBundle::from_pem(domain.clone(), &both, Path::new("u")).unwrap();
        assert_eq!(both.roots().len(), 2);
        assert_eq!(
            union(&bundle(&[&old, &new]), &bundle(&[&new])),
            bundle(&[&old, &new]).to_pem()
        );
    }

    #[test]
    fn only_the_trust_files_of_a_folder_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.pem"), "b").unwrap();
        std::fs::write(dir.path().join("link.key"), "k").unwrap();
        assert_eq!(
            read(dir.path()),
            Files::from([("bundle.pem", "b".to_owned())])
        );
    }
}

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
//!   again on the next tick;
//! - an operator's change is refused on a replica that has not taken the Secret's latest
//!   generation yet ([`in_step`]), so that no change starts from old
//!   trust, and the Secret is written only if it did not change since it was read.
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

use super::FIELD_MANAGER;
use crate::Shared;
use crate::trust::{GENERATION, generation_of, parse_generation};

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

/// Keeps the Secret and this replica's trust in step until the gateway stops. What cannot be
/// done yet is logged (when the reason changes) and tried again every tick; it never makes
/// the replica unready, since the trust it holds still serves.
pub async fn run(shared: Arc<Shared>, client: Client, namespace: String, secret: String) {
    let secrets = Api::<Secret>::namespaced(client, &namespace);
    let mounted_dir = shared.config.credentials().to_owned();
    let rotated_dir = crate::trust::rotated_dir(&shared.config);
    let mut published = 0;
    let mut said = String::new();
    let mut say = |reason: String| {
        if reason != said {
            if !reason.is_empty() {
                tracing::warn!(secret = %secret, reason = %reason, "credentials Secret");
            }
            said = reason;
        }
    };
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
            say(match adopted {
                Ok(()) => String::new(),
                Err(reason) => {
                    format!("cannot take generation {mounted} from the mount yet: {reason}")
                }
            });
        } else if local > mounted && local > published {
            match publish(&secrets, &secret, &read(&rotated_dir), local).await {
                Ok(written) => {
                    if written {
                        tracing::info!(secret = %secret, generation = local, "rotated credentials written to the Kubernetes API");
                    }
                    say(String::new());
                    published = local;
                }
                Err(reason) => say(format!("cannot write generation {local}: {reason}")),
            }
        }
    }
}

/// The generation a Secret's data holds (0 when it holds none).
fn generation_in(secret: &Secret) -> u64 {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(GENERATION))
        .map_or(0, |bytes| parse_generation(&bytes.0))
}

async fn get(secrets: &Api<Secret>, name: &str) -> Result<Secret, String> {
    tokio::time::timeout(PERIOD * 5, secrets.get_opt(name))
        .await
        .map_err(|_| "the Kubernetes API did not answer".to_owned())?
        .map_err(|e| super::describe(&e))?
        .ok_or_else(|| format!("there is no Secret {name}"))
}

/// The generation the credentials Secret holds now, as the API says (the mount may lag it).
pub async fn held_generation(client: &Client, namespace: &str, name: &str) -> Result<u64, String> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    Ok(generation_in(&get(&secrets, name).await?))
}

/// Refuses an operator's trust change on a replica that has not taken the latest generation
/// of the credentials Secret yet (Kubernetes mode with `credentialsSecret`): a change made on
/// it would start from older trust than the Secret's.
pub async fn in_step(shared: &Shared) -> Result<(), tonic::Status> {
    let Some((namespace, secret)) = shared
        .config
        .kubernetes
        .as_ref()
        .and_then(|k| Some((&k.namespace, k.credentials_secret.as_ref()?)))
    else {
        return Ok(());
    };
    let local = crate::trust::generation_of(&crate::trust::rotated_dir(&shared.config));
    let mut latest = crate::trust::generation_of(shared.config.credentials());
    if let Some(client) = &shared.kube {
        let held = held_generation(client, namespace, secret)
            .await
            .map_err(|why| {
                tonic::Status::unavailable(format!(
                    "cannot read Secret {secret} to check this replica is in step with it: {why}"
                ))
            })?;
        latest = latest.max(held);
    }
    if latest > local {
        return Err(tonic::Status::failed_precondition(format!(
            "this replica holds generation {local} of the credentials, Secret {secret} generation {latest}: it takes it from its mount within about a minute; run the stage again then"
        )));
    }
    Ok(())
}

/// Writes `files` and `generation` into the Secret, unless it holds them already; whether it
/// wrote. Refused when the Secret holds that generation with other files, or a later one (a
/// change another replica took: this one takes it from its mount), and when the Secret
/// changed between the read and the write (tried again on the next tick).
async fn publish(
    secrets: &Api<Secret>,
    name: &str,
    files: &Files,
    generation: u64,
) -> Result<bool, String> {
    let current = get(secrets, name).await?;
    let held = generation_in(&current);
    let data = current.data.clone().unwrap_or_default();
    let same = files
        .iter()
        .all(|(key, text)| data.get(*key).is_some_and(|b| b.0 == text.as_bytes()));
    if held == generation && same {
        return Ok(false);
    }
    if held >= generation {
        return Err(format!(
            "the Secret holds generation {held}{}, taken by another replica: this replica's own change (generation {generation}) is not written",
            if held == generation {
                " with other files"
            } else {
                ""
            }
        ));
    }
    let mut data: BTreeMap<&str, k8s_openapi::ByteString> = files
        .iter()
        .map(|(key, text)| (*key, k8s_openapi::ByteString(text.as_bytes().to_vec())))
        .collect();
    data.insert(
        GENERATION,
        k8s_openapi::ByteString(format!("{generation}\n").into_bytes()),
    );
    // The resource version makes the write conditional: a Secret written meanwhile is read
    // again on the next tick, never overwritten.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "data": data,
    });
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

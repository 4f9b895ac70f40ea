//! What must survive a rescheduled pod with an empty disk, kept in the cluster's API: the
//! Secret `strait-gateway-state` in the gateway's namespace holds the durable part of the state
//! folder (the links this gateway dials, the join tokens it admitted and revoked, its export
//! epoch, the policy clock) and its virtual addresses. Policies live as resources
//! ([`super::policies`]), and the cluster's own services come from its ServiceExports; what
//! peers exported is sent again by them. A gateway that starts on an empty state folder fills
//! it from this Secret first ([`restore`]), or, when the API cannot be read at start, takes it
//! in once it can; while it runs it keeps the Secret current, writing only when something in
//! it changed ([`run`]), and never before it has read it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use strait_federation::catalog::ExportLog;
use strait_federation::policy::exchange::PolicyBook;

use super::{FIELD_MANAGER, Health};
use crate::config::GatewayConfig;
use crate::dns::vip::PoolFile;
use crate::store::State;
use crate::{Shared, lock};

/// The Secret that holds the durable state.
pub const SECRET: &str = "strait-gateway-state";
/// The files of the state folder it holds, by key.
const STATE: &str = "state.json";
const VIPS: &str = "vips.json";
/// The most the Secret may hold (the API refuses objects past about 1.5 MiB).
const MAX_BYTES: usize = 1 << 20;

/// The durable part of a state: what the API cannot give back otherwise.
pub fn durable(state: &State) -> State {
    State {
        services: BTreeMap::new(),
        export: ExportLog::new(state.export.head().epoch),
        links: state.links.clone(),
        redemptions: state.redemptions.clone(),
        imports: BTreeMap::new(),
        // Restored, it reads as a crash: the gateway starts a new export epoch, so peers take
        // one snapshot rather than trust versions that this copy does not hold.
        running: true,
        policies: PolicyBook {
            clock: state.policies.clock,
            ..PolicyBook::default()
        },
        registrations: BTreeMap::new(),
        retired_roots: state.retired_roots.clone(),
        revocations: state.revocations.clone(),
    }
}

/// What [`restore`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The state folder was not empty: nothing to do.
    NotNeeded,
    /// Files were written from the Secret.
    Restored,
    /// There is no Secret (a new gateway).
    Absent,
    /// The Secret could not be read (the API unreachable, or RBAC): the gateway starts
    /// anyway, says why on `/readyz`, and takes the Secret in once it can read it ([`run`]),
    /// writing nothing before.
    Unreadable(String),
}

/// How long the start waits for the API to read the Secret.
const RESTORE_WAIT: Duration = Duration::from_secs(3);

/// Fills an empty state folder from the API before the gateway loads it: `state.json` and
/// `vips.json`, where absent, from the Secret.
pub async fn restore(client: &Client, config: &GatewayConfig, namespace: &str) -> Restore {
    let missing: Vec<&str> = [STATE, VIPS]
        .into_iter()
        .filter(|file| !config.file(file).exists())
        .collect();
    if !missing.contains(&STATE) {
        return Restore::NotNeeded;
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let read = tokio::time::timeout(RESTORE_WAIT, async {
        let mut backoff = Duration::from_millis(200);
        loop {
            match secrets.get_opt(SECRET).await {
                Ok(secret) => return Ok(secret),
                Err(e) => {
                    let reason = super::describe(&e);
                    if backoff >= Duration::from_millis(800) {
                        return Err(reason);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("the Kubernetes API did not answer".into()));
    let secret = match read {
        Ok(secret) => secret,
        Err(reason) => {
            tracing::warn!(reason = %reason, "the state folder is empty and the durable state cannot be read yet");
            return Restore::Unreadable(reason);
        }
    };
    let Some(data) = secret.and_then(|s| s.data) else {
        return Restore::Absent;
    };
    for file in missing {
        let Some(bytes) = data.get(file) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes.0) else {
            tracing::error!(
                file,
                "Secret {SECRET} holds a file that is not UTF-8: not restored"
            );
            continue;
        };
        match strait_io::files::write_file(&config.file(file), text, true) {
            Ok(()) => tracing::info!(file, "restored from the Kubernetes API"),
            Err(e) => tracing::error!(file, error = %e, "cannot restore"),
        }
    }
    Restore::Restored
}

/// Takes in, while running, a durable state that could not be read at start: its links and
/// admitted tokens join the state (what changed since start wins), and its virtual addresses
/// the DNS pool. The links it adds are dialled.
fn take_in_late(shared: &Arc<Shared>, secret: &Secret) {
    let Some(data) = &secret.data else { return };
    let stored = data
        .get(STATE)
        .and_then(|b| serde_json::from_slice::<State>(&b.0).ok());
    let mut added = Vec::new();
    if let Some(stored) = stored {
        let mut state = lock(&shared.state);
        for (cluster, record) in stored.links {
            if let std::collections::btree_map::Entry::Vacant(slot) = state.links.entry(cluster) {
                added.push(record.spec.clone());
                slot.insert(record);
            }
        }
        if state.redemptions == Default::default() {
            state.redemptions = stored.redemptions;
        }
    }
    if let Some(file) = stored_vips(secret) {
        shared.leader_vips.send_replace(Some(Arc::new(file)));
    }
    tracing::info!(
        links = added.len(),
        "durable state taken in from the Kubernetes API"
    );
    shared.mark_dirty();
    for spec in added {
        crate::peer::start_dialer(shared, spec, None);
    }
}

/// The virtual addresses the Secret holds, as the leader's DNS pool had them.
pub fn stored_vips(secret: &Secret) -> Option<PoolFile> {
    let bytes = secret.data.as_ref()?.get(VIPS)?;
    serde_json::from_slice(&bytes.0).ok()
}

fn digest(parts: &[&str]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Keeps the Secret current until the gateway stops: every 2 s, written when what it would
/// hold changed.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    namespace: String,
    health: Arc<Health>,
    restore: Restore,
) {
    let secrets = Api::<Secret>::namespaced(client, &namespace);
    let mut written: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut unread = match restore {
        Restore::Unreadable(reason) => {
            health.fail("state", format!("cannot read Secret {SECRET}: {reason}"));
            true
        }
        _ => false,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        if unread {
            // Nothing is written before the stored state is read: it would be lost.
            match secrets.get_opt(SECRET).await {
                Ok(secret) => {
                    if let Some(secret) = secret {
                        take_in_late(&shared, &secret);
                    }
                    unread = false;
                    health.clear("state");
                    shared.awaited(crate::Awaited::State);
                }
                Err(e) => {
                    health.fail(
                        "state",
                        format!("cannot read Secret {SECRET}: {}", super::describe(&e)),
                    );
                    continue;
                }
            }
        }
        if !shared.leads() {
            written = None;
            continue;
        }
        let state = match serde_json::to_string(&durable(&lock(&shared.state))) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the durable state");
                continue;
            }
        };
        let vips = tokio::fs::read_to_string(shared.config.file(VIPS))
            .await
            .unwrap_or_default();
        let sum = digest(&[&state, &vips]);
        if written == Some(sum) {
            continue;
        }
        if state.len() + vips.len() > MAX_BYTES {
            health.fail(
                "state",
                format!(
                    "the durable state ({} bytes) is larger than a Secret may hold ({MAX_BYTES})",
                    state.len() + vips.len()
                ),
            );
            continue;
        }
        let mut data = BTreeMap::new();
        data.insert(STATE.to_owned(), ByteString(state.into_bytes()));
        if !vips.is_empty() {
            data.insert(VIPS.to_owned(), ByteString(vips.into_bytes()));
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(
                    super::import::MANAGED_BY.to_owned(),
                    super::import::MANAGER.to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        };
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        match secrets.patch(SECRET, &apply, &Patch::Apply(&secret)).await {
            Ok(_) => {
                health.clear("state");
                shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["secrets"])
                    .inc();
                written = Some(sum);
            }
            Err(e) => health.fail("state", super::describe(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_state_keeps_links_tokens_and_clock_and_drops_what_the_api_gives_back() {
        use strait_federation::identity::{ClusterName, TrustDomain};
        let mut state = State::new();
        state.policies.clock.tick(1_000);
        let west = ClusterName::new("west").unwrap();
        state.links.insert(
            west.clone(),
            crate::store::LinkRecord {
                spec: strait_federation::link::LinkSpec {
                    cluster: west.clone(),
                    trust_domain: TrustDomain::new("example.mesh").unwrap(),
                    gateway_address: "203.0.113.7:4433".into(),
                    root_fingerprint: "sha256:00".into(),
                    token: "token".into(),
                    expires: None,
                },
                created: 1,
            },
        );
        let kept = durable(&state);
        assert_eq!(kept.export.head().epoch, state.export.head().epoch);
        assert_eq!(kept.policies.clock, state.policies.clock);
        assert!(kept.policies.set.is_empty() && kept.imports.is_empty());
        assert!(kept.running, "a restored state starts a new export epoch");
        // It reads back as a state file.
        let text = serde_json::to_string(&kept).unwrap();
        let read: State = serde_json::from_str(&text).unwrap();
        assert_eq!(read.links, state.links);
        assert_eq!(read.links[&west].spec.gateway_address, "203.0.113.7:4433");
    }
}

//! The gateway's side of mesh-wide policy: applying and deleting policies made in this cluster
//! (the operator API), and showing the set to operators and sidecars. The set itself lives in
//! the persisted state; peer sessions (`peer`) exchange it with linked gateways.

use strait_federation::identity::{ClusterName, NameError, Namespace};
use strait_federation::policy::exchange::{BookError, MAX_POLICIES};
use strait_federation::policy::quota::{Quota, Spend};
use strait_federation::policy::replication::Version;
use strait_federation::policy::{Checked, Policy, PolicyKey, PolicyKind};
use strait_federation::proto::operator::{AppliedObject, PolicyView};
use strait_federation::proto::peer::{QuotaCount, QuotaUsage};
use strait_federation::proto::workload::PolicyDocument;
use strait_federation::proto::workload::{Spent, UsageReply, UsageReport};
use strait_federation::resource::Resource;

use strait_federation::document::Applied;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::store::State;
use crate::{Shared, lock, unix_now_ms};

/// Refuses a file whose new policies would take the set past its bound, before anything of the
/// file is applied.
pub fn check_capacity(state: &State, resources: &[Resource]) -> Result<(), BookError> {
    let new = resources
        .iter()
        .filter(|r| match r {
            Resource::Policy { key, .. } => state.policies.set.get(key).is_none(),
            _ => false,
        })
        .count();
    if state.policies.set.len() + new > MAX_POLICIES {
        return Err(BookError::Full);
    }
    Ok(())
}

/// Applies the file's policies as changes made in `cluster`; whether any changed.
pub fn apply(
    state: &mut State,
    cluster: &ClusterName,
    resources: &[Resource],
    objects: &mut Vec<AppliedObject>,
) -> Result<bool, BookError> {
    let mut changed = false;
    for resource in resources {
        let Resource::Policy { key, policy } = resource else {
            continue;
        };
        let result = state
            .policies
            .apply(key.clone(), policy.clone(), cluster, unix_now_ms())?;
        changed |= result != Applied::Unchanged;
        objects.push(AppliedObject {
            kind: key.kind.to_string(),
            namespace: key.namespace.to_string(),
            name: key.name.clone(),
            result: result.as_str().into(),
        });
    }
    Ok(changed)
}

/// Deletes one policy as a change made in `cluster`; whether it was live.
pub fn delete(state: &mut State, cluster: &ClusterName, key: &PolicyKey) -> bool {
    state.policies.delete(key, cluster, unix_now_ms())
}

/// The key a delete command names.
pub fn key(kind: PolicyKind, namespace: &str, name: &str) -> Result<PolicyKey, NameError> {
    let namespace = Namespace::new(if namespace.is_empty() {
        "default"
    } else {
        namespace
    })?;
    Ok(PolicyKey {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

/// One live policy as it travels to sidecars.
fn document(key: &PolicyKey, policy: &Policy, version: &Version) -> PolicyDocument {
    PolicyDocument {
        kind: key.kind.to_string(),
        namespace: key.namespace.to_string(),
        name: key.name.clone(),
        document: policy.to_json(),
        stamp: version.stamp,
        origin: version.origin.to_string(),
    }
}

/// Every live policy, for `strait get policies`.
pub fn views(state: &State) -> Vec<PolicyView> {
    state
        .policies
        .set
        .live()
        .map(|(key, policy, version)| {
            let d = document(key, policy, version);
            PolicyView {
                kind: d.kind,
                namespace: d.namespace,
                name: d.name,
                document: d.document,
                stamp: d.stamp,
                origin: d.origin,
            }
        })
        .collect()
}

/// Every live policy as sidecars get it, split by what each sidecar needs: the policies
/// enforced inbound (authorization, rate limits) by namespace, as a sidecar enforces those of
/// its own namespace; routes and failover orders, followed outbound, for all.
#[derive(Debug, Default)]
pub struct SidecarPolicies {
    pub inbound: std::collections::BTreeMap<Namespace, Vec<PolicyDocument>>,
    pub outbound: Vec<PolicyDocument>,
}

impl SidecarPolicies {
    /// Sorts the state's live policies.
    pub fn of(state: &State) -> Self {
        let mut out = Self::default();
        for (key, policy, version) in state.policies.set.live() {
            let document = document(key, policy, version);
            match policy.checked() {
                Checked::Authorization(_)
                | Checked::RateLimit(_)
                | Checked::Quota(_)
                | Checked::Authentication(_) => out
                    .inbound
                    .entry(key.namespace.clone())
                    .or_default()
                    .push(document),
                Checked::Route(_) | Checked::Failover(_) => out.outbound.push(document),
            }
        }
        out
    }

    /// What a sidecar of `namespace` gets.
    pub fn for_namespace(&self, namespace: &Namespace) -> Vec<PolicyDocument> {
        self.inbound
            .get(namespace)
            .into_iter()
            .flatten()
            .chain(&self.outbound)
            .cloned()
            .collect()
    }
}

/// The live Quotas of a service.
pub fn quotas_of(state: &State, namespace: &Namespace, service: &str) -> Vec<Quota> {
    state
        .policies
        .set
        .live()
        .filter_map(|(_, policy, _)| match policy.checked() {
            Checked::Quota(q) if &q.namespace == namespace && q.service.as_str() == service => {
                Some(q.clone())
            }
            _ => None,
        })
        .collect()
}

/// Takes a sidecar's report of what it admitted against its service's Quotas, and answers with
/// every budget's total across the mesh for the windows in force.
pub fn report_usage(shared: &Shared, namespace: &Namespace, report: UsageReport) -> UsageReply {
    let quotas = quotas_of(&lock(&shared.state), namespace, &report.service);
    let now = unix_now_ms();
    let mut grew = false;
    let mut book = lock(&shared.quotas);
    for spent in report.spent.into_iter().take(MAX_REPORTED) {
        // Only counts for this service's quotas, in the window in force or the one before.
        let Some(quota) = quotas.iter().find(|q| q.label() == spent.quota) else {
            continue;
        };
        // A window ahead is taken too: the sidecar's clock may run a little ahead of ours.
        let current = quota.window(now);
        if spent.count == 0 || spent.window > current + 1 || spent.window + 1 < current {
            continue;
        }
        let spend = Spend {
            quota: spent.quota,
            who: spent.who.chars().take(MAX_WHO).collect(),
            window: spent.window,
        };
        book.add_local(&shared.config.cluster, spend, spent.count);
        grew = true;
    }
    let mut totals = Vec::new();
    for quota in &quotas {
        let label = quota.label();
        for (spend, total) in book.totals_of(&label, quota.window(now)) {
            totals.push(Spent {
                quota: spend.quota.clone(),
                who: spend.who.clone(),
                window: spend.window,
                count: total,
            });
        }
    }
    drop(book);
    if grew {
        shared.quota_tx.send_modify(|n| *n += 1);
    }
    UsageReply { totals }
}

/// The most counts one report may carry.
const MAX_REPORTED: usize = 10_000;
/// The longest `who` a count may name (a SPIFFE identity fits).
const MAX_WHO: usize = 512;

/// Where the quota counts are kept across a restart, in the state folder.
const QUOTA_FILE: &str = "quotas.json";

/// Takes back the counts the last run kept, so a restarted gateway (a lone one above all, with
/// no peer to tell it) goes on counting the windows in force where it was. An unreadable file
/// is logged and left: the worst it costs is the windows' counts.
pub fn load_quota_counts(shared: &Shared) {
    let path = shared.config.file(QUOTA_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the quota counts");
            return;
        }
    };
    let counts: Vec<(Spend, ClusterName, u64)> = match serde_json::from_str(&text) {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "quota counts unreadable: left out");
            return;
        }
    };
    {
        let mut book = lock(&shared.quotas);
        for (spend, origin, count) in counts {
            book.merge(&origin, spend, count);
        }
        // What was just read is on disk already.
        shared.quotas_saved.store(book.sequence(), Ordering::SeqCst);
    }
    expire_quota_windows(shared);
}

/// Writes the quota counts when one grew since they were last written.
pub async fn keep_quota_counts(shared: &Arc<Shared>) {
    let (sequence, counts) = {
        let book = lock(&shared.quotas);
        let sequence = book.sequence();
        if sequence == shared.quotas_saved.load(Ordering::SeqCst) {
            return;
        }
        (sequence, book.counts())
    };
    let path = shared.config.file(QUOTA_FILE);
    let saved = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let text = serde_json::to_string(&counts).map_err(|e| e.to_string())?;
        strait_io::files::write_file(&path, &text, false).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|saved| saved);
    match saved {
        Ok(()) => shared.quotas_saved.store(sequence, Ordering::SeqCst),
        Err(error) => tracing::error!(%error, "cannot write the quota counts"),
    }
}

/// Forgets the counts of windows that ended.
pub fn expire_quota_windows(shared: &Shared) {
    let now = unix_now_ms();
    let windows: std::collections::HashMap<String, u64> = lock(&shared.state)
        .policies
        .set
        .live()
        .filter_map(|(_, policy, _)| match policy.checked() {
            Checked::Quota(q) => Some((q.label(), q.window(now))),
            _ => None,
        })
        .collect();
    lock(&shared.quotas).expire(|label| windows.get(label).copied());
}

/// Drops the tombstones past the retention (`peering.tombstoneRetentionMs`), and writes the
/// state when any went. Nothing is sent: peers drop theirs by the same clock, and refuse the
/// old tombstones a peer with a longer retention still offers.
pub fn compact_tombstones(shared: &Shared) {
    let dropped = lock(&shared.state).policies.compact(unix_now_ms());
    if dropped > 0 {
        tracing::info!(
            dropped,
            "tombstones of deleted policies dropped after their retention"
        );
        shared.write_policies();
    }
}

/// Takes quota counts from a peer; whether any grew (then other peers and the sidecars must
/// hear of it). A count naming an invalid cluster is skipped.
pub fn merge_quota_usage(shared: &Shared, usage: QuotaUsage) -> bool {
    let mut book = lock(&shared.quotas);
    let mut grew = false;
    for count in usage.counts {
        let Ok(origin) = ClusterName::new(count.origin.as_str()) else {
            continue;
        };
        if count.quota.len() > 2 * 64 + 1 || count.who.len() > MAX_WHO {
            continue;
        }
        let spend = Spend {
            quota: count.quota,
            who: count.who,
            window: count.window,
        };
        grew |= book.merge(&origin, spend, count.count);
    }
    grew
}

/// The counts that grew since `after`, for a peer (those of its own cluster left out: it
/// knows them best), and the sequence number to send from next time.
pub fn quota_counts_for(shared: &Shared, peer: &ClusterName, after: u64) -> (Vec<QuotaCount>, u64) {
    let (grown, sequence) = lock(&shared.quotas).changed_since(after);
    let counts = grown
        .into_iter()
        .filter(|(_, origin, _)| origin != peer)
        .map(|(spend, origin, count)| QuotaCount {
            quota: spend.quota,
            who: spend.who,
            window: spend.window,
            origin: origin.to_string(),
            count,
        })
        .collect();
    (counts, sequence)
}

//! Quota: a budget of requests over a window that holds across the whole mesh: a caller
//! limited to N requests a minute gets N in total, not N per endpoint or per cluster. Windows
//! are fixed and aligned to Unix time, so every gateway and sidecar agrees on them without
//! talking. Sidecars count what they admit and report it to their gateway; gateways add up
//! their cluster's counts and flood them to every other gateway; each gateway's total for a
//! window is the sum of every cluster's count, and sidecars refuse once it reaches the limit.
//! The count is approximate in one direction only: requests admitted while the last counts
//! were on their way (see docs/policy-quota.md for the bound).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{PolicyMetadata, TargetRef, check_api_version, period};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{ClusterName, Namespace, ServiceName, SpiffeId};

/// Who shares a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QuotaKey {
    /// One identity (cluster, namespace and service account).
    Caller,
    /// A namespace's service account, in every cluster together.
    ServiceAccount,
    /// Every caller together.
    Service,
}

/// A checked Quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub namespace: Namespace,
    pub name: String,
    pub service: ServiceName,
    pub requests: u64,
    pub per: Duration,
    pub key: QuotaKey,
}

impl Quota {
    /// The quota's label, `namespace/name`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whose budget a caller spends.
    pub fn who(&self, caller: &SpiffeId) -> String {
        match (self.key, caller) {
            (QuotaKey::Caller, _) => caller.to_string(),
            (
                QuotaKey::ServiceAccount,
                SpiffeId::Workload {
                    namespace,
                    service_account,
                    ..
                },
            ) => format!("{namespace}/{service_account}"),
            (QuotaKey::ServiceAccount, other) => other.to_string(),
            (QuotaKey::Service, _) => String::new(),
        }
    }

    /// The window a moment falls in (`now_ms`: Unix milliseconds).
    pub fn window(&self, now_ms: u64) -> u64 {
        now_ms / (self.per.as_millis() as u64).max(1)
    }

    /// How long from `now_ms` until the window ends.
    pub fn until_next_window(&self, now_ms: u64) -> Duration {
        let per = (self.per.as_millis() as u64).max(1);
        Duration::from_millis(per - now_ms % per)
    }
}

/// One count: a budget (quota label and who), a window, and the requests a cluster admitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Spend {
    pub quota: String,
    pub who: String,
    pub window: u64,
}

/// The counts a gateway knows, per budget and window, per cluster that admitted them. Counts
/// only grow within a window, so merging keeps the larger and the order of arrival does not
/// matter. Sans-IO: callers pass the windows in force.
#[derive(Debug, Default)]
pub struct QuotaBook {
    counts: HashMap<Spend, BTreeMap<ClusterName, u64>>,
    /// A sequence number per (budget, cluster) count, bumped when it grows: sessions send
    /// their peer what grew since the number they last sent.
    changed: HashMap<(Spend, ClusterName), u64>,
    sequence: u64,
}

/// The most budgets a gateway tracks at once (windows in force).
pub const MAX_SPENDS: usize = 200_000;

impl QuotaBook {
    fn bump(&mut self, spend: &Spend, cluster: &ClusterName) {
        self.sequence += 1;
        self.changed
            .insert((spend.clone(), cluster.clone()), self.sequence);
    }

    /// Adds requests admitted in this gateway's cluster; the new total across the mesh.
    pub fn add_local(&mut self, cluster: &ClusterName, spend: Spend, requests: u64) -> u64 {
        if requests > 0 && (self.counts.len() < MAX_SPENDS || self.counts.contains_key(&spend)) {
            let count = self
                .counts
                .entry(spend.clone())
                .or_default()
                .entry(cluster.clone())
                .or_default();
            *count = count.saturating_add(requests);
            self.bump(&spend, cluster);
        }
        self.total(&spend)
    }

    /// Takes a cluster's count from a peer; whether it grew here.
    pub fn merge(&mut self, origin: &ClusterName, spend: Spend, count: u64) -> bool {
        if self.counts.len() >= MAX_SPENDS && !self.counts.contains_key(&spend) {
            return false;
        }
        let held = self
            .counts
            .entry(spend.clone())
            .or_default()
            .entry(origin.clone())
            .or_default();
        if count <= *held {
            return false;
        }
        *held = count;
        self.bump(&spend, origin);
        true
    }

    /// Requests admitted across the mesh for a budget and window.
    pub fn total(&self, spend: &Spend) -> u64 {
        self.counts
            .get(spend)
            .map_or(0, |by_cluster| by_cluster.values().sum())
    }

    /// Every budget of `quota` in `window`, with its total.
    pub fn totals_of<'a>(
        &'a self,
        quota: &'a str,
        window: u64,
    ) -> impl Iterator<Item = (&'a Spend, u64)> + 'a {
        self.counts
            .iter()
            .filter(move |(s, _)| s.quota == quota && s.window == window)
            .map(|(s, by_cluster)| (s, by_cluster.values().sum()))
    }

    /// The counts that grew since `after` (a sequence number), and the latest number.
    pub fn changed_since(&self, after: u64) -> (Vec<(Spend, ClusterName, u64)>, u64) {
        let mut grown = Vec::new();
        for ((spend, cluster), sequence) in &self.changed {
            if *sequence > after
                && let Some(count) = self.counts.get(spend).and_then(|c| c.get(cluster))
            {
                grown.push((spend.clone(), cluster.clone(), *count));
            }
        }
        (grown, self.sequence)
    }

    /// Every count held, for keeping across a restart: (budget, cluster, requests).
    pub fn counts(&self) -> Vec<(Spend, ClusterName, u64)> {
        let mut all = Vec::new();
        for (spend, by_cluster) in &self.counts {
            for (cluster, count) in by_cluster {
                all.push((spend.clone(), cluster.clone(), *count));
            }
        }
        all.sort();
        all
    }

    /// The sequence number of the latest change: it moves whenever a count grew.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Forgets windows that ended: `current` says, for a quota label, the window in force.
    pub fn expire(&mut self, current: impl Fn(&str) -> Option<u64>) {
        // The previous window is kept a little: a late count for it changes nothing, but
        // keeping it lets its last counts still travel.
        let keep = |spend: &Spend| current(&spend.quota).is_some_and(|w| spend.window + 1 >= w);
        self.counts.retain(|spend, _| keep(spend));
        self.changed.retain(|(spend, _), _| keep(spend));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QuotaDocument {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: QuotaSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QuotaSpec {
    target_ref: TargetRef,
    limit: QuotaLimit,
    #[serde(default = "by_account")]
    key: QuotaKey,
}

fn by_account() -> QuotaKey {
    QuotaKey::ServiceAccount
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaLimit {
    requests: u64,
    per: String,
}

/// The shortest window: below a second, the counts' travel time is most of the window.
const MIN_PER: Duration = Duration::from_secs(1);
/// The longest window.
const MAX_PER: Duration = Duration::from_secs(24 * 3600);

/// Parses and checks a Quota document. Errors name the document and the field.
pub fn quota(document: serde_json::Value, place: &DocumentPlace) -> Result<Quota, DocumentError> {
    let document: QuotaDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let service = document.spec.target_ref.required_service(place)?;
    let limit = document.spec.limit;
    if limit.requests == 0 {
        return Err(field(
            place,
            "spec.limit.requests",
            "expected at least 1 (to refuse everything, use an AuthorizationPolicy)",
        ));
    }
    let per = period(&limit.per)
        .filter(|per| (MIN_PER..=MAX_PER).contains(per))
        .ok_or_else(|| {
            field(
                place,
                "spec.limit.per",
                format!(
                    "{:?}: expected a duration like 1m, 1h or 1d, from 1s to a day",
                    limit.per
                ),
            )
        })?;
    Ok(Quota {
        namespace,
        name,
        service,
        requests: limit.requests,
        per,
        key: document.spec.key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{assert_refused, parse_as};

    const QUOTA: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: Quota
metadata: {name: api-per-minute, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  limit: {requests: 40, per: 1m}
";

    #[test]
    fn a_quota_counts_a_service_account_in_every_cluster_together() {
        let quota = parse_as("quota.yaml", super::quota, QUOTA).unwrap();
        assert_eq!(quota.key, QuotaKey::ServiceAccount);
        let east: SpiffeId = "spiffe://m.test/cluster/east/ns/shop/sa/web"
            .parse()
            .unwrap();
        let west: SpiffeId = "spiffe://m.test/cluster/west/ns/shop/sa/web"
            .parse()
            .unwrap();
        assert_eq!(quota.who(&east), quota.who(&west));
        assert_eq!(quota.window(119_999), 1);
        assert_eq!(quota.until_next_window(119_000), Duration::from_secs(1));
        let cases = [
            (
                QUOTA.replace("requests: 40", "requests: 0"),
                "spec.limit.requests",
            ),
            (QUOTA.replace("per: 1m", "per: 10ms"), "spec.limit.per"),
            (
                QUOTA.replace("per: 1m}", "per: 1m}\n  key: cluster"),
                "spec.key",
            ),
        ];
        assert_refused("quota.yaml", super::quota, &cases);
    }

    /// Two gateways count their own clusters and take each other's counts in any order,
    /// repeated or stale: both see the same total.
    #[test]
    fn gateways_add_up_every_clusters_count() {
        let (east, west) = (
            ClusterName::new("east").unwrap(),
            ClusterName::new("west").unwrap(),
        );
        let spend = Spend {
            quota: "shop/q".into(),
            who: "shop/web".into(),
            window: 7,
        };
        let mut at_east = QuotaBook::default();
        let mut at_west = QuotaBook::default();
        at_east.add_local(&east, spend.clone(), 10);
        at_west.add_local(&west, spend.clone(), 4);
        let (from_east, seq) = at_east.changed_since(0);
        assert_eq!(from_east.len(), 1);
        assert!(at_east.changed_since(seq).0.is_empty());
        for (spend, origin, count) in from_east.iter().cloned() {
            assert!(at_west.merge(&origin, spend, count));
        }
        // A repeated or older count changes nothing.
        assert!(!at_west.merge(&east, spend.clone(), 10));
        assert!(!at_west.merge(&east, spend.clone(), 3));
        for (spend, origin, count) in at_west.changed_since(0).0 {
            at_east.merge(&origin, spend, count);
        }
        assert_eq!(at_east.total(&spend), 14);
        assert_eq!(at_west.total(&spend), 14);
        assert_eq!(at_east.add_local(&east, spend.clone(), 1), 15);
        // The window after next forgets this one.
        at_east.expire(|_| Some(9));
        assert_eq!(at_east.total(&spend), 0);
    }
}

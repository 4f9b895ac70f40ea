//! Mesh-wide Quotas at the inbound sidecar: what this endpoint admitted against each budget
//! since its last report, and the mesh-wide totals its gateway last gave it. A request is
//! refused once the total it knows plus its own unreported count reaches the limit. Every
//! 100 ms (while a quota applies) the sidecar reports and takes fresh totals, so what other
//! endpoints and clusters admitted reaches it within a report and a peer hop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_federation::identity::SpiffeId;
use strait_federation::policy::quota::Quota;
use strait_federation::proto::workload::workload_client::WorkloadClient;
use strait_federation::proto::workload::{Spent, UsageReport};
use tonic::transport::Channel;

use crate::Shared;

/// How often a sidecar reports and refreshes while a quota applies to it.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most budgets one sidecar tracks.
const MAX_BUDGETS: usize = 100_000;

/// One budget in one window, as this sidecar knows it.
#[derive(Debug, Default, Clone, Copy)]
struct Budget {
    /// Admitted across the mesh, as last heard (this sidecar's reported requests included).
    total: u64,
    /// Admitted here since the last report.
    unreported: u64,
}

/// A request over a quota: the quota, and when its window ends.
pub struct Exhausted {
    pub quota: String,
    pub retry_after: Duration,
}

/// The budgets of one sidecar: (quota, who, window).
#[derive(Default)]
pub struct Ledger {
    budgets: Mutex<HashMap<(String, String, u64), Budget>>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, u64), Budget>> {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request of `caller` against every quota, or says which one is spent.
    pub fn admit(&self, quotas: &[Quota], caller: &SpiffeId, now_ms: u64) -> Result<(), Exhausted> {
        if quotas.is_empty() {
            return Ok(());
        }
        let mut budgets = self.lock();
        let keys: Vec<_> = quotas
            .iter()
            .map(|q| (q.label(), q.who(caller), q.window(now_ms)))
            .collect();
        for (quota, key) in quotas.iter().zip(&keys) {
            let budget = budgets.get(key).copied().unwrap_or_default();
            if budget.total + budget.unreported >= quota.requests {
                return Err(Exhausted {
                    quota: key.0.clone(),
                    retry_after: quota.until_next_window(now_ms),
                });
            }
        }
        for key in keys {
            if budgets.len() >= MAX_BUDGETS && !budgets.contains_key(&key) {
                continue;
            }
            budgets.entry(key).or_default().unreported += 1;
        }
        Ok(())
    }

    /// What to report: every budget with requests admitted since the last report, counted as
    /// part of the total from now on.
    fn take_report(&self) -> Vec<Spent> {
        let mut budgets = self.lock();
        let mut spent = Vec::new();
        for ((quota, who, window), budget) in budgets.iter_mut() {
            if budget.unreported > 0 {
                spent.push(Spent {
                    quota: quota.clone(),
                    who: who.clone(),
                    window: *window,
                    count: budget.unreported,
                });
                budget.total += budget.unreported;
                budget.unreported = 0;
            }
        }
        spent
    }

    /// Takes the totals a gateway answered, and forgets windows before those in force.
    fn take_totals(&self, totals: Vec<Spent>, windows: &HashMap<String, u64>) {
        let mut budgets = self.lock();
        for total in totals {
            let key = (total.quota, total.who, total.window);
            if budgets.len() >= MAX_BUDGETS && !budgets.contains_key(&key) {
                continue;
            }
            let budget = budgets.entry(key).or_default();
            budget.total = budget.total.max(total.count);
        }
        budgets.retain(|(quota, _, window), _| {
            windows
                .get(quota)
                .is_some_and(|current| window + 1 >= *current)
        });
    }
}

/// Reports usage and refreshes totals every [`REPORT_INTERVAL`] while the sidecar's service
/// has quotas; quiet otherwise.
pub async fn report(shared: Arc<Shared>, channel: Channel) {
    let Some(own) = shared.own_service.clone() else {
        return;
    };
    let mut client = WorkloadClient::new(channel);
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let quotas = shared.directory.borrow().policies.quotas(&own).to_vec();
        if quotas.is_empty() {
            continue;
        }
        let now = crate::unix_ms();
        let windows: HashMap<String, u64> =
            quotas.iter().map(|q| (q.label(), q.window(now))).collect();
        let spent = shared.quota.take_report();
        let request = UsageReport {
            service: own.name.to_string(),
            spent: spent.clone(),
        };
        match tokio::time::timeout(REPORT_TIMEOUT, client.report_usage(request)).await {
            Ok(Ok(reply)) => shared
                .quota
                .take_totals(reply.into_inner().totals, &windows),
            failed => {
                // Not counted at the gateway: count it again next time.
                let error = match failed {
                    Ok(Err(status)) => status.message().to_owned(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(error = %error, "quota report failed");
                let mut budgets = shared.quota.lock();
                for s in spent {
                    if let Some(budget) = budgets.get_mut(&(s.quota, s.who, s.window)) {
                        budget.total = budget.total.saturating_sub(s.count);
                        budget.unreported += s.count;
                    }
                }
            }
        }
    }
}

//! Which other replicas of this cluster's gateway are alive, and where their relays listen.
//! Every replica peers with other clusters, but a peer that dials the cluster's address reaches
//! one replica only: a replica without a connection to some cluster hands its sidecars' flows
//! for it to a sibling that has one. Each replica says that it is alive in a Lease of its own
//! (`strait-gateway-replica-<name>`, labelled [`MEMBER_LABEL`], the relay's address in an
//! annotation), renewed with its look at the leader's Lease; the leader deletes those left
//! behind by replicas that died. Kubernetes' own API servers find each other the same way.
//!
//! [`siblings`] and [`stale`] decide (no IO) from the Leases as listed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::{FIELD_MANAGER, Health};
use crate::Shared;

/// The annotation on a replica's own Lease that says where its relay listens.
pub const RELAY_ANNOTATION: &str = "strait.dev/relay-address";

/// The label on every replica's own Lease.
pub const MEMBER_LABEL: &str = "strait.dev/gateway-replica";
/// The prefix of a replica's own Lease's name.
const PREFIX: &str = "strait-gateway-replica-";
/// How many Lease durations a dead replica's Lease stays before the leader deletes it.
const STALE_AFTER: i64 = 10;

/// The name of the Lease in which the replica `me` says it is alive: lower case, and only the
/// characters an object name may hold.
pub fn member_name(me: &str) -> String {
    let mut name: String = me
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .take(253 - PREFIX.len())
        .collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    format!("{PREFIX}{name}")
}

fn renewed_ms(lease: &Lease) -> Option<(i64, i64)> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0.as_millisecond();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1)) * 1000;
    Some((renewed, duration))
}

/// The relay addresses of the other replicas alive at `now` (their Lease renewed within its
/// duration), in a stable order.
pub fn siblings(leases: &[Lease], me: &str, now: Timestamp) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = leases
        .iter()
        .filter(|l| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|holder| holder != me)
        })
        .filter(|l| {
            renewed_ms(l)
                .is_some_and(|(renewed, duration)| now.as_millisecond() < renewed + duration)
        })
        .filter_map(|l| l.metadata.annotations.as_ref()?.get(RELAY_ANNOTATION))
        .filter_map(|a| a.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The Leases of replicas dead for a long while (not renewed for [`STALE_AFTER`] durations),
/// by name: the leader deletes them.
pub fn stale(leases: &[Lease], now: Timestamp) -> Vec<String> {
    leases
        .iter()
        .filter(|l| {
            renewed_ms(l).is_none_or(|(renewed, duration)| {
                now.as_millisecond() >= renewed + STALE_AFTER * duration
            })
        })
        .filter_map(|l| l.metadata.name.clone())
        .collect()
}

/// One beat: says this replica is alive, reads which others are, and (the leader) clears what
/// dead ones left. Returns the siblings' relay addresses.
pub async fn beat(
    leases: &Api<Lease>,
    me: &str,
    relay: &str,
    seconds: i32,
    leads: bool,
) -> Result<Vec<SocketAddr>, kube::Error> {
    let now = Timestamp::now();
    let name = member_name(me);
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(MEMBER_LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([(RELAY_ANNOTATION.to_owned(), relay.to_owned())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    };
    // Server-side apply creates or renews in one request, with no version to race on: only
    // this replica writes its own Lease.
    leases
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    let listed = leases
        .list(&ListParams::default().labels(MEMBER_LABEL))
        .await?
        .items;
    if leads {
        for dead in stale(&listed, now) {
            // One that cannot be deleted now is tried again at the next beat.
            match leases.delete(&dead, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(lease = %dead, "deleted the Lease of a replica gone"),
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(lease = %dead, error = %super::describe(&e), "cannot delete the Lease of a replica gone");
                }
            }
        }
    }
    Ok(siblings(&listed, me, now))
}

/// Beats every third of the Lease duration until the gateway stops, keeping what it learns of
/// the siblings in [`Shared::siblings`] (as last known when the API cannot be read).
pub async fn run(
    shared: Arc<Shared>,
    leases: Api<Lease>,
    me: String,
    relay: String,
    seconds: i32,
    health: Arc<Health>,
) {
    let every =
        (Duration::from_secs(u64::from(seconds.unsigned_abs())) / 3).max(Duration::from_secs(1));
    loop {
        let beat = beat(&leases, &me, &relay, seconds, shared.leads());
        // Under the Lease turn: none after a clean stop deleted this replica's Lease.
        let Some(beat) = super::in_turn(&shared, every, beat).await else {
            return;
        };
        match beat {
            Ok(siblings) => {
                *crate::lock(&shared.siblings) = siblings;
                health.clear("replicas");
            }
            Err(e) => health.fail("replicas", super::describe(&e)),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// On a clean stop: this replica is no longer alive to its siblings.
pub async fn leave(leases: &Api<Lease>, me: &str) {
    let deleted = tokio::time::timeout(
        Duration::from_secs(2),
        leases.delete(&member_name(me), &DeleteParams::default()),
    )
    .await;
    if let Ok(Err(e)) = deleted
        && !matches!(&e, kube::Error::Api(status) if status.is_not_found())
    {
        tracing::warn!(error = %super::describe(&e), "cannot delete this replica's Lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn member(holder: &str, renewed: i64, relay: &str) -> Lease {
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(member_name(holder)),
                annotations: Some([(RELAY_ANNOTATION.to_owned(), relay.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_replica_hears_of_the_live_others_and_not_of_itself_or_the_dead() {
        let leases = [
            member("gw-a", 0, "10.0.0.1:4180"),
            member("gw-b", 10, "10.0.0.2:4180"),
            member("gw-c", -20, "10.0.0.3:4180"),
            member("gw-d", 10, "not an address"),
        ];
        let found = siblings(&leases, "gw-a", at(12));
        assert_eq!(found, ["10.0.0.2:4180".parse::<SocketAddr>().unwrap()]);
        // Not renewed for its whole duration: no longer counted.
        assert!(siblings(&leases, "gw-a", at(25)).is_empty());
    }

    #[test]
    fn only_leases_dead_for_ten_durations_are_cleared() {
        let leases = [member("gw-a", 0, "10.0.0.1:4180"), {
            let mut l = member("gw-b", 0, "10.0.0.2:4180");
            l.spec = None;
            l
        }];
        assert_eq!(stale(&leases, at(149)), [member_name("gw-b")]);
        assert_eq!(stale(&leases, at(150)).len(), 2);
    }

    #[test]
    fn a_member_lease_name_is_a_valid_object_name() {
        assert_eq!(
            member_name("gw-7d9f_X2"),
            "strait-gateway-replica-gw-7d9f-x2"
        );
        let long = member_name(&"a".repeat(400));
        assert_eq!(long.len(), 253);
        assert_eq!(member_name("Host_"), "strait-gateway-replica-host");
    }
}

//! Which of a cluster's gateway replicas leads: a `coordination.k8s.io/v1` Lease
//! (`strait-gateway` in the gateway's namespace). Every replica serves its sidecars, DNS and
//! peers; the one that holds the Lease also writes to the API (imports, policy resources,
//! statuses, the durable state). Each look at it also renews the replica's own Lease
//! ([`replicas`]). The holder renews the Lease every third of
//! its duration; another replica takes it over once it has gone unrenewed for the whole
//! duration (15 s by default), and a replica that stops cleanly gives it up at once.
//!
//! [`step`] decides (no IO) from the Lease as read; [`run`] reads and writes it, with the
//! resource version guarding every write, so two replicas can never both take it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

use super::{Health, replicas};
use crate::Shared;

/// The Lease's name.
pub const LEASE: &str = "strait-gateway";
/// The label on the leading replica's pod (`"true"`), by which the Service that carries QUIC
/// selects it: peers that dial the cluster reach the replica that writes their imports.
pub const LEADER_LABEL: &str = "strait.dev/leader";

/// What a replica does with the Lease as it reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, held by this replica.
    Create,
    /// This replica holds it: renew it.
    Renew,
    /// Its holder let it lapse (or gave it up): take it.
    TakeOver,
    /// Another replica holds it.
    Follow { holder: String },
}

/// Decides what to do with the Lease `spec` (none: it does not exist) at `now`.
pub fn step(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    let lapsed = spec
        .renew_time
        .as_ref()
        .is_none_or(|renewed| now.as_millisecond() >= renewed.0.as_millisecond() + duration * 1000);
    if holder.is_empty() || lapsed {
        Step::TakeOver
    } else {
        Step::Follow { holder }
    }
}

/// This replica's name in the Lease: the pod's name where the pod says it (`POD_NAME`, from
/// the downward API), else the host's name and the process id.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "gateway".into());
            format!("{host}-{}", std::process::id())
        })
}

fn held_by(me: &str, now: Timestamp, seconds: i32, transitions: i32, acquired: bool) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: acquired.then_some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Keeps this replica's part in the Lease until the gateway stops, telling the gateway
/// whether it leads ([`step_down`] gives it up on the way out).
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    namespace: String,
    seconds: u32,
    health: Arc<Health>,
) {
    let me = identity();
    let leases = Api::<Lease>::namespaced(client.clone(), &namespace);
    let pods = Api::<Pod>::namespaced(client, &namespace);
    // In a pod, it says on the pod whether it leads; outside one there is no pod to label.
    let pod = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty());
    let mut labelled: Option<bool> = None;
    let seconds = i32::try_from(seconds).unwrap_or(15);
    let duration = Duration::from_secs(u64::from(seconds.unsigned_abs()));
    let mut last_renewed: Option<std::time::Instant> = None;
    tracing::info!(replica = %me, lease = LEASE, "Kubernetes mode: taking part in the Lease");
    // The replica's own Lease beats on its own: a slow beat must not delay a renewal.
    tokio::spawn(replicas::run(
        shared.clone(),
        leases.clone(),
        me.clone(),
        shared.relay_advertised().to_string(),
        seconds,
        health.clone(),
    ));
    loop {
        // A hung request must not outlast the Lease: the leader would go on believing it
        // leads after another replica took over.
        let limit = (duration / 3).max(Duration::from_secs(1));
        let Some(outcome) = super::in_turn(&shared, limit, attempt(&leases, &me, seconds)).await
        else {
            return;
        };
        let leads = match outcome {
            Ok((leads, replaced)) => {
                health.clear("lease");
                if let Some(previous) = replaced.filter(|p| !p.is_empty() && pod.is_some()) {
                    // The replica taken over from may be gone without a word: its pod no
                    // longer says it leads.
                    if let Err(e) = label_pod(&pods, &previous, false).await {
                        tracing::warn!(pod = %previous, error = %super::describe(&e), "cannot unlabel the former leader's pod");
                    }
                }
                if leads {
                    last_renewed = Some(std::time::Instant::now());
                }
                leads
            }
            Err(e) => {
                health.fail("lease", super::describe(&e));
                // Unsure: a leader keeps leading only while its last renewal still holds.
                last_renewed.is_some_and(|at| at.elapsed() < duration)
            }
        };
        if !leads {
            last_renewed = None;
        }
        shared.set_leading(leads);
        if let Some(pod) = &pod
            && labelled != Some(leads)
        {
            let labelling = tokio::time::timeout(limit, label_pod(&pods, pod, leads)).await;
            match labelling
                .unwrap_or_else(|_| Err(kube::Error::Service("labelling the pod timed out".into())))
            {
                Ok(()) => labelled = Some(leads),
                Err(e) => health.fail(
                    "lease",
                    format!("cannot label pod {pod}: {}", super::describe(&e)),
                ),
            }
        }
        let pause = if leads { duration / 3 } else { duration / 5 };
        tokio::select! {
            () = tokio::time::sleep(pause.max(Duration::from_millis(500))) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// On a clean stop (the gateway awaits it before it exits): a leader gives the Lease up and
/// its pod stops saying it leads, so a standby takes over at once.
pub async fn step_down(shared: &Shared) {
    let (Some(client), Some(config)) = (&shared.kube, &shared.config.kubernetes) else {
        return;
    };
    // After any look at the Lease under way: none starts once the gateway stops. Whether this
    // replica holds the Lease is read from the Lease itself: the look that just ended may have
    // taken it without the gateway having heard yet.
    let _turn = shared.lease_turn.lock().await;
    shared.set_leading(false);
    let leases = Api::<Lease>::namespaced(client.clone(), &config.namespace);
    replicas::leave(&leases, &identity()).await;
    if !release(&leases, &identity()).await {
        return;
    }
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
    {
        let pods = Api::<Pod>::namespaced(client.clone(), &config.namespace);
        let _ = tokio::time::timeout(Duration::from_secs(2), label_pod(&pods, &pod, false)).await;
    }
}

/// Says on a pod whether it leads (a merge patch of its label); a pod that is gone is fine.
async fn label_pod(pods: &Api<Pod>, name: &str, leads: bool) -> Result<(), kube::Error> {
    let value = if leads {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    match pods
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// One look at the Lease; whether this replica holds it afterwards, and the holder it took it
/// over from.
async fn attempt(
    leases: &Api<Lease>,
    me: &str,
    seconds: i32,
) -> Result<(bool, Option<String>), kube::Error> {
    let now = Timestamp::now();
    let current = leases.get_opt(LEASE).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    let decided = step(spec, me, now);
    let wanted = match &decided {
        Step::Follow { .. } => return Ok((false, None)),
        Step::Create => {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEASE.into()),
                    ..Default::default()
                },
                spec: Some(held_by(me, now, seconds, 0, true)),
            };
            return match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    tracing::info!(replica = %me, "this replica leads (Lease created)");
                    Ok((true, None))
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok((false, None)),
                Err(e) => Err(e),
            };
        }
        Step::Renew => {
            let mut spec = held_by(me, now, seconds, transitions, false);
            spec.acquire_time = current
                .as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.acquire_time.clone());
            spec
        }
        Step::TakeOver => held_by(me, now, seconds, transitions + 1, true),
    };
    let Some(mut lease) = current else {
        return Ok((false, None));
    };
    let previous = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|holder| holder != me);
    lease.spec = Some(wanted);
    match leases.replace(LEASE, &PostParams::default(), &lease).await {
        Ok(_) => {
            if decided == Step::TakeOver {
                tracing::info!(replica = %me, "this replica leads (Lease taken over)");
            }
            Ok((true, previous))
        }
        // Another replica wrote first: read again next time.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok((false, None)),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (a clean stop), so another replica takes it without waiting; whether
/// this replica held it.
async fn release(leases: &Api<Lease>, me: &str) -> bool {
    let read = tokio::time::timeout(Duration::from_secs(2), leases.get_opt(LEASE)).await;
    let Ok(Ok(Some(mut lease))) = read else {
        return false;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return false;
    };
    if spec.holder_identity.as_deref() != Some(me) {
        return false;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match tokio::time::timeout(
        Duration::from_secs(2),
        leases.replace(LEASE, &PostParams::default(), &lease),
    )
    .await
    {
        Ok(Ok(_)) => tracing::info!(replica = %me, "Lease given up"),
        Ok(Err(e)) => tracing::warn!(error = %super::describe(&e), "cannot give the Lease up"),
        Err(_) => tracing::warn!("cannot give the Lease up: the API did not answer"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_replica_creates_renews_follows_and_takes_over_a_lapsed_lease() {
        assert_eq!(step(None, "a", at(0)), Step::Create);
        assert_eq!(step(Some(&held("a", 0)), "a", at(100)), Step::Renew);
        assert_eq!(
            step(Some(&held("a", 0)), "b", at(14)),
            Step::Follow { holder: "a".into() }
        );
        assert_eq!(step(Some(&held("a", 0)), "b", at(15)), Step::TakeOver);
        // Given up on a clean stop: taken at once.
        let mut released = held("a", 0);
        released.holder_identity = None;
        released.renew_time = None;
        assert_eq!(step(Some(&released), "b", at(1)), Step::TakeOver);
    }
}

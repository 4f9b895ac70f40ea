//! Request mirroring on the outbound path (an HTTPRoute rule's `RequestMirror` filter): a copy
//! of a share of the rule's requests goes to another service, in a task of its own, and its
//! answer is dropped. The original request never waits for the copy and never fails because
//! of it. Copies are bounded: only requests whose body is small enough to keep (as for
//! retries), at most `--max-mirrors-in-flight` at once per sidecar, each within the request
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use strait_federation::catalog::ServiceKey;
use strait_federation::identity::Namespace;
use strait_federation::policy::route::Mirror;

use crate::Shared;
use crate::attempt::send;
use crate::directory::{Destination, Directory};
use crate::metrics::{Direction, Route};
use crate::plan::{Plan, plan_destination};
use crate::retry::Kept;

/// The header a copy carries, so that the mirror's app can tell it from live traffic (and,
/// say, not charge a card twice).
pub const MIRRORED_HEADER: &str = "strait-mirrored";

/// Whether this request is one of the share `mirror` copies (`random`: any `u64`, uniformly
/// drawn).
pub fn chosen(mirror: &Mirror, random: u64) -> bool {
    random % 100 < u64::from(mirror.percent)
}

/// Sends a copy of the request `kept` holds to `mirror` (a service of `namespace`, on the
/// request's `port`), unless its body was too large to keep or too many copies are in flight.
pub fn send_copy(
    shared: &Arc<Shared>,
    directory: &Directory,
    namespace: &Namespace,
    port: Option<u16>,
    mirror: &Mirror,
    kept: &Kept,
    limit: Duration,
) {
    let service = ServiceKey {
        namespace: namespace.clone(),
        name: mirror.service.clone(),
    };
    let local = shared.cluster.as_str();
    let Kept::Replay(replay) = kept else {
        return record(shared, &service, local, "skipped");
    };
    let Some(permit) = shared.limits.mirrors.take(|| "a mirror copy".to_owned()) else {
        return record(shared, &service, local, "skipped");
    };
    let destination = Destination {
        service: service.clone(),
        cluster: mirror.cluster.clone(),
        hostname: None,
        port,
    };
    let Ok(Plan { tiers, .. }) = plan_destination(directory, destination) else {
        return record(shared, &service, local, "failed");
    };
    let mut copy = replay.request();
    copy.headers_mut()
        .insert(MIRRORED_HEADER, HeaderValue::from_static("true"));
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let sent = tokio::time::timeout(
            limit,
            send(&shared, &tiers, &[], &service.namespace, copy, None),
        )
        .await;
        match sent {
            // Answered, whatever the status: the copy was delivered. Its body is dropped.
            Ok(Ok((target, _))) => {
                let cluster = target.cluster(&shared.cluster).clone();
                record(&shared, &service, cluster.as_str(), "sent");
            }
            _ => record(&shared, &service, shared.cluster.as_str(), "failed"),
        }
    });
}

/// Counts a copy to `service` (in `cluster`, when one answered).
fn record(shared: &Shared, service: &ServiceKey, cluster: &str, result: &str) {
    shared.metrics.mirror(
        &Route {
            direction: Direction::Outbound,
            source_cluster: shared.cluster.as_str(),
            destination_cluster: cluster,
            namespace: service.namespace.as_str(),
            service: service.name.as_str(),
        },
        result,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_copies_its_share_of_requests() {
        let mirror = Mirror {
            service: strait_federation::identity::ServiceName::new("api-shadow").unwrap(),
            cluster: None,
            percent: 10,
        };
        let copied = (0..10_000u64)
            .filter(|n| chosen(&mirror, n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .count();
        assert!((800..1200).contains(&copied), "{copied}");
        let all = Mirror {
            percent: 100,
            ..mirror
        };
        assert!((0..1000u64).all(|n| chosen(&all, n)));
    }
}

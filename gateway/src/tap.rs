//! `strait tap`: operators' taps on this cluster's live requests. A tap is named to every
//! sidecar in its view; sidecars report the requests that match it; the gateway passes each one
//! on to the tap's stream, at most the tap's rate, and forgets the tap when its caller hangs up.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use strait_federation::identity::Namespace;
use strait_federation::policy::ratelimit::{Limit, TokenBucket};
use strait_federation::proto::tap::{TapEvent, TapFilter};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{Shared, lock};

/// Events a second a tap gets unless it asks otherwise, and the most it may ask.
const DEFAULT_RPS: u32 = 100;
const MAX_RPS: u32 = 1_000;
/// Taps in force at once, at most.
const MAX_TAPS: usize = 64;
/// Events a sidecar may report in one call.
pub const MAX_EVENTS_PER_REPORT: usize = 1_000;

/// One tap in force.
struct Tap {
    filter: TapFilter,
    limit: Limit,
    bucket: TokenBucket,
    events: mpsc::Sender<Result<TapEvent, Status>>,
}

/// The taps in force.
#[derive(Default)]
pub struct Taps {
    taps: std::sync::Mutex<Vec<Tap>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Taps {
    /// The filters sidecars are told about.
    pub fn filters(&self) -> Vec<TapFilter> {
        lock(&self.taps).iter().map(|t| t.filter.clone()).collect()
    }
}

/// What a tap's stream yields.
pub type TapStream = Pin<Box<dyn Stream<Item = Result<TapEvent, Status>> + Send>>;

/// Starts a tap; its stream ends the tap when dropped (the operator hung up).
pub fn start(
    shared: &Arc<Shared>,
    namespace: &str,
    service: &str,
    max_rps: u32,
) -> Result<TapStream, Status> {
    Namespace::new(namespace).map_err(|e| Status::invalid_argument(format!("namespace: {e}")))?;
    if !service.is_empty() {
        strait_federation::identity::ServiceName::new(service)
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?;
    }
    let rps = match max_rps {
        0 => DEFAULT_RPS,
        n => n.min(MAX_RPS),
    };
    let limit = Limit {
        requests: rps,
        per: std::time::Duration::from_secs(1),
        burst: rps,
    };
    let (tx, rx) = mpsc::channel(rps as usize);
    let id = shared
        .taps
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    {
        let mut taps = lock(&shared.taps.taps);
        if taps.len() >= MAX_TAPS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_TAPS} taps are in force on this gateway already"
            )));
        }
        taps.push(Tap {
            filter: TapFilter {
                id,
                namespace: namespace.to_owned(),
                service: service.to_owned(),
            },
            limit,
            bucket: TokenBucket::new(&limit, Instant::now()),
            events: tx,
        });
    }
    shared.views_changed();
    tracing::info!(tap = id, namespace, service, rps, "tap started");
    let ending = Ending {
        shared: shared.clone(),
        id,
    };
    Ok(Box::pin(futures::stream::unfold(
        (rx, ending),
        |(mut rx, ending)| async move { rx.recv().await.map(|event| (event, (rx, ending))) },
    )))
}

/// Ends a tap when its stream is dropped.
struct Ending {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Ending {
    fn drop(&mut self) {
        lock(&self.shared.taps.taps).retain(|t| t.filter.id != self.id);
        self.shared.views_changed();
        tracing::info!(tap = self.id, "tap ended");
    }
}

/// Whether an event is one a filter asked for.
fn matches(filter: &TapFilter, event: &TapEvent) -> bool {
    event.namespace == filter.namespace
        && (filter.service.is_empty() || event.service == filter.service)
}

/// Passes a sidecar's events on to the taps they match, within each tap's rate. A sidecar of
/// `namespace` reports what it served in its namespace and what it sent anywhere.
pub fn report(shared: &Shared, namespace: &Namespace, events: Vec<TapEvent>) -> Result<(), Status> {
    if events.len() > MAX_EVENTS_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "{} events in one report, more than {MAX_EVENTS_PER_REPORT}",
            events.len()
        )));
    }
    let now = Instant::now();
    let mut taps = lock(&shared.taps.taps);
    for event in events {
        if event.direction == "inbound" && event.namespace != namespace.as_str() {
            continue;
        }
        for tap in taps.iter_mut().filter(|t| matches(&t.filter, &event)) {
            if tap.bucket.take(&tap.limit, now).is_ok() {
                let mut event = event.clone();
                event.tap = tap.filter.id;
                // A full stream (a slow operator) loses events, never holds the sidecar up.
                let _ = tap.events.try_send(Ok(event));
            }
        }
    }
    Ok(())
}

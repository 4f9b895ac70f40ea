//! The request series of a sidecar (a route and a status class, with its counter and latency
//! histogram), kept by their labels so that a request finds both in one look-up.
//!
//! prometheus' own look-up, made twice a request (counter, then histogram), hashes the label
//! values a byte at a time (FNV), hashes that hash again (SipHash) under a lock, and clones the
//! handle it finds.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use hashbrown::HashTable;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::{Direction, Route};

/// One series: its labels, and the handles of its two metrics.
struct Series {
    hash: u64,
    direction: Direction,
    /// The route's labels after its direction: source cluster, destination cluster,
    /// namespace, service.
    names: [Box<str>; 4],
    status_class: &'static str,
    requests: IntCounter,
    latency: Histogram,
}

impl Series {
    fn is(&self, route: &Route<'_>, status_class: &str) -> bool {
        let [_, names @ ..] = route.labels();
        self.direction == route.direction
            && self.status_class == status_class
            && self.names.iter().map(AsRef::as_ref).eq(names)
    }
}

/// The request counter and latency histogram of every route, by status class.
pub(super) struct RequestSeries {
    requests: IntCounterVec,
    latency: HistogramVec,
    hasher: foldhash::fast::RandomState,
    /// Grows as prometheus' own children do: one entry per series ever seen, never removed.
    series: Mutex<HashTable<Series>>,
}

impl RequestSeries {
    /// Series of `requests` and `latency`, whose labels are the route's five and the status
    /// class.
    pub(super) fn new(requests: IntCounterVec, latency: HistogramVec) -> Self {
        Self {
            requests,
            latency,
            hasher: foldhash::fast::RandomState::default(),
            series: Mutex::new(HashTable::new()),
        }
    }

    /// Counts one request of `route` with `status_class`, and its latency in seconds.
    pub(super) fn record(&self, route: &Route<'_>, status_class: &'static str, seconds: f64) {
        let hash = self.hash(route, status_class);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series
            .entry(hash, |s| s.is(route, status_class), |s| s.hash)
            .or_insert_with(|| self.make(hash, route, status_class));
        let series = entry.get();
        series.requests.inc();
        series.latency.observe(seconds);
    }

    fn hash(&self, route: &Route<'_>, status_class: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        let [_, names @ ..] = route.labels();
        route.direction.hash(&mut hasher);
        names.hash(&mut hasher);
        status_class.hash(&mut hasher);
        hasher.finish()
    }

    fn make(&self, hash: u64, route: &Route<'_>, status_class: &'static str) -> Series {
        let [direction, b, c, d, e] = route.labels();
        let labels = [direction, b, c, d, e, status_class];
        Series {
            hash,
            direction: route.direction,
            names: [b, c, d, e].map(Box::from),
            status_class,
            requests: self.requests.with_label_values(&labels),
            latency: self.latency.with_label_values(&labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Direction, Metrics, Route};

    fn route<'a>(source: &'a str, service: &'a str) -> Route<'a> {
        Route {
            direction: Direction::Outbound,
            source_cluster: source,
            destination_cluster: "east",
            namespace: "shop",
            service,
        }
    }

    /// The value of the line of `name` whose labels include every one of `labels`.
    fn sample(metrics: &Metrics, name: &str, labels: &[&str]) -> Option<f64> {
        metrics.encode().lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|l| set.split(',').any(|s| s == *l))
                .then(|| value.parse().ok())?
        })
    }

    #[test]
    fn each_route_and_status_class_counts_in_its_own_series() {
        let metrics = Metrics::new("east");
        let ms = Duration::from_millis(3);
        for _ in 0..3 {
            metrics.request(&route("east", "api"), 200, ms);
        }
        metrics.request(&route("east", "api"), 503, ms);
        // Differs from the first only in one label, whose text is another's prefix.
        metrics.request(&route("eas", "api"), 200, ms);
        metrics.request(&route("east", "web"), 204, Duration::from_secs(2));

        let (requests, buckets) = (
            "strait_requests_total",
            "strait_request_duration_seconds_bucket",
        );
        let (east, api, web) = (
            r#"source_cluster="east""#,
            r#"service="api""#,
            r#"service="web""#,
        );
        let (ok, failed) = (r#"status_class="2xx""#, r#"status_class="5xx""#);
        let cases = [
            (requests, vec![east, api, ok], 3.0),
            (requests, vec![east, api, failed], 1.0),
            (requests, vec![r#"source_cluster="eas""#, api], 1.0),
            // The 2 s request is above the 1 s bucket.
            (buckets, vec![web, r#"le="1""#], 0.0),
            (buckets, vec![web, r#"le="+Inf""#], 1.0),
            // The histogram counts what the counter counts.
            (
                "strait_request_duration_seconds_count",
                vec![east, api, ok],
                3.0,
            ),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(
                sample(&metrics, name, &labels),
                Some(expected),
                "{name} {labels:?}"
            );
        }
    }
}

//! Reports the sidecar's golden metrics to its gateway: every second, what its Prometheus
//! counters grew by since the last report that reached the gateway, as series of the mesh's
//! golden metrics. Read from the registry, so the request path does no extra work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::proto::MetricFamily;
use strait_federation::golden::{self, BUCKET_COUNT, Counts, Direction, SeriesKey};
use strait_federation::proto::workload::MetricsReport;
use strait_federation::proto::workload::workload_client::WorkloadClient;
use tonic::transport::Channel;

use crate::Shared;

/// How often the sidecar reports (when anything grew).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every series' counts so far, from the registry's families.
pub fn cumulative(families: &[MetricFamily], workload: &str) -> HashMap<SeriesKey, Counts> {
    let mut all: HashMap<SeriesKey, Counts> = HashMap::new();
    for family in families {
        let name = family.name();
        for metric in family.get_metric() {
            let label = |wanted: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == wanted)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let key = || SeriesKey {
                direction: if label("direction") == "outbound" {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                namespace: label("namespace"),
                service: label("service"),
                source_cluster: label("source_cluster"),
                destination_cluster: label("destination_cluster"),
                workload: workload.to_owned(),
            };
            match name {
                "strait_requests_total" => {
                    let class = label("status_class");
                    let index = class
                        .strip_suffix("xx")
                        .and_then(|d| d.parse::<usize>().ok())
                        .filter(|d| (1..=5).contains(d));
                    if let Some(index) = index {
                        all.entry(key()).or_default().status_classes[index - 1] +=
                            metric.get_counter().get_value() as u64;
                    }
                }
                "strait_request_duration_seconds" => {
                    let histogram = metric.get_histogram();
                    let counts = all.entry(key()).or_default();
                    let mut below = 0u64;
                    let buckets = histogram.get_bucket();
                    for (index, bucket) in buckets.iter().take(BUCKET_COUNT - 1).enumerate() {
                        let upto = bucket.cumulative_count();
                        counts.latency[index] += upto.saturating_sub(below);
                        below = upto;
                    }
                    counts.latency[BUCKET_COUNT - 1] +=
                        histogram.get_sample_count().saturating_sub(below);
                }
                "strait_tcp_connections_total" => {
                    all.entry(key()).or_default().tcp_connections +=
                        metric.get_counter().get_value() as u64;
                }
                "strait_tcp_bytes_total" => {
                    all.entry(key()).or_default().tcp_bytes +=
                        metric.get_counter().get_value() as u64;
                }
                _ => {}
            }
        }
    }
    all
}

/// What grew from `before` to `now`, series by series (counters only grow).
pub fn growth(
    before: &HashMap<SeriesKey, Counts>,
    now: &HashMap<SeriesKey, Counts>,
) -> Vec<(SeriesKey, Counts)> {
    let mut grown = Vec::new();
    for (key, current) in now {
        let old = before.get(key).copied().unwrap_or_default();
        let mut delta = Counts {
            tcp_connections: current.tcp_connections.saturating_sub(old.tcp_connections),
            tcp_bytes: current.tcp_bytes.saturating_sub(old.tcp_bytes),
            ..Counts::default()
        };
        for (d, (c, o)) in delta
            .status_classes
            .iter_mut()
            .zip(current.status_classes.iter().zip(old.status_classes))
        {
            *d = c.saturating_sub(o);
        }
        for (d, (c, o)) in delta
            .latency
            .iter_mut()
            .zip(current.latency.iter().zip(old.latency))
        {
            *d = c.saturating_sub(o);
        }
        if !delta.is_empty() {
            grown.push((key.clone(), delta));
        }
    }
    grown.sort_by(|a, b| a.0.cmp(&b.0));
    grown
}

/// Reports what grew every [`REPORT_INTERVAL`]; what a failed report carried goes with the
/// next one.
pub async fn report(shared: Arc<Shared>, channel: Channel) {
    let mut client = WorkloadClient::new(channel);
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let workload = shared.config.workload.clone().unwrap_or_default();
    let mut reported: HashMap<SeriesKey, Counts> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let now = cumulative(&shared.metrics.gather(), &workload);
        let grown = growth(&reported, &now);
        if grown.is_empty() {
            continue;
        }
        for chunk in grown.chunks(golden::MAX_SERIES_PER_MESSAGE) {
            let (names, series) = golden::encode(chunk.iter().map(|(k, c)| (k, c)));
            let request = MetricsReport { names, series };
            let failed =
                match tokio::time::timeout(REPORT_TIMEOUT, client.report_metrics(request)).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(status)) => Some(status.message().to_owned()),
                    Err(_) => Some("timed out".to_owned()),
                };
            match failed {
                // What reached the gateway is never sent again; what did not goes next time.
                None => {
                    for (key, delta) in chunk {
                        reported.entry(key.clone()).or_default().add(delta);
                    }
                }
                Some(error) => tracing::debug!(error = %error, "golden metrics report failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Route};

    fn route<'a>(direction: crate::metrics::Direction) -> Route<'a> {
        Route {
            direction,
            source_cluster: "east",
            destination_cluster: "west",
            namespace: "shop",
            service: "api",
        }
    }

    #[test]
    fn counters_become_series_and_only_growth_is_reported() {
        let metrics = Metrics::new("west");
        let inbound = route(crate::metrics::Direction::Inbound);
        metrics.request(&inbound, 200, Duration::from_micros(1_500));
        metrics.request(&inbound, 503, Duration::from_millis(20));
        metrics.tcp_opened(&inbound);
        metrics.tcp_closed(&inbound, 10, 32);
        let first = cumulative(&metrics.gather(), "deploy/api");
        let grown = growth(&HashMap::new(), &first);
        assert_eq!(grown.len(), 1, "{grown:?}");
        let (key, counts) = &grown[0];
        assert_eq!(key.direction, Direction::Inbound);
        assert_eq!(
            (key.service.as_str(), key.workload.as_str()),
            ("api", "deploy/api")
        );
        assert_eq!(counts.status_classes, [0, 1, 0, 0, 1]);
        // 1.5 ms lands in the 1–2 ms bucket, 20 ms in the 10–25 ms one.
        assert_eq!((counts.latency[3], counts.latency[8]), (1, 1));
        assert_eq!(counts.latency.iter().sum::<u64>(), 2);
        assert_eq!((counts.tcp_connections, counts.tcp_bytes), (1, 42));

        metrics.request(&inbound, 200, Duration::from_secs(30));
        let second = cumulative(&metrics.gather(), "deploy/api");
        let grown = growth(&first, &second);
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].1.status_classes, [0, 1, 0, 0, 0]);
        // Slower than the last bound: the unbounded bucket.
        assert_eq!(grown[0].1.latency[BUCKET_COUNT - 1], 1);
        assert!(growth(&second, &second).is_empty());
    }
}

//! The gateway's part in the mesh's golden metrics: its sidecars' reports summed into this
//! cluster's intervals, sealed intervals sent to the peers (and the peers' passed on), and the
//! summaries `strait stat` and the dashboard show. The book itself is
//! `strait_federation::golden`.

use strait_federation::golden::{self, Direction, GoldenBook, Row, Summary};
use strait_federation::identity::{ClusterName, Namespace};
use strait_federation::proto::golden::Batch;
use strait_federation::proto::operator::{Latency, StatRequest, StatResponse, StatRow};
use strait_federation::proto::workload::MetricsReport;

use crate::{Shared, lock, unix_now_ms};

/// The window `stat` sums over unless asked otherwise.
pub const DEFAULT_WINDOW_SECONDS: u32 = 30;

/// A new book for the gateway's configuration. Every replica of a cluster's gateway sums the
/// reports of the sidecars connected to it, so in Kubernetes mode each replica is an origin of
/// its own (`cluster/replica`), and readers add the replicas up.
pub fn book(config: &crate::config::GatewayConfig, replica: &str) -> GoldenBook {
    let origin = if replica.is_empty() {
        config.cluster.to_string()
    } else {
        format!("{}/{replica}", config.cluster)
    };
    GoldenBook::new(&origin, config.metrics.golden())
}

/// Adds a sidecar's report. A sidecar reports for its own cluster: what it served in its own
/// namespace, and what it sent from this cluster.
pub fn report(shared: &Shared, namespace: &Namespace, report: MetricsReport) -> Result<(), String> {
    let series = golden::decode(&report.names, &report.series).map_err(|e| e.to_string())?;
    let cluster = shared.config.cluster.as_str();
    for (number, (key, _)) in series.iter().enumerate() {
        let (field, value) = match key.direction {
            Direction::Inbound => ("destination_cluster", &key.destination_cluster),
            Direction::Outbound => ("source_cluster", &key.source_cluster),
        };
        if value != cluster {
            return Err(format!(
                "series {number}: {field} is {value:?}, but this is the gateway of {cluster}"
            ));
        }
        if key.direction == Direction::Inbound && key.namespace != namespace.as_str() {
            return Err(format!(
                "series {number}: served in namespace {:?}, but the caller is of {namespace}",
                key.namespace
            ));
        }
    }
    lock(&shared.golden).record(unix_now_ms(), series);
    Ok(())
}

/// Seals the intervals that closed and forgets what is too old; wakes the peer sessions when
/// there is something to send.
pub fn tick(shared: &Shared) {
    let now = unix_now_ms();
    let (sealed, held, dropped) = {
        let mut book = lock(&shared.golden);
        let sealed = book.seal(now);
        book.expire(now);
        (sealed, book.series_held(), book.dropped)
    };
    shared.metrics.golden_series.set(held as i64);
    let counted = shared.metrics.golden_dropped.get();
    shared
        .metrics
        .golden_dropped
        .inc_by(dropped.saturating_sub(counted));
    if sealed {
        shared.golden_tx.send_modify(|n| *n += 1);
    }
}

/// Merges a batch from a peer; a bad one is logged and left out (metrics never end a peering).
pub fn merge(shared: &Shared, peer: &ClusterName, batch: Batch) {
    let merged = lock(&shared.golden).merge(batch, unix_now_ms(), peer.as_str());
    match merged {
        Ok(true) => {
            shared.golden_tx.send_modify(|n| *n += 1);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(peer = %peer, error = %e, "left out golden metrics from a peer"),
    }
}

/// The batches a peer should get after `after`, and where to go on from.
pub fn outgoing(shared: &Shared, peer: &ClusterName, after: u64) -> (Vec<Batch>, u64) {
    lock(&shared.golden).outgoing(after, peer.as_str())
}

/// What `strait stat` asked.
pub fn stat(shared: &Shared, request: &StatRequest) -> Result<StatResponse, String> {
    let book = lock(&shared.golden);
    let retained_seconds = (book.config().retained * book.config().interval_ms / 1000) as u32;
    let window_seconds = match request.window_seconds {
        0 => DEFAULT_WINDOW_SECONDS.min(retained_seconds),
        w if w > retained_seconds => {
            return Err(format!(
                "a window of {w} s is longer than the {retained_seconds} s this gateway keeps"
            ));
        }
        w => w,
    };
    let rows = book.rows(unix_now_ms(), u64::from(window_seconds) * 1000);
    drop(book);
    let local = shared.config.cluster.as_str();
    let keep = |row: &Row, direction: Direction| {
        row.key.direction == direction
            && (request.all_clusters || golden::origin_cluster(&row.origin) == local)
            && (request.namespace.is_empty() || row.key.namespace == request.namespace)
    };
    let rows = match request.by.as_str() {
        "services" | "" => grouped(&rows, |r| {
            keep(r, Direction::Inbound).then(|| RowKey {
                namespace: r.key.namespace.clone(),
                service: r.key.service.clone(),
                workload: String::new(),
                source_cluster: r.key.source_cluster.clone(),
                destination_cluster: r.key.destination_cluster.clone(),
            })
        }),
        "workloads" => grouped(&rows, |r| {
            keep(r, Direction::Inbound).then(|| RowKey {
                namespace: r.key.namespace.clone(),
                service: String::new(),
                workload: r.key.workload.clone(),
                source_cluster: r.key.source_cluster.clone(),
                destination_cluster: r.key.destination_cluster.clone(),
            })
        }),
        "links" => grouped(&rows, |r| {
            keep(r, Direction::Outbound).then(|| RowKey {
                namespace: String::new(),
                service: String::new(),
                workload: String::new(),
                source_cluster: r.key.source_cluster.clone(),
                destination_cluster: r.key.destination_cluster.clone(),
            })
        }),
        other => {
            return Err(format!(
                "by {other:?}: services, workloads or links expected"
            ));
        }
    };
    Ok(StatResponse {
        rows,
        window_seconds,
    })
}

/// What a row of `stat` is grouped by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    namespace: String,
    service: String,
    workload: String,
    source_cluster: String,
    destination_cluster: String,
}

fn grouped(rows: &[Row], by: impl Fn(&Row) -> Option<RowKey>) -> Vec<StatRow> {
    golden::group(rows, by)
        .into_iter()
        .map(|(key, summary)| stat_row(key, &summary))
        .collect()
}

fn stat_row(key: RowKey, summary: &Summary) -> StatRow {
    StatRow {
        namespace: key.namespace,
        service: key.service,
        workload: key.workload,
        source_cluster: key.source_cluster,
        destination_cluster: key.destination_cluster,
        requests: summary.requests,
        success_rate: summary.success_rate,
        rps: summary.rps,
        latency_ms: summary
            .latency_ms
            .map(|[p50, p95, p99]| Latency { p50, p95, p99 }),
        tcp_connections: summary.tcp_connections,
        tcp_bytes: summary.tcp_bytes,
        stale: summary.stale,
        seconds: summary.seconds,
    }
}

/// Every cluster the book has figures of, with whether they are stale.
pub fn clusters(shared: &Shared) -> Vec<(String, bool)> {
    lock(&shared.golden).clusters(unix_now_ms())
}

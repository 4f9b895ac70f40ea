//! The mesh's golden metrics as gateways hold and exchange them. A gateway sums what its
//! sidecars report into intervals of wall-clock time; when an interval closes it is sealed and
//! sent to every peer, which passes it on to its own peers, so every gateway holds every
//! cluster's figures without a central Prometheus. Merging is idempotent per (origin, interval,
//! series): a batch repeated, or arriving by two paths, counts once. Figures from a cluster not
//! heard from lately are stale, and shown as such, never as current.
//!
//! Sans-IO: time comes in as Unix milliseconds; nothing here reads a clock or a socket.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::proto::golden as wire;

#[cfg(test)]
mod tests;

/// Upper bounds of the latency buckets, in seconds: fine below 10 ms, where proxies live. One
/// more bucket holds everything slower.
pub const BUCKETS: [f64; 16] = [
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Latency buckets, the unbounded one included.
pub const BUCKET_COUNT: usize = BUCKETS.len() + 1;
/// HTTP status classes, 1xx to 5xx.
pub const CLASSES: usize = 5;
/// The longest name (namespace, service, cluster, workload) a series may carry.
pub const MAX_NAME: usize = 253;
/// The most series one message (a sidecar's report, a part of a batch) may carry.
pub const MAX_SERIES_PER_MESSAGE: usize = 2_000;
/// How far ahead of the receiver's clock an interval may be (clock skew between gateways).
const MAX_AHEAD_MS: u64 = 3_600_000;
/// The most origins (clusters, or gateway replicas of a cluster) a gateway keeps figures of.
const MAX_ORIGINS: usize = 1_024;
/// The longest origin name: a cluster name, or `cluster/replica` (a pod's name).
const MAX_ORIGIN: usize = 253;

/// The cluster of an origin: `east`, or `east/gateway-0` for one replica of east's gateway
/// (replicas each sum their own sidecars' reports, so each is an origin of its own).
pub fn origin_cluster(origin: &str) -> &str {
    origin.split('/').next().unwrap_or(origin)
}

/// Which side of a sidecar a series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Requests the sidecar's workload served.
    Inbound,
    /// Requests the sidecar's workload sent.
    Outbound,
}

/// One series: one direction of one service's traffic between two clusters, as one workload's
/// sidecars counted it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub direction: Direction,
    pub namespace: String,
    pub service: String,
    pub source_cluster: String,
    pub destination_cluster: String,
    /// `deploy/web` and the like; empty when the sidecar does not know.
    pub workload: String,
}

/// What was counted for a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// HTTP requests by status class, 1xx to 5xx.
    pub status_classes: [u64; CLASSES],
    /// HTTP requests by latency bucket ([`BUCKETS`], then the unbounded one).
    pub latency: [u64; BUCKET_COUNT],
    /// Opaque TCP connections opened.
    pub tcp_connections: u64,
    /// Bytes that connections carried, both ways (counted when each ends).
    pub tcp_bytes: u64,
}

impl Counts {
    /// Adds another count to this one.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.status_classes.iter_mut().zip(other.status_classes) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a = a.saturating_add(b);
        }
        self.tcp_connections = self.tcp_connections.saturating_add(other.tcp_connections);
        self.tcp_bytes = self.tcp_bytes.saturating_add(other.tcp_bytes);
    }

    /// HTTP requests counted.
    pub fn requests(&self) -> u64 {
        self.status_classes
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// The latency under which a fraction `q` of the requests were answered, in seconds,
    /// interpolated within its bucket as Prometheus' `histogram_quantile` does (the unbounded
    /// bucket answers its lower bound); `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().fold(0u64, |a, b| a.saturating_add(*b));
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, count) in self.latency.iter().enumerate() {
            let upto = below.saturating_add(*count);
            if *count > 0 && upto as f64 >= rank {
                let lower = if index == 0 { 0.0 } else { BUCKETS[index - 1] };
                let Some(upper) = BUCKETS.get(index) else {
                    return Some(lower);
                };
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below = upto;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

/// Why a message's series were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoldenError {
    #[error("{count} series in one message, more than the limit of {MAX_SERIES_PER_MESSAGE}")]
    TooManySeries { count: usize },
    #[error("{count} names in one message, more than its series can use")]
    TooManyNames { count: usize },
    #[error("name {index} is {len} bytes long, more than the limit of {MAX_NAME}")]
    NameTooLong { index: usize, len: usize },
    #[error("series {series}: {field} refers to name {index}, but there are only {names}")]
    NoSuchName {
        series: usize,
        field: &'static str,
        index: u32,
        names: usize,
    },
    #[error("series {series}: {field} is empty")]
    EmptyName { series: usize, field: &'static str },
    #[error("series {series}: {field} has {count} numbers, more than {limit}")]
    TooManyNumbers {
        series: usize,
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("batch from {origin:?}: {reason}")]
    Batch { origin: String, reason: String },
}

/// Series and their counts as a message carries them: the names once, the series by index.
pub fn encode<'a>(
    series: impl IntoIterator<Item = (&'a SeriesKey, &'a Counts)>,
) -> (Vec<String>, Vec<wire::Series>) {
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<&'a str, u32> = HashMap::new();
    let mut name = |text: &'a str| -> u32 {
        *index.entry(text).or_insert_with(|| {
            names.push(text.to_owned());
            (names.len() - 1) as u32
        })
    };
    let mut out = Vec::new();
    for (key, counts) in series {
        let mut latency = counts.latency.to_vec();
        while latency.last() == Some(&0) {
            latency.pop();
        }
        let mut status_classes = counts.status_classes.to_vec();
        while status_classes.last() == Some(&0) {
            status_classes.pop();
        }
        out.push(wire::Series {
            outbound: key.direction == Direction::Outbound,
            namespace: name(&key.namespace),
            service: name(&key.service),
            source_cluster: name(&key.source_cluster),
            destination_cluster: name(&key.destination_cluster),
            workload: name(&key.workload),
            status_classes,
            latency,
            tcp_connections: counts.tcp_connections,
            tcp_bytes: counts.tcp_bytes,
        });
    }
    (names, out)
}

/// The series of a message, checked: bounded counts, names that exist and are not too long.
pub fn decode(
    names: &[String],
    series: &[wire::Series],
) -> Result<Vec<(SeriesKey, Counts)>, GoldenError> {
    if series.len() > MAX_SERIES_PER_MESSAGE {
        return Err(GoldenError::TooManySeries {
            count: series.len(),
        });
    }
    if names.len() > 5 * series.len() + 1 {
        return Err(GoldenError::TooManyNames { count: names.len() });
    }
    if let Some((index, name)) = names.iter().enumerate().find(|(_, n)| n.len() > MAX_NAME) {
        return Err(GoldenError::NameTooLong {
            index,
            len: name.len(),
        });
    }
    series
        .iter()
        .enumerate()
        .map(|(number, s)| {
            let name = |field: &'static str, index: u32, required: bool| {
                let text = names.get(index as usize).ok_or(GoldenError::NoSuchName {
                    series: number,
                    field,
                    index,
                    names: names.len(),
                })?;
                if required && text.is_empty() {
                    return Err(GoldenError::EmptyName {
                        series: number,
                        field,
                    });
                }
                Ok(text.clone())
            };
            let numbers = |field: &'static str, values: &[u64], into: &mut [u64]| {
                if values.len() > into.len() {
                    return Err(GoldenError::TooManyNumbers {
                        series: number,
                        field,
                        count: values.len(),
                        limit: into.len(),
                    });
                }
                into[..values.len()].copy_from_slice(values);
                Ok(())
            };
            let key = SeriesKey {
                direction: if s.outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                namespace: name("namespace", s.namespace, true)?,
                service: name("service", s.service, true)?,
                source_cluster: name("source_cluster", s.source_cluster, false)?,
                destination_cluster: name("destination_cluster", s.destination_cluster, false)?,
                workload: name("workload", s.workload, false)?,
            };
            let mut counts = Counts {
                tcp_connections: s.tcp_connections,
                tcp_bytes: s.tcp_bytes,
                ..Counts::default()
            };
            numbers(
                "status_classes",
                &s.status_classes,
                &mut counts.status_classes,
            )?;
            numbers("latency", &s.latency, &mut counts.latency)?;
            Ok((key, counts))
        })
        .collect()
}

/// How a gateway keeps and shares golden metrics.
#[derive(Debug, Clone)]
pub struct GoldenConfig {
    /// The length of an interval.
    pub interval_ms: u64,
    /// How many intervals of each cluster are kept (the longest window `stat` can show).
    pub retained: u64,
    /// How long after an interval's end sidecars' reports still count in it.
    pub grace_ms: u64,
    /// After how long without a batch a cluster's figures are stale.
    pub stale_after_ms: u64,
    /// After how long without a batch a cluster's figures are dropped.
    pub forget_after_ms: u64,
    /// The most series kept per cluster and interval; more are dropped (and counted).
    pub max_series: usize,
    /// The most series kept in all (every cluster, every interval): what bounds the book's
    /// memory, whatever peers send.
    pub max_total_series: usize,
}

impl Default for GoldenConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            retained: 12,
            grace_ms: 1_000,
            stale_after_ms: 15_000,
            forget_after_ms: 600_000,
            max_series: 10_000,
            max_total_series: 120_000,
        }
    }
}

/// What one cluster counted, by interval.
#[derive(Debug, Default)]
struct Origin {
    interval_ms: u64,
    intervals: BTreeMap<u64, HashMap<SeriesKey, Counts>>,
    /// When (receiver's clock) the newest interval arrived.
    heard_ms: u64,
}

impl Origin {
    /// Drops the intervals older than the retained span; how many series went with them.
    fn prune(&mut self, retained: u64) -> usize {
        let Some(newest) = self.intervals.keys().next_back().copied() else {
            return 0;
        };
        let oldest = newest.saturating_sub(retained.saturating_sub(1));
        let kept = self.intervals.split_off(&oldest);
        let gone = std::mem::replace(&mut self.intervals, kept);
        gone.values().map(HashMap::len).sum()
    }

    fn series(&self) -> usize {
        self.intervals.values().map(HashMap::len).sum()
    }
}

/// A batch to send on, with its place in the outgoing log and the peer it came from (none for
/// this gateway's own).
#[derive(Debug)]
struct Logged {
    sequence: u64,
    at_ms: u64,
    from: Option<String>,
    batch: wire::Batch,
}

/// One series summed over a window of one cluster's intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The cluster whose sidecars counted it.
    pub origin: String,
    pub key: SeriesKey,
    pub counts: Counts,
    /// How long the intervals summed cover.
    pub seconds: f64,
    /// Whether the cluster has not been heard from lately.
    pub stale: bool,
    /// How long ago its newest figures arrived.
    pub age_ms: u64,
}

/// The golden metrics a gateway holds: its own cluster's being counted, and every cluster's
/// sealed intervals.
#[derive(Debug)]
pub struct GoldenBook {
    config: GoldenConfig,
    local: String,
    /// This cluster's intervals still open to reports.
    open: BTreeMap<u64, HashMap<SeriesKey, Counts>>,
    sealed_through: Option<u64>,
    origins: BTreeMap<String, Origin>,
    log: VecDeque<Logged>,
    next_sequence: u64,
    /// Series held now, open intervals included.
    held: usize,
    /// Series dropped over the limits (per interval, in all, origins).
    pub dropped: u64,
}

impl GoldenBook {
    /// An empty book of the gateway whose figures go out as `local`: its cluster's name, or
    /// `cluster/replica` when several replicas of the cluster's gateway count at once.
    pub fn new(local: &str, config: GoldenConfig) -> Self {
        Self {
            config,
            local: local.to_owned(),
            open: BTreeMap::new(),
            sealed_through: None,
            origins: BTreeMap::new(),
            log: VecDeque::new(),
            next_sequence: 1,
            held: 0,
            dropped: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GoldenConfig {
        &self.config
    }

    /// Adds what a sidecar of this cluster counted to the interval open at `now_ms` (or the
    /// next one still open, for a report that comes after its interval was sealed).
    pub fn record(&mut self, now_ms: u64, series: Vec<(SeriesKey, Counts)>) {
        let mut interval = now_ms / self.config.interval_ms;
        if let Some(sealed) = self.sealed_through {
            interval = interval.max(sealed + 1);
        }
        let total_room = self.config.max_total_series.saturating_sub(self.held);
        let open = self.open.entry(interval).or_default();
        let mut added = 0;
        for (key, counts) in series {
            if counts.is_empty() {
                continue;
            }
            let room = open.len() < self.config.max_series && added < total_room;
            match open.get_mut(&key) {
                Some(held) => held.add(&counts),
                None if room => {
                    open.insert(key, counts);
                    added += 1;
                }
                None => self.dropped += 1,
            }
        }
        self.held += added;
    }

    /// Seals every interval of this cluster that ended more than the grace period before
    /// `now_ms` (an interval without reports too: it says the cluster is alive) and logs it to
    /// be sent; whether anything was sealed.
    pub fn seal(&mut self, now_ms: u64) -> bool {
        let interval_ms = self.config.interval_ms;
        let Some(last) = (now_ms.saturating_sub(self.config.grace_ms) / interval_ms).checked_sub(1)
        else {
            return false;
        };
        let first = match self.sealed_through {
            Some(sealed) if sealed >= last => return false,
            Some(sealed) => sealed + 1,
            None => last,
        }
        .max(last.saturating_sub(self.config.retained.saturating_sub(1)));
        // Intervals that could not be sealed in time (a gateway stalled longer than the
        // retained span) go: their figures would only be shown as too old.
        let kept = self.open.split_off(&first);
        let late = std::mem::replace(&mut self.open, kept);
        self.held -= late.values().map(HashMap::len).sum::<usize>();
        let still_open = self.open.split_off(&(last + 1));
        let mut sealed = std::mem::replace(&mut self.open, still_open);
        for interval in first..=last {
            let series = sealed.remove(&interval).unwrap_or_default();
            let parts = split(&self.local, interval, interval_ms, &series);
            let origin = self.origins.entry(self.local.clone()).or_default();
            origin.interval_ms = interval_ms;
            origin.heard_ms = now_ms;
            origin.intervals.insert(interval, series);
            self.held -= origin.prune(self.config.retained);
            for part in parts {
                self.push_log(now_ms, None, part);
            }
        }
        self.sealed_through = Some(last);
        true
    }

    fn push_log(&mut self, now_ms: u64, from: Option<&str>, batch: wire::Batch) {
        self.log.push_back(Logged {
            sequence: self.next_sequence,
            at_ms: now_ms,
            from: from.map(str::to_owned),
            batch,
        });
        self.next_sequence += 1;
    }

    /// Merges a batch (or a part of one) from the peer `from`; whether it brought anything
    /// new (then it is logged, to be passed on to the other peers).
    pub fn merge(
        &mut self,
        batch: wire::Batch,
        now_ms: u64,
        from: &str,
    ) -> Result<bool, GoldenError> {
        let refuse = |reason: String| GoldenError::Batch {
            origin: batch.origin.chars().take(64).collect(),
            reason,
        };
        let cluster = origin_cluster(&batch.origin);
        if cluster.is_empty() || cluster.len() > 63 || batch.origin.len() > MAX_ORIGIN {
            return Err(refuse(
                "the origin is not a cluster name (or cluster/replica)".into(),
            ));
        }
        if !(100..=600_000).contains(&batch.interval_ms) {
            return Err(refuse(format!(
                "an interval of {} ms (100 ms to 10 minutes expected)",
                batch.interval_ms
            )));
        }
        if batch.session_names {
            return Err(refuse(
                "its names are a session's indices (the session resolves them first)".into(),
            ));
        }
        let series = decode(&batch.names, &batch.series)?;
        if batch.origin == self.local {
            // Our own figures, come back by another path.
            return Ok(false);
        }
        let starts_ms = batch.interval.saturating_mul(u64::from(batch.interval_ms));
        if starts_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(refuse(format!(
                "interval {} starts {} s ahead of this gateway's clock",
                batch.interval,
                (starts_ms - now_ms) / 1000
            )));
        }
        if !self.origins.contains_key(&batch.origin) && self.origins.len() >= MAX_ORIGINS {
            self.dropped += series.len() as u64;
            return Ok(false);
        }
        let retained = self.config.retained;
        let max_series = self.config.max_series;
        let mut total_room = self.config.max_total_series.saturating_sub(self.held);
        let origin = self.origins.entry(batch.origin.clone()).or_default();
        let newest = origin.intervals.keys().next_back().copied();
        if newest.is_some_and(|newest| batch.interval + retained <= newest) {
            return Ok(false);
        }
        if newest.is_none_or(|newest| batch.interval >= newest) {
            origin.heard_ms = now_ms;
            origin.interval_ms = u64::from(batch.interval_ms);
        }
        let mut new = !origin.intervals.contains_key(&batch.interval);
        let held = origin.intervals.entry(batch.interval).or_default();
        let mut dropped = 0;
        let mut added = 0;
        for (key, counts) in series {
            if held.contains_key(&key) {
                continue;
            }
            if held.len() >= max_series || total_room == 0 {
                dropped += 1;
                continue;
            }
            held.insert(key, counts);
            total_room -= 1;
            added += 1;
            new = true;
        }
        let pruned = origin.prune(retained);
        self.held = self.held + added - pruned;
        self.dropped += dropped;
        if new {
            self.push_log(now_ms, Some(from), batch);
        }
        Ok(new)
    }

    /// The batches logged after `after` that the peer cluster `peer` should get (neither its
    /// own cluster's, nor those it sent here), and the sequence to ask from next time.
    pub fn outgoing(&self, after: u64, peer: &str) -> (Vec<wire::Batch>, u64) {
        let batches = self
            .log
            .iter()
            .filter(|l| {
                l.sequence > after
                    && origin_cluster(&l.batch.origin) != peer
                    && l.from.as_deref() != Some(peer)
            })
            .map(|l| l.batch.clone())
            .collect();
        (batches, self.next_sequence - 1)
    }

    /// Drops clusters not heard from for [`GoldenConfig::forget_after_ms`], and logged
    /// batches older than the retained span.
    pub fn expire(&mut self, now_ms: u64) {
        let forget = self.config.forget_after_ms;
        let local = self.local.clone();
        let mut forgotten = 0;
        self.origins.retain(|name, o| {
            let kept = *name == local || o.heard_ms.saturating_add(forget) >= now_ms;
            if !kept {
                forgotten += o.series();
            }
            kept
        });
        self.held -= forgotten;
        let keep_ms = self.config.retained * self.config.interval_ms;
        while self
            .log
            .front()
            .is_some_and(|l| l.at_ms.saturating_add(keep_ms) < now_ms)
        {
            self.log.pop_front();
        }
    }

    /// Every series of every cluster summed over the last `window_ms` of that cluster's
    /// intervals (ending at its newest, so a stale cluster's figures are its last ones).
    pub fn rows(&self, now_ms: u64, window_ms: u64) -> Vec<Row> {
        let mut rows = Vec::new();
        for (name, origin) in &self.origins {
            let Some(newest) = origin.intervals.keys().next_back().copied() else {
                continue;
            };
            let interval_ms = origin.interval_ms.max(1);
            let span = window_ms.div_ceil(interval_ms).max(1);
            let from = newest.saturating_sub(span - 1);
            let mut sums: BTreeMap<&SeriesKey, Counts> = BTreeMap::new();
            let mut covered = 0u64;
            for series in origin.intervals.range(from..=newest).map(|(_, s)| s) {
                covered += 1;
                for (key, counts) in series {
                    sums.entry(key).or_default().add(counts);
                }
            }
            let age_ms = now_ms.saturating_sub(origin.heard_ms);
            let stale = age_ms > self.config.stale_after_ms;
            let seconds = (covered * interval_ms) as f64 / 1000.0;
            rows.extend(sums.into_iter().map(|(key, counts)| Row {
                origin: name.clone(),
                key: key.clone(),
                counts,
                seconds,
                stale,
                age_ms,
            }));
        }
        rows
    }

    /// Every cluster known, with whether its figures are stale (every origin of it is).
    pub fn clusters(&self, now_ms: u64) -> Vec<(String, bool)> {
        let mut clusters: BTreeMap<&str, bool> = BTreeMap::new();
        for (name, o) in &self.origins {
            let stale = now_ms.saturating_sub(o.heard_ms) > self.config.stale_after_ms;
            let entry = clusters.entry(origin_cluster(name)).or_insert(true);
            *entry &= stale;
        }
        clusters
            .into_iter()
            .map(|(name, stale)| (name.to_owned(), stale))
            .collect()
    }

    /// How many series the book holds, over every cluster and interval (for its memory).
    pub fn series_held(&self) -> usize {
        self.held
    }
}

/// One sealed interval as batches of at most [`MAX_SERIES_PER_MESSAGE`] series each (one
/// empty batch for an interval without traffic).
fn split(
    origin: &str,
    interval: u64,
    interval_ms: u64,
    series: &HashMap<SeriesKey, Counts>,
) -> Vec<wire::Batch> {
    let mut sorted: Vec<(&SeriesKey, &Counts)> = series.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let chunks: Vec<&[(&SeriesKey, &Counts)]> = if sorted.is_empty() {
        vec![&[]]
    } else {
        sorted.chunks(MAX_SERIES_PER_MESSAGE).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| {
            let (names, series) = encode(chunk.iter().copied());
            wire::Batch {
                origin: origin.to_owned(),
                interval,
                interval_ms: interval_ms as u32,
                names,
                series,
                session_names: false,
            }
        })
        .collect()
}

/// A series or a group of them, summed and summarized for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    /// Requests not answered 5xx, as a fraction; `None` without requests.
    pub success_rate: Option<f64>,
    /// Requests per second over the window.
    pub rps: f64,
    /// p50, p95 and p99 latency in milliseconds; `None` without requests.
    pub latency_ms: Option<[f64; 3]>,
    pub tcp_connections: u64,
    pub tcp_bytes: u64,
    pub stale: bool,
    /// How long the figures cover.
    pub seconds: f64,
}

impl Summary {
    /// Summarizes counts over `seconds`.
    pub fn of(counts: &Counts, seconds: f64, stale: bool) -> Self {
        let requests = counts.requests();
        let failed = counts.status_classes[4];
        let quantile = |q| counts.quantile(q).map(|s| s * 1000.0);
        Self {
            requests,
            success_rate: (requests > 0)
                .then(|| (requests - failed.min(requests)) as f64 / requests as f64),
            rps: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            latency_ms: match (quantile(0.5), quantile(0.95), quantile(0.99)) {
                (Some(a), Some(b), Some(c)) => Some([a, b, c]),
                _ => None,
            },
            tcp_connections: counts.tcp_connections,
            tcp_bytes: counts.tcp_bytes,
            stale,
            seconds,
        }
    }
}

/// Rows summed by a grouping (`None`: left out), with the longest window among them and
/// whether any is stale.
pub fn group<G: Ord>(rows: &[Row], by: impl Fn(&Row) -> Option<G>) -> BTreeMap<G, Summary> {
    let mut sums: BTreeMap<G, (Counts, f64, bool)> = BTreeMap::new();
    for row in rows {
        if let Some(key) = by(row) {
            let entry = sums.entry(key).or_default();
            entry.0.add(&row.counts);
            entry.1 = entry.1.max(row.seconds);
            entry.2 |= row.stale;
        }
    }
    sums.into_iter()
        .map(|(key, (counts, seconds, stale))| (key, Summary::of(&counts, seconds, stale)))
        .collect()
}

//! What the sidecar records besides metrics: the W3C trace context of every HTTP request (taken
//! from the request, or started here and sampled at the gateway's rate), a span per request when
//! the trace is sampled and a collector is set, and, when switched on (for this sidecar, or for
//! its namespace by its gateway), one JSON access-log line per HTTP request and TCP flow on
//! standard output.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::HeaderValue;
use serde_json::{Value as Json, json};
use strait_federation::proto::tap::{TapEvent, TapFilter};
use strait_federation::proto::workload::TapReport;
use strait_federation::proto::workload::workload_client::WorkloadClient;
use strait_federation::trace::{self, FlowTrace, Span, SpanId, SpanKind, TraceContext, Value};
use strait_io::spans::SpanExporter;
use tokio_util::sync::CancellationToken;

use crate::balance::random;

/// Lines waiting to be written, at most (then lines are dropped and counted).
const LOG_QUEUE: usize = 8_192;
/// How often tapped requests are reported.
const TAP_INTERVAL: Duration = Duration::from_millis(200);
/// Tapped requests one report carries, at most (the gateway's limit).
const MAX_EVENTS_PER_REPORT: usize = 1_000;

/// The gateway's settings for this sidecar, from its last view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Where spans go; empty: nowhere.
    pub collector: String,
    /// The share of new traces sampled.
    pub sampling: f64,
    /// Whether the gateway switched access logs on for this sidecar's namespace.
    pub access_log: bool,
    /// Operators' taps in force: requests that match one are reported.
    pub taps: Vec<TapFilter>,
}

impl Settings {
    /// From the view's telemetry and taps.
    pub fn from_view(view: &strait_federation::proto::workload::CatalogView) -> Self {
        let mut settings = view
            .telemetry
            .as_ref()
            .map_or_else(Settings::default, |t| Settings {
                collector: t.collector.clone(),
                sampling: if t.sampling.is_finite() {
                    t.sampling.clamp(0.0, 1.0)
                } else {
                    0.0
                },
                access_log: t.access_log,
                taps: Vec::new(),
            });
        settings.taps = view.taps.clone();
        settings
    }

    fn tapped(&self, namespace: &str, service: &str) -> bool {
        self.taps
            .iter()
            .any(|t| t.namespace == namespace && (t.service.is_empty() || t.service == service))
    }
}

/// The `traceparent` of a request sent from span `span` of a trace (hex only: always a valid
/// header value).
fn traceparent(context: &TraceContext, span: SpanId) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(&context.header_from(span))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    // Never indexed by HTTP/2's header compression: each request's is new, so keeping it in
    // the connection's table would only evict the caller's repeated headers (a 4 KiB table
    // holds about forty traceparents), and the encoder compares each new one with all it holds.
    value.set_sensitive(true);
    value
}

/// A random id that is never all zeros (W3C forbids it).
fn span_id() -> SpanId {
    random().max(1).to_be_bytes()
}

fn trace_id() -> trace::TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random().to_be_bytes());
    id[8..].copy_from_slice(&random().max(1).to_be_bytes());
    id
}

/// One request's place in its trace, and the span this sidecar records for it.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub context: TraceContext,
    /// The span the request arrived from (none for a trace started here).
    pub parent: Option<SpanId>,
    /// This sidecar's span.
    pub span: SpanId,
    pub started_nanos: u64,
    /// Whether the span is recorded: the trace is sampled and a collector is set.
    pub recorded: bool,
    /// The `traceparent` the next hop gets (this span as its parent), made once: every try of
    /// the request sends it.
    header: HeaderValue,
}

impl RequestTrace {
    /// The `traceparent` the next hop gets: this sidecar's span as its parent.
    pub fn header(&self) -> HeaderValue {
        self.header.clone()
    }

    /// The trace a flow carries through the gateways (a span for each of `hops` gateways),
    /// and the `traceparent` the request must then carry (the last gateway's span as parent).
    pub fn through_gateways(&self, hops: usize) -> (FlowTrace, HeaderValue) {
        let hops: Vec<SpanId> = (0..hops).map(|_| span_id()).collect();
        let last = hops.last().copied().unwrap_or(self.span);
        let header = traceparent(&self.context, last);
        (
            FlowTrace {
                trace_id: self.context.trace_id,
                parent_id: self.span,
                hops,
            },
            header,
        )
    }
}

/// What one finished request or flow was, for its span and its access-log line.
pub struct Record<'a> {
    pub direction: &'static str,
    pub protocol: &'static str,
    /// The caller's identity (inbound) or this sidecar's (outbound).
    pub caller: &'a str,
    pub namespace: &'a str,
    pub service: &'a str,
    pub source_cluster: &'a str,
    pub destination_cluster: &'a str,
    /// The HTTPRoute (its name) whose rule sent it, if any.
    pub route: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status: Option<u16>,
    pub duration: Duration,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Why it failed, when the sidecar knows.
    pub error: Option<&'a str>,
}

/// A finished opaque TCP flow: its side, bytes and error, for its access-log line and taps.
pub struct Flow<'a> {
    pub route: &'a crate::metrics::Route<'a>,
    /// The caller's identity (inbound) or this sidecar's (outbound).
    pub caller: &'a str,
    pub duration: Duration,
    pub sent: u64,
    pub received: u64,
    pub error: Option<&'a str>,
}

/// The sidecar's tracing and access logs.
pub struct Telemetry {
    pub spans: SpanExporter,
    /// Access logs on for this sidecar whatever its gateway says (`--access-log`).
    forced: bool,
    log: std::sync::Mutex<Option<SyncSender<String>>>,
    /// Access-log lines dropped because standard output could not keep up.
    pub dropped_lines: AtomicU64,
    /// Requests that matched a tap, waiting to be reported.
    tapped: std::sync::Mutex<Vec<TapEvent>>,
}

impl Telemetry {
    /// Telemetry of a sidecar of `cluster` with identity `identity`.
    pub fn new(cluster: &str, identity: &str, forced: bool, shutdown: CancellationToken) -> Self {
        Self {
            spans: SpanExporter::new(
                "strait-sidecar",
                vec![
                    ("strait.cluster", Value::Text(cluster.into())),
                    ("strait.identity", Value::Text(identity.into())),
                ],
                shutdown,
            ),
            forced,
            log: std::sync::Mutex::new(None),
            dropped_lines: AtomicU64::new(0),
            tapped: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether a request must be described (method, path) for its span, its access-log line
    /// or a tap.
    pub fn wanted(&self, trace: &RequestTrace, settings: &Settings) -> bool {
        trace.recorded || self.access_log_on(settings) || !settings.taps.is_empty()
    }

    /// Applies the gateway's settings of a new view.
    pub fn configure(&self, settings: &Settings) {
        self.spans.configure(&settings.collector);
    }

    /// Whether requests and flows are logged now.
    pub fn access_log_on(&self, settings: &Settings) -> bool {
        self.forced || settings.access_log
    }

    /// The trace of a request, from its `traceparent` or started here.
    pub fn begin(&self, headers: &HeaderMap, settings: &Settings) -> RequestTrace {
        let incoming = headers
            .get(&crate::http::names::TRACEPARENT)
            .and_then(TraceContext::parse);
        let (context, parent) = match incoming {
            Some(context) => (context, Some(context.parent_id)),
            None => (
                TraceContext::start(trace_id(), [0; 8], settings.sampling, random()),
                None,
            ),
        };
        let span = span_id();
        RequestTrace {
            recorded: context.sampled && self.spans.enabled(),
            header: traceparent(&context, span),
            context,
            parent,
            span,
            started_nanos: strait_io::clock::unix_now_nanos(),
        }
    }

    /// Records a request's span (when its trace is recorded) and its access-log line (when on).
    pub fn finish(&self, trace: Option<&RequestTrace>, record: &Record<'_>, settings: &Settings) {
        if let Some(trace) = trace.filter(|t| t.recorded) {
            self.spans.record(span(trace, record));
        }
        if self.access_log_on(settings) {
            self.write(line(trace, record));
        }
        if settings.tapped(record.namespace, record.service) {
            let mut tapped = self.tapped.lock().unwrap_or_else(|p| p.into_inner());
            // Reported every TAP_INTERVAL; beyond what one report carries, events are dropped
            // (taps are rate-limited at the gateway anyway).
            if tapped.len() < MAX_EVENTS_PER_REPORT {
                tapped.push(tap_event(trace, record));
            }
        }
    }

    /// Records a finished TCP flow, when access logs or a tap want it.
    pub fn finish_flow(&self, flow: &Flow<'_>, settings: &Settings) {
        if !self.access_log_on(settings) && settings.taps.is_empty() {
            return;
        }
        let route = flow.route;
        let record = Record {
            direction: match route.direction {
                crate::metrics::Direction::Inbound => "inbound",
                crate::metrics::Direction::Outbound => "outbound",
            },
            protocol: "tcp",
            caller: flow.caller,
            namespace: route.namespace,
            service: route.service,
            source_cluster: route.source_cluster,
            destination_cluster: route.destination_cluster,
            route: None,
            method: None,
            path: None,
            status: None,
            duration: flow.duration,
            bytes_sent: Some(flow.sent),
            bytes_received: Some(flow.received),
            error: flow.error,
        };
        self.finish(None, &record, settings);
    }

    /// The tapped requests since the last call.
    fn take_tapped(&self) -> Vec<TapEvent> {
        std::mem::take(&mut *self.tapped.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes an access-log line from a thread of its own, so a slow standard output never
    /// holds up traffic (lines are dropped and counted instead).
    fn write(&self, line: String) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let sender = log.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(LOG_QUEUE);
            std::thread::spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(line) = rx.recv() {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            });
            tx
        });
        match sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped_lines.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => *log = None,
        }
    }
}

fn span(trace: &RequestTrace, record: &Record<'_>) -> Span {
    let mut attributes = vec![
        ("strait.direction", Value::Text(record.direction.into())),
        ("strait.caller", Value::Text(record.caller.into())),
        (
            "strait.service",
            Value::Text(format!("{}/{}", record.namespace, record.service)),
        ),
        (
            "strait.source_cluster",
            Value::Text(record.source_cluster.into()),
        ),
        (
            "strait.destination_cluster",
            Value::Text(record.destination_cluster.into()),
        ),
    ];
    if let Some(method) = record.method {
        attributes.push(("http.request.method", Value::Text(method.into())));
    }
    if let Some(path) = record.path {
        attributes.push(("url.path", Value::Text(path.into())));
    }
    if let Some(status) = record.status {
        attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
    }
    if let Some(route) = record.route {
        attributes.push(("http.route", Value::Text(route.into())));
    }
    let failed = record.error.map(str::to_owned).or_else(|| {
        record
            .status
            .filter(|s| *s >= 500)
            .map(|s| format!("status {s}"))
    });
    Span {
        trace_id: trace.context.trace_id,
        span_id: trace.span,
        parent_id: trace.parent,
        name: format!(
            "{} {}/{}",
            record.direction, record.namespace, record.service
        ),
        kind: if record.direction == "inbound" {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_nanos: trace.started_nanos,
        end_unix_nanos: trace.started_nanos + record.duration.as_nanos() as u64,
        attributes,
        error: failed,
    }
}

/// A tapped request as the gateway streams it to the operator.
fn tap_event(trace: Option<&RequestTrace>, record: &Record<'_>) -> TapEvent {
    TapEvent {
        time_unix_ms: strait_io::clock::unix_now_ms(),
        direction: record.direction.into(),
        protocol: record.protocol.into(),
        caller: record.caller.into(),
        namespace: record.namespace.into(),
        service: record.service.into(),
        source_cluster: record.source_cluster.into(),
        destination_cluster: record.destination_cluster.into(),
        method: record.method.unwrap_or_default().into(),
        path: record.path.unwrap_or_default().into(),
        status: record.status.map_or(0, u32::from),
        latency_ms: record.duration.as_secs_f64() * 1000.0,
        trace_id: trace.map(|t| t.context.trace_hex()).unwrap_or_default(),
        tap: 0,
        bytes: record
            .bytes_sent
            .unwrap_or(0)
            .saturating_add(record.bytes_received.unwrap_or(0)),
    }
}

/// Reports tapped requests to the gateway every [`TAP_INTERVAL`] while there are any.
pub async fn report_taps(
    shared: std::sync::Arc<crate::Shared>,
    channel: tonic::transport::Channel,
) {
    let mut client = WorkloadClient::new(channel);
    let mut tick = tokio::time::interval(TAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let events = shared.telemetry.take_tapped();
        if events.is_empty() {
            continue;
        }
        let report = client.report_taps(TapReport { events });
        match tokio::time::timeout(Duration::from_secs(5), report).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::debug!(error = %status.message(), "tap report refused"),
            Err(_) => tracing::debug!("tap report timed out"),
        }
    }
}

/// The access-log line of a request or flow.
pub fn line(trace: Option<&RequestTrace>, record: &Record<'_>) -> String {
    let time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut value = json!({
        "time": time,
        "direction": record.direction,
        "protocol": record.protocol,
        "caller": record.caller,
        "namespace": record.namespace,
        "service": record.service,
        "source_cluster": record.source_cluster,
        "destination_cluster": record.destination_cluster,
        "duration_ms": (record.duration.as_secs_f64() * 1e6).round() / 1e3,
    });
    let mut put = |key: &str, v: Json| {
        if !v.is_null() {
            value[key] = v;
        }
    };
    put("route", json!(record.route));
    put("method", json!(record.method));
    put("path", json!(record.path));
    put("status", json!(record.status));
    put("bytes_sent", json!(record.bytes_sent));
    put("bytes_received", json!(record.bytes_received));
    put("error", json!(record.error));
    if let Some(trace) = trace {
        put("trace_id", json!(trace.context.trace_hex()));
        put("span_id", json!(trace::hex(&trace.span)));
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>() -> Record<'a> {
        Record {
            direction: "outbound",
            protocol: "http",
            caller: "spiffe://example.mesh/cluster/east/ns/shop/sa/web",
            namespace: "shop",
            service: "api",
            source_cluster: "east",
            destination_cluster: "west",
            route: None,
            method: Some("GET"),
            path: Some("/items"),
            status: Some(503),
            duration: Duration::from_micros(1_500),
            bytes_sent: None,
            bytes_received: None,
            error: None,
        }
    }

    #[test]
    fn a_request_without_a_trace_starts_one_and_one_with_a_trace_continues_it() {
        let telemetry = Telemetry::new("east", "id", false, CancellationToken::new());
        let always = Settings {
            sampling: 1.0,
            ..Settings::default()
        };
        let started = telemetry.begin(&HeaderMap::new(), &always);
        assert!(started.context.sampled && started.parent.is_none());
        // No collector: nothing is recorded, but the context still travels.
        assert!(!started.recorded);
        let mut headers = HeaderMap::new();
        headers.insert(trace::TRACEPARENT, started.header());
        let next = telemetry.begin(&headers, &Settings::default());
        assert_eq!(next.context.trace_id, started.context.trace_id);
        assert_eq!(next.parent, Some(started.span));
        assert!(next.context.sampled, "the caller's decision is kept");
        let never = telemetry.begin(&HeaderMap::new(), &Settings::default());
        assert!(!never.context.sampled);
    }

    #[test]
    fn a_request_through_gateways_names_the_last_gateway_as_its_parent() {
        let telemetry = Telemetry::new("east", "id", false, CancellationToken::new());
        let trace = telemetry.begin(&HeaderMap::new(), &Settings::default());
        let (flow, header) = trace.through_gateways(2);
        assert_eq!(flow.parent_id, trace.span);
        let sent = TraceContext::parse(header.to_str().unwrap()).unwrap();
        assert_eq!(sent.parent_id, flow.hops[1]);
        assert_eq!(sent.trace_id, trace.context.trace_id);
    }

    #[test]
    fn every_traceparent_sent_is_kept_out_of_the_http2_header_table() {
        let telemetry = Telemetry::new("east", "id", false, CancellationToken::new());
        let trace = telemetry.begin(&HeaderMap::new(), &Settings::default());
        // HPACK sends a sensitive value as "never indexed".
        assert!(trace.header().is_sensitive());
        assert!(trace.through_gateways(2).1.is_sensitive());
    }

    #[test]
    fn an_access_log_line_is_one_json_object_with_the_trace() {
        let telemetry = Telemetry::new("east", "id", false, CancellationToken::new());
        let trace = telemetry.begin(&HeaderMap::new(), &Settings::default());
        let text = line(Some(&trace), &record());
        assert!(!text.contains('\n'));
        let value: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(value["status"], 503);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["trace_id"], trace.context.trace_hex());
        assert!(value.get("route").is_none() && value.get("bytes_sent").is_none());
        let span = span(&trace, &record());
        assert_eq!(span.error.as_deref(), Some("status 503"));
        assert_eq!(span.kind, SpanKind::Client);
    }
}

//! The sidecar's golden metrics (Prometheus): requests and their latency, TCP connections and
//! bytes, labelled by direction, source and destination cluster, namespace, service and status
//! class.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

mod series;

/// Label names of every request and TCP metric.
const LABELS: [&str; 5] = [
    "direction",
    "source_cluster",
    "destination_cluster",
    "namespace",
    "service",
];

/// Latency buckets, in seconds: the mesh's golden-metric buckets, so that what the sidecar
/// reports to its gateway matches its own histogram bucket for bucket.
const BUCKETS: [f64; 16] = strait_federation::golden::BUCKETS;

/// Which side of the sidecar a request or connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Who talks to whom, for labels.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub direction: Direction,
    pub source_cluster: &'a str,
    pub destination_cluster: &'a str,
    pub namespace: &'a str,
    pub service: &'a str,
}

impl Route<'_> {
    fn labels(&self) -> [&str; 5] {
        [
            self.direction.as_str(),
            self.source_cluster,
            self.destination_cluster,
            self.namespace,
            self.service,
        ]
    }
}

/// The status class of an HTTP status: `2xx` .. `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The metrics of one sidecar.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests and their latency, by route and status class.
    requests: Arc<series::RequestSeries>,
    pub tcp_connections: IntCounterVec,
    pub tcp_open: IntGaugeVec,
    pub tcp_bytes: IntCounterVec,
    pub renewals: IntCounter,
    /// When the workload certificate presented now expires (Unix seconds).
    pub certificate_expiry: prometheus::IntGauge,
    /// Requests and connections refused by authorization, by the policy that refused them.
    pub denied: IntCounterVec,
    /// Retries of outbound requests, by outcome (sent, or refused by the budget).
    pub retries: IntCounterVec,
    /// Checks by external authorizers, by policy and result.
    pub external_checks: IntCounterVec,
    /// Requests (HTTP: answered 429) and connections (TCP: closed) over a rate limit.
    pub rate_limited: IntCounterVec,
    /// Policies in the last view from the gateway, by kind ("refused": failed their checks).
    pub policies: IntGaugeVec,
    /// Fetches of issuers' key sets (`jwksUri`), by result.
    pub key_set_fetches: IntCounterVec,
    /// Copies of requests sent to a route's mirror, by result.
    pub mirrors: IntCounterVec,
    /// Refusals because a limit was reached, by the flag that sets it.
    pub refusals: strait_io::limit::Refusals,
    /// Services in the sidecar's view of the catalog.
    pub view_services: prometheus::IntGauge,
    /// Catalog messages from the gateway, by kind (whole or delta).
    pub view_updates: IntCounterVec,
    /// Bytes of those messages.
    pub view_bytes: IntCounter,
}

impl Metrics {
    /// Registers every metric of a sidecar of `cluster`.
    pub fn new(cluster: &str) -> Self {
        let labels = [("cluster".to_owned(), cluster.to_owned())].into();
        let registry = Registry::new_custom(Some("strait".into()), Some(labels))
            .expect("constant registry prefix and label are valid");
        let register = |metric: Box<dyn prometheus::core::Collector>| {
            registry
                .register(metric)
                .expect("constant metric names are valid and registered once");
        };
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            LABELS.iter().chain(extra).copied().collect()
        };
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "HTTP requests, by status class."),
            &with(&["status_class"]),
        )
        .expect("constant metric");
        register(Box::new(requests.clone()));
        let refusals = strait_io::limit::Refusals::register(&registry);
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to the response headers, as the sidecar saw it.",
            )
            .buckets(BUCKETS.to_vec()),
            &with(&["status_class"]),
        )
        .expect("constant metric");
        register(Box::new(latency.clone()));
        let tcp_connections = IntCounterVec::new(
            Opts::new("tcp_connections_total", "Opaque TCP connections proxied."),
            &with(&[]),
        )
        .expect("constant metric");
        register(Box::new(tcp_connections.clone()));
        let tcp_open = IntGaugeVec::new(
            Opts::new("tcp_open_connections", "Opaque TCP connections open now."),
            &with(&[]),
        )
        .expect("constant metric");
        register(Box::new(tcp_open.clone()));
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "tcp_bytes_total",
                "Bytes of opaque TCP connections (counted when a connection ends), by way.",
            ),
            &with(&["way"]),
        )
        .expect("constant metric");
        register(Box::new(tcp_bytes.clone()));
        let renewals = IntCounter::new(
            "certificate_renewals_total",
            "Workload certificates renewed.",
        )
        .expect("constant metric");
        register(Box::new(renewals.clone()));
        let certificate_expiry = prometheus::IntGauge::new(
            "certificate_expiry_timestamp_seconds",
            "When the workload certificate the sidecar presents expires (Unix seconds).",
        )
        .expect("constant metric");
        register(Box::new(certificate_expiry.clone()));
        let denied = IntCounterVec::new(
            Opts::new(
                "authorization_denied_total",
                "Requests (HTTP: answered 403) and connections (TCP: closed) refused by an \
                 authorization policy, by protocol and policy.",
            ),
            &with(&["protocol", "policy"]),
        )
        .expect("constant metric");
        register(Box::new(denied.clone()));
        let retries = IntCounterVec::new(
            Opts::new(
                "retries_total",
                "Outbound requests sent again under a route's retries, by outcome: sent, or \
                 budget_exhausted (the retry budget refused it).",
            ),
            &with(&["outcome"]),
        )
        .expect("constant metric");
        register(Box::new(retries.clone()));
        let external_checks = IntCounterVec::new(
            Opts::new(
                "external_checks_total",
                "Requests and connections an external authorizer was asked about, by policy and \
                 result: allow, deny, error_allowed (failed open) or error_denied (failed closed).",
            ),
            &with(&["policy", "result"]),
        )
        .expect("constant metric");
        register(Box::new(external_checks.clone()));
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests (HTTP: answered 429) and connections (TCP: closed) over a rate limit \
                 or a mesh-wide quota, by protocol and policy.",
            ),
            &with(&["protocol", "policy"]),
        )
        .expect("constant metric");
        register(Box::new(rate_limited.clone()));
        let policies = IntGaugeVec::new(
            Opts::new(
                "policies",
                "Policies in the sidecar's last view from its gateway, by kind; kind=\"refused\" \
                 counts those that failed their checks here.",
            ),
            &["kind"],
        )
        .expect("constant metric");
        register(Box::new(policies.clone()));
        let key_set_fetches = IntCounterVec::new(
            Opts::new(
                "jwks_fetches_total",
                "Fetches of issuers' key sets from the jwksUri of RequestAuthentications, by \
                 result: ok or error (the last good set is kept).",
            ),
            &["result"],
        )
        .expect("constant metric");
        register(Box::new(key_set_fetches.clone()));
        let mirrors = IntCounterVec::new(
            Opts::new(
                "mirrored_requests_total",
                "Copies of requests sent to a route's mirror, by result: sent (answered, \
                 whatever the status), failed (no answer in time, or no such service) or \
                 skipped (a body too large to keep, or too many copies in flight).",
            ),
            &with(&["result"]),
        )
        .expect("constant metric");
        register(Box::new(mirrors.clone()));
        let view_services = prometheus::IntGauge::new(
            "view_services",
            "Services in the sidecar's view of the catalog: every service of the mesh, or \
             those it declared with --watch.",
        )
        .expect("constant metric");
        register(Box::new(view_services.clone()));
        let view_updates = IntCounterVec::new(
            Opts::new(
                "view_updates_total",
                "Catalog messages received from the gateway, by kind: whole (the first on a \
                 stream, or after the sidecar fell behind) or delta (only what changed).",
            ),
            &["kind"],
        )
        .expect("constant metric");
        register(Box::new(view_updates.clone()));
        let view_bytes = IntCounter::new(
            "view_bytes_total",
            "Bytes of the catalog messages received from the gateway.",
        )
        .expect("constant metric");
        register(Box::new(view_bytes.clone()));
        Self {
            view_services,
            view_updates,
            view_bytes,
            mirrors,
            refusals,
            key_set_fetches,
            policies,
            rate_limited,
            external_checks,
            denied,
            retries,
            registry,
            requests: Arc::new(series::RequestSeries::new(requests, latency)),
            tcp_connections,
            tcp_open,
            tcp_bytes,
            renewals,
            certificate_expiry,
        }
    }

    /// Records one HTTP request.
    pub fn request(&self, route: &Route<'_>, status: u16, latency: Duration) {
        self.requests
            .record(route, status_class(status), latency.as_secs_f64());
    }

    /// Records a request or connection refused by `policy`.
    pub fn denied(&self, route: &Route<'_>, protocol: &str, policy: &str) {
        let [a, b, c, d, e] = route.labels();
        self.denied
            .with_label_values(&[a, b, c, d, e, protocol, policy])
            .inc();
    }

    /// Sets the policy counts of a new view.
    pub fn policies_held(
        &self,
        documents: &[strait_federation::proto::workload::PolicyDocument],
        refused: usize,
    ) {
        for kind in strait_federation::policy::PolicyKind::ALL {
            let count = documents.iter().filter(|d| d.kind == kind.as_str()).count();
            self.policies
                .with_label_values(&[kind.as_str()])
                .set(count as i64);
        }
        self.policies
            .with_label_values(&["refused"])
            .set(refused as i64);
    }

    /// Records a request or connection over a rate limit.
    pub fn rate_limited(&self, route: &Route<'_>, protocol: &str, policy: &str) {
        let [a, b, c, d, e] = route.labels();
        self.rate_limited
            .with_label_values(&[a, b, c, d, e, protocol, policy])
            .inc();
    }

    /// Records a copy of a mirrored request.
    pub fn mirror(&self, route: &Route<'_>, result: &str) {
        let [a, b, c, d, e] = route.labels();
        self.mirrors
            .with_label_values(&[a, b, c, d, e, result])
            .inc();
    }

    /// Records a fetch of a key set.
    pub fn key_set_fetch(&self, result: &str) {
        self.key_set_fetches.with_label_values(&[result]).inc();
    }

    /// Records an external authorizer's check.
    pub fn external_check(&self, route: &Route<'_>, policy: &str, result: &str) {
        let [a, b, c, d, e] = route.labels();
        self.external_checks
            .with_label_values(&[a, b, c, d, e, policy, result])
            .inc();
    }

    /// Records a retry, or one the budget refused.
    pub fn retry(&self, route: &Route<'_>, outcome: &str) {
        let [a, b, c, d, e] = route.labels();
        self.retries
            .with_label_values(&[a, b, c, d, e, outcome])
            .inc();
    }

    /// Records a TCP connection opening.
    pub fn tcp_opened(&self, route: &Route<'_>) {
        self.tcp_connections
            .with_label_values(&route.labels())
            .inc();
        self.tcp_open.with_label_values(&route.labels()).inc();
    }

    /// Records a TCP connection closing with the bytes it carried.
    pub fn tcp_closed(&self, route: &Route<'_>, sent: u64, received: u64) {
        self.tcp_open.with_label_values(&route.labels()).dec();
        let [a, b, c, d, e] = route.labels();
        self.tcp_bytes
            .with_label_values(&[a, b, c, d, e, "sent"])
            .inc_by(sent);
        self.tcp_bytes
            .with_label_values(&[a, b, c, d, e, "received"])
            .inc_by(received);
    }

    /// Every metric family now.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

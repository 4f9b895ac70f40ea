//! The gateway's configuration file (`gateway.yaml`) and the folder it lives in, which
//! `strait gateway init` lays out: the trust bundle, the cluster's issuer, the link-signing key,
//! an operator credential and the persisted state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::location::Location;

use crate::GatewayError;
use strait_federation::cidr::{CidrError, CidrRange};

/// The gateway configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// UDP address of the QUIC endpoint for peer gateways.
    pub quic_addr: SocketAddr,
    /// The address other clusters dial, when it differs from `quicAddr` (a load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<String>,
    /// TCP address of the operator API (mutual TLS).
    pub api_addr: SocketAddr,
    /// TCP address of the admin HTTP server (health, readiness, metrics).
    pub admin_addr: SocketAddr,
    /// TCP address where this cluster's sidecars open flows to other clusters. Unset: the API
    /// address's host with a port chosen at start (sidecars learn it from the catalog stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<SocketAddr>,
    /// Where keys and state live; relative paths are relative to the config file's folder.
    #[serde(default = "here")]
    pub state_dir: PathBuf,
    /// Where the cluster's credentials are read from when not in `stateDir`: `bundle.pem`,
    /// `issuer.crt`, `issuer.key` and `link.key`, as `strait trust issue` writes them. Read
    /// only, so a Kubernetes Secret mounted there serves every replica. Relative paths are
    /// relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    #[serde(default)]
    pub peering: PeeringConfig,
    #[serde(default)]
    pub workloads: WorkloadConfig,
    /// How the gateway sums its sidecars' golden metrics and shares them with its peers.
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
    /// Traces (where spans go, how many are sampled) and access logs, for this gateway and
    /// its sidecars.
    #[serde(default, skip_serializing_if = "TelemetryConfig::is_default")]
    pub telemetry: TelemetryConfig,
    /// The DNS server for the clusterset zone; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// Where this cluster runs (cloud, region, zone): peers learn it when they link, and their
    /// sidecars prefer closer clusters when they fail over.
    #[serde(default, skip_serializing_if = "Location::is_unknown")]
    pub location: Location,
    /// Kubernetes mode: the gateway is a controller of this cluster's API. Universal mode
    /// (files and `strait apply`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// What strangers can make the gateway hold: connections per port, peers' handshakes
    /// and streams.
    #[serde(default, skip_serializing_if = "LimitsConfig::is_default")]
    pub limits: LimitsConfig,
}

/// The gateway's limits. Each is counted in `strait_limit_refusals_total{limit="limits.<key>"}`
/// when hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once on the API port (sidecars and operators); one more is closed
    /// when accepted.
    #[serde(default = "default_api_connections")]
    pub api_connections: u32,
    /// Of those, connections without a client certificate (a new sidecar asking for its
    /// first one), once past their TLS handshake; each is closed after 10 s without a request.
    #[serde(default = "default_api_anonymous_connections")]
    pub api_anonymous_connections: u32,
    /// Flows open at once from this cluster's sidecars on the relay port; one more is closed
    /// when accepted.
    #[serde(default = "default_relay_connections")]
    pub relay_connections: u32,
    /// Connections open at once on the admin port; one more is closed when accepted.
    #[serde(default = "default_admin_connections")]
    pub admin_connections: u32,
    /// Connections open at once on the DNS server's TCP port; one more is closed when
    /// accepted.
    #[serde(default = "default_dns_tcp_connections")]
    pub dns_tcp_connections: u32,
    /// Peer connections still in their handshake (QUIC, TLS, hello) at once; one more is
    /// refused at once (the peer dials again).
    #[serde(default = "default_peer_handshakes")]
    pub peer_handshakes: u32,
    /// Flows a peer may have open at once on its connection (QUIC stream credit): a peer
    /// waits for room beyond it, and a flow that waits more than 5 s fails.
    #[serde(default = "default_peer_streams")]
    pub peer_streams: u32,
}

fn default_api_connections() -> u32 {
    10_000
}
fn default_api_anonymous_connections() -> u32 {
    256
}
fn default_relay_connections() -> u32 {
    20_000
}
fn default_admin_connections() -> u32 {
    1_024
}
fn default_dns_tcp_connections() -> u32 {
    256
}
fn default_peer_handshakes() -> u32 {
    64
}
fn default_peer_streams() -> u32 {
    4_096
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            api_connections: default_api_connections(),
            api_anonymous_connections: default_api_anonymous_connections(),
            relay_connections: default_relay_connections(),
            admin_connections: default_admin_connections(),
            dns_tcp_connections: default_dns_tcp_connections(),
            peer_handshakes: default_peer_handshakes(),
            peer_streams: default_peer_streams(),
        }
    }
}

impl LimitsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The file descriptors the connection caps may hold at once. Relay connections count
    /// twice: as many flows come the other way from peers, each holding a connection to an
    /// endpoint of this cluster.
    pub fn open_files(&self) -> u64 {
        u64::from(self.api_connections)
            + 2 * u64::from(self.relay_connections)
            + u64::from(self.admin_connections)
            + u64::from(self.dns_tcp_connections)
    }

    /// What is wrong with the block, if anything: every limit is at least 1, and a peer's
    /// streams at most what QUIC can grant in one frame that stays sensible (1,000,000).
    fn check(&self) -> Result<(), String> {
        let fields = [
            ("limits.apiConnections", self.api_connections),
            (
                "limits.apiAnonymousConnections",
                self.api_anonymous_connections,
            ),
            ("limits.relayConnections", self.relay_connections),
            ("limits.adminConnections", self.admin_connections),
            ("limits.dnsTcpConnections", self.dns_tcp_connections),
            ("limits.peerHandshakes", self.peer_handshakes),
            ("limits.peerStreams", self.peer_streams),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(format!(
                    "{field}: 0 would refuse everything; expected 1 or more"
                ));
            }
        }
        if self.peer_streams > 1_000_000 {
            return Err(format!(
                "limits.peerStreams: {} is over 1000000",
                self.peer_streams
            ));
        }
        Ok(())
    }
}

/// How the gateway reaches its cluster's Kubernetes API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file (its current context); absent: the pod's service-account config.
    /// Relative paths are relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The gateway's own namespace: its Links, their Secrets, its Lease and its state.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How long the writing replica's Lease lasts unrenewed before another replica takes over.
    #[serde(default = "default_lease_seconds")]
    pub lease_duration_seconds: u32,
    /// The admission webhook that gives new pods their sidecar; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injector: Option<InjectorConfig>,
    /// A Service of the gateway's namespace selecting every replica, with a port named
    /// `relay`: sidecars are told to open flows to other clusters at its ClusterIP, so a flow
    /// goes to any ready replica and a replica's loss costs only its flows in flight. Absent:
    /// each replica gives its sidecars its own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_service: Option<String>,
    /// How long a stopping replica goes on serving, not ready, while Kubernetes withdraws its
    /// endpoints (seconds; 0, the default: it stops at once; the chart sets 3). Keep it below
    /// the pod's grace period.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u32,
    /// The Secret of the gateway's namespace mounted as `credentialsDir` (the chart's
    /// `credentialsSecret`). When set, a root rotation taken by any replica is written into
    /// it, and every replica takes what its mount shows (docs/trust.md). Absent: rotations
    /// stay in `stateDir/trust/` of the replica that took them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_drain_seconds() -> u32 {
    0
}

/// The sidecar injector: where its webhook answers and what it gives pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectorConfig {
    /// Where the webhook answers (HTTPS).
    pub addr: SocketAddr,
    /// Its serving certificate and key (PEM); relative paths are relative to the config file.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The strait image of injected sidecars.
    pub image: String,
    /// The gateway's workload API as pods reach it (`host:port`).
    pub gateway_address: String,
}

fn default_namespace() -> String {
    "strait-system".into()
}

fn default_lease_seconds() -> u32 {
    15
}

/// The gateway's DNS server: authoritative for the clusterset zone, over UDP and TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// Where it answers, on UDP and TCP.
    pub addr: SocketAddr,
    /// The zone it is authoritative for.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// TTL of answers and of negative answers, in seconds.
    #[serde(default = "default_dns_ttl")]
    pub ttl_seconds: u32,
    /// The range virtual IPv4 addresses are taken from (never routed: sidecars intercept them).
    #[serde(default = "default_vip_range")]
    pub vip_range: String,
    /// A range for virtual IPv6 addresses (AAAA records); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_range6: Option<String>,
}

fn default_zone() -> String {
    "clusterset.local".into()
}
fn default_dns_ttl() -> u32 {
    5
}
fn default_vip_range() -> String {
    "240.240.0.0/16".into()
}

impl DnsConfig {
    /// A DNS server on `addr` with every other setting at its default.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            zone: default_zone(),
            ttl_seconds: default_dns_ttl(),
            vip_range: default_vip_range(),
            vip_range6: None,
        }
    }

    /// The checked ranges, or the field that is wrong and why.
    pub fn ranges(&self) -> Result<(CidrRange, Option<CidrRange>), FieldError> {
        let range = |field, text: &str, v6: bool| {
            let range =
                CidrRange::parse(text).map_err(|source| FieldError::Range { field, source })?;
            if range.is_v6() != v6 {
                return Err(FieldError::Family {
                    field,
                    text: text.to_owned(),
                    family: if v6 { "IPv6" } else { "IPv4" },
                });
            }
            Ok(range)
        };
        let v4 = range("dns.vipRange", &self.vip_range, false)?;
        let v6 = match &self.vip_range6 {
            Some(text) => Some(range("dns.vipRange6", text, true)?),
            None => None,
        };
        Ok((v4, v6))
    }

    fn check(&self) -> Result<(), FieldError> {
        self.ranges()?;
        if crate::dns::wire::encode_name(&self.zone).is_none_or(|z| z.len() < 2) {
            return Err(FieldError::Zone(self.zone.clone()));
        }
        if self.ttl_seconds == 0 || self.ttl_seconds > 3600 {
            return Err(FieldError::Ttl);
        }
        Ok(())
    }
}

/// A field of the `dns:` block that does not hold what it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{field}: {source}")]
    Range {
        field: &'static str,
        #[source]
        source: CidrError,
    },
    #[error("{field}: {text} is not an {family} range")]
    Family {
        field: &'static str,
        text: String,
        family: &'static str,
    },
    #[error("dns.zone: {0:?} is not a domain name (labels of 1 to 63 characters)")]
    Zone(String),
    #[error("dns.ttlSeconds: expected 1 to 3600")]
    Ttl,
}

/// How the gateway serves its sidecars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Lifetime of the workload certificates it signs, in seconds (renewed at 70 %).
    #[serde(default = "default_cert_ttl")]
    pub cert_ttl_seconds: u64,
    /// A registered endpoint lapses when its sidecar has not refreshed it for this long.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
}

fn default_cert_ttl() -> u64 {
    24 * 3600
}
fn default_lease() -> u64 {
    15
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            cert_ttl_seconds: default_cert_ttl(),
            lease_seconds: default_lease(),
        }
    }
}

impl WorkloadConfig {
    /// See [`WorkloadConfig::cert_ttl_seconds`].
    pub fn cert_ttl(&self) -> Duration {
        Duration::from_secs(self.cert_ttl_seconds)
    }
    /// See [`WorkloadConfig::lease_seconds`].
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

fn here() -> PathBuf {
    PathBuf::from(".")
}

/// Golden metrics: sidecars report what they counted; the gateway sums it per interval and
/// sends each closed interval to its peers, which pass it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// The length of an interval, in milliseconds (1000 to 60000).
    #[serde(default = "default_metrics_interval")]
    pub interval_ms: u64,
    /// After how long without news from a cluster its figures are shown as stale, in
    /// milliseconds (at least two intervals).
    #[serde(default = "default_metrics_stale")]
    pub stale_after_ms: u64,
}

fn default_metrics_interval() -> u64 {
    5_000
}
fn default_metrics_stale() -> u64 {
    15_000
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_metrics_interval(),
            stale_after_ms: default_metrics_stale(),
        }
    }
}

impl MetricsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// What is wrong with the block, if anything.
    fn check(&self) -> Result<(), String> {
        if !(1_000..=60_000).contains(&self.interval_ms) {
            return Err(format!(
                "metrics.intervalMs: {} is not in 1000..60000",
                self.interval_ms
            ));
        }
        if self.stale_after_ms < 2 * self.interval_ms {
            return Err(format!(
                "metrics.staleAfterMs: {} is less than two intervals ({} ms)",
                self.stale_after_ms,
                2 * self.interval_ms
            ));
        }
        Ok(())
    }

    /// The golden book's configuration.
    pub fn golden(&self) -> strait_federation::golden::GoldenConfig {
        let interval_ms = self.interval_ms.max(1_000);
        strait_federation::golden::GoldenConfig {
            interval_ms,
            // A minute's worth, the longest window `stat` shows.
            retained: (60_000 / interval_ms).max(2),
            grace_ms: (interval_ms / 5).max(500),
            stale_after_ms: self.stale_after_ms.max(2 * interval_ms),
            ..Default::default()
        }
    }
}

/// Traces and access logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where this gateway and its sidecars send spans, OTLP/gRPC (`http://collector:4317`).
    /// Unset: trace context is still propagated, spans are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The share of new traces sampled, in percent (0 to 100; default 1). A request that
    /// arrives with a trace keeps its caller's decision.
    #[serde(default = "default_sampling_percent")]
    pub sampling_percent: f64,
    /// Namespaces whose sidecars write an access log (`*`: every namespace). A sidecar run
    /// with `--access-log` writes one whatever this says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log_namespaces: Vec<String>,
}

fn default_sampling_percent() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            collector: None,
            sampling_percent: default_sampling_percent(),
            access_log_namespaces: Vec::new(),
        }
    }
}

impl TelemetryConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// What is wrong with the block, if anything.
    fn check(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.sampling_percent) {
            return Err(format!(
                "telemetry.samplingPercent: {} is not in 0..100",
                self.sampling_percent
            ));
        }
        if let Some(collector) = &self.collector {
            let uri: Result<axum::http::Uri, _> = collector.parse();
            let scheme = uri
                .as_ref()
                .ok()
                .and_then(|u| u.scheme_str().map(str::to_owned));
            if !matches!(scheme.as_deref(), Some("http" | "https"))
                || uri.as_ref().ok().and_then(|u| u.host()).is_none()
            {
                return Err(format!(
                    "telemetry.collector: {collector:?} is not an http:// or https:// address \
                     (an OTLP/gRPC collector, e.g. http://otel-collector:4317)"
                ));
            }
        }
        Ok(())
    }

    /// Whether sidecars of `namespace` write an access log.
    pub fn access_log(&self, namespace: &str) -> bool {
        self.access_log_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace)
    }
}

/// Timers and packet sizes of the peering with other gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeeringConfig {
    /// Keep-alive interval on the control stream, in milliseconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_ms: u64,
    /// A peer silent for this long is disconnected, in milliseconds.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// How long a disconnected peer's services stay in the catalog, in milliseconds.
    #[serde(default = "default_grace")]
    pub grace_period_ms: u64,
    /// Longest wait between two dials of an unreachable peer, in milliseconds.
    #[serde(default = "default_backoff")]
    pub max_backoff_ms: u64,
    /// How long a deleted policy's tombstone is kept, in milliseconds; 0: for good. A peer
    /// away for longer that still holds the policy brings it back when it returns.
    #[serde(default = "default_tombstone_retention")]
    pub tombstone_retention_ms: u64,
    /// The largest UDP payload, in bytes, that path MTU discovery tries on a peer connection
    /// and that this endpoint accepts. Packets start at 1200 bytes and grow only as far as
    /// probes get through, so a high bound costs a few lost probes on a 1500-byte path.
    #[serde(default = "default_max_udp_payload")]
    pub max_udp_payload: u16,
    /// How the peer connection paces itself to the path: `bbr` (the default) or `cubic`.
    #[serde(default)]
    pub congestion_control: CongestionControl,
}

/// The congestion controller of the peer connections. One connection carries every flow
/// between two clusters, so its controller sets what the whole cluster pair can move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// BBR: paces to the bandwidth and round trip it measures, and keeps its rate through
    /// random loss. Through a 20 ms path losing 0.1 % of packets it moved 254 MB/s where Cubic
    /// moved 18. quinn marks its BBR experimental.
    #[default]
    Bbr,
    /// Cubic (RFC 9438), quinn's default and TCP's on Linux: cuts its window on every loss,
    /// so random loss on a long path caps the whole connection (about packet size / RTT ×
    /// 1.2 / √loss).
    Cubic,
}

fn default_keepalive() -> u64 {
    2_000
}
fn default_idle() -> u64 {
    10_000
}
fn default_grace() -> u64 {
    30_000
}
fn default_backoff() -> u64 {
    2_000
}
/// Seven days: longer than any partition a peer is expected to come back from unchanged.
fn default_tombstone_retention() -> u64 {
    7 * 24 * 3_600_000
}
/// A 9000-byte jumbo frame less the IPv6 and UDP headers: clouds carry jumbo frames inside a
/// network (AWS 9001, GCP up to 8896), the internet carries 1500.
fn default_max_udp_payload() -> u16 {
    8952
}
/// The bounds QUIC sets on a UDP payload (RFC 9000, 18.2).
const UDP_PAYLOAD_BOUNDS: std::ops::RangeInclusive<u16> = 1200..=65527;

impl Default for PeeringConfig {
    fn default() -> Self {
        Self {
            keepalive_ms: default_keepalive(),
            idle_timeout_ms: default_idle(),
            grace_period_ms: default_grace(),
            max_backoff_ms: default_backoff(),
            tombstone_retention_ms: default_tombstone_retention(),
            max_udp_payload: default_max_udp_payload(),
            congestion_control: CongestionControl::default(),
        }
    }
}

impl PeeringConfig {
    /// See [`PeeringConfig::keepalive_ms`].
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }
    /// See [`PeeringConfig::idle_timeout_ms`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// See [`PeeringConfig::grace_period_ms`].
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
    /// See [`PeeringConfig::max_backoff_ms`].
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
}

impl GatewayConfig {
    /// Reads and checks a configuration file; relative state paths are resolved against it.
    pub fn load(path: &Path) -> Result<Self, GatewayError> {
        let text = std::fs::read_to_string(path).map_err(|e| GatewayError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut config: GatewayConfig =
            serde_saphyr::from_str(&text).map_err(|e| GatewayError::Config {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        if config.state_dir.is_relative() {
            config.state_dir = base.join(&config.state_dir);
        }
        if let Some(dir) = config.credentials_dir.as_mut().filter(|d| d.is_relative()) {
            *dir = base.join(&*dir);
        }
        if let Some(kubeconfig) = config
            .kubernetes
            .as_mut()
            .and_then(|k| k.kubeconfig.as_mut())
            .filter(|p| p.is_relative())
        {
            *kubeconfig = base.join(&*kubeconfig);
        }
        if let Some(injector) = config.kubernetes.as_mut().and_then(|k| k.injector.as_mut()) {
            for file in [&mut injector.cert_file, &mut injector.key_file] {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        if let Some(kubernetes) = &config.kubernetes
            && !(3..=3600).contains(&kubernetes.lease_duration_seconds)
        {
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: format!(
                    "kubernetes.leaseDurationSeconds: {} is not in 3..3600",
                    kubernetes.lease_duration_seconds
                ),
            });
        }
        config
            .limits
            .check()
            .map_err(|message| GatewayError::Config {
                path: path.to_owned(),
                message,
            })?;
        config
            .metrics
            .check()
            .map_err(|message| GatewayError::Config {
                path: path.to_owned(),
                message,
            })?;
        config
            .telemetry
            .check()
            .map_err(|message| GatewayError::Config {
                path: path.to_owned(),
                message,
            })?;
        let p = &config.peering;
        if p.max_backoff_ms < 10 {
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: "peering.maxBackoffMs must be at least 10".into(),
            });
        }
        if p.keepalive_ms == 0 || p.idle_timeout_ms <= p.keepalive_ms {
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: "peering.idleTimeoutMs must be larger than peering.keepaliveMs (> 0)"
                    .into(),
            });
        }
        if p.tombstone_retention_ms != 0 && p.tombstone_retention_ms < p.idle_timeout_ms {
            // Shorter than a peer may be silent before it counts as lost: a deletion could go
            // before a connected peer heard of it.
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: format!(
                    "peering.tombstoneRetentionMs must be 0 (kept for good) or at least \
                     peering.idleTimeoutMs ({} ms), got {}",
                    p.idle_timeout_ms, p.tombstone_retention_ms
                ),
            });
        }
        if !UDP_PAYLOAD_BOUNDS.contains(&p.max_udp_payload) {
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: format!(
                    "peering.maxUdpPayload must be {} to {} bytes, got {}",
                    UDP_PAYLOAD_BOUNDS.start(),
                    UDP_PAYLOAD_BOUNDS.end(),
                    p.max_udp_payload
                ),
            });
        }
        let w = &config.workloads;
        if w.cert_ttl_seconds < 2 || w.lease_seconds < 2 {
            return Err(GatewayError::Config {
                path: path.to_owned(),
                message: "workloads.certTtlSeconds and workloads.leaseSeconds must be at least 2"
                    .into(),
            });
        }
        if let Some(dns) = &config.dns {
            dns.check().map_err(|e| GatewayError::Config {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        Ok(config)
    }

    /// The address of the relay for sidecars, before a port is chosen.
    pub fn relay_bind(&self) -> SocketAddr {
        self.relay_addr
            .unwrap_or_else(|| SocketAddr::new(self.api_addr.ip(), 0))
    }

    /// The address put in Link documents.
    pub fn advertised(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.quic_addr.to_string())
    }

    /// A file in the state folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// The folder of the cluster's credentials (`credentialsDir`, else the state folder).
    pub fn credentials(&self) -> &Path {
        self.credentials_dir.as_deref().unwrap_or(&self.state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_read_with_defaults_and_relative_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            "cluster: west\ntrustDomain: example.mesh\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\n",
        )
        .unwrap();
        let config = GatewayConfig::load(&path).unwrap();
        assert_eq!(config.cluster.as_str(), "west");
        assert_eq!(config.state_dir, dir.path().join("."));
        assert_eq!(config.peering, PeeringConfig::default());
        assert_eq!(config.advertised(), "127.0.0.1:1");
    }

    #[test]
    fn a_bad_config_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, "cluster: West\n").unwrap();
        let err = GatewayConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("gateway.yaml"), "{err}");
        std::fs::write(
            &path,
            "cluster: west\ntrustDomain: t\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\nbogus: 1\n",
        )
        .unwrap();
        let err = GatewayConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        std::fs::write(
            &path,
            "cluster: west\ntrustDomain: t\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\npeering: {tombstoneRetentionMs: 500}\n",
        )
        .unwrap();
        let err = GatewayConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("gateway.yaml") && err.contains("peering.tombstoneRetentionMs"),
            "{err}"
        );
    }

    #[test]
    fn a_udp_payload_outside_quics_bounds_is_named_and_one_inside_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let head = "cluster: west\ntrustDomain: t\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\n";
        for bad in [1199, 65528] {
            std::fs::write(&path, format!("{head}peering: {{maxUdpPayload: {bad}}}\n")).unwrap();
            let err = GatewayConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("gateway.yaml")
                    && err.contains("peering.maxUdpPayload")
                    && err.contains(&bad.to_string()),
                "{err}"
            );
        }
        for good in [1200, 1452, 65527] {
            std::fs::write(&path, format!("{head}peering: {{maxUdpPayload: {good}}}\n")).unwrap();
            let config = GatewayConfig::load(&path).unwrap();
            assert_eq!(config.peering.max_udp_payload, good);
        }
        std::fs::write(&path, head).unwrap();
        assert_eq!(
            GatewayConfig::load(&path).unwrap().peering.max_udp_payload,
            8952
        );
    }

    #[test]
    fn the_congestion_controller_defaults_to_bbr_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let head = "cluster: west\ntrustDomain: t\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\n";
        std::fs::write(&path, head).unwrap();
        assert_eq!(
            GatewayConfig::load(&path)
                .unwrap()
                .peering
                .congestion_control,
            CongestionControl::Bbr
        );
        for (name, expected) in [
            ("cubic", CongestionControl::Cubic),
            ("bbr", CongestionControl::Bbr),
        ] {
            std::fs::write(
                &path,
                format!("{head}peering: {{congestionControl: {name}}}\n"),
            )
            .unwrap();
            let config = GatewayConfig::load(&path).unwrap();
            assert_eq!(config.peering.congestion_control, expected);
        }
        std::fs::write(
            &path,
            format!("{head}peering: {{congestionControl: reno}}\n"),
        )
        .unwrap();
        let err = GatewayConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("gateway.yaml")
                && err.contains("congestionControl")
                && err.contains("reno")
                && err.contains("bbr"),
            "{err}"
        );
    }

    #[test]
    fn limits_default_when_absent_and_a_zero_or_unknown_limit_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let base = "cluster: west\ntrustDomain: t\nquicAddr: 127.0.0.1:1\napiAddr: 127.0.0.1:2\nadminAddr: 127.0.0.1:3\n";
        std::fs::write(&path, format!("{base}limits: {{dnsTcpConnections: 8}}\n")).unwrap();
        let config = GatewayConfig::load(&path).unwrap();
        assert_eq!(config.limits.dns_tcp_connections, 8);
        assert_eq!(config.limits.api_connections, 10_000);
        for (limits, named) in [
            (
                "{apiConnections: 0}",
                "limits.apiConnections: 0 would refuse everything",
            ),
            (
                "{peerStreams: 2000000}",
                "limits.peerStreams: 2000000 is over 1000000",
            ),
            ("{streams: 5}", "streams"),
        ] {
            std::fs::write(&path, format!("{base}limits: {limits}\n")).unwrap();
            let err = GatewayConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains("gateway.yaml") && err.contains(named), "{err}");
        }
    }
}

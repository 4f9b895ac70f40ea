//! The gateway's Prometheus metrics: peers and their state, RTT, catalog sizes per cluster,
//! updates sent and received, sync lag, refusals; relayed flows (count, bytes, duration, outcome)
//! per peer and service.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::dns::wire::Rcode;
use crate::dns::wire::Transport;

/// The metrics of one gateway.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1 for the state a peer is in, 0 for the others.
    pub peer_state: IntGaugeVec,
    /// Smoothed round-trip time to each connected peer.
    pub peer_rtt: GaugeVec,
    /// Services in the catalog, per cluster they come from (this cluster included).
    pub catalog_services: IntGaugeVec,
    /// Catalog updates sent to each peer.
    pub updates_sent: IntCounterVec,
    /// Catalog updates received from each peer and applied, by kind (snapshot or delta).
    pub updates_received: IntCounterVec,
    /// UDP bytes sent to and received from each peer (QUIC connection statistics).
    pub peer_bytes: IntGaugeVec,
    /// The largest UDP payload path MTU discovery has found towards each peer.
    pub peer_path_mtu: IntGaugeVec,
    /// Packets of the current connection with each peer, sent and declared lost.
    pub peer_packets: IntGaugeVec,
    /// Congestion events of the current connection with each peer.
    pub peer_congestion_events: IntGaugeVec,
    /// The congestion window towards each peer: bytes allowed in flight.
    pub peer_congestion_window: IntGaugeVec,
    /// Services changed by updates received.
    pub services_changed: IntCounterVec,
    /// Versions of our export a peer has not acknowledged yet.
    pub sync_lag: IntGaugeVec,
    /// Dials of linked peers, by outcome (connected, refused, failed).
    pub dials: IntCounterVec,
    /// Sessions ended, by peer and reason.
    pub sessions_ended: IntCounterVec,
    /// Link attempts refused, by reason.
    pub refusals: IntCounterVec,
    /// Services withdrawn after a peer's grace period.
    pub withdrawn: IntCounterVec,
    /// Relayed flows, by direction (outbound: from this cluster's sidecars; inbound: from a
    /// peer to this cluster's endpoints), peer, service and outcome.
    pub flows: IntCounterVec,
    /// Flows open now, by direction and peer.
    pub open_flows: IntGaugeVec,
    /// Bytes relayed, by direction, peer, service and way (tx: towards the peer).
    pub flow_bytes: IntCounterVec,
    /// How long relayed flows lasted.
    pub flow_duration: HistogramVec,
    /// Workload certificates signed.
    pub workload_certificates: IntCounter,
    /// Names in the DNS zone (empty non-terminals included).
    pub dns_names: IntGauge,
    /// Names holding a virtual address (released ones kept for a while included).
    pub dns_virtual_addresses: IntGauge,
    /// DNS packets given no answer (responses, runts).
    pub dns_dropped: IntCounter,
    /// Refusals because a limit was reached, by the key that sets it.
    pub limit_refusals: strait_io::limit::Refusals,
    /// How long the last change of the DNS zone took (a build, or an update in place).
    pub dns_zone_build_seconds: prometheus::Gauge,
    /// How long the last pass over changed services took: merged, put in the zone, logged
    /// for the sidecars.
    pub view_update_seconds: prometheus::Gauge,
    /// DNS answers, by transport and rcode: made once, so counting costs no label lookup.
    dns_answers: Vec<IntCounter>,
    /// Live policies held, by kind.
    pub policies: IntGaugeVec,
    /// Deleted policies held as tombstones (they count towards the bound on entries).
    pub policy_tombstones: IntGauge,
    /// Policy entries received from each peer, by result (applied, known, refused).
    pub policy_entries: IntCounterVec,
    /// Writes to the Kubernetes API in Kubernetes mode, by resource.
    pub kubernetes_writes: IntCounterVec,
    /// Golden-metric frames exchanged with each peer, by direction (tx or rx), in bytes.
    pub golden_bytes: IntCounterVec,
    /// Golden-metric series held (every cluster and interval kept).
    pub golden_series: IntGauge,
    /// Golden-metric series dropped over the limits.
    pub golden_dropped: IntCounter,
    /// When each certificate the gateway holds expires (Unix seconds), by kind (root, issuer,
    /// gateway, injector) and fingerprint.
    pub certificate_expiry: IntGaugeVec,
    /// 1 while a connected peer is degraded (loss, RTT or silence on its QUIC connection).
    pub peer_degraded: IntGaugeVec,
}

/// The rcodes DNS answers are counted by.
const DNS_RCODES: [Rcode; 6] = [
    Rcode::NoError,
    Rcode::FormErr,
    Rcode::NxDomain,
    Rcode::NotImp,
    Rcode::Refused,
    Rcode::BadVers,
];

/// The states a peer can be in, as `get links` shows them.
pub const PEER_STATES: [&str; 4] = ["connecting", "connected", "disconnected", "refused"];

impl Metrics {
    /// Registers every metric of a gateway for `cluster`.
    pub fn new(cluster: &str) -> Self {
        let labels = [("cluster".to_owned(), cluster.to_owned())].into();
        let registry = Registry::new_custom(Some("strait".into()), Some(labels))
            .expect("constant registry prefix and label are valid");
        let register = |metric: Box<dyn prometheus::core::Collector>| {
            registry
                .register(metric)
                .expect("constant metric names are valid and registered once");
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("constant metric");
            register(Box::new(m.clone()));
            m
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric");
            register(Box::new(m.clone()));
            m
        };
        let peer_rtt = GaugeVec::new(
            Opts::new(
                "peer_rtt_seconds",
                "Smoothed QUIC round-trip time to a peer gateway.",
            ),
            &["peer"],
        )
        .expect("constant metric");
        register(Box::new(peer_rtt.clone()));
        let flow_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_flow_duration_seconds",
                "How long relayed flows lasted.",
            )
            .buckets(vec![
                0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 7200.0,
            ]),
            &["direction", "peer", "namespace", "service"],
        )
        .expect("constant metric");
        register(Box::new(flow_duration.clone()));
        let workload_certificates = IntCounter::new(
            "workload_certificates_total",
            "Workload certificates signed for this cluster's sidecars.",
        )
        .expect("constant metric");
        register(Box::new(workload_certificates.clone()));
        let plain_gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("constant metric");
            register(Box::new(m.clone()));
            m
        };
        let dns_dropped = IntCounter::new(
            "dns_dropped_total",
            "DNS packets given no answer (responses, packets shorter than a header).",
        )
        .expect("constant metric");
        register(Box::new(dns_dropped.clone()));
        let answers = counter(
            "dns_answers_total",
            "DNS answers sent, by transport (udp, tcp) and rcode.",
            &["transport", "rcode"],
        );
        let dns_answers = [Transport::Udp, Transport::Tcp]
            .iter()
            .flat_map(|t| {
                DNS_RCODES
                    .iter()
                    .map(|r| answers.with_label_values(&[t.as_str(), r.as_str()]))
            })
            .collect();
        Self {
            policies: gauge(
                "policies",
                "Live mesh-wide policies this gateway holds, by kind.",
                &["kind"],
            ),
            policy_tombstones: plain_gauge(
                "policy_tombstones",
                "Deleted policies this gateway holds as tombstones; with the live ones they \
                 count towards the bound of 50,000 entries.",
            ),
            kubernetes_writes: counter(
                "kubernetes_writes_total",
                "Writes to the cluster's Kubernetes API (Kubernetes mode), by resource: \
                 serviceimports, serviceimports/status, endpointslices, serviceexports/status, \
                 deletes.",
                &["resource"],
            ),
            policy_entries: counter(
                "peer_policy_entries_total",
                "Policy entries received from a peer, by result: applied (news), known (this \
                 gateway had it or newer) or refused (failed its checks here).",
                &["peer", "result"],
            ),
            dns_names: plain_gauge(
                "dns_names",
                "Names in the clusterset DNS zone, empty non-terminals included.",
            ),
            dns_virtual_addresses: plain_gauge(
                "dns_virtual_addresses",
                "Names holding a virtual address, recently released ones included.",
            ),
            dns_dropped,
            limit_refusals: strait_io::limit::Refusals::register(&registry),
            dns_zone_build_seconds: {
                let m = prometheus::Gauge::new(
                    "dns_zone_build_seconds",
                    "How long the last change of the DNS zone took: a build at start, else an \
                     update in place of the services that changed.",
                )
                .expect("constant metric");
                register(Box::new(m.clone()));
                m
            },
            view_update_seconds: {
                let m = prometheus::Gauge::new(
                    "catalog_view_update_seconds",
                    "How long the last pass over changed services took: merged into the \
                     clusterset view, put in the DNS zone, logged for the sidecars.",
                )
                .expect("constant metric");
                register(Box::new(m.clone()));
                m
            },
            dns_answers,
            golden_bytes: counter(
                "peer_golden_bytes_total",
                "Bytes of golden-metric frames exchanged with a peer, by direction (tx or rx).",
                &["peer", "direction"],
            ),
            golden_series: plain_gauge(
                "golden_series",
                "Golden-metric series held: every cluster's, over the intervals kept.",
            ),
            golden_dropped: {
                let m = IntCounter::new(
                    "golden_series_dropped_total",
                    "Golden-metric series dropped over the limits (per cluster and interval, in \
                     all, clusters).",
                )
                .expect("constant metric");
                register(Box::new(m.clone()));
                m
            },
            certificate_expiry: gauge(
                "certificate_expiry_timestamp_seconds",
                "When a certificate the gateway holds expires (Unix seconds), by kind: root, \
                 issuer, gateway or injector.",
                &["certificate", "fingerprint"],
            ),
            peer_degraded: gauge(
                "peer_degraded",
                "1 while a connected peer is degraded, judged from its QUIC connection (loss, \
                 RTT, silence): sidecars then try other clusters first.",
                &["peer"],
            ),
            peer_state: gauge(
                "peer_state",
                "1 for the state a linked peer gateway is in.",
                &["peer", "state"],
            ),
            peer_rtt,
            catalog_services: gauge(
                "catalog_services",
                "Services in this gateway's catalog, by the cluster that serves them.",
                &["source_cluster"],
            ),
            updates_sent: counter(
                "peer_updates_sent_total",
                "Catalog updates (snapshots and deltas) sent to a peer.",
                &["peer"],
            ),
            updates_received: counter(
                "peer_updates_received_total",
                "Catalog updates received from a peer and applied, by kind (snapshot or delta).",
                &["peer", "kind"],
            ),
            peer_bytes: gauge(
                "peer_udp_bytes",
                "UDP bytes of the current QUIC connection with a peer, by direction (tx or rx).",
                &["peer", "direction"],
            ),
            peer_path_mtu: gauge(
                "peer_path_mtu_bytes",
                "The largest UDP payload that path MTU discovery has found towards a peer \
                 (peering.maxUdpPayload at most).",
                &["peer"],
            ),
            peer_packets: gauge(
                "peer_packets",
                "QUIC packets of the current connection with a peer, by outcome: sent, or lost \
                 (declared lost and sent again; lost over sent is the path's loss rate).",
                &["peer", "outcome"],
            ),
            peer_congestion_events: gauge(
                "peer_congestion_events",
                "Congestion events of the current QUIC connection with a peer: each one cut \
                 the congestion window.",
                &["peer"],
            ),
            peer_congestion_window: gauge(
                "peer_congestion_window_bytes",
                "Bytes the congestion controller allows in flight towards a peer.",
                &["peer"],
            ),
            services_changed: counter(
                "peer_services_changed_total",
                "Imported services changed by a peer's updates.",
                &["peer"],
            ),
            sync_lag: gauge(
                "peer_sync_lag_versions",
                "Versions of this cluster's export that a peer has not acknowledged.",
                &["peer"],
            ),
            dials: counter(
                "peer_dials_total",
                "Dials of a linked peer's gateway, by outcome (connected, refused, failed).",
                &["peer", "outcome"],
            ),
            sessions_ended: counter(
                "peer_sessions_ended_total",
                "Peer sessions that ended, by reason.",
                &["peer", "reason"],
            ),
            refusals: counter(
                "link_refusals_total",
                "Link attempts refused by this gateway, by reason.",
                &["reason"],
            ),
            withdrawn: counter(
                "peer_services_withdrawn_total",
                "Imported services withdrawn after a peer's grace period or an unlink.",
                &["peer"],
            ),
            flows: counter(
                "gateway_flows_total",
                "Flows relayed between this cluster's sidecars and peer gateways, by outcome.",
                &["direction", "peer", "namespace", "service", "outcome"],
            ),
            open_flows: gauge(
                "gateway_open_flows",
                "Relayed flows open now.",
                &["direction", "peer"],
            ),
            flow_bytes: counter(
                "gateway_flow_bytes_total",
                "Bytes relayed (tx: towards the peer gateway), counted when a flow ends.",
                &["direction", "peer", "namespace", "service", "way"],
            ),
            flow_duration,
            workload_certificates,
            registry,
        }
    }

    /// Counts one DNS answer.
    pub fn count_dns(&self, transport: Transport, rcode: Rcode) {
        let row = match transport {
            Transport::Udp => 0,
            Transport::Tcp => DNS_RCODES.len(),
        };
        let column = DNS_RCODES.iter().position(|r| *r == rcode).unwrap_or(0);
        if let Some(counter) = self.dns_answers.get(row + column) {
            counter.inc();
        }
    }

    /// Sets the state gauge of a peer.
    pub fn set_peer_state(&self, peer: &str, state: &str) {
        for candidate in PEER_STATES {
            self.peer_state
                .with_label_values(&[peer, candidate])
                .set(i64::from(candidate == state));
        }
    }

    /// Forgets the series of a peer that was unlinked.
    pub fn forget_peer(&self, peer: &str) {
        for candidate in PEER_STATES {
            let _ = self.peer_state.remove_label_values(&[peer, candidate]);
        }
        self.set_peer_connection(peer, None);
        let _ = self.sync_lag.remove_label_values(&[peer]);
        let _ = self.catalog_services.remove_label_values(&[peer]);
    }

    /// Sets the series read off a peer's QUIC connection (RTT, bytes, packets, path MTU,
    /// congestion), or removes them while there is none.
    pub fn set_peer_connection(&self, peer: &str, stats: Option<&quinn::ConnectionStats>) {
        let Some(stats) = stats else {
            let _ = self.peer_rtt.remove_label_values(&[peer]);
            let _ = self.peer_path_mtu.remove_label_values(&[peer]);
            let _ = self.peer_congestion_events.remove_label_values(&[peer]);
            let _ = self.peer_congestion_window.remove_label_values(&[peer]);
            for direction in ["tx", "rx"] {
                let _ = self.peer_bytes.remove_label_values(&[peer, direction]);
            }
            for outcome in ["sent", "lost"] {
                let _ = self.peer_packets.remove_label_values(&[peer, outcome]);
            }
            return;
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let path = &stats.path;
        self.peer_rtt
            .with_label_values(&[peer])
            .set(path.rtt.as_secs_f64());
        self.peer_path_mtu
            .with_label_values(&[peer])
            .set(i64::from(path.current_mtu));
        self.peer_congestion_events
            .with_label_values(&[peer])
            .set(count(path.congestion_events));
        self.peer_congestion_window
            .with_label_values(&[peer])
            .set(count(path.cwnd));
        for (direction, bytes) in [("tx", stats.udp_tx.bytes), ("rx", stats.udp_rx.bytes)] {
            self.peer_bytes
                .with_label_values(&[peer, direction])
                .set(count(bytes));
        }
        for (outcome, packets) in [("sent", path.sent_packets), ("lost", path.lost_packets)] {
            self.peer_packets
                .with_label_values(&[peer, outcome])
                .set(count(packets));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_metrics_with_the_cluster_label() {
        let metrics = Metrics::new("west");
        metrics.set_peer_state("east", "connected");
        metrics.catalog_services.with_label_values(&["west"]).set(3);
        let text = metrics.encode();
        let line = |name: &str, labels: &[&str]| {
            text.lines()
                .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        let state = ["cluster=\"west\"", "peer=\"east\"", "state=\"connected\""];
        assert_eq!(
            line("strait_peer_state{", &state).as_deref(),
            Some("1"),
            "{text}"
        );
        let catalog = ["cluster=\"west\"", "source_cluster=\"west\""];
        assert_eq!(
            line("strait_catalog_services{", &catalog).as_deref(),
            Some("3"),
            "{text}"
        );
    }
}

//! How a gateway stands, as its peers and `strait check` see it: the health frames it sends
//! each peer (its clock and its policy set's digest), what it keeps of theirs, and the answer to
//! the operator API's `Status`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use strait_federation::certificate;
use strait_federation::identity::ClusterName;
use strait_federation::pki::fingerprint;
use strait_federation::policy::exchange::PolicyExchange;
use strait_federation::proto::operator::{CertificateStatus, LinkHealth, StatusResponse};
use strait_federation::proto::peer::Health;
use strait_io::admin::Probes;

use crate::{Shared, lock, unix_now_ms};

/// How long the gateway's own DNS server may take to answer its probe.
const DNS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a session sends its peer a health frame (and after every policy change).
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);

/// What a peer last said of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHealth {
    /// When it arrived (this gateway's clock, Unix milliseconds).
    pub received_ms: u64,
    /// The peer's clock minus this gateway's, estimated with half the RTT.
    pub skew_ms: f64,
    pub digest: Vec<u8>,
    pub policies: u64,
    /// When the peer's digest last changed, as seen here (Unix milliseconds).
    pub digest_changed_ms: u64,
}

/// The digest of the policy set and its number of live policies, computed once per change of
/// the set (every peer session sends it, every 5 s and after each change).
fn policy_digest(shared: &Shared) -> (Vec<u8>, u64) {
    let version = *shared.policy_tx.borrow();
    if let Some((held, digest, count)) = lock(&shared.policy_digest).as_ref()
        && *held == version
    {
        return (digest.clone(), *count);
    }
    let (digest, count) = {
        let state = lock(&shared.state);
        (
            PolicyExchange::set_digest(&state.policies.set),
            state.policies.set.live_count() as u64,
        )
    };
    // Read before the set: a change meanwhile bumps the version, and the next call computes
    // again.
    *lock(&shared.policy_digest) = Some((version, digest.clone(), count));
    (digest, count)
}

/// The health frame this gateway sends now.
pub fn frame(shared: &Shared) -> Health {
    let (policy_digest, policies) = policy_digest(shared);
    Health {
        sent_unix_ms: unix_now_ms(),
        policy_digest,
        policies,
    }
}

/// Keeps a peer's health frame, if it came on the peer's current session.
pub fn received(shared: &Shared, peer: &ClusterName, session: u64, health: Health, rtt: Duration) {
    let now = unix_now_ms();
    let skew_ms = health.sent_unix_ms as f64 - (now as f64 - rtt.as_secs_f64() * 500.0);
    let mut peers = lock(&shared.peers);
    let Some(status) = peers.get_mut(peer).filter(|s| s.session == session) else {
        return;
    };
    let digest_changed_ms = match &status.health {
        Some(old) if old.digest == health.policy_digest => old.digest_changed_ms,
        _ => now,
    };
    status.health = Some(PeerHealth {
        received_ms: now,
        skew_ms,
        digest: health.policy_digest,
        policies: health.policies,
        digest_changed_ms,
    });
}

/// Where people reach an address this gateway binds: a wildcard address is reached on
/// loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// The dashboard's URL on the admin port.
pub fn dashboard_url(admin: SocketAddr) -> String {
    format!("http://{}/dashboard/", reachable(admin))
}

fn certificate_status(cert: &CertificateDer<'_>, pem: String) -> CertificateStatus {
    CertificateStatus {
        subject: certificate::describe(cert),
        not_after: certificate::not_after(cert).unwrap_or_default(),
        pem,
        fingerprint: fingerprint(cert),
    }
}

/// The answer to `Status`.
pub async fn status(shared: &Shared) -> StatusResponse {
    let (dns_rcode, dns_error) = match shared.dns_addr.get() {
        Some(addr) => {
            let zone = shared
                .config
                .dns
                .as_ref()
                .map_or("clusterset.local", |d| d.zone.as_str());
            match strait_io::dns::soa_rcode(reachable(*addr), zone, DNS_PROBE_TIMEOUT).await {
                Ok(rcode) => (i32::from(rcode), String::new()),
                Err(e) => (-1, e),
            }
        }
        None => (-1, String::new()),
    };
    let mut kubernetes_problems = shared.kubernetes.problems();
    let (kubernetes_namespace, kubernetes_rights_checked, kubernetes_rights_lacking) =
        match (&shared.kube, &shared.config.kubernetes) {
            (Some(client), Some(config)) => {
                match shared
                    .kubernetes
                    .access
                    .get(client, &config.namespace)
                    .await
                {
                    Ok(access) => (config.namespace.clone(), access.checked, access.lacking),
                    Err(e) => {
                        kubernetes_problems.push(format!("rights: {e}"));
                        (config.namespace.clone(), 0, Vec::new())
                    }
                }
            }
            _ => (String::new(), 0, Vec::new()),
        };
    let injector = shared.kubernetes.injector_chain.get().and_then(|pem| {
        strait_federation::pki::parse_certs(pem, std::path::Path::new("injector certificate"))
            .ok()
            .and_then(|certs| certs.into_iter().next())
            .map(|cert| certificate_status(&cert, pem.clone()))
    });
    let now = unix_now_ms();
    let (ready, not_ready_reason) = match shared.ready() {
        Ok(()) => (true, String::new()),
        Err(reason) => (false, reason),
    };
    let (policy_digest, policies) = policy_digest(shared);
    let head = lock(&shared.state).export.head().version;
    let in_force = shared.trust.issuer();
    let issuer = strait_federation::pki::parse_certs(
        &in_force.chain_pem,
        std::path::Path::new("issuer.crt"),
    )
    .ok()
    .and_then(|certs| certs.into_iter().next())
    .map(|cert| certificate_status(&cert, in_force.chain_pem.clone()));
    let links = lock(&shared.peers)
        .iter()
        .map(|(cluster, status)| {
            let health = status.health.as_ref();
            LinkHealth {
                cluster: cluster.to_string(),
                role: status.role.as_str().into(),
                state: status.state.as_str().into(),
                last_error: status.last_error.clone(),
                rtt_ms: status.rtt_ms(),
                lag_versions: head.saturating_sub(status.acked.version),
                heard: health.is_some(),
                clock_skew_ms: health.map_or(0.0, |h| h.skew_ms),
                policy_digest: health.map(|h| h.digest.clone()).unwrap_or_default(),
                policies: health.map_or(0, |h| h.policies),
                digest_age_ms: health.map_or(0, |h| now.saturating_sub(h.digest_changed_ms)),
                heard_ago_ms: health.map_or(0, |h| now.saturating_sub(h.received_ms)),
                degraded: status.degraded().unwrap_or_default().to_owned(),
            }
        })
        .collect();
    StatusResponse {
        cluster: shared.config.cluster.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        ready,
        not_ready_reason,
        trust_domain: shared.config.trust_domain.to_string(),
        roots: shared
            .trust
            .bundle()
            .roots()
            .iter()
            .map(|root| certificate_status(root, strait_federation::pki::pem_of(root)))
            .collect(),
        workloads_awaiting_renewal: shared.trust.awaiting_renewal(),
        issuer,
        gateway: shared
            .certs
            .leaf()
            .map(|leaf| certificate_status(&leaf, String::new())),
        dns_address: shared
            .dns_addr
            .get()
            .map(|a| reachable(*a).to_string())
            .unwrap_or_default(),
        admin_address: reachable(shared.admin_addr).to_string(),
        dashboard_url: dashboard_url(shared.admin_addr),
        policy_digest,
        policies,
        policies_age_ms: now.saturating_sub(
            shared
                .policies_changed_ms
                .load(std::sync::atomic::Ordering::SeqCst),
        ),
        links,
        kubernetes: shared.kube.is_some(),
        kubernetes_problems,
        kubernetes_namespace,
        kubernetes_rights_checked,
        kubernetes_rights_lacking,
        injector,
        dns_rcode,
        dns_error,
        now_unix_ms: now,
    }
}

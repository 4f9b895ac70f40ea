//! `strait check` after install: how the mesh stands as the context's gateway sees it. The
//! context's credentials, the gateway (reachable, ready, version), trust (the same roots as the
//! context, the issuer chained to them, expiries), every link (connected, RTT, sync lag, clock
//! skew), policies in sync with every peer (the same digest), DNS answering, and in Kubernetes
//! mode the cluster's side ([`super::kubernetes`]).

use std::time::Duration;

use strait_federation::pki::{TrustBundle, parse_certs};
use strait_federation::proto::operator::{LinkHealth, StatusRequest, StatusResponse};

use super::Report;
use crate::context;

/// Clock skew above this is warned about.
const SKEW_WARNING_MS: f64 = 1_000.0;
/// Policy sets that differ are still converging when either changed this recently.
const CONVERGING_MS: u64 = 10_000;
/// How long the gateway may take to say how it stands.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the checks.
pub(super) async fn run(
    name: Option<&str>,
    kubeconfig: Option<&std::path::Path>,
    report: &mut Report,
) {
    const CONTEXT: &str = "strait-context";
    let selected = context::load().and_then(|(path, file)| Ok(file.select(name, &path)?));
    let selected = match selected {
        Ok(context) => context,
        Err(e) => {
            report.fail(
                CONTEXT,
                format!("a context to check: {e:#}"),
                "add one with `strait context add` or `strait gateway init`",
            );
            return;
        }
    };
    let chain = std::fs::read_to_string(&selected.cert)
        .map_err(|e| e.to_string())
        .and_then(|pem| parse_certs(&pem, &selected.cert).map_err(|e| e.to_string()));
    match chain.as_deref().map(|c| c.first()) {
        Ok(Some(leaf)) => report.expiry(
            CONTEXT,
            &format!("the operator certificate of context {}", selected.name),
            strait_federation::certificate::not_after(leaf).unwrap_or(0),
            false,
            "issue a new operator certificate for this context",
        ),
        Ok(None) => report.fail(
            CONTEXT,
            format!("{} holds no certificate", selected.cert.display()),
            "point the context at the operator certificate",
        ),
        Err(e) => report.fail(
            CONTEXT,
            format!("the operator certificate: {e}"),
            "point the context at a readable operator certificate",
        ),
    }
    let mut client = match selected.connect().await {
        Ok(client) => client,
        Err(e) => {
            report.fail(
                CONTEXT,
                format!("can reach the gateway's operator API: {e}"),
                format!(
                    "is the gateway of {} running, and its API at {} reachable from here?",
                    selected.cluster, selected.api_addr
                ),
            );
            return;
        }
    };
    let status = tokio::time::timeout(STATUS_TIMEOUT, client.status(StatusRequest {})).await;
    let status = match status {
        Ok(Ok(status)) => status.into_inner(),
        Ok(Err(e)) => {
            report.fail(
                CONTEXT,
                format!("the gateway says how it stands: {}", e.message()),
                "a gateway older than this CLI has no Status call: upgrade it",
            );
            return;
        }
        Err(_) => {
            report.fail(
                CONTEXT,
                format!("the gateway says how it stands within {STATUS_TIMEOUT:?}"),
                "the gateway is overloaded or stuck: look at its logs",
            );
            return;
        }
    };
    report.ok(
        CONTEXT,
        format!(
            "can reach the gateway's operator API at {}",
            selected.api_addr
        ),
    );
    gateway(&status, selected.cluster.as_str(), report);
    let bundle = std::fs::read_to_string(&selected.bundle)
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            TrustBundle::from_pem(selected.trust_domain.clone(), &pem, &selected.bundle)
                .map_err(|e| e.to_string())
        });
    trust(&status, bundle, report);
    for link in &status.links {
        peer(&status, link, report);
    }
    if status.links.is_empty() {
        report.warn(
            "strait-links",
            "the gateway is linked to no other cluster",
            "link a cluster: strait --context OTHER link | strait apply -f -",
        );
    }
    dns(&status, report);
    if status.kubernetes {
        super::kubernetes::run(&status, kubeconfig, report).await;
    }
}

fn gateway(status: &StatusResponse, cluster: &str, report: &mut Report) {
    const GATEWAY: &str = "strait-gateway";
    if status.cluster == cluster {
        report.ok(GATEWAY, format!("the gateway is cluster {cluster}'s"));
    } else {
        report.fail(
            GATEWAY,
            format!(
                "the gateway is cluster {}'s, not {cluster}'s as the context says",
                status.cluster
            ),
            "fix the context's address: strait context add",
        );
    }
    if status.ready {
        report.ok(GATEWAY, "the gateway is ready");
    } else {
        report.fail(
            GATEWAY,
            format!("the gateway is not ready: {}", status.not_ready_reason),
            "look at the gateway's logs and its /readyz",
        );
    }
    let mine = env!("CARGO_PKG_VERSION");
    if status.version == mine {
        report.ok(
            GATEWAY,
            format!("the gateway runs strait {mine}, as this CLI"),
        );
    } else {
        report.warn(
            GATEWAY,
            format!(
                "the gateway runs strait {}, this CLI {mine}",
                status.version
            ),
            "run the same version on both: strait install, or a new binary",
        );
    }
}

fn trust(status: &StatusResponse, bundle: Result<TrustBundle, String>, report: &mut Report) {
    const TRUST: &str = "strait-trust";
    let bundle = match bundle {
        Ok(bundle) => bundle,
        Err(e) => {
            report.fail(
                TRUST,
                format!("the context's trust bundle: {e}"),
                "point the context at the mesh's bundle.pem",
            );
            return;
        }
    };
    let foreign: Vec<&str> = status
        .roots
        .iter()
        .filter(|r| !bundle.contains_fingerprint(&r.fingerprint))
        .map(|r| r.subject.as_str())
        .collect();
    if foreign.is_empty() && !status.roots.is_empty() {
        report.ok(
            TRUST,
            format!(
                "the gateway trusts {} root(s), all in this context's bundle",
                status.roots.len()
            ),
        );
    } else {
        report.fail(
            TRUST,
            format!(
                "the gateway trusts roots this context's bundle lacks: {}",
                foreign.join(", ")
            ),
            "give the context the mesh's current bundle.pem",
        );
    }
    for root in &status.roots {
        report.expiry(
            TRUST,
            &format!("root {}", root.subject),
            root.not_after,
            false,
            "rotate the root: strait trust rotate",
        );
    }
    match &status.issuer {
        Some(issuer) if bundle.fingerprint_of_issuer(&issuer.pem).is_some() => {
            report.ok(
                TRUST,
                format!("the issuer of {} chains to the bundle", status.cluster),
            );
            report.expiry(
                TRUST,
                &format!("the issuer of {}", status.cluster),
                issuer.not_after,
                false,
                "re-key it: strait trust rotate reissue --trust ROOT-FOLDER",
            );
        }
        Some(_) => report.fail(
            TRUST,
            format!(
                "the issuer of {} does not chain to the bundle",
                status.cluster
            ),
            "issue the cluster's issuer under the mesh's root: strait trust issue",
        ),
        None => report.fail(
            TRUST,
            "the gateway shows no issuer",
            "look at the gateway's credentials folder",
        ),
    }
    match status.workloads_awaiting_renewal {
        0 => {}
        n => report.warn(
            TRUST,
            format!("{n} workload identities hold a certificate of an earlier issuer"),
            "they renew as soon as their sidecar has its next view; retire no root until none is left",
        ),
    }
    if let Some(leaf) = &status.gateway {
        report.expiry(
            TRUST,
            "the gateway's certificate",
            leaf.not_after,
            true,
            "the gateway renews it itself: look at its logs",
        );
    }
}

fn peer(status: &StatusResponse, link: &LinkHealth, report: &mut Report) {
    const LINKS: &str = "strait-links";
    let cluster = &link.cluster;
    if link.state != "connected" {
        let hint = match link.state.as_str() {
            "refused" => format!(
                "{cluster} refused the link ({}); if its join token expired or was used, mint a \
                 new Link: strait --context {cluster} link | strait --context {} apply -f -",
                link.last_error, status.cluster
            ),
            _ if link.role == "acceptor" => format!(
                "{cluster} dials this gateway: is its gateway running, and this one's QUIC port \
                 reachable from it (UDP)?"
            ),
            _ => format!(
                "is {cluster}'s gateway running, and its QUIC address reachable from here (UDP)?"
            ),
        };
        let error = if link.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", link.last_error)
        };
        report.fail(
            LINKS,
            format!("the link to {cluster} is {}{error}", link.state),
            hint,
        );
        return;
    }
    report.ok(
        LINKS,
        format!(
            "the link to {cluster} is connected ({}, RTT {:.1} ms)",
            link.role, link.rtt_ms
        ),
    );
    if !link.degraded.is_empty() {
        report.warn(
            LINKS,
            format!("the link to {cluster} is degraded: {}", link.degraded),
            "sidecars try other clusters first while it lasts: look at the path between the two gateways (loss, latency)",
        );
    }
    if link.lag_versions == 0 {
        report.ok(
            LINKS,
            format!("{cluster} has every version of this cluster's catalog"),
        );
    } else {
        report.warn(
            LINKS,
            format!(
                "{cluster} lags {} version(s) behind this cluster's catalog",
                link.lag_versions
            ),
            "normal just after a change; if it lasts, look at both gateways' logs",
        );
    }
    if !link.heard {
        report.warn(
            LINKS,
            format!("{cluster} has not said its clock and policies yet"),
            "wait a few seconds; a gateway older than this one never says them",
        );
        return;
    }
    if link.clock_skew_ms.abs() > SKEW_WARNING_MS {
        report.warn(
            LINKS,
            format!(
                "{cluster}'s clock is {:+.1} s off this gateway's",
                link.clock_skew_ms / 1000.0
            ),
            "run NTP (chrony, systemd-timesyncd) on both hosts: certificates and policy \
             versions rely on clocks",
        );
    } else {
        report.ok(
            LINKS,
            format!(
                "{cluster}'s clock agrees with this gateway's ({:+.0} ms)",
                link.clock_skew_ms
            ),
        );
    }
    const POLICIES: &str = "strait-policies";
    if link.policy_digest == status.policy_digest {
        report.ok(
            POLICIES,
            format!(
                "policies in sync with {cluster} ({} policies)",
                status.policies
            ),
        );
    } else if status.policies_age_ms < CONVERGING_MS || link.digest_age_ms < CONVERGING_MS {
        report.warn(
            POLICIES,
            format!(
                "policies differ from {cluster}'s ({} here, {} there), changed moments ago",
                status.policies, link.policies
            ),
            "still converging: check again in a few seconds",
        );
    } else {
        report.fail(
            POLICIES,
            format!(
                "policies differ from {cluster}'s ({} here, {} there)",
                status.policies, link.policies
            ),
            format!(
                "compare `strait --context {} get policies` with {cluster}'s; the gateways' logs \
                 name policies they refused",
                status.cluster
            ),
        );
    }
}

fn dns(status: &StatusResponse, report: &mut Report) {
    const DNS: &str = "strait-dns";
    if status.dns_address.is_empty() {
        report.warn(
            DNS,
            "the gateway serves no DNS for the clusterset zone",
            "set dns.addr in gateway.yaml to answer <svc>.<ns>.svc.clusterset.local",
        );
        return;
    }
    // Asked by the gateway itself, where its DNS port is surely reachable (a workstation may
    // not reach a pod's, and port-forwarding carries no UDP).
    match status.dns_rcode {
        0 => report.ok(
            DNS,
            format!("the clusterset zone is answered at {}", status.dns_address),
        ),
        rcode if rcode > 0 => report.fail(
            DNS,
            format!(
                "the DNS server at {} answered rcode {rcode} for the zone's SOA",
                status.dns_address
            ),
            "look at the gateway's logs and dns.zone in gateway.yaml",
        ),
        _ => report.fail(
            DNS,
            format!(
                "the DNS server at {} answers: {}",
                status.dns_address, status.dns_error
            ),
            "the gateway could not ask its own DNS server: look at its logs",
        ),
    }
}

//! Gateways as separate processes on loopback, linked with the CLI: catalogs federate, follow
//! changes, survive restarts and refuse bad links and bad peers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use strait_tests::{Mesh, NO_WEST_TO_API, metric, service, wait_for};

const FAST: Option<&str> =
    Some("  keepaliveMs: 500\n  idleTimeoutMs: 3000\n  gracePeriodMs: 2000\n  maxBackoffMs: 500");

fn connected(mesh: &Mesh, cluster: &str, peer: &str) -> Result<()> {
    wait_for(
        Duration::from_secs(10),
        &format!("{cluster}'s link with {peer} connected"),
        || Ok((mesh.link_state(cluster, peer)? == "connected").then_some(())),
    )
}

fn services_json(mesh: &Mesh, cluster: &str) -> Result<String> {
    mesh.ctl(cluster, &["get", "services", "-o", "json"])
        .success()
}

#[test]
fn an_exported_service_reaches_a_linked_cluster_within_two_seconds_and_follows_changes()
-> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", None)?;
    let mut east = mesh.start("east", None)?;
    mesh.link("east", "west")?;
    connected(&mesh, "east", "west")?;
    connected(&mesh, "west", "east")?;

    let started = Instant::now();
    let documents = format!(
        "{}---\n{}",
        service("shop", "api", true, 8080),
        service("shop", "ledger", false, 5432)
    );
    mesh.apply("west", "services.yaml", &documents).success()?;
    wait_for(
        Duration::from_secs(2),
        "shop/api served from west in east's catalog",
        || Ok((mesh.served_from("east", "shop/api")? == ["west"]).then_some(())),
    )?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(2), "took {took:?}");
    ensure!(
        mesh.served_from("east", "shop/ledger")?.is_empty(),
        "an unexported service left west"
    );

    // An update propagates.
    mesh.apply("west", "api-v2.yaml", &service("shop", "api", true, 9090))
        .success()?;
    wait_for(Duration::from_secs(10), "the new port in east", || {
        Ok(services_json(&mesh, "east")?
            .contains("9090/http")
            .then_some(()))
    })?;

    // The other direction works on the same connection.
    mesh.apply("east", "web.yaml", &service("shop", "web", true, 80))
        .success()?;
    mesh.wait_served("west", "shop/web", &["east"], Duration::from_secs(10))?;

    // A removal propagates; the unexported service never left.
    mesh.ctl("west", &["delete", "service", "api", "-n", "shop"])
        .success()?;
    mesh.wait_served("east", "shop/api", &[], Duration::from_secs(10))?;
    ensure!(mesh.served_from("east", "shop/ledger")?.is_empty());
    ensure!(mesh.served_from("west", "shop/ledger")? == ["west"]);

    let metrics = east.metrics()?;
    ensure!(
        metric(
            &metrics,
            "strait_peer_state",
            &["peer=\"west\"", "state=\"connected\""]
        ) == Some(1.0),
        "{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            "strait_catalog_services",
            &["source_cluster=\"east\""]
        ) == Some(1.0),
        "{metrics}"
    );
    ensure!(
        metric(&metrics, "strait_peer_rtt_seconds", &["peer=\"west\""])
            .is_some_and(|rtt| rtt > 0.0)
    );
    // The connection's packets and congestion state, as an operator reads a link's health.
    let series = |name, labels: &[&str]| metric(&metrics, name, labels);
    let sent = series(
        "strait_peer_packets",
        &["peer=\"west\"", "outcome=\"sent\""],
    );
    let lost = series(
        "strait_peer_packets",
        &["peer=\"west\"", "outcome=\"lost\""],
    );
    ensure!(
        sent.is_some_and(|sent| sent > 0.0) && lost.is_some_and(|lost| lost <= sent.unwrap_or(0.0)),
        "packets sent {sent:?}, lost {lost:?}: {metrics}"
    );
    ensure!(
        series("strait_peer_congestion_window_bytes", &["peer=\"west\""])
            .is_some_and(|window| window >= 2.0 * 1200.0),
        "{metrics}"
    );
    ensure!(
        series("strait_peer_congestion_events", &["peer=\"west\""]).is_some(),
        "{metrics}"
    );
    // Loopback carries any datagram: path MTU discovery grows packets past Ethernet's 1452
    // bytes, up to the default `peering.maxUdpPayload` and no further.
    wait_for(
        Duration::from_secs(10),
        "east's path MTU towards west past 1452 bytes",
        || {
            let mtu = metric(
                &east.metrics()?,
                "strait_peer_path_mtu_bytes",
                &["peer=\"west\""],
            );
            ensure!(
                mtu.is_none_or(|mtu| mtu <= 8952.0),
                "path MTU {mtu:?} over the bound"
            );
            Ok(mtu.is_some_and(|mtu| mtu > 1452.0).then_some(()))
        },
    )?;
    ensure!(
        metric(
            &metrics,
            "strait_peer_sync_lag_versions",
            &["peer=\"west\""]
        )
        .is_some(),
        "{metrics}"
    );

    east.stop()?;
    west.stop()?;
    Ok(())
}

/// A service with `endpoints` endpoints in one flow-style document.
fn wide_service(namespace: &str, name: &str, endpoints: usize, subnet: u8) -> String {
    let list: Vec<String> = (0..endpoints)
        .map(|i| format!("{{address: 10.{subnet}.{}.{}:8080}}", i / 250, i % 250 + 1))
        .collect();
    format!(
        "kind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  export: true\n  ports: [{{name: http, port: 8080, protocol: http}}]\n  endpoints: [{}]\n",
        list.join(", ")
    )
}

#[test]
fn two_clusters_exchanging_catalogs_larger_than_a_stream_window_both_converge() -> Result<()> {
    // Each side's snapshot (about 2.4 MB on the wire) exceeds what a QUIC stream accepts
    // unread (about 1.25 MB): a gateway that wrote its whole snapshot before reading would
    // wait forever on a peer doing the same.
    let mesh = Mesh::new()?;
    let _west = mesh.start("west", None)?;
    let _east = mesh.start("east", None)?;
    for (cluster, subnet) in [("west", 1), ("east", 2)] {
        let documents: Vec<String> = (0..100)
            .map(|i| wide_service(cluster, &format!("svc-{i}"), 1200, subnet))
            .collect();
        mesh.apply(cluster, "wide.yaml", &documents.join("---\n"))
            .success()?;
    }
    mesh.link("east", "west")?;
    for (cluster, peer) in [("east", "west"), ("west", "east")] {
        wait_for(
            Duration::from_secs(30),
            &format!("{cluster} holds {peer}'s 100 services"),
            || {
                let imported = mesh
                    .services(cluster)?
                    .into_iter()
                    .filter(|(name, clusters)| {
                        name.starts_with(&format!("{peer}/")) && clusters == &[peer]
                    })
                    .count();
                Ok((imported == 100).then_some(()))
            },
        )?;
    }
    Ok(())
}

#[test]
fn three_linked_clusters_see_one_service_served_from_two_of_them() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut gateways = Vec::new();
    for cluster in ["west", "north", "east"] {
        let mut gateway = mesh.gateway(cluster, None)?;
        gateway.start(&mesh)?;
        gateways.push(gateway);
    }
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.apply("north", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.apply(
        "north",
        "search.yaml",
        &service("shop", "search", true, 8080),
    )
    .success()?;
    mesh.link("east", "west")?;
    mesh.link("east", "north")?;
    mesh.link("north", "west")?;
    mesh.wait_served(
        "east",
        "shop/api",
        &["north", "west"],
        Duration::from_secs(10),
    )?;
    wait_for(
        Duration::from_secs(10),
        "shop/api local first in west",
        || Ok((mesh.served_from("west", "shop/api")? == ["west", "north"]).then_some(())),
    )?;
    mesh.wait_served("west", "shop/search", &["north"], Duration::from_secs(10))?;
    ensure!(
        mesh.services("east")?
            .iter()
            .filter(|(n, _)| n == "shop/api")
            .count()
            == 1
    );
    for gateway in &mut gateways {
        gateway.stop()?;
    }
    Ok(())
}

#[test]
fn a_restarted_gateway_resumes_from_its_acknowledged_version_and_converges() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", FAST)?;
    let mut east = mesh.start("east", FAST)?;
    let documents: Vec<String> = (0..20)
        .map(|i| service("shop", &format!("svc-{i}"), true, 8000 + i))
        .collect();
    mesh.apply("west", "many.yaml", &documents.join("---\n"))
        .success()?;
    mesh.link("east", "west")?;
    wait_for(Duration::from_secs(10), "20 services in east", || {
        Ok((mesh.services("east")?.len() == 20).then_some(()))
    })?;

    // The importer goes down; the exporter changes meanwhile.
    east.stop()?;
    mesh.apply("west", "new.yaml", &service("shop", "svc-new", true, 7000))
        .success()?;
    mesh.apply("west", "svc-1.yaml", &service("shop", "svc-1", true, 7001))
        .success()?;
    mesh.ctl("west", &["delete", "service", "svc-0", "-n", "shop"])
        .success()?;
    east.start(&mesh)?;
    wait_for(
        Duration::from_secs(10),
        "east converged after its restart",
        || {
            let json = services_json(&mesh, "east")?;
            Ok((json.contains("svc-new")
                && !json.contains("\"svc-0\"")
                && json.contains("7001/http"))
            .then_some(()))
        },
    )
    .with_context(|| format!("{}\n{}", east.log_tail(), west.log_tail()))?;
    let metrics = east.metrics()?;
    ensure!(
        metric(
            &metrics,
            "strait_peer_updates_received_total",
            &["peer=\"west\"", "kind=\"delta\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "east resumed with a delta:\n{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            "strait_peer_updates_received_total",
            &["peer=\"west\"", "kind=\"snapshot\""]
        )
        .is_none(),
        "east was sent a snapshot instead of resuming:\n{metrics}"
    );

    // The exporter restarts too: its export log (and epoch) survive, so east still gets deltas.
    west.stop()?;
    west.start(&mesh)?;
    mesh.apply(
        "west",
        "after.yaml",
        &service("shop", "svc-after", true, 7002),
    )
    .success()?;
    mesh.wait_served("east", "shop/svc-after", &["west"], Duration::from_secs(10))?;
    let metrics = east.metrics()?;
    ensure!(
        metric(
            &metrics,
            "strait_peer_updates_received_total",
            &["peer=\"west\"", "kind=\"snapshot\""]
        )
        .is_none(),
        "a restarted exporter forced a snapshot:\n{metrics}"
    );
    ensure!(
        mesh.services("east")?.len() == 21,
        "{:?}",
        mesh.services("east")?
    );

    // A crash: the exporter may have sent versions it never wrote. It starts a new epoch, so
    // east gets one snapshot and is exact again.
    mesh.apply(
        "west",
        "late.yaml",
        &service("shop", "svc-late", true, 7003),
    )
    .success()?;
    west.kill()?;
    west.start(&mesh)?;
    mesh.ctl("west", &["delete", "service", "svc-2", "-n", "shop"])
        .success()?;
    mesh.wait_served("east", "shop/svc-2", &[], Duration::from_secs(10))?;
    mesh.wait_served("east", "shop/svc-late", &["west"], Duration::from_secs(10))?;
    let metrics = east.metrics()?;
    ensure!(
        metric(
            &metrics,
            "strait_peer_updates_received_total",
            &["peer=\"west\"", "kind=\"snapshot\""]
        ) == Some(1.0),
        "a crashed exporter must resynchronize its peers once:\n{metrics}"
    );
    ensure!(
        mesh.services("east")?.len() == 21,
        "{:?}",
        mesh.services("east")?
    );
    Ok(())
}

#[test]
fn a_lost_peers_services_are_withdrawn_after_the_grace_period_and_return_with_it() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", FAST)?;
    let _east = mesh.start("east", FAST)?;
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.link("east", "west")?;
    mesh.wait_served("east", "shop/api", &["west"], Duration::from_secs(10))?;
    west.kill()?;
    let lost = Instant::now();
    // Within the grace period the services stay (fail static).
    ensure!(mesh.served_from("east", "shop/api")? == ["west"]);
    mesh.wait_served("east", "shop/api", &[], Duration::from_secs(15))?;
    ensure!(
        lost.elapsed() >= Duration::from_millis(2000),
        "withdrawn before the grace period"
    );
    ensure!(mesh.link_state("east", "west")? != "connected");
    west.start(&mesh)?;
    mesh.wait_served("east", "shop/api", &["west"], Duration::from_secs(15))?;
    Ok(())
}

#[test]
fn unlink_removes_the_peering_and_its_services_on_both_sides() -> Result<()> {
    let mesh = Mesh::new()?;
    let _west = mesh.start("west", None)?;
    let _east = mesh.start("east", None)?;
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.apply("east", "web.yaml", &service("shop", "web", true, 8080))
        .success()?;
    let document = mesh.ctl("west", &["link"]).success()?;
    mesh.apply("east", "link.yaml", &document).success()?;
    wait_for(Duration::from_secs(10), "catalogs exchanged", || {
        Ok((mesh.served_from("east", "shop/api")? == ["west"]
            && mesh.served_from("west", "shop/web")? == ["east"])
        .then_some(()))
    })?;
    // The same document again changes nothing and keeps the connection.
    let again = mesh.apply("east", "link.yaml", &document).success()?;
    ensure!(again.contains("link/west unchanged"), "{again}");
    ensure!(mesh.link_state("east", "west")? == "connected");
    mesh.ctl("east", &["unlink", "west"]).success()?;
    ensure!(mesh.link_state("east", "west")?.is_empty());
    ensure!(mesh.served_from("east", "shop/api")?.is_empty());
    wait_for(Duration::from_secs(10), "west forgot east", || {
        Ok((mesh.link_state("west", "east")?.is_empty()
            && mesh.served_from("west", "shop/web")?.is_empty())
        .then_some(()))
    })?;
    // The token was revoked with the link.
    let again = mesh.apply("east", "link.yaml", &document);
    ensure!(
        !again.ok && again.stderr.contains("revoked"),
        "{}",
        again.stderr
    );
    ensure!(
        !mesh.ctl("east", &["unlink", "west"]).ok,
        "unlinking twice says there is no link"
    );
    Ok(())
}

/// Replaces the claims part of a JWT in a Link document with different bytes.
fn tamper(document: &str) -> String {
    document
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("eyJ") || trimmed.starts_with("token: eyJ") {
                let mut parts: Vec<String> = line.split('.').map(str::to_owned).collect();
                if parts.len() == 3 {
                    // Flip one character of the claims (still valid base64url).
                    let claims = &mut parts[1];
                    let last = claims.pop().unwrap_or('A');
                    claims.push(if last == 'A' { 'B' } else { 'A' });
                }
                parts.join(".")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn link_refusals_say_which_rule_was_broken() -> Result<()> {
    let mesh = Mesh::new()?;
    let other_trust = mesh.dir.path().join("other-trust");
    mesh.cli(
        &["trust", "init", "--trust-domain", "example.mesh", "--dir"],
        &[&other_trust],
    )
    .success()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    let mut north = mesh.gateway("north", None)?;
    let mut south = mesh.gateway_under("south", &other_trust, None)?;
    for gateway in [&mut west, &mut east, &mut north, &mut south] {
        gateway.start(&mesh)?;
    }
    let refused = |cluster: &str, name: &str, document: &str, expected: &str| -> Result<()> {
        let out = mesh.apply(cluster, name, document);
        ensure!(!out.ok, "{name} on {cluster} was accepted");
        ensure!(
            out.stderr.contains(expected),
            "{name} on {cluster}: expected {expected:?} in {:?}",
            out.stderr
        );
        ensure!(
            mesh.link_state(cluster, "west")?.is_empty(),
            "a refused link was kept on {cluster}"
        );
        Ok(())
    };
    let document = mesh.ctl("west", &["link"]).success()?;

    // A cluster under another root: caught by the fingerprint before dialing...
    refused(
        "south",
        "other-root.yaml",
        &document,
        "is not in this cluster's trust bundle",
    )?;
    // ...and by TLS when the document claims the other root's fingerprint.
    let south_root = strait_io::pki::read_bundle(
        &other_trust.join("bundle.pem"),
        strait_federation::identity::TrustDomain::new("example.mesh")?,
    )?
    .fingerprints()
    .remove(0);
    let west_root = strait_io::pki::read_bundle(
        &mesh.trust.join("bundle.pem"),
        strait_federation::identity::TrustDomain::new("example.mesh")?,
    )?
    .fingerprints()
    .remove(0);
    refused(
        "south",
        "forged-root.yaml",
        &document.replace(&west_root, &south_root),
        "TLS handshake",
    )?;

    refused("east", "tampered.yaml", &tamper(&document), "tampered")?;
    refused("west", "self.yaml", &document, "cannot link to itself")?;

    let short = mesh.ctl("west", &["link", "--ttl", "1s"]).success()?;
    // What is awaited here is the passage of time itself: the token's expiry (one second after
    // minting, in whole seconds) must be behind us before it is presented.
    std::thread::sleep(Duration::from_millis(1100));
    refused("east", "expired.yaml", &short, "expired at")?;

    // First use binds the token to east; north replaying it is refused.
    mesh.apply("east", "link.yaml", &document).success()?;
    connected(&mesh, "east", "west")?;
    refused(
        "north",
        "replayed.yaml",
        &document,
        "already redeemed by cluster east",
    )?;

    // The refusals are counted where they were decided.
    let metrics = west.metrics()?;
    for code in ["token_invalid", "token_expired", "token_replayed"] {
        ensure!(
            metric(
                &metrics,
                "strait_link_refusals_total",
                &[&format!("reason=\"{code}\"")]
            ) == Some(1.0),
            "{code}:\n{metrics}"
        );
    }
    Ok(())
}

#[test]
fn a_bad_document_is_refused_with_file_document_and_field_and_nothing_is_applied() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", None)?;
    let documents = format!(
        "{}---\n{}",
        service("shop", "api", true, 8080),
        service("shop", "web", true, 0)
    );
    let out = mesh.apply("west", "two.yaml", &documents);
    ensure!(!out.ok);
    ensure!(
        out.stderr
            .contains("two.yaml: document 2 (Service shop/web): spec.ports[0].port"),
        "{}",
        out.stderr
    );
    ensure!(
        mesh.services("west")?.is_empty(),
        "the good half of a refused file was applied"
    );
    // What was accepted survives a restart.
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    west.stop()?;
    west.start(&mesh)?;
    ensure!(mesh.served_from("west", "shop/api")? == ["west"]);
    Ok(())
}

#[test]
fn an_unlink_between_two_dials_still_reaches_the_peer() -> Result<()> {
    // West restarts; east is waiting to redial (backoff) when it is unlinked. Whether east's
    // next dial or a dedicated notice carries it, west must forget east.
    let backoff = Some(
        "  keepaliveMs: 500\n  idleTimeoutMs: 3000\n  gracePeriodMs: 30000\n  maxBackoffMs: 4000",
    );
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", backoff)?;
    let east = mesh.start("east", backoff)?;
    mesh.apply("east", "web.yaml", &service("shop", "web", true, 8080))
        .success()?;
    mesh.link("east", "west")?;
    mesh.wait_served("west", "shop/web", &["east"], Duration::from_secs(10))?;
    west.stop()?;
    // East is between dials (one failed already) when west returns and east is unlinked: the
    // news reaches west through east's next dial or a dedicated notice, whichever comes first.
    wait_for(Duration::from_secs(15), "a failed dial of east", || {
        let failed = metric(
            &east.metrics()?,
            "strait_peer_dials_total",
            &["peer=\"west\"", "outcome=\"failed\""],
        );
        Ok((failed.unwrap_or(0.0) >= 1.0).then_some(()))
    })?;
    west.start(&mesh)?;
    mesh.ctl("east", &["unlink", "west"]).success()?;
    wait_for(Duration::from_secs(15), "west forgot east", || {
        Ok((mesh.link_state("west", "east")?.is_empty()
            && mesh.served_from("west", "shop/web")?.is_empty())
        .then_some(()))
    })
    .with_context(|| west.log_tail())?;
    Ok(())
}

/// The tombstones a gateway holds, from its metrics.
fn tombstones(gateway: &strait_tests::Gateway) -> Result<f64> {
    let text = strait_tests::http_get_host(gateway.admin, "localhost", "/metrics")?.1;
    metric(&text, "strait_policy_tombstones", &[]).context("no strait_policy_tombstones gauge")
}

/// The names of the policies a cluster lists.
fn policy_names(mesh: &Mesh, cluster: &str) -> Result<Vec<String>> {
    let text = mesh
        .ctl(cluster, &["get", "policies", "-o", "json"])
        .success()?;
    let list: serde_json::Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

/// With a short retention, a deleted policy's tombstone leaves both gateways once it is past
/// it; the gateway that restarts brings nothing back, and the name can be applied again.
#[test]
fn a_deleted_policys_tombstone_goes_after_its_retention_and_nothing_comes_back() -> Result<()> {
    const RETENTION: Option<&str> =
        Some("  keepaliveMs: 500\n  idleTimeoutMs: 3000\n  tombstoneRetentionMs: 6000");
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", RETENTION)?;
    let east = mesh.start("east", RETENTION)?;
    mesh.link("east", "west")?;
    connected(&mesh, "east", "west")?;
    connected(&mesh, "west", "east")?;
    let west_holds = |wanted: bool| {
        wait_for(
            Duration::from_secs(5),
            &format!("west holding the policy: {wanted}"),
            || {
                let held = policy_names(&mesh, "west")?
                    .iter()
                    .any(|n| n == "no-west-to-api");
                Ok((held == wanted).then_some(()))
            },
        )
    };
    mesh.apply("east", "deny.yaml", NO_WEST_TO_API).success()?;
    west_holds(true)?;

    let path = mesh.file("deny.yaml", NO_WEST_TO_API)?;
    mesh.cli(&["--context", "east", "delete", "-f"], &[&path])
        .success()?;
    let deleted = Instant::now();
    ensure!(
        tombstones(&east)? == 1.0,
        "east holds no tombstone after the delete"
    );
    west_holds(false)?;
    ensure!(
        tombstones(&west)? == 1.0,
        "west holds no tombstone after the delete"
    );
    wait_for(Duration::from_secs(12), "no tombstone left", || {
        Ok((tombstones(&east)? == 0.0 && tombstones(&west)? == 0.0).then_some(()))
    })?;
    let took = deleted.elapsed();
    println!("tombstones gone from both gateways {took:?} after the delete");
    ensure!(
        took >= Duration::from_millis(5_500),
        "dropped after {took:?}, before the 6 s retention"
    );

    // West restarts from its state file: the policy stays deleted in both clusters.
    west.stop()?;
    west.start(&mesh)?;
    connected(&mesh, "west", "east")?;
    connected(&mesh, "east", "west")?;
    // A policy applied in east after the reconnection reaches west behind whatever the new
    // session's exchange sent: once it is there, a policy brought back would be too.
    let marker = NO_WEST_TO_API.replace("no-west-to-api", "marker");
    mesh.apply("east", "marker.yaml", &marker).success()?;
    wait_for(Duration::from_secs(5), "the marker in west", || {
        Ok(policy_names(&mesh, "west")?
            .contains(&"marker".to_owned())
            .then_some(()))
    })?;
    for cluster in ["east", "west"] {
        let names = policy_names(&mesh, cluster)?;
        ensure!(names == ["marker"], "{cluster} lists {names:?}");
    }
    ensure!(tombstones(&east)? == 0.0 && tombstones(&west)? == 0.0);

    // The name is free to apply again, and reaches west.
    let again = mesh.apply("east", "deny.yaml", NO_WEST_TO_API).success()?;
    ensure!(again.contains("created"), "{again}");
    west_holds(true)?;
    Ok(())
}

#[test]
fn a_context_added_from_a_clusters_credentials_operates_a_gateway_set_up_elsewhere() -> Result<()> {
    let mesh = Mesh::new()?;
    let west = mesh.start("west", None)?;
    let east = mesh.start("east", None)?;
    // As after a Helm install: the credentials folder `strait trust issue` wrote, and the
    // gateway's API at some address; no `gateway init` context.
    let credentials = west.dir.to_string_lossy().into_owned();
    let api = west.api.to_string();
    let added = mesh
        .cli(
            &[
                "context",
                "add",
                "west-ops",
                "--credentials",
                &credentials,
                "--gateway",
                &api,
            ],
            &[],
        )
        .success()?;
    ensure!(
        added.contains("context west-ops (cluster west) added"),
        "{added}"
    );
    let listed = mesh.cli(&["context", "list"], &[]).success()?;
    ensure!(
        listed
            .lines()
            .any(|l| l.contains("west-ops") && l.contains(&api)),
        "{listed}"
    );
    let links = mesh
        .cli(
            &["--context", "west-ops", "get", "links", "-o", "json"],
            &[],
        )
        .success()?;
    ensure!(links.contains("\"items\""), "{links}");
    // Its `link` document joins east to west.
    let document = mesh
        .cli(&["--context", "west-ops", "link"], &[])
        .success()?;
    let file = mesh.file("west-link.yaml", &document)?;
    mesh.cli(
        &["--context", "east", "apply", "-f", &file.to_string_lossy()],
        &[],
    )
    .success()?;
    connected(&mesh, "east", "west")?;
    // A folder without an issuer is refused, naming what is missing.
    let refused = mesh.cli(
        &[
            "context",
            "add",
            "bad",
            "--credentials",
            &mesh.trust.to_string_lossy(),
            "--gateway",
            &api,
        ],
        &[],
    );
    ensure!(
        !refused.ok && refused.stderr.contains("issuer.crt"),
        "{}",
        refused.stderr
    );
    drop((west, east));
    Ok(())
}

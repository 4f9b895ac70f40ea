//! Seeing the whole federation: `strait check` on a healthy mesh and on each thing that breaks
//! (a stopped peer, an expired link, a skewed clock, policies out of sync), and `strait stat
//! --all-clusters` showing from one cluster what only another cluster's sidecars saw, marked
//! stale once that cluster goes quiet; a cross-cluster request's trace through four hops, and
//! access logs where they are switched on.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use serde_json::Value;
use strait_federation::proto::peer::peer_frame::Body;
use strait_federation::proto::peer::{Health, KeepAlive, PeerFrame};
use strait_tests::otlp::Collector;
use strait_tests::rogue::RoguePeer;
use strait_tests::workloads::{
    api, client, endpoint, get, linked_pair, wait_connected, wait_route,
};
use strait_tests::{Mesh, http_get_host, wait_for};

/// `strait --context CLUSTER check -o json`: the exit status and the checks.
fn check(mesh: &Mesh, cluster: &str) -> Result<(bool, Vec<Value>)> {
    let output = mesh.ctl(cluster, &["check", "-o", "json"]);
    let value: Value = serde_json::from_str(&output.stdout)
        .map_err(|e| anyhow!("check -o json printed no JSON ({e}): {output:?}"))?;
    let checks = value["checks"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("no checks in {value}"))?;
    Ok((output.ok, checks))
}

/// The first check whose description contains `text`, with its status.
fn find<'a>(checks: &'a [Value], text: &str) -> Option<(&'a str, &'a Value)> {
    checks
        .iter()
        .find(|c| c["description"].as_str().is_some_and(|d| d.contains(text)))
        .map(|c| (c["status"].as_str().unwrap_or(""), c))
}

#[test]
fn check_is_all_ok_on_a_healthy_mesh_and_fails_for_a_stopped_peer() -> Result<()> {
    let (mesh, _east, mut west) = linked_pair(None)?;
    // Every check passes once each side heard the other's health.
    let checks = wait_for(Duration::from_secs(15), "every check ok", || {
        let (ok, checks) = check(&mesh, "east")?;
        let all_ok = checks.iter().all(|c| c["status"] == "ok");
        Ok((ok && all_ok).then_some(checks))
    })?;
    for expected in [
        "the gateway is ready",
        "chains to the bundle",
        "the link to west is connected",
        "west's clock agrees",
        "policies in sync with west",
        "the clusterset zone is answered",
    ] {
        ensure!(
            find(&checks, expected).is_some(),
            "no check says {expected:?}: {checks:#?}"
        );
    }
    // The table has one [ok] line per check, and says so at the end.
    let table = mesh.ctl("east", &["check"]).success()?;
    let oks = table.lines().filter(|l| l.starts_with("[ok] ")).count();
    ensure!(
        oks == checks.len(),
        "{oks} [ok] lines for {} checks:\n{table}",
        checks.len()
    );
    ensure!(table.contains("Status check results are [ok]"), "{table}");

    west.stop()?;
    let (ok, checks) = wait_for(Duration::from_secs(15), "the stopped peer failing", || {
        let (ok, checks) = check(&mesh, "east")?;
        Ok(find(&checks, "the link to west is")
            .filter(|(status, _)| *status == "fail")
            .map(|_| (ok, checks.clone())))
    })?;
    ensure!(!ok, "check exited 0 with a failed link: {checks:#?}");
    let (_, failed) =
        find(&checks, "the link to west is").ok_or_else(|| anyhow!("no link check"))?;
    let hint = failed["hint"].as_str().unwrap_or("");
    ensure!(hint.contains("west's gateway running"), "{failed}");
    let table = mesh.ctl("east", &["check"]);
    ensure!(!table.ok, "the table run exited 0: {table:?}");
    ensure!(
        table.stdout.contains("[fail] the link to west is"),
        "{table:?}"
    );
    Ok(())
}

#[test]
fn check_fails_for_a_link_whose_token_expired_before_its_first_use() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", None)?;
    let _east = mesh.start("east", None)?;
    let document = mesh.ctl("west", &["link", "--ttl", "3s"]).success()?;
    let minted = Instant::now();
    // West is away when east takes the Link: east keeps it and retries, and by the time west
    // is back the token has expired.
    west.stop()?;
    let applied = mesh.apply("east", "late-link.yaml", &document).success()?;
    ensure!(applied.contains("not connected yet"), "{applied}");
    std::thread::sleep(Duration::from_secs(4).saturating_sub(minted.elapsed()));
    west.start(&mesh)?;
    let (ok, checks) = wait_for(Duration::from_secs(20), "the refused link", || {
        let (ok, checks) = check(&mesh, "east")?;
        Ok(find(&checks, "the link to west is refused").map(|_| (ok, checks.clone())))
    })?;
    ensure!(!ok, "check exited 0: {checks:#?}");
    let (status, failed) =
        find(&checks, "the link to west is refused").ok_or_else(|| anyhow!("no link check"))?;
    ensure!(status == "fail", "{failed}");
    ensure!(
        failed["description"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{failed}"
    );
    let hint = failed["hint"].as_str().unwrap_or("");
    ensure!(hint.contains("strait --context west link"), "{failed}");
    Ok(())
}

#[test]
fn check_warns_of_a_skewed_clock_and_fails_when_policies_stay_apart() -> Result<()> {
    let mesh = Mesh::new()?;
    let west = mesh.start("west", None)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut rogue = RoguePeer::join(&mesh, "west", west.quic).await?;
        // A peer whose clock runs 5 s ahead and which holds one policy west does not.
        let health = |now_ms: u64| PeerFrame {
            body: Some(Body::Health(Health {
                sent_unix_ms: now_ms + 5_000,
                policy_digest: vec![7; 32],
                policies: 1,
            })),
        };
        let since = Instant::now();
        let mut warned = false;
        let failed = loop {
            ensure!(
                since.elapsed() < Duration::from_secs(40),
                "policies that stay apart never failed the check"
            );
            rogue.send(&health(strait_io::clock::unix_now_ms())).await?;
            rogue
                .send(&PeerFrame {
                    body: Some(Body::KeepAlive(KeepAlive {})),
                })
                .await?;
            let (ok, checks) = check(&mesh, "west")?;
            if let Some((status, skew)) = find(&checks, "'s clock is") {
                ensure!(status == "warn", "{skew}");
                ensure!(
                    skew["description"]
                        .as_str()
                        .unwrap_or("")
                        .contains("rogue's clock is +5"),
                    "{skew}"
                );
                let hint = skew["hint"].as_str().unwrap_or("");
                ensure!(hint.contains("NTP"), "{skew}");
                warned = true;
            }
            match find(&checks, "policies differ from rogue's") {
                // Moments after the peer said so: still converging.
                Some(("warn", _)) => ensure!(ok, "a warning alone failed the check"),
                Some(("fail", failed)) => {
                    ensure!(!ok, "check exited 0 with policies apart");
                    break failed.clone();
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        ensure!(warned, "the skewed clock was never warned about");
        ensure!(
            failed["description"]
                .as_str()
                .unwrap_or("")
                .contains("(0 here, 1 there)"),
            "{failed}"
        );
        rogue.endpoint.close(0u32.into(), b"done");
        Ok(())
    })
}

/// Rows of `strait --context CLUSTER stat services [--all-clusters] -o json` for shop/api
/// from `source` to `destination`.
fn api_rows(
    mesh: &Mesh,
    cluster: &str,
    all: bool,
    source: &str,
    destination: &str,
) -> Result<Vec<Value>> {
    let mut args = vec!["stat", "services", "-o", "json"];
    if all {
        args.push("--all-clusters");
    }
    let text = mesh.ctl(cluster, &args).success()?;
    let value: Value = serde_json::from_str(&text)?;
    Ok(value["items"]
        .as_array()
        .ok_or_else(|| anyhow!("no items in {text}"))?
        .iter()
        .filter(|r| {
            r["namespace"] == "shop"
                && r["service"] == "api"
                && r["source_cluster"] == source
                && r["destination_cluster"] == destination
        })
        .cloned()
        .collect())
}

#[test]
fn stat_from_east_shows_what_only_wests_sidecars_saw_and_marks_it_stale_when_west_stops()
-> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    for gateway in [&west, &east] {
        gateway.set_section("metrics", "  intervalMs: 1000\n  staleAfterMs: 3000")?;
    }
    west.start(&mesh)?;
    east.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_connected(&mesh, "east", "west")?;
    // Traffic inside west only: west's client calls west's api.
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "west", &[])?;
    let proxy = web.addr("proxy")?;
    let sent = 40;
    for _ in 0..sent {
        let (status, body) = http_get_host(proxy, "api.shop", "/")?;
        ensure!(status == 200, "{status}: {body}");
    }
    let started = Instant::now();
    let row = wait_for(Duration::from_secs(15), "west's figures in east", || {
        let rows = api_rows(&mesh, "east", true, "west", "west")?;
        Ok(rows
            .into_iter()
            .find(|r| r["requests"].as_u64() == Some(sent)))
    })?;
    println!(
        "west → west figures reached east {:?} after the last request",
        started.elapsed()
    );
    ensure!(row["stale"] == false, "{row}");
    ensure!(row["success_rate"] == 1.0, "{row}");
    ensure!(row["rps"].as_f64().is_some_and(|r| r > 0.0), "{row}");
    let latency = &row["latency_ms"];
    ensure!(
        latency["p50"].as_f64() <= latency["p95"].as_f64()
            && latency["p95"].as_f64() <= latency["p99"].as_f64()
            && latency["p99"].as_f64().is_some_and(|p| p > 0.0),
        "{row}"
    );
    // Without --all-clusters east shows only what its own sidecars saw: nothing of west's.
    ensure!(api_rows(&mesh, "east", false, "west", "west")?.is_empty());
    // West itself shows the same figures as its own.
    let own = api_rows(&mesh, "west", false, "west", "west")?;
    ensure!(
        own.first().and_then(|r| r["requests"].as_u64()) == Some(sent),
        "{own:?}"
    );

    west.stop()?;
    let stale = wait_for(
        Duration::from_secs(15),
        "west's figures stale in east",
        || {
            let rows = api_rows(&mesh, "east", true, "west", "west")?;
            Ok(rows.into_iter().find(|r| r["stale"] == true))
        },
    )?;
    // The last figures, not decayed ones.
    ensure!(stale["requests"].as_u64() == Some(sent), "{stale}");
    let table = mesh
        .ctl("east", &["stat", "services", "--all-clusters"])
        .success()?;
    ensure!(table.contains("(stale)"), "{table}");
    Ok(())
}

#[test]
fn a_cross_cluster_request_is_one_trace_of_four_spans_each_the_child_of_the_hop_before()
-> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let collector = Collector::start(&runtime)?;
    let (address, received) = (collector.address, collector.received.clone());
    let mesh = Mesh::new()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    for gateway in [&west, &east] {
        gateway.set_section(
            "telemetry",
            &format!("  collector: http://{address}\n  samplingPercent: 100"),
        )?;
    }
    west.start(&mesh)?;
    east.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_connected(&mesh, "east", "west")?;
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;
    // A request that comes with a trace of its own continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let answer = get(
        proxy,
        "api.shop",
        "/",
        &[(
            "traceparent",
            &format!("00-{caller_trace}-{caller_span}-01"),
        )],
    )?;
    ensure!(answer.status == 200, "{}", answer.status);
    let trace_id = strait_federation::trace::TraceContext::parse(format!(
        "00-{caller_trace}-{caller_span}-01"
    ))
    .ok_or_else(|| anyhow!("a valid traceparent"))?
    .trace_id;
    let spans = wait_for(Duration::from_secs(15), "four spans of the trace", || {
        let held = received.lock().unwrap_or_else(|p| p.into_inner());
        let spans: Vec<_> = held
            .iter()
            .filter(|(_, _, span)| span.trace_id == trace_id)
            .cloned()
            .collect();
        Ok((spans.len() >= 4).then_some(spans))
    })?;
    ensure!(spans.len() == 4, "more than four spans: {spans:#?}");
    let find_span = |service: &str, cluster: &str, kind: i32| {
        spans
            .iter()
            .find(|(s, c, span)| s == service && c == cluster && span.kind == kind)
            .map(|(_, _, span)| span.clone())
            .ok_or_else(|| anyhow!("no {service} span of {cluster} (kind {kind}) in {spans:#?}"))
    };
    let client_span = find_span("strait-sidecar", "east", 3)?;
    let east_gateway = find_span("strait-gateway", "east", 1)?;
    let west_gateway = find_span("strait-gateway", "west", 1)?;
    let server_span = find_span("strait-sidecar", "west", 2)?;
    ensure!(
        strait_federation::trace::hex(&client_span.parent_span_id) == caller_span,
        "the client's span is not the caller's child: {client_span:#?}"
    );
    for (child, parent, what) in [
        (
            &east_gateway,
            &client_span,
            "east's gateway under the client",
        ),
        (&west_gateway, &east_gateway, "west's gateway under east's"),
        (
            &server_span,
            &west_gateway,
            "the server under west's gateway",
        ),
    ] {
        ensure!(
            child.parent_span_id == parent.span_id,
            "{what}: {child:#?} has parent {:?}, not {:?}",
            child.parent_span_id,
            parent.span_id
        );
    }
    // Each hop lies within the one before it.
    for (inner, outer) in [(&server_span, &client_span), (&west_gateway, &east_gateway)] {
        ensure!(
            inner.start_time_unix_nano >= outer.start_time_unix_nano
                && inner.end_time_unix_nano <= outer.end_time_unix_nano + 5_000_000,
            "{inner:#?} is not within {outer:#?}"
        );
    }
    ensure!(
        client_span.name == "outbound shop/api",
        "{}",
        client_span.name
    );
    ensure!(
        east_gateway.name == "gateway east -> west",
        "{}",
        east_gateway.name
    );

    // A request without a trace starts one at the client's sidecar, sampled at 100 %.
    let before = received.lock().unwrap_or_else(|p| p.into_inner()).len();
    ensure!(get(proxy, "api.shop", "/", &[])?.status == 200);
    wait_for(Duration::from_secs(15), "a new trace's four spans", || {
        let held = received.lock().unwrap_or_else(|p| p.into_inner());
        let root = held[before..]
            .iter()
            .find(|(_, _, s)| s.kind == 3 && s.parent_span_id.is_empty())
            .map(|(_, _, s)| s.trace_id.clone());
        Ok(root.filter(|id| held.iter().filter(|(_, _, s)| &s.trace_id == id).count() == 4))
    })?;
    Ok(())
}

#[test]
fn access_logs_are_one_json_line_per_request_and_flow_where_switched_on() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    // West logs every sidecar of namespace shop; in east only the client run with
    // --access-log does.
    west.set_section("telemetry", "  accessLogNamespaces: [shop]")?;
    west.start(&mesh)?;
    east.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_connected(&mesh, "east", "west")?;
    let api_west = api(&mesh, "west", "api-west-0")?;
    let ledger = endpoint(&mesh, "west", "ledger", "ledger-0", &[("tcp", 5432, "tcp")])?;
    let logged = mesh.sidecar(
        "east",
        "shop",
        "web",
        "web-logged",
        &[
            "--proxy-addr".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            "ledger.shop:5432=127.0.0.1:0".into(),
            "--access-log".into(),
        ],
    )?;
    let quiet = client(&mesh, "east", &[])?;
    let proxy = logged.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;
    wait_route(quiet.addr("proxy")?, "api.shop", "west")?;
    let lines_before = logged.later_lines().len();
    for path in ["/one", "/two", "/three"] {
        ensure!(get(proxy, "api.shop", path, &[])?.status == 200);
    }
    // One TCP flow through the upstream listener: bytes there and back.
    let mut tcp = std::net::TcpStream::connect(logged.upstream(0)?)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    std::io::Write::write_all(&mut tcp, b"ping\n")?;
    let mut echo = [0u8; 5];
    std::io::Read::read_exact(&mut tcp, &mut echo)?;
    drop(tcp);

    let parse = |lines: Vec<String>| -> Result<Vec<Value>> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("not JSON ({e}): {l}")))
            .collect()
    };
    let outbound = wait_for(Duration::from_secs(10), "the client's access log", || {
        let lines = parse(logged.later_lines()[lines_before..].to_vec())?;
        let http: Vec<Value> = lines
            .iter()
            .filter(|l| l["protocol"] == "http" && l["path"] != "/")
            .cloned()
            .collect();
        let tcp = lines.iter().any(|l| l["protocol"] == "tcp");
        Ok((http.len() == 3 && tcp).then_some(lines))
    })?;
    for line in outbound.iter().filter(|l| l["protocol"] == "http") {
        for (key, expected) in [
            ("direction", "outbound"),
            ("service", "api"),
            ("namespace", "shop"),
            ("source_cluster", "east"),
            ("destination_cluster", "west"),
            ("method", "GET"),
        ] {
            ensure!(line[key] == expected, "{key}: {line}");
        }
        ensure!(line["status"] == 200, "{line}");
        ensure!(
            line["trace_id"].as_str().is_some_and(|t| t.len() == 32),
            "{line}"
        );
        ensure!(
            line["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
            "{line}"
        );
        ensure!(
            line["caller"]
                .as_str()
                .is_some_and(|c| c.ends_with("/ns/shop/sa/web")),
            "{line}"
        );
    }
    let flow = outbound
        .iter()
        .find(|l| l["protocol"] == "tcp")
        .ok_or_else(|| anyhow!("no TCP line"))?;
    ensure!(
        flow["service"] == "ledger" && flow["bytes_sent"] == 5,
        "{flow}"
    );
    ensure!(flow["bytes_received"] == 5, "{flow}");

    // West's api sidecar logs the same requests inbound, under the same trace ids.
    let trace_ids: Vec<&str> = outbound
        .iter()
        .filter(|l| l["protocol"] == "http")
        .filter_map(|l| l["trace_id"].as_str())
        .collect();
    let inbound = wait_for(Duration::from_secs(10), "west's access log", || {
        let lines = parse(api_west.sidecar.later_lines())?;
        let matched = lines
            .iter()
            .filter(|l| l["direction"] == "inbound")
            .filter(|l| {
                l["trace_id"]
                    .as_str()
                    .is_some_and(|t| trace_ids.contains(&t))
            })
            .count();
        Ok((matched == 3).then_some(lines))
    })?;
    ensure!(
        inbound
            .iter()
            .filter(|l| l["direction"] == "inbound" && l["path"] == "/two")
            .all(|l| l["source_cluster"] == "east" && l["caller"].as_str().is_some()),
        "{inbound:?}"
    );
    ensure!(
        !ledger.sidecar.later_lines().is_empty(),
        "west's ledger sidecar logged nothing"
    );
    // Off by default: east's other client wrote no line.
    ensure!(quiet.later_lines().is_empty(), "{:?}", quiet.later_lines());
    Ok(())
}

#[test]
fn tap_streams_a_services_live_requests_within_its_rate() -> Result<()> {
    let (mesh, _east, _west) = linked_pair(None)?;
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;
    // West's tap on shop/api: what its sidecar serves, 5 a second at most.
    let tap = std::process::Command::new(strait_tests::strait_bin())
        .args(["--context", "west", "tap", "api", "-n", "shop"])
        .args(["--max-rps", "5", "--duration", "6s", "-o", "json"])
        .env("STRAIT_CONFIG", &mesh.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(5) {
        ensure!(get(proxy, "api.shop", &format!("/tap/{sent}"), &[])?.status == 200);
        sent += 1;
    }
    let output = tap.wait_with_output()?;
    ensure!(output.status.success(), "{output:?}");
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    println!("{sent} requests sent, {} tapped", events.len());
    ensure!(
        events.len() >= 3,
        "too few events for {sent} requests: {events:?}"
    );
    // At most the rate over the tap's life, plus its first second's burst.
    ensure!(
        events.len() <= 5 * 6 + 5,
        "{} events: over the rate",
        events.len()
    );
    ensure!(
        sent > events.len() + 20,
        "the test sent too few requests ({sent}) to see the limit"
    );
    for event in &events {
        ensure!(
            event["direction"] == "inbound"
                && event["service"] == "api"
                && event["method"] == "GET"
                && event["status"] == 200
                && event["source_cluster"] == "east"
                && event["destination_cluster"] == "west",
            "{event}"
        );
        ensure!(
            event["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/tap/")),
            "{event}"
        );
        ensure!(
            event["caller"]
                .as_str()
                .is_some_and(|c| c.ends_with("/cluster/east/ns/shop/sa/web")),
            "{event}"
        );
        ensure!(
            event["trace_id"].as_str().is_some_and(|t| t.len() == 32),
            "{event}"
        );
    }
    Ok(())
}

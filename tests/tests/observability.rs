//! Seeing the whole federation: `strait check` on a healthy mesh and on each thing that breaks
//! (a stopped peer, an expired link, a skewed clock, policies out of sync), and `strait stat
//! --all-clusters` showing from one cluster what only another cluster's sidecars saw, marked
//! stale once that cluster goes quiet.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use serde_json::Value;
use strait_federation::proto::peer::peer_frame::Body;
use strait_federation::proto::peer::{Health, KeepAlive, PeerFrame};
use strait_tests::rogue::RoguePeer;
use strait_tests::workloads::{api, client, linked_pair, wait_connected};
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

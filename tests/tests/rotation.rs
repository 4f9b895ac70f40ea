//! A root rotation under traffic, through the contract operators use: `strait demo` runs east
//! and west with live cross-cluster traffic, and `strait trust rotate add`, `reissue` and
//! `retire` move the whole mesh to a new root, live: no gateway or sidecar restarts, every link
//! stays connected, and no request of the demo fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::load::Load;
use strait_tests::{Mesh, Process, wait_for};

#[test]
fn a_root_is_rotated_under_traffic_with_no_failed_request_and_the_links_kept() -> Result<()> {
    let mesh = Mesh::new()?;
    let demo_dir = mesh.dir.path().join("demo");
    let args: Vec<String> = ["demo", "--duration", "40s", "-o", "json", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([demo_dir.display().to_string()])
        .collect();
    let demo = Process::start(&mesh, "demo", &args)?;
    ensure!(demo.started["event"] == "ready", "{}", demo.started);
    let proxy: SocketAddr = demo.started["proxies"]["east"]
        .as_str()
        .context("east's proxy")?
        .parse()?;
    // 500 requests a second from east to west for the whole rotation, besides the demo's own.
    let load = Load::start(proxy, "west.api.shop.svc.clusterset.local", 500);
    let started = Instant::now();
    // The load runs a while before, between and after the stages: old, mixed and new trust.
    let settle = || std::thread::sleep(Duration::from_secs(3));
    settle();
    let trust = demo_dir.join("trust");
    let next = demo_dir.join("trust-2");
    let path = |p: &std::path::Path| p.display().to_string();

    // (a) The new root beside the old one, in every gateway and context.
    let said = mesh
        .cli(
            &[
                "trust",
                "rotate",
                "add",
                "--trust",
                &path(&trust),
                "--new",
                &path(&next),
            ],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("add after {:?}:\n{said}", started.elapsed());
    ensure!(said.lines().count() == 2, "one line per gateway: {said}");
    ensure!(
        said.lines().all(|l| l.contains("trusts 2 root(s)")),
        "{said}"
    );

    settle();
    // (b) Each issuer re-signed by the new root; every workload renews under it.
    let said = mesh
        .cli(
            &["trust", "rotate", "reissue", "--trust", &path(&next)],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("reissue after {:?}:\n{said}", started.elapsed());
    ensure!(
        said.matches("re-signed by root").count() == 2
            && said
                .matches("every workload holds a certificate of the new issuer")
                .count()
                == 2,
        "{said}"
    );

    settle();
    // (c) The old root leaves every bundle.
    let said = mesh
        .cli(
            &["trust", "rotate", "retire", "--trust", &path(&trust)],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("retire after {:?}:\n{said}", started.elapsed());
    ensure!(
        said.lines()
            .filter(|l| l.contains("trusts 1 root(s)"))
            .count()
            == 2,
        "{said}"
    );

    settle();
    let (sent, failed, last_failure) = load.stop();
    eprintln!(
        "rotation took {:?}: {sent} requests from east to west, {failed} failed",
        started.elapsed()
    );
    ensure!(sent > 4_000, "the load did not run: {sent} requests");
    ensure!(
        failed == 0,
        "{failed} of {sent} requests failed; the last: {last_failure}"
    );

    // Each gateway's API now verifies against the new root alone (the contexts' bundles are
    // that root), and the link is still connected.
    let new_root = std::fs::read_to_string(next.join("root.crt"))?;
    for cluster in ["east", "west"] {
        let links = mesh
            .ctl(cluster, &["get", "links", "-o", "json"])
            .success()?;
        ensure!(links.contains("connected"), "{cluster}: {links}");
    }
    let contexts: Value = serde_saphyr::from_str(&std::fs::read_to_string(&mesh.config)?)?;
    for context in contexts["contexts"].as_array().into_iter().flatten() {
        let bundle = std::fs::read_to_string(context["bundle"].as_str().unwrap_or_default())?;
        ensure!(
            bundle.trim() == new_root.trim(),
            "context {} still trusts more than the new root",
            context["name"]
        );
    }
    let check = mesh.ctl("east", &["check", "-o", "json"]);
    let report: Value =
        serde_json::from_str(&check.stdout).with_context(|| format!("{check:?}"))?;
    ensure!(check.ok, "{check:?}");
    ensure!(
        report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["description"]
                == "the gateway trusts 1 root(s), all in this context's bundle"),
        "{}",
        check.stdout
    );

    // The demo's report: traffic flowed on every route, and none of it failed.
    let report = wait_for(Duration::from_secs(60), "the demo's report", || {
        Ok(demo
            .later_lines()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v.get("traffic").is_some()))
    })?;
    let rows = report["traffic"].as_array().context("traffic")?;
    ensure!(!rows.is_empty(), "{report}");
    for row in rows {
        ensure!(
            row["requests"].as_u64().unwrap_or(0) > 0 && row["success_rate"] == 1.0,
            "a route failed during the rotation: {row}"
        );
    }
    ensure!(
        report["links"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|l| l["state"] == "connected"),
        "{report}"
    );
    Ok(())
}

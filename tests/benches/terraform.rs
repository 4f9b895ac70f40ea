//! Terraform benchmark: `terraform apply` of `terraform/examples/local` with 5 clusters (10
//! links, a full mesh) against real gateways on loopback, and a plan with nothing to change
//! (target: < 3 s). Prints, from one run:
//! - apply: wall time, beside the same 10 links made by hand with the CLI (`strait link`, then
//!   `strait apply` on the dialer) as the baseline, and the provider's peak RSS;
//! - the no-change plan: wall time, beside the plan of a root module with no resources (what
//!   Terraform itself costs), and the provider's peak RSS.
//!
//! Uses Terraform 1.0.3 from `scripts/terraform-tools.sh install`; skipped, saying so, without it.
//! Run: `cargo bench -p strait-tests --bench terraform`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use strait_tests::terraform::{Workspace, terraform_or_skip};
use strait_tests::{Mesh, wait_for};

const CLUSTERS: [&str; 5] = ["c1", "c2", "c3", "c4", "c5"];

/// The largest resident set of any running provider process, sampled every 10 ms while `run`
/// runs.
fn with_provider_rss<T>(run: impl FnOnce() -> T) -> (T, u64) {
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let dir = entry.path();
                    let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                        continue;
                    };
                    // comm is cut to 15 bytes: "terraform-provi".
                    if !comm.starts_with("terraform-provi") {
                        continue;
                    }
                    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
                    let hwm = status
                        .lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kb| kb.parse::<u64>().ok())
                        .unwrap_or(0);
                    peak.fetch_max(hwm * 1024, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let result = run();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (result, peak.load(Ordering::Relaxed))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn links_connected(mesh: &Mesh, count: usize) -> Result<()> {
    wait_for(Duration::from_secs(30), "every link connected", || {
        for cluster in CLUSTERS {
            let text = mesh
                .ctl(cluster, &["get", "links", "-o", "json"])
                .success()?;
            let value: serde_json::Value = serde_json::from_str(&text)?;
            let connected = value["items"].as_array().map_or(0, |l| {
                l.iter().filter(|l| l["state"] == "connected").count()
            });
            if connected != count {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
}

fn main() -> Result<()> {
    let Some(terraform) = terraform_or_skip() else {
        return Ok(());
    };
    let mesh = Mesh::new()?;
    let _gateways = CLUSTERS
        .iter()
        .map(|c| mesh.start(c, None))
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(&str, &str)> = CLUSTERS
        .iter()
        .enumerate()
        .flat_map(|(i, a)| CLUSTERS[i + 1..].iter().map(move |b| (*a, *b)))
        .collect();

    // The baseline: the same full mesh by hand with the CLI, then unlinked again.
    let started = Instant::now();
    for (dialer, acceptor) in &pairs {
        mesh.link(dialer, acceptor)?;
    }
    let by_hand = started.elapsed();
    links_connected(&mesh, CLUSTERS.len() - 1)?;
    for (dialer, acceptor) in &pairs {
        mesh.ctl(dialer, &["unlink", acceptor]).success()?;
    }
    links_connected(&mesh, 0)?;

    let workspace = Workspace::new(&terraform, &mesh.config)?;
    let example = "examples/local";
    workspace.init(example)?;
    let clusters = format!(
        "clusters=[{}]",
        CLUSTERS
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let config = format!("strait_config={}", mesh.config.display());
    let vars = ["-var", config.as_str(), "-var", clusters.as_str()];
    let command = |verb: &[&str]| -> Vec<String> {
        verb.iter()
            .chain(vars.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let run = workspace.run(example, &args);
        (run, started.elapsed())
    };

    let ((applied, apply_time), apply_rss) =
        with_provider_rss(|| run(command(&["apply", "-auto-approve", "-no-color"])));
    let applied = applied.success()?;
    ensure!(applied.contains("10 added"), "{applied}");
    links_connected(&mesh, CLUSTERS.len() - 1)?;

    let mut plans = Vec::new();
    let mut plan_rss = 0;
    for _ in 0..5 {
        let ((plan, took), rss) =
            with_provider_rss(|| run(command(&["plan", "-detailed-exitcode", "-no-color"])));
        ensure!(plan.code == 0, "the plan wants changes: {plan:?}");
        plans.push(took);
        plan_rss = plan_rss.max(rss);
    }
    plans.sort();

    // What Terraform costs without strait: a plan of a root module with no resources.
    workspace.root_module("empty", "terraform {\n  required_version = \">= 1.0\"\n}\n")?;
    workspace.init("empty")?;
    let mut empty = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let plan = workspace.run("empty", &["plan", "-detailed-exitcode", "-no-color"]);
        ensure!(plan.code == 0, "{plan:?}");
        empty.push(started.elapsed());
    }
    empty.sort();

    run(command(&["destroy", "-auto-approve", "-no-color"]))
        .0
        .success()?;
    links_connected(&mesh, 0)?;

    println!("terraform apply, 5 clusters (10 links, full mesh), Terraform 1.0.3:");
    println!(
        "  terraform apply:             {:>8.2} s   (by hand with the CLI: {:.2} s, {:.2}x)",
        apply_time.as_secs_f64(),
        by_hand.as_secs_f64(),
        apply_time.as_secs_f64() / by_hand.as_secs_f64()
    );
    println!("  provider peak RSS in apply:  {:>10}", mib(apply_rss));
    println!(
        "  no-change plan (median of 5): {:>6.2} s   (target < 3 s; empty root module: {:.2} s)",
        plans[2].as_secs_f64(),
        empty[2].as_secs_f64()
    );
    println!("  provider peak RSS in plan:   {:>10}", mib(plan_rss));
    Ok(())
}

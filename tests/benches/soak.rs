//! Soak: a demo-sized mesh (gateways east and west, shop/api in both, a client sidecar in
//! east) under cross-cluster load for a long run, with a policy change every few seconds and
//! one restart of east's gateway in the middle. Prints errors by phase and every process's
//! memory over time, then one JSON line. Run by `bench/soak.sh`; `SOAK_SECONDS` (600),
//! `SOAK_RPS` (2000) and `SOAK_POLICY_EVERY` (5, seconds) change the run.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use strait_tests::load::Load;
use strait_tests::workloads::{api, client, linked_pair, wait_route};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A rate limit far above the load, its limit changed at every step: a policy change that
/// travels to every sidecar of shop/api without refusing a request.
fn policy(step: u64) -> String {
    format!(
        "apiVersion: policy.strait.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: soak-limit, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  limit: {{requests: {}, per: 1s, burst: 1000000}}
",
        1_000_000 + step
    )
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: Option<u32>) -> f64 {
    pid.and_then(|pid| strait_tests::proc_memory(pid, "VmRSS").ok())
        .map_or(0.0, |bytes| bytes as f64 / (1 << 20) as f64)
}

struct Phase {
    name: &'static str,
    sent: u64,
    failed: u64,
    seconds: f64,
}

fn main() -> Result<()> {
    let total = Duration::from_secs(setting("SOAK_SECONDS", 600));
    let rps = u32::try_from(setting("SOAK_RPS", 2000)).unwrap_or(2000);
    let policy_every = Duration::from_secs(setting("SOAK_POLICY_EVERY", 5).max(1));
    let warm_up = (total / 10).min(Duration::from_secs(60));
    let restart_window = Duration::from_secs(15);

    let (mesh, mut east, west) = linked_pair(None)?;
    let _west_api = [
        api(&mesh, "west", "api-west-0")?,
        api(&mesh, "west", "api-west-1")?,
    ];
    let _east_api = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    let host = "west.api.shop.svc.clusterset.local";
    wait_route(proxy, host, "west")?;
    mesh.apply("east", "soak-limit.yaml", &policy(0))
        .success()?;

    let load = Load::start_on(proxy, host, rps, 32);
    let started = Instant::now();
    let mut phases: Vec<Phase> = Vec::new();
    let mut phase_start = (Instant::now(), 0u64, 0u64);
    let mut close_phase = |name: &'static str, load: &Load, phases: &mut Vec<Phase>| {
        let (sent, failed) = load.counts();
        phases.push(Phase {
            name,
            sent: sent - phase_start.1,
            failed: failed - phase_start.2,
            seconds: phase_start.0.elapsed().as_secs_f64(),
        });
        phase_start = (Instant::now(), sent, failed);
    };
    let mut memory: Vec<serde_json::Value> = Vec::new();
    let mut next_sample = Instant::now();
    let mut next_policy = Instant::now() + policy_every;
    let mut step = 0;
    let mut policy_failures = 0;
    let mut stage = 0; // 0 warm-up, 1 before the restart, 2 the restart window, 3 after
    let mut restart_at = None;
    while started.elapsed() < total {
        let now = Instant::now();
        if stage == 0 && started.elapsed() >= warm_up {
            close_phase("warm-up", &load, &mut phases);
            stage = 1;
        }
        if stage == 1 && started.elapsed() >= total / 2 {
            close_phase("steady before the restart", &load, &mut phases);
            eprintln!("restarting east's gateway at {:?}", started.elapsed());
            east.stop()?;
            east.start(&mesh)?;
            restart_at = Some(Instant::now());
            stage = 2;
        }
        if stage == 2 && restart_at.is_some_and(|at| at.elapsed() >= restart_window) {
            close_phase(
                "restart window (stop, start, 15 s after)",
                &load,
                &mut phases,
            );
            stage = 3;
        }
        if now >= next_policy {
            step += 1;
            if !mesh.apply("east", "soak-limit.yaml", &policy(step)).ok {
                policy_failures += 1;
            }
            next_policy += policy_every;
        }
        if now >= next_sample {
            let (sent, failed) = load.counts();
            let sample = json!({
                "t_s": started.elapsed().as_secs(),
                "sent": sent,
                "failed": failed,
                "rss_mib": {
                    "gateway-east": rss_mib(east.pid()),
                    "gateway-west": rss_mib(west.pid()),
                    "sidecar-web-east": rss_mib(web.pid()),
                },
            });
            eprintln!("{sample}");
            memory.push(sample);
            next_sample += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    close_phase(
        if stage == 3 {
            "steady after the restart"
        } else {
            "steady"
        },
        &load,
        &mut phases,
    );
    let (sent, failed, last_failure) = load.stop();

    // Memory growth after warm-up, per process: the first sample after warm-up (for east's
    // gateway, the first a minute after its restart) against the last.
    let growth = |name: &str, from_s: u64| -> Option<f64> {
        let series: Vec<f64> = memory
            .iter()
            .filter(|s| s["t_s"].as_u64().unwrap_or(0) >= from_s)
            .filter_map(|s| s["rss_mib"][name].as_f64())
            .filter(|m| *m > 0.0)
            .collect();
        let (first, last) = (series.first()?, series.last()?);
        Some(((last - first) / first * 100.0 * 10.0).round() / 10.0)
    };
    let warm_s = warm_up.as_secs();
    let east_from = restart_at
        .map(|at| (at - started).as_secs() + 60)
        .unwrap_or(warm_s);
    let phases_json: Vec<_> = phases
        .iter()
        .map(|p| {
            json!({"phase": p.name, "seconds": (p.seconds * 10.0).round() / 10.0,
                   "requests": p.sent, "failed": p.failed,
                   "rps": (p.sent as f64 / p.seconds.max(0.001)).round()})
        })
        .collect();
    for phase in &phases {
        println!(
            "{:<45} {:>7.1} s {:>9} requests {:>6} failed {:>7.0} req/s",
            phase.name,
            phase.seconds,
            phase.sent,
            phase.failed,
            phase.sent as f64 / phase.seconds.max(0.001)
        );
    }
    println!(
        "{}",
        json!({
            "benchmark": "strait-soak",
            "seconds": total.as_secs(),
            "target_rps": rps,
            "requests": sent,
            "failed": failed,
            "last_failure": last_failure,
            "policy_changes": step,
            "policy_changes_refused": policy_failures,
            "phases": phases_json,
            "memory_growth_after_warm_up_percent": {
                "gateway-east": growth("gateway-east", east_from),
                "gateway-west": growth("gateway-west", warm_s),
                "sidecar-web-east": growth("sidecar-web-east", warm_s),
            },
            "memory": memory,
        })
    );
    let errors_outside_restart: u64 = phases
        .iter()
        .filter(|p| !p.name.starts_with("restart"))
        .map(|p| p.failed)
        .sum();
    anyhow::ensure!(sent > 0, "no request was sent");
    if errors_outside_restart > 0 {
        eprintln!("{errors_outside_restart} requests failed outside the restart window");
    }
    Ok(())
}

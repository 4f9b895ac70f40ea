//! Telemetry benchmark: what access logs and tracing cost a sidecar, per request, against the
//! same sidecars with both off, in the same run.
//!
//! Each variant is a fresh mesh of real processes on loopback: gateways, the HTTP sample app
//! behind its sidecar (shop/api), and a client sidecar (shop/web) whose proxy port takes a fixed
//! number of requests from 32 keep-alive connections. The figure is the CPU time both sidecars
//! used (from /proc), divided by the requests, and the requests a second. Variants run three
//! times, interleaved; medians are printed.
//!
//! - `pair`: client and server in one cluster; `pair-logged`: both sidecars write an access
//!   log (to a file); `pair-traced`: every request sampled, spans sent to a collector in this
//!   process (OTLP/gRPC); `pair-traced-logged`: both.
//! - `cross`: the server in another cluster, through both gateways; `cross-traced-1%` (the
//!   default rate) and `cross-traced-100%`: a sampled cross-cluster request travels on a flow of
//!   its own (so both gateways record their hop), which is its cost.
//!
//! Run: `cargo bench -p strait-tests --bench telemetry` (`STRAIT_BIN=...` to use a built binary;
//! `BENCH_REQUESTS` for the requests per run, 20,000 by default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_tests::otlp::Collector;
use strait_tests::workloads::{wait_connected, wait_route};
use strait_tests::{Mesh, Process};

/// Connections the load comes on.
const CONNECTIONS: usize = 32;
/// Runs of each variant.
const RUNS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
struct Variant {
    name: &'static str,
    cross: bool,
    logged: bool,
    /// Percent of new traces sampled; `None`: no collector.
    sampling: Option<f64>,
}

const VARIANTS: [Variant; 6] = [
    Variant {
        name: "pair",
        cross: false,
        logged: false,
        sampling: None,
    },
    Variant {
        name: "pair-logged",
        cross: false,
        logged: true,
        sampling: None,
    },
    Variant {
        name: "pair-traced",
        cross: false,
        logged: false,
        sampling: Some(100.0),
    },
    Variant {
        name: "pair-traced-logged",
        cross: false,
        logged: true,
        sampling: Some(100.0),
    },
    Variant {
        name: "cross",
        cross: true,
        logged: false,
        sampling: None,
    },
    Variant {
        name: "cross-traced-1%",
        cross: true,
        logged: false,
        sampling: Some(1.0),
    },
];

/// A variant's figures from one run.
#[derive(Clone, Copy, Default)]
struct Figures {
    rps: f64,
    cpu_us_per_request: f64,
    spans: u64,
}

/// CPU time (user + system) a process used so far, in microseconds.
fn cpu_micros(pid: u32) -> Result<u64> {
    Ok(strait_tests::proc_cpu_ticks(&pid.to_string(), 2)? * 10_000)
}

fn pid(process: &Process) -> Result<u32> {
    process
        .pid()
        .ok_or_else(|| anyhow!("{} is not running", process.name))
}

/// Sends `requests` GETs for api.shop through `proxy` on [`CONNECTIONS`] connections.
async fn load(proxy: SocketAddr, requests: usize) -> Result<Duration> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS)
        .build_http();
    let left = Arc::new(AtomicU64::new(requests as u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, left) = (client.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let request = hyper::Request::get(format!("http://{proxy}/"))
                    .header("host", "api.shop")
                    .body(Empty::new())?;
                let response = client.request(request).await?;
                ensure!(response.status() == 200, "status {}", response.status());
                response.into_body().collect().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// One run of a variant.
fn run(variant: Variant, requests: usize, runtime: &tokio::runtime::Runtime) -> Result<Figures> {
    let collector = match variant.sampling {
        Some(_) => Some(Collector::start(runtime)?),
        None => None,
    };
    let mesh = Mesh::new()?;
    let clusters: &[&str] = if variant.cross {
        &["west", "east"]
    } else {
        &["east"]
    };
    let mut gateways = Vec::new();
    for cluster in clusters {
        let mut gateway = mesh.gateway(cluster, None)?;
        if let (Some(collector), Some(percent)) = (&collector, variant.sampling) {
            let address = collector.address;
            gateway.set_section(
                "telemetry",
                &format!("  collector: http://{address}\n  samplingPercent: {percent}"),
            )?;
        }
        gateway.start(&mesh)?;
        gateways.push(gateway);
    }
    if variant.cross {
        mesh.link("east", "west")?;
        wait_connected(&mesh, "east", "west")?;
    }
    let server_cluster = if variant.cross { "west" } else { "east" };
    let app = mesh.app("http", server_cluster, "shop/api", "api-0")?;
    let mut server_args: Vec<String> = [
        "--service",
        "api",
        "--export",
        "--port",
        &format!("8080/http={}", app.addr("address")?),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut args = vec!["--proxy-addr".to_owned(), "127.0.0.1:0".into()];
    if variant.logged {
        args.push("--access-log".into());
        server_args.push("--access-log".into());
    }
    let server = mesh.sidecar(server_cluster, "shop", "api", "api-0", &server_args)?;
    let web = mesh.sidecar("east", "shop", "web", "web", &args)?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", server_cluster)?;
    // Warm up, and let the warm-up's spans leave the exporters' queues (their linger is 1 s),
    // then measure.
    runtime.block_on(load(proxy, 1_000))?;
    std::thread::sleep(Duration::from_millis(1_500));
    let pids = [pid(&web)?, pid(&server)?];
    let before: u64 = pids.iter().map(|p| cpu_micros(*p)).sum::<Result<u64>>()?;
    let spans = || collector.as_ref().map_or(0, |c| c.count() as u64);
    let spans_before = spans();
    let elapsed = runtime.block_on(load(proxy, requests))?;
    let after: u64 = pids.iter().map(|p| cpu_micros(*p)).sum::<Result<u64>>()?;
    // Spans still in the exporters' queues come within their linger time.
    std::thread::sleep(Duration::from_millis(1_500));
    let figures = Figures {
        rps: requests as f64 / elapsed.as_secs_f64(),
        cpu_us_per_request: (after - before) as f64 / requests as f64,
        spans: spans() - spans_before,
    };
    drop(gateways);
    Ok(figures)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..RUNS {
        for (i, variant) in VARIANTS.iter().enumerate() {
            let figures = run(*variant, requests, &runtime)?;
            println!(
                "round {} {:<20} {:>8.0} req/s {:>7.1} us CPU/req (both sidecars) {:>7} spans",
                round + 1,
                variant.name,
                figures.rps,
                figures.cpu_us_per_request,
                figures.spans
            );
            results[i].push(figures);
        }
    }
    println!(
        "\n{:<20} {:>10} {:>16} {:>12} {:>10}",
        "variant", "req/s", "CPU us/req", "vs baseline", "spans/req"
    );
    let mut json = Vec::new();
    let mut baselines = std::collections::HashMap::new();
    for (variant, runs) in VARIANTS.iter().zip(&results) {
        let rps = median(runs.iter().map(|f| f.rps).collect());
        let cpu = median(runs.iter().map(|f| f.cpu_us_per_request).collect());
        let spans = median(runs.iter().map(|f| f.spans as f64).collect()) / requests as f64;
        let base = if variant.cross { "cross" } else { "pair" };
        if variant.name == base {
            baselines.insert(base, cpu);
        }
        let ratio = cpu / baselines.get(base).copied().unwrap_or(cpu);
        println!(
            "{:<20} {:>10.0} {:>16.1} {:>11.2}x {:>10.2}",
            variant.name, rps, cpu, ratio, spans
        );
        json.push(format!(
            "\"{}\":{{\"rps\":{rps:.0},\"cpu_us_per_request\":{cpu:.1},\"vs_baseline\":{ratio:.3},\"spans_per_request\":{spans:.2}}}",
            variant.name
        ));
    }
    println!(
        "{{\"benchmark\":\"strait-telemetry\",\"requests_per_run\":{requests},\"connections\":{CONNECTIONS},\"runs\":{RUNS},\"variants\":{{{}}}}}",
        json.join(",")
    );
    Ok(())
}

//! Federation at scale: ten gateways (real processes on loopback, linked as a full mesh: the
//! catalog is not relayed, so every cluster links every other), each exporting 1,000 services
//! (10,000 in the clusterset) and followed by 100 light sidecars: tasks of this process that
//! hold a workload certificate and follow the catalog stream exactly as a sidecar does
//! (deltas applied to the view held, a gap refused).
//!
//! It measures, after the mesh converged:
//! - a steady minute without changes: bytes per second per peer (QUIC datagrams sent, each
//!   direction of each pair counted once) and
//!   per sidecar, and each gateway's CPU;
//! - a run of one-service changes, each applied with `strait apply` in a cluster (one after
//!   another, round the clusters): the time from the apply until every sidecar of every
//!   cluster holds the change, the bytes each sidecar received per change, each gateway's CPU
//!   per change (its idle CPU taken off), the DNS zone's update time, and the gateways' memory.
//!
//! The last line on stdout is one JSON object (`"benchmark":"strait-scale"`); the rest goes
//! to stderr. Settings: `SCALE_GATEWAYS` [10], `SCALE_SERVICES` per gateway [1000],
//! `SCALE_SIDECARS` per gateway [100], `SCALE_CHANGES` [60], `SCALE_CHANGE_EVERY_MS` [250],
//! `SCALE_STEADY_SECONDS` [60], `SCALE_DECLARED_SIDECARS` per gateway [10] (they declare one
//! namespace, as `--watch` does, beside those that take the whole view),
//! `SCALE_MAX_SECONDS` [600] (then the run stops itself).
//!
//! Run: `bench/scale.sh` (a release build), or `cargo bench -p strait-tests --bench scale`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use strait_federation::proto::workload::workload_client::WorkloadClient;
use strait_federation::proto::workload::{CatalogView, WatchRequest};

use strait_federation::view::ViewGap;
use strait_tests::workloads::WorkloadCredentials;
use strait_tests::{Gateway, Mesh, http_get, metric, proc_cpu_ticks, wait_for};

/// Clock ticks per second of /proc/PID/stat.
const TICKS_PER_SECOND: f64 = 100.0;
/// The gRPC frame's own bytes before each message.
const GRPC_FRAME: u64 = 5;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cluster(i: usize) -> String {
    format!("c{i}")
}

/// The services of cluster `i`, in ten namespaces.
fn services(i: usize, count: usize) -> String {
    (0..count)
        .map(|j| {
            format!(
                "kind: Service\nmetadata: {{name: c{i}-s{j}, namespace: ns{}}}\nspec:\n  export: true\n  ports: [{{name: http, port: 8080, protocol: http}}]\n  endpoints: [{{address: 10.{i}.{}.{}:8080}}]\n",
                j % 10,
                j / 250,
                j % 250 + 1
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Change `k`: the endpoint of `c{g}-s0` moves to an address that names `k`.
fn change(g: usize, k: usize) -> String {
    format!(
        "kind: Service\nmetadata: {{name: c{g}-s0, namespace: ns0}}\nspec:\n  export: true\n  ports: [{{name: http, port: 8080, protocol: http}}]\n  endpoints: [{{address: 10.77.{}.{}:8080}}]\n",
        k / 256,
        k % 256
    )
}

/// The change an endpoint address names, if any.
fn change_of(address: &str) -> Option<usize> {
    let rest = address.strip_prefix("10.77.")?;
    let (high, rest) = rest.split_once('.')?;
    let (low, _) = rest.split_once(':')?;
    Some(high.parse::<usize>().ok()? * 256 + low.parse::<usize>().ok()?)
}

/// What a light sidecar keeps of its view: the services' names (hashed: a thousand whole views
/// of 10,000 services would not fit one process otherwise) and the stream's version. It
/// applies deltas and refuses one that does not follow, as a sidecar does; the views' contents
/// are checked by the tests (the convergence simulation, tests/tests/views.rs).
#[derive(Default)]
struct LightView {
    version: Option<u64>,
    services: std::collections::HashSet<u64>,
    /// Whether the last message ended a view (a large one comes in parts).
    complete: bool,
}

impl LightView {
    fn name(namespace: &str, name: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (namespace, name).hash(&mut hasher);
        hasher.finish()
    }

    fn apply(&mut self, message: CatalogView) -> Result<()> {
        ViewGap::check(self.version, &message)?;
        if message.delta_from == 0 {
            self.services.clear();
        }
        for gone in &message.removed_services {
            self.services
                .remove(&Self::name(&gone.namespace, &gone.name));
        }
        for service in &message.services {
            self.services
                .insert(Self::name(&service.namespace, &service.name));
        }
        self.version = Some(message.version);
        self.complete = !message.continued;
        Ok(())
    }

    /// The services of the last whole view (0 while parts of it are still coming).
    fn len(&self) -> usize {
        if self.complete {
            self.services.len()
        } else {
            0
        }
    }
}

/// What one light sidecar saw.
struct Watcher {
    /// The namespaces it asked for (none: every service).
    namespaces: Vec<String>,
    bytes: AtomicU64,
    /// The bytes of its first view (all of its parts).
    first: AtomicU64,
    services: AtomicUsize,
    /// When each change reached it.
    arrivals: Mutex<Vec<Option<Instant>>>,
    failed: Mutex<Option<String>>,
}

async fn follow(channel: tonic::transport::Channel, watcher: Arc<Watcher>) {
    let run = async {
        let mut client = WorkloadClient::new(channel).max_decoding_message_size(512 << 20);
        let mut stream = client
            .watch(WatchRequest {
                deltas: true,
                namespaces: watcher.namespaces.clone(),
                ..WatchRequest::default()
            })
            .await?
            .into_inner();
        let mut held = LightView::default();
        while let Some(message) = stream.message().await? {
            let now = Instant::now();
            let bytes = message.encoded_len() as u64 + GRPC_FRAME;
            watcher.bytes.fetch_add(bytes, Ordering::Relaxed);
            if !held.complete {
                watcher.first.fetch_add(bytes, Ordering::Relaxed);
            }
            for service in &message.services {
                for backend in &service.backends {
                    for endpoint in &backend.endpoints {
                        if let Some(k) = change_of(&endpoint.address) {
                            let mut arrivals = watcher.arrivals.lock().unwrap();
                            if let Some(slot) = arrivals.get_mut(k) {
                                slot.get_or_insert(now);
                            }
                        }
                    }
                }
            }
            held.apply(message)?;
            watcher.services.store(held.len(), Ordering::Relaxed);
        }
        anyhow::Ok(())
    };
    if let Err(e) = run.await {
        *watcher.failed.lock().unwrap() = Some(format!("{e:#}"));
    }
}

/// Starts `count` light sidecars on one gateway (one connection each), and `subset.0` more
/// that ask only for the namespaces `subset.1`.
async fn sidecars(
    credentials: &WorkloadCredentials,
    count: usize,
    subset: (usize, &[String]),
    changes: usize,
) -> Result<(Vec<Arc<Watcher>>, Vec<Arc<Watcher>>)> {
    let (mut watchers, mut subsets) = (Vec::new(), Vec::new());
    for i in 0..count + subset.0 {
        let channel = credentials.channel().await?;
        let watcher = Arc::new(Watcher {
            namespaces: if i < count {
                Vec::new()
            } else {
                subset.1.to_vec()
            },
            first: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            services: AtomicUsize::new(0),
            arrivals: Mutex::new(vec![None; changes]),
            failed: Mutex::new(None),
        });
        tokio::spawn(follow(channel, watcher.clone()));
        if i < count {
            watchers.push(watcher);
        } else {
            subsets.push(watcher);
        }
    }
    Ok((watchers, subsets))
}

fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn cpu_ticks(gateway: &Gateway) -> Result<u64> {
    let pid = gateway
        .pid()
        .ok_or_else(|| anyhow!("{} stopped", gateway.cluster))?;
    proc_cpu_ticks(&pid.to_string(), 2)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn peer_bytes(gateways: &[Gateway]) -> Result<f64> {
    let mut total = 0.0;
    for gateway in gateways {
        total += sum_metric(
            &gateway.metrics()?,
            "strait_peer_udp_bytes",
            &["direction=\"tx\""],
        );
    }
    Ok(total)
}

fn watcher_bytes(watchers: &[Arc<Watcher>]) -> u64 {
    watchers
        .iter()
        .map(|w| w.bytes.load(Ordering::Relaxed))
        .sum()
}

fn check_watchers(watchers: &[Arc<Watcher>]) -> Result<()> {
    for watcher in watchers {
        if let Some(failed) = watcher.failed.lock().unwrap().as_ref() {
            bail!("a light sidecar's stream failed: {failed}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    strait_federation::tls::install_default_provider();
    let gateways_wanted = setting("SCALE_GATEWAYS", 10);
    let per_gateway = setting("SCALE_SERVICES", 1000);
    let sidecars_per_gateway = setting("SCALE_SIDECARS", 100);
    let changes = setting("SCALE_CHANGES", 60).min(256 * 256);
    let change_every = Duration::from_millis(setting("SCALE_CHANGE_EVERY_MS", 250) as u64);
    let steady = Duration::from_secs(setting("SCALE_STEADY_SECONDS", 60) as u64);
    let total_services = gateways_wanted * per_gateway;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let started = Instant::now();
    let mesh = Mesh::new()?;
    let mut gateways = Vec::new();
    for g in 0..gateways_wanted {
        let mut gateway = mesh.gateway(&cluster(g), None)?;
        gateway.launch(&mesh)?;
        gateways.push(gateway);
    }
    watchdog(
        gateways.iter().filter_map(Gateway::pid).collect(),
        Duration::from_secs(setting("SCALE_MAX_SECONDS", 600) as u64),
    );
    for gateway in &gateways {
        wait_for(
            Duration::from_secs(60),
            &format!("{} ready", gateway.cluster),
            || {
                Ok(http_get(gateway.admin, "/readyz")
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ()))
            },
        )
        .with_context(|| gateway.log_tail())?;
    }
    for g in 0..gateways_wanted {
        mesh.apply(&cluster(g), "services.yaml", &services(g, per_gateway))
            .success()
            .with_context(|| format!("applying {}'s services", cluster(g)))?;
    }
    for a in 0..gateways_wanted {
        for b in a + 1..gateways_wanted {
            mesh.link(&cluster(a), &cluster(b))?;
        }
    }
    let links = gateways_wanted * (gateways_wanted - 1) / 2;
    eprintln!(
        "{gateways_wanted} gateways, {total_services} services, {links} links: started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let imported_all = (gateways_wanted - 1) * per_gateway;
    for gateway in &gateways {
        wait_for(
            Duration::from_secs(300),
            &format!("{} imports {imported_all} services", gateway.cluster),
            || {
                let text = gateway.metrics()?;
                let own = metric(
                    &text,
                    "strait_catalog_services",
                    &[&format!("source_cluster=\"{}\"", gateway.cluster)],
                )
                .unwrap_or(0.0);
                let all = sum_metric(&text, "strait_catalog_services", &[]);
                Ok((all - own >= imported_all as f64).then_some(()))
            },
        )?;
    }
    eprintln!("converged after {:.1} s", started.elapsed().as_secs_f64());

    // Beside them, sidecars that declare the one namespace their workload calls (ns1: the
    // changes below are all in ns0), to measure a declared view against the whole one.
    let subset_namespaces = vec!["ns1".to_owned()];
    let subset_services = total_services / 10;
    let (watchers, subsets): (Vec<Arc<Watcher>>, Vec<Arc<Watcher>>) = runtime.block_on(async {
        // Every certificate first: the first views of a thousand streams keep both cores busy.
        let mut credentials = Vec::new();
        for (g, gateway) in gateways.iter().enumerate() {
            // A namespace of their own, with no service: a declared sidecar then holds
            // exactly what it declared.
            credentials.push(
                WorkloadCredentials::certify(&mesh, &cluster(g), "bench", "bench")
                    .await
                    .with_context(|| gateway.log_tail())?,
            );
        }
        let (mut all, mut declared) = (Vec::new(), Vec::new());
        for (g, credentials) in credentials.iter().enumerate() {
            let (whole, subset) = sidecars(
                credentials,
                sidecars_per_gateway,
                (setting("SCALE_DECLARED_SIDECARS", 10), &subset_namespaces),
                changes,
            )
            .await
            .with_context(|| gateways[g].log_tail())?;
            all.extend(whole);
            declared.extend(subset);
        }
        anyhow::Ok((all, declared))
    })?;
    wait_for(
        Duration::from_secs(300),
        &format!(
            "{} light sidecars hold {total_services} services",
            watchers.len()
        ),
        || {
            check_watchers(&watchers)?;
            check_watchers(&subsets)?;
            Ok((watchers
                .iter()
                .all(|w| w.services.load(Ordering::Relaxed) >= total_services)
                && subsets
                    .iter()
                    .all(|w| w.services.load(Ordering::Relaxed) >= subset_services))
            .then_some(()))
        },
    )?;
    eprintln!(
        "{} light sidecars hold the whole view after {:.1} s",
        watchers.len(),
        started.elapsed().as_secs_f64()
    );

    // A steady minute: nothing changes.
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before: Vec<u64> = gateways.iter().map(cpu_ticks).collect::<Result<_>>()?;
    let peers_before = peer_bytes(&gateways)?;
    let sidecars_before = watcher_bytes(&watchers);
    let steady_started = Instant::now();
    std::thread::sleep(steady);
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    let cpu_after: Vec<u64> = gateways.iter().map(cpu_ticks).collect::<Result<_>>()?;
    let peer_pairs = (gateways_wanted * (gateways_wanted - 1)) as f64;
    let steady_per_peer = (peer_bytes(&gateways)? - peers_before) / steady_seconds / peer_pairs;
    let steady_per_sidecar = (watcher_bytes(&watchers) - sidecars_before) as f64
        / steady_seconds
        / watchers.len() as f64;
    // CPU seconds per second of each gateway while idle.
    let idle: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| (a - b) as f64 / TICKS_PER_SECOND / steady_seconds)
        .collect();
    check_watchers(&watchers)?;

    // One-service changes, round the clusters.
    let cpu_before: Vec<u64> = gateways.iter().map(cpu_ticks).collect::<Result<_>>()?;
    let sidecars_before = watcher_bytes(&watchers);
    let declared_before = watcher_bytes(&subsets);
    let changes_started = Instant::now();
    let mut applied_at = Vec::with_capacity(changes);
    for k in 0..changes {
        let g = k % gateways_wanted;
        let due = changes_started + change_every * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at = Instant::now();
        mesh.apply(&cluster(g), &format!("change-{k}.yaml"), &change(g, k))
            .success()
            .with_context(|| format!("change {k}"))?;
        applied_at.push(at);
    }
    wait_for(
        Duration::from_secs(30),
        "every light sidecar holds every change",
        || {
            check_watchers(&watchers)?;
            Ok(watchers
                .iter()
                .all(|w| w.arrivals.lock().unwrap().iter().all(Option::is_some))
                .then_some(()))
        },
    )?;
    // Let the last change's work end before reading the CPU.
    std::thread::sleep(Duration::from_secs(1));
    let window = changes_started.elapsed().as_secs_f64();
    let cpu_after: Vec<u64> = gateways.iter().map(cpu_ticks).collect::<Result<_>>()?;
    let bytes_per_change = (watcher_bytes(&watchers) - sidecars_before) as f64
        / watchers.len() as f64
        / changes as f64;
    let declared_per_change = (watcher_bytes(&subsets) - declared_before) as f64
        / subsets.len().max(1) as f64
        / changes as f64;
    let first_view = |all: &[Arc<Watcher>]| {
        all.iter()
            .map(|w| w.first.load(Ordering::Relaxed) as f64)
            .sum::<f64>()
            / all.len().max(1) as f64
    };
    let (whole_view, declared_view) = (first_view(&watchers), first_view(&subsets));
    let cpu_per_change: Vec<f64> = (0..gateways.len())
        .map(|g| {
            let spent = (cpu_after[g] - cpu_before[g]) as f64 / TICKS_PER_SECOND;
            ((spent - idle[g] * window) / changes as f64 * 1e3).max(0.0)
        })
        .collect();
    let mut to_all: Vec<f64> = Vec::with_capacity(changes);
    let mut each: Vec<f64> = Vec::with_capacity(changes * watchers.len());
    for (k, at) in applied_at.iter().enumerate() {
        let mut last: f64 = 0.0;
        for watcher in &watchers {
            let arrived = watcher.arrivals.lock().unwrap()[k]
                .ok_or_else(|| anyhow!("change {k} never arrived"))?;
            let ms = arrived.saturating_duration_since(*at).as_secs_f64() * 1e3;
            each.push(ms);
            last = last.max(ms);
        }
        to_all.push(last);
    }
    let mut zone_ms: Vec<f64> = Vec::new();
    let mut rss: BTreeMap<String, f64> = BTreeMap::new();
    for gateway in &gateways {
        let text = gateway.metrics()?;
        zone_ms.push(metric(&text, "strait_dns_zone_build_seconds", &[]).unwrap_or(f64::NAN) * 1e3);
        rss.insert(
            gateway.cluster.clone(),
            gateway.rss_bytes()? as f64 / (1 << 20) as f64,
        );
    }
    let rss_max = rss.values().copied().fold(0.0, f64::max);
    let idle_max = idle.iter().copied().fold(0.0, f64::max);
    let cpu_max = cpu_per_change.iter().copied().fold(0.0, f64::max);
    let zone_max = zone_ms.iter().copied().fold(0.0, f64::max);
    let p50_all = percentile(&mut to_all.clone(), 50.0);
    let p99_all = percentile(&mut to_all, 99.0);
    let p99_each = percentile(&mut each, 99.0);

    eprintln!();
    eprintln!(
        "{gateways_wanted} gateways (full mesh), {total_services} services, {} light sidecars, {changes} changes every {} ms",
        watchers.len(),
        change_every.as_millis()
    );
    eprintln!(
        "change until every sidecar has it:  p50 {p50_all:.0} ms, p99 {p99_all:.0} ms  (target p99 < 1000 ms)"
    );
    eprintln!("change until one sidecar has it:    p99 {p99_each:.0} ms");
    eprintln!("bytes to one sidecar per change:    {bytes_per_change:.0}  (target < 1024)");
    eprintln!(
        "first view: whole {:.0} KiB; declared (one namespace, {subset_services} services) {:.0} KiB; declared sidecar per change (none in its namespace): {declared_per_change:.0} bytes",
        whole_view / 1024.0,
        declared_view / 1024.0
    );
    eprintln!(
        "gateway CPU per change (idle off):  max {cpu_max:.2} ms, each {:?}  (target < 5 ms)",
        cpu_per_change
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "steady bytes/s per peer:            {steady_per_peer:.0}  (QUIC datagrams, one direction)"
    );
    eprintln!("steady bytes/s per sidecar:         {steady_per_sidecar:.1}");
    eprintln!(
        "steady gateway CPU:                 max {:.2} % of a core  (target < 1 %)",
        idle_max * 100.0
    );
    eprintln!("gateway RSS:                        max {rss_max:.1} MiB  (target < 200 MiB)");
    eprintln!("DNS zone update (last change):      max {zone_max:.3} ms  (target < 1 ms)");
    eprintln!("total time {:.0} s", started.elapsed().as_secs_f64());
    let json = serde_json::json!({
        "benchmark": "strait-scale",
        "gateways": gateways_wanted,
        "services": total_services,
        "sidecars_per_gateway": sidecars_per_gateway,
        "change_to_all_sidecars_p99_ms": round(p99_all, 1),
        "bytes_to_sidecar_per_change": round(bytes_per_change, 0),
        "gateway_cpu_ms_per_change": round(cpu_max, 2),
        "steady_bytes_per_s_per_peer": round(steady_per_peer, 1),
        "gateway_rss_mib": round(rss_max, 1),
        "zone_update_ms": round(zone_max, 3),
        "change_to_all_sidecars_p50_ms": round(p50_all, 1),
        "change_to_one_sidecar_p99_ms": round(p99_each, 1),
        "steady_bytes_per_s_per_sidecar": round(steady_per_sidecar, 1),
        "steady_gateway_cpu_percent": round(idle_max * 100.0, 2),
        "first_view_bytes_whole": round(whole_view, 0),
        "first_view_bytes_declared": round(declared_view, 0),
        "bytes_to_declared_sidecar_per_change": round(declared_per_change, 0),
        "links": links,
        "changes": changes,
    });
    runtime.shutdown_background();
    drop(gateways);
    println!("{json}");
    Ok(())
}

/// Stops the gateways and the run once `limit` has passed, whatever it waits for.
fn watchdog(pids: Vec<u32>, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("the run took longer than {limit:?}: stopping it");
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) with a pid this process started; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::process::exit(2);
    });
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

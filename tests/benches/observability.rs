//! Observability benchmark: what sharing the golden metrics costs. Prints, beside the targets:
//! 1. the metric exchange per peer in steady traffic at 100 and 1,000 services, from the real
//!    book and codec on a simulated clock (frames as a peer would get them), and the bytes two
//!    real gateways with a few sidecars under traffic count on their links over 30 s;
//! 2. the heap of a golden book holding 10,000 series in every retained interval, counted by
//!    this binary's allocator;
//! 3. `stat services --all-clusters` at 1,000 services of 2 clusters: the book's part in
//!    process, the gateway's operator RPC on a real gateway holding those series (sent over the
//!    real peer protocol), and the CLI process as an operator runs it.
//!
//! Figures are printed, never asserted; the last line is one JSON object.
//! Run: `cargo bench -p strait-tests --bench observability`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::json;
use strait_federation::catalog::{ExportLog, Position};
use strait_federation::golden::{self, Counts, Direction, GoldenBook, GoldenConfig, SeriesKey};
use strait_federation::proto::golden::Batch;
use strait_federation::proto::operator::{Latency, StatRequest, StatRow};
use strait_federation::proto::peer::PeerFrame;
use strait_federation::proto::peer::peer_frame::Body;
use strait_federation::session::{PeerSession, SessionConfig};
use strait_federation::wire;
use strait_gateway::api::contexts::{Client, ContextFile};
use strait_gateway::config::MetricsConfig;
use strait_tests::rogue::RoguePeer;
use strait_tests::workloads::{api, client, linked_pair, wait_route};
use strait_tests::{Gateway, Mesh, http_get_host, metric, proc_memory, wait_for};

/// Counts the bytes on the heap (allocated minus freed), so that a book's size is measured,
/// not estimated.
struct CountingAllocator;

static HEAP: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's guarantees are the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// The simulated clock's start: a Unix time on an interval boundary.
const START_MS: u64 = 1_800_000_000_000;
/// How long the simulated exchange runs.
const SIMULATED_SECONDS: u64 = 60;
/// Series held in every retained interval for the memory figure.
const MEMORY_SERIES: usize = 10_000;
/// Services of each cluster for the `stat` figures.
const STAT_SERVICES: usize = 1_000;
/// Calls timed in process and through the RPC; CLI runs (each a process).
const CALLS: usize = 200;
const CLI_RUNS: usize = 100;
/// How long the real gateways' links are watched.
const WATCH: Duration = Duration::from_secs(30);
const EXCHANGE_TARGET_BYTES_PER_SECOND: f64 = 1024.0;
const STAT_TARGET: Duration = Duration::from_millis(100);

/// The golden configuration of a gateway with the default `metrics` section.
fn config() -> GoldenConfig {
    MetricsConfig::default().golden()
}

/// A deterministic stream of small numbers, so that traffic varies from second to second the
/// same way in every run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

/// A second of one series' requests: 2 to 6, answered in 1–5 ms (three latency buckets), one
/// in 50 with a 5xx.
fn requests(dice: &mut Dice) -> Counts {
    let mut counts = Counts::default();
    for _ in 0..2 + dice.roll(5) {
        counts.latency[3 + dice.roll(3) as usize] += 1;
        let class = if dice.roll(50) == 0 { 4 } else { 1 };
        counts.status_classes[class] += 1;
    }
    counts
}

/// One second of sidecar reports in cluster `local`: for each of `services` in namespace shop,
/// what it served (called from `local` or `other`) and what its workload sent.
fn second_of_traffic(
    local: &str,
    other: &str,
    services: usize,
    dice: &mut Dice,
) -> Vec<(SeriesKey, Counts)> {
    let callers = [local, other];
    let mut series = Vec::with_capacity(2 * services);
    for i in 0..services {
        let key = |direction, service: usize, source: &str, destination: &str| SeriesKey {
            direction,
            namespace: "shop".into(),
            service: format!("svc-{service}"),
            source_cluster: source.into(),
            destination_cluster: destination.into(),
            workload: format!("deploy/svc-{i}"),
        };
        let served = key(Direction::Inbound, i, callers[i % 2], local);
        let sent = key(
            Direction::Outbound,
            (i + 1) % services,
            local,
            callers[(i + 1) % 2],
        );
        series.push((served, requests(dice)));
        series.push((sent, requests(dice)));
    }
    series
}

/// Records an interval's five seconds of reports in a book, each at its second.
fn record_interval(
    book: &mut GoldenBook,
    interval: u64,
    traffic: impl Fn(&mut Dice) -> Vec<(SeriesKey, Counts)>,
    dice: &mut Dice,
) {
    let interval_ms = book.config().interval_ms;
    for second in 0..interval_ms / 1000 {
        book.record(interval * interval_ms + second * 1000, traffic(dice));
    }
}

/// What cluster west's gateway sends its peer east for the intervals of the simulated minute.
struct Exchange {
    services: usize,
    intervals: u64,
    frames: usize,
    /// Whole frames: length prefix and `PeerFrame`.
    bytes: usize,
    /// Of which the names frames (each name once a session), and the batches' series.
    names_bytes: usize,
    series_bytes: usize,
    series: usize,
}

impl Exchange {
    fn per_second(&self) -> f64 {
        self.bytes as f64 * 1000.0 / (self.intervals * config().interval_ms) as f64
    }

    /// Once every name was sent: the batches alone.
    fn steady_per_second(&self) -> f64 {
        (self.bytes - self.names_bytes) as f64 * 1000.0
            / (self.intervals * config().interval_ms) as f64
    }
}

/// A minute of steady traffic through west's book on a simulated clock: a report a second,
/// sealed on the gateway's 250 ms tick, every batch the peer would get framed. The empty
/// batches sealed before the minute (the book's first seals) are left out.
fn exchange(services: usize) -> Exchange {
    let config = config();
    let (interval_ms, grace_ms) = (config.interval_ms, config.grace_ms);
    let mut book = GoldenBook::new("west", config);
    let mut dice = Dice(services as u64);
    let minute_ms = SIMULATED_SECONDS * 1000;
    let first = START_MS / interval_ms;
    let intervals = minute_ms / interval_ms;
    let mut after = 0;
    // The peer session frames the batches as it sends them: names once, then indices.
    let mut session = PeerSession::new(
        SessionConfig::default(),
        Position::NONE,
        &ExportLog::new(1),
        std::time::Instant::now(),
    );
    while session.poll_transmit(std::time::Instant::now()).is_some() {}
    let mut exchange = Exchange {
        services,
        intervals,
        frames: 0,
        bytes: 0,
        names_bytes: 0,
        series_bytes: 0,
        series: 0,
    };
    // The last interval of the minute is sealed once its grace period is over.
    let mut now = START_MS;
    while now <= START_MS + minute_ms + grace_ms {
        if now < START_MS + minute_ms && now.is_multiple_of(1000) {
            book.record(now, second_of_traffic("west", "east", services, &mut dice));
        }
        book.seal(now);
        book.expire(now);
        let (batches, next) = book.outgoing(after, "east");
        after = next;
        for batch in batches {
            if !(first..first + intervals).contains(&batch.interval) {
                continue;
            }
            exchange.frames += 1;
            exchange.series_bytes +=
                prost::encoding::message::encoded_len_repeated(5, &batch.series);
            exchange.series += batch.series.len();
            session.queue_golden(vec![batch]);
            while let Some(frame) = session.poll_transmit(std::time::Instant::now()) {
                let bytes = wire::encode(&frame).len();
                if matches!(frame.body, Some(Body::GoldenNames(_))) {
                    exchange.names_bytes += bytes;
                }
                exchange.bytes += bytes;
            }
        }
        now += 250;
    }
    exchange
}

/// The heap of books holding [`MEMORY_SERIES`] series in every retained interval.
struct Memory {
    series_intervals: usize,
    /// The sealing gateway's book: its intervals, and the log of batches still to pass on.
    own: i64,
    /// The same book once its log is gone: the intervals alone.
    intervals_only: i64,
    /// A peer's book holding the same figures as received.
    peer: i64,
    /// The bench process's resident size grew by this while filling the sealing book.
    rss_growth: u64,
}

fn heap() -> i64 {
    HEAP.load(Ordering::SeqCst)
}

fn memory() -> Result<Memory> {
    let config = config();
    let (interval_ms, grace_ms, retained) = (config.interval_ms, config.grace_ms, config.retained);
    let first = START_MS / interval_ms;
    let mut dice = Dice(3);
    let rss_before = proc_memory(std::process::id(), "VmRSS")?;
    let before = heap();
    let mut book = GoldenBook::new("west", config.clone());
    let traffic = |dice: &mut Dice| second_of_traffic("west", "east", MEMORY_SERIES / 2, dice);
    for interval in first..first + retained {
        record_interval(&mut book, interval, traffic, &mut dice);
        book.seal((interval + 1) * interval_ms + grace_ms);
    }
    let own = heap() - before;
    let rss_growth = proc_memory(std::process::id(), "VmRSS")?.saturating_sub(rss_before);
    let series_intervals = book.series_held();
    let last_seal_ms = (first + retained) * interval_ms + grace_ms;

    // From the batches' copies on: they end up in the peer's log.
    let before_peer = heap();
    let batches = book.outgoing(0, "east").0;
    let mut peer = GoldenBook::new("east", config);
    for batch in batches {
        peer.merge(batch, last_seal_ms, "west")?;
    }
    let peer_heap = heap() - before_peer;
    ensure!(
        peer.series_held() == series_intervals,
        "the peer's book lost series"
    );
    drop(peer);

    // The log goes once it is older than the retained span; the intervals stay.
    book.expire(last_seal_ms + retained * interval_ms + 1);
    let intervals_only = heap() - before;
    ensure!(
        book.series_held() == series_intervals,
        "expiring the log lost series"
    );
    Ok(Memory {
        series_intervals,
        own,
        intervals_only,
        peer: peer_heap,
        rss_growth,
    })
}

/// Every retained interval of cluster `origin` (1,000 services called from `origin` and
/// `caller`) up to the one before `now_ms`, as the batches its gateway sends.
fn origin_batches(origin: &str, caller: &str, now_ms: u64) -> Vec<Batch> {
    let config = config();
    let (interval_ms, grace_ms, retained) = (config.interval_ms, config.grace_ms, config.retained);
    let mut book = GoldenBook::new(origin, config);
    let mut dice = Dice(origin.len() as u64);
    let newest = now_ms / interval_ms - 1;
    for interval in newest + 1 - retained..=newest {
        let traffic = |dice: &mut Dice| second_of_traffic(origin, caller, STAT_SERVICES, dice);
        record_interval(&mut book, interval, traffic, &mut dice);
        book.seal((interval + 1) * interval_ms + grace_ms);
    }
    book.outgoing(0, "east").0
}

/// The batches of two clusters, rogue and north, each called from the other too.
fn two_clusters(now_ms: u64) -> Vec<Batch> {
    let mut batches = origin_batches("rogue", "north", now_ms);
    batches.extend(origin_batches("north", "rogue", now_ms));
    batches
}

/// What the gateway's `Stat` does for `stat services --all-clusters` once it holds the book's
/// lock: the rows of the window, grouped by service and clusters, as the RPC's rows.
fn stat_services(book: &GoldenBook, now_ms: u64, window_ms: u64) -> Vec<StatRow> {
    let rows = book.rows(now_ms, window_ms);
    golden::group(&rows, |r| {
        (r.key.direction == Direction::Inbound).then(|| {
            (
                r.key.namespace.clone(),
                r.key.service.clone(),
                r.key.source_cluster.clone(),
                r.key.destination_cluster.clone(),
            )
        })
    })
    .into_iter()
    .map(
        |((namespace, service, source_cluster, destination_cluster), s)| StatRow {
            namespace,
            service,
            workload: String::new(),
            source_cluster,
            destination_cluster,
            requests: s.requests,
            success_rate: s.success_rate,
            rps: s.rps,
            latency_ms: s
                .latency_ms
                .map(|[p50, p95, p99]| Latency { p50, p95, p99 }),
            tcp_connections: s.tcp_connections,
            tcp_bytes: s.tcp_bytes,
            stale: s.stale,
            seconds: s.seconds,
        },
    )
    .collect()
}

/// p50 and p99 of timed calls.
#[derive(Clone, Copy)]
struct Spread {
    p50: Duration,
    p99: Duration,
}

impl Spread {
    fn of(mut times: Vec<Duration>) -> Self {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
        }
    }

    fn line(&self) -> String {
        format!("p50 {:.2} ms, p99 {:.2} ms", ms(self.p50), ms(self.p99))
    }

    fn json(&self) -> serde_json::Value {
        json!({"p50_ms": ms(self.p50), "p99_ms": ms(self.p99)})
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn time(calls: usize, mut call: impl FnMut() -> Result<()>) -> Result<Spread> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call()?;
        times.push(started.elapsed());
    }
    Ok(Spread::of(times))
}

/// The in-process `stat` at 1,000 services of 2 clusters over every retained interval.
struct InProcessStat {
    rows: usize,
    series_held: usize,
    default_window: Spread,
    longest_window: Spread,
}

fn in_process_stat() -> Result<InProcessStat> {
    let config = config();
    let now_ms = START_MS;
    let mut book = GoldenBook::new("east", config.clone());
    for batch in two_clusters(now_ms) {
        book.merge(batch, now_ms, "west")?;
    }
    let default_ms = u64::from(strait_gateway::golden::DEFAULT_WINDOW_SECONDS) * 1000;
    let longest_ms = config.retained * config.interval_ms;
    let rows = stat_services(&book, now_ms, default_ms).len();
    Ok(InProcessStat {
        rows,
        series_held: book.series_held(),
        default_window: time(CALLS, || {
            std::hint::black_box(stat_services(&book, now_ms, default_ms));
            Ok(())
        })?,
        longest_window: time(CALLS, || {
            std::hint::black_box(stat_services(&book, now_ms, longest_ms));
            Ok(())
        })?,
    })
}

/// What the real gateways showed.
struct Real {
    /// Golden bytes per second each way, as the gateways' own counters say.
    west_to_east: f64,
    east_to_west: f64,
    /// All of the link's UDP bytes per second west to east, for scale.
    udp_west_to_east: f64,
    series_west: f64,
    requests: u64,
    failed: u64,
    rpc_demo: Spread,
    cli_demo: Spread,
    rpc_loaded: Spread,
    cli_loaded: Spread,
    loaded_rows: usize,
}

fn counter(gateway: &Gateway, name: &str, labels: &[&str]) -> Result<f64> {
    Ok(metric(&gateway.metrics()?, name, labels).unwrap_or(0.0))
}

/// A gauge (every metric carries the gateway's `cluster` label).
fn gauge(gateway: &Gateway, name: &str) -> Result<f64> {
    metric(&gateway.metrics()?, name, &[]).ok_or_else(|| anyhow!("no {name} in /metrics"))
}

fn golden_tx(gateway: &Gateway, peer: &str) -> Result<f64> {
    let peer = format!("peer=\"{peer}\"");
    counter(
        gateway,
        "strait_peer_golden_bytes_total",
        &[&peer, "direction=\"tx\""],
    )
}

fn udp_tx(gateway: &Gateway, peer: &str) -> Result<f64> {
    let peer = format!("peer=\"{peer}\"");
    counter(
        gateway,
        "strait_peer_udp_bytes",
        &[&peer, "direction=\"tx\""],
    )
}

/// Sleeps until `phase_ms` into an interval of Unix time: a window that starts there holds
/// whole intervals' sends (gateways send at the end of an interval plus the grace period).
fn sleep_to_phase(phase_ms: u64) {
    let interval_ms = config().interval_ms;
    let now = strait_io::clock::unix_now_ms();
    let wait = (phase_ms + interval_ms - now % interval_ms) % interval_ms;
    std::thread::sleep(Duration::from_millis(wait));
}

/// Requests every 250 ms on each route until told to stop: (answered 200, not).
fn traffic(routes: Vec<(SocketAddr, String)>, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut answered, mut failed) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        for (proxy, host) in &routes {
            match http_get_host(*proxy, host, "/") {
                Ok((200, _)) => answered += 1,
                _ => failed += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (answered, failed)
}

/// Rows of `stat services --all-clusters` through the RPC.
fn stat_rpc(runtime: &tokio::runtime::Runtime, client: &mut Client) -> Result<Vec<StatRow>> {
    let request = StatRequest {
        by: "services".into(),
        all_clusters: true,
        ..StatRequest::default()
    };
    Ok(runtime.block_on(client.stat(request))?.into_inner().rows)
}

/// Items of `strait --context east stat services --all-clusters -o json`.
fn stat_cli(mesh: &Mesh) -> Result<usize> {
    let text = mesh
        .ctl(
            "east",
            &["stat", "services", "--all-clusters", "-o", "json"],
        )
        .success()?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["items"]
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| anyhow!("no items in {text}"))
}

fn real_gateways() -> Result<Real> {
    let (mesh, mut east, mut west) = linked_pair(None)?;
    let _api_west = api(&mesh, "west", "api-west-0")?;
    let _api_east = api(&mesh, "east", "api-east-0")?;
    let web_west = client(&mesh, "west", &[])?;
    let web_east = client(&mesh, "east", &[])?;
    let (west_proxy, east_proxy) = (web_west.addr("proxy")?, web_east.addr("proxy")?);
    let mut routes = Vec::new();
    for (proxy, serving) in [(west_proxy, "west"), (east_proxy, "east")] {
        for target in ["west", "east"] {
            let host = format!("{target}.api.shop.svc.clusterset.local");
            wait_route(proxy, &host, target).with_context(|| format!("from {serving}'s client"))?;
            routes.push((proxy, host));
        }
    }

    // 1. Steady demo traffic: each client calls the api of both clusters, 4 times a second.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || traffic(routes, stop))
    };
    // Every interval in the window must have had traffic from its start.
    std::thread::sleep(Duration::from_secs(6));
    sleep_to_phase(3_000);
    let before = [
        golden_tx(&west, "east")?,
        golden_tx(&east, "west")?,
        udp_tx(&west, "east")?,
    ];
    std::thread::sleep(WATCH);
    let after = [
        golden_tx(&west, "east")?,
        golden_tx(&east, "west")?,
        udp_tx(&west, "east")?,
    ];
    let series_west = gauge(&west, "strait_golden_series")?;
    stop.store(true, Ordering::SeqCst);
    let (requests, failed) = load
        .join()
        .map_err(|_| anyhow!("the traffic thread panicked"))?;
    let rate = |i: usize| (after[i] - before[i]) / WATCH.as_secs_f64();

    // 3. `stat` on east: at demo scale, then holding 1,000 services of two more clusters.
    let runtime = tokio::runtime::Runtime::new()?;
    let context = ContextFile::load(&mesh.config)?.select(Some("east"), &mesh.config)?;
    let mut operator = runtime.block_on(context.connect())?;
    let rpc_demo = time(CALLS, || stat_rpc(&runtime, &mut operator).map(drop))?;
    let cli_demo = time(CLI_RUNS, || stat_cli(&mesh).map(drop))?;

    let mut rogue = runtime.block_on(RoguePeer::join(&mesh, "east", east.quic))?;
    let batches = two_clusters(strait_io::clock::unix_now_ms());
    runtime.block_on(async {
        for batch in batches {
            rogue
                .send(&PeerFrame {
                    body: Some(Body::Golden(batch)),
                })
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let loaded_rows = wait_for(
        Duration::from_secs(20),
        "1,000 services of rogue and north in east",
        || {
            let rows = stat_rpc(&runtime, &mut operator)?;
            let foreign = rows
                .iter()
                .filter(|r| r.destination_cluster == "rogue" || r.destination_cluster == "north")
                .count();
            Ok((foreign >= 2 * STAT_SERVICES).then_some(rows.len()))
        },
    )?;
    let rpc_loaded = time(CALLS, || stat_rpc(&runtime, &mut operator).map(drop))?;
    let cli_loaded = time(CLI_RUNS, || {
        let items = stat_cli(&mesh)?;
        ensure!(
            items >= 2 * STAT_SERVICES,
            "the CLI printed {items} rows, not every service of rogue and north"
        );
        Ok(())
    })?;
    rogue.endpoint.close(0u32.into(), b"done");
    drop(web_west);
    drop(web_east);
    east.stop()?;
    west.stop()?;
    Ok(Real {
        west_to_east: rate(0),
        east_to_west: rate(1),
        udp_west_to_east: rate(2),
        series_west,
        requests,
        failed,
        rpc_demo,
        cli_demo,
        rpc_loaded,
        cli_loaded,
        loaded_rows,
    })
}

/// The machine's 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let load_at_start = load_average();
    // Memory first, while nothing else is on the heap or running.
    let memory = memory()?;
    let exchanges = [exchange(100), exchange(1_000)];
    println!("strait observability benchmark (golden metrics)");
    println!(
        "machine: {} cores, load average {load_at_start} at the start (other work skews the timings)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!();
    println!(
        "1. metric exchange per peer, steady traffic, from the real book and codec ({SIMULATED_SECONDS} simulated seconds, a report a second, each service one inbound and one outbound series, 2-6 req/s each):"
    );
    for e in &exchanges {
        let target = if e.services == 100 {
            format!(
                "  (target < 1024 B/s: {:.2}x of target)",
                e.steady_per_second() / EXCHANGE_TARGET_BYTES_PER_SECOND
            )
        } else {
            String::new()
        };
        println!(
            "   {:>5} services: {:>7.0} bytes/s per peer once the session sent its names{target}; {:.0} bytes/s over the session's first minute (names included)",
            e.services,
            e.steady_per_second(),
            e.per_second()
        );
        println!(
            "          {} batches for {} intervals, {:.0} bytes a batch frame incl. its 4-byte prefix ({} series, {:.1} bytes each); names sent once: {} bytes",
            e.frames,
            e.intervals,
            (e.bytes - e.names_bytes) as f64 / e.frames as f64,
            e.series / e.frames,
            e.series_bytes as f64 / e.series as f64,
            e.names_bytes
        );
    }
    println!();

    let per = |bytes: i64| bytes as f64 / memory.series_intervals as f64;
    println!(
        "2. memory of a golden book, {MEMORY_SERIES} series in each of {} retained intervals ({} series-intervals), heap counted by the allocator:",
        config().retained,
        memory.series_intervals
    );
    println!(
        "   sealing gateway's book: {:.1} MiB ({:.0} bytes per series-interval), of which the intervals {:.1} MiB ({:.0} bytes) and the log of batches to pass on {:.1} MiB",
        mib(memory.own),
        per(memory.own),
        mib(memory.intervals_only),
        per(memory.intervals_only),
        mib(memory.own - memory.intervals_only)
    );
    println!(
        "   a peer's book holding the same as received: {:.1} MiB ({:.0} bytes per series-interval)",
        mib(memory.peer),
        per(memory.peer)
    );
    println!(
        "   cross-check: the bench process's RSS grew {:.1} MiB filling the sealing book (allocator overhead included)",
        memory.rss_growth as f64 / (1024.0 * 1024.0)
    );
    println!();

    let stat = in_process_stat()?;
    println!(
        "3. stat services --all-clusters, in process: GoldenBook::rows + group + rows of the reply, {STAT_SERVICES} services x 2 clusters x {} intervals ({} series held, {} rows), {CALLS} calls:",
        config().retained,
        stat.series_held,
        stat.rows
    );
    println!(
        "   default 30 s window: {}   60 s window (every retained interval): {}",
        stat.default_window.line(),
        stat.longest_window.line()
    );
    println!();

    println!(
        "real gateways (two linked processes on loopback, two sidecars and a sample app in each cluster)..."
    );
    let real = real_gateways()?;
    println!(
        "1. real wire, demo scale ({:.0} s, {} requests answered, {} failed; strait_golden_series of west {:.0}): golden bytes/s west->east {:.1}, east->west {:.1} (strait_peer_golden_bytes_total, encoded batches); all UDP west->east {:.0} bytes/s",
        WATCH.as_secs_f64(),
        real.requests,
        real.failed,
        real.series_west,
        real.west_to_east,
        real.east_to_west,
        real.udp_west_to_east
    );
    println!(
        "3. stat services --all-clusters against east, operator RPC on one kept connection ({CALLS} calls): demo scale {}; holding 1,000 services of 2 more clusters ({} rows) {}  (target p99 < 100 ms: {:.2}x of target)",
        real.rpc_demo.line(),
        real.loaded_rows,
        real.rpc_loaded.line(),
        real.rpc_loaded.p99.as_secs_f64() / STAT_TARGET.as_secs_f64()
    );
    println!(
        "   the CLI as an operator runs it (`strait stat services --all-clusters -o json`, a process each, dial and TLS included, {CLI_RUNS} runs): demo scale {}; loaded {}",
        real.cli_demo.line(),
        real.cli_loaded.line()
    );
    let load_at_end = load_average();
    println!(
        "(whole run {:.0} s; load average {load_at_end} at the end)",
        started.elapsed().as_secs_f64()
    );

    let exchange_json: Vec<_> = exchanges
        .iter()
        .map(|e| {
            json!({
                "services": e.services,
                "bytes_per_second_per_peer": e.steady_per_second(),
                "bytes_per_second_first_minute": e.per_second(),
                "names_bytes_once": e.names_bytes,
                "bytes_per_frame": (e.bytes - e.names_bytes) as f64 / e.frames as f64,
                "series_bytes_per_series": e.series_bytes as f64 / e.series as f64,
                "frames": e.frames,
                "intervals": e.intervals,
            })
        })
        .collect();
    println!(
        "{}",
        json!({
            "benchmark": "strait-observability",
            "load_average": {"start": load_at_start, "end": load_at_end},
            "exchange": {
                "simulated": exchange_json,
                "target_bytes_per_second_at_100": EXCHANGE_TARGET_BYTES_PER_SECOND,
                "real_demo": {
                    "golden_bytes_per_second_west_to_east": real.west_to_east,
                    "golden_bytes_per_second_east_to_west": real.east_to_west,
                    "udp_bytes_per_second_west_to_east": real.udp_west_to_east,
                    "seconds": WATCH.as_secs_f64(),
                },
            },
            "memory": {
                "series_intervals": memory.series_intervals,
                "own_book_bytes": memory.own,
                "own_book_mib": mib(memory.own),
                "bytes_per_series_interval": per(memory.own),
                "intervals_only_bytes": memory.intervals_only,
                "peer_book_bytes": memory.peer,
                "rss_growth_bytes": memory.rss_growth,
            },
            "stat": {
                "in_process_default_window": stat.default_window.json(),
                "in_process_60s_window": stat.longest_window.json(),
                "in_process_rows": stat.rows,
                "rpc_demo": real.rpc_demo.json(),
                "rpc_loaded": real.rpc_loaded.json(),
                "rpc_loaded_rows": real.loaded_rows,
                "cli_demo": real.cli_demo.json(),
                "cli_loaded": real.cli_loaded.json(),
                "target_p99_ms": ms(STAT_TARGET),
            },
        })
    );
    Ok(())
}

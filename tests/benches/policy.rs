//! Policy benchmark: what a request's authorization costs a sidecar, and how long a policy takes
//! to reach every gateway of a mesh.
//!
//! 1. Evaluation, in-process (`policy/evaluation.rs`): the sidecar's policy table built from the
//!    documents a gateway streams, with 1, 100 and 10,000 rules, all protecting the called
//!    service (every rule is looked at) or spread over the namespace's services (the table's
//!    lookup skips the other services' policies); beside a table without policies, the path
//!    normalization that comes before each decision, and the time to build the table.
//! 2. Convergence (`policy/gateways.rs`): three gateways as real processes on loopback, linked
//!    in a chain through a hub (east - west - north); from a change applied in east to the
//!    moment west (one hop) and north (two hops) merged it, read from the gateways' own
//!    timestamped log lines; also over a direct link, and with 10,000 policies already held;
//!    beside an in-process baseline (`policy/exchange.rs`: the same exchange through
//!    `PeerSession` and `PolicyExchange`, without sockets or disk).
//!
//! Figures are printed, never asserted. Run: `cargo bench -p strait-tests --bench policy`
//! (`-- evaluation` for part 1 alone, which needs no gateway binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};

#[path = "policy/evaluation.rs"]
mod evaluation;
#[path = "policy/exchange.rs"]
mod exchange;
#[path = "policy/gateways.rs"]
mod gateways;

/// Counts heap allocations, so that the figures can say whether a decision allocates.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees are the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Rounds of each in-process timing; the median is reported.
const ROUNDS: usize = 15;
/// Samples of each convergence figure (each a new policy, then its deletion).
const SAMPLES: usize = 20;
/// Policies already held in the loaded runs.
const BULK: usize = 10_000;
/// Policies per bulk file (the operator API takes files of up to 4 MiB).
const BULK_PER_FILE: usize = 2_500;
const EVALUATION_TARGET_NS: f64 = 2_000.0;
const CONVERGENCE_TARGET: Duration = Duration::from_millis(500);

/// One in-process figure: nanoseconds per call (median, lowest and highest round) and heap
/// allocations per call.
pub struct PerCall {
    pub median_ns: f64,
    pub low_ns: f64,
    pub high_ns: f64,
    pub allocations: f64,
}

/// Times `call`: ROUNDS rounds of a fixed number of calls, sized so that a round takes ~20 ms.
fn per_call(mut call: impl FnMut()) -> PerCall {
    let mut calls: u64 = 1;
    loop {
        let started = Instant::now();
        for _ in 0..calls {
            call();
        }
        let took = started.elapsed();
        if took >= Duration::from_millis(20) {
            break;
        }
        let scale = (20e6 / took.as_nanos().max(1) as f64).clamp(2.0, 100.0);
        calls = ((calls as f64) * scale).ceil() as u64;
    }
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                call();
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - allocations_before) as f64
        / (ROUNDS as f64 * calls as f64);
    rounds.sort_by(|a, b| a.total_cmp(b));
    PerCall {
        median_ns: rounds[rounds.len() / 2],
        low_ns: rounds[0],
        high_ns: rounds[rounds.len() - 1],
        allocations,
    }
}

fn percentile(values: &[Duration], share: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * share).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// CPU time, in clock ticks: of the whole machine (busy and in all), and of this benchmark's
/// processes (itself, its children that ended, and the gateways it runs).
pub struct CpuSample {
    busy: u64,
    total: u64,
    ours: u64,
}

impl CpuSample {
    pub fn now(gateways: &[u32]) -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let machine: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let field = |i: usize| machine.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        let total = busy + field(3) + field(4);
        let mut ours = strait_tests::proc_cpu_ticks("self", 4)?;
        for pid in gateways {
            ours += strait_tests::proc_cpu_ticks(&pid.to_string(), 2)?;
        }
        Ok(Self { busy, total, ours })
    }

    /// The share of the machine that other processes used since `before`.
    pub fn others_since(&self, before: &CpuSample) -> f64 {
        let others = (self.busy - before.busy).saturating_sub(self.ours - before.ours);
        others as f64 / (self.total - before.total).max(1) as f64
    }
}

/// A probe policy (denies cluster `north` calls to `api`), as JSON.
fn probe_json(namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "policy.strait.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetRef": {"kind": "Service", "name": "api"},
            "action": "deny",
            "rules": [{"from": [{"clusters": ["north"]}]}],
        },
    })
}

/// The same, as `strait apply -f` reads it.
fn probe_yaml(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  \
         targetRef: {{kind: Service, name: api}}\n  action: deny\n  \
         rules:\n    - from: [{{clusters: [north]}}]\n"
    )
}

/// The namespace and name of the n-th bulk policy.
fn bulk_key(n: usize) -> (String, String) {
    (format!("bulk{}", n % 10), format!("bulk-{n}"))
}

fn line(label: &str, values: &[Duration]) {
    println!(
        "  {label:48} median {:>7.2} ms   p90 {:>7.2} ms   max {:>7.2} ms",
        ms(percentile(values, 0.5)),
        ms(percentile(values, 0.9)),
        ms(percentile(values, 1.0)),
    );
}

fn report_evaluation(evaluation: &evaluation::Evaluation, other_cpu: f64) {
    let baseline = evaluation.rows[0].figure.median_ns;
    println!(
        "evaluation, in-process: ns per call, median of {ROUNDS} rounds (lowest-highest round), heap allocations per call"
    );
    println!(
        "  request: GET /orders/42 from {} to shop/api; rules name the caller",
        evaluation::CALLER
    );
    println!(
        "  but another path (each checked in full) unless said otherwise; the last rule matches"
    );
    for row in &evaluation.rows {
        println!(
            "  {:58} {:>9.1} ns ({:>8.1}-{:>8.1}) {:>8.1}x empty {:>6.1} allocs",
            row.label,
            row.figure.median_ns,
            row.figure.low_ns,
            row.figure.high_ns,
            row.figure.median_ns / baseline,
            row.figure.allocations,
        );
    }
    println!(
        "  target: under {EVALUATION_TARGET_NS:.0} ns at 100 rules; worst case (all on the called service, each with its own sources) {:.0} ns: {:.2}x of target",
        evaluation.at_hundred_ns,
        evaluation.at_hundred_ns / EVALUATION_TARGET_NS
    );
    println!(
        "  building the table (Policies::from_documents), as a sidecar does for every view whose policies changed:"
    );
    for row in &evaluation.builds {
        println!(
            "  {:58} {:>9.2} ms ({:>8.2}-{:>8.2}) {:>9.0} allocs",
            row.label,
            row.figure.median_ns / 1e6,
            row.figure.low_ns / 1e6,
            row.figure.high_ns / 1e6,
            row.figure.allocations,
        );
    }
    println!(
        "  other processes used {:.0} % of the machine meanwhile",
        other_cpu * 100.0
    );
    println!();
}

fn report_gateways(real: &gateways::Processes) {
    println!(
        "convergence: three gateways as processes on loopback, east - west - north (a chain through west)"
    );
    println!(
        "  each sample: a new AuthorizationPolicy applied in east through its operator API (a connection kept"
    );
    println!(
        "  open, dialled as the CLI dials), then deleted; arrival: the gateway's own timestamped log line"
    );
    println!(
        "  \"policy changed by a peer\" (merged into its set), against the wall clock just before the call;"
    );
    println!("  {SAMPLES} samples per line");
    let chain: &[&str] = &["west, 1 hop", "north, 2 hops"];
    let series: [(&str, &(gateways::Series, gateways::Series), &[&str]); 5] = [
        ("empty set, chain", &real.chain_empty, chain),
        (
            "empty set, chain, the client's socket with TCP_NODELAY",
            &real.chain_empty_no_delay,
            chain,
        ),
        (
            "empty set, direct link east - north added",
            &real.direct_empty,
            &["north, direct"],
        ),
        ("10,000 policies held, chain", &real.chain_loaded, chain),
        (
            "10,000 policies held, chain, TCP_NODELAY",
            &real.chain_loaded_no_delay,
            chain,
        ),
    ];
    let mut worst = Duration::ZERO;
    for (title, (applies, deletes), targets) in series {
        println!("  {title}:");
        line("apply call answered", &applies.call);
        line("delete call answered", &deletes.call);
        for (w, target) in targets.iter().enumerate() {
            line(&format!("apply reached {target}"), &applies.arrivals[w]);
            line(&format!("delete reached {target}"), &deletes.arrivals[w]);
            worst = worst
                .max(percentile(&applies.arrivals[w], 1.0))
                .max(percentile(&deletes.arrivals[w], 1.0));
        }
        if targets.len() == 2 {
            let second_hop: Vec<Duration> = applies.arrivals[1]
                .iter()
                .zip(&applies.arrivals[0])
                .chain(deletes.arrivals[1].iter().zip(&deletes.arrivals[0]))
                .map(|(north, west)| north.saturating_sub(*west))
                .collect();
            line("west's merge to north's (hop 2 alone)", &second_hop);
        } else {
            let direct = applies.via[0]
                .iter()
                .chain(&deletes.via[0])
                .filter(|peer| *peer == "east")
                .count();
            println!(
                "  north heard it first from east itself in {direct} of {} changes",
                2 * SAMPLES
            );
        }
    }
    println!(
        "  target: under {} ms to every gateway; worst sample {:.1} ms: {}",
        CONVERGENCE_TARGET.as_millis(),
        ms(worst),
        if worst < CONVERGENCE_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  10,000 policies in {} files: apply calls {:.0} ms; all merged in west after {:.0} ms, in north after {:.0} ms",
        BULK.div_ceil(BULK_PER_FILE),
        ms(real.bulk_applies),
        ms(real.bulk_to_west),
        ms(real.bulk_to_north),
    );
    let live: Vec<String> = real
        .live
        .iter()
        .map(|(cluster, count)| format!("{cluster} {count}"))
        .collect();
    println!(
        "  live AuthorizationPolicies at the end (each gateway's /metrics): {}",
        live.join(", ")
    );
    line(
        "operator API call without work, as the CLI dials",
        &real.round_trip[0],
    );
    line(
        "operator API call without work, TCP_NODELAY",
        &real.round_trip[1],
    );
    line(
        "an apply with the CLI (process, TLS handshake, call)",
        &real.cli_apply,
    );
    line(
        "north's /metrics gauge after its log line (2 ms polls)",
        &real.gauge_lags,
    );
    println!(
        "  other processes used {:.0} % of the machine meanwhile",
        real.other_cpu * 100.0
    );
    println!();
}

fn report_memory(
    empty: &exchange::MemoryFigures,
    loaded: &exchange::MemoryFigures,
    bulk: Duration,
    real: &gateways::Processes,
) {
    println!(
        "in-process baseline: the same exchange through PeerSession and PolicyExchange, frames encoded"
    );
    println!("and decoded, no socket, no disk ({SAMPLES} applies and {SAMPLES} deletes each)");
    for (title, figures) in [("empty set", empty), ("10,000 policies held", loaded)] {
        let west: Vec<Duration> = figures.samples.iter().map(|s| s[0]).collect();
        let north: Vec<Duration> = figures.samples.iter().map(|s| s[1]).collect();
        println!("  {title}:");
        line("reached west, 1 hop", &west);
        line("reached north, 2 hops", &north);
        println!(
            "  {:48} {:.2} ms to JSON ({:.2} MiB), {:.2} ms to write and sync",
            "a state write (west's book)",
            ms(figures.state_encode),
            figures.state_bytes as f64 / (1024.0 * 1024.0),
            ms(figures.state_write),
        );
        println!(
            "  {:48} {:.3} ms ({:.0} allocs)",
            "one session sync with nothing to send",
            figures.idle_sync.median_ns / 1e6,
            figures.idle_sync.allocations,
        );
    }
    println!(
        "  10,000 policies from east's book to north's: {:.0} ms",
        ms(bulk)
    );
    let ratio = |real: &[Duration], memory: &exchange::MemoryFigures| {
        let memory: Vec<Duration> = memory.samples.iter().map(|s| s[1]).collect();
        percentile(real, 0.5).as_secs_f64() / percentile(&memory, 0.5).as_secs_f64()
    };
    println!(
        "  ratio, processes over in-process, applies reaching north (medians): empty {:.0}x, 10,000 held {:.1}x",
        ratio(&real.chain_empty.0.arrivals[1], empty),
        ratio(&real.chain_loaded.0.arrivals[1], loaded),
    );
}

fn main() -> Result<()> {
    println!("strait policy benchmark");
    println!();

    let before = CpuSample::now(&[])?;
    let evaluation = evaluation::evaluate()?;
    report_evaluation(&evaluation, CpuSample::now(&[])?.others_since(&before));
    if std::env::args().any(|a| a == "evaluation") {
        return Ok(());
    }

    let dir = tempfile::tempdir()?;
    let mut memory = exchange::MemoryMesh::chain()?;
    exchange::measure(&mut memory, "warm", dir.path())?;
    let memory_empty = exchange::measure(&mut memory, "empty", dir.path())?;
    let memory_bulk = memory.bulk()?;
    let memory_loaded = exchange::measure(&mut memory, "loaded", dir.path())?;

    let real = gateways::run()?;
    report_gateways(&real);
    report_memory(&memory_empty, &memory_loaded, memory_bulk, &real);
    Ok(())
}

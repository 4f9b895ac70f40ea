//! Choosing where a request goes: peak-EWMA latency with the power of two choices, over the
//! targets a caller offers (this cluster's endpoints first; other clusters when none of those
//! is usable). Targets that failed to connect, or answered with gateway errors (502, 503,
//! 504) several times in a row, are set aside (ejected) for a backoff that grows with
//! consecutive failures: the circuit opens for that endpoint, and traffic goes to the others,
//! or to other clusters when none is left. No clock or randomness of its own: callers pass `now` and a random
//! number, so the choices are tested exactly.

use std::hash::Hash;
use std::time::{Duration, Instant};

/// How fast old latencies are forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for a target never measured (optimistic, so new targets get tried).
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// The first and the longest time a failing target is set aside.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Gateway errors in a row that eject a target (Envoy's consecutive gateway failures,
/// Linkerd's failure accrual).
pub const CONSECUTIVE_ERRORS: u32 = 5;
/// Targets unused for this long are forgotten.
const FORGET: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Stats {
    /// Peak-EWMA of latency, in seconds.
    ewma: f64,
    updated: Instant,
    pending: u32,
    failures: u32,
    failed_until: Option<Instant>,
    /// Gateway errors answered in a row.
    errors_in_a_row: u32,
}

impl Stats {
    fn new(now: Instant) -> Self {
        Self {
            ewma: DEFAULT_RTT.as_secs_f64(),
            updated: now,
            pending: 0,
            failures: 0,
            failed_until: None,
            errors_in_a_row: 0,
        }
    }

    /// The latency estimate decayed to `now`, times the requests in flight plus one.
    fn cost(&self, now: Instant) -> f64 {
        self.decayed(now) * f64::from(self.pending + 1)
    }

    /// The estimate decays towards zero while no sample comes in, so a target that was slow
    /// once gets tried again, however fast its rivals are: decaying towards a fixed floor
    /// (1 ms, say) would starve it for good behind a rival that answers faster than the floor.
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.ewma * (-elapsed / DECAY.as_secs_f64()).exp()
    }

    fn usable(&self, now: Instant) -> bool {
        self.failed_until.is_none_or(|until| now >= until)
    }
}

/// A cheap random number for choices (not secrets): xorshift64*, seeded per thread from the
/// system's generator, so a choice costs no system call.
pub fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(strait_io::random::random_u64() | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A request in flight to a target: counted in its load until it ends. Dropped without
/// [`InFlight::end`] (a cancelled or failed request), it leaves no latency sample.
pub struct InFlight<'a, T: Clone + Eq + Hash> {
    balancer: &'a std::sync::Mutex<Balancer<T>>,
    target: T,
    started: Instant,
    done: bool,
}

impl<'a, T: Clone + Eq + Hash> InFlight<'a, T> {
    /// Counts a request to `target` from now.
    pub fn start(balancer: &'a std::sync::Mutex<Balancer<T>>, target: T) -> Self {
        let started = Instant::now();
        lock(balancer).start(&target, started);
        Self {
            balancer,
            target,
            started,
            done: false,
        }
    }

    /// The connection is ready and the request goes out: its latency counts from here, so
    /// the handshake of a new connection is not held against the target for the next 10 s
    /// (a connection is made once; its requests are what the choice is about).
    pub fn sending(&mut self) {
        self.started = Instant::now();
    }

    /// The request got its answer: its latency is a sample.
    pub fn end(mut self) {
        self.done = true;
        let now = Instant::now();
        lock(self.balancer).end(&self.target, now - self.started, now);
    }

    /// The answer was a gateway error: its latency is a sample, and enough of them in a row
    /// eject the target.
    pub fn end_with_error(mut self) {
        self.done = true;
        let now = Instant::now();
        lock(self.balancer).end_with_error(&self.target, now - self.started, now);
    }

    /// Connecting failed: the target is set aside for a backoff.
    pub fn fail(mut self) {
        self.done = true;
        let now = Instant::now();
        let mut balancer = lock(self.balancer);
        balancer.abandon(&self.target, now);
        balancer.fail(&self.target, now);
    }
}

impl<T: Clone + Eq + Hash> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.balancer).abandon(&self.target, Instant::now());
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Latency and failure statistics per target.
#[derive(Debug)]
pub struct Balancer<T> {
    /// Looked up three times a request: with foldhash (keyed per process), not SipHash, whose
    /// look-ups were 2 % of the calling sidecar's instructions.
    stats: foldhash::HashMap<T, Stats>,
}

impl<T> Default for Balancer<T> {
    fn default() -> Self {
        Self {
            stats: foldhash::HashMap::default(),
        }
    }
}

impl<T: Clone + Eq + Hash> Balancer<T> {
    /// Whether a target may be chosen now (not backing off after failures).
    pub fn usable(&self, target: &T, now: Instant) -> bool {
        self.stats.get(target).is_none_or(|s| s.usable(now))
    }

    /// Picks one of `candidates` not backing off: of two chosen at random (from `random`), the
    /// one with the lower cost. `None` when every candidate is backing off.
    pub fn pick(&self, candidates: &[T], now: Instant, random: u64) -> Option<T> {
        if let [only] = candidates {
            return self.usable(only, now).then(|| only.clone());
        }
        // One look-up per candidate, for whether it may be chosen and for its cost.
        let usable: Vec<(&T, Option<&Stats>)> = candidates
            .iter()
            .map(|target| (target, self.stats.get(target)))
            .filter(|(_, stats)| stats.is_none_or(|s| s.usable(now)))
            .collect();
        match usable.len() {
            0 => None,
            1 => Some(usable[0].0.clone()),
            n => {
                let a = (random % n as u64) as usize;
                let mut b = ((random >> 32) % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let cost = |at: usize| usable[at].1.map_or(0.0, |s| s.cost(now));
                Some(if cost(b) < cost(a) {
                    usable[b].0.clone()
                } else {
                    usable[a].0.clone()
                })
            }
        }
    }

    /// Picks from the first tier that has a usable target, leaving out the targets in
    /// `avoid` (those that already failed this request) while another is usable in any tier,
    /// so a retry goes elsewhere, to another cluster if need be, as Envoy's `previous_hosts`
    /// retry predicate does. When only avoided targets are usable, one of them is tried again.
    pub fn pick_in_tiers(
        &self,
        tiers: &[Vec<T>],
        avoid: &[T],
        now: Instant,
        mut random: impl FnMut() -> u64,
    ) -> Option<T> {
        let mut pick_first = |leave_out: &[T]| {
            tiers.iter().find_map(|tier| {
                if leave_out.is_empty() {
                    return self.pick(tier, now, random());
                }
                let others: Vec<T> = tier
                    .iter()
                    .filter(|t| !leave_out.contains(t))
                    .cloned()
                    .collect();
                self.pick(&others, now, random())
            })
        };
        pick_first(avoid).or_else(|| pick_first(&[]))
    }

    fn stats(&mut self, target: &T, now: Instant) -> &mut Stats {
        self.stats
            .entry(target.clone())
            .or_insert_with(|| Stats::new(now))
    }

    /// A request to `target` starts.
    pub fn start(&mut self, target: &T, now: Instant) {
        self.stats(target, now).pending += 1;
    }

    /// A request to `target` ended after `latency` (to its response headers).
    pub fn end(&mut self, target: &T, latency: Duration, now: Instant) {
        let stats = self.sample(target, latency, now);
        stats.failures = 0;
        stats.failed_until = None;
        stats.errors_in_a_row = 0;
    }

    /// A request to `target` got a gateway error after `latency`: after
    /// [`CONSECUTIVE_ERRORS`] in a row the target is ejected for a growing backoff.
    pub fn end_with_error(&mut self, target: &T, latency: Duration, now: Instant) {
        let stats = self.sample(target, latency, now);
        stats.errors_in_a_row += 1;
        if stats.errors_in_a_row >= CONSECUTIVE_ERRORS {
            stats.errors_in_a_row = 0;
            self.fail(target, now);
        }
    }

    /// Takes a latency sample of a request that ended.
    fn sample(&mut self, target: &T, latency: Duration, now: Instant) -> &mut Stats {
        let stats = self.stats(target, now);
        stats.pending = stats.pending.saturating_sub(1);
        let rtt = latency.as_secs_f64();
        let current = stats.decayed(now);
        // Peak: a slower sample is taken at once, faster ones only decay in.
        stats.ewma = if rtt > current {
            rtt
        } else {
            let elapsed = now.saturating_duration_since(stats.updated).as_secs_f64();
            let weight = (-elapsed / DECAY.as_secs_f64()).exp();
            current * weight + rtt * (1.0 - weight)
        };
        stats.updated = now;
        stats
    }

    /// A request to `target` ended without a latency worth keeping (cancelled, or refused
    /// after the connection was made).
    pub fn abandon(&mut self, target: &T, now: Instant) {
        let stats = self.stats(target, now);
        stats.pending = stats.pending.saturating_sub(1);
    }

    /// Connecting to `target` failed: set it aside for a growing backoff.
    pub fn fail(&mut self, target: &T, now: Instant) {
        let stats = self.stats(target, now);
        stats.failures = stats.failures.saturating_add(1);
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << (stats.failures - 1).min(6))
            .min(BACKOFF_MAX);
        stats.failed_until = Some(now + backoff);
    }

    /// Clears the failures of the targets `which` picks, so they are tried again at once: what
    /// set them aside is known to be over (the gateway they go through is back).
    pub fn forgive(&mut self, which: impl Fn(&T) -> bool) {
        for (_, stats) in self.stats.iter_mut().filter(|(t, _)| which(t)) {
            stats.failures = 0;
            stats.failed_until = None;
            stats.errors_in_a_row = 0;
        }
    }

    /// Forgets targets neither used nor failing for a while (endpoints that went away).
    pub fn forget_idle(&mut self, now: Instant) {
        self.stats.retain(|_, s| {
            s.pending > 0
                || now.saturating_duration_since(s.updated) < FORGET
                || s.failed_until.is_some_and(|until| until > now)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A small deterministic generator, so every choice is reproducible.
    fn randoms(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    /// A target that counts how often it is hashed, that is, looked up.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Counted(u32);

    thread_local! {
        static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    impl Hash for Counted {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            HASHED.with(|hashed| hashed.set(hashed.get() + 1));
            self.0.hash(state);
        }
    }

    #[test]
    fn a_pick_looks_each_candidate_up_once() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        let candidates: Vec<Counted> = (0..5).map(Counted).collect();
        for target in &candidates {
            balancer.start(target, now);
        }
        for random in randoms(7).take(50) {
            HASHED.with(|hashed| hashed.set(0));
            assert!(balancer.pick(&candidates, now, random).is_some());
            assert_eq!(HASHED.with(std::cell::Cell::get), candidates.len());
        }
    }

    #[test]
    fn forgiven_targets_are_tried_again_at_once_and_the_others_stay_aside() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        for _ in 0..6 {
            balancer.fail(&"remote", now);
            balancer.fail(&"local", now);
        }
        assert!(!balancer.usable(&"remote", now + Duration::from_secs(10)));
        balancer.forgive(|t| *t == "remote");
        assert!(balancer.usable(&"remote", now));
        assert!(!balancer.usable(&"local", now + Duration::from_secs(10)));
        // Forgiven, it starts again from the first backoff.
        balancer.fail(&"remote", now);
        assert!(balancer.usable(&"remote", now + BACKOFF_MIN));
    }

    #[test]
    fn a_slow_endpoint_gets_little_traffic() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        let targets = ["fast", "slow", "fast2"];
        balancer.end(&"fast", Duration::from_millis(1), now);
        balancer.end(&"fast2", Duration::from_millis(1), now);
        balancer.end(&"slow", Duration::from_millis(50), now);
        let mut counts = HashMap::new();
        for random in randoms(7).take(3000) {
            *counts
                .entry(balancer.pick(&targets, now, random).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("slow"), None, "{counts:?}");
        assert!(
            counts["fast"] > 1000 && counts["fast2"] > 1000,
            "{counts:?}"
        );
    }

    #[test]
    fn requests_in_flight_spread_the_load() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        for _ in 0..10 {
            balancer.start(&"a", now);
        }
        let picks: Vec<_> = randoms(3)
            .take(100)
            .map(|r| balancer.pick(&["a", "b"], now, r).unwrap())
            .collect();
        assert!(picks.iter().all(|p| *p == "b"));
    }

    #[test]
    fn a_failed_endpoint_is_avoided_then_tried_again_after_its_backoff() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        balancer.fail(&"dead", now);
        for random in randoms(11).take(100) {
            assert_eq!(balancer.pick(&["dead", "live"], now, random), Some("live"));
        }
        assert_eq!(balancer.pick(&["dead"], now, 1), None);
        let later = now + BACKOFF_MIN;
        assert_eq!(balancer.pick(&["dead"], later, 1), Some("dead"));
        // A second failure doubles the backoff; a success clears it.
        balancer.fail(&"dead", later);
        assert!(!balancer.usable(&"dead", later + BACKOFF_MIN));
        assert!(balancer.usable(&"dead", later + BACKOFF_MIN * 2));
        balancer.end(&"dead", Duration::from_millis(1), later + BACKOFF_MIN * 2);
        balancer.fail(&"dead", later + BACKOFF_MIN * 2);
        assert!(balancer.usable(&"dead", later + BACKOFF_MIN * 3));
    }

    #[test]
    fn old_latency_decays_so_a_recovered_endpoint_is_used_again() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        balancer.end(&"a", Duration::from_millis(500), now);
        balancer.end(&"b", Duration::from_millis(2), now);
        assert_eq!(balancer.pick(&["a", "b"], now, 0), Some("b"));
        let later = now + DECAY * 10;
        balancer.end(&"b", Duration::from_millis(2), later);
        assert_eq!(balancer.pick(&["a", "b"], later, 0), Some("a"));
    }

    #[test]
    fn a_request_dropped_in_flight_leaves_no_load_behind() {
        let balancer = std::sync::Mutex::new(Balancer::default());
        let now = Instant::now();
        let cancelled = InFlight::start(&balancer, "a");
        assert_eq!(lock(&balancer).stats["a"].pending, 1);
        drop(cancelled);
        assert_eq!(lock(&balancer).stats["a"].pending, 0);
        InFlight::start(&balancer, "a").fail();
        assert!(!lock(&balancer).usable(&"a", now));
        assert_eq!(lock(&balancer).stats["a"].pending, 0);
    }

    #[test]
    fn forgotten_targets_are_only_the_idle_ones() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        balancer.start(&"busy", now);
        balancer.end(&"idle", Duration::from_millis(1), now);
        balancer.forget_idle(now + FORGET);
        assert_eq!(balancer.stats.len(), 1);
    }

    /// An endpoint that answers gateway errors fast would win every latency comparison: five
    /// in a row eject it, for longer each time, and one success brings it back to normal.
    #[test]
    fn an_endpoint_answering_gateway_errors_is_ejected_then_readmitted() {
        let start = Instant::now();
        let mut balancer = Balancer::default();
        let (good, bad) = ("good", "bad");
        balancer.end(&good, Duration::from_millis(5), start);
        for i in 0..CONSECUTIVE_ERRORS - 1 {
            balancer.end_with_error(&bad, Duration::from_micros(100), start);
            assert!(
                balancer.usable(&bad, start),
                "ejected after {} errors",
                i + 1
            );
        }
        balancer.end_with_error(&bad, Duration::from_micros(100), start);
        assert!(!balancer.usable(&bad, start));
        for random in randoms(7).take(50) {
            assert_eq!(balancer.pick(&[good, bad], start, random), Some(good));
        }
        // Back after the first backoff; five more errors eject it for twice as long.
        let later = start + BACKOFF_MIN;
        assert!(balancer.usable(&bad, later));
        for _ in 0..CONSECUTIVE_ERRORS {
            balancer.end_with_error(&bad, Duration::from_micros(100), later);
        }
        assert!(!balancer.usable(&bad, later + BACKOFF_MIN));
        assert!(balancer.usable(&bad, later + 2 * BACKOFF_MIN));
        // A success clears the count: four errors after it do not eject.
        balancer.end(&bad, Duration::from_millis(1), later + 2 * BACKOFF_MIN);
        for _ in 0..CONSECUTIVE_ERRORS - 1 {
            balancer.end_with_error(&bad, Duration::from_micros(100), later + 2 * BACKOFF_MIN);
        }
        assert!(balancer.usable(&bad, later + 2 * BACKOFF_MIN));
    }

    /// A target measured slower once is not starved behind a rival faster than any fixed
    /// floor: its estimate decays until it is tried again, and a fast answer keeps it in use.
    #[test]
    fn a_target_slow_once_is_tried_again_behind_a_sub_millisecond_rival() {
        let mut balancer = Balancer::default();
        let start = Instant::now();
        balancer.end(&"once-slow", Duration::from_millis(20), start);
        let mut tried = None;
        for (step, random) in randoms(5).take(1200).enumerate() {
            let now = start + Duration::from_millis(100) * step as u32;
            let picked = balancer.pick(&["once-slow", "fast"], now, random).unwrap();
            balancer.end(&picked, Duration::from_micros(300), now);
            if picked == "once-slow" {
                tried = Some(now - start);
                break;
            }
        }
        let tried = tried.expect("the once-slow target was never tried again in 120 s");
        // 20 ms decays below 0.3 ms after 10 s * ln(20 / 0.3), about 42 s.
        assert!(tried < Duration::from_secs(45), "{tried:?}");
    }

    #[test]
    fn a_retry_leaves_out_the_targets_that_failed_it_while_another_is_usable() {
        let mut balancer = Balancer::default();
        let now = Instant::now();
        // "fast" wins every comparison; it answered this request with an error.
        balancer.end(&"fast", Duration::from_micros(100), now);
        balancer.end(&"slow", Duration::from_millis(5), now);
        let tiers = vec![vec!["fast", "slow"], vec!["remote"]];
        let mut random = randoms(9);
        let mut next = || random.next().unwrap_or(1);
        assert_eq!(
            balancer.pick_in_tiers(&tiers, &[], now, &mut next),
            Some("fast")
        );
        assert_eq!(
            balancer.pick_in_tiers(&tiers, &["fast"], now, &mut next),
            Some("slow")
        );
        // Every local target failed it: the next tier.
        assert_eq!(
            balancer.pick_in_tiers(&tiers, &["fast", "slow"], now, &mut next),
            Some("remote")
        );
        // Nothing else is usable: a failed target is tried again rather than none.
        balancer.fail(&"remote", now);
        assert_eq!(
            balancer.pick_in_tiers(&tiers, &["fast", "slow"], now, &mut next),
            Some("fast")
        );
    }
}

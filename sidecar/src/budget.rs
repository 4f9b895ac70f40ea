//! The retry budget: retries may add at most a share of the live traffic (plus a small floor,
//! so a quiet service can still retry), counted over a sliding window. When every request
//! fails, retries stop at the budget instead of multiplying the load on a failing service.
//! Sans-IO: callers pass the time.

use std::time::{Duration, Instant};

/// Retries allowed per request for a budget of `percent` % (at most 100).
fn ratio(percent: u32) -> f64 {
    f64::from(percent.min(100)) / 100.0
}

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// Requests and retries seen over the last window.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retries allowed per request sent (0.2: retries add at most 20 %).
    ratio: f64,
    /// Retries allowed per second whatever the traffic.
    floor_per_second: u32,
    bucket_length: Duration,
    /// Per bucket: (bucket number, requests, retries).
    buckets: [(u64, u64, u64); BUCKETS],
    start: Instant,
}

impl RetryBudget {
    /// A budget of `percent` % of requests plus `floor_per_second`, over `window`.
    pub fn new(percent: u32, floor_per_second: u32, window: Duration, now: Instant) -> Self {
        Self {
            ratio: ratio(percent),
            floor_per_second,
            bucket_length: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(u64::MAX, 0, 0); BUCKETS],
            start: now,
        }
    }

    /// Follows a changed share, keeping what the window has counted.
    pub fn set_percent(&mut self, percent: u32) {
        self.ratio = ratio(percent);
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let number = (now.saturating_duration_since(self.start).as_nanos()
            / self.bucket_length.as_nanos().max(1)) as u64;
        let slot = &mut self.buckets[(number % BUCKETS as u64) as usize];
        if slot.0 != number {
            *slot = (number, 0, 0);
        }
        slot
    }

    /// Requests and retries within the window ending now.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let current = (now.saturating_duration_since(self.start).as_nanos()
            / self.bucket_length.as_nanos().max(1)) as u64;
        self.buckets
            .iter()
            .filter(|(number, _, _)| {
                *number != u64::MAX && current.saturating_sub(*number) < BUCKETS as u64
            })
            .fold((0, 0), |(requests, retries), (_, q, r)| {
                (requests + q, retries + r)
            })
    }

    /// Counts a first try.
    pub fn record_request(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Whether one more retry fits the budget; if so it is counted.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let window_seconds = (self.bucket_length * BUCKETS as u32).as_secs_f64();
        let allowed =
            self.ratio * requests as f64 + f64::from(self.floor_per_second) * window_seconds;
        if (retries as f64) < allowed.floor() {
            self.bucket(now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_storm_is_held_to_the_budget() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(20, 1, Duration::from_secs(10), start);
        // 10 s of a total outage at 100 requests/s, each wanting 3 retries.
        let mut retries = 0;
        for i in 0..1_000u64 {
            let now = start + Duration::from_millis(i * 10);
            budget.record_request(now);
            for _ in 0..3 {
                retries += u64::from(budget.try_retry(now));
            }
        }
        // 20 % of 1,000 requests plus 1/s over the window: at most 200 + 10.
        assert!(retries <= 210, "{retries} retries");
        assert!(retries >= 190, "the budget is used, not starved: {retries}");
    }

    #[test]
    fn a_quiet_service_can_still_retry_and_old_traffic_ages_out() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(20, 1, Duration::from_secs(10), start);
        // No requests at all: the floor allows 10 retries over the window.
        let granted = (0..20).filter(|_| budget.try_retry(start)).count();
        assert_eq!(granted, 10);
        // 20 s later the window holds nothing of that: the floor is free again.
        let later = start + Duration::from_secs(20);
        assert!(budget.try_retry(later));
    }
}

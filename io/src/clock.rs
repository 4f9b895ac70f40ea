//! The wall clock, read here so that federation's types are handed the time instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (zero if the clock is before it).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch (policy versions follow them).
pub fn unix_now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Nanoseconds since the Unix epoch (span times).
pub fn unix_now_nanos() -> u64 {
    since_epoch().as_nanos() as u64
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_agree() {
        let ms = unix_now_ms();
        let s = unix_now();
        assert!(
            s >= ms / 1000 && s <= ms / 1000 + 1,
            "{s} s against {ms} ms"
        );
        assert!(s > 1_700_000_000, "the clock reads {s}");
    }
}

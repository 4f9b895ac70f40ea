//! How well a connected peer is reached, judged from the QUIC connection itself (no probe
//! service): the packets it lost, its round-trip time against the best this connection has
//! seen, and how long the peer has been silent. A degraded peer stays linked and keeps its
//! services; sidecars try other clusters first while it is. Sans-IO: fed samples with their
//! time, it says when the verdict changes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples the loss ratio of a busy link is taken over...
const WINDOW: usize = 5;
/// ...when at least this many packets were sent in them.
const MIN_PACKETS: u64 = 50;
/// A quiet link (keep-alives, health frames: a packet or two a second, as when sidecars
/// already avoid it) is judged over this many samples...
const QUIET_WINDOW: usize = 30;
/// ...once this many packets were sent and at least this many lost.
const QUIET_MIN_PACKETS: u64 = 20;
const QUIET_MIN_LOST: u64 = 4;
/// Lost packets over the window, as a share of those sent, that make a peer degraded.
const LOSS_RATIO: f64 = 0.05;
/// The RTT that counts as high: above this many times the best seen...
const RTT_FACTOR: f64 = 3.0;
/// ...and above the best by at least this much (loopback's microseconds are noisy).
const RTT_MARGIN: Duration = Duration::from_millis(50);
/// Consecutive high-RTT samples that make a peer degraded.
const RTT_SAMPLES: u32 = 3;
/// Silence on a connected session (health frames come every 5 s) that makes it degraded.
const SILENCE: Duration = Duration::from_secs(12);
/// Recovery points a degraded peer needs to be healthy again: a sample with enough traffic and
/// no trouble gives [`CONCLUSIVE`], a quiet one (too few packets to judge loss) gives 1. So a
/// busy link recovers 5 s after its trouble ends, and a quiet one (sidecars avoid a degraded
/// peer, so it goes quiet) is tried again after 30 s, as outlier ejection does.
const RECOVER_POINTS: u32 = 30;
const CONCLUSIVE: u32 = 6;

/// One look at a connection.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Packets sent and lost since the connection began (QUIC's counters).
    pub sent: u64,
    pub lost: u64,
    /// How long since the peer last sent anything the gateway read.
    pub silent_for: Duration,
}

/// The verdict on one connection.
#[derive(Debug, Default)]
pub struct Quality {
    /// (sent, lost) deltas of the last samples.
    window: VecDeque<(u64, u64)>,
    last: Option<Sample>,
    best_rtt: Option<Duration>,
    high_rtt: u32,
    good: u32,
    degraded: Option<String>,
}

impl Quality {
    /// Why the peer is degraded; `None` while it is not.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.duration_since(last.at) >= SAMPLE_EVERY)
    }

    /// Takes a sample; true when the verdict changed.
    pub fn observe(&mut self, sample: Sample) -> bool {
        if let Some(last) = self.last {
            let sent = sample.sent.saturating_sub(last.sent);
            let lost = sample.lost.saturating_sub(last.lost);
            self.window.push_back((sent, lost));
            if self.window.len() > QUIET_WINDOW {
                self.window.pop_front();
            }
        }
        self.last = Some(sample);
        let best = self.best_rtt.map_or(sample.rtt, |b| b.min(sample.rtt));
        self.best_rtt = Some(best);
        let threshold = best.mul_f64(RTT_FACTOR).max(best + RTT_MARGIN);
        self.high_rtt = if sample.rtt > threshold {
            self.high_rtt + 1
        } else {
            0
        };
        let busy = self.sum(WINDOW).0 >= MIN_PACKETS;
        let reason = if sample.silent_for >= SILENCE {
            Some(format!(
                "nothing heard for {} s",
                sample.silent_for.as_secs()
            ))
        } else if let Some((sent, lost, over)) = self.lossy_window(busy) {
            Some(format!(
                "{:.0} % of packets lost over the last {over} s ({lost} of {sent})",
                lost as f64 * 100.0 / sent as f64,
            ))
        } else if self.high_rtt >= RTT_SAMPLES {
            Some(format!(
                "RTT {:.0} ms, against {:.1} ms at best",
                sample.rtt.as_secs_f64() * 1000.0,
                best.as_secs_f64() * 1000.0
            ))
        } else {
            None
        };
        match (reason, self.degraded.is_some()) {
            (Some(reason), _) => {
                self.good = 0;
                let changed = self.degraded.is_none();
                if changed {
                    // What follows is judged on what comes after.
                    self.window.clear();
                }
                self.degraded = Some(reason);
                changed
            }
            (None, true) => {
                self.good += if busy { CONCLUSIVE } else { 1 };
                if self.good >= RECOVER_POINTS {
                    self.degraded = None;
                    self.good = 0;
                    true
                } else {
                    false
                }
            }
            (None, false) => false,
        }
    }

    /// Packets (sent, lost) over the last `samples` samples.
    fn sum(&self, samples: usize) -> (u64, u64) {
        self.window
            .iter()
            .rev()
            .take(samples)
            .fold((0, 0), |(s, l), (ds, dl)| (s + ds, l + dl))
    }

    /// The loss that makes, or keeps, the peer degraded: (sent, lost, over how many seconds).
    /// A busy link is judged over the last few seconds; a quiet one over half a minute. Once
    /// degraded, any loss over the last few seconds holds the verdict: a peer the sidecars
    /// avoid sends too little to be judged again by the rules that found it, and old evidence
    /// must not hold it either (it would double the time to recover).
    fn lossy_window(&self, busy: bool) -> Option<(u64, u64, usize)> {
        let lossy = |sent: u64, lost: u64| lost as f64 > sent as f64 * LOSS_RATIO;
        let (busy_sent, busy_lost) = self.sum(WINDOW);
        let held = self.degraded.is_some() && busy_lost > 0;
        if (busy || held) && lossy(busy_sent, busy_lost) {
            return Some((busy_sent, busy_lost, self.window.len().min(WINDOW)));
        }
        let (quiet_sent, quiet_lost) = self.sum(QUIET_WINDOW);
        let quiet = quiet_sent >= QUIET_MIN_PACKETS && quiet_lost >= QUIET_MIN_LOST;
        (self.degraded.is_none() && (busy || quiet) && lossy(quiet_sent, quiet_lost)).then_some((
            quiet_sent,
            quiet_lost,
            self.window.len(),
        ))
    }
}

/// Samples every connected peer's connection when due; when a verdict changes it is logged,
/// counted and sent to the sidecars (their next view names the degraded clusters).
pub fn sample(shared: &crate::Shared, now: Instant) {
    let now_ms = crate::unix_now_ms();
    let mut changed = false;
    for (cluster, status) in crate::lock(&shared.peers).iter_mut() {
        let Some(connection) = status.connection.clone() else {
            continue;
        };
        let id = connection.stable_id();
        if status.quality.as_ref().is_none_or(|(held, _)| *held != id) {
            status.quality = Some((id, Quality::default()));
        }
        let silent_for = status.health.as_ref().map_or(Duration::ZERO, |h| {
            Duration::from_millis(now_ms.saturating_sub(h.received_ms))
        });
        let Some((_, quality)) = status.quality.as_mut() else {
            continue;
        };
        if !quality.due(now) {
            continue;
        }
        let stats = connection.stats();
        let moved = quality.observe(Sample {
            at: now,
            rtt: connection.rtt(),
            sent: stats.path.sent_packets,
            lost: stats.path.lost_packets,
            silent_for,
        });
        if moved {
            changed = true;
            match quality.degraded() {
                Some(reason) => {
                    tracing::warn!(peer = %cluster, reason, "peer degraded: sidecars prefer other clusters")
                }
                None => tracing::info!(peer = %cluster, "peer healthy again"),
            }
        }
        shared
            .metrics
            .peer_degraded
            .with_label_values(&[cluster.as_str()])
            .set(i64::from(quality.degraded().is_some()));
    }
    if changed {
        shared.views_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Feed {
        quality: Quality,
        at: Instant,
        sent: u64,
        lost: u64,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                quality: Quality::default(),
                at: Instant::now(),
                sent: 0,
                lost: 0,
            }
        }

        /// One second of traffic: `sent` packets, `lost` of them lost, at `rtt_ms`.
        fn second(&mut self, sent: u64, lost: u64, rtt_ms: u64, silent_s: u64) -> bool {
            self.at += SAMPLE_EVERY;
            self.sent += sent;
            self.lost += lost;
            self.quality.observe(Sample {
                at: self.at,
                rtt: Duration::from_millis(rtt_ms),
                sent: self.sent,
                lost: self.lost,
                silent_for: Duration::from_secs(silent_s),
            })
        }
    }

    #[test]
    fn heavy_loss_degrades_a_peer_and_a_quiet_spell_of_health_restores_it() {
        let mut feed = Feed::new();
        for _ in 0..5 {
            assert!(!feed.second(200, 1, 1, 0));
        }
        assert_eq!(feed.quality.degraded(), None);
        // 30 % lost: degraded within the window.
        let changed = (0..5).any(|_| feed.second(200, 60, 1, 0));
        assert!(changed);
        let reason = feed.quality.degraded().unwrap().to_owned();
        assert!(reason.contains("% of packets lost"), "{reason}");
        // Healthy again only after the bad samples left the window and five good ones.
        let mut seconds = 0;
        while feed.quality.degraded().is_some() {
            feed.second(200, 0, 1, 0);
            seconds += 1;
            assert!(seconds < 20, "never recovered");
        }
        assert!(seconds >= 5, "{seconds}");
    }

    #[test]
    fn a_degraded_peer_that_went_quiet_is_tried_again_after_thirty_seconds() {
        let mut feed = Feed::new();
        feed.second(200, 0, 1, 0);
        while feed.quality.degraded().is_none() {
            feed.second(200, 100, 1, 0);
        }
        // Sidecars avoid it: a few packets a second, nothing to judge loss by.
        let mut seconds = 0;
        while feed.quality.degraded().is_some() {
            feed.second(5, 0, 1, 0);
            seconds += 1;
            assert!(seconds < 60, "never tried again");
        }
        assert!((30..=35).contains(&seconds), "{seconds}");
    }

    #[test]
    fn a_lost_packet_now_and_then_on_a_quiet_link_says_nothing_but_steady_loss_does() {
        let mut feed = Feed::new();
        for second in 0..60 {
            assert!(!feed.second(2, u64::from(second % 20 == 0), 1, 0));
        }
        assert_eq!(feed.quality.degraded(), None);
        // A third of a keep-alive link's packets lost: degraded within 15 s.
        let mut quiet = Feed::new();
        let mut seconds = 0;
        while quiet.quality.degraded().is_none() {
            quiet.second(2, u64::from(seconds % 3 == 0), 1, 0);
            seconds += 1;
            assert!(seconds <= 15, "not degraded after {seconds} s");
        }
    }

    #[test]
    fn a_quiet_degraded_peer_stays_degraded_while_loss_goes_on_and_recovers_30_s_after_it_ends() {
        let mut quiet = Feed::new();
        let mut second = 0;
        while quiet.quality.degraded().is_none() {
            quiet.second(2, u64::from(second % 3 == 0), 1, 0);
            second += 1;
        }
        // Loss goes on for 40 s: still degraded.
        for second in 0..40 {
            quiet.second(2, u64::from(second % 3 == 0), 1, 0);
            assert!(quiet.quality.degraded().is_some(), "recovered while losing");
        }
        // It ends: tried again after 30 s and some (the last loss leaves the 5 s window first).
        let mut seconds = 0;
        while quiet.quality.degraded().is_some() {
            quiet.second(2, 0, 1, 0);
            seconds += 1;
            assert!(seconds <= 36, "{seconds} s after the loss ended");
        }
    }

    #[test]
    fn a_lasting_rise_in_rtt_degrades_but_a_spike_does_not() {
        let mut feed = Feed::new();
        feed.second(100, 0, 20, 0);
        feed.second(100, 0, 200, 0);
        feed.second(100, 0, 20, 0);
        assert_eq!(feed.quality.degraded(), None, "one spike");
        for _ in 0..RTT_SAMPLES {
            feed.second(100, 0, 200, 0);
        }
        let reason = feed.quality.degraded().unwrap();
        assert!(reason.contains("RTT 200 ms, against 20.0 ms"), "{reason}");
        // Loopback's microsecond RTTs tripling is not degradation.
        let mut fast = Feed::new();
        for rtt in [1, 3, 4, 4, 4, 4] {
            fast.second(100, 0, rtt, 0);
        }
        assert_eq!(fast.quality.degraded(), None);
    }

    #[test]
    fn a_silent_peer_is_degraded_before_its_connection_times_out() {
        let mut feed = Feed::new();
        feed.second(10, 0, 1, 3);
        assert!(feed.second(0, 0, 1, 13));
        assert!(
            feed.quality
                .degraded()
                .unwrap()
                .contains("nothing heard for 13 s")
        );
    }
}

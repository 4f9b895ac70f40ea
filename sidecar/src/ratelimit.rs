//! Rate limits at the inbound sidecar: one token bucket per RateLimitPolicy and caller (or one
//! for all callers), kept in memory and bounded: buckets that filled up again are forgotten
//! first when the table is full.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strait_federation::identity::SpiffeId;
use strait_federation::policy::ratelimit::{Key, Limit, RateLimit, TokenBucket};

/// The most buckets one sidecar keeps.
const MAX_BUCKETS: usize = 100_000;

/// A bucket's identity: the policy, the override that gave the limit, and the caller (empty
/// for a limit shared by all callers).
type BucketKey = (String, Option<usize>, String);

/// The buckets of one sidecar.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<BucketKey, (Limit, TokenBucket)>>,
}

/// A request over a limit: the policy, and when to try again.
pub struct Limited {
    pub policy: String,
    pub retry_after: Duration,
}

impl Limiter {
    /// Takes a token from every limit that applies to `caller`; the first one that has none
    /// refuses the request.
    pub fn admit(
        &self,
        limits: &[RateLimit],
        caller: &SpiffeId,
        now: Instant,
    ) -> Result<(), Limited> {
        if limits.is_empty() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for policy in limits {
            let (limit, index) = policy.limit_for(Some(caller));
            let label = format!("{}/{}", policy.namespace, policy.name);
            let who = match policy.key {
                Key::Caller => caller.to_string(),
                Key::Service => String::new(),
            };
            let key = (label, index, who);
            if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
                buckets.retain(|_, (limit, bucket)| !bucket.is_full(limit, now));
            }
            let (held, bucket) = buckets
                .entry(key)
                .or_insert_with(|| (limit, TokenBucket::new(&limit, now)));
            if *held != limit {
                // The policy changed: start from its new limit.
                *held = limit;
                *bucket = TokenBucket::new(&limit, now);
            }
            if let Err(retry_after) = bucket.take(&limit, now) {
                return Err(Limited {
                    policy: format!("{}/{}", policy.namespace, policy.name),
                    retry_after,
                });
            }
        }
        Ok(())
    }
}

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

/// The tokens one request took, to give back if a later check refuses it.
#[must_use = "give the tokens back if the request is refused after all"]
pub struct Taken(Vec<BucketKey>);

impl Limiter {
    /// Takes a token from every limit that applies to `caller`, or from none: each limit is
    /// looked at first, and the first one without a token refuses the request, so a refused
    /// request costs the other limits nothing.
    pub fn admit(
        &self,
        limits: &[RateLimit],
        caller: &SpiffeId,
        now: Instant,
    ) -> Result<Taken, Limited> {
        if limits.is_empty() {
            return Ok(Taken(Vec::new()));
        }
        let mut buckets = self.lock();
        let mut ready = Vec::with_capacity(limits.len());
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
                .entry(key.clone())
                .or_insert_with(|| (limit, TokenBucket::new(&limit, now)));
            if *held != limit {
                // The policy changed: start from its new limit.
                *held = limit;
                *bucket = TokenBucket::new(&limit, now);
            }
            if let Err(retry_after) = bucket.ready(&limit, now) {
                return Err(Limited {
                    policy: key.0,
                    retry_after,
                });
            }
            ready.push((key, limit));
        }
        // Every bucket had a token under this lock: take them. One forgotten meanwhile to make
        // room was full, as a new one is.
        let mut taken = Vec::with_capacity(ready.len());
        for (key, limit) in ready {
            let (_, bucket) = buckets
                .entry(key.clone())
                .or_insert_with(|| (limit, TokenBucket::new(&limit, now)));
            if bucket.take(&limit, now).is_ok() {
                taken.push(key);
            }
        }
        Ok(Taken(taken))
    }

    /// Gives back the tokens of a request that a later check refused (a quota).
    pub fn give_back(&self, taken: Taken) {
        let mut buckets = self.lock();
        for key in taken.0 {
            if let Some((limit, bucket)) = buckets.get_mut(&key) {
                bucket.give_back(limit);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BucketKey, (Limit, TokenBucket)>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::identity::{Namespace, ServiceName};

    fn limit(name: &str, requests: u32, key: Key) -> RateLimit {
        RateLimit {
            namespace: Namespace::new("shop").unwrap(),
            name: name.into(),
            service: ServiceName::new("api").unwrap(),
            limit: Limit {
                requests,
                per: Duration::from_secs(60),
                burst: requests,
            },
            key,
            overrides: Vec::new(),
        }
    }

    /// A request refused by one limit takes nothing from the others, and tokens given back
    /// (a quota refused the request after) can be taken again.
    #[test]
    fn a_refused_request_costs_no_limit_a_token() {
        let limiter = Limiter::default();
        let caller: SpiffeId = "spiffe://mesh.test/cluster/east/ns/shop/sa/web"
            .parse()
            .unwrap();
        let now = Instant::now();
        // Per caller 3 a minute; shared by all callers 1 a minute.
        let limits = [
            limit("per-caller", 3, Key::Caller),
            limit("shared", 1, Key::Service),
        ];
        assert!(limiter.admit(&limits, &caller, now).is_ok());
        for _ in 0..5 {
            let refused = limiter.admit(&limits, &caller, now).err().unwrap();
            assert_eq!(refused.policy, "shop/shared");
        }
        // The per-caller limit lost one token only, to the admitted request.
        let per_caller = &limits[..1];
        assert!(limiter.admit(per_caller, &caller, now).is_ok());
        let taken = limiter.admit(per_caller, &caller, now).ok().unwrap();
        assert!(limiter.admit(per_caller, &caller, now).is_err());
        limiter.give_back(taken);
        assert!(limiter.admit(per_caller, &caller, now).is_ok());
        assert!(limiter.admit(per_caller, &caller, now).is_err());
    }
}

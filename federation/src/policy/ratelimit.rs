//! RateLimitPolicy: how many requests (HTTP) or connections (TCP) a service's endpoints take,
//! per caller identity or for all callers together, with overrides for some callers; and the
//! token bucket that enforces one limit. Each endpoint's sidecar enforces its own buckets, as
//! Envoy's local rate limit does: a service of N endpoints takes up to N times the limit. A
//! limit that must hold across every endpoint and cluster is a Quota.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::common::{
    MAX_LIST, PolicyMetadata, Source, SourceDocument, TargetRef, check_api_version, period,
    source_of,
};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{Namespace, ServiceName, SpiffeId};

/// A rate: `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

/// Who shares a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Key {
    /// Each caller identity has its own bucket.
    Caller,
    /// All callers share one bucket (per endpoint).
    Service,
}

/// A checked RateLimitPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub namespace: Namespace,
    pub name: String,
    pub service: ServiceName,
    pub limit: Limit,
    pub key: Key,
    /// The first whose source matches the caller gives its limit instead.
    pub overrides: Vec<(Source, Limit)>,
}

impl RateLimit {
    /// The limit for a caller, and the index of the override that gave it (for its bucket).
    pub fn limit_for(&self, caller: Option<&SpiffeId>) -> (Limit, Option<usize>) {
        self.overrides
            .iter()
            .position(|(source, _)| source.matches(caller))
            .map_or((self.limit, None), |i| (self.overrides[i].1, Some(i)))
    }
}

/// A token bucket: full at first, refilled at the limit's rate up to its burst.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &Limit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    fn refill(&mut self, limit: &Limit, now: Instant) {
        let rate = f64::from(limit.requests) / limit.per.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limit.burst));
        self.updated = now;
    }

    /// Takes a token; when there is none, how long until there is one.
    pub fn take(&mut self, limit: &Limit, now: Instant) -> Result<(), Duration> {
        self.ready(limit, now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Whether a token can be taken at `now`, taking none; when not, how long until one can.
    pub fn ready(&mut self, limit: &Limit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            return Ok(());
        }
        let rate = f64::from(limit.requests) / limit.per.as_secs_f64();
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    /// Returns a token taken for a request that was refused afterwards.
    pub fn give_back(&mut self, limit: &Limit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    /// Whether the bucket is full at `now` (then forgetting it changes nothing).
    pub fn is_full(&self, limit: &Limit, now: Instant) -> bool {
        let mut copy = *self;
        copy.refill(limit, now);
        copy.tokens >= f64::from(limit.burst)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimitDocument {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: RateLimitSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimitSpec {
    target_ref: TargetRef,
    limit: LimitDocument,
    #[serde(default = "by_caller")]
    key: Key,
    #[serde(default)]
    overrides: Vec<OverrideDocument>,
}

fn by_caller() -> Key {
    Key::Caller
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitDocument {
    requests: u32,
    per: String,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideDocument {
    from: SourceDocument,
    limit: LimitDocument,
}

/// The longest window a limit may count over.
const MAX_PER: Duration = Duration::from_secs(24 * 3600);

/// Checks a limit: at least one request, over 1 ms to a day.
pub(super) fn limit(
    place: &DocumentPlace,
    at: &str,
    document: LimitDocument,
) -> Result<Limit, DocumentError> {
    if document.requests == 0 {
        return Err(field(
            place,
            format!("{at}.requests"),
            "expected at least 1 (to refuse everything, use an AuthorizationPolicy)",
        ));
    }
    let per = period(&document.per)
        .filter(|per| !per.is_zero() && *per <= MAX_PER)
        .ok_or_else(|| {
            field(
                place,
                format!("{at}.per"),
                format!(
                    "{:?}: expected a duration like 1s, 1m, 1h or 1d (at most a day)",
                    document.per
                ),
            )
        })?;
    let burst = document.burst.unwrap_or(document.requests);
    if burst == 0 {
        return Err(field(place, format!("{at}.burst"), "expected at least 1"));
    }
    Ok(Limit {
        requests: document.requests,
        per,
        burst,
    })
}

/// Parses and checks a RateLimitPolicy document. Errors name the document and the field.
pub fn rate_limit(
    document: serde_json::Value,
    place: &DocumentPlace,
) -> Result<RateLimit, DocumentError> {
    let document: RateLimitDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let service = document.spec.target_ref.required_service(place)?;
    let default = limit(place, "spec.limit", document.spec.limit)?;
    if document.spec.overrides.len() > MAX_LIST {
        return Err(field(
            place,
            "spec.overrides",
            format!("at most {MAX_LIST} entries"),
        ));
    }
    let mut overrides = Vec::with_capacity(document.spec.overrides.len());
    for (i, entry) in document.spec.overrides.into_iter().enumerate() {
        let at = format!("spec.overrides[{i}]");
        let from = source_of(place, &format!("{at}.from"), entry.from)?;
        if !from.request_principals.is_empty()
            || !from.claims.is_empty()
            || !from.locations.is_empty()
            || from.healthy.is_some()
        {
            return Err(field(
                place,
                format!("{at}.from"),
                "an override matches the caller's identity only (clusters, namespaces, \
                 serviceAccounts, identities)",
            ));
        }
        overrides.push((from, limit(place, &format!("{at}.limit"), entry.limit)?));
    }
    Ok(RateLimit {
        namespace,
        name,
        service,
        limit: default,
        key: document.spec.key,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{assert_refused, parse_as};

    const LIMITS: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limits, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  limit: {requests: 10, per: 1s, burst: 5}
  overrides:
    - from: {serviceAccounts: [batch]}
      limit: {requests: 1, per: 1m}
";

    #[test]
    fn a_caller_gets_its_override_or_the_default() {
        let policy = parse_as("limits.yaml", rate_limit, LIMITS).unwrap();
        assert_eq!(policy.key, Key::Caller);
        let web: SpiffeId = "spiffe://m.test/cluster/east/ns/shop/sa/web"
            .parse()
            .unwrap();
        let batch: SpiffeId = "spiffe://m.test/cluster/east/ns/shop/sa/batch"
            .parse()
            .unwrap();
        assert_eq!(policy.limit_for(Some(&web)).0.burst, 5);
        let (limit, index) = policy.limit_for(Some(&batch));
        assert_eq!(
            (limit.requests, limit.per, index),
            (1, Duration::from_secs(60), Some(0))
        );
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        let cases = [
            (
                LIMITS.replace("requests: 10", "requests: 0"),
                "spec.limit.requests",
            ),
            (LIMITS.replace("per: 1s", "per: soon"), "spec.limit.per"),
            (
                LIMITS.replace("per: 1m", "per: 2d"),
                "spec.overrides[0].limit.per",
            ),
            (
                LIMITS.replace("serviceAccounts: [batch]", "serviceAccounts: [Batch]"),
                "spec.overrides[0].from.serviceAccounts[0]",
            ),
            (LIMITS.replace("burst: 5", "burst: 0"), "spec.limit.burst"),
            (LIMITS.replace("burst: 5", "brust: 5"), "brust"),
        ];
        assert_refused("limits.yaml", rate_limit, &cases);
    }

    /// A bucket lets a burst through, then the rate; an idle one fills up again, never beyond
    /// its burst.
    #[test]
    fn the_bucket_gives_a_burst_then_the_rate() {
        let limit = Limit {
            requests: 10,
            per: Duration::from_secs(1),
            burst: 5,
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limit, start);
        for _ in 0..5 {
            assert!(bucket.take(&limit, start).is_ok());
        }
        let wait = bucket.take(&limit, start).unwrap_err();
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
        // One second at 10/s: ten more, but the burst caps the bucket at five.
        let later = start + Duration::from_secs(1);
        let granted = (0..20)
            .filter(|_| bucket.take(&limit, later).is_ok())
            .count();
        assert_eq!(granted, 5);
        assert!(!bucket.is_full(&limit, later));
        assert!(bucket.is_full(&limit, later + Duration::from_secs(1)));
    }
}

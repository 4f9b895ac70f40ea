//! Retries on the outbound path: which requests may be sent again (idempotent methods, or
//! those a route marks), the copy of a small request kept to send again, what counts as a
//! failure worth retrying, and the retry budgets, one per route rule, that keep retries to a
//! share of the live traffic so they cannot multiply an outage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode, Uri, Version};

use crate::budget::RetryBudget;
use crate::connect::{self, Body, BoxError};

/// Retries allowed per second whatever the traffic, so a quiet service can still retry.
const FLOOR_PER_SECOND: u32 = 10;
/// The window over which a budget counts requests and retries.
const WINDOW: Duration = Duration::from_secs(10);

/// Whether a method may be sent twice without changing the outcome (RFC 9110, 9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a response says that another try (likely at another endpoint) may do better.
pub fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// A request as the retry layer holds it.
pub enum Kept {
    /// Small enough to keep: it can be sent again.
    Replay(Replay),
    /// Sent once, streamed.
    Once(Request<Body>),
}

/// Why a request could not be kept: the app's body broke off while it was read.
#[derive(Debug, thiserror::Error)]
#[error("the request body broke off: {0}")]
pub struct BrokenBody(#[source] BoxError);

/// A request kept whole so that it can be sent again.
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Reads the request's body when it is known to be at most `max` bytes; otherwise gives the
    /// request back untouched, to be sent once. Fails when the app's body breaks off.
    pub async fn keep(request: Request<Body>, max: u64) -> Result<Kept, BrokenBody> {
        let small = request
            .body()
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= max);
        if !small {
            let (parts, body) = request.into_parts();
            return Ok(Kept::Once(Request::from_parts(parts, body)));
        }
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(BrokenBody)?;
        Ok(Kept::Replay(Replay {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body: body.to_bytes(),
        }))
    }

    /// One more copy of the request.
    pub fn request(&self) -> Request<Body> {
        let mut request = Request::new(connect::full(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The retry budgets of one sidecar, one per route rule that retries, each following the
/// rule's current `budgetPercent`.
#[derive(Default)]
pub struct Budgets {
    budgets: Mutex<HashMap<String, RetryBudget>>,
}

impl Budgets {
    fn with<T>(
        &self,
        key: &str,
        percent: u32,
        now: Instant,
        f: impl FnOnce(&mut RetryBudget) -> T,
    ) -> T {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let budget = budgets
            .entry(key.to_owned())
            .or_insert_with(|| RetryBudget::new(percent, FLOOR_PER_SECOND, WINDOW, now));
        // The route may have been applied again with another share.
        budget.set_percent(percent);
        f(budget)
    }

    /// Counts a first try under the rule `key`.
    pub fn record_request(&self, key: &str, percent: u32, now: Instant) {
        self.with(key, percent, now, |b| b.record_request(now));
    }

    /// Whether a retry under the rule `key` fits its budget (then it is counted).
    pub fn try_retry(&self, key: &str, percent: u32, now: Instant) -> bool {
        self.with(key, percent, now, |b| b.try_retry(now))
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::BodyExt as _;
    use hyper::body::{Frame, SizeHint};

    use super::*;

    /// A body of a known small size that breaks off before its first byte.
    struct BreaksOff;

    impl hyper::body::Body for BreaksOff {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("connection reset".into())))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(3)
        }
    }

    #[tokio::test]
    async fn a_small_request_is_kept_whole_and_a_large_one_sent_once() {
        let mut small = Request::new(connect::full(Bytes::from_static(b"order")));
        *small.method_mut() = Method::PUT;
        let Ok(Kept::Replay(replay)) = Replay::keep(small, 5).await else {
            panic!("a small body is kept");
        };
        for _ in 0..2 {
            let copy = replay.request();
            assert_eq!(copy.method(), Method::PUT);
            let body = copy.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "order");
        }
        let large = Bytes::from(vec![0; 6]);
        let large = Request::new(connect::full(large));
        assert!(matches!(Replay::keep(large, 5).await, Ok(Kept::Once(_))));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_while_kept_says_so() {
        let request = Request::new(BreaksOff.boxed());
        let Err(error) = Replay::keep(request, 64 << 10).await else {
            panic!("kept a broken body");
        };
        assert_eq!(
            error.to_string(),
            "the request body broke off: connection reset"
        );
    }

    /// A route applied again with another `budgetPercent` changes the budget at once, without
    /// forgetting the traffic it counted.
    #[test]
    fn a_budget_follows_its_rules_changed_percent() {
        let budgets = Budgets::default();
        let now = Instant::now();
        for _ in 0..1000 {
            budgets.record_request("shop/api#0", 0, now);
        }
        let allowed = |percent| {
            (0..10_000)
                .take_while(|_| budgets.try_retry("shop/api#0", percent, now))
                .count()
        };
        let floor_only = allowed(0);
        assert!(floor_only < 1000, "{floor_only}");
        let with_share = allowed(50);
        assert!(
            (400..=600).contains(&with_share),
            "{with_share} more retries at 50 % of 1000 requests"
        );
    }
}

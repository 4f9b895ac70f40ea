//! Tests of the outbound HTTP path's stages, on the in-memory mesh of `crate::testing`: no
//! sockets, and the sending stage given a scripted try in place of the network.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::*;
use crate::testing::{directory, shop};
use crate::{CALLER_READY_HEADER, CLIENT_ID_HEADER};

/// `api`: `/v2` goes to `api-v2` (with timeouts, retries, header edits and a mirror), `/gone`
/// to a service the catalog lacks, the rest to `api` itself.
const ROUTE: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      backendRefs: [{name: api-v2}]
      timeouts: {request: 2s, perTry: 500ms}
      retries: {attempts: 2}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-Route, value: v2}], remove: [X-Debug]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: X-Served-By, value: canary}]}
        - type: RequestMirror
          requestMirror: {backendRef: {name: db}, percent: 10}
    - matches: [{path: {type: PathPrefix, value: /gone}}]
      backendRefs: [{name: api-v3}]
    - backendRefs: [{name: api}]
";

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::new(connect::full(Bytes::from_static(b"hello")));
    *request.method_mut() = method;
    *request.uri_mut() = uri.parse().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, &[])
}

fn local(address: &str) -> Target {
    Target::Local(address.parse::<SocketAddr>().unwrap())
}

fn remote(cluster: &str, service: &str) -> Target {
    Target::remote(
        ClusterName::new(cluster).unwrap(),
        shop(service),
        8080,
        None,
    )
}

fn east() -> ClusterName {
    ClusterName::new("east").unwrap()
}

/// How a request naming `named` (or else `fallback`) is planned in `directory`, as the proxy
/// plans it: through the plans remembered for the directory in use.
fn planned_in(
    directory: &Directory,
    named: Option<String>,
    fallback: Option<&str>,
) -> Result<Planned, Refusal> {
    let directory = Arc::new(directory.clone());
    plan_request(&Plans::default(), &directory, named.as_deref(), fallback)
}

/// The way of a request for `name`, routed by the test route.
fn way<'d>(directory: &'d Directory, name: &str, request: &Request<Body>) -> Way<'d> {
    let planned = planned_in(directory, Some(name.into()), None).unwrap();
    route_request(directory, planned, request, 0).unwrap()
}

/// The status and text of a refusal.
fn refused<T>(result: Result<T, Refusal>) -> (StatusCode, String) {
    match result {
        Ok(_) => panic!("not refused"),
        Err(refusal) => (refusal.status(), refusal.to_string()),
    }
}

#[test]
fn a_mesh_name_is_planned_with_this_clusters_ready_endpoints_first() {
    let directory = directory(&[]);
    let planned = planned_in(&directory, Some("api.shop".into()), None).unwrap();
    assert_eq!(planned.authority, "api.shop");
    assert_eq!(planned.plan.dest.service, shop("api"));
    assert_eq!(planned.plan.tiers[0], [local("127.0.0.1:5000")]);
    assert_eq!(planned.plan.tiers[1], [remote("west", "api")]);
}

#[test]
fn a_name_outside_the_mesh_goes_to_the_service_a_redirected_connection_was_addressed_to() {
    let directory = directory(&[]);
    let planned = planned_in(&directory, Some("example.com".into()), Some("db.shop:8081")).unwrap();
    assert_eq!(planned.authority, "db.shop:8081");
    assert_eq!(planned.plan.dest.service, shop("db"));
    assert_eq!(planned.plan.port.port, 8081);
}

#[test]
fn a_mesh_name_is_taken_as_written_even_when_its_port_is_missing() {
    let directory = directory(&[]);
    let found = planned_in(
        &directory,
        Some("api.shop:9999".into()),
        Some("db.shop:8081"),
    );
    assert_eq!(
        refused(found),
        (StatusCode::NOT_FOUND, "shop/api has no port 9999".into())
    );
}

#[test]
fn a_name_outside_the_mesh_is_not_found_and_a_request_naming_none_is_bad() {
    let directory = directory(&[]);
    assert_eq!(
        refused(planned_in(&directory, Some("example.com".into()), None)),
        (
            StatusCode::NOT_FOUND,
            "example.com is not a service in the mesh catalog".into()
        )
    );
    assert_eq!(
        refused(planned_in(&directory, None, None)),
        (
            StatusCode::BAD_REQUEST,
            "the request names no host (absolute URI or Host header)".into()
        )
    );
    assert_eq!(
        refused(planned_in(&directory, Some("cache.shop".into()), None)),
        (
            StatusCode::NOT_FOUND,
            "shop/cache has no HTTP port: name one".into()
        )
    );
}

#[test]
fn a_route_rule_sends_its_requests_to_its_backend_under_the_name_they_were_addressed_by() {
    let directory = directory(&[ROUTE]);
    let canary = way(&directory, "api.shop", &get("/v2/items"));
    assert_eq!(canary.authority, "api.shop");
    assert_eq!(canary.plan.dest.service, shop("api-v2"));
    assert_eq!(canary.plan.tiers[1], [remote("west", "api-v2")]);
    assert_eq!(canary.routed.as_ref().map(|r| r.index), Some(0));
    let rest = way(&directory, "api.shop", &get("/items"));
    assert_eq!(rest.plan.dest.service, shop("api"));
    assert_eq!(rest.plan.tiers[0], [local("127.0.0.1:5000")]);
    assert_eq!(rest.routed.as_ref().map(|r| r.index), Some(2));
}

#[test]
fn a_name_of_one_endpoint_is_not_routed() {
    let directory = directory(&[ROUTE]);
    let pinned = way(
        &directory,
        "api-7.west.api.shop.svc.clusterset.local",
        &get("/v2/items"),
    );
    assert_eq!(pinned.plan.dest.service, shop("api"));
    assert!(pinned.routed.is_none());
}

#[test]
fn a_route_to_a_service_outside_the_catalog_is_unavailable_and_names_the_route() {
    let directory = directory(&[ROUTE]);
    let planned = planned_in(&directory, Some("api.shop".into()), None).unwrap();
    assert_eq!(
        refused(route_request(&directory, planned, &get("/gone"), 0)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "route api-split: shop/api-v3 is not in the mesh catalog".into()
        )
    );
}

#[test]
fn a_request_leaves_over_http2_without_hop_by_hop_headers_or_the_callers_word_on_itself() {
    let directory = directory(&[ROUTE]);
    let original = request(
        Method::GET,
        "/v2/items?page=2",
        &[
            ("host", "api.shop"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            (
                CLIENT_ID_HEADER,
                "spiffe://mesh.test/cluster/east/ns/shop/sa/admin",
            ),
            (CALLER_READY_HEADER, "true"),
            ("x-debug", "1"),
            ("x-kept", "1"),
        ],
    );
    let way = way(&directory, "api.shop", &original);
    let sent = rewrite_request(original, &way, false, &untraced()).unwrap();
    assert_eq!(sent.uri(), "http://api.shop/v2/items?page=2");
    assert_eq!(sent.version(), Version::HTTP_2);
    let headers = sent.headers();
    for gone in [
        "host",
        "connection",
        "keep-alive",
        CLIENT_ID_HEADER,
        "x-debug",
    ] {
        assert!(!headers.contains_key(gone), "{gone}");
    }
    assert_eq!(headers[CALLER_READY_HEADER], "false");
    assert_eq!(headers["x-route"], "v2", "the rule's edit");
    assert_eq!(headers["x-kept"], "1");
}

#[test]
fn a_name_that_makes_no_uri_is_a_bad_request_target() {
    let directory = directory(&[]);
    let mut way = way(&directory, "api.shop", &get("/"));
    way.authority = "api shop".into();
    let (status, message) = refused(rewrite_request(get("/"), &way, true, &untraced()));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("bad request target: "), "{message}");
}

#[test]
fn retries_are_for_requests_that_may_be_sent_twice() {
    let directory = directory(&[ROUTE]);
    let canary = way(&directory, "api.shop", &get("/v2/items"));
    let terms = |method| {
        Terms::of(
            canary.routed.as_ref(),
            &method,
            Duration::from_secs(15),
            || 99,
        )
    };
    let retrying = terms(Method::GET).retries.expect("GET is idempotent");
    assert_eq!(
        (
            retrying.budget.as_str(),
            retrying.attempts,
            retrying.percent
        ),
        ("shop/api-split#0", 2, 20)
    );
    assert!(terms(Method::POST).retries.is_none());
}

#[test]
fn a_rules_timeouts_apply_and_otherwise_the_sidecars() {
    let directory = directory(&[ROUTE]);
    let sidecars = Duration::from_secs(15);
    let canary = way(&directory, "api.shop", &get("/v2/items"));
    let terms = Terms::of(canary.routed.as_ref(), &Method::GET, sidecars, || 99);
    assert_eq!(terms.per_try, Some(Duration::from_millis(500)));
    assert_eq!(terms.overall, Duration::from_secs(2));
    let rest = way(&directory, "api.shop", &get("/items"));
    let terms = Terms::of(rest.routed.as_ref(), &Method::GET, sidecars, || 0);
    assert_eq!((terms.per_try, terms.overall), (None, sidecars));
    assert!(terms.retries.is_none() && terms.mirror.is_none());
}

#[test]
fn a_rules_mirror_copies_only_the_requests_of_its_share() {
    let directory = directory(&[ROUTE]);
    let canary = way(&directory, "api.shop", &get("/v2/items"));
    let mirror = |random| {
        Terms::of(
            canary.routed.as_ref(),
            &Method::GET,
            Duration::ZERO,
            move || random,
        )
        .mirror
    };
    assert_eq!(mirror(109).map(|m| m.service.as_str()), Some("db"));
    assert!(mirror(110).is_none());
}

/// Terms with `attempts` retries under the budget `shop/api#0`, and the given timeouts.
fn retrying(attempts: u32, per_try: Option<Duration>, overall: Duration) -> Terms<'static> {
    Terms {
        retries: Some(Retrying {
            budget: "shop/api#0".into(),
            attempts,
            percent: 20,
        }),
        per_try,
        overall,
        mirror: None,
    }
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(connect::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[tokio::test]
async fn a_request_kept_is_copied_and_one_sent_once_is_not() {
    let plain = Terms {
        retries: None,
        per_try: None,
        overall: Duration::from_secs(1),
        mirror: None,
    };
    let refusals = strait_io::limit::Refusals::register(&prometheus::Registry::new());
    let replay_body = refusals.limit("--max-replay-body-bytes", 64 << 10);
    assert!(matches!(
        keep(get("/"), &plain, &replay_body).await,
        Ok(Kept::Once(_))
    ));
    let with_retries = retrying(2, None, Duration::from_secs(1));
    let Ok(Kept::Replay(replay)) = keep(get("/"), &with_retries, &replay_body).await else {
        panic!("a small request with retries is kept");
    };
    let body = replay.request().into_body().collect().await.unwrap();
    assert_eq!(body.to_bytes(), "hello");
}

/// Sends a kept GET with `terms` to a scripted try that answers with `answers` in turn (from
/// the targets `api-0` .. `api-9`), or never when there are none left. What it came to, the
/// targets each try was told to avoid, and the retries counted.
async fn send_scripted(
    kept: Kept,
    terms: &Terms<'_>,
    budgets: &Budgets,
    answers: &[Result<StatusCode, SendError>],
) -> (Outcome, Vec<Vec<Target>>, Vec<String>) {
    let answers = RefCell::new(answers.iter());
    let avoided = RefCell::new(Vec::new());
    let counted = RefCell::new(Vec::new());
    let outcome = send_request(
        kept,
        terms,
        budgets,
        |outcome| counted.borrow_mut().push(outcome.to_owned()),
        |_request, avoid| {
            let tried = avoided.borrow().len();
            avoided.borrow_mut().push(avoid);
            let scripted = answers.borrow_mut().next().map(|scripted| match scripted {
                Ok(status) => Ok((local(&format!("127.0.0.{tried}:5000")), answer(*status))),
                Err(_) => Err(SendError::NoEndpoint),
            });
            async move {
                match scripted {
                    Some(scripted) => scripted,
                    None => std::future::pending().await,
                }
            }
        },
    )
    .await;
    (outcome, avoided.into_inner(), counted.into_inner())
}

async fn kept_get() -> Kept {
    retry::Replay::keep(get("/"), 64 << 10).await.unwrap()
}

#[tokio::test]
async fn a_retryable_answer_is_retried_avoiding_the_target_that_gave_it() {
    let terms = retrying(2, None, Duration::from_secs(5));
    let answers = [Ok(StatusCode::SERVICE_UNAVAILABLE), Ok(StatusCode::OK)];
    let (outcome, avoided, counted) =
        send_scripted(kept_get().await, &terms, &Budgets::default(), &answers).await;
    let (target, response) = outcome.unwrap();
    assert_eq!(
        (target, response.status()),
        (local("127.0.0.1:5000"), StatusCode::OK)
    );
    assert_eq!(avoided, [vec![], vec![local("127.0.0.0:5000")]]);
    assert_eq!(counted, ["sent"]);
}

#[tokio::test]
async fn retries_stop_at_the_rules_attempts_with_the_last_answer() {
    let terms = retrying(2, None, Duration::from_secs(5));
    let answers = [
        Ok(StatusCode::BAD_GATEWAY),
        Err(SendError::NoEndpoint),
        Ok(StatusCode::GATEWAY_TIMEOUT),
        Ok(StatusCode::OK),
    ];
    let (outcome, avoided, counted) =
        send_scripted(kept_get().await, &terms, &Budgets::default(), &answers).await;
    assert_eq!(outcome.unwrap().1.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(avoided.len(), 3);
    assert_eq!(counted, ["sent", "sent"]);
}

#[tokio::test]
async fn a_request_sent_once_or_without_retries_is_tried_once() {
    let answers = [Ok(StatusCode::SERVICE_UNAVAILABLE), Ok(StatusCode::OK)];
    let terms = retrying(2, None, Duration::from_secs(5));
    let once = Kept::Once(get("/"));
    let (outcome, avoided, _) = send_scripted(once, &terms, &Budgets::default(), &answers).await;
    assert_eq!(outcome.unwrap().1.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(avoided.len(), 1);
    let no_retries = Terms {
        retries: None,
        ..retrying(2, None, Duration::from_secs(5))
    };
    let answers = [Err(SendError::NoEndpoint), Ok(StatusCode::OK)];
    let (outcome, avoided, _) =
        send_scripted(kept_get().await, &no_retries, &Budgets::default(), &answers).await;
    assert!(matches!(outcome, Err(Failure::Send(SendError::NoEndpoint))));
    assert_eq!(avoided.len(), 1);
}

#[tokio::test]
async fn a_spent_budget_stops_retries_and_is_counted() {
    let budgets = Budgets::default();
    let now = Instant::now();
    // The floor's retries, spent.
    while budgets.try_retry("shop/api#0", 20, now) {}
    let terms = retrying(2, None, Duration::from_secs(5));
    let answers = [Ok(StatusCode::SERVICE_UNAVAILABLE), Ok(StatusCode::OK)];
    let (outcome, avoided, counted) =
        send_scripted(kept_get().await, &terms, &budgets, &answers).await;
    assert_eq!(outcome.unwrap().1.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(avoided.len(), 1);
    assert_eq!(counted, ["budget_exhausted"]);
}

#[tokio::test]
async fn a_try_unanswered_within_the_per_try_timeout_is_retried_then_fails_as_a_timeout() {
    let per_try = Duration::from_millis(20);
    let terms = retrying(1, Some(per_try), Duration::from_secs(5));
    let (outcome, avoided, counted) =
        send_scripted(kept_get().await, &terms, &Budgets::default(), &[]).await;
    let failure = outcome.err().unwrap();
    assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        failure.to_string(),
        "no response within the per-try timeout of 20ms"
    );
    assert_eq!(avoided.len(), 2);
    assert_eq!(counted, ["sent"]);
}

#[tokio::test]
async fn the_overall_timeout_bounds_every_try() {
    let terms = retrying(2, None, Duration::from_millis(30));
    let (outcome, avoided, _) =
        send_scripted(kept_get().await, &terms, &Budgets::default(), &[]).await;
    assert_eq!(
        outcome.err().unwrap().to_string(),
        "no response within 30ms"
    );
    assert_eq!(avoided.len(), 1);
}

#[test]
fn the_apps_answer_loses_its_hop_by_hop_headers_and_gains_the_rules_edits() {
    let directory = directory(&[ROUTE]);
    let canary = way(&directory, "api.shop", &get("/v2/items"));
    let mut response = answer(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("x-private"));
    headers.insert("x-private", HeaderValue::from_static("1"));
    headers.insert("x-app", HeaderValue::from_static("1"));
    let outcome = Ok((remote("west", "api-v2"), response));
    let (response, cluster) = respond(outcome, &canary.plan.dest.service, canary.rule(), &east());
    assert_eq!(cluster.as_str(), "west");
    let mut names: Vec<_> = response.headers().keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["x-app", "x-served-by"]);
}

#[tokio::test]
async fn a_request_without_an_answer_is_answered_naming_its_service() {
    let (response, cluster) = respond(
        Err(Failure::Timeout(Duration::from_secs(2))),
        &shop("api"),
        None,
        &east(),
    );
    assert_eq!(cluster, east(), "no cluster was reached");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "strait: shop/api: no response within 2s\n");
    let (response, _) = respond(
        Err(SendError::NoEndpoint.into()),
        &shop("api"),
        None,
        &east(),
    );
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()[crate::http::PROXY_ERROR_HEADER],
        "shop/api: no endpoint is ready"
    );
}

#[test]
fn a_request_is_counted_under_the_cluster_that_answered_it() {
    let metrics = Metrics::new("east");
    let (local, service) = (east(), shop("api"));
    let labels = labels(&local, &service);
    let west = ClusterName::new("west").unwrap();
    record(
        &metrics,
        &labels,
        &west,
        StatusCode::OK,
        Duration::from_millis(3),
    );
    let text = metrics.encode();
    let counted = text
        .lines()
        .find(|line| line.starts_with("strait_requests_total{"))
        .unwrap_or_else(|| panic!("{text}"));
    for label in [
        r#"direction="outbound""#,
        r#"source_cluster="east""#,
        r#"destination_cluster="west""#,
        r#"namespace="shop""#,
        r#"service="api""#,
        r#"status_class="2xx""#,
    ] {
        assert!(counted.contains(label), "{label} in {counted}");
    }
    assert!(counted.ends_with(" 1"), "{counted}");
}

/// A request's trace as a sidecar without a collector starts it.
fn untraced() -> crate::telemetry::RequestTrace {
    crate::telemetry::Telemetry::new(
        "east",
        "spiffe://example.mesh/cluster/east/ns/shop/sa/web",
        false,
        tokio_util::sync::CancellationToken::new(),
    )
    .begin(&hyper::HeaderMap::new(), &Default::default())
}

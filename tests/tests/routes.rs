//! HTTPRoute end to end: weighted splits between services and between clusters, header matches
//! and rewrites, retries that move a request off a failing endpoint, the retry budget that stops
//! a retry storm, and route timeouts. Real gateways, sidecars and sample apps on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use strait_tests::workloads::{api, client, endpoint, endpoint_with, get, linked_pair, wait_route};
use strait_tests::{http_get_host, metric, wait_for};

const API: &str = "api.shop.svc.clusterset.local";

#[test]
fn a_route_splits_by_weight_between_clusters_and_sends_canaries_to_another_service() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api_east = api(&mesh, "east", "api-east-0")?;
    let _api_west = api(&mesh, "west", "api-west-0")?;
    let _v2 = endpoint(
        &mesh,
        "east",
        "api-v2",
        "api-v2-0",
        &[("http", 8080, "http")],
    )?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    wait_route(proxy, &format!("west.{API}"), "west")?;
    wait_route(proxy, "api-v2.shop.svc.clusterset.local", "east")?;

    mesh.apply(
        "west",
        "route.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-rollout, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - matches: [{headers: [{name: X-Canary, value: '1'}]}]
      backendRefs: [{name: api-v2}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Route, value: canary}]
            remove: [X-Debug]
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: X-Served-By, value: api-v2}]}
    - backendRefs:
        - {name: api, cluster: east, weight: 3}
        - {name: api, cluster: west, weight: 1}
",
    )
    .success()?;
    // The route was applied in west and is followed by east's sidecar.
    wait_for(Duration::from_secs(5), "canaries reaching api-v2", || {
        let answer = get(proxy, API, "/", &[("X-Canary", "1")])?;
        Ok((answer.json()?["service"] == "shop/api-v2").then_some(()))
    })?;
    let canary = get(proxy, API, "/", &[("X-Canary", "1"), ("X-Debug", "yes")])?;
    let seen = canary.json()?;
    ensure!(seen["headers"]["x-route"] == "canary", "{seen}");
    ensure!(seen["headers"].get("x-debug").is_none(), "{seen}");
    ensure!(canary.header("x-served-by") == Some("api-v2"));

    // The rest splits 3:1 between the clusters.
    let mut west = 0;
    let total = 400;
    for _ in 0..total {
        let answer = get(proxy, API, "/", &[])?;
        let seen = answer.json()?;
        ensure!(seen["service"] == "shop/api", "{seen}");
        ensure!(answer.header("x-served-by").is_none());
        if seen["cluster"] == "west" {
            west += 1;
        }
    }
    let share = f64::from(west) / f64::from(total);
    println!("west's share of the split: {share:.3} (weight 1 of 4)");
    // A binomial(400, 0.25) is within 0.25 ± 0.1 with probability above 0.9999.
    ensure!((0.15..=0.35).contains(&share), "west got {share:.3}");

    // Deleted, the route no longer applies: canaries go to api like everyone else.
    mesh.ctl(
        "west",
        &["delete", "httproute", "api-rollout", "-n", "shop"],
    )
    .success()?;
    wait_for(Duration::from_secs(5), "the route gone", || {
        let answer = get(proxy, API, "/", &[("X-Canary", "1")])?;
        Ok((answer.json()?["service"] == "shop/api").then_some(()))
    })?;
    Ok(())
}

/// The inbound requests an endpoint's sidecar counted, by status class.
fn inbound(admin: SocketAddr, class: &str) -> Result<f64> {
    let text = http_get_host(admin, "localhost", "/metrics")?.1;
    Ok(metric(
        &text,
        "strait_requests_total",
        &[
            "direction=\"inbound\"",
            &format!("status_class=\"{class}\""),
        ],
    )
    .unwrap_or(0.0))
}

/// The retries a client's sidecar counted, by outcome.
fn retries(admin: SocketAddr, outcome: &str) -> Result<f64> {
    let text = http_get_host(admin, "localhost", "/metrics")?.1;
    Ok(metric(
        &text,
        "strait_retries_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
    .unwrap_or(0.0))
}

#[test]
fn retries_move_requests_off_a_failing_endpoint_and_the_budget_stops_a_retry_storm() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let healthy = api(&mesh, "east", "api-east-0")?;
    // An endpoint whose app answers 503 to everything (overloaded, or half deployed).
    let broken = endpoint_with(
        &mesh,
        "east",
        "api",
        "api-east-1",
        &[("http", 8080, "http")],
        &["--broken", "503"],
    )?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    // Without retries, the broken endpoint's answers reach the caller. The balancer sends it
    // requests only when its latency estimate is no worse than the healthy one's, which an
    // estimate decaying towards zero makes a matter of seconds, and not while it is ejected
    // (five 503s in a row eject it, for a backoff that grows to 30 s).
    // When each request was sent: the budget counts those of its last 10 s.
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut sent = 0;
    wait_for(
        Duration::from_secs(35),
        "a 503 from the broken endpoint",
        || {
            sent += 1;
            sent_at.push(Instant::now());
            Ok(get(proxy, API, "/", &[])
                .ok()
                .filter(|a| a.status == 503)
                .map(|_| ()))
        },
    )?;
    println!("without retries: the broken endpoint answered request {sent}");

    mesh.apply(
        "east",
        "retries.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-retries, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - backendRefs: [{name: api}]
      retries: {attempts: 2, budgetPercent: 20}
      timeouts: {request: 1s}
",
    )
    .success()?;
    let web_admin = web.addr("admin")?;
    // The first request that meets the broken endpoint once it is back from an ejection.
    wait_for(Duration::from_secs(35), "a retry", || {
        sent_at.push(Instant::now());
        let _ = get(proxy, API, "/", &[])?;
        Ok((retries(web_admin, "sent")? > 0.0).then_some(()))
    })?;
    let failures = (0..40)
        .filter(|_| {
            sent_at.push(Instant::now());
            get(proxy, API, "/", &[]).map_or(true, |a| a.status != 200)
        })
        .count();
    println!("with retries: {failures} of 40 failed");
    ensure!(failures == 0, "{failures} of 40 failed despite retries");

    // A storm: every request fails everywhere. Without a budget each would be tried 3 times;
    // the budget holds retries to 20 % of requests plus 10 a second over its 10 s window.
    let admin = healthy.sidecar.addr("admin")?;
    let (before_5xx, before_sent) = (inbound(admin, "5xx")?, retries(web_admin, "sent")?);
    let before_all = before_5xx + inbound(broken.sidecar.addr("admin")?, "5xx")?;
    let requests = 300;
    let started = Instant::now();
    for _ in 0..requests {
        sent_at.push(Instant::now());
        let answer = get(proxy, API, "/status/503", &[])?;
        ensure!(answer.status == 503, "{}", answer.status);
    }
    let took = started.elapsed();
    let sent = retries(web_admin, "sent")? - before_sent;
    let refused = retries(web_admin, "budget_exhausted")?;
    let reached =
        inbound(admin, "5xx")? + inbound(broken.sidecar.addr("admin")?, "5xx")? - before_all;
    println!(
        "storm: {requests} requests in {took:?}, {sent} retries sent, {refused} refused by the budget, {reached} reached the endpoints"
    );
    // At most 20 % of the requests of the budget's window (10 s) plus 10 a second over it,
    // whatever the requests before the storm were (the waits above send as many as they need).
    let ended = Instant::now();
    let in_window = sent_at
        .iter()
        .filter(|at| ended.duration_since(**at) <= Duration::from_secs(10))
        .count();
    let allowed = 0.2 * in_window as f64 + 10.0 * 10.0;
    ensure!(
        sent <= allowed,
        "{sent} retries, budget {allowed} ({in_window} requests in the window)"
    );
    ensure!(refused > 0.0, "the budget refused nothing");
    ensure!(
        reached < f64::from(requests) * 2.0,
        "{reached} requests reached the endpoints for {requests} sent"
    );
    Ok(())
}

#[test]
fn a_route_timeout_answers_504_in_time() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    mesh.apply(
        "east",
        "timeout.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-slow, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - matches: [{path: {type: PathPrefix, value: /delay}}]
      backendRefs: [{name: api}]
      timeouts: {request: 300ms}
    - backendRefs: [{name: api}]
",
    )
    .success()?;
    wait_for(Duration::from_secs(5), "the timeout in force", || {
        let started = Instant::now();
        let answer = get(proxy, API, "/delay/2000", &[])?;
        Ok((answer.status == 504 && started.elapsed() < Duration::from_millis(1500)).then_some(()))
    })?;
    // Other paths are not cut short.
    let answer = get(proxy, API, "/other", &[])?;
    ensure!(answer.status == 200, "{}", answer.status);
    Ok(())
}

/// A rule's RequestMirror sends a copy of each request to another service (here in another
/// cluster, and broken); the caller gets the primary's answers only, and the copies are counted.
#[test]
fn a_mirror_gets_a_copy_of_each_request_without_touching_the_answers() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "east", "api-east-0")?;
    let shadow = endpoint_with(
        &mesh,
        "west",
        "api-shadow",
        "api-shadow-0",
        &[("http", 8080, "http")],
        &["--broken", "500"],
    )?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    wait_for(Duration::from_secs(20), "api-shadow reachable", || {
        Ok(
            (http_get_host(proxy, "api-shadow.shop.svc.clusterset.local", "/")?.0 == 500)
                .then_some(()),
        )
    })?;
    mesh.apply(
        "east",
        "mirror.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-shadowed, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - backendRefs: [{name: api}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: api-shadow}}
",
    )
    .success()?;
    let shadow_admin = shadow.sidecar.addr("admin")?;
    let before = inbound(shadow_admin, "5xx")?;
    wait_for(Duration::from_secs(10), "the mirror in force", || {
        let answer = get(proxy, API, "/", &[])?;
        ensure!(
            answer.status == 200,
            "the primary answered {}",
            answer.status
        );
        Ok((inbound(shadow_admin, "5xx")? > before).then_some(()))
    })?;

    const REQUESTS: usize = 40;
    let start = inbound(shadow_admin, "5xx")?;
    for _ in 0..REQUESTS {
        let answer = get(proxy, API, "/orders", &[])?;
        ensure!(
            answer.status == 200,
            "the primary answered {}",
            answer.status
        );
        ensure!(answer.json()?["cluster"] == "east", "{}", answer.body);
    }
    // Copies are sent beside the requests, not before their answers: wait for the last ones.
    wait_for(Duration::from_secs(10), "every copy at the mirror", || {
        Ok((inbound(shadow_admin, "5xx")? >= start + REQUESTS as f64).then_some(()))
    })?;
    let text = http_get_host(web.addr("admin")?, "localhost", "/metrics")?.1;
    let sent = metric(
        &text,
        "strait_mirrored_requests_total",
        &[
            "result=\"sent\"",
            "service=\"api-shadow\"",
            "destination_cluster=\"west\"",
        ],
    )
    .unwrap_or(0.0);
    ensure!(sent >= REQUESTS as f64, "{sent} copies counted as sent");
    Ok(())
}

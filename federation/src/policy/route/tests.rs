//! Tests of the route module.

use super::*;

const SPLIT: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: X-Canary, value: '1'}]}]
      backendRefs: [{name: api-v2, weight: 90}, {name: api, cluster: west, weight: 10}]
      timeouts: {request: 2s, perTry: 500ms}
      retries: {attempts: 2}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-Route, value: v2}], remove: [X-Debug]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: X-Served-By, value: canary}]}
    - backendRefs: [{name: api}]
";

/// Filters to append to SPLIT's last rule: a mirror of a tenth of its requests.
const MIRROR: &str = "      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: api-shadow, cluster: west}, percent: 10}
";

#[test]
fn a_rule_may_mirror_a_share_of_its_requests_to_another_service() {
    let route = parse(&format!("{SPLIT}{MIRROR}")).unwrap();
    assert_eq!(route.rules[0].mirror, None);
    assert_eq!(
        route.rules[1].mirror,
        Some(Mirror {
            service: ServiceName::new("api-shadow").unwrap(),
            cluster: Some(ClusterName::new("west").unwrap()),
            percent: 10,
        })
    );
    let every = parse(&format!("{SPLIT}{MIRROR}").replace(", percent: 10", "")).unwrap();
    assert_eq!(every.rules[1].mirror.as_ref().unwrap().percent, 100);
}

fn parse(yaml: &str) -> Result<Route, DocumentError> {
    crate::policy::testing::parse_as("route.yaml", route, yaml)
}

#[test]
fn a_split_route_is_parsed_with_its_timeouts_and_retries() {
    let route = parse(SPLIT).unwrap();
    assert_eq!(route.service.as_str(), "api");
    let first = &route.rules[0];
    assert_eq!(first.backends.len(), 2);
    assert_eq!(first.timeout, Some(Duration::from_secs(2)));
    assert_eq!(first.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(first.retries.as_ref().unwrap().budget_percent, 20);
    assert_eq!(
        first.matches[1].headers,
        vec![("x-canary".to_owned(), "1".to_owned())]
    );
    assert_eq!(
        first.request_headers.set,
        vec![("x-route".to_owned(), "v2".to_owned())]
    );
    assert_eq!(first.request_headers.remove, vec!["x-debug".to_owned()]);
    assert_eq!(
        first.response_headers.add,
        vec![("x-served-by".to_owned(), "canary".to_owned())]
    );
    assert!(route.rules[1].request_headers.is_empty());
}

#[test]
fn bad_routes_are_refused_naming_the_field() {
    let cases = [
        (
            SPLIT.replace("weight: 90", "weight: -1"),
            "spec.rules[0].backendRefs[0].weight",
        ),
        (
            SPLIT
                .replace("weight: 90", "weight: 0")
                .replace("weight: 10", "weight: 0"),
            "spec.rules[0].backendRefs",
        ),
        (
            SPLIT.replace("perTry: 500ms", "perTry: soon"),
            "spec.rules[0].timeouts.perTry",
        ),
        (
            SPLIT.replace("value: /v2", "value: v2"),
            "spec.rules[0].matches[0].path.value",
        ),
        (
            SPLIT.replace("attempts: 2", "attempts: 2, tries: 3"),
            "tries",
        ),
        (
            SPLIT.replace("attempts: 2", "attempts: 99"),
            "spec.rules[0].retries.attempts",
        ),
        (
            SPLIT.replace("cluster: west", "cluster: West"),
            "spec.rules[0].backendRefs[1].cluster",
        ),
        (
            SPLIT.replace("name: X-Route", "name: Host"),
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
        ),
        (
            SPLIT.replace("remove: [X-Debug]", "remove: [strait-client-id]"),
            "spec.rules[0].filters[0].requestHeaderModifier.remove[0]",
        ),
        (
            SPLIT.replace("type: ResponseHeaderModifier", "type: URLRewrite"),
            "spec.rules[0].filters[1].type",
        ),
        (
            SPLIT.replace("type: ResponseHeaderModifier", "type: RequestMirror"),
            "spec.rules[0].filters[1]: a RequestMirror filter holds requestMirror only",
        ),
        (
            format!("{SPLIT}{MIRROR}").replace("percent: 10", "percent: 0"),
            "spec.rules[1].filters[0].requestMirror.percent",
        ),
        (
            format!("{SPLIT}{MIRROR}").replace("name: api-shadow", "name: Shadow"),
            "spec.rules[1].filters[0].requestMirror.backendRef.name",
        ),
        (
            format!(
                "{SPLIT}{MIRROR}{}",
                MIRROR.lines().skip(1).collect::<Vec<_>>().join("\n")
            ),
            "spec.rules[1].filters[1]: a rule has at most one RequestMirror filter",
        ),
        (
            SPLIT.replace("value: canary", "value: \"a\\nb\""),
            "spec.rules[0].filters[1].responseHeaderModifier.add[0].value",
        ),
    ];
    crate::policy::testing::assert_refused("route.yaml", route, &cases);
}

#[test]
fn the_first_matching_rule_decides_and_weights_split_its_requests() {
    let route = parse(SPLIT).unwrap();
    let no_headers = |_: &str| None;
    let canary = |name: &str| (name == "x-canary").then_some("1");
    // Over every draw modulo 100, the split is exactly 90/10.
    let mut to_v2 = 0;
    for random in 0..100u64 {
        let (_, backend) = route
            .select("GET", "/v2/items", no_headers, random)
            .unwrap();
        to_v2 += usize::from(backend.service.as_str() == "api-v2");
    }
    assert_eq!(to_v2, 90);
    // Prefixes match whole segments; a header match is enough on its own.
    let (rule, backend) = route.select("GET", "/v20", no_headers, 0).unwrap();
    assert!(rule.matches.is_empty() && backend.service.as_str() == "api");
    let (rule, _) = route.select("GET", "/other", canary, 0).unwrap();
    assert_eq!(rule.backends.len(), 2);
}

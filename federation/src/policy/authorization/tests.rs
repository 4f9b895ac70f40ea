//! Tests of the authorization module.

use super::*;
use crate::identity::{AccountName, ClusterName, TrustDomain};

fn workload(cluster: &str, namespace: &str, account: &str) -> SpiffeId {
    SpiffeId::Workload {
        trust_domain: TrustDomain::new("example.mesh").unwrap(),
        cluster: ClusterName::new(cluster).unwrap(),
        namespace: Namespace::new(namespace).unwrap(),
        service_account: AccountName::new(account).unwrap(),
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        namespace: Namespace::new("shop").unwrap(),
        name: name.into(),
        target: Some(ServiceName::new("api").unwrap()),
        action,
        rules,
        external: None,
    }
}

fn from_clusters(clusters: &[&str]) -> Rule {
    Rule {
        from: vec![Source {
            clusters: clusters
                .iter()
                .map(|c| ClusterName::new(*c).unwrap())
                .collect(),
            ..Source::default()
        }],
        ..Rule::default()
    }
}

/// A request of `caller`: ready, without a token, from a cluster whose location is unknown.
fn request<'a>(caller: Option<&'a SpiffeId>, http: Option<(&'a str, &'a str)>) -> Request<'a> {
    Request {
        caller,
        http,
        principal: None,
        caller_location: None,
        caller_healthy: true,
    }
}

/// The decision for `request` to shop/api.
fn decide_api(policies: &[Authorization], request: &Request<'_>) -> Decision {
    decide(
        policies,
        &Namespace::new("shop").unwrap(),
        &ServiceName::new("api").unwrap(),
        request,
    )
}

fn decide_for(
    policies: &[Authorization],
    caller: Option<&SpiffeId>,
    http: Option<(&str, &str)>,
) -> Decision {
    decide_api(policies, &request(caller, http))
}

#[test]
fn a_deny_by_cluster_refuses_that_cluster_only() {
    let policies = [policy(
        "no-west-to-api",
        Action::Deny,
        vec![from_clusters(&["west"])],
    )];
    let west = workload("west", "shop", "web");
    let east = workload("east", "shop", "web");
    assert_eq!(
        decide_for(&policies, Some(&west), Some(("GET", "/"))),
        Decision::Deny {
            by: "shop/no-west-to-api".into()
        }
    );
    assert_eq!(
        decide_for(&policies, Some(&east), Some(("GET", "/"))),
        Decision::Allow
    );
    assert_eq!(
        decide_for(&policies, Some(&west), None),
        Decision::Deny {
            by: "shop/no-west-to-api".into()
        },
        "TCP too"
    );
}

#[test]
fn allow_policies_admit_only_what_they_match() {
    let only_reads = Rule {
        from: vec![Source {
            namespaces: vec![Namespace::new("shop").unwrap()],
            ..Source::default()
        }],
        to: vec![Operation {
            methods: vec!["GET".into()],
            paths: vec!["/orders/*".into(), "/health".into()],
        }],
        ..Rule::default()
    };
    let policies = [policy("reads", Action::Allow, vec![only_reads])];
    let web = workload("east", "shop", "web");
    let other = workload("east", "billing", "web");
    let cases = [
        (Some(&web), Some(("GET", "/orders/7")), true),
        (Some(&web), Some(("GET", "/health")), true),
        (Some(&web), Some(("GET", "/healthz")), false),
        (Some(&web), Some(("POST", "/orders/7")), false),
        (Some(&other), Some(("GET", "/orders/7")), false),
        (Some(&web), None, false),
        (None, Some(("GET", "/health")), false),
    ];
    for (caller, http, allowed) in cases {
        assert_eq!(
            decide_for(&policies, caller, http) == Decision::Allow,
            allowed,
            "{caller:?} {http:?}"
        );
    }
}

#[test]
fn deny_wins_over_allow_and_other_services_are_untouched() {
    let policies = [
        policy("all", Action::Allow, vec![]),
        policy("no-west", Action::Deny, vec![from_clusters(&["west"])]),
    ];
    let west = workload("west", "shop", "web");
    assert!(matches!(
        decide_for(&policies, Some(&west), None),
        Decision::Deny { .. }
    ));
    let other_service = decide(
        &policies,
        &Namespace::new("shop").unwrap(),
        &ServiceName::new("orders").unwrap(),
        &request(Some(&west), None),
    );
    assert_eq!(other_service, Decision::Allow);
}

fn parse(yaml: &str) -> Result<Authorization, DocumentError> {
    crate::policy::testing::parse_as("policy.yaml", authorization, yaml)
}

const NO_WEST_TO_API: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-west-to-api, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: deny
  rules:
    - from: [{clusters: [west]}]
";

#[test]
fn the_contract_document_is_accepted() {
    let parsed = parse(NO_WEST_TO_API).unwrap();
    assert_eq!(
        parsed,
        policy(
            "no-west-to-api",
            Action::Deny,
            vec![from_clusters(&["west"])]
        )
    );
}

#[test]
fn bad_documents_are_refused_naming_the_field() {
    let cases = [
        (
            NO_WEST_TO_API.replace("action: deny", "action: deny\n  bogus: 1"),
            "bogus",
        ),
        (
            NO_WEST_TO_API.replace("action: deny", "action: maybe"),
            "spec.action",
        ),
        (
            NO_WEST_TO_API.replace("[west]", "[West]"),
            "spec.rules[0].from[0].clusters[0]",
        ),
        (
            NO_WEST_TO_API.replace("kind: Service", "kind: Pod"),
            "spec.targetRef.kind",
        ),
        (NO_WEST_TO_API.replace("v1alpha1", "v9"), "apiVersion"),
        (
            NO_WEST_TO_API.replace(
                "[{clusters: [west]}]",
                "[{clusters: [west]}]\n      to: [{paths: [\"a*b\"]}]",
            ),
            "spec.rules[0].to[0].paths[0]",
        ),
        (
            NO_WEST_TO_API.replace("action: deny", "action: external"),
            "spec.external",
        ),
        (
            NO_WEST_TO_API.replace(
                "action: deny",
                "action: deny\n  external: {address: 127.0.0.1:9191}",
            ),
            "spec.external",
        ),
        (
            EXTERNAL.replace("127.0.0.1:9191", "127.0.0.1"),
            "spec.external.address",
        ),
        (
            EXTERNAL.replace("timeout: 150ms", "timeout: 1h"),
            "spec.external.timeout",
        ),
    ];
    crate::policy::testing::assert_refused("policy.yaml", authorization, &cases);
}

const EXTERNAL: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: tickets, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: external
  external: {address: 127.0.0.1:9191, timeout: 150ms, failOpen: true}
  rules:
    - to: [{paths: [/orders/*]}]
";

/// A source's locations match the caller cluster's cloud, region or zone; an unknown
/// location matches none.
#[test]
fn locations_match_by_cloud_region_or_zone() {
    let source = Source {
        locations: vec!["aws/us-east-1".into(), "gcp".into()],
        ..Source::default()
    };
    let east = workload("east", "shop", "web");
    let at = |cloud: &str, region: &str| crate::location::Location::new(cloud, region, "").unwrap();
    let matches = |location: Option<&crate::location::Location>| {
        source.matches_request(&Request {
            caller_location: location,
            ..request(Some(&east), None)
        })
    };
    assert!(matches(Some(&at("aws", "us-east-1"))));
    assert!(matches(Some(&at("gcp", "europe-west1"))));
    assert!(!matches(Some(&at("aws", "us-east-10"))));
    assert!(!matches(Some(&at("azure", "eastus"))));
    assert!(!matches(None));
}

/// `healthy: true` admits only callers whose sidecar says they are ready; `false` only
/// the others; a policy that does not ask admits both.
#[test]
fn a_healthy_source_matches_callers_by_their_readiness() {
    let only_ready = parse(
        "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-ready, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{namespaces: [shop], healthy: true}]
",
    )
    .unwrap();
    assert_eq!(only_ready.rules[0].from[0].healthy, Some(true));
    let east = workload("east", "shop", "web");
    let decide_when = |policies: &[Authorization], healthy| {
        decide_api(
            policies,
            &Request {
                caller_healthy: healthy,
                ..request(Some(&east), Some(("GET", "/")))
            },
        )
    };
    let only_ready = [only_ready];
    assert_eq!(decide_when(&only_ready, true), Decision::Allow);
    assert!(matches!(
        decide_when(&only_ready, false),
        Decision::Deny { .. }
    ));
    let mut unready = only_ready[0].clone();
    unready.rules[0].from[0].healthy = Some(false);
    unready.action = Action::Deny;
    assert!(matches!(
        decide_when(&[unready.clone()], false),
        Decision::Deny { .. }
    ));
    assert_eq!(decide_when(&[unready], true), Decision::Allow);
    let either = [policy(
        "anyone",
        Action::Allow,
        vec![from_clusters(&["east"])],
    )];
    assert_eq!(decide_when(&either, false), Decision::Allow);
}

/// A source naming whole identities matches exactly those workloads; a malformed one is
/// refused when the policy is checked.
#[test]
fn a_source_naming_identities_matches_those_workloads_only() {
    let yaml = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{identities: [spiffe://mesh.test/cluster/east/ns/shop/sa/web]}]
";
    let policy = parse(yaml).unwrap();
    let decide_for_caller =
        |caller: &SpiffeId| decide_for(std::slice::from_ref(&policy), Some(caller), None);
    let web: SpiffeId = "spiffe://mesh.test/cluster/east/ns/shop/sa/web"
        .parse()
        .unwrap();
    assert_eq!(decide_for_caller(&web), Decision::Allow);
    for other in [
        "spiffe://mesh.test/cluster/west/ns/shop/sa/web",
        "spiffe://mesh.test/cluster/east/ns/shop/sa/web2",
        "spiffe://other.test/cluster/east/ns/shop/sa/web",
    ] {
        let other: SpiffeId = other.parse().unwrap();
        assert!(
            matches!(decide_for_caller(&other), Decision::Deny { .. }),
            "{other}"
        );
    }
    let refused = parse(&yaml.replace("spiffe://mesh.test", "https://mesh.test"))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("spec.rules[0].from[0].identities[0]"),
        "{refused}"
    );
}

/// Rules that give one caller many paths, rule by rule, check the caller once a request;
/// the decision is the same as checking every rule in full.
#[test]
fn rules_sharing_their_sources_decide_as_if_each_were_checked() {
    let policy = parse(
        "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-paths, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{serviceAccounts: [web]}]
      to: [{paths: [/a]}]
    - from: [{serviceAccounts: [web]}]
      to: [{paths: [/b]}]
    - from: [{serviceAccounts: [admin]}]
      to: [{paths: [/c]}]
    - from: [{serviceAccounts: [admin]}]
      to: [{paths: [/d]}]
",
    )
    .unwrap();
    let shared: Vec<bool> = policy
        .rules
        .iter()
        .map(|r| r.same_sources_as_previous)
        .collect();
    assert_eq!(shared, [false, true, false, true]);
    let mut unshared = policy.clone();
    unshared
        .rules
        .iter_mut()
        .for_each(|r| r.same_sources_as_previous = false);
    for account in ["web", "admin", "other"] {
        let caller = workload("east", "shop", account);
        for path in ["/a", "/b", "/c", "/d", "/e"] {
            let request = request(Some(&caller), Some(("GET", path)));
            let expected = (account == "web" && ["/a", "/b"].contains(&path))
                || (account == "admin" && ["/c", "/d"].contains(&path));
            assert_eq!(policy.matches(&request), expected, "{account} {path}");
            assert_eq!(unshared.matches(&request), expected, "{account} {path}");
        }
    }
}

/// An external policy is left out of the local decision; it is listed for the requests its
/// rules match, for the sidecar to ask its authorizer.
#[test]
fn external_policies_are_asked_only_for_the_requests_they_match() {
    let external = parse(EXTERNAL).unwrap();
    assert_eq!(
        external.external,
        Some(External {
            address: "127.0.0.1:9191".into(),
            timeout: std::time::Duration::from_millis(150),
            fail_open: true,
        })
    );
    let deny_west = parse(NO_WEST_TO_API).unwrap();
    let policies = [external, deny_west];
    let (shop, api) = (
        Namespace::new("shop").unwrap(),
        ServiceName::new("api").unwrap(),
    );
    let east = workload("east", "shop", "web");
    let request = |path| request(Some(&east), Some(("GET", path)));
    assert_eq!(
        externals(&policies, &shop, &api, &request("/orders/7")).len(),
        1
    );
    assert!(externals(&policies, &shop, &api, &request("/menu")).is_empty());
    assert_eq!(
        decide(&policies, &shop, &api, &request("/orders/7")),
        Decision::Allow
    );
}

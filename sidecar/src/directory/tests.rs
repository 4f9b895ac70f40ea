//! Names to services, and views taken whole or by deltas.

use super::*;
use strait_federation::identity::SpiffeId;
use strait_federation::policy::authorization::{Decision, Request};
use strait_federation::proto::workload::{
    Backend, EndpointView, PolicyDocument, PortSpec, ServiceView, VirtualAddress,
};
use strait_federation::seeded::Seeded;

fn view() -> CatalogView {
    let endpoint = |address: &str, hostname: &str| EndpointView {
        address: address.into(),
        hostname: hostname.into(),
        ready: true,
    };
    CatalogView {
        cluster: "east".into(),
        relay_address: "127.0.0.1:4000".into(),
        version: 3,
        services: vec![
            ServiceView {
                namespace: "shop".into(),
                name: "api".into(),
                ports: vec![PortSpec {
                    name: "http".into(),
                    port: 8080,
                    protocol: "http".into(),
                }],
                backends: vec![
                    Backend {
                        cluster: "east".into(),
                        endpoints: vec![endpoint("127.0.0.1:5000", "api-0")],
                        ..Default::default()
                    },
                    Backend {
                        cluster: "west".into(),
                        endpoints: vec![endpoint("10.0.0.1:5000", "api-7")],
                        ..Default::default()
                    },
                ],
            },
            ServiceView {
                namespace: "shop".into(),
                name: "db".into(),
                ports: vec![
                    PortSpec {
                        name: "sql".into(),
                        port: 5432,
                        protocol: "tcp".into(),
                    },
                    PortSpec {
                        name: "admin".into(),
                        port: 8081,
                        protocol: "http".into(),
                    },
                ],
                backends: vec![Backend {
                    cluster: "west".into(),
                    endpoints: vec![endpoint("10.0.0.2:5000", "")],
                    ..Default::default()
                }],
            },
        ],
        virtual_addresses: vec![
            vip("240.240.0.1", "api", "", ""),
            vip("fd00::1", "api", "", ""),
            vip("240.240.0.2", "api", "west", ""),
            vip("240.240.0.3", "api", "west", "api-7"),
            vip("240.240.0.4", "gone", "", ""),
        ],
        virtual_ranges: vec!["240.240.0.0/16".into(), "fd00::/112".into()],
        policies: Vec::new(),
        ..Default::default()
    }
}

fn vip(address: &str, service: &str, cluster: &str, hostname: &str) -> VirtualAddress {
    VirtualAddress {
        address: address.into(),
        namespace: "shop".into(),
        service: service.into(),
        cluster: cluster.into(),
        hostname: hostname.into(),
    }
}

#[test]
fn virtual_addresses_resolve_to_the_names_they_stand_for() {
    let directory = Directory::from_view(&view(), None);
    let west = ClusterName::new("west").unwrap();
    let cases = [
        ("240.240.0.1:8080", None, None, Some(8080)),
        ("240.240.0.1", None, None, None),
        ("[fd00::1]:80", None, None, Some(80)),
        ("[fd00::1]", None, None, None),
        ("240.240.0.2:8080", Some(&west), None, Some(8080)),
        ("240.240.0.3:8080", Some(&west), Some("api-7"), Some(8080)),
    ];
    for (authority, cluster, hostname, port) in cases {
        let dest = directory
            .resolve(authority)
            .unwrap_or_else(|| panic!("{authority}"));
        assert_eq!(dest.service, key("api"), "{authority}");
        assert_eq!(dest.cluster.as_ref(), cluster, "{authority}");
        assert_eq!(dest.hostname.as_deref(), hostname, "{authority}");
        assert_eq!(dest.port, port, "{authority}");
    }
    assert!(directory.is_virtual(&"240.240.0.1".parse().unwrap()));
    assert!(
        !directory.is_virtual(&"240.240.0.4".parse().unwrap()),
        "not in the catalog"
    );
    assert!(directory.resolve("240.240.0.9:80").is_none());
    assert!(directory.is_stale_virtual(&"240.240.0.9".parse().unwrap()));
    assert!(!directory.is_stale_virtual(&"240.240.0.1".parse().unwrap()));
    assert!(!directory.is_stale_virtual(&"240.241.0.1".parse().unwrap()));
    assert!(directory.is_stale_virtual(&"fd00::9".parse().unwrap()));
}

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: Namespace::new("shop").unwrap(),
        name: ServiceName::new(name).unwrap(),
    }
}

#[test]
fn every_name_form_resolves_to_its_service_and_scope() {
    let directory = Directory::from_view(&view(), None);
    let at = |name: &str| directory.resolve(name);
    for short in [
        "api.shop",
        "api.shop.svc",
        "api.shop.svc.clusterset.local",
        "API.Shop.svc.clusterset.local.",
    ] {
        let found = at(short).unwrap_or_else(|| panic!("{short}"));
        assert_eq!(
            (found.service, found.cluster),
            (key("api"), None),
            "{short}"
        );
    }
    let pinned = at("west.api.shop.svc.clusterset.local:8080").unwrap();
    assert_eq!(pinned.cluster.unwrap().as_str(), "west");
    assert_eq!(pinned.port, Some(8080));
    let pod = at("api-7.west.api.shop.svc.clusterset.local").unwrap();
    assert_eq!(pod.hostname.as_deref(), Some("api-7"));
    let here = at("api.shop.svc.cluster.local").unwrap();
    assert_eq!(here.cluster.unwrap().as_str(), "east");
}

#[test]
fn names_outside_the_catalog_or_malformed_resolve_to_nothing() {
    let directory = Directory::from_view(&view(), None);
    for name in [
        "nothere.shop.svc.clusterset.local",
        "example.com",
        "api",
        "a.b.c.d.e.f",
        "api.shop:notaport",
        "[::1]:80",
        "west.api.shop.svc",
    ] {
        assert_eq!(directory.resolve(name), None, "{name}");
    }
}

#[test]
fn local_endpoints_and_remote_clusters_are_told_apart() {
    let directory = Directory::from_view(&view(), None);
    let api = directory.service(&key("api")).unwrap();
    assert_eq!(api.local.len(), 1);
    assert_eq!(api.remote[0].0.as_str(), "west");
    let db = directory.service(&key("db")).unwrap();
    assert!(db.local.is_empty());
    assert_eq!(
        directory
            .service_at(&"127.0.0.1:5000".parse().unwrap())
            .unwrap()
            .key,
        key("api")
    );
    assert_eq!(directory.relay, Some("127.0.0.1:4000".parse().unwrap()));
}

#[test]
fn a_name_a_declared_sidecar_lacks_says_what_it_watches() {
    let mut directory = Directory::from_view(&view(), None);
    assert_eq!(
        directory.lacks("ledger.pay:80"),
        "ledger.pay:80 is not a service in the mesh catalog"
    );
    directory.watching = Some("shop,pay/api".into());
    assert_eq!(
        directory.lacks("ledger.pay:80"),
        "ledger.pay:80 is not among the services this sidecar watches (--watch shop,pay/api)"
    );
}

#[test]
fn a_port_is_chosen_by_number_or_by_default() {
    let directory = Directory::from_view(&view(), None);
    let api = directory.service(&key("api")).unwrap();
    assert_eq!(api.port(None).unwrap().port, 8080);
    assert_eq!(api.port(Some(80)).unwrap().port, 8080);
    assert!(api.port(Some(9999)).is_none());
    let db = directory.service(&key("db")).unwrap();
    assert_eq!(db.port(Some(5432)).unwrap().port, 5432);
    assert_eq!(db.port(None).unwrap().port, 8081);
}

const DENY_WEST: &str = r#"{"apiVersion": "policy.strait.dev/v1alpha1",
    "kind": "AuthorizationPolicy", "metadata": {"name": "no-west", "namespace": "shop"},
    "spec": {"targetRef": {"kind": "Service", "name": "api"}, "action": "deny",
    "rules": [{"from": [{"clusters": ["west"]}]}]}}"#;

/// A new view keeps the previous policy table while its documents are the same (a catalog
/// change), and builds a new one when any of them changed, here only by its version.
#[test]
fn an_unchanged_policy_set_keeps_its_table_across_views() {
    let deny = |stamp: u64| PolicyDocument {
        kind: "AuthorizationPolicy".into(),
        namespace: "shop".into(),
        name: "no-west".into(),
        document: DENY_WEST.into(),
        stamp,
        origin: "east".into(),
    };
    let mut first_view = view();
    first_view.policies = vec![deny(1)];
    let first = Directory::from_view(&first_view, None);
    assert_eq!(first.policies.refused, 0);
    let west: SpiffeId = "spiffe://mesh.test/cluster/west/ns/shop/sa/web"
        .parse()
        .unwrap();
    let decide = |d: &Directory| {
        d.policies.authorize(
            &Namespace::new("shop").unwrap(),
            &ServiceName::new("api").unwrap(),
            &Request {
                caller: Some(&west),
                http: None,
                principal: None,
                caller_location: None,
                caller_healthy: true,
            },
        )
    };
    assert!(matches!(decide(&first), Decision::Deny { .. }));

    let mut catalog_change = first_view.clone();
    catalog_change.version += 1;
    catalog_change.services.pop();
    let second = Directory::from_view(&catalog_change, Some(&first));
    assert!(Arc::ptr_eq(&first.policies, &second.policies));

    let mut new_version = catalog_change.clone();
    new_version.policies = vec![deny(2)];
    let third = Directory::from_view(&new_version, Some(&second));
    assert!(!Arc::ptr_eq(&second.policies, &third.policies));
    assert!(matches!(decide(&third), Decision::Deny { .. }));

    new_version.policies.clear();
    let fourth = Directory::from_view(&new_version, Some(&third));
    assert_eq!(decide(&fourth), Decision::Allow);
}

/// A deterministic pseudo-random source.
struct Walk(Seeded);

impl Walk {
    fn next(&mut self, below: u64) -> u64 {
        self.0.below(below)
    }

    /// One service as a gateway could send it: endpoints here and elsewhere, virtual addresses.
    fn entry(&mut self, i: u64) -> strait_federation::view::ViewEntry {
        use strait_federation::proto::workload::{Backend, EndpointView};
        let name = format!("s{i}");
        let endpoint = |walk: &mut Walk| EndpointView {
            // Few addresses, so that services share some (a pod behind two services).
            address: format!("10.0.0.{}:80", walk.next(12)),
            hostname: if walk.next(2) == 0 {
                format!("pod-{}", walk.next(3))
            } else {
                String::new()
            },
            ready: walk.next(5) > 0,
        };
        let mut backends = Vec::new();
        for cluster in ["east", "west"] {
            if self.next(3) > 0 {
                let endpoints = (0..self.next(3)).map(|_| endpoint(self)).collect();
                backends.push(Backend {
                    cluster: cluster.into(),
                    endpoints,
                    ..Backend::default()
                });
            }
        }
        let virtual_addresses = (0..self.next(3))
            .map(|_| VirtualAddress {
                // Few addresses too, so that one moves from a service to another.
                address: format!("240.0.0.{}", self.next(20)),
                namespace: "shop".into(),
                service: name.clone(),
                cluster: if self.next(2) == 0 {
                    "west".into()
                } else {
                    String::new()
                },
                hostname: String::new(),
            })
            .collect();
        strait_federation::view::ViewEntry {
            service: strait_federation::proto::workload::ServiceView {
                namespace: "shop".into(),
                name,
                ports: vec![strait_federation::proto::workload::PortSpec {
                    name: "http".into(),
                    port: 80 + self.next(2) as u32,
                    protocol: "http".into(),
                }],
                backends,
            },
            virtual_addresses,
        }
    }
}

/// Everything a directory answers about the walk's names and addresses.
fn answers(directory: &Directory) -> Vec<String> {
    let mut all = vec![format!("{} services", directory.len())];
    for i in 0..25 {
        let key = key(&format!("s{i}"));
        all.push(format!("{:?}", directory.service(&key)));
        all.push(format!("{:?}", directory.resolve(&format!("s{i}.shop:80"))));
    }
    for i in 0..12 {
        let address: SocketAddr = format!("10.0.0.{i}:80").parse().unwrap();
        all.push(format!(
            "{:?}",
            directory.service_at(&address).map(|e| &e.key)
        ));
    }
    for i in 0..20 {
        let vip = format!("240.0.0.{i}");
        all.push(format!("{:?}", directory.resolve(&vip)));
        all.push(format!("{}", directory.is_virtual(&vip.parse().unwrap())));
    }
    all
}

#[test]
fn a_directory_kept_by_deltas_answers_as_one_built_from_the_whole_view() {
    use strait_federation::view::{HeldView, Interest, ViewLog};
    let mut walk = Walk(Seeded::new(11));
    let mut log = ViewLog::default();
    let everything = Interest::default();
    let mut held = HeldView::default();
    let mut directory = Directory::default();
    let mut sent = 0;
    let mut at = None;
    for step in 0..400 {
        let changes: Vec<_> = (0..=walk.next(3))
            .map(|_| {
                let i = walk.next(25);
                let k = key(&format!("s{i}"));
                (k, (walk.next(4) > 0).then(|| walk.entry(i)))
            })
            .collect();
        log.update(changes);
        let part = at
            .and_then(|at| log.delta(at, &everything))
            .unwrap_or_else(|| log.whole(&everything));
        if part.is_empty() {
            continue;
        }
        // Settings with a whole view, and now and then with a delta.
        let settings = (part.whole || step % 7 == 0).then(|| CatalogView {
            cluster: "east".into(),
            ..CatalogView::default()
        });
        for message in part.messages(sent, settings) {
            sent = message.version;
            directory = if message.delta_from == 0 {
                Directory::from_view(&message, Some(&directory))
            } else {
                directory.with_delta(&message)
            };
            held.apply(message).unwrap();
        }
        at = Some(log.version());
        let rebuilt = Directory::from_view(&held.whole(), None);
        assert_eq!(answers(&directory), answers(&rebuilt), "step {step}");
        assert_eq!(directory.version, rebuilt.version, "step {step}");
    }
    assert!(sent > 100, "the walk sent {sent} messages only");
}

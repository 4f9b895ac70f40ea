//! The sidecar's view of the catalog, as its gateway streams it: which services exist, their
//! ports, their endpoints in this cluster and the other clusters that serve them. It answers
//! "where does this name go" without any I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::policy::{self, Policies};
use strait_federation::catalog::{Port, Protocol, ServiceKey};
use strait_federation::cidr::CidrRange;
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use strait_federation::location::Location;
use strait_federation::proto::workload::CatalogView;

/// One endpoint of a service in this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub address: SocketAddr,
    pub hostname: Option<String>,
    pub ready: bool,
}

/// A service as this sidecar can reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    pub ports: Vec<Port>,
    /// Endpoints in this cluster (dialled directly).
    pub local: Vec<LocalEndpoint>,
    /// Other clusters serving it (reached through the gateways), with their endpoints'
    /// hostnames for per-endpoint names, and where they run.
    pub remote: Vec<(ClusterName, Vec<String>, Location)>,
}

impl ServiceEntry {
    /// The port a request for `port` goes to: that port when the service has it; with no port
    /// given (or the HTTP default, 80, that it lacks), its only port or its first HTTP port.
    pub fn port(&self, port: Option<u16>) -> Option<&Port> {
        if let Some(wanted) = port
            && let Some(found) = self.ports.iter().find(|p| p.port == wanted)
        {
            return Some(found);
        }
        if port.is_some_and(|p| p != 80) {
            return None;
        }
        if let [only] = self.ports.as_slice() {
            return Some(only);
        }
        self.ports.iter().find(|p| p.protocol != Protocol::Tcp)
    }
}

/// Where a name points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub service: ServiceKey,
    /// Only this cluster (`<cluster>.<svc>.<ns>.svc.clusterset.local`, or this cluster for
    /// `cluster.local` names).
    pub cluster: Option<ClusterName>,
    /// Only this endpoint (`<pod>.<cluster>.<svc>...`).
    pub hostname: Option<String>,
    /// The port written in the name, if any.
    pub port: Option<u16>,
}

/// The catalog as one sidecar sees it.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub cluster: Option<ClusterName>,
    /// The gateway's relay, for flows to other clusters.
    pub relay: Option<SocketAddr>,
    pub version: u64,
    services: HashMap<ServiceKey, ServiceEntry>,
    /// Endpoint addresses of this cluster, for transparently intercepted connections.
    by_address: HashMap<SocketAddr, ServiceKey>,
    /// The virtual addresses the gateway's DNS hands out, and the names they stand for.
    by_vip: HashMap<IpAddr, Destination>,
    /// The ranges they come from.
    virtual_ranges: Vec<CidrRange>,
    /// The mesh-wide policies that concern this sidecar (shared with the previous view's
    /// directory when they did not change).
    pub policies: Arc<Policies>,
    /// Where this cluster runs.
    pub location: Location,
    /// Where the other linked clusters run, as their gateways said.
    pub cluster_locations: HashMap<ClusterName, Location>,
    /// The gateway's tracing and access-log settings for this sidecar.
    pub telemetry: crate::telemetry::Settings,
    /// Clusters the gateway reaches badly now: tried after every other cluster.
    pub degraded: std::collections::HashSet<ClusterName>,
    /// The services the sidecar declared (`--watch`, as written), when it did: the view holds
    /// only those.
    pub watching: Option<String>,
}

fn parse_port(port: &strait_federation::proto::workload::PortSpec) -> Option<Port> {
    Some(Port {
        name: port.name.clone(),
        port: u16::try_from(port.port).ok().filter(|p| *p != 0)?,
        protocol: Protocol::parse(&port.protocol)?,
    })
}

impl Directory {
    /// Builds the view from what the gateway sent; entries that do not parse are skipped (the
    /// gateway checked them, so this only guards against a newer gateway's additions). The
    /// policy table of `previous` is kept when the view's policies are the same.
    pub fn from_view(view: &CatalogView, previous: Option<&Directory>) -> Self {
        let cluster = ClusterName::new(view.cluster.clone()).ok();
        let mut services = HashMap::new();
        let mut by_address = HashMap::new();
        for service in &view.services {
            let (Ok(namespace), Ok(name)) = (
                Namespace::new(service.namespace.clone()),
                ServiceName::new(service.name.clone()),
            ) else {
                continue;
            };
            let key = ServiceKey { namespace, name };
            let mut entry = ServiceEntry {
                key: key.clone(),
                ports: service.ports.iter().filter_map(parse_port).collect(),
                local: Vec::new(),
                remote: Vec::new(),
            };
            for backend in &service.backends {
                let Ok(backend_cluster) = ClusterName::new(backend.cluster.clone()) else {
                    continue;
                };
                if Some(&backend_cluster) == cluster.as_ref() {
                    for endpoint in &backend.endpoints {
                        if let Ok(address) = endpoint.address.parse() {
                            by_address.insert(address, key.clone());
                            entry.local.push(LocalEndpoint {
                                address,
                                hostname: (!endpoint.hostname.is_empty())
                                    .then(|| endpoint.hostname.clone()),
                                ready: endpoint.ready,
                            });
                        }
                    }
                } else if backend.endpoints.iter().any(|e| e.ready) {
                    let hostnames = backend
                        .endpoints
                        .iter()
                        .filter(|e| !e.hostname.is_empty())
                        .map(|e| e.hostname.clone())
                        .collect();
                    let location = Location::new(&backend.cloud, &backend.region, &backend.zone)
                        .unwrap_or_default();
                    entry.remote.push((backend_cluster, hostnames, location));
                }
            }
            services.insert(key, entry);
        }
        let by_vip = view
            .virtual_addresses
            .iter()
            .filter_map(|vip| {
                let service = ServiceKey {
                    namespace: Namespace::new(vip.namespace.clone()).ok()?,
                    name: ServiceName::new(vip.service.clone()).ok()?,
                };
                services.contains_key(&service).then_some(())?;
                let cluster = match vip.cluster.as_str() {
                    "" => None,
                    cluster => Some(ClusterName::new(cluster).ok()?),
                };
                let destination = Destination {
                    service,
                    cluster,
                    hostname: (!vip.hostname.is_empty()).then(|| vip.hostname.clone()),
                    port: None,
                };
                Some((vip.address.parse().ok()?, destination))
            })
            .collect();
        Self {
            cluster,
            relay: view.relay_address.parse().ok(),
            version: view.version,
            services,
            by_address,
            by_vip,
            virtual_ranges: view
                .virtual_ranges
                .iter()
                .filter_map(|r| CidrRange::parse(r).ok())
                .collect(),
            policies: {
                let fingerprint = policy::fingerprint(&view.policies);
                match previous {
                    Some(previous) if previous.policies.fingerprint == fingerprint => {
                        previous.policies.clone()
                    }
                    _ => Arc::new(Policies::build(&view.policies, fingerprint)),
                }
            },
            location: Location::new(&view.cloud, &view.region, &view.zone).unwrap_or_default(),
            cluster_locations: view
                .cluster_locations
                .iter()
                .filter_map(|c| {
                    Some((
                        ClusterName::new(c.cluster.as_str()).ok()?,
                        Location::new(&c.cloud, &c.region, &c.zone).ok()?,
                    ))
                })
                .collect(),
            telemetry: crate::telemetry::Settings::from_view(view),
            degraded: view
                .degraded_clusters
                .iter()
                .filter_map(|c| ClusterName::new(c.as_str()).ok())
                .collect(),
            watching: None,
        }
    }

    /// Why a name resolves to nothing: it is not in the catalog, or not among the services
    /// the sidecar declared.
    pub fn lacks(&self, name: &str) -> String {
        match &self.watching {
            Some(watching) => format!(
                "{name} is not among the services this sidecar watches (--watch {watching})"
            ),
            None => format!("{name} is not a service in the mesh catalog"),
        }
    }

    /// Where a cluster runs, this one included, when its gateway said.
    pub fn location_of(&self, cluster: &ClusterName) -> Option<&Location> {
        if self.cluster.as_ref() == Some(cluster) {
            return Some(&self.location);
        }
        self.cluster_locations.get(cluster)
    }

    /// Whether an address is in a virtual range without standing for any name now (an answer
    /// cached past the name's withdrawal): nothing listens there, so nothing to pass through.
    pub fn is_stale_virtual(&self, address: &IpAddr) -> bool {
        !self.by_vip.contains_key(address)
            && self.virtual_ranges.iter().any(|r| r.contains(*address))
    }

    /// Whether an address is a virtual address of a mesh name.
    pub fn is_virtual(&self, address: &IpAddr) -> bool {
        self.by_vip.contains_key(address)
    }

    /// The entry of a service.
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceEntry> {
        self.services.get(key)
    }

    /// The service whose local endpoint has this address (an intercepted connection's original
    /// destination).
    pub fn service_at(&self, address: &SocketAddr) -> Option<&ServiceEntry> {
        self.by_address
            .get(address)
            .and_then(|key| self.services.get(key))
    }

    /// Where a host name (an HTTP authority or a name given on the command line) points:
    /// `api.shop`, `api.shop.svc`, `api.shop.svc.clusterset.local` (every cluster),
    /// `west.api.shop.svc.clusterset.local` (one cluster), `pod.west.api.shop.svc.clusterset.local`
    /// (one endpoint), `api.shop.svc.cluster.local` (this cluster only); with an optional
    /// `:port`.
    pub fn resolve(&self, authority: &str) -> Option<Destination> {
        if let Some(destination) = self.resolve_virtual(authority) {
            return Some(destination);
        }
        let (host, port) = split_port(authority)?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let (names, scope) =
            if let Some(rest) = labels.strip_suffix(&["svc", "clusterset", "local"]) {
                (rest, Scope::Clusterset)
            } else if let Some(rest) = labels.strip_suffix(&["svc", "cluster", "local"]) {
                (rest, Scope::ThisCluster)
            } else if let Some(rest) = labels.strip_suffix(&["svc"]) {
                (rest, Scope::Short)
            } else {
                (labels.as_slice(), Scope::Short)
            };
        let (hostname, cluster, service, namespace) = match (names, scope) {
            ([service, namespace], _) => (None, None, *service, *namespace),
            ([cluster, service, namespace], Scope::Clusterset) => {
                (None, Some(*cluster), *service, *namespace)
            }
            ([pod, cluster, service, namespace], Scope::Clusterset) => {
                (Some(*pod), Some(*cluster), *service, *namespace)
            }
            _ => return None,
        };
        let key = ServiceKey {
            namespace: Namespace::new(namespace).ok()?,
            name: ServiceName::new(service).ok()?,
        };
        self.services.get(&key)?;
        let cluster = match (cluster, scope) {
            (Some(cluster), _) => Some(ClusterName::new(cluster).ok()?),
            (None, Scope::ThisCluster) => self.cluster.clone(),
            (None, _) => None,
        };
        Some(Destination {
            service: key,
            cluster,
            hostname: hostname.map(str::to_owned),
            port,
        })
    }
}

impl Directory {
    /// Where a virtual address (`240.240.0.7`, `240.240.0.7:8080`, `[fd00::7]:80`) points.
    fn resolve_virtual(&self, authority: &str) -> Option<Destination> {
        if self.by_vip.is_empty() {
            return None;
        }
        let (address, port) = match authority.parse::<SocketAddr>() {
            Ok(socket) => (socket.ip(), Some(socket.port())),
            Err(_) => (
                authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .ok()?,
                None,
            ),
        };
        let mut destination = self.by_vip.get(&address)?.clone();
        destination.port = port;
        Some(destination)
    }
}

#[derive(Clone, Copy)]
enum Scope {
    Clusterset,
    ThisCluster,
    Short,
}

/// Splits `host[:port]` (a bracketed IPv6 literal is not a mesh name: refused).
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::identity::SpiffeId;
    use strait_federation::policy::authorization::{Decision, Request};
    use strait_federation::proto::workload::{
        Backend, EndpointView, PolicyDocument, PortSpec, ServiceView, VirtualAddress,
    };

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
}

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
use strait_federation::proto::workload::{CatalogView, ServiceView, VirtualAddress};

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
    /// The services, by name, by endpoint address and by virtual address.
    catalog: Catalog,
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

/// The services of a directory, in persistent maps: a delta changes what it names and shares
/// the rest with the directory before it (the views in use keep theirs).
#[derive(Debug, Clone, Default)]
struct Catalog {
    services: imbl::HashMap<ServiceKey, Arc<ServiceEntry>>,
    /// Endpoint addresses of this cluster, for transparently intercepted connections (an
    /// address several services share goes to the first by name).
    by_address: imbl::HashMap<SocketAddr, std::collections::BTreeSet<ServiceKey>>,
    /// The virtual addresses the gateway's DNS hands out, and the names they stand for, by
    /// service (a gateway gives an address to one name at a time; were two services to claim
    /// one, the last by name would have it, as in a whole view).
    by_vip: imbl::HashMap<IpAddr, std::collections::BTreeMap<ServiceKey, Destination>>,
    /// Each service's virtual addresses, to take them out with it.
    vips_of: imbl::HashMap<ServiceKey, Arc<[IpAddr]>>,
}

impl Catalog {
    /// Takes a service out, with its endpoint and virtual addresses.
    fn take_out(&mut self, key: &ServiceKey) {
        if let Some(entry) = self.services.remove(key) {
            for endpoint in &entry.local {
                if let Some(keys) = self.by_address.get_mut(&endpoint.address) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_address.remove(&endpoint.address);
                    }
                }
            }
        }
        if let Some(vips) = self.vips_of.remove(key) {
            for vip in vips.iter() {
                if let Some(claims) = self.by_vip.get_mut(vip) {
                    claims.remove(key);
                    if claims.is_empty() {
                        self.by_vip.remove(vip);
                    }
                }
            }
        }
    }

    /// Puts a service in (taken out first when it was there).
    fn put(&mut self, entry: ServiceEntry) {
        for endpoint in &entry.local {
            self.by_address
                .entry(endpoint.address)
                .or_default()
                .insert(entry.key.clone());
        }
        self.services.insert(entry.key.clone(), Arc::new(entry));
    }

    /// Puts virtual addresses in, each for a service held.
    fn put_vips(&mut self, vips: &[VirtualAddress]) {
        let mut added: HashMap<ServiceKey, Vec<IpAddr>> = HashMap::new();
        for vip in vips {
            let Some((address, destination)) = virtual_destination(vip) else {
                continue;
            };
            if !self.services.contains_key(&destination.service) {
                continue;
            }
            added
                .entry(destination.service.clone())
                .or_default()
                .push(address);
            self.by_vip
                .entry(address)
                .or_default()
                .insert(destination.service.clone(), destination);
        }
        for (key, addresses) in added {
            let mut all: Vec<IpAddr> = self
                .vips_of
                .get(&key)
                .map(|a| a.to_vec())
                .unwrap_or_default();
            all.extend(addresses);
            self.vips_of.insert(key, all.into());
        }
    }
}

/// A service as the sidecar keeps it, from the view's; `None` when its name does not parse (the
/// gateway checked it, so only a newer gateway's additions are skipped).
fn service_entry(service: &ServiceView, cluster: Option<&ClusterName>) -> Option<ServiceEntry> {
    let key = ServiceKey {
        namespace: Namespace::new(service.namespace.clone()).ok()?,
        name: ServiceName::new(service.name.clone()).ok()?,
    };
    let mut entry = ServiceEntry {
        key,
        ports: service.ports.iter().filter_map(parse_port).collect(),
        local: Vec::new(),
        remote: Vec::new(),
    };
    for backend in &service.backends {
        let Ok(backend_cluster) = ClusterName::new(backend.cluster.clone()) else {
            continue;
        };
        if Some(&backend_cluster) == cluster {
            for endpoint in &backend.endpoints {
                if let Ok(address) = endpoint.address.parse() {
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
            let location =
                Location::new(&backend.cloud, &backend.region, &backend.zone).unwrap_or_default();
            entry.remote.push((backend_cluster, hostnames, location));
        }
    }
    Some(entry)
}

/// What a virtual address stands for.
fn virtual_destination(vip: &VirtualAddress) -> Option<(IpAddr, Destination)> {
    let service = ServiceKey {
        namespace: Namespace::new(vip.namespace.clone()).ok()?,
        name: ServiceName::new(vip.service.clone()).ok()?,
    };
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
}

/// The key a view names a service by, when it parses.
fn key_of(namespace: &str, name: &str) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: Namespace::new(namespace).ok()?,
        name: ServiceName::new(name).ok()?,
    })
}

impl Directory {
    /// Builds the view from a whole view the gateway sent; entries that do not parse are
    /// skipped (the gateway checked them, so this only guards against a newer gateway's
    /// additions). The policy table of `previous` is kept when the view's policies are the same.
    pub fn from_view(view: &CatalogView, previous: Option<&Directory>) -> Self {
        let mut directory = Directory::default();
        directory.take_settings(view, previous);
        for service in &view.services {
            if let Some(entry) = service_entry(service, directory.cluster.as_ref()) {
                directory.catalog.put(entry);
            }
        }
        directory.catalog.put_vips(&view.virtual_addresses);
        directory
    }

    /// This directory with a delta applied (a message with `delta_from` set): the services it
    /// names are taken out and put in again, the rest is shared; the settings are taken when
    /// the delta carries them. Costs what the delta holds, not the catalog's size.
    pub fn with_delta(&self, delta: &CatalogView) -> Self {
        let mut directory = self.clone();
        if !delta.settings_kept {
            directory.take_settings(delta, Some(self));
        }
        directory.version = delta.version;
        let removed = delta
            .removed_services
            .iter()
            .filter_map(|r| key_of(&r.namespace, &r.name));
        let changed = delta
            .services
            .iter()
            .filter_map(|s| key_of(&s.namespace, &s.name));
        for key in removed.chain(changed) {
            directory.catalog.take_out(&key);
        }
        for service in &delta.services {
            if let Some(entry) = service_entry(service, directory.cluster.as_ref()) {
                directory.catalog.put(entry);
            }
        }
        directory.catalog.put_vips(&delta.virtual_addresses);
        directory
    }

    /// Takes every field of a view but its services.
    fn take_settings(&mut self, view: &CatalogView, previous: Option<&Directory>) {
        self.cluster = ClusterName::new(view.cluster.clone()).ok();
        self.relay = view.relay_address.parse().ok();
        self.version = view.version;
        self.virtual_ranges = view
            .virtual_ranges
            .iter()
            .filter_map(|r| CidrRange::parse(r).ok())
            .collect();
        self.policies = {
            let fingerprint = policy::fingerprint(&view.policies);
            match previous {
                Some(previous) if previous.policies.fingerprint == fingerprint => {
                    previous.policies.clone()
                }
                _ => Arc::new(Policies::build(&view.policies, fingerprint)),
            }
        };
        self.location = Location::new(&view.cloud, &view.region, &view.zone).unwrap_or_default();
        self.cluster_locations = view
            .cluster_locations
            .iter()
            .filter_map(|c| {
                Some((
                    ClusterName::new(c.cluster.as_str()).ok()?,
                    Location::new(&c.cloud, &c.region, &c.zone).ok()?,
                ))
            })
            .collect();
        self.telemetry = crate::telemetry::Settings::from_view(view);
        self.degraded = view
            .degraded_clusters
            .iter()
            .filter_map(|c| ClusterName::new(c.as_str()).ok())
            .collect();
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

    /// How many services the directory holds.
    pub fn len(&self) -> usize {
        self.catalog.services.len()
    }

    /// Whether the directory holds no service.
    pub fn is_empty(&self) -> bool {
        self.catalog.services.is_empty()
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
        !self.catalog.by_vip.contains_key(address)
            && self.virtual_ranges.iter().any(|r| r.contains(*address))
    }

    /// Whether an address is a virtual address of a mesh name.
    pub fn is_virtual(&self, address: &IpAddr) -> bool {
        self.catalog.by_vip.contains_key(address)
    }

    /// The entry of a service.
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceEntry> {
        self.catalog.services.get(key).map(Arc::as_ref)
    }

    /// The service whose local endpoint has this address (an intercepted connection's original
    /// destination).
    pub fn service_at(&self, address: &SocketAddr) -> Option<&ServiceEntry> {
        self.catalog
            .by_address
            .get(address)
            .and_then(|keys| keys.first())
            .and_then(|key| self.service(key))
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
        self.catalog.services.get(&key)?;
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
        if self.catalog.by_vip.is_empty() {
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
        let mut destination = self
            .catalog
            .by_vip
            .get(&address)?
            .values()
            .next_back()?
            .clone();
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
mod tests;

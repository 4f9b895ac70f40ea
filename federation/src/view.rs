//! The catalog as a cluster's sidecars see it, kept as versions so that each sidecar gets only
//! what changed since the view it holds. [`ViewLog`] is the gateway's side: it is told which
//! services changed and answers a whole view or a delta from any recent version. [`HeldView`]
//! is the sidecar's side: it applies what the stream brings and refuses a delta that does not
//! follow the view it holds. Both are sans-IO.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::catalog::{ClustersetService, ServiceKey};
use crate::identity::ClusterName;
use crate::location::Location;
use crate::proto::workload::{
    Backend, CatalogView, EndpointView, PortSpec, ServiceRef, ServiceView, VirtualAddress,
};

/// One service as sidecars get it: its view and the virtual addresses of its names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewEntry {
    pub service: ServiceView,
    pub virtual_addresses: Vec<VirtualAddress>,
}

/// One service of the clusterset view as sidecars get it, each backend with where its cluster
/// runs (`location_of`).
pub fn service_view(
    service: &ClustersetService,
    location_of: impl Fn(&ClusterName) -> Location,
) -> ServiceView {
    let ports = service
        .backends
        .first()
        .map(|(_, spec)| {
            spec.ports
                .iter()
                .map(|p| PortSpec {
                    name: p.name.clone(),
                    port: u32::from(p.port),
                    protocol: p.protocol.as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    ServiceView {
        namespace: service.key.namespace.to_string(),
        name: service.key.name.to_string(),
        ports,
        backends: service
            .backends
            .iter()
            .map(|(cluster, spec)| {
                let location = location_of(cluster);
                Backend {
                    cluster: cluster.to_string(),
                    endpoints: spec
                        .endpoints
                        .iter()
                        .map(|e| EndpointView {
                            address: e.address.to_string(),
                            hostname: e.hostname.clone().unwrap_or_default(),
                            ready: e.ready,
                        })
                        .collect(),
                    cloud: location.cloud,
                    region: location.region,
                    zone: location.zone,
                }
            })
            .collect(),
    }
}

/// How many service changes the log keeps for deltas; a sidecar further behind gets a whole
/// view.
pub const KEPT_CHANGES: usize = 65_536;

/// The services of the view at their latest version, and which changed at each version.
#[derive(Debug)]
pub struct ViewLog {
    version: u64,
    services: BTreeMap<ServiceKey, Arc<ViewEntry>>,
    /// Every change still kept: the version it made and the service it touched.
    changes: VecDeque<(u64, ServiceKey)>,
    /// A delta can start at this version or later (the changes after it are all kept).
    floor: u64,
    kept: usize,
}

impl Default for ViewLog {
    fn default() -> Self {
        Self::new(KEPT_CHANGES)
    }
}

/// The services a sidecar asked for: every one, or those of some namespaces and some
/// services by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interest {
    namespaces: std::collections::BTreeSet<String>,
    services: std::collections::BTreeSet<(String, String)>,
}

impl Interest {
    /// What a watch request asks for.
    pub fn of(namespaces: &[String], services: &[ServiceRef]) -> Self {
        Self {
            namespaces: namespaces.iter().cloned().collect(),
            services: services
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect(),
        }
    }

    /// Whether every service is asked for.
    pub fn is_everything(&self) -> bool {
        self.namespaces.is_empty() && self.services.is_empty()
    }

    /// Whether a service is asked for.
    pub fn includes(&self, key: &ServiceKey) -> bool {
        self.is_everything()
            || self.namespaces.contains(key.namespace.as_str())
            || self
                .services
                .iter()
                .any(|(ns, name)| ns == key.namespace.as_str() && name == key.name.as_str())
    }
}

/// What one message to a sidecar carries about services.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicesPart {
    /// Whether this is the whole view (else a delta).
    pub whole: bool,
    pub services: Vec<ServiceView>,
    pub virtual_addresses: Vec<VirtualAddress>,
    pub removed: Vec<ServiceRef>,
}

impl ServicesPart {
    /// Whether a delta changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.whole && self.services.is_empty() && self.removed.is_empty()
    }
}

impl ViewLog {
    /// An empty view at version 0 that keeps up to `kept` changes.
    pub fn new(kept: usize) -> Self {
        Self {
            version: 0,
            services: BTreeMap::new(),
            changes: VecDeque::new(),
            floor: 0,
            kept: kept.max(1),
        }
    }

    /// The version of the view now.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many services the view has.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the view has no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The entry of one service.
    pub fn get(&self, key: &ServiceKey) -> Option<&ViewEntry> {
        self.services.get(key).map(Arc::as_ref)
    }

    /// The services held, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// Sets services to what they are now (`None`: gone). Entries equal to those held are not
    /// changes. Returns whether anything changed (then the version grew by one).
    pub fn update(
        &mut self,
        changed: impl IntoIterator<Item = (ServiceKey, Option<ViewEntry>)>,
    ) -> bool {
        let next = self.version + 1;
        let mut any = false;
        for (key, entry) in changed {
            let same = match (&entry, self.services.get(&key)) {
                (Some(new), Some(held)) => **held == *new,
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            match entry {
                Some(entry) => self.services.insert(key.clone(), Arc::new(entry)),
                None => self.services.remove(&key),
            };
            self.changes.push_back((next, key));
            any = true;
        }
        if any {
            self.version = next;
            while self.changes.len() > self.kept {
                if let Some((version, _)) = self.changes.pop_front() {
                    self.floor = self.floor.max(version);
                }
            }
        }
        any
    }

    /// The whole view's services (those asked for).
    pub fn whole(&self, interest: &Interest) -> ServicesPart {
        let mut part = ServicesPart {
            whole: true,
            ..ServicesPart::default()
        };
        let asked = self.services.iter().filter(|(k, _)| interest.includes(k));
        for (_, entry) in asked {
            part.services.push(entry.service.clone());
            part.virtual_addresses
                .extend(entry.virtual_addresses.iter().cloned());
        }
        part
    }

    /// What changed since `version` among the services asked for: `None` when the log no
    /// longer keeps all of it (or the version is not one it made), so only a whole view will do.
    pub fn delta(&self, version: u64, interest: &Interest) -> Option<ServicesPart> {
        if version < self.floor || version > self.version {
            return None;
        }
        let mut touched: Vec<&ServiceKey> = self
            .changes
            .iter()
            .rev()
            .take_while(|(at, _)| *at > version)
            .map(|(_, key)| key)
            .filter(|key| interest.includes(key))
            .collect();
        touched.sort();
        touched.dedup();
        let mut part = ServicesPart::default();
        for key in touched {
            match self.services.get(key) {
                Some(entry) => {
                    part.services.push(entry.service.clone());
                    part.virtual_addresses
                        .extend(entry.virtual_addresses.iter().cloned());
                }
                None => part.removed.push(ServiceRef {
                    namespace: key.namespace.to_string(),
                    name: key.name.to_string(),
                }),
            }
        }
        Some(part)
    }
}

/// A delta that does not follow the view held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a delta from version {from} came to a sidecar holding version {held}")]
pub struct ViewGap {
    pub from: u64,
    pub held: u64,
}

/// A service in a sidecar's view, by namespace and name as sent.
type Name = (String, String);

/// The view a sidecar holds, as the stream built it.
#[derive(Debug, Clone, Default)]
pub struct HeldView {
    /// Every field but the services and virtual addresses, as last sent whole.
    settings: CatalogView,
    services: BTreeMap<Name, ServiceView>,
    virtual_addresses: BTreeMap<Name, Vec<VirtualAddress>>,
    /// Whether a whole view arrived on this stream.
    started: bool,
}

impl HeldView {
    /// Applies one message of the stream. A delta must change the version held; anything else
    /// is refused and leaves the view as it was.
    pub fn apply(&mut self, mut message: CatalogView) -> Result<(), ViewGap> {
        let services = std::mem::take(&mut message.services);
        let addresses = std::mem::take(&mut message.virtual_addresses);
        let removed = std::mem::take(&mut message.removed_services);
        if message.delta_from != 0 {
            if !self.started || message.delta_from != self.settings.version {
                return Err(ViewGap {
                    from: message.delta_from,
                    held: if self.started {
                        self.settings.version
                    } else {
                        0
                    },
                });
            }
        } else {
            self.services.clear();
            self.virtual_addresses.clear();
            self.started = true;
        }
        for gone in removed {
            let name = (gone.namespace, gone.name);
            self.services.remove(&name);
            self.virtual_addresses.remove(&name);
        }
        for service in services {
            let name = (service.namespace.clone(), service.name.clone());
            self.virtual_addresses.remove(&name);
            self.services.insert(name, service);
        }
        for address in addresses {
            let name = (address.namespace.clone(), address.service.clone());
            if self.services.contains_key(&name) {
                self.virtual_addresses
                    .entry(name)
                    .or_default()
                    .push(address);
            }
        }
        if message.delta_from != 0 && message.settings_kept {
            self.settings.version = message.version;
        } else {
            message.delta_from = 0;
            message.settings_kept = false;
            self.settings = message;
        }
        Ok(())
    }

    /// How many services the view holds.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the view holds no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The version held.
    pub fn version(&self) -> u64 {
        self.settings.version
    }

    /// The view held, whole, as a gateway would send it.
    pub fn whole(&self) -> CatalogView {
        let mut view = self.settings.clone();
        view.services = self.services.values().cloned().collect();
        view.virtual_addresses = self
            .virtual_addresses
            .values()
            .flat_map(|a| a.iter().cloned())
            .collect();
        view
    }
}

#[cfg(test)]
mod tests;

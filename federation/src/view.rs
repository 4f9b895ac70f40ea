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

/// What a sidecar is sent about services: the whole view, or what changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicesPart {
    /// Whether this is the whole view (else a delta).
    pub whole: bool,
    /// The services, each with its virtual addresses (shared with the log: no copy).
    pub entries: Vec<Arc<ViewEntry>>,
    pub removed: Vec<ServiceRef>,
}

/// How many services one message carries at most: a larger view goes in parts, so that no
/// message (and no connection's buffer, which keeps the largest message's size) holds the
/// whole catalog.
pub const SERVICES_PER_MESSAGE: usize = 256;

impl ServicesPart {
    /// Whether a delta changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.whole && self.entries.is_empty() && self.removed.is_empty()
    }

    /// The messages that carry it on a stream whose last message had version `last`, made one
    /// at a time as they are taken: `settings` (every field but the services, or `None` when
    /// they did not change) go in the first; each part after it is a delta of the one before,
    /// marked `continued` but the last.
    pub fn messages(self, last: u64, settings: Option<CatalogView>) -> Messages {
        let settings_kept = settings.is_none();
        let mut first = settings.unwrap_or_default();
        first.delta_from = if self.whole { 0 } else { last };
        first.settings_kept = settings_kept && !self.whole;
        first.removed_services = self.removed;
        Messages {
            first: Some(first),
            entries: self.entries,
            at: 0,
            version: last,
            per_message: SERVICES_PER_MESSAGE,
        }
    }

    /// As [`ServicesPart::messages`], in one message whatever its size: for a sidecar that
    /// takes no deltas (an older one), which would take each part for the whole view.
    pub fn message(self, last: u64, settings: Option<CatalogView>) -> Messages {
        Messages {
            per_message: usize::MAX,
            ..self.messages(last, settings)
        }
    }
}

/// The messages of a [`ServicesPart`], made as they are taken.
#[derive(Debug)]
pub struct Messages {
    /// The first message, until it is taken.
    first: Option<CatalogView>,
    entries: Vec<Arc<ViewEntry>>,
    /// The next entry to send.
    at: usize,
    /// The version of the last message made.
    version: u64,
    /// Services a message carries at most.
    per_message: usize,
}

impl Messages {
    /// How many messages there are in all (the one not yet taken included).
    pub fn len(&self) -> usize {
        let parts = self
            .entries
            .len()
            .saturating_sub(self.at)
            .div_ceil(self.per_message);
        if self.first.is_some() {
            parts.max(1)
        } else {
            parts
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for Messages {
    type Item = CatalogView;

    fn next(&mut self) -> Option<CatalogView> {
        let mut message = match self.first.take() {
            Some(first) => first,
            None if self.at < self.entries.len() => CatalogView {
                delta_from: self.version,
                settings_kept: true,
                ..CatalogView::default()
            },
            None => return None,
        };
        self.version += 1;
        message.version = self.version;
        let end = self
            .entries
            .len()
            .min(self.at.saturating_add(self.per_message));
        for entry in &self.entries[self.at..end] {
            message.services.push(entry.service.clone());
            message
                .virtual_addresses
                .extend(entry.virtual_addresses.iter().cloned());
        }
        self.at = end;
        message.continued = self.at < self.entries.len();
        Some(message)
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
        ServicesPart {
            whole: true,
            entries: self
                .services
                .iter()
                .filter(|(k, _)| interest.includes(k))
                .map(|(_, entry)| entry.clone())
                .collect(),
            removed: Vec::new(),
        }
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
                Some(entry) => part.entries.push(entry.clone()),
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

impl ViewGap {
    /// Whether a message may be taken by a stream whose last message had version `held`
    /// (`None`: none yet): a whole view always, a delta only when it changes that version.
    pub fn check(held: Option<u64>, message: &CatalogView) -> Result<(), ViewGap> {
        if message.delta_from == 0 || held == Some(message.delta_from) {
            return Ok(());
        }
        Err(ViewGap {
            from: message.delta_from,
            held: held.unwrap_or(0),
        })
    }
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
    /// Whether the last message ended a view (no part of it is still to come).
    complete: bool,
}

impl HeldView {
    /// Applies one message of the stream. A delta must change the version held; anything else
    /// is refused and leaves the view as it was.
    pub fn apply(&mut self, mut message: CatalogView) -> Result<(), ViewGap> {
        let continued = std::mem::take(&mut message.continued);
        let services = std::mem::take(&mut message.services);
        let addresses = std::mem::take(&mut message.virtual_addresses);
        let removed = std::mem::take(&mut message.removed_services);
        ViewGap::check(self.started.then_some(self.settings.version), &message)?;
        if message.delta_from == 0 {
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
        self.complete = !continued;
        Ok(())
    }

    /// Whether the view is whole: started, and no part of its last change still to come.
    pub fn complete(&self) -> bool {
        self.started && self.complete
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

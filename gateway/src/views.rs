//! The catalog as this cluster's sidecars and DNS see it, kept current one change at a time.
//! Whoever changes the catalog says which services it touched; one task merges those again
//! (the clusterset view), puts them in the DNS zone in place, and logs them for the sidecars'
//! streams, which send each sidecar only what changed since the view it holds. The work of a
//! change follows the change, not the catalog's size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strait_federation::catalog::{ClustersetService, ServiceKey, clusterset, clusterset_service};
use strait_federation::proto::workload::VirtualAddress;
use strait_federation::view::{ViewEntry, ViewLog, service_view};

use crate::dns::ZoneKeeper;
use crate::{Shared, lock};

/// Catalog changes closer together than this are merged in one pass.
const COALESCE: Duration = Duration::from_millis(20);

/// Which services a catalog change touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// These services (their local instance or an import).
    Services(BTreeSet<ServiceKey>),
    /// Possibly any: a peer withdrawn, a cluster moved, a store reloaded.
    All,
}

impl Touched {
    /// The change of these services.
    pub fn services(keys: impl IntoIterator<Item = ServiceKey>) -> Self {
        Self::Services(keys.into_iter().collect())
    }

    fn add(&mut self, other: Touched) {
        match (&mut *self, other) {
            (Touched::All, _) => {}
            (this, Touched::All) => *this = Touched::All,
            (Touched::Services(mine), Touched::Services(theirs)) => mine.extend(theirs),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Touched::Services(keys) if keys.is_empty())
    }
}

/// What sidecars' streams read, and what the catalog's writers tell.
pub struct Views {
    /// The services as sidecars get them, with the changes of recent versions.
    pub log: std::sync::Mutex<ViewLog>,
    /// What changed since the last pass.
    touched: std::sync::Mutex<Touched>,
    /// Grows whenever what sidecars get besides the services changes (policies, trust, taps,
    /// locations, degraded peers): a stream then sends those again.
    settings: AtomicU64,
}

impl Default for Views {
    fn default() -> Self {
        Self {
            log: std::sync::Mutex::new(ViewLog::default()),
            touched: std::sync::Mutex::new(Touched::All),
            settings: AtomicU64::new(1),
        }
    }
}

impl Views {
    /// Notes services touched, for the next pass.
    pub fn touch(&self, touched: Touched) {
        lock(&self.touched).add(touched);
    }

    /// Notes that the settings changed.
    pub fn settings_changed(&self) {
        self.settings.fetch_add(1, Ordering::SeqCst);
    }

    /// The settings' generation now.
    pub fn settings(&self) -> u64 {
        self.settings.load(Ordering::SeqCst)
    }

    fn take_touched(&self) -> Touched {
        std::mem::replace(
            &mut *lock(&self.touched),
            Touched::Services(BTreeSet::new()),
        )
    }
}

/// The task's own state between passes.
struct Keeper {
    /// The clusterset view as last merged, in key order (the zone is built in that order).
    merged: BTreeMap<ServiceKey, ClustersetService>,
    dns: Option<ZoneKeeper>,
}

/// Makes the first view (and zone) now, so the gateway is ready with them, then starts the
/// task that keeps them current.
pub fn start(shared: &Arc<Shared>, dns: Option<ZoneKeeper>) {
    let mut keeper = Keeper {
        merged: BTreeMap::new(),
        dns,
    };
    keeper.pass(shared, shared.views.take_touched());
    tokio::spawn(keep(shared.clone(), keeper));
}

async fn keep(shared: Arc<Shared>, mut keeper: Keeper) {
    let mut changes = shared.catalog_tx.subscribe();
    changes.borrow_and_update();
    let mut leader_vips = shared.leader_vips.subscribe();
    loop {
        if let Some(dns) = &mut keeper.dns {
            dns.write_pool(&shared).await;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = leader_vips.changed() => {
                if changed.is_err() {
                    return;
                }
                // A standby replica gives the names the leading replica's addresses.
                let file = leader_vips.borrow_and_update().clone();
                if let (Some(file), Some(dns)) = (file, &mut keeper.dns) {
                    dns.adopt_pool(&shared, &file);
                    shared.views.touch(Touched::All);
                }
            }
            () = shared.shutdown.cancelled() => return,
        }
        tokio::time::sleep(COALESCE).await;
        changes.borrow_and_update();
        let touched = shared.views.take_touched();
        if !touched.is_empty() {
            keeper.pass(&shared, touched);
        }
    }
}

impl Keeper {
    /// Merges the touched services again, and brings the zone and the sidecars' log in line.
    fn pass(&mut self, shared: &Shared, touched: Touched) {
        let started = Instant::now();
        let merged: Vec<(ServiceKey, Option<ClustersetService>)> = {
            let state = lock(&shared.state);
            let cluster = &shared.config.cluster;
            match &touched {
                Touched::Services(keys) => keys
                    .iter()
                    .map(|key| {
                        let local = state.effective(key);
                        let service =
                            clusterset_service(key, cluster, local.as_ref(), state.imports.iter());
                        (key.clone(), service)
                    })
                    .collect(),
                Touched::All => {
                    let local = state.local_services();
                    let now: HashMap<ServiceKey, ClustersetService> =
                        clusterset(cluster, &local, state.imports.iter())
                            .into_iter()
                            .map(|s| (s.key.clone(), s))
                            .collect();
                    let gone: Vec<ServiceKey> = self
                        .merged
                        .keys()
                        .filter(|k| !now.contains_key(*k))
                        .cloned()
                        .collect();
                    now.into_iter()
                        .map(|(k, s)| (k, Some(s)))
                        .chain(gone.into_iter().map(|k| (k, None)))
                        .collect()
                }
            }
        };
        let changed: Vec<(ServiceKey, Option<ClustersetService>)> = merged
            .into_iter()
            .filter(|(key, service)| self.merged.get(key) != service.as_ref())
            .collect();
        for (key, service) in &changed {
            match service {
                Some(service) => self.merged.insert(key.clone(), service.clone()),
                None => self.merged.remove(key),
            };
        }
        if let Some(dns) = &mut self.dns {
            if dns.rebuilds() {
                let all: Vec<ClustersetService> = self.merged.values().cloned().collect();
                dns.build(shared, &all);
            } else {
                dns.update(shared, &changed);
            }
        }
        // Every service when a cluster may have moved (its backends' locations are in the
        // view); else only those that changed.
        let keys: Vec<ServiceKey> = match touched {
            Touched::All => {
                let mut keys: BTreeSet<ServiceKey> = self.merged.keys().cloned().collect();
                keys.extend(changed.into_iter().map(|(k, _)| k));
                keys.into_iter().collect()
            }
            Touched::Services(_) => changed.into_iter().map(|(k, _)| k).collect(),
        };
        let locations = lock(&shared.locations).clone();
        let zone = shared.zone.borrow().clone();
        let zone = zone.as_deref().map(crate::dns::read);
        let entries: Vec<(ServiceKey, Option<ViewEntry>)> = keys
            .into_iter()
            .map(|key| {
                let entry = self.merged.get(&key).map(|service| ViewEntry {
                    service: service_view(service, |cluster| {
                        if *cluster == shared.config.cluster {
                            shared.config.location.clone()
                        } else {
                            locations.get(cluster).cloned().unwrap_or_default()
                        }
                    }),
                    virtual_addresses: zone
                        .as_deref()
                        .map(|z| virtual_addresses(z, &key))
                        .unwrap_or_default(),
                });
                (key, entry)
            })
            .collect();
        drop(zone);
        let moved = lock(&shared.views.log).update(entries);
        shared
            .metrics
            .view_update_seconds
            .set(started.elapsed().as_secs_f64());
        if moved {
            shared.views_tx.send_modify(|n| *n += 1);
        }
    }
}

/// The virtual addresses of one service's names in the zone.
fn virtual_addresses(zone: &crate::dns::zone::Zone, key: &ServiceKey) -> Vec<VirtualAddress> {
    let mut all = Vec::new();
    for name in zone.virtual_names_of(key) {
        let addresses = std::iter::once(std::net::IpAddr::V4(name.vips.v4))
            .chain(name.vips.v6.map(std::net::IpAddr::V6));
        for address in addresses {
            all.push(VirtualAddress {
                address: address.to_string(),
                namespace: name.service.namespace.to_string(),
                service: name.service.name.to_string(),
                cluster: name
                    .cluster
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                hostname: name.hostname.clone().unwrap_or_default(),
            });
        }
    }
    all
}

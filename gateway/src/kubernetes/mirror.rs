//! A standby replica's view of the clusters it has no session with. Every replica peers, but a
//! peer that dials this cluster reaches the leader (the Service carrying QUIC selects it), so a
//! standby reads what the leader imported from such peers in the API: the ServiceImports and
//! their EndpointSlices become its imported catalogs ([`catalogs`], no IO) for every cluster it
//! has no live session with; and the durable state's virtual addresses become its DNS pool, so a
//! sidecar that resolves a name through one replica and takes its catalog from the other sees
//! one address. When it takes the Lease over it starts from the same view, which its peers'
//! snapshots then replace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use strait_federation::catalog::{
    Endpoint, ImportedCatalog, Port, Position, ServiceKey, ServiceSpec,
};
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use tokio::sync::Notify;

use super::crd::ServiceImport;
use super::export::protocol_of;
use super::import::{MANAGER, SERVICE_LABEL, SOURCE_LABEL};
use super::slices::{self, Slice};
use super::{Health, durable};
use crate::dns::vip::PoolFile;
use crate::{Shared, lock};

/// The imported catalogs the API shows: per source cluster (this one left out), the services
/// with the ports of their ServiceImport and the endpoints of that cluster's slice.
pub fn catalogs(
    local: &ClusterName,
    imports: &[Arc<ServiceImport>],
    slices: &[(String, Slice)],
) -> BTreeMap<ClusterName, ImportedCatalog> {
    let mut endpoints: BTreeMap<(String, String, String), Vec<Endpoint>> = BTreeMap::new();
    for (cluster, slice) in slices {
        let port = slice.ports.first().and_then(|p| p.port).unwrap_or(0);
        let list = endpoints
            .entry((
                cluster.clone(),
                slice.namespace.clone(),
                slice.service.clone(),
            ))
            .or_default();
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                list.push(Endpoint {
                    address: SocketAddr::new(*address, port),
                    hostname: endpoint.hostname.clone(),
                    ready: endpoint.ready,
                });
            }
        }
    }
    let mut out: BTreeMap<ClusterName, ImportedCatalog> = BTreeMap::new();
    for import in imports {
        let (Some(namespace), name) = (import.namespace(), import.name_any()) else {
            continue;
        };
        let (Ok(ns), Ok(service)) = (
            Namespace::new(namespace.as_str()),
            ServiceName::new(name.as_str()),
        ) else {
            continue;
        };
        let key = ServiceKey {
            namespace: ns,
            name: service,
        };
        let ports: Vec<Port> = import
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(Port {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    protocol: protocol_of(p.app_protocol.as_deref()),
                })
            })
            .collect();
        let clusters: BTreeSet<String> = import
            .status
            .iter()
            .flat_map(|s| s.clusters.iter().map(|c| c.cluster.clone()))
            .collect();
        for cluster in clusters {
            let Ok(name) = ClusterName::new(cluster.as_str()) else {
                continue;
            };
            if &name == local {
                continue;
            }
            let mut list = endpoints
                .get(&(cluster, namespace.clone(), key.name.to_string()))
                .cloned()
                .unwrap_or_default();
            list.sort_by_key(|e| e.address);
            out.entry(name)
                .or_insert_with(|| ImportedCatalog {
                    position: Position::NONE,
                    services: BTreeMap::new(),
                })
                .services
                .insert(
                    key.clone(),
                    ServiceSpec {
                        export: true,
                        ports: ports.clone(),
                        endpoints: list,
                        labels: BTreeMap::new(),
                        exported_at_ms: 0,
                    },
                );
        }
    }
    out
}

/// The watches a standby reads the leader's imports through; they run only while it stands
/// by, so a leader (most gateways, with one replica) holds no second copy of its imports.
struct Watches {
    imports: Store<ServiceImport>,
    slices: Store<DynamicObject>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    health: Arc<Health>,
}

/// The parts of the gateway's health the watches report on.
const PARTS: [&str; 2] = ["imported serviceimports", "imported endpointslices"];

impl Watches {
    fn start(
        client: &Client,
        resource: &ApiResource,
        changed: &Arc<Notify>,
        health: &Arc<Health>,
    ) -> Self {
        let selector = format!("{}={MANAGER}", super::import::MANAGED_BY);
        let config = watcher::Config::default().labels(&selector);
        let (imports, writer) = reflector::store::<ServiceImport>();
        let stream = super::watch(Api::<ServiceImport>::all(client.clone()), config.clone());
        let mut tasks = vec![tokio::spawn(super::reflect(
            PARTS[0],
            writer,
            stream,
            changed.clone(),
            health.clone(),
        ))];
        let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
        let slices = writer.as_reader();
        let stream = super::watch(
            Api::<DynamicObject>::all_with(client.clone(), resource),
            config,
        );
        tasks.push(tokio::spawn(super::reflect(
            PARTS[1],
            writer,
            stream,
            changed.clone(),
            health.clone(),
        )));
        Self {
            imports,
            slices,
            tasks,
            health: health.clone(),
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for part in PARTS {
            self.health.clear(part);
        }
    }
}

/// How often a standby reads the leader's virtual addresses.
const VIPS_EVERY: Duration = Duration::from_secs(5);

/// The readiness part a standby waits on.
const STANDBY: &str = "standby";

/// Runs the mirror until the gateway stops; it acts while this replica stands by. `namespace`
/// is the gateway's own, where the durable state is.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    resource: ApiResource,
    namespace: String,
    health: Arc<Health>,
) {
    let changed = Arc::new(Notify::new());
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let mut leading = shared.leading.subscribe();
    let mut vips: Option<Arc<PoolFile>> = None;
    let mut vips_read: Option<std::time::Instant> = None;
    let mut watches: Option<Watches> = None;
    // A standby answers DNS and its sidecars from what it mirrors: it is not ready before it
    // has the leader's imports and addresses (a replacement replica would otherwise answer
    // names it does not know yet).
    health.wait(
        STANDBY,
        "taking the leader's imports and addresses from the API",
    );
    let mut mirrored = false;
    let mut vips_known = false;
    loop {
        if shared.leads() {
            watches = None;
            vips = None;
            vips_read = None;
            health.done_waiting(STANDBY);
        } else {
            let watching = watches
                .get_or_insert_with(|| Watches::start(&client, &resource, &changed, &health));
            // Not before both have listed: an empty store would wipe the view.
            let ready = |ready: Option<Result<(), _>>| ready.is_some_and(|r| r.is_ok());
            if ready(watching.imports.wait_until_ready().now_or_never())
                && ready(watching.slices.wait_until_ready().now_or_never())
            {
                mirror(&shared, &watching.imports, &watching.slices);
                mirrored = true;
            }
            // The leader's addresses, as its durable state holds them: read every few
            // seconds, not at each of a burst of import changes.
            let due = vips_read.is_none_or(|at| at.elapsed() >= VIPS_EVERY);
            if due {
                vips_read = Some(std::time::Instant::now());
            }
            let stored = if due {
                secrets.get_opt(durable::SECRET).await.ok()
            } else {
                None
            };
            if let Some(found) = stored {
                vips_known = true;
                if let Some(file) = found.as_ref().and_then(durable::stored_vips)
                    && vips.as_deref() != Some(&file)
                {
                    let file = Arc::new(file);
                    vips = Some(file.clone());
                    shared.leader_vips.send_replace(Some(file));
                }
            }
            if mirrored && vips_known {
                health.done_waiting(STANDBY);
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            _ = leading.changed() => {}
            () = tokio::time::sleep(VIPS_EVERY) => {}
            () = shared.shutdown.cancelled() => return,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mirror(shared: &Shared, imports: &Store<ServiceImport>, slice_store: &Store<DynamicObject>) {
    let slices: Vec<(String, Slice)> = slice_store
        .state()
        .iter()
        .filter_map(|o| {
            let cluster = o.labels().get(SOURCE_LABEL)?.clone();
            Some((cluster, slices::read_labelled(o, SERVICE_LABEL)?))
        })
        .collect();
    let mut built = catalogs(&shared.config.cluster, &imports.state(), &slices);
    let changed = {
        // Peers then state, as everywhere. A cluster this replica has a session with keeps
        // what the session brought; the others follow the API.
        let peers = lock(&shared.peers);
        let in_session = |cluster: &ClusterName| {
            peers
                .get(cluster)
                .is_some_and(|s| s.connection.is_some() || !s.siblings.is_empty())
        };
        let mut state = lock(&shared.state);
        let mut changed = false;
        let mirrored: Vec<ClusterName> = state
            .imports
            .keys()
            .chain(built.keys())
            .filter(|c| !in_session(c))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for cluster in mirrored {
            let wanted = built.remove(&cluster).unwrap_or_default();
            let held = state.imports.get(&cluster);
            if held.is_none_or(|h| h.services != wanted.services) {
                state.imports.insert(cluster.clone(), wanted);
                shared.journal_imports(&state, &cluster, &[], true);
                changed = true;
            }
        }
        changed
    };
    if changed {
        shared.catalog_changed(crate::views::Touched::All);
    }
}

#[cfg(test)]
mod tests {
    use super::super::crd::{ClusterStatus, ServiceImportSpec, ServiceImportStatus, ServicePort};
    use super::super::slices::{SliceEndpoint, SlicePort};
    use super::*;

    #[test]
    fn the_api_gives_a_standby_the_catalogs_the_leader_imported() {
        let mut import = ServiceImport::new(
            "api",
            ServiceImportSpec {
                ips: vec!["240.0.0.9".into()],
                kind: "ClusterSetIP".into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    port: 8080,
                }],
            },
        );
        import.metadata.namespace = Some("shop".into());
        import.status = Some(ServiceImportStatus {
            clusters: ["east", "west"]
                .map(|c| ClusterStatus { cluster: c.into() })
                .into(),
        });
        let slice = Slice {
            namespace: "shop".into(),
            service: "api".into(),
            ports: vec![SlicePort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
            }],
            endpoints: vec![SliceEndpoint {
                addresses: vec!["10.1.0.7".parse().unwrap()],
                ready: true,
                hostname: None,
            }],
        };
        let east = ClusterName::new("east").unwrap();
        let built = catalogs(&east, &[Arc::new(import)], &[("west".into(), slice)]);
        assert_eq!(built.len(), 1, "this cluster's own export is left out");
        let west = &built[&ClusterName::new("west").unwrap()];
        let (key, spec) = west.services.iter().next().unwrap();
        assert_eq!(key.to_string(), "shop/api");
        assert_eq!(spec.ports[0].port, 8080);
        assert_eq!(spec.endpoints[0].address.to_string(), "10.1.0.7:8080");
    }
}

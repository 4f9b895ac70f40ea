//! Import: what the clusterset offers from other clusters is written into this cluster's API
//! as the MCS API says: a ServiceImport per service (`type: ClusterSetIP`, its ports, `spec.ips`
//! = the virtual address the gateway's DNS gives `<svc>.<ns>.svc.clusterset.local`,
//! `status.clusters` = the exporting clusters) and one EndpointSlice per source cluster,
//! labelled with the service and the source cluster and owned by the ServiceImport.
//!
//! Level-triggered like export: after every catalog or zone change the whole desired set is
//! derived ([`desired`], sans IO) and compared with what was last written, so only what changed
//! is written (server-side apply, field manager `strait.dev`) and what is no longer wanted is
//! deleted. Nothing is written while nothing changes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use strait_federation::catalog::{ClustersetService, Protocol, clusterset};
use strait_federation::identity::ClusterName;

use super::crd::{
    ClusterStatus, ServiceImport, ServiceImportSpec, ServiceImportStatus, ServicePort,
};
use super::{FIELD_MANAGER, Health, Unfinished};
use crate::dns::zone::Zone;
use crate::{Shared, lock};

/// The label on everything the gateway writes, so that it finds its own after a restart.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`], and of the slices' own managed-by label.
pub const MANAGER: &str = "strait.dev";
/// The MCS labels of an imported slice.
pub const SERVICE_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// See [`SERVICE_LABEL`].
pub const SOURCE_LABEL: &str = "multicluster.kubernetes.io/source-cluster";

/// One ServiceImport and its slices, as they should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub namespace: String,
    pub name: String,
    pub spec: ServiceImportSpec,
    pub clusters: Vec<String>,
    /// One slice per source cluster (and address family): name, source cluster, body.
    pub slices: Vec<WantedSlice>,
}

/// One imported EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub struct WantedSlice {
    pub name: String,
    pub cluster: String,
    pub address_type: &'static str,
    pub addresses: Vec<(String, bool, Option<String>)>,
    pub ports: Vec<ServicePort>,
}

fn app_protocol(protocol: Protocol) -> Option<String> {
    match protocol {
        Protocol::Http => Some("http".into()),
        Protocol::Http2 => Some("kubernetes.io/h2c".into()),
        Protocol::Grpc => Some("grpc".into()),
        Protocol::Tcp => None,
    }
}

/// Whether the gateway answers DNS, and with which zone so far.
#[derive(Clone, Copy)]
pub enum Addresses<'a> {
    /// No DNS server: imports carry no `spec.ips`.
    Off,
    /// DNS on: an import waits for its service's virtual address (the zone follows each
    /// catalog change), so that it is written once, address included.
    Zone(Option<&'a Zone>),
}

/// What should be in this cluster's API for the services other clusters export.
pub fn desired(
    local: &ClusterName,
    view: &[ClustersetService],
    addresses: Addresses<'_>,
) -> Vec<Wanted> {
    let mut vips: HashMap<String, Vec<String>> = HashMap::new();
    if let Addresses::Zone(Some(zone)) = addresses {
        for name in zone.virtual_names() {
            if name.cluster.is_none() && name.hostname.is_none() {
                let mut ips = vec![name.vips.v4.to_string()];
                ips.extend(name.vips.v6.map(|v6| v6.to_string()));
                vips.insert(name.service.to_string(), ips);
            }
        }
    }
    let mut wanted = Vec::new();
    for service in view {
        let remote: Vec<_> = service
            .backends
            .iter()
            .filter(|(c, _)| c != local)
            .collect();
        if remote.is_empty() {
            continue;
        }
        // Where the clusters disagree on the ports, the oldest export's hold (the MCS rule;
        // the exporting clusters' ServiceExports say `Conflict`).
        let Some((_, first)) = service.oldest_export() else {
            continue;
        };
        let ips = match addresses {
            Addresses::Off => Vec::new(),
            Addresses::Zone(_) => match vips.get(&service.key.to_string()) {
                Some(ips) => ips.clone(),
                None => continue,
            },
        };
        let ports: Vec<ServicePort> = first
            .ports
            .iter()
            .map(|p| ServicePort {
                name: Some(p.name.clone()),
                protocol: Some("TCP".into()),
                app_protocol: app_protocol(p.protocol),
                port: i32::from(p.port),
            })
            .collect();
        let mut slices = Vec::new();
        for (cluster, spec) in &remote {
            for (family, v6) in [("IPv4", false), ("IPv6", true)] {
                let addresses: Vec<_> = spec
                    .endpoints
                    .iter()
                    .filter(|e| e.address.is_ipv6() == v6)
                    .map(|e| (e.address.ip().to_string(), e.ready, e.hostname.clone()))
                    .collect();
                if addresses.is_empty() && v6 {
                    continue;
                }
                let suffix = if v6 { "-v6" } else { "" };
                slices.push(WantedSlice {
                    name: format!("{}-{cluster}{suffix}", service.key.name),
                    cluster: cluster.to_string(),
                    address_type: family,
                    addresses,
                    ports: ports.clone(),
                });
            }
        }
        wanted.push(Wanted {
            namespace: service.key.namespace.to_string(),
            name: service.key.name.to_string(),
            spec: ServiceImportSpec {
                ips,
                kind: "ClusterSetIP".into(),
                ports,
            },
            clusters: service
                .backends
                .iter()
                .map(|(c, _)| c.to_string())
                .collect(),
            slices,
        });
    }
    wanted
}

/// What was last written of one object: a digest of its body.
type Written = HashMap<(String, String, String), u64>;

fn digest(value: &serde_json::Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

fn labels(extra: &[(&str, &str)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert(MANAGED_BY.into(), MANAGER.into());
    for (k, v) in extra {
        map.insert((*k).into(), (*v).into());
    }
    serde_json::Value::Object(map)
}

fn import_body(w: &Wanted) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": w.name, "namespace": w.namespace, "labels": labels(&[])},
        "spec": w.spec,
    })
}

fn status_body(w: &Wanted) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": w.name, "namespace": w.namespace},
        "status": ServiceImportStatus {
            clusters: w.clusters.iter().map(|c| ClusterStatus { cluster: c.clone() }).collect(),
        },
    })
}

fn slice_body(
    resource: &ApiResource,
    w: &Wanted,
    s: &WantedSlice,
    owner_uid: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": "EndpointSlice",
        "metadata": {
            "name": s.name,
            "namespace": w.namespace,
            "labels": labels(&[
                (SERVICE_LABEL, &w.name),
                (SOURCE_LABEL, &s.cluster),
                ("endpointslice.kubernetes.io/managed-by", MANAGER),
            ]),
            "ownerReferences": [{
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceImport",
                "name": w.name,
                "uid": owner_uid,
            }],
        },
        "addressType": s.address_type,
        "endpoints": s.addresses.iter().map(|(address, ready, hostname)| {
            let mut endpoint = serde_json::json!({"addresses": [address], "conditions": {"ready": ready}});
            if let Some(hostname) = hostname {
                endpoint["hostname"] = hostname.clone().into();
            }
            endpoint
        }).collect::<Vec<_>>(),
        "ports": s.ports.iter().map(|p| serde_json::json!({
            "name": p.name, "port": p.port, "protocol": "TCP", "appProtocol": p.app_protocol,
        })).collect::<Vec<_>>(),
    })
}

/// Runs the import side until the gateway stops.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    slices: ApiResource,
    health: Arc<Health>,
    mut namespaces: tokio::sync::watch::Receiver<u64>,
) {
    let mut catalog = shared.catalog_tx.subscribe();
    let mut zone = shared.zone.subscribe();
    let mut leading = shared.leading.subscribe();
    let grace = shared.config.peering.grace_period();
    let mut led_since: Option<std::time::Instant> = None;
    let mut written = Written::new();
    // What an earlier run wrote is ours to keep or delete.
    adopt(&client, &slices, &mut written, &health).await;
    loop {
        // Only the leading replica writes imports; a standby waits to take the Lease over.
        // One that just took it holds deletions back for the peering grace period: its peers
        // have not sent their catalogs yet, and what the last leader wrote still stands.
        let leads = shared.leads();
        match (leads, led_since) {
            (true, None) => led_since = Some(std::time::Instant::now()),
            (false, _) => led_since = None,
            _ => {}
        }
        let settled =
            led_since.is_some_and(|since| since.elapsed() >= grace) || peers_settled(&shared);
        let left = if leads {
            reconcile(&shared, &client, &slices, &mut written, &health, settled).await
        } else {
            Unfinished::default()
        };
        let retry = if leads && !settled {
            Duration::from_millis(500)
        } else {
            left.retry()
        };
        tokio::select! {
            _ = catalog.changed() => {}
            _ = zone.changed() => {}
            _ = leading.changed() => {}
            _ = namespaces.changed() => {}
            () = tokio::time::sleep(retry) => {}
            () = shared.shutdown.cancelled() => return,
        }
        // A burst of changes makes one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether every peering is up and has been for a second (its snapshot taken), so that what
/// the catalog lacks is really gone, not yet to come.
fn peers_settled(shared: &Shared) -> bool {
    lock(&shared.peers).values().all(|status| {
        status.state == crate::peering::LinkState::Connected
            && status
                .since
                .elapsed()
                .is_ok_and(|up| up >= Duration::from_secs(1))
    })
}

async fn adopt(client: &Client, slices: &ApiResource, written: &mut Written, health: &Health) {
    let selector = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
    loop {
        let imports = Api::<ServiceImport>::all(client.clone())
            .list(&selector)
            .await;
        let owned = Api::<DynamicObject>::all_with(client.clone(), slices)
            .list(&selector)
            .await;
        match (imports, owned) {
            (Ok(imports), Ok(owned)) => {
                for o in imports.items {
                    written.insert(
                        (
                            "ServiceImport".into(),
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                        ),
                        0,
                    );
                }
                for o in owned.items {
                    written.insert(
                        (
                            "EndpointSlice".into(),
                            o.namespace().unwrap_or_default(),
                            o.name_any(),
                        ),
                        0,
                    );
                }
                health.clear("imports");
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                health.fail("imports", super::describe(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How many services are written at once.
const WRITERS: usize = 16;

/// What writing one service did: the digests of what is now written, and what is left to do.
#[derive(Default)]
struct Outcome {
    written: Vec<((String, String, String), u64)>,
    left: Unfinished,
}

/// Writes one service's import, its status and its slices where they differ from `known`.
async fn write_service(
    shared: &Shared,
    client: &Client,
    slices: &ApiResource,
    w: &Wanted,
    known: &Written,
    health: &Health,
) -> Outcome {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut outcome = Outcome::default();
    let imports = Api::<ServiceImport>::namespaced(client.clone(), &w.namespace);
    let key = (
        "ServiceImport".to_owned(),
        w.namespace.clone(),
        w.name.clone(),
    );
    let body = import_body(w);
    let status = status_body(w);
    let sum = digest(&body) ^ digest(&status).rotate_left(1);
    let uid = if known.get(&key) != Some(&sum) {
        match imports.patch(&w.name, &apply, &Patch::Apply(&body)).await {
            Ok(object) => {
                shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["serviceimports"])
                    .inc();
                if let Err(e) = imports
                    .patch_status(&w.name, &apply, &Patch::Apply(&status))
                    .await
                {
                    tracing::warn!(namespace = %w.namespace, name = %w.name, error = %super::describe(&e), "cannot write a ServiceImport's status");
                    outcome.left.pending = true;
                    return outcome;
                }
                shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["serviceimports/status"])
                    .inc();
                outcome.written.push((key, sum));
                object.uid()
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                // The namespace does not exist here: nothing is imported into it until it
                // does (the gateway never creates namespaces).
                tracing::debug!(namespace = %w.namespace, name = %w.name, "namespace absent: not imported");
                outcome.left.namespaces = true;
                return outcome;
            }
            Err(e) => {
                health.fail("imports", super::describe(&e));
                outcome.left.pending = true;
                return outcome;
            }
        }
    } else {
        None
    };
    for s in &w.slices {
        let key = (
            "EndpointSlice".to_owned(),
            w.namespace.clone(),
            s.name.clone(),
        );
        let probe = slice_body(slices, w, s, "");
        let sum = digest(&probe);
        if known.get(&key) == Some(&sum) {
            continue;
        }
        let uid = match &uid {
            Some(uid) => uid.clone(),
            None => match imports.get(&w.name).await {
                Ok(object) => object.uid().unwrap_or_default(),
                Err(_) => {
                    outcome.left.pending = true;
                    continue;
                }
            },
        };
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &w.namespace, slices);
        match api
            .patch(
                &s.name,
                &apply,
                &Patch::Apply(&slice_body(slices, w, s, &uid)),
            )
            .await
        {
            Ok(_) => {
                shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["endpointslices"])
                    .inc();
                outcome.written.push((key, sum));
            }
            Err(e) => {
                health.fail("imports", super::describe(&e));
                outcome.left.pending = true;
            }
        }
    }

    outcome
}

/// One pass; what it could not do yet (an API error, an absent namespace).
async fn reconcile(
    shared: &Arc<Shared>,
    client: &Client,
    slices: &ApiResource,
    written: &mut Written,
    health: &Health,
    settled: bool,
) -> Unfinished {
    let wanted = {
        let zone = shared.zone.borrow().clone();
        let zone = zone.as_deref().map(crate::dns::read);
        let addresses = if shared.config.dns.is_some() {
            Addresses::Zone(zone.as_deref())
        } else {
            Addresses::Off
        };
        let state = lock(&shared.state);
        let local = state.local_services();
        let view = clusterset(&shared.config.cluster, &local, state.imports.iter());
        desired(&shared.config.cluster, &view, addresses)
    };
    let mut keep: BTreeMap<(String, String, String), ()> = BTreeMap::new();
    for w in &wanted {
        keep.insert(
            (
                "ServiceImport".to_owned(),
                w.namespace.clone(),
                w.name.clone(),
            ),
            (),
        );
        for slice in &w.slices {
            keep.insert(
                (
                    "EndpointSlice".to_owned(),
                    w.namespace.clone(),
                    slice.name.clone(),
                ),
                (),
            );
        }
    }
    // Services are written side by side, each in order (its import, then the import's status,
    // then its slices, which need the import's uid): one at a time, a thousand imports would
    // wait on a thousand round trips.
    let outcomes: Vec<Outcome> = {
        let known: &Written = written;
        let jobs: Vec<_> = wanted
            .iter()
            .map(|w| write_service(shared, client, slices, w, known, health))
            .collect();
        futures::stream::iter(jobs)
            .buffer_unordered(WRITERS)
            .collect()
            .await
    };
    let mut left = Unfinished::default();
    for outcome in outcomes {
        left = left.and(outcome.left);
        written.extend(outcome.written);
    }
    let stale: Vec<_> = written
        .keys()
        .filter(|k| !keep.contains_key(*k))
        .cloned()
        .collect();
    if !settled && !stale.is_empty() {
        // Deleted once the peers have sent their catalogs (or the grace period is over).
        left.pending = true;
        return left;
    }
    for key in stale {
        let (kind, namespace, name) = &key;
        let result = if kind == "ServiceImport" {
            Api::<ServiceImport>::namespaced(client.clone(), namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
        } else {
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, slices)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
        };
        let gone = match result {
            Ok(()) => true,
            Err(kube::Error::Api(status)) if status.is_not_found() => true,
            Err(e) => {
                health.fail("imports", super::describe(&e));
                false
            }
        };
        if gone {
            shared
                .metrics
                .kubernetes_writes
                .with_label_values(&["deletes"])
                .inc();
            written.remove(&key);
        } else {
            left.pending = true;
        }
    }
    if !left.pending {
        health.clear("imports");
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::catalog::{Endpoint, Port, ServiceKey, ServiceSpec};
    use strait_federation::identity::{Namespace, ServiceName};

    fn spec(addresses: &[&str]) -> ServiceSpec {
        ServiceSpec {
            export: true,
            ports: vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            }],
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    address: a.parse().unwrap(),
                    hostname: None,
                    ready: true,
                })
                .collect(),
            labels: Default::default(),
            exported_at_ms: 0,
        }
    }

    fn service(backends: Vec<(&str, ServiceSpec)>) -> ClustersetService {
        ClustersetService {
            key: ServiceKey {
                namespace: Namespace::new("shop").unwrap(),
                name: ServiceName::new("api").unwrap(),
            },
            exported: false,
            backends: backends
                .into_iter()
                .map(|(c, s)| (ClusterName::new(c).unwrap(), s))
                .collect(),
        }
    }

    #[test]
    fn a_service_of_two_other_clusters_gets_one_import_and_a_slice_per_cluster() {
        let east = ClusterName::new("east").unwrap();
        let view = [service(vec![
            ("west", spec(&["10.1.0.7:9090", "[fd00::7]:9090"])),
            ("north", spec(&["10.2.0.7:9090"])),
        ])];
        let wanted = desired(&east, &view, Addresses::Off);
        assert_eq!(wanted.len(), 1);
        let w = &wanted[0];
        assert_eq!((w.namespace.as_str(), w.name.as_str()), ("shop", "api"));
        assert_eq!(w.spec.kind, "ClusterSetIP");
        assert_eq!(w.spec.ports[0].port, 8080);
        assert_eq!(w.spec.ports[0].app_protocol.as_deref(), Some("http"));
        assert_eq!(w.clusters, ["west", "north"]);
        let names: Vec<_> = w
            .slices
            .iter()
            .map(|s| (s.name.as_str(), s.address_type, s.addresses.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("api-west", "IPv4", 1),
                ("api-west-v6", "IPv6", 1),
                ("api-north", "IPv4", 1)
            ]
        );
    }

    #[test]
    fn with_dns_on_an_import_waits_for_its_virtual_address() {
        let east = ClusterName::new("east").unwrap();
        let view = [service(vec![("west", spec(&["10.1.0.7:9090"]))])];
        assert!(desired(&east, &view, Addresses::Zone(None)).is_empty());
    }

    #[test]
    fn a_service_only_this_cluster_serves_is_not_imported() {
        let east = ClusterName::new("east").unwrap();
        let view = [service(vec![("east", spec(&["10.0.0.1:80"]))])];
        assert!(desired(&east, &view, Addresses::Off).is_empty());
    }

    #[test]
    fn the_same_wanted_objects_digest_the_same() {
        let east = ClusterName::new("east").unwrap();
        let view = [service(vec![("west", spec(&["10.1.0.7:9090"]))])];
        let a = import_body(&desired(&east, &view, Addresses::Off)[0]);
        let b = import_body(&desired(&east, &view, Addresses::Off)[0]);
        assert_eq!(digest(&a), digest(&b));
    }
}

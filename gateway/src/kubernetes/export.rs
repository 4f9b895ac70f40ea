//! Export: what this cluster's Kubernetes API says it exports becomes the gateway's local
//! catalog. A Service with a ServiceExport of the same namespace and name is exported with its
//! ports (`appProtocol` gives the protocol) and the ready endpoints of its EndpointSlices; each
//! ServiceExport gets a `Valid` condition that says why when it cannot be, and a `Conflict`
//! condition that says whether the clusters exporting the service agree on its ports.
//!
//! Level-triggered: every change of a Service, a slice or an export re-derives the whole export
//! ([`derive`], sans IO) from the reflectors' stores and applies the difference, so a missed
//! event is repaired by the next one and a re-run changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use strait_federation::catalog::{
    ClustersetService, Endpoint, Port, Protocol, ServiceKey, ServiceSpec, clusterset,
};
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use tokio::sync::Notify;

use super::crd::{ServiceExport, ServiceExportStatus};
use super::slices::{self, Slice};
use super::{Condition, FIELD_MANAGER, Health};
use crate::{Shared, lock};

/// Why an export cannot be made, as its `Valid=False` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The condition's reason, a CamelCase word (`ServiceNotFound`, `UnsupportedProtocol`).
    pub reason: &'static str,
    pub message: String,
}

/// What one ServiceExport comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub namespace: String,
    pub name: String,
    pub result: Result<(ServiceKey, ServiceSpec), Invalid>,
}

fn invalid(reason: &'static str, message: String) -> Invalid {
    Invalid { reason, message }
}

/// The protocol strait gives a Service port from its `appProtocol`.
pub fn protocol_of(app_protocol: Option<&str>) -> Protocol {
    match app_protocol {
        Some("http") => Protocol::Http,
        Some("http2" | "h2c" | "kubernetes.io/h2c") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

/// Derives the export of one ServiceExport from its Service and that Service's slices.
fn derive_one(
    namespace: &str,
    name: &str,
    service: Option<&Service>,
    slices: &[&Slice],
) -> Result<(ServiceKey, ServiceSpec), Invalid> {
    let key = ServiceKey {
        namespace: Namespace::new(namespace).map_err(|e| invalid("InvalidName", e.to_string()))?,
        name: ServiceName::new(name).map_err(|e| invalid("InvalidName", e.to_string()))?,
    };
    let service = service.ok_or_else(|| {
        invalid(
            "ServiceNotFound",
            format!("no Service {namespace}/{name} to export"),
        )
    })?;
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(invalid(
            "ServiceTypeUnsupported",
            format!("Service {namespace}/{name} is an ExternalName: it has no endpoints to export"),
        ));
    }
    let service_ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let mut ports = Vec::new();
    for port in service_ports {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let label = port.name.clone().unwrap_or_else(|| port.port.to_string());
        if protocol != "TCP" {
            return Err(invalid(
                "UnsupportedProtocol",
                format!("port {label} is {protocol}: strait carries TCP only"),
            ));
        }
        ports.push(Port {
            name: port
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("port-{}", port.port)),
            port: u16::try_from(port.port).unwrap_or(0),
            protocol: protocol_of(port.app_protocol.as_deref()),
        });
    }
    // Catalog endpoints carry one port: the one the slices give the Service's first port.
    let first = service_ports
        .first()
        .and_then(|p| p.name.as_deref())
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == first)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                endpoints.push(Endpoint {
                    address: SocketAddr::new(*address, target),
                    hostname: endpoint.hostname.clone(),
                    ready: endpoint.ready,
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.address);
    endpoints.dedup();
    let spec = ServiceSpec {
        export: true,
        ports,
        endpoints,
        labels: BTreeMap::new(),
        exported_at_ms: 0,
    };
    spec.check()
        .map_err(|(field, message)| invalid("Invalid", format!("{field}: {message}")))?;
    Ok((key, spec))
}

/// One ServiceExport: its namespace, name and creation time (Unix milliseconds; 0 unknown).
pub type ExportRef = (String, String, u64);

/// Derives what every ServiceExport comes to, from the stores' contents.
pub fn derive(exports: &[ExportRef], services: &[Arc<Service>], slices: &[Slice]) -> Vec<Derived> {
    let services: HashMap<(String, String), &Service> = services
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), &**s))
        .collect();
    let mut by_service: HashMap<(&str, &str), Vec<&Slice>> = HashMap::new();
    for slice in slices {
        by_service
            .entry((slice.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    exports
        .iter()
        .map(|(namespace, name, created)| Derived {
            namespace: namespace.clone(),
            name: name.clone(),
            result: derive_one(
                namespace,
                name,
                services.get(&(namespace.clone(), name.clone())).copied(),
                by_service
                    .get(&(namespace.as_str(), name.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            )
            .map(|(key, spec)| {
                (
                    key,
                    ServiceSpec {
                        exported_at_ms: *created,
                        ..spec
                    },
                )
            }),
        })
        .collect()
}

/// Runs the export side until the gateway stops.
pub async fn run(shared: Arc<Shared>, client: Client, health: Arc<Health>) {
    let slice_resource = slices::served(&client).await;
    let changed = Arc::new(Notify::new());
    let config = watcher::Config::default();

    let (services, writer) = reflector::store::<Service>();
    let stream = super::watch(Api::<Service>::all(client.clone()), config.clone());
    tokio::spawn(super::reflect(
        "services",
        writer,
        stream,
        changed.clone(),
        health.clone(),
    ));

    // Read as untyped objects: the MCS API's ServiceExport has no spec, and one written
    // without it (as the MCS documents show) must not break the watch.
    let export_resource = ApiResource::erase::<ServiceExport>(&());
    let writer = reflector::store::Writer::<DynamicObject>::new(export_resource.clone());
    let exports = writer.as_reader();
    let stream = super::watch(
        Api::<DynamicObject>::all_with(client.clone(), &export_resource),
        config.clone(),
    );
    tokio::spawn(super::reflect(
        "serviceexports",
        writer,
        stream,
        changed.clone(),
        health.clone(),
    ));

    let writer = reflector::store::Writer::<DynamicObject>::new(slice_resource.clone());
    let slice_store = writer.as_reader();
    let stream = super::watch(
        Api::<DynamicObject>::all_with(client.clone(), &slice_resource),
        config,
    );
    tokio::spawn(super::reflect(
        "endpointslices",
        writer,
        stream,
        changed.clone(),
        health.clone(),
    ));

    // Until every store has its first list, the catalog stays as the last run left it.
    let ready = async {
        let _ = services.wait_until_ready().await;
        let _ = exports.wait_until_ready().await;
        let _ = slice_store.wait_until_ready().await;
    };
    tokio::select! {
        () = ready => {}
        () = shared.shutdown.cancelled() => return,
    }
    let statuses = (client, export_resource);
    let mut written: HashMap<(String, String), Vec<Condition>> = HashMap::new();
    // Conflicts change with other clusters' exports: the catalog view wakes the loop too.
    let mut catalog = shared.catalog_tx.subscribe();
    let mut leading = shared.leading.subscribe();
    loop {
        // A burst of events (a rollout, many exports at once) makes one reconcile.
        tokio::time::sleep(Duration::from_millis(20)).await;
        reconcile(
            &shared,
            &services,
            &exports,
            &slice_store,
            &statuses,
            &mut written,
        )
        .await;
        // The catalog is the cluster's now: peers may have it.
        shared.awaited(crate::Awaited::Export);
        tokio::select! {
            () = changed.notified() => {}
            _ = catalog.changed() => {}
            _ = leading.changed() => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

async fn reconcile(
    shared: &Arc<Shared>,
    services: &Store<Service>,
    exports: &Store<DynamicObject>,
    slice_store: &Store<DynamicObject>,
    statuses: &(Client, ApiResource),
    written: &mut HashMap<(String, String), Vec<Condition>>,
) {
    let export_objects = exports.state();
    let names: Vec<ExportRef> = export_objects
        .iter()
        .map(|e| {
            let created = e
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
                .unwrap_or(0);
            (e.namespace().unwrap_or_default(), e.name_any(), created)
        })
        .collect();
    let slices: Vec<Slice> = slice_store
        .state()
        .iter()
        .filter_map(|o| slices::read(o))
        .collect();
    let derived = derive(&names, &services.state(), &slices);

    let desired: BTreeMap<ServiceKey, ServiceSpec> = derived
        .iter()
        .filter_map(|d| d.result.clone().ok())
        .collect();
    let (changed, view) = {
        let mut state = lock(&shared.state);
        let gone: Vec<ServiceKey> = state
            .services
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            state.remove_service(key);
        }
        let mut changed = gone;
        for (key, spec) in desired {
            if state.services.get(&key) != Some(&spec) {
                changed.push(key.clone());
                state.put_service(key, spec);
            }
        }
        let local = state.local_services();
        let view: HashMap<ServiceKey, ClustersetService> =
            clusterset(&shared.config.cluster, &local, state.imports.iter())
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect();
        (changed, view)
    };
    if !changed.is_empty() {
        shared.mark_dirty();
        shared.export_changed(crate::views::Touched::services(changed));
    }

    // Conditions: written only when they change, and not when the object already says so.
    let current: HashMap<(String, String), &DynamicObject> = export_objects
        .iter()
        .map(|e| ((e.namespace().unwrap_or_default(), e.name_any()), &**e))
        .collect();
    written.retain(|key, _| current.contains_key(key));
    for d in &derived {
        let wanted = conditions(d, &view);
        let key = (d.namespace.clone(), d.name.clone());
        if written.get(&key) == Some(&wanted) || !shared.leads() {
            continue;
        }
        let already = current
            .get(&key)
            .and_then(|e| e.data.get("status"))
            .and_then(|s| serde_json::from_value::<ServiceExportStatus>(s.clone()).ok())
            .is_some_and(|s| {
                s.conditions.len() == wanted.len()
                    && wanted.iter().all(|w| {
                        s.conditions.iter().any(|c| {
                            c.type_ == w.kind
                                && c.status == if w.holds { "True" } else { "False" }
                                && c.reason == w.reason
                                && c.message == w.message
                        })
                    })
            });
        if !already {
            let status = super::conditions_patch(&wanted);
            let api = Api::<DynamicObject>::namespaced_with(
                statuses.0.clone(),
                &d.namespace,
                &statuses.1,
            );
            match api
                .patch_status(
                    &d.name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&status),
                )
                .await
            {
                Ok(_) => shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["serviceexports/status"])
                    .inc(),
                Err(e) => {
                    tracing::warn!(namespace = %d.namespace, name = %d.name, error = %super::describe(&e), "cannot write a ServiceExport's status");
                    continue;
                }
            }
        }
        written.insert(key, wanted);
    }
}

/// The conditions of one ServiceExport: `Valid`, and for a valid one `Conflict` (the MCS
/// API's: whether the clusters that export the service agree on its ports; where they do not,
/// the oldest export's ports hold).
pub fn conditions(
    derived: &Derived,
    view: &HashMap<ServiceKey, ClustersetService>,
) -> Vec<Condition> {
    let key = match &derived.result {
        Ok((key, _)) => key,
        Err(e) => {
            return vec![Condition {
                kind: "Valid",
                holds: false,
                reason: e.reason,
                message: e.message.clone(),
            }];
        }
    };
    let valid = Condition {
        kind: "Valid",
        holds: true,
        reason: "Exported",
        message: format!("{key} is exported to the clusterset"),
    };
    let conflict = match view.get(key).and_then(ClustersetService::conflict) {
        Some(conflict) => {
            let ports = |cluster: &ClusterName| {
                view.get(key)
                    .and_then(|s| s.backends.iter().find(|(c, _)| c == cluster))
                    .map(|(_, spec)| {
                        spec.ports
                            .iter()
                            .map(|p| format!("{} {}/{}", p.name, p.port, p.protocol.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            let differing: Vec<String> = conflict
                .differing
                .iter()
                .map(|c| format!("{c} ({})", ports(c)))
                .collect();
            Condition {
                kind: "Conflict",
                holds: true,
                reason: "PortConflict",
                message: format!(
                    "the clusters exporting {key} disagree on its ports: the clusterset uses those of {}, the oldest export ({}); {} differ",
                    conflict.winner,
                    ports(&conflict.winner),
                    differing.join("; "),
                ),
            }
        }
        None => Condition {
            kind: "Conflict",
            holds: false,
            reason: "NoConflict",
            message: format!("every cluster exporting {key} agrees on its ports"),
        },
    };
    vec![valid, conflict]
}

#[cfg(test)]
mod tests {
    use super::super::slices::{SliceEndpoint, SlicePort};
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec as KubeServiceSpec};

    fn service(name: &str, ports: Vec<ServicePort>) -> Arc<Service> {
        Arc::new(Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(KubeServiceSpec {
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn port(name: &str, port: i32, protocol: &str, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            protocol: Some(protocol.into()),
            app_protocol: app.map(Into::into),
            ..Default::default()
        }
    }

    fn slice(service: &str, target: u16, endpoints: &[(&str, bool)]) -> Slice {
        Slice {
            namespace: "shop".into(),
            service: service.into(),
            ports: vec![SlicePort {
                name: Some("http".into()),
                port: Some(target),
                protocol: Some("TCP".into()),
            }],
            endpoints: endpoints
                .iter()
                .map(|(address, ready)| SliceEndpoint {
                    addresses: vec![address.parse().unwrap()],
                    ready: *ready,
                    hostname: None,
                })
                .collect(),
        }
    }

    fn export(name: &str) -> ExportRef {
        ("shop".into(), name.into(), 0)
    }

    #[test]
    fn an_exported_service_carries_its_ports_and_its_slices_endpoints_at_their_target_port() {
        let services = [service(
            "api",
            vec![port("http", 8080, "TCP", Some("http"))],
        )];
        let slices = [
            slice("api", 9090, &[("10.1.0.7", true), ("10.1.0.8", false)]),
            slice("api", 9090, &[("10.1.0.9", true)]),
            slice("web", 80, &[("10.1.0.1", true)]),
        ];
        let derived = derive(&[export("api")], &services, &slices);
        let (key, spec) = derived[0].result.clone().unwrap();
        assert_eq!(key.to_string(), "shop/api");
        assert_eq!(
            spec.ports,
            [Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http
            }]
        );
        let endpoints: Vec<(String, bool)> = spec
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.ready))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("10.1.0.7:9090".to_owned(), true),
                ("10.1.0.8:9090".to_owned(), false),
                ("10.1.0.9:9090".to_owned(), true)
            ]
        );
    }

    #[test]
    fn an_export_without_its_service_is_not_valid_and_says_so() {
        let derived = derive(&[export("ghost")], &[], &[]);
        let invalid = derived[0].result.clone().unwrap_err();
        assert_eq!(invalid.reason, "ServiceNotFound");
        assert_eq!(invalid.message, "no Service shop/ghost to export");
    }

    #[test]
    fn an_export_conflicts_when_another_cluster_exports_other_ports_and_says_whose_hold() {
        let services = [service(
            "api",
            vec![port("http", 8080, "TCP", Some("http"))],
        )];
        let slices = [slice("api", 9090, &[("10.1.0.7", true)])];
        let mut made = export("api");
        made.2 = 2_000;
        let derived = derive(&[made], &services, &slices);
        let (key, east) = derived[0].result.clone().unwrap();
        assert_eq!(east.exported_at_ms, 2_000);
        let west = ServiceSpec {
            ports: vec![Port {
                name: "http".into(),
                port: 8081,
                protocol: Protocol::Http,
            }],
            exported_at_ms: 1_000,
            ..east.clone()
        };
        let cluster = |name: &str| ClusterName::new(name).unwrap();
        let mut view = HashMap::new();
        view.insert(
            key.clone(),
            ClustersetService {
                key: key.clone(),
                exported: true,
                backends: vec![(cluster("east"), east.clone()), (cluster("west"), west)],
            },
        );
        let [valid, conflict] = conditions(&derived[0], &view).try_into().unwrap();
        assert!(valid.holds && valid.reason == "Exported");
        assert!(conflict.holds && conflict.reason == "PortConflict");
        assert_eq!(
            conflict.message,
            "the clusters exporting shop/api disagree on its ports: the clusterset uses those of west, the oldest export (http 8081/http); east (http 8080/http) differ"
        );
        // Alone, or in agreement: no conflict.
        view.get_mut(&key).unwrap().backends.truncate(1);
        let [_, alone] = conditions(&derived[0], &view).try_into().unwrap();
        assert!(!alone.holds && alone.reason == "NoConflict");
        // An invalid export has its Valid condition only.
        let ghost = &derive(&[export("ghost")], &[], &[])[0];
        assert_eq!(conditions(ghost, &view).len(), 1);
    }

    #[test]
    fn an_sctp_port_makes_the_export_unsupported() {
        let services = [service("sig", vec![port("sctp", 3868, "SCTP", None)])];
        let invalid = derive(&[export("sig")], &services, &[])[0]
            .result
            .clone()
            .unwrap_err();
        assert_eq!(invalid.reason, "UnsupportedProtocol");
        assert_eq!(
            invalid.message,
            "port sctp is SCTP: strait carries TCP only"
        );
    }

    #[test]
    fn app_protocols_map_to_strait_protocols_and_the_rest_is_opaque_tcp() {
        assert_eq!(protocol_of(Some("http")), Protocol::Http);
        assert_eq!(protocol_of(Some("kubernetes.io/h2c")), Protocol::Http2);
        assert_eq!(protocol_of(Some("grpc")), Protocol::Grpc);
        assert_eq!(protocol_of(Some("https")), Protocol::Tcp);
        assert_eq!(protocol_of(None), Protocol::Tcp);
    }

    #[test]
    fn a_service_without_a_service_export_is_not_exported() {
        let services = [service("api", vec![port("http", 8080, "TCP", None)])];
        assert!(derive(&[], &services, &[]).is_empty());
    }
}

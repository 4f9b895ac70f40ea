//! The workload API: how this cluster's sidecars get certified, register their endpoints
//! (universal mode) and follow the catalog. Served on the API port beside the operator API.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use strait_federation::catalog::{Endpoint, Port, Protocol, ServiceKey, ServiceSpec};
use strait_federation::identity::{Namespace, Role, ServiceName, SpiffeId};
use strait_federation::proto::workload::workload_server::{Workload, WorkloadServer};
use strait_federation::proto::workload::{
    CatalogView, CertifyRequest, CertifyResponse, DeregisterRequest, DeregisterResponse, PortSpec,
    RegisterRequest, RegisterResponse, WatchRequest,
};
use tonic::{Request, Response, Status};

use super::caller::Caller;
use crate::policies::SidecarPolicies;
use crate::store::Registration;
use crate::views::Touched;
use crate::{Shared, lock, unix_now};
use strait_federation::proto::workload::{
    ClusterLocation, MetricsReply, MetricsReport, TapReply, TapReport, Telemetry, UsageReply,
    UsageReport,
};
use strait_federation::view::{Interest, Messages};

/// The largest CSR accepted.
const MAX_CSR: usize = 16 << 10;
/// Changes closer together than this reach sidecars as one view.
const COALESCE: Duration = Duration::from_millis(50);

/// The workload API service.
pub fn server(shared: Arc<Shared>) -> WorkloadServer<WorkloadApi> {
    WorkloadServer::new(WorkloadApi {
        shared,
        policies: Arc::default(),
    })
}

/// The policies sidecars get, and the settings' generation they were sorted at.
type PolicyCache = std::sync::Mutex<Option<(u64, Arc<SidecarPolicies>)>>;

/// Serves the sidecars of this gateway's cluster.
#[derive(Clone)]
pub struct WorkloadApi {
    shared: Arc<Shared>,
    /// Sorted once per policy change, whatever the number of sidecars watching.
    policies: Arc<PolicyCache>,
}

/// The caller's workload identity; other callers are refused.
fn workload<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
    match Caller::of(request) {
        Some(id) if id.role() == Role::Workload => Ok(id.clone()),
        Some(id) => Err(Status::permission_denied(format!(
            "{id} is not a workload identity"
        ))),
        None => Err(Status::unauthenticated(
            "this call needs the workload certificate from Certify",
        )),
    }
}

/// A service of the caller's own namespace: a workload registers only there.
fn own_service<T>(request: &Request<T>, name: &str) -> Result<ServiceKey, Status> {
    let SpiffeId::Workload { namespace, .. } = workload(request)? else {
        return Err(Status::permission_denied("not a workload identity"));
    };
    Ok(ServiceKey {
        namespace,
        name: ServiceName::new(name)
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?,
    })
}

fn parse_ports(ports: &[PortSpec]) -> Result<Vec<Port>, Status> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bad = |message: String| Status::invalid_argument(format!("ports[{i}]: {message}"));
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("port must be 1..65535, got {}", p.port)))?;
            let protocol = Protocol::parse(&p.protocol).ok_or_else(|| {
                bad(format!(
                    "protocol must be http, http2, grpc or tcp, got {:?}",
                    p.protocol
                ))
            })?;
            Ok(Port {
                name: p.name.clone(),
                port,
                protocol,
            })
        })
        .collect()
}

impl WorkloadApi {
    /// Everything a sidecar's view holds besides the services and their virtual addresses.
    fn settings(&self, namespace: Option<&Namespace>) -> CatalogView {
        let generation = self.shared.views.settings();
        let cached = lock(&self.policies)
            .as_ref()
            .filter(|(made_for, _)| *made_for == generation)
            .map(|(_, policies)| policies.clone());
        let policies = match cached {
            Some(policies) => policies,
            None => {
                let policies = Arc::new(SidecarPolicies::of(&lock(&self.shared.state)));
                *lock(&self.policies) = Some((generation, policies.clone()));
                policies
            }
        };
        let telemetry = &self.shared.config.telemetry;
        CatalogView {
            cluster: self.shared.config.cluster.to_string(),
            relay_address: self.shared.relay_for_sidecars().to_string(),
            virtual_ranges: self
                .shared
                .config
                .dns
                .iter()
                .flat_map(|dns| {
                    std::iter::once(dns.vip_range.clone()).chain(dns.vip_range6.clone())
                })
                .collect(),
            policies: namespace
                .map(|ns| policies.for_namespace(ns))
                .unwrap_or_default(),
            cloud: self.shared.config.location.cloud.clone(),
            region: self.shared.config.location.region.clone(),
            zone: self.shared.config.location.zone.clone(),
            cluster_locations: lock(&self.shared.locations)
                .iter()
                .map(|(cluster, location)| ClusterLocation {
                    cluster: cluster.to_string(),
                    cloud: location.cloud.clone(),
                    region: location.region.clone(),
                    zone: location.zone.clone(),
                })
                .collect(),
            taps: self.shared.taps.filters(),
            trust_bundle_pem: self.shared.trust.bundle().to_pem().to_owned(),
            issuer_fingerprint: self.shared.trust.issuer_fingerprint(),
            degraded_clusters: lock(&self.shared.peers)
                .iter()
                .filter(|(_, status)| status.degraded().is_some())
                .map(|(cluster, _)| cluster.to_string())
                .collect(),
            telemetry: Some(Telemetry {
                collector: telemetry.collector.clone().unwrap_or_default(),
                sampling: telemetry.sampling_percent / 100.0,
                access_log: namespace.is_some_and(|ns| telemetry.access_log(ns.as_str())),
            }),
            ..CatalogView::default()
        }
    }
}

/// The services a sidecar asked for. One that declared its services gets those of its own
/// namespace too: it finds the service an inbound connection is for (and so the policies that
/// apply) by its own endpoint's address, which a declaration may leave out.
fn watched(request: &WatchRequest, own: Option<&Namespace>) -> Interest {
    let mut namespaces = request.namespaces.clone();
    if !(namespaces.is_empty() && request.services.is_empty())
        && let Some(own) = own
    {
        namespaces.push(own.to_string());
    }
    Interest::of(&namespaces, &request.services)
}

/// One sidecar's stream: what it was last sent, to send it only what changed.
struct Follower {
    /// The sidecar applies deltas.
    deltas: bool,
    /// The services it asked for.
    interest: Interest,
    namespace: Option<Namespace>,
    /// The version of the last message on the stream.
    sent: u64,
    /// The view log's version and the settings' generation that message was made at.
    at: Option<(u64, u64)>,
}

impl Follower {
    /// The next messages (one, or a large view's parts, made as they are taken), or `None`
    /// when nothing changed for this sidecar.
    fn next(&mut self, api: &WorkloadApi) -> Option<Messages> {
        let generation = api.shared.views.settings();
        let (version, part) = {
            let log = lock(&api.shared.views.log);
            let delta = match self.at {
                Some((at, _)) if self.deltas => log.delta(at, &self.interest),
                _ => None,
            };
            (
                log.version(),
                delta.unwrap_or_else(|| log.whole(&self.interest)),
            )
        };
        let settings_kept = !part.whole && self.at.is_some_and(|(_, g)| g == generation);
        if part.is_empty() && settings_kept {
            return None;
        }
        let settings = (!settings_kept).then(|| api.settings(self.namespace.as_ref()));
        let messages = if self.deltas {
            part.messages(self.sent, settings)
        } else {
            // An older sidecar takes every message for the whole view: never in parts.
            part.message(self.sent, settings)
        };
        self.sent += messages.len() as u64;
        self.at = Some((version, generation));
        Some(messages)
    }
}

type ViewStream = Pin<Box<dyn Stream<Item = Result<CatalogView, Status>> + Send>>;

#[tonic::async_trait]
impl Workload for WorkloadApi {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let shared = &self.shared;
        let renewing = Caller::of(&request)
            .filter(|id| id.role() == Role::Workload)
            .cloned();
        let presented = Caller::certificate_of(&request);
        let request = request.into_inner();
        if request.csr.len() > MAX_CSR {
            return Err(Status::invalid_argument(format!(
                "csr: larger than {MAX_CSR} bytes"
            )));
        }
        let identity = match renewing {
            Some(identity) => identity,
            None if !request.service_account_token.is_empty() => {
                let Some(client) = &shared.kube else {
                    return Err(Status::unauthenticated(
                        "service-account token: this gateway is not in Kubernetes mode; use a bootstrap token (`strait sidecar token`)",
                    ));
                };
                let (namespace, service_account) = crate::kubernetes::identity::review(
                    client,
                    &request.service_account_token,
                    unix_now(),
                )
                .await
                .map_err(|e| Status::unauthenticated(format!("service-account token: {e}")))?;
                SpiffeId::Workload {
                    trust_domain: shared.config.trust_domain.clone(),
                    cluster: shared.config.cluster.clone(),
                    namespace,
                    service_account,
                }
            }
            None if request.token.is_empty() => {
                return Err(Status::unauthenticated(
                    "a first certificate needs a bootstrap token (`strait sidecar token`)",
                ));
            }
            None => {
                let verified = shared
                    .link_key
                    .verify_workload_token(
                        &request.token,
                        &shared.config.cluster,
                        &shared.config.trust_domain,
                        unix_now(),
                    )
                    .map_err(|e| Status::unauthenticated(format!("bootstrap token: {e}")))?;
                if lock(&shared.state)
                    .revocations
                    .tokens
                    .contains(&verified.id)
                {
                    return Err(Status::permission_denied(format!(
                        "bootstrap token {} was revoked: ask an operator for a new one (strait sidecar token)",
                        verified.id
                    )));
                }
                verified.identity
            }
        };
        // A revoked identity (or certificate) is certified no more, by token or by renewal.
        if let Some(why) = lock(&shared.state)
            .revocations
            .refuses(&identity, presented.as_deref())
        {
            return Err(Status::permission_denied(why));
        }
        let lifetime = shared.config.workloads.cert_ttl();
        let chain_pem = shared
            .trust
            .issuer()
            .sign_csr(&request.csr, &identity, lifetime, SystemTime::now())
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        shared.trust.certified(&identity);
        shared.metrics.workload_certificates.inc();
        tracing::info!(identity = %identity, "workload certified");
        Ok(Response::new(CertifyResponse {
            chain_pem,
            identity: identity.to_string(),
            expires_unix: unix_now() + lifetime.as_secs(),
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let key = own_service(&request, &request.get_ref().service)?;
        let request = request.into_inner();
        let address = request
            .address
            .parse()
            .map_err(|e| Status::invalid_argument(format!("address {:?}: {e}", request.address)))?;
        if request.instance.is_empty() || request.instance.len() > 128 {
            return Err(Status::invalid_argument("instance: 1 to 128 bytes"));
        }
        let ports = parse_ports(&request.ports)?;
        let lease = self.shared.config.workloads.lease();
        let registration = Registration {
            ports: ports.clone(),
            endpoint: Endpoint {
                address,
                hostname: (!request.hostname.is_empty()).then(|| request.hostname.clone()),
                ready: request.ready,
            },
            export: request.export,
            expires: Instant::now() + lease,
        };
        // The same bounds as an applied service: one a peer would refuse is refused here.
        let check = ServiceSpec {
            export: request.export,
            ports,
            endpoints: vec![registration.endpoint.clone()],
            labels: Default::default(),
            exported_at_ms: 0,
        };
        check
            .check()
            .map_err(|(field, message)| Status::invalid_argument(format!("{field}: {message}")))?;
        let changed = lock(&self.shared.state).register(&key, &request.instance, registration);
        if changed {
            tracing::info!(service = %key, address = %address, ready = request.ready, "endpoint registered");
            self.shared.mark_dirty();
            self.shared.export_changed(Touched::services([key]));
        }
        Ok(Response::new(RegisterResponse {
            lease_seconds: lease.as_secs(),
        }))
    }

    async fn report_usage(
        &self,
        request: Request<UsageReport>,
    ) -> Result<Response<UsageReply>, Status> {
        let SpiffeId::Workload { namespace, .. } = workload(&request)? else {
            return Err(Status::permission_denied("only workloads report usage"));
        };
        let reply = crate::policies::report_usage(&self.shared, &namespace, request.into_inner());
        Ok(Response::new(reply))
    }

    async fn report_metrics(
        &self,
        request: Request<MetricsReport>,
    ) -> Result<Response<MetricsReply>, Status> {
        let SpiffeId::Workload { namespace, .. } = workload(&request)? else {
            return Err(Status::permission_denied("only workloads report metrics"));
        };
        crate::golden::report(&self.shared, &namespace, request.into_inner())
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(MetricsReply {}))
    }

    async fn report_taps(&self, request: Request<TapReport>) -> Result<Response<TapReply>, Status> {
        let SpiffeId::Workload { namespace, .. } = workload(&request)? else {
            return Err(Status::permission_denied("only workloads report taps"));
        };
        crate::tap::report(&self.shared, &namespace, request.into_inner().events)?;
        Ok(Response::new(TapReply {}))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let key = own_service(&request, &request.get_ref().service)?;
        let request = request.into_inner();
        if lock(&self.shared.state).deregister(&key, &request.instance) {
            tracing::info!(service = %key, "endpoint deregistered");
            self.shared.mark_dirty();
            self.shared.export_changed(Touched::services([key]));
        }
        Ok(Response::new(DeregisterResponse {}))
    }

    type WatchStream = ViewStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let identity = workload(&request)?;
        let namespace = match &identity {
            SpiffeId::Workload { namespace, .. } => Some(namespace.clone()),
            _ => None,
        };
        // Counted while the stream lasts: a rotation waits for it to hold the new issuer's.
        let watching = self
            .shared
            .trust
            .watching(identity, super::caller::Caller::issuer_of(&request));
        let api = self.clone();
        let mut follower = Follower {
            deltas: request.get_ref().deltas,
            interest: watched(request.get_ref(), namespace.as_ref()),
            namespace,
            sent: 0,
            at: None,
        };
        let mut changes = self.shared.views_tx.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            let _watching = watching;
            loop {
                changes.borrow_and_update();
                // A large view goes in parts, each made once the one before was taken: a
                // thousand sidecars connecting at once (a gateway's restart) never hold a
                // thousand whole catalogs.
                for message in follower.next(&api).into_iter().flatten() {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                }
                tokio::time::sleep(COALESCE).await;
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a channel of one: a slow sidecar holds at most one message
/// waiting, beside the one its connection is sending.
fn async_stream<F, Fut>(produce: F) -> ViewStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<CatalogView, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(produce(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

//! The operator API: apply and delete documents, links and unlinks, tokens for sidecars, and
//! what `get` shows. Every call comes from an operator identity of this cluster.

use crate::views::Touched;
use std::sync::Arc;
use std::time::Duration;

use strait_federation::catalog::ServiceKey;
use strait_federation::document::Applied;
use strait_federation::identity::{AccountName, ClusterName, Namespace, ServiceName, SpiffeId};
use strait_federation::link::{DEFAULT_TOKEN_TTL_SECONDS, LinkDocument, LinkSpec, rfc3339};
use strait_federation::policy::exchange::BookError;
use strait_federation::proto::operator::operator_server::Operator;
use strait_federation::proto::operator::{
    AppliedObject, ApplyRequest, ApplyResponse, CreateIssuerRequestRequest,
    CreateIssuerRequestResponse, CreateLinkRequest, CreateLinkResponse, CreateWorkloadTokenRequest,
    CreateWorkloadTokenResponse, DeleteRequest, DeleteResponse, InstallIssuerRequest,
    InstallIssuerResponse, LinkView, ListLinksRequest, ListLinksResponse, ListPoliciesRequest,
    ListPoliciesResponse, ListServicesRequest, ListServicesResponse,
    RenewOperatorCertificateRequest, RenewOperatorCertificateResponse, RevokeRequest,
    RevokeResponse, ServiceBackend, ServiceView, StatRequest, StatResponse, StatusRequest,
    StatusResponse, TapRequest, UnlinkRequest, UnlinkResponse, UpdateTrustBundleRequest,
    UpdateTrustBundleResponse,
};
use strait_federation::resource::{Resource, parse_documents};
use strait_federation::workload::DEFAULT_WORKLOAD_TOKEN_TTL_SECONDS;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::peer::{self, DialOutcome};
use crate::policies;
use crate::store::LinkRecord;
use crate::{Shared, lock, unix_now};

/// The largest file `apply` takes.
const MAX_DOCUMENTS: usize = strait_federation::resource::MAX_FILE_BYTES;
/// How long `apply` of a Link waits for the first dial.
const LINK_WAIT: Duration = Duration::from_secs(15);
/// The longest a join token may wait for its first use.
const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// The operator API of one gateway.
pub struct OperatorApi {
    shared: Arc<Shared>,
}

impl OperatorApi {
    /// The API over a gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl OperatorApi {
    /// Records a revocation; whether it was new.
    fn record_revocation(&self, kind: &str, value: &str) -> Result<bool, Status> {
        let mut state = lock(&self.shared.state);
        let set = match kind {
            "token" if !value.is_empty() => &mut state.revocations.tokens,
            "identity" => {
                let identity: SpiffeId = value
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("identity {value:?}: {e}")))?;
                if identity.cluster() != &self.shared.config.cluster {
                    return Err(Status::invalid_argument(format!(
                        "{identity} is not an identity of cluster {}: revoke it at its own cluster's gateway",
                        self.shared.config.cluster
                    )));
                }
                &mut state.revocations.identities
            }
            "certificate" if value.starts_with("sha256:") && value.len() == 71 => {
                &mut state.revocations.certificates
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "revoke what: {kind:?} {value:?} (kinds: token ID, identity SPIFFE-ID, certificate sha256:FINGERPRINT)"
                )));
            }
        };
        Ok(set.insert(value.to_owned()))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl OperatorApi {
    /// Tells peers and sidecars of an operator's change once it is on disk: services changed
    /// (written with the state), and policies changed (`policies`: their journal line). When a
    /// write failed they are told all the same, after it, and the operator gets the error: the
    /// gateway retries the write meanwhile.
    async fn publish(
        &self,
        services: Vec<ServiceKey>,
        policies: Option<crate::store::journal::Written>,
    ) -> Result<(), Status> {
        let saved = if services.is_empty() {
            Ok(())
        } else {
            self.shared.persist().await
        };
        let policies_changed = policies.is_some();
        let journaled = match policies {
            Some(written) => written.wait().await,
            None => Ok(()),
        };
        if !services.is_empty() {
            self.shared.export_changed(Touched::services(services));
        }
        if policies_changed {
            self.shared.policies_changed();
        }
        saved.and(journaled).map_err(unsaved)
    }
}

/// A change made in memory that could not be written: it stays in effect, and the periodic
/// write retries it.
fn unsaved(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "the change is in effect but could not be saved ({e}); the gateway retries the write"
    ))
}

impl OperatorApi {
    /// Checks a Link before anything of its file is applied.
    fn check_link(&self, source: &str, spec: &LinkSpec) -> Result<(), Status> {
        match peer::link_problem(&self.shared, spec) {
            Some(message) => Err(Status::failed_precondition(format!(
                "{source}: Link {}: {message}",
                spec.cluster
            ))),
            None => Ok(()),
        }
    }

    /// Applies one Link: the record is stored before the first dial (an unlink meanwhile
    /// removes it for good), and put back as it was when the peer refuses. Returns the applied
    /// object and what to restore should a later Link of the same file be refused.
    async fn apply_link(
        &self,
        source: &str,
        spec: LinkSpec,
    ) -> Result<(AppliedObject, Option<Option<LinkRecord>>), Status> {
        let cluster = spec.cluster.clone();
        let applied = |result: String| AppliedObject {
            kind: "Link".into(),
            namespace: String::new(),
            name: cluster.to_string(),
            result,
        };
        let previous = {
            let mut state = lock(&self.shared.state);
            let previous = state.links.get(&cluster).cloned();
            if previous.as_ref().is_some_and(|p| p.spec == spec) {
                // kubectl habit: the same object again is "unchanged", and the live
                // connection is left alone.
                return Ok((applied(Applied::Unchanged.as_str().into()), None));
            }
            state.links.insert(
                cluster.clone(),
                LinkRecord {
                    spec: spec.clone(),
                    created: unix_now(),
                },
            );
            previous
        };
        self.shared.persist().await.map_err(unsaved)?;
        let (tx, rx) = oneshot::channel();
        if !peer::start_dialer(&self.shared, spec, Some(tx)) {
            return Err(Status::aborted(format!(
                "{source}: Link {cluster}: removed while it was being applied"
            )));
        }
        let outcome = tokio::time::timeout(LINK_WAIT, rx).await;
        let mut result = if previous.is_some() {
            Applied::Configured
        } else {
            Applied::Created
        }
        .as_str()
        .to_owned();
        match outcome {
            Ok(Ok(DialOutcome::Connected)) => {}
            Ok(Ok(DialOutcome::Refused(reason))) => {
                self.restore_link(&cluster, previous, true).await?;
                return Err(Status::permission_denied(format!(
                    "{source}: Link {cluster}: refused: {reason}"
                )));
            }
            Ok(Ok(DialOutcome::Unreachable(reason))) => {
                result = format!("{result} (not connected yet, retrying: {reason})");
            }
            Ok(Err(_)) | Err(_) => {
                if !lock(&self.shared.state).links.contains_key(&cluster) {
                    return Err(Status::aborted(format!(
                        "{source}: Link {cluster}: removed while it was being applied"
                    )));
                }
                result = format!(
                    "{result} (not connected yet after {}s, retrying)",
                    LINK_WAIT.as_secs()
                );
            }
        }
        Ok((applied(result), Some(previous)))
    }

    /// Puts a Link back as it was before this apply: the previous record (redialed), or none.
    /// A link the peer refused is only dropped; one it admitted is unlinked, which it hears.
    async fn restore_link(
        &self,
        cluster: &ClusterName,
        previous: Option<LinkRecord>,
        refused: bool,
    ) -> Result<(), Status> {
        match previous {
            Some(previous) => {
                lock(&self.shared.state)
                    .links
                    .insert(cluster.clone(), previous.clone());
                peer::start_dialer(&self.shared, previous.spec, None);
                self.shared.persist().await.map_err(unsaved)?;
            }
            None if refused => {
                peer::discard(&self.shared, cluster)
                    .await
                    .map_err(unsaved)?;
            }
            None => {
                peer::unlink(&self.shared, cluster).await.map_err(unsaved)?;
            }
        }
        Ok(())
    }
}

/// Why a file cannot be applied as a whole, checked before anything of it is.
#[derive(Debug, thiserror::Error)]
enum CapacityError {
    #[error(
        "this would export {services} services with {endpoints} endpoints; peers accept at most {max_services} services and {max_endpoints} endpoints from one cluster"
    )]
    Export {
        services: usize,
        endpoints: usize,
        max_services: usize,
        max_endpoints: usize,
    },
    #[error(transparent)]
    Policies(#[from] BookError),
}

/// Refuses an apply that would make this cluster export more than a peer accepts from one
/// cluster (peers drop such a peering and would reconnect in a loop).
fn check_export_totals(
    state: &crate::store::State,
    resources: &[Resource],
) -> Result<(), CapacityError> {
    let limits = strait_federation::session::SessionConfig::default();
    let mut exported: std::collections::BTreeMap<&ServiceKey, usize> = state
        .export
        .services()
        .map(|(key, spec)| (key, spec.endpoints.len()))
        .collect();
    for resource in resources {
        if let Resource::Service { key, spec } = resource {
            if spec.export {
                exported.insert(key, spec.endpoints.len());
            } else {
                exported.remove(key);
            }
        }
    }
    let endpoints: usize = exported.values().sum();
    if exported.len() > limits.max_services || endpoints > limits.max_endpoints {
        return Err(CapacityError::Export {
            services: exported.len(),
            endpoints,
            max_services: limits.max_services,
            max_endpoints: limits.max_endpoints,
        });
    }
    Ok(())
}

fn service_key(namespace: &str, name: &str) -> Result<ServiceKey, Status> {
    let namespace = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    Ok(ServiceKey {
        namespace: Namespace::new(namespace)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
        name: ServiceName::new(name).map_err(|e| Status::invalid_argument(e.to_string()))?,
    })
}

impl OperatorApi {
    /// Deletes every object a file's documents name (`strait delete -f`). The file is checked
    /// whole first: a bad document deletes nothing.
    async fn delete_documents(
        &self,
        source: String,
        documents: String,
    ) -> Result<Response<DeleteResponse>, Status> {
        if self
            .shared
            .limits
            .file_bytes
            .exceeded_by(documents.len() as u64, &source)
        {
            return Err(Status::invalid_argument(format!(
                "{source}: larger than {MAX_DOCUMENTS} bytes"
            )));
        }
        let resources = tokio::task::spawn_blocking(move || parse_documents(&source, &documents))
            .await
            .map_err(internal)?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let object = |kind: &str, namespace: String, name: String, deleted: bool| AppliedObject {
            kind: kind.to_owned(),
            namespace,
            name,
            result: if deleted { "deleted" } else { "not found" }.into(),
        };
        let mut objects = Vec::new();
        let mut services_changed = Vec::new();
        let mut policies_deleted = Vec::new();
        let written = {
            let mut state = lock(&self.shared.state);
            for resource in &resources {
                match resource {
                    Resource::Service { key, .. } => {
                        let deleted = state.remove_service(key);
                        if deleted {
                            services_changed.push(key.clone());
                        }
                        objects.push(object(
                            "Service",
                            key.namespace.to_string(),
                            key.name.to_string(),
                            deleted,
                        ));
                    }
                    Resource::Policy { key, .. } => {
                        let deleted =
                            policies::delete(&mut state, &self.shared.config.cluster, key);
                        if deleted {
                            policies_deleted.push(key.clone());
                        }
                        objects.push(object(
                            key.kind.as_str(),
                            key.namespace.to_string(),
                            key.name.clone(),
                            deleted,
                        ));
                    }
                    Resource::Link(_) => {}
                }
            }
            (!policies_deleted.is_empty())
                .then(|| self.shared.journal_policies(&state, &policies_deleted))
        };
        self.publish(services_changed, written).await?;
        for resource in &resources {
            if let Resource::Link(spec) = resource {
                let deleted = peer::unlink(&self.shared, &spec.cluster)
                    .await
                    .map_err(internal)?;
                objects.push(object(
                    "Link",
                    String::new(),
                    spec.cluster.to_string(),
                    deleted,
                ));
            }
        }
        Ok(Response::new(DeleteResponse {
            deleted: objects.iter().any(|o| o.result == "deleted"),
            objects,
        }))
    }
}

#[tonic::async_trait]
impl Operator for OperatorApi {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let mut request = request.into_inner();
        if self
            .shared
            .limits
            .file_bytes
            .exceeded_by(request.documents.len() as u64, &request.source)
        {
            return Err(Status::invalid_argument(format!(
                "{}: larger than {} bytes",
                request.source, MAX_DOCUMENTS
            )));
        }
        // Parsing a bulk file takes CPU-time in the hundreds of milliseconds: off the runtime,
        // so peer sessions are not held up meanwhile.
        let (source, documents) = (
            request.source.clone(),
            std::mem::take(&mut request.documents),
        );
        let resources = tokio::task::spawn_blocking(move || parse_documents(&source, &documents))
            .await
            .map_err(internal)?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for resource in &resources {
            if let Resource::Link(spec) = resource {
                self.check_link(&request.source, spec)?;
            }
        }
        // Links first: when one is refused, the file's services are not applied either.
        let mut objects = Vec::new();
        let mut undo = Vec::new();
        for resource in &resources {
            if let Resource::Link(spec) = resource {
                match self.apply_link(&request.source, spec.clone()).await {
                    Ok((object, restore)) => {
                        objects.push(object);
                        if let Some(previous) = restore {
                            undo.push((spec.cluster.clone(), previous));
                        }
                    }
                    Err(refused) => {
                        for (cluster, previous) in undo.into_iter().rev() {
                            self.restore_link(&cluster, previous, false).await?;
                        }
                        return Err(refused);
                    }
                }
            }
        }
        let mut changed = Vec::new();
        let policies_changed;
        let written = {
            let mut state = lock(&self.shared.state);
            check_export_totals(&state, &resources)
                .and_then(|()| Ok(policies::check_capacity(&state, &resources)?))
                .map_err(|message| {
                    Status::failed_precondition(format!("{}: {message}", request.source))
                })?;
            for resource in &resources {
                if let Resource::Service { key, spec } = resource {
                    let result = state.put_service(key.clone(), spec.clone());
                    if result != Applied::Unchanged {
                        changed.push(key.clone());
                    }
                    objects.push(AppliedObject {
                        kind: "Service".into(),
                        namespace: key.namespace.to_string(),
                        name: key.name.to_string(),
                        result: result.as_str().into(),
                    });
                }
            }
            policies_changed = policies::apply(
                &mut state,
                &self.shared.config.cluster,
                &resources,
                &mut objects,
            )
            .map_err(|e| Status::failed_precondition(format!("{}: {e}", request.source)))?;
            let keys = resources.iter().filter_map(|r| match r {
                Resource::Policy { key, .. } => Some(key),
                _ => None,
            });
            policies_changed.then(|| self.shared.journal_policies(&state, keys))
        };
        self.publish(changed, written).await?;
        Ok(Response::new(ApplyResponse { objects }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let mut request = request.into_inner();
        if !request.documents.is_empty() {
            let (source, documents) = (
                std::mem::take(&mut request.source),
                std::mem::take(&mut request.documents),
            );
            return self.delete_documents(source, documents).await;
        }
        let deleted = match request.kind.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => {
                let key = service_key(&request.namespace, &request.name)?;
                let deleted = lock(&self.shared.state).remove_service(&key);
                if deleted {
                    let saved = self.shared.persist().await;
                    self.shared.export_changed(Touched::services([key]));
                    saved.map_err(unsaved)?;
                }
                deleted
            }
            "link" | "links" => {
                let cluster = ClusterName::new(request.name)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                peer::unlink(&self.shared, &cluster)
                    .await
                    .map_err(internal)?
            }
            other => {
                let Some(kind) = strait_federation::policy::PolicyKind::parse(other) else {
                    return Err(Status::invalid_argument(format!(
                        "cannot delete kind {other:?}; expected service, link, \
                         authorizationpolicy, httproute, ratelimitpolicy, quota or requestauthentication"
                    )));
                };
                let key = policies::key(kind, &request.namespace, &request.name)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let written = {
                    let mut state = lock(&self.shared.state);
                    policies::delete(&mut state, &self.shared.config.cluster, &key)
                        .then(|| self.shared.journal_policies(&state, [&key]))
                };
                let deleted = written.is_some();
                self.publish(Vec::new(), written).await?;
                deleted
            }
        };
        Ok(Response::new(DeleteResponse {
            deleted,
            objects: Vec::new(),
        }))
    }

    async fn list_policies(
        &self,
        _: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let policies = policies::views(&lock(&self.shared.state));
        Ok(Response::new(ListPoliciesResponse { policies }))
    }

    async fn create_link(
        &self,
        request: Request<CreateLinkRequest>,
    ) -> Result<Response<CreateLinkResponse>, Status> {
        let request = request.into_inner();
        let plain = request.plain;
        let config = &self.shared.config;
        let ttl = match request.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL_SECONDS,
            ttl if ttl > MAX_TOKEN_TTL_SECONDS => {
                return Err(Status::invalid_argument(format!(
                    "a join token may live at most {} days",
                    MAX_TOKEN_TTL_SECONDS / 86400
                )));
            }
            ttl => ttl,
        };
        let (token, claims) = self
            .shared
            .link_key
            .issue(
                &config.cluster,
                &config.trust_domain,
                unix_now(),
                ttl,
                strait_io::random::random_u128(),
            )
            .map_err(internal)?;
        let root_fingerprint = self
            .shared
            .trust
            .bundle()
            .fingerprint_of_issuer(&self.shared.trust.issuer().chain_pem)
            .ok_or_else(|| Status::internal("the trust bundle has no root"))?;
        let address = if request.address.is_empty() {
            config.advertised()
        } else {
            request.address
        };
        let document = LinkDocument::new(LinkSpec {
            cluster: config.cluster.clone(),
            trust_domain: config.trust_domain.clone(),
            gateway_address: address,
            root_fingerprint,
            token,
            expires: Some(rfc3339(claims.exp)),
        });
        // In Kubernetes mode, a Secret and a Link for `kubectl apply -f -` in the other cluster.
        let yaml = match &config.kubernetes {
            Some(kubernetes) if !plain => {
                crate::kubernetes::links::manifests(&document.spec, &kubernetes.namespace)
                    .map_err(internal)?
            }
            _ => serde_saphyr::to_string(&document).map_err(internal)?,
        };
        Ok(Response::new(CreateLinkResponse { document: yaml }))
    }

    async fn unlink(
        &self,
        request: Request<UnlinkRequest>,
    ) -> Result<Response<UnlinkResponse>, Status> {
        let cluster = ClusterName::new(request.into_inner().cluster)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let removed = peer::unlink(&self.shared, &cluster)
            .await
            .map_err(internal)?;
        Ok(Response::new(UnlinkResponse { removed }))
    }

    async fn list_services(
        &self,
        _: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let services = service_views(&self.shared);
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn create_workload_token(
        &self,
        request: Request<CreateWorkloadTokenRequest>,
    ) -> Result<Response<CreateWorkloadTokenResponse>, Status> {
        let request = request.into_inner();
        let namespace = Namespace::new(request.namespace)
            .map_err(|e| Status::invalid_argument(format!("namespace: {e}")))?;
        let account = AccountName::new(request.service_account)
            .map_err(|e| Status::invalid_argument(format!("service account: {e}")))?;
        let ttl = match request.ttl_seconds {
            0 => DEFAULT_WORKLOAD_TOKEN_TTL_SECONDS,
            ttl => ttl,
        };
        let config = &self.shared.config;
        let token_id = strait_io::random::random_u128();
        let token = self
            .shared
            .link_key
            .issue_workload(
                &config.cluster,
                &config.trust_domain,
                &namespace,
                &account,
                unix_now(),
                ttl,
                token_id,
            )
            .map_err(internal)?;
        let identity = SpiffeId::Workload {
            trust_domain: config.trust_domain.clone(),
            cluster: config.cluster.clone(),
            namespace,
            service_account: account,
        };
        Ok(Response::new(CreateWorkloadTokenResponse {
            token_id: strait_federation::link::token_id_text(token_id),
            token,
            identity: identity.to_string(),
        }))
    }

    async fn update_trust_bundle(
        &self,
        request: Request<UpdateTrustBundleRequest>,
    ) -> Result<Response<UpdateTrustBundleResponse>, Status> {
        crate::kubernetes::credentials::in_step(&self.shared).await?;
        let answer =
            super::rotation::update_bundle(&self.shared, &request.into_inner().bundle_pem)?;
        if answer.changed {
            super::rotation::count_rotation(&self.shared)?;
        }
        self.shared.persist().await.map_err(unsaved)?;
        Ok(Response::new(answer))
    }

    async fn create_issuer_request(
        &self,
        _: Request<CreateIssuerRequestRequest>,
    ) -> Result<Response<CreateIssuerRequestResponse>, Status> {
        Ok(Response::new(super::rotation::issuer_request(
            &self.shared,
        )?))
    }

    async fn install_issuer(
        &self,
        request: Request<InstallIssuerRequest>,
    ) -> Result<Response<InstallIssuerResponse>, Status> {
        crate::kubernetes::credentials::in_step(&self.shared).await?;
        let answer =
            super::rotation::install_issuer(&self.shared, request.into_inner().certificate_pem)?;
        super::rotation::count_rotation(&self.shared)?;
        Ok(Response::new(answer))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let RevokeRequest { kind, value } = request.into_inner();
        let value = value.trim().to_owned();
        let changed = self.record_revocation(&kind, &value)?;
        if changed {
            tracing::info!(kind = %kind, value = %value, "revoked");
            self.shared.mark_dirty();
            self.shared.persist().await.map_err(unsaved)?;
        }
        Ok(Response::new(RevokeResponse { changed }))
    }

    async fn renew_operator_certificate(
        &self,
        request: Request<RenewOperatorCertificateRequest>,
    ) -> Result<Response<RenewOperatorCertificateResponse>, Status> {
        let caller = super::caller::Caller::of(&request)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no operator certificate"))?;
        Ok(Response::new(super::rotation::renew_operator(
            &self.shared,
            &caller,
            &request.into_inner().csr,
        )?))
    }

    type TapStream = crate::tap::TapStream;

    async fn tap(&self, request: Request<TapRequest>) -> Result<Response<Self::TapStream>, Status> {
        let request = request.into_inner();
        crate::tap::start(
            &self.shared,
            &request.namespace,
            &request.service,
            request.max_rps,
        )
        .map(Response::new)
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        crate::golden::stat(&self.shared, request.get_ref())
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(crate::health::status(&self.shared).await))
    }

    async fn list_links(
        &self,
        _: Request<ListLinksRequest>,
    ) -> Result<Response<ListLinksResponse>, Status> {
        let links = link_views(&self.shared);
        Ok(Response::new(ListLinksResponse { links }))
    }
}

/// The clusterset's services as `get services` shows them.
pub fn service_views(shared: &Shared) -> Vec<ServiceView> {
    shared
        .clusterset()
        .into_iter()
        .map(|service| {
            let mut ports: Vec<String> = Vec::new();
            for (_, spec) in &service.backends {
                for port in &spec.ports {
                    let text = format!("{}/{}", port.port, port.protocol.as_str());
                    if !ports.contains(&text) {
                        ports.push(text);
                    }
                }
            }
            ServiceView {
                namespace: service.key.namespace.to_string(),
                name: service.key.name.to_string(),
                exported: service.exported,
                clusters: service
                    .backends
                    .iter()
                    .map(|(c, _)| c.to_string())
                    .collect(),
                backends: service
                    .backends
                    .iter()
                    .map(|(cluster, spec)| ServiceBackend {
                        cluster: cluster.to_string(),
                        endpoints: spec.endpoints.len() as u32,
                        ready_endpoints: spec.endpoints.iter().filter(|e| e.ready).count() as u32,
                    })
                    .collect(),
                ports,
                local: service
                    .backends
                    .first()
                    .is_some_and(|(cluster, _)| cluster == &shared.config.cluster),
            }
        })
        .collect()
}

/// The links as `get links` shows them.
pub fn link_views(shared: &Shared) -> Vec<LinkView> {
    let (imports, head): (Vec<(ClusterName, u64, u64)>, u64) = {
        let state = lock(&shared.state);
        (
            state
                .imports
                .iter()
                .map(|(c, i)| (c.clone(), i.services.len() as u64, i.position.version))
                .collect(),
            state.export.head().version,
        )
    };
    let peers = lock(&shared.peers);
    peers
        .iter()
        .map(|(cluster, status)| {
            let (count, version) = imports
                .iter()
                .find(|(c, _, _)| c == cluster)
                .map_or((0, 0), |(_, n, v)| (*n, *v));
            LinkView {
                cluster: cluster.to_string(),
                address: status.address.clone(),
                role: status.role.as_str().into(),
                state: status.state.as_str().into(),
                last_error: status.last_error.clone(),
                rtt_ms: status.rtt_ms(),
                imported_services: count,
                imported_version: version,
                exported_version: head,
                acked_version: status.acked.version,
                replicas: (u32::from(status.connection.is_some()) + status.siblings.len() as u32),
                since_unix: status
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            }
        })
        .collect()
}

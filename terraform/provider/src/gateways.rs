//! The gateways the provider talks to, by context name: the contexts file is read at every
//! use (so a context added or changed outside Terraform counts), connections are kept per
//! context, every call has a deadline, and every error names the context, the cluster and the
//! address.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use strait_federation::proto::operator::{
    AppliedObject, ApplyRequest, CreateLinkRequest, DeleteRequest, LinkView, ListLinksRequest,
    ListPoliciesRequest, ListServicesRequest, PolicyView, ServiceView, UnlinkRequest,
};
use strait_gateway::api::contexts::{Client, Context, ContextError, ContextFile, default_path};
use tokio::sync::Mutex;

/// How long one call to a gateway may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a gateway could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("context {context}: the gateway of cluster {cluster} at {address} refused: {message}")]
    Refused {
        context: String,
        cluster: String,
        address: String,
        message: String,
    },
    #[error(
        "context {context}: the gateway of cluster {cluster} at {address} did not answer within {} s",
        CALL_TIMEOUT.as_secs()
    )]
    Timeout {
        context: String,
        cluster: String,
        address: String,
    },
}

/// The contexts file and the connections made through it.
#[derive(Default)]
pub struct Gateways {
    /// The provider's `config_path`; none: the default.
    config_path: std::sync::Mutex<Option<PathBuf>>,
    clients: Mutex<HashMap<String, (Context, Client)>>,
}

impl Gateways {
    /// Uses this contexts file from now on.
    pub fn configure(&self, config_path: Option<PathBuf>) {
        if let Ok(mut path) = self.config_path.lock() {
            *path = config_path;
        }
    }

    fn path(&self) -> Result<PathBuf, ContextError> {
        match self.config_path.lock().ok().and_then(|p| p.clone()) {
            Some(path) => Ok(path),
            None => default_path(),
        }
    }

    /// The context named (none: the current one), without connecting.
    pub fn context(&self, name: Option<&str>) -> Result<Context, ContextError> {
        let path = self.path()?;
        ContextFile::load(&path)?.select(name, &path)
    }

    /// The gateway of a context, connected.
    pub async fn gateway(&self, name: Option<&str>) -> Result<Gateway, GatewayError> {
        let context = self.context(name)?;
        let mut clients = self.clients.lock().await;
        if let Some((known, client)) = clients.get(&context.name)
            && known == &context
        {
            return Ok(Gateway {
                context,
                client: client.clone(),
            });
        }
        let client = context.connect().await?;
        clients.insert(context.name.clone(), (context.clone(), client.clone()));
        Ok(Gateway { context, client })
    }
}

/// One context's gateway.
pub struct Gateway {
    pub context: Context,
    client: Client,
}

impl Gateway {
    /// Runs one call with the deadline, naming this gateway in errors.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, GatewayError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(GatewayError::Refused {
                context: self.context.name.clone(),
                cluster: self.context.cluster.to_string(),
                address: self.context.api_addr.clone(),
                message: status_text(&status),
            }),
            Err(_) => Err(GatewayError::Timeout {
                context: self.context.name.clone(),
                cluster: self.context.cluster.to_string(),
                address: self.context.api_addr.clone(),
            }),
        }
    }

    /// The gateway's peerings.
    pub async fn links(&self) -> Result<Vec<LinkView>, GatewayError> {
        let mut client = self.client.clone();
        Ok(self
            .call(client.list_links(ListLinksRequest {}))
            .await?
            .links)
    }

    /// A Link document (with a join token) that lets another cluster's gateway link to this
    /// one through its operator API (a strait document also in Kubernetes mode).
    pub async fn create_link(&self, ttl: Duration, address: &str) -> Result<String, GatewayError> {
        let mut client = self.client.clone();
        let request = CreateLinkRequest {
            ttl_seconds: ttl.as_secs().max(1),
            address: address.to_owned(),
            plain: true,
        };
        Ok(self.call(client.create_link(request)).await?.document)
    }

    /// Applies documents (all or nothing); `source` names them in errors.
    pub async fn apply(
        &self,
        source: &str,
        documents: &str,
    ) -> Result<Vec<AppliedObject>, GatewayError> {
        let mut client = self.client.clone();
        let request = ApplyRequest {
            source: source.to_owned(),
            documents: documents.to_owned(),
        };
        Ok(self.call(client.apply(request)).await?.objects)
    }

    /// Deletes what the documents name; each object comes back "deleted" or "not found".
    pub async fn delete(
        &self,
        source: &str,
        documents: &str,
    ) -> Result<Vec<AppliedObject>, GatewayError> {
        let mut client = self.client.clone();
        let request = DeleteRequest {
            source: source.to_owned(),
            documents: documents.to_owned(),
            ..Default::default()
        };
        Ok(self.call(client.delete(request)).await?.objects)
    }

    /// Removes the peering with a cluster (both sides when the peer is reachable); false when
    /// there was none.
    pub async fn unlink(&self, cluster: &str) -> Result<bool, GatewayError> {
        let mut client = self.client.clone();
        let request = UnlinkRequest {
            cluster: cluster.to_owned(),
        };
        Ok(self.call(client.unlink(request)).await?.removed)
    }

    /// The mesh-wide policies the gateway holds.
    pub async fn policies(&self) -> Result<Vec<PolicyView>, GatewayError> {
        let mut client = self.client.clone();
        Ok(self
            .call(client.list_policies(ListPoliciesRequest {}))
            .await?
            .policies)
    }

    /// The services the gateway knows.
    pub async fn services(&self) -> Result<Vec<ServiceView>, GatewayError> {
        let mut client = self.client.clone();
        Ok(self
            .call(client.list_services(ListServicesRequest {}))
            .await?
            .services)
    }
}

/// A gRPC status as one line: its message and the causes under it.
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    let mut source = std::error::Error::source(status);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

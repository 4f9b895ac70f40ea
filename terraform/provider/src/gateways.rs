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
use tokio_util::sync::CancellationToken;

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
    #[error("config_path {0}: no such file")]
    NoContextsFile(PathBuf),
    #[error("Terraform asked the provider to stop")]
    Stopped,
}

/// The contexts file and the connections made through it.
#[derive(Default)]
pub struct Gateways {
    /// The provider's `config_path`; none: the default.
    config_path: std::sync::Mutex<Option<PathBuf>>,
    clients: Mutex<HashMap<String, (Context, Client)>>,
    /// Cancelled when Terraform stops the provider (Ctrl-C): calls in flight end at once.
    stopping: CancellationToken,
}

/// `~/` at the start of a path is the home folder, as operators write it.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

impl Gateways {
    /// Uses this contexts file from now on (none: the default).
    pub fn configure(&self, config_path: Option<&str>) {
        if let Ok(mut path) = self.config_path.lock() {
            *path = config_path.map(expand_home);
        }
    }

    /// Ends the calls in flight and refuses new ones.
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// The contexts file: the one configured, which must exist, or the default.
    fn path(&self) -> Result<PathBuf, GatewayError> {
        match self.config_path.lock().ok().and_then(|p| p.clone()) {
            Some(path) if !path.exists() => Err(GatewayError::NoContextsFile(path)),
            Some(path) => Ok(path),
            None => Ok(default_path()?),
        }
    }

    /// The context named (none: the current one), without connecting.
    pub fn context(&self, name: Option<&str>) -> Result<Context, GatewayError> {
        let path = self.path()?;
        Ok(ContextFile::load(&path)?.select(name, &path)?)
    }

    /// The gateway of a context, connected (a connection is made once per context and kept;
    /// none is made while another context's is being made).
    pub async fn gateway(&self, name: Option<&str>) -> Result<Gateway, GatewayError> {
        let context = self.context(name)?;
        let known = self
            .clients
            .lock()
            .await
            .get(&context.name)
            .filter(|(known, _)| known == &context)
            .map(|(_, client)| client.clone());
        let client = match known {
            Some(client) => client,
            None => {
                let client = tokio::select! {
                    client = context.connect() => client?,
                    () = self.stopping.cancelled() => return Err(GatewayError::Stopped),
                };
                self.clients
                    .lock()
                    .await
                    .insert(context.name.clone(), (context.clone(), client.clone()));
                client
            }
        };
        Ok(Gateway {
            context,
            client,
            stopping: self.stopping.clone(),
        })
    }
}

/// One context's gateway.
pub struct Gateway {
    pub context: Context,
    client: Client,
    stopping: CancellationToken,
}

impl Gateway {
    /// Runs one call with the deadline, naming this gateway in errors.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, GatewayError> {
        let answer = tokio::select! {
            answer = tokio::time::timeout(CALL_TIMEOUT, call) => answer,
            () = self.stopping.cancelled() => return Err(GatewayError::Stopped),
        };
        match answer {
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

/// A gRPC status as one line: its message and the causes under it, each said once.
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    if let Some(source) = std::error::Error::source(status) {
        let causes = strait_io::api::causes(source);
        if !text.contains(&causes) {
            text = format!("{text}: {causes}");
        }
    }
    text
}

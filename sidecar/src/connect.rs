//! Reaching another sidecar: directly for an endpoint of this cluster, or through this
//! cluster's gateway relay for another cluster (a flow header, then the same mutual TLS end to
//! end). HTTP goes over one multiplexed HTTP/2 connection per target, kept in a pool, so a hop
//! costs no handshake per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use strait_federation::catalog::ServiceKey;
use strait_federation::flow::FlowTarget;
use strait_federation::identity::{ClusterName, Namespace};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Shared;

/// Errors of bodies relayed by the sidecar.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on every hop.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of bytes already at hand.
pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed()
}

/// A received body as the body type of every hop, streamed as it arrives.
pub fn boxed(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// ALPN for HTTP between sidecars.
pub const HTTP_ALPN: &[u8] = b"h2";
/// ALPN for opaque TCP between sidecars; the client then sends the service port (2 bytes, big
/// endian) and one byte of flags (see [`READY_FLAG`]).
pub const TCP_ALPN: &[u8] = b"strait-tcp/2";
/// The flag of a TCP connection's preamble that says the calling workload is ready.
pub const READY_FLAG: u8 = 1;

/// Where a request or connection is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An endpoint of this cluster (a sidecar's inbound address).
    Local(SocketAddr),
    /// A service in another cluster, through the gateways.
    Remote {
        cluster: ClusterName,
        service: ServiceKey,
        port: u16,
        hostname: Option<String>,
    },
}

impl Target {
    /// The cluster that serves this target.
    pub fn cluster<'a>(&'a self, local: &'a ClusterName) -> &'a ClusterName {
        match self {
            Target::Local(_) => local,
            Target::Remote { cluster, .. } => cluster,
        }
    }
}

/// Why a target could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("through the gateway: {0}")]
    Refused(String),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP/2 with {0}: {1}")]
    Http(String, String),
}

/// Runs one step of a dial within what is left of the dial's time.
async fn timed<T>(
    deadline: tokio::time::Instant,
    what: &str,
    future: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline, future)
        .await
        .map_err(|_| format!("{what}: timed out"))?
}

/// Opens a mutual-TLS connection to a target with the given ALPN; the server must be a workload
/// of `namespace` (the called service's).
pub async fn dial(
    shared: &Shared,
    target: &Target,
    namespace: &Namespace,
    alpn: &'static [u8],
) -> Result<TlsStream<TcpStream>, DialError> {
    // The connect timeout bounds the whole dial: TCP, the relay's answer and TLS.
    let limit = tokio::time::Instant::now() + shared.config.connect_timeout;
    let (tcp, name) = match target {
        Target::Local(address) => {
            let tcp = timed(limit, "connect", async {
                TcpStream::connect(address).await.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| DialError::Connect(address.to_string(), e))?;
            (tcp, address.to_string())
        }
        Target::Remote {
            cluster,
            service,
            port,
            hostname,
        } => {
            let relay = shared
                .directory
                .borrow()
                .relay
                .ok_or_else(|| DialError::Refused("the gateway named no relay yet".into()))?;
            let header = FlowTarget {
                cluster: cluster.clone(),
                service: service.clone(),
                port: *port,
                hostname: hostname.clone(),
                source_cluster: None,
            };
            let tcp = timed(limit, "the gateway relay", async {
                let mut tcp = TcpStream::connect(relay)
                    .await
                    .map_err(|e| format!("relay {relay}: {e}"))?;
                strait_io::flow::write_frame(&mut tcp, &header.to_wire())
                    .await
                    .map_err(|e| e.to_string())?;
                strait_io::flow::read_reply(&mut tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(tcp)
            })
            .await
            .map_err(DialError::Refused)?;
            (tcp, format!("{service} in cluster {cluster}"))
        }
    };
    let _ = tcp.set_nodelay(true);
    let config = shared
        .client_tls(namespace, alpn)
        .map_err(|e| DialError::Tls(name.clone(), e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // The verifier checks the SPIFFE identity, not a DNS name.
    let server_name = ServerName::try_from("sidecar.strait").expect("a constant DNS name");
    timed(limit, "TLS handshake", async {
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| DialError::Tls(name, e))
}

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// One HTTP/2 connection per target, dialled once however many requests wait for it.
#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<Target, Slot>>,
}

impl Pool {
    /// A ready sender to `target`, dialling when there is no live connection.
    pub async fn get(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
        namespace: &Namespace,
    ) -> Result<SendRequest<Body>, DialError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up first: the target is cloned only when it gets a new slot.
            match slots.get(target) {
                Some(slot) => slot.clone(),
                None => slots.entry(target.clone()).or_default().clone(),
            }
        };
        let mut current = slot.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *current = None;
        let tls = dial(shared, target, namespace, HTTP_ALPN).await?;
        let name = format!("{target:?}");
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| DialError::Http(name.clone(), e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target = %name, error = %e, "HTTP/2 connection ended");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }

    /// Drops the connection to a target (it failed).
    pub fn evict(&self, target: &Target) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
    }
}

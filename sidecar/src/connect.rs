//! Reaching another sidecar: directly for an endpoint of this cluster, or through this
//! cluster's gateway relay for another cluster (a flow header, then the same mutual TLS end to
//! end). HTTP goes over one multiplexed HTTP/2 connection per target, kept in a pool, so a hop
//! costs no handshake per request.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use strait_federation::catalog::ServiceKey;
use strait_federation::flow::{FlowRefused, FlowTarget};
use strait_federation::identity::{ClusterName, Namespace};
use strait_federation::tls::TlsError;
use strait_federation::trace::FlowTrace;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Shared;
use crate::executor::Executor;

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
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
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
    /// A service in another cluster, through the gateways. Shared: every request that picks
    /// it copies a pointer, not the names (a copy was three allocations, made four times a
    /// request).
    Remote(Arc<Remote>),
}

/// A service in another cluster, as a target of this sidecar.
#[derive(PartialEq, Eq)]
pub struct Remote {
    /// The hash of the rest, taken once: a request looks its target up four times (the
    /// balancer's choice, its start and its end, the connection pool), and hashing the names
    /// each time was 2 % of the calling sidecar's instructions (with SipHash, before those
    /// maps took foldhash). First, so that two targets that differ are told apart by it.
    hash: u64,
    pub cluster: ClusterName,
    pub service: ServiceKey,
    pub port: u16,
    /// One pod of a headless service, when the name gave one.
    pub hostname: Option<String>,
}

impl Hash for Remote {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("cluster", &self.cluster)
            .field("service", &self.service)
            .field("port", &self.port)
            .field("hostname", &self.hostname)
            .finish()
    }
}

impl Target {
    /// A service in another cluster.
    pub fn remote(
        cluster: ClusterName,
        service: ServiceKey,
        port: u16,
        hostname: Option<String>,
    ) -> Self {
        // Keyed per process, as the maps' own hashers are: the names come from other clusters.
        static KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);
        let hash = KEYS.hash_one((&cluster, &service, port, &hostname));
        Target::Remote(Arc::new(Remote {
            hash,
            cluster,
            service,
            port,
            hostname,
        }))
    }

    /// The cluster that serves this target.
    pub fn cluster<'a>(&'a self, local: &'a ClusterName) -> &'a ClusterName {
        match self {
            Target::Local(_) => local,
            Target::Remote(remote) => &remote.cluster,
        }
    }
}

/// Why a target could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// No TCP connection to an endpoint of this cluster.
    #[error("connecting to {address}: {error}")]
    Connect {
        address: SocketAddr,
        #[source]
        error: StepError<std::io::Error>,
    },
    /// The gateway's relay did not open a flow to the other cluster.
    #[error("through the gateway: {0}")]
    Refused(#[source] StepError<RelayError>),
    /// No TLS configuration for the called namespace.
    #[error("TLS with {name}: {error}")]
    TlsConfig {
        name: String,
        #[source]
        error: TlsError,
    },
    /// The TLS handshake failed.
    #[error("TLS with {name}: {error}")]
    Tls {
        name: String,
        #[source]
        error: StepError<std::io::Error>,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 with {name}: {error}")]
    Http {
        name: String,
        #[source]
        error: hyper::Error,
    },
}

/// Why the gateway's relay did not open a flow.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The catalog has not named the relay yet.
    #[error("the gateway named no relay yet")]
    NoRelay,
    /// No TCP connection to the relay.
    #[error("relay {relay}: {error}")]
    Connect {
        relay: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    /// The flow's header could not be written.
    #[error("{0}")]
    Header(#[source] std::io::Error),
    /// The relay refused the flow, or its answer could not be read.
    #[error("{0}")]
    Refused(#[from] FlowRefused),
}

/// Why one step of a dial failed: on its own, or out of the dial's time.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    /// The step (named) did not finish within what was left of the dial's time.
    #[error("{0}: timed out")]
    TimedOut(&'static str),
    #[error(transparent)]
    Failed(E),
}

impl<E> From<E> for StepError<E> {
    fn from(error: E) -> Self {
        StepError::Failed(error)
    }
}

/// Runs one step of a dial within what is left of the dial's time.
async fn timed<T, E>(
    deadline: tokio::time::Instant,
    what: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, StepError<E>> {
    match tokio::time::timeout_at(deadline, future).await {
        Ok(result) => result.map_err(StepError::Failed),
        Err(_) => Err(StepError::TimedOut(what)),
    }
}

/// Opens a mutual-TLS connection to a target with the given ALPN; the server must be a workload
/// of `namespace` (the called service's).
pub async fn dial(
    shared: &Shared,
    target: &Target,
    namespace: &Namespace,
    alpn: &'static [u8],
    trace: Option<FlowTrace>,
) -> Result<TlsStream<TcpStream>, DialError> {
    // The connect timeout bounds the whole dial: TCP, the relay's answer and TLS.
    let limit = tokio::time::Instant::now() + shared.config.connect_timeout;
    let (tcp, name) = match target {
        Target::Local(address) => {
            let tcp = timed(limit, "connect", TcpStream::connect(address))
                .await
                .map_err(|error| DialError::Connect {
                    address: *address,
                    error,
                })?;
            (tcp, address.to_string())
        }
        Target::Remote(remote) => {
            let Remote {
                cluster,
                service,
                port,
                hostname,
                ..
            } = &**remote;
            let relay = shared
                .directory
                .borrow()
                .relay
                .ok_or_else(|| DialError::Refused(RelayError::NoRelay.into()))?;
            let header = FlowTarget {
                cluster: cluster.clone(),
                service: service.clone(),
                port: *port,
                hostname: hostname.clone(),
                source_cluster: None,
                forwarded: false,
                trace,
            };
            let tcp = timed(limit, "the gateway relay", async {
                let mut tcp = connect_relay(relay).await?;
                strait_io::flow::write_frame(&mut tcp, &header.to_wire())
                    .await
                    .map_err(RelayError::Header)?;
                strait_io::flow::read_reply(&mut tcp).await?;
                Ok::<_, RelayError>(tcp)
            })
            .await
            .map_err(DialError::Refused)?;
            (tcp, format!("{service} in cluster {cluster}"))
        }
    };
    let _ = tcp.set_nodelay(true);
    let config = shared
        .client_tls(namespace, alpn)
        .map_err(|error| DialError::TlsConfig {
            name: name.clone(),
            error,
        })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // The verifier checks the SPIFFE identity, not a DNS name.
    let server_name = ServerName::try_from("sidecar.strait").expect("a constant DNS name");
    timed(limit, "TLS handshake", connector.connect(server_name, tcp))
        .await
        .map_err(|error| DialError::Tls { name, error })
}

/// How many times a refused connection to the relay is tried again: nothing was sent, and a
/// relay Service may send the next try to another replica (one that is going away is refused
/// until its endpoint is withdrawn).
const RELAY_CONNECT_RETRIES: u32 = 3;

/// A TCP connection to the relay, tried again (at once, then after 20 and 40 ms) when refused.
async fn connect_relay(relay: SocketAddr) -> Result<TcpStream, RelayError> {
    let mut attempt = 0;
    loop {
        match TcpStream::connect(relay).await {
            Ok(tcp) => return Ok(tcp),
            Err(error)
                if attempt < RELAY_CONNECT_RETRIES
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(error) => return Err(RelayError::Connect { relay, error }),
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// One HTTP/2 connection per target, dialled once however many requests wait for it.
#[derive(Default)]
pub struct Pool {
    /// Looked up by every request, so hashed with foldhash (see [`crate::balance::Balancer`]).
    slots: Mutex<foldhash::HashMap<Target, Slot>>,
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
        let sender = dial_http2(shared, target, namespace, None).await?;
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

/// A connection of its own to a target in another cluster, for one sampled request: its flow
/// names the request's trace, so each gateway on the way records its hop. It closes once the
/// request is answered.
pub async fn alone(
    shared: &Shared,
    target: &Target,
    namespace: &Namespace,
    trace: FlowTrace,
) -> Result<SendRequest<Body>, DialError> {
    dial_http2(shared, target, namespace, Some(trace)).await
}

/// Dials `target` and starts HTTP/2 on the connection. Boxed: a TLS handshake's state is
/// several KiB, and every request's future would otherwise keep room for it (and copy it)
/// though few requests dial.
fn dial_http2<'a>(
    shared: &'a Shared,
    target: &'a Target,
    namespace: &'a Namespace,
    trace: Option<FlowTrace>,
) -> Pin<Box<dyn Future<Output = Result<SendRequest<Body>, DialError>> + Send + 'a>> {
    Box::pin(async move {
        http2(
            dial(shared, target, namespace, HTTP_ALPN, trace).await?,
            target,
        )
        .await
    })
}

/// HTTP/2 over a dialled connection; the connection is driven by a task of its own.
async fn http2(tls: TlsStream<TcpStream>, target: &Target) -> Result<SendRequest<Body>, DialError> {
    let name = format!("{target:?}");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(Executor)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_reset_streams(1024)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|error| DialError::Http {
            name: name.clone(),
            error,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target = %name, error = %e, "HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_target_planned_again_is_the_same_key_and_one_that_differs_is_another() {
        let west = || ClusterName::new("west").unwrap();
        let api = || crate::testing::shop("api");
        let target = |cluster, service, port, hostname: Option<&str>| {
            Target::remote(cluster, service, port, hostname.map(str::to_owned))
        };
        // A new plan makes new targets: the pool and the balancer must still find theirs.
        let mut keys = std::collections::HashSet::new();
        assert!(keys.insert(target(west(), api(), 8080, None)));
        assert!(
            !keys.insert(target(west(), api(), 8080, None)),
            "the same key"
        );
        let others = [
            target(ClusterName::new("north").unwrap(), api(), 8080, None),
            target(west(), crate::testing::shop("db"), 8080, None),
            target(west(), api(), 9090, None),
            target(west(), api(), 8080, Some("api-0")),
        ];
        for other in others {
            assert!(keys.insert(other.clone()), "{other:?} is another key");
        }
        // Logs name the target, not its hash.
        let logged = format!("{:?}", target(west(), api(), 8080, None));
        assert!(logged.contains("west") && logged.contains("api") && logged.contains("8080"));
        assert!(!logged.contains("hash"), "{logged}");
    }

    #[tokio::test]
    async fn a_refused_relay_connection_is_tried_again_and_reaches_a_relay_that_came_up() {
        // A port that refuses now and listens 25 ms later, as a relay Service does while a
        // going replica's endpoint is withdrawn.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = probe.local_addr().unwrap();
        drop(probe);
        let listening = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let listener = tokio::net::TcpListener::bind(relay).await.unwrap();
            listener.accept().await.map(|_| ())
        });
        connect_relay(relay).await.unwrap();
        listening.await.unwrap().unwrap();
        // A relay that never comes back: the error names it, after the retries.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = probe.local_addr().unwrap();
        drop(probe);
        let error = connect_relay(gone).await.err().unwrap();
        assert!(error.to_string().contains(&gone.to_string()), "{error}");
    }

    #[test]
    fn a_failed_dial_names_the_target_and_the_step_that_failed() {
        let address: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cases = [
            (
                DialError::Connect {
                    address,
                    error: refused.into(),
                },
                "connecting to 127.0.0.1:5000: refused",
            ),
            (
                DialError::Connect {
                    address,
                    error: StepError::TimedOut("connect"),
                },
                "connecting to 127.0.0.1:5000: connect: timed out",
            ),
            (
                DialError::Refused(RelayError::NoRelay.into()),
                "through the gateway: the gateway named no relay yet",
            ),
            (
                DialError::Refused(StepError::TimedOut("the gateway relay")),
                "through the gateway: the gateway relay: timed out",
            ),
            (
                DialError::Refused(
                    RelayError::Refused(FlowRefused::Refused("no such service".into())).into(),
                ),
                "through the gateway: no such service",
            ),
            (
                DialError::Tls {
                    name: "shop/db in cluster west".into(),
                    error: StepError::TimedOut("TLS handshake"),
                },
                "TLS with shop/db in cluster west: TLS handshake: timed out",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}

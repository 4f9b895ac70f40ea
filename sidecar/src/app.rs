//! The connections from the sidecar to its app: one pool per HTTP port the app serves.
//!
//! An HTTP/1.1 port keeps the connections that answered; a request takes the one used last that
//! is free, and dials another when none is. An HTTP/2 port (http2, grpc) shares one connection.
//! A connection unused for a minute is closed. When the app closed a kept connection
//! before the request was written on it, the request goes again on a new one.
//!
//! This takes the place of hyper's general client, whose pool is built for many hosts: it
//! hashed the request's authority several times per request and spawned a task to return
//! each HTTP/1.1 connection, about a tenth of a server sidecar's instructions under load. The
//! app is one address per port, so a stack of connections is all a port needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::rt::Executor as _;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use strait_federation::catalog::Protocol;
use tokio::net::TcpStream;

use crate::config::AppPort;
use crate::connect::Body;
use crate::executor::Executor;

/// How long a connection to the app is kept unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Free HTTP/1.1 connections kept per port; one that comes back beyond them is closed.
const MAX_KEPT: usize = 1024;

/// Why the app gave no response.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The pools of the app's HTTP ports.
pub struct AppClients {
    clients: HashMap<u16, AppClient>,
    /// HTTP ports in the order configured.
    order: Vec<u16>,
}

impl AppClients {
    /// One pool per HTTP port of `ports`: HTTP/1.1 for http ports, HTTP/2 cleartext for http2
    /// and grpc.
    pub fn new(ports: &[AppPort]) -> Self {
        let http = || ports.iter().filter(|p| p.port.protocol != Protocol::Tcp);
        Self {
            clients: http()
                .map(|p| (p.port.port, AppClient::new(p.clone())))
                .collect(),
            order: http().map(|p| p.port.port).collect(),
        }
    }

    /// The pool of the port a request names; without a port (or with 80, the HTTP default
    /// that the service lacks), the first HTTP port, as the caller's sidecar chose it.
    pub fn for_port(&self, port: Option<u16>) -> Option<&AppClient> {
        if let Some(port) = port
            && let Some(found) = self.clients.get(&port)
        {
            return Some(found);
        }
        if port.is_some_and(|p| p != 80) {
            return None;
        }
        self.order.first().and_then(|p| self.clients.get(p))
    }
}

/// The connections to one port of the app.
pub struct AppClient {
    /// The port, and where the app listens.
    pub port: AppPort,
    pool: Arc<Pool>,
}

impl AppClient {
    fn new(port: AppPort) -> Self {
        Self::with_idle_timeout(port, IDLE_TIMEOUT)
    }

    /// Connections to `port`, each closed once unused for `idle_timeout`.
    fn with_idle_timeout(port: AppPort, idle_timeout: Duration) -> Self {
        let pool = Arc::new(Pool {
            target: port.target,
            http2: port.port.protocol != Protocol::Http,
            idle_timeout,
            kept: Mutex::default(),
            dialling: tokio::sync::Mutex::new(()),
        });
        Self { port, pool }
    }

    /// Sends `request` to the app, on a kept connection when one is free: in origin form
    /// (`/path?query`) to an HTTP/1.1 port, with its full URI to an HTTP/2 one.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, AppError> {
        let request = match self.pool.take() {
            Some(mut sender) => match sender.send(request).await {
                Ok(response) => {
                    Pool::keep(&self.pool, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // The connection closed between being taken and the request being written
                    // on it. (One the app closes while the request is being written fails the
                    // request: it may have reached the app.)
                    Some(request) => request,
                    None => return Err(error.into_error().into()),
                },
            },
            None => request,
        };
        let mut sender = self.pool.dial().await?;
        let response = sender
            .send(request)
            .await
            .map_err(TrySendError::into_error)?;
        Pool::keep(&self.pool, sender);
        Ok(response)
    }

    /// Connections kept now (free or busy).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.pool.lock().senders.len()
    }

    /// Kept connections a request could take now.
    #[cfg(test)]
    fn free(&self) -> usize {
        let kept = self.pool.lock();
        kept.senders.iter().filter(|(s, _)| s.is_free()).count()
    }
}

/// One side of a connection to the app.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Whether a request can go now: an HTTP/1.1 connection between exchanges, an HTTP/2 one
    /// whenever it is open.
    fn is_free(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_ready(),
            Sender::Http2(sender) => !sender.is_closed(),
        }
    }

    /// Another handle on a shared (HTTP/2) connection.
    fn share(&self) -> Option<Sender> {
        match self {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Sender::Http2(sender.clone())),
        }
    }

    async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Sender::Http1(sender) => sender.try_send_request(request).await,
            Sender::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// The connections to one app address.
struct Pool {
    target: SocketAddr,
    http2: bool,
    idle_timeout: Duration,
    kept: Mutex<Kept>,
    /// One HTTP/2 connection is dialled at a time: the requests that wait share it.
    dialling: tokio::sync::Mutex<()>,
}

/// The kept connections, each with when it was last used.
#[derive(Default)]
struct Kept {
    senders: Vec<(Sender, Instant)>,
    /// Whether a task closes those left unused.
    sweeping: bool,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free connection, the one used last first (a shared one stays kept); closed ones found
    /// on the way are dropped.
    fn take(&self) -> Option<Sender> {
        let mut kept = self.lock();
        let mut at = kept.senders.len();
        while at > 0 {
            at -= 1;
            let sender = &kept.senders[at].0;
            if sender.is_closed() {
                kept.senders.swap_remove(at);
            } else if sender.is_free() {
                return match sender.share() {
                    Some(shared) => Some(shared),
                    None => Some(kept.senders.swap_remove(at).0),
                };
            }
        }
        None
    }

    /// Keeps a connection that answered (an HTTP/2 one is kept already: its use is noted), and
    /// starts the sweep of unused ones if none runs.
    fn keep(pool: &Arc<Pool>, sender: Sender) {
        let now = Instant::now();
        let mut kept = pool.lock();
        match sender {
            Sender::Http1(_) if kept.senders.len() < MAX_KEPT => kept.senders.push((sender, now)),
            Sender::Http1(_) => {}
            Sender::Http2(_) => {
                if let Some((_, used)) = kept.senders.last_mut() {
                    *used = now;
                }
            }
        }
        if !kept.sweeping && !kept.senders.is_empty() {
            kept.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(pool)));
        }
    }

    /// A new connection; to an HTTP/2 port, the one another request dialled meanwhile if any.
    async fn dial(&self) -> Result<Sender, AppError> {
        if !self.http2 {
            return Ok(Sender::Http1(self.handshake_http1().await?));
        }
        let _dialling = self.dialling.lock().await;
        if let Some(sender) = self.take() {
            return Ok(sender);
        }
        let sender = self.handshake_http2().await?;
        // `take` found no open connection, and dropped the closed ones on the way.
        let mut kept = self.lock();
        kept.senders
            .push((Sender::Http2(sender.clone()), Instant::now()));
        Ok(Sender::Http2(sender))
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, AppError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.target))
            .await
            .map_err(|_| AppError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(AppError::Connect)?;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }

    async fn handshake_http1(&self) -> Result<http1::SendRequest<Body>, AppError> {
        let (sender, connection) = http1::handshake(self.connect().await?).await?;
        Executor.execute(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn handshake_http2(&self) -> Result<http2::SendRequest<Body>, AppError> {
        let (sender, connection) = http2::Builder::new(Executor)
            .handshake(self.connect().await?)
            .await?;
        Executor.execute(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Closes the connections of `pool` left unused for its idle timeout, until none is kept.
async fn sweep(pool: Weak<Pool>) {
    loop {
        let Some(idle_timeout) = pool.upgrade().map(|pool| pool.idle_timeout) else {
            return;
        };
        tokio::time::sleep(idle_timeout / 4).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut kept = pool.lock();
        kept.senders.retain(|(sender, used)| {
            let unused = sender.is_free() && now.duration_since(*used) >= pool.idle_timeout;
            !(sender.is_closed() || unused)
        });
        if kept.senders.is_empty() {
            kept.sweeping = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests;

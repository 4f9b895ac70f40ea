//! The strait sidecar: one per workload. It gets its workload identity from its cluster's
//! gateway, follows the catalog the gateway streams, registers its endpoint (universal mode),
//! and carries the app's traffic: `outbound` (HTTP proxy port, per-upstream TCP listeners,
//! transparent interception) and `inbound` (mutual TLS from other sidecars, forwarded to the
//! app), with planning (`plan`), balancing (`balance`), connections (`connect`) and metrics
//! (`metrics`).
//!
//! `start` wires the pieces.

pub mod admin;
pub mod app;
pub mod attempt;
pub mod authorizer;
pub mod balance;
pub mod budget;
pub mod config;
pub mod connect;
pub mod control;
pub mod directory;
pub mod executor;
pub mod golden;
pub mod http;

pub mod inbound;
pub mod init;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod outbound;
pub mod plan;
pub mod policy;
pub mod quota;
pub mod ratelimit;
pub mod residence;
pub mod retry;
pub mod routing;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use strait_federation::catalog::ServiceKey;
use strait_federation::identity::Role;

use strait_federation::identity::{ClusterName, Namespace, SpiffeId};
use strait_federation::pki::{PkiError, TrustBundle};
use strait_federation::tls::{self, CertStore, PeerRule, TlsError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::AppClients;
use crate::balance::Balancer;
use crate::config::SidecarConfig;
use crate::connect::{HTTP_ALPN, Pool, TCP_ALPN, Target};
use crate::directory::Directory;
use crate::metrics::Metrics;

/// The header in which the inbound sidecar tells the app who called (the caller's SPIFFE
/// identity from its mutual-TLS certificate). Set only by sidecars; a caller's own is dropped.
pub const CLIENT_ID_HEADER: &str = "strait-client-id";
/// The header in which a caller's sidecar tells the destination's whether the calling workload
/// is ready (`true` or `false`); whatever the app wrote there is replaced.
pub const CALLER_READY_HEADER: &str = "strait-caller-ready";

/// How long the first certificate may take (the gateway may be starting too).
const CERTIFY_DEADLINE: Duration = Duration::from_secs(30);

/// What can stop a sidecar from starting.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{what}: {message}")]
    Config { what: String, message: String },
    #[error("gateway: {0}")]
    Gateway(String),
    #[error("gateway: {0}")]
    Api(#[from] strait_io::api::ApiError),
    #[error("the gateway refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {what} {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Unix milliseconds (quota windows follow them).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A client TLS configuration, shared by every connection it opens.
type ClientTls = Arc<rustls::ClientConfig>;

/// What every task of a sidecar shares.
pub struct Shared {
    pub config: SidecarConfig,
    pub cluster: ClusterName,
    pub identity: SpiffeId,
    pub certs: CertStore,
    /// The trust bundle, replaced live when the gateway's view carries a new one (a root
    /// rotation).
    pub(crate) trust: tls::TrustStore,
    /// Renew the certificate now: the gateway's issuer changed (a root rotation).
    pub(crate) renew_now: tokio::sync::Notify,
    /// Client TLS configurations, per namespace called and ALPN.
    client_tls: Mutex<HashMap<(Namespace, &'static [u8]), ClientTls>>,
    pub(crate) inbound_tls: Arc<rustls::ServerConfig>,
    /// The catalog as last streamed by the gateway.
    pub directory: watch::Sender<Arc<Directory>>,
    pub(crate) balancer: Mutex<Balancer<Target>>,
    pub(crate) pool: Pool,
    /// Plans of the names asked for, for the directory in use.
    pub(crate) plans: plan::Plans,
    /// Retry budgets, one per route rule that retries.
    pub(crate) budgets: retry::Budgets,
    /// Clients of the external authorizers that policies name.
    pub(crate) authorizers: authorizer::Authorizers,
    /// Token buckets of the rate limits this sidecar enforces.
    pub(crate) limiter: ratelimit::Limiter,
    /// This endpoint's counts against mesh-wide quotas.
    pub(crate) quota: quota::Ledger,
    /// Key sets fetched for RequestAuthentications' `jwksUri`.
    pub(crate) key_sets: jwks::KeySets,
    /// What callers can make the sidecar hold.
    pub(crate) limits: limits::Limits,
    pub metrics: Metrics,
    /// Traces and access logs.
    pub telemetry: telemetry::Telemetry,
    pub(crate) app_clients: AppClients,
    pub inbound_addr: SocketAddr,
    /// The address registered for this endpoint.
    pub advertise_addr: SocketAddr,
    pub(crate) registered: AtomicBool,
    /// The gateway's IP as the sidecar dials it (for a relay bound to a wildcard address).
    pub(crate) gateway_ip: Option<std::net::IpAddr>,
    /// The namespace and service this sidecar fronts, for inbound labels.
    pub(crate) service_labels: (String, String),
    /// The service this sidecar fronts, whose authorization policies it enforces.
    pub(crate) own_service: Option<ServiceKey>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The balancer's statistics (held briefly: never across an await).
    pub(crate) fn balancer(&self) -> MutexGuard<'_, Balancer<Target>> {
        self.balancer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TLS configuration for calling a service of `namespace`: its server must be a
    /// workload of that namespace (in any cluster), so no other workload can answer for it.
    pub(crate) fn client_tls(
        &self,
        namespace: &Namespace,
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut configs = self.client_tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = configs.get(&(namespace.clone(), alpn)) {
            return Ok(config.clone());
        }
        let mut config = tls::client_config(
            &self.trust,
            &self.certs,
            PeerRule::workloads_in(namespace.clone()),
            &[alpn],
        )?;
        config.resumption = rustls::client::Resumption::in_memory_sessions(256);
        let config = Arc::new(config);
        configs.insert((namespace.clone(), alpn), config.clone());
        Ok(config)
    }

    /// Sets the certificate-expiry gauge from the certificate presented now.
    pub(crate) fn record_certificate_expiry(&self) {
        if let Some(at) = self
            .certs
            .leaf()
            .and_then(|leaf| strait_federation::certificate::not_after(&leaf))
        {
            self.metrics
                .certificate_expiry
                .set(i64::try_from(at).unwrap_or(i64::MAX));
        }
    }

    /// Certified, with a catalog, and registered when it fronts a service.
    pub fn is_ready(&self) -> bool {
        self.directory.borrow().version > 0
            && (self.config.service.is_none() || self.registered.load(Ordering::SeqCst))
    }
}

/// A running sidecar.
pub struct Sidecar {
    pub shared: Arc<Shared>,
    pub inbound_addr: SocketAddr,
    pub proxy_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// The bound address of each upstream listener, in the order configured.
    pub upstream_addrs: Vec<SocketAddr>,
    pub transparent_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    /// The workload identity this sidecar presents.
    pub fn identity(&self) -> &SpiffeId {
        &self.shared.identity
    }

    /// Waits until the sidecar is ready (see [`Shared::is_ready`]).
    pub async fn ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.shared.is_ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.is_ready()
    }

    /// Stops every listener, deregisters, and waits for the tasks to end.
    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

/// Accepts connections until the sidecar stops, handing each to `handle` in a task of its own;
/// one over `limit` is closed at once.
pub(crate) async fn accept_each<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    limit: &strait_io::limit::Cap,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, remote, place) = tokio::select! {
            accepted = limit.accept(&listener) => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let Some(place) = place else {
            continue;
        };
        let connection = handle(tcp, remote);
        tokio::spawn(async move {
            connection.await;
            drop(place);
        });
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| SidecarError::Bind { what, addr, error })
}

fn bound(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Starts a sidecar: certifies it (retrying while the gateway is unreachable, up to 30 s),
/// binds its listeners and starts its tasks. It runs until [`Sidecar::stop`].
pub async fn start(config: SidecarConfig) -> Result<Sidecar, SidecarError> {
    tls::install_default_provider();
    strait_io::limit::raise_open_files(config.limits.open_files());
    let bootstrap = &config.bootstrap;
    let bundle = TrustBundle::from_pem(
        bootstrap.trust_domain.clone(),
        &bootstrap.bundle,
        Path::new("bootstrap document"),
    )?;
    let trust = tls::TrustStore::new(bundle)?;
    let anonymous = control::channel(bootstrap, &trust, None).await?;
    let deadline = Instant::now() + CERTIFY_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    let certified = loop {
        match control::certify(anonymous.clone(), &bootstrap.token, config.token_kind).await {
            Ok(certified) => break certified,
            Err(e @ SidecarError::Gateway(_)) if Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, "cannot get a certificate yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    let certs = CertStore::new(&certified.credential)?;
    let channel = control::channel(bootstrap, &trust, Some(&certs)).await?;

    let inbound = bind("inbound", config.inbound_addr).await?;
    let proxy = match config.proxy_addr {
        Some(addr) => Some(bind("proxy", addr).await?),
        None => None,
    };
    let admin = match config.admin_addr {
        Some(addr) => Some(bind("admin", addr).await?),
        None => None,
    };
    let transparent = match config.transparent_addr {
        Some(addr) => Some(bind("transparent", addr).await?),
        None => None,
    };
    let mut upstreams = Vec::new();
    for upstream in &config.upstreams {
        upstreams.push((
            bind("upstream", upstream.listen).await?,
            upstream.name.clone(),
        ));
    }
    let inbound_addr = bound(&inbound);
    if inbound_addr.ip().is_unspecified()
        && config.advertise_addr.is_none()
        && config.service.is_some()
    {
        return Err(SidecarError::Config {
            what: "--inbound-addr".into(),
            message: format!(
                "{inbound_addr} is a wildcard address that other sidecars cannot dial: give --advertise-addr too"
            ),
        });
    }
    let workloads = PeerRule::role(Role::Workload);
    let service_labels = (
        match &certified.identity {
            SpiffeId::Workload { namespace, .. } => namespace.to_string(),
            _ => String::new(),
        },
        config
            .service
            .as_ref()
            .map(|s| s.name.to_string())
            .unwrap_or_default(),
    );
    let own_service = match (&certified.identity, &config.service) {
        (SpiffeId::Workload { namespace, .. }, Some(service)) => Some(ServiceKey {
            namespace: namespace.clone(),
            name: service.name.clone(),
        }),
        _ => None,
    };
    let shutdown = CancellationToken::new();
    let identity_text = certified.identity.to_string();
    let metrics = Metrics::new(bootstrap.cluster.as_str());
    let shared = Arc::new(Shared {
        cluster: bootstrap.cluster.clone(),
        identity: certified.identity,
        client_tls: Mutex::new(HashMap::new()),
        inbound_tls: Arc::new(tls::server_config(
            &trust,
            &certs,
            workloads.clone(),
            &[HTTP_ALPN, TCP_ALPN],
        )?),
        certs,
        trust,
        renew_now: tokio::sync::Notify::new(),
        directory: watch::channel(Arc::new(Directory::default())).0,
        balancer: Mutex::new(Balancer::default()),
        pool: Pool::default(),
        plans: plan::Plans::default(),
        budgets: retry::Budgets::default(),
        authorizers: authorizer::Authorizers::default(),
        limiter: ratelimit::Limiter::default(),
        quota: quota::Ledger::default(),
        key_sets: jwks::KeySets::default(),
        limits: limits::Limits::new(&config.limits, &metrics.refusals),
        metrics,
        telemetry: telemetry::Telemetry::new(
            bootstrap.cluster.as_str(),
            &identity_text,
            config.access_log,
            shutdown.clone(),
        ),
        app_clients: AppClients::new(&config.served_ports().cloned().collect::<Vec<_>>()),
        inbound_addr,
        advertise_addr: config.advertise_addr.unwrap_or(inbound_addr),
        registered: AtomicBool::new(false),
        gateway_ip: config
            .bootstrap
            .gateway
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip()),
        own_service,
        service_labels,
        shutdown,
        config,
    });
    shared.record_certificate_expiry();
    let mut tasks = vec![
        tokio::spawn(control::renew(
            shared.clone(),
            channel.clone(),
            certified.renew_at,
        )),
        tokio::spawn(control::watch(shared.clone(), channel.clone())),
        tokio::spawn(quota::report(shared.clone(), channel.clone())),
        tokio::spawn(golden::report(shared.clone(), channel.clone())),
        tokio::spawn(telemetry::report_taps(shared.clone(), channel.clone())),
        tokio::spawn(inbound::serve(shared.clone(), inbound)),
        tokio::spawn(forget_idle(shared.clone())),
        tokio::spawn(residence::release_freed_heap(shared.shutdown.clone())),
        tokio::spawn(jwks::refresh(shared.clone())),
    ];
    if let Some(service) = shared.config.service.clone() {
        tasks.push(tokio::spawn(control::register(
            shared.clone(),
            channel.clone(),
            service,
        )));
    }
    let proxy_addr = proxy.as_ref().map(bound);
    if let Some(proxy) = proxy {
        tasks.push(tokio::spawn(outbound::serve_http_proxy(
            shared.clone(),
            proxy,
        )));
    }
    let admin_addr = admin.as_ref().map(bound);
    if let Some(admin) = admin {
        tasks.push(tokio::spawn(strait_io::admin::serve(
            shared.clone(),
            admin,
            shared.limits.admin.clone(),
            shared.shutdown.clone(),
            "sidecar",
            axum::Router::new(),
        )));
    }
    let transparent_addr = transparent.as_ref().map(bound);
    if let Some(transparent) = transparent {
        tasks.push(tokio::spawn(outbound::serve_transparent(
            shared.clone(),
            transparent,
        )));
    }
    let mut upstream_addrs = Vec::new();
    for (listener, name) in upstreams {
        upstream_addrs.push(bound(&listener));
        tasks.push(tokio::spawn(outbound::serve_upstream(
            shared.clone(),
            listener,
            name,
        )));
    }
    tracing::info!(
        identity = %shared.identity,
        inbound = %inbound_addr,
        proxy = ?proxy_addr,
        "sidecar started"
    );
    Ok(Sidecar {
        shared,
        inbound_addr,
        proxy_addr,
        admin_addr,
        upstream_addrs,
        transparent_addr,
        tasks,
    })
}

/// Forgets balancer statistics of targets gone idle.
async fn forget_idle(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.balancer().forget_idle(Instant::now()),
            () = shared.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod testing;

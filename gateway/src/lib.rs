//! The strait east-west gateway: one per cluster. It holds the cluster's catalog and issuer,
//! peers with other clusters' gateways over QUIC (catalog federation), serves the operator API
//! (tonic over mutual TLS) and the admin HTTP endpoints (health, readiness, metrics).
//!
//! `run` wires the pieces; each lives in its own module:
//! `peer` (QUIC peering around federation's handshake and session), `peering` (the state of
//! each peering), `relay` (data flows between sidecars and peers), `api` (the operator API and
//! the sidecars' workload API), `policies`, `dns`, `admin` (what the admin HTTP server
//! reports), `store` (persisted state), `metrics`, `config` and `init` (files on disk).

pub mod admin;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod dns;
pub mod golden;
pub mod health;
pub mod init;
pub mod kubernetes;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod peering;
pub mod policies;
pub mod relay;
pub mod store;
pub mod tap;
pub mod trust;
pub mod views;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use strait_federation::catalog::{Position, clusterset};
use strait_federation::identity::{ClusterName, SpiffeId};
use strait_federation::link::LinkKey;
use strait_federation::pki::{LEAF_LIFETIME, PkiError};
use strait_federation::tls::{CertStore, TlsError};
use strait_io::files::read_file;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::peering::PeerStatus;
use crate::store::{State, StateFile};

/// What can stop a gateway from starting or an operator action from completing.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{0} already exists; remove it or choose another folder")]
    Exists(PathBuf),
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
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
    #[error("{0}")]
    LocalAddr(#[source] std::io::Error),
    #[error(transparent)]
    Field(#[from] config::FieldError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

/// Locks a mutex; a panic elsewhere while holding it does not make the state unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) use strait_io::clock::{unix_now, unix_now_ms};

/// What every task of a gateway shares.
pub struct Shared {
    pub config: GatewayConfig,
    /// What strangers can make the gateway hold.
    pub limits: limits::Limits,
    /// The trust bundle and the cluster's issuer in force (a root rotation replaces them).
    pub trust: Arc<trust::Trust>,
    pub certs: CertStore,
    pub link_key: LinkKey,
    pub state: Mutex<State>,
    state_file: StateFile,
    /// Peers' batches for the imports journal, in the order they were applied.
    imports_journal: store::journal::Writer<store::imports::Entry>,
    /// Changes of the policy set for its journal, in the order they were made.
    policies_journal: store::journal::Writer<store::policies::PolicyChange>,
    /// Serializes writers of the state file, so an older snapshot never overwrites a newer one.
    write_lock: Mutex<()>,
    dirty: AtomicBool,
    /// The head of this cluster's export log: peer sessions wake on it.
    pub export_tx: watch::Sender<Position>,
    /// Bumped whenever the clusterset view changes (imports or local services).
    pub catalog_tx: watch::Sender<u64>,
    /// Bumped whenever what sidecars see changes: the services (once merged into the view
    /// and the zone) or the settings.
    pub views_tx: watch::Sender<u64>,
    /// Bumped whenever the policy set changes (here or from a peer): peer sessions wake on it
    /// and send their peer what it lacks.
    pub policy_tx: watch::Sender<u64>,
    /// Where each linked cluster runs, as its gateway said when it last connected.
    pub locations: Mutex<BTreeMap<ClusterName, strait_federation::location::Location>>,
    /// Requests admitted against mesh-wide Quotas, per budget, window and cluster.
    pub quotas: Mutex<strait_federation::policy::quota::QuotaBook>,
    /// Bumped whenever a quota count grows: peer sessions send what grew.
    pub quota_tx: watch::Sender<u64>,
    /// The quota book's sequence number when its counts were last written to disk.
    pub(crate) quotas_saved: std::sync::atomic::AtomicU64,
    /// The DNS zone, changed in place with the catalog; `None` without a DNS server.
    pub zone: watch::Sender<Option<Arc<dns::LiveZone>>>,
    /// The catalog as sidecars get it, and which services changed since it was made.
    pub views: views::Views,
    pub peers: Mutex<BTreeMap<ClusterName, PeerStatus>>,
    /// Every cluster's golden metrics, this one's being counted ([`golden`]).
    pub golden: Mutex<strait_federation::golden::GoldenBook>,
    /// Bumped whenever the golden book has batches to send: peer sessions send them.
    pub golden_tx: watch::Sender<u64>,
    /// The policy set's digest and live count, with the `policy_tx` value they were made at.
    pub(crate) policy_digest: Mutex<Option<(u64, Vec<u8>, u64)>>,
    /// When the policy set last changed (Unix milliseconds), for `strait check`.
    pub policies_changed_ms: std::sync::atomic::AtomicU64,
    /// Where the admin server listens (bound).
    pub admin_addr: SocketAddr,
    /// Where the DNS server listens, once it does.
    pub dns_addr: std::sync::OnceLock<SocketAddr>,
    /// Operators' taps in force (`strait tap`).
    pub taps: tap::Taps,
    /// Spans of the flows that carry sampled requests, for the collector.
    pub spans: strait_io::spans::SpanExporter,
    pub metrics: Metrics,
    pub endpoint: quinn::Endpoint,
    /// Where this cluster's sidecars open flows to other clusters (bound).
    pub relay_addr: SocketAddr,
    /// The relay Service's address, in Kubernetes mode with `relayService` once it is known.
    pub relay_service: Mutex<Option<SocketAddr>>,
    pub ready: AtomicBool,
    /// What fails in Kubernetes mode (empty otherwise): readiness waits on it.
    pub kubernetes: Arc<kubernetes::Health>,
    /// The cluster's API in Kubernetes mode.
    pub kube: Option<kube::Client>,
    /// Whether this replica writes to the API: always in universal mode; in Kubernetes mode
    /// while it holds the Lease with a fresh renewal (`kubernetes::lease`).
    pub leading: watch::Sender<bool>,
    /// Whether this gateway peers with other clusters: at once in universal mode and with a
    /// state folder of its own; in Kubernetes mode on an empty disk once the API gave it its
    /// catalog and its stored state ([`Awaited`]), so peers never take an empty export from it
    /// for the cluster's.
    pub peering: watch::Sender<bool>,
    /// What this gateway still waits for before it peers.
    awaiting: Mutex<std::collections::BTreeSet<Awaited>>,
    /// Held for each look at the Lease, and by the last one at a clean stop: a look already
    /// under way when the gateway stops could otherwise take the Lease back after it was given up.
    pub lease_turn: tokio::sync::Mutex<()>,
    /// Which replica of the cluster's gateway this is, as peers hear it: empty in universal
    /// mode (the only one), the Lease identity in Kubernetes mode.
    pub replica: String,
    /// Where the cluster's other live gateway replicas' relays listen (Kubernetes mode): a
    /// replica with no connection to a cluster hands its sidecars' flows there to one that has.
    pub siblings: Mutex<Vec<SocketAddr>>,
    /// The leading replica's virtual addresses, for a standby's DNS to give the same ones.
    pub leader_vips: watch::Sender<Option<Arc<dns::vip::PoolFile>>>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Writes the state now (operator changes: acknowledged only once on disk).
    pub async fn persist(self: &Arc<Self>) -> Result<(), GatewayError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.persist_blocking()).await?
    }

    fn persist_blocking(&self) -> Result<(), GatewayError> {
        let _writer = lock(&self.write_lock);
        self.dirty.store(false, Ordering::SeqCst);
        // Encode under the lock, write without it: sessions must not wait on the disk.
        let encoded = StateFile::encode(&lock(&self.state));
        let written = encoded.and_then(|e| self.state_file.write(&e));
        if written.is_err() {
            // Try again at the next housekeeping tick.
            self.dirty.store(true, Ordering::SeqCst);
        }
        written
    }

    /// Journals what a peer's batch changed in its imports (all of them when `reset`); call
    /// with the state still locked from the change, so batches are journaled in their order.
    pub fn journal_imports(
        &self,
        state: &State,
        peer: &ClusterName,
        changed: &[strait_federation::catalog::ServiceKey],
        reset: bool,
    ) {
        let entry = store::imports::Entry::of(&state.imports, peer, changed, reset);
        self.imports_journal.send(entry);
    }

    /// Journals policies as `state` holds them now; call with the state still locked from the
    /// change, and await the answer outside the lock before anyone acts on the change (it
    /// fails when the change could not be written).
    pub fn journal_policies<'a>(
        &self,
        state: &State,
        keys: impl IntoIterator<Item = &'a strait_federation::policy::PolicyKey>,
    ) -> store::journal::Written {
        let change = store::policies::PolicyChange::of(&state.policies, keys);
        self.policies_journal.send_and_wait(change)
    }

    /// Has the whole policy set written (changes whose keys are not at hand: tombstones
    /// dropped, the set taken from the API).
    pub fn write_policies(&self) {
        self.policies_journal.send_whole();
    }

    /// Marks the state for the next periodic write.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Tells sessions that the export changed, and the catalog watchers that the view did
    /// for the services touched.
    pub fn export_changed(&self, touched: views::Touched) {
        let head = lock(&self.state).export.head();
        self.export_tx.send_replace(head);
        self.catalog_changed(touched);
    }

    /// Tells catalog watchers that the clusterset view changed for the services touched.
    /// Sidecars hear of it once they are merged again ([`views`]).
    pub fn catalog_changed(&self, touched: views::Touched) {
        self.views.touch(touched);
        self.catalog_tx.send_modify(|n| *n += 1);
    }

    /// Tells peer sessions and sidecars that the policy set changed.
    pub fn policies_changed(&self) {
        self.policies_changed_ms
            .store(unix_now_ms(), Ordering::SeqCst);
        self.policy_tx.send_modify(|n| *n += 1);
        self.views_changed();
    }

    /// Whether this replica leads (see [`Shared::leading`]).
    pub fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Where sidecars open flows to other clusters: the relay Service when there is one (any
    /// ready replica), else this replica's relay.
    pub fn relay_for_sidecars(&self) -> SocketAddr {
        lock(&self.relay_service).unwrap_or_else(|| self.relay_advertised())
    }

    /// Records whether this replica leads; the tasks that follow it wake on a change.
    pub fn set_leading(&self, leads: bool) {
        set_flag(&self.leading, leads);
    }

    /// Where sidecars and sibling replicas reach this gateway's relay: its bound address, or
    /// the pod's address (`POD_IP`, from the downward API) when it listens on all of them.
    pub fn relay_advertised(&self) -> SocketAddr {
        reachable(self.relay_addr, std::env::var("POD_IP").ok().as_deref())
    }

    /// Whether this gateway peers (see [`Shared::peering`]).
    pub fn peers_with_clusters(&self) -> bool {
        *self.peering.borrow()
    }

    /// Notes that something peering waited for is here; the last one starts peering.
    pub fn awaited(&self, what: Awaited) {
        let mut awaiting = lock(&self.awaiting);
        if awaiting.remove(&what) && awaiting.is_empty() {
            tracing::info!("the cluster's catalog and state are known: peering starts");
            set_flag(&self.peering, true);
        }
    }

    /// Tells the sidecars' watchers that their settings changed (all but the services).
    pub fn views_changed(&self) {
        self.views.settings_changed();
        self.views_tx.send_modify(|n| *n += 1);
    }

    /// When each certificate held expires: the roots, the issuer, the gateway's own and the
    /// injector's; a rotation's old ones leave the gauge. Read only by a scrape, so refreshed
    /// by it (parsing and hashing certificates at every housekeeping tick would be waste).
    pub(crate) fn refresh_certificate_metrics(&self) {
        use strait_federation::certificate::not_after;
        use strait_federation::pki::{fingerprint, parse_certs};
        let gauge = &self.metrics.certificate_expiry;
        gauge.reset();
        let set = |kind: &str, cert: &rustls_pki_types::CertificateDer<'_>| {
            if let Some(at) = not_after(cert) {
                gauge
                    .with_label_values(&[kind, &fingerprint(cert)])
                    .set(i64::try_from(at).unwrap_or(i64::MAX));
            }
        };
        for root in self.trust.bundle().roots() {
            set("root", root);
        }
        let issuer = self.trust.issuer();
        if let Some(cert) = parse_certs(&issuer.chain_pem, std::path::Path::new("issuer"))
            .ok()
            .and_then(|c| c.into_iter().next())
        {
            set("issuer", &cert);
        }
        if let Some(leaf) = self.certs.leaf() {
            set("gateway", &leaf);
        }
        if let Some(cert) = self
            .kubernetes
            .injector_chain
            .get()
            .and_then(|pem| parse_certs(pem, std::path::Path::new("injector")).ok())
            .and_then(|c| c.into_iter().next())
        {
            set("injector", &cert);
        }
    }

    /// Refreshes gauges that are read from state rather than counted.
    pub fn refresh_metrics(&self) {
        let state = lock(&self.state);
        self.metrics
            .catalog_services
            .with_label_values(&[self.config.cluster.as_str()])
            .set(state.local_service_count() as i64);
        for (cluster, imported) in &state.imports {
            self.metrics
                .catalog_services
                .with_label_values(&[cluster.as_str()])
                .set(imported.services.len() as i64);
        }
        let mut policies = std::collections::BTreeMap::new();
        for (key, _, _) in state.policies.set.live() {
            *policies.entry(key.kind).or_insert(0i64) += 1;
        }
        let tombstones = state
            .policies
            .set
            .len()
            .saturating_sub(state.policies.set.live_count());
        let head = state.export.head();
        drop(state);
        self.metrics.policy_tombstones.set(tombstones as i64);
        for kind in strait_federation::policy::PolicyKind::ALL {
            self.metrics
                .policies
                .with_label_values(&[kind.as_str()])
                .set(policies.get(&kind).copied().unwrap_or(0));
        }
        for (cluster, status) in lock(&self.peers).iter() {
            let peer = cluster.as_str();
            self.metrics.set_peer_state(peer, status.state.as_str());
            let stats = status.connection.as_ref().map(quinn::Connection::stats);
            self.metrics.set_peer_connection(peer, stats.as_ref());
            let lag = if status.acked.epoch == head.epoch {
                head.version.saturating_sub(status.acked.version)
            } else {
                head.version
            };
            self.metrics
                .sync_lag
                .with_label_values(&[peer])
                .set(lag as i64);
        }
    }

    /// The clusterset view.
    pub fn clusterset(&self) -> Vec<strait_federation::catalog::ClustersetService> {
        let state = lock(&self.state);
        let local = state.local_services();
        clusterset(&self.config.cluster, &local, state.imports.iter())
    }
}

/// What a Kubernetes-mode gateway that starts on an empty disk waits for before it peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Awaited {
    /// The first pass of the export over the API's Services, ServiceExports and slices.
    Export,
    /// The durable state, when the API could not be read at start (its Links and tokens).
    State,
}

/// Where a listener bound to `bound` is reached from elsewhere: the bound address, or the pod's
/// (`pod_ip`) when it listens on all addresses and the pod's is known.
fn reachable(bound: SocketAddr, pod_ip: Option<&str>) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    pod_ip
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map_or(bound, |ip| SocketAddr::new(ip, bound.port()))
}

/// Sets a flag that tasks follow, waking them only when it changes.
fn set_flag(flag: &watch::Sender<bool>, value: bool) {
    flag.send_if_modified(|current| std::mem::replace(current, value) != value);
}

/// The UDP socket of the QUIC endpoint, with large buffers: with kernel defaults, bursts of
/// catalog updates were dropped at the receive buffer, and a bulk flow between clouds loses
/// what a burst leaves over. A host that caps them is named in the log, with the sysctl to
/// raise.
fn quic_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, GatewayError> {
    let bind = |error| GatewayError::Bind {
        what: "quicAddr",
        addr,
        error,
    };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(bind)?;
    let buffers = peer::socket::size_buffers(&socket, peer::socket::BUFFER_BYTES);
    // Capped at 4 MiB, a flow 20 ms away lost packets (bench/README.md): less than asked for
    // is worth a word.
    if buffers.receive < peer::socket::BUFFER_BYTES || buffers.send < peer::socket::BUFFER_BYTES {
        tracing::warn!(
            receive_bytes = buffers.receive,
            send_bytes = buffers.send,
            wanted_bytes = peer::socket::BUFFER_BYTES,
            "the QUIC socket's buffers are capped by the host: packets of a burst beyond them \
             are lost; raise net.core.rmem_max and net.core.wmem_max to 16777216, or give the \
             gateway CAP_NET_ADMIN"
        );
    }
    socket.bind(&addr.into()).map_err(bind)?;
    Ok(socket.into())
}

/// Runs a gateway until `shutdown` completes; then closes peer connections and writes state.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    strait_federation::tls::install_default_provider();
    strait_io::limit::raise_open_files(config.limits.open_files());
    let credentials = config.credentials().to_owned();
    let (bundle, issuer) = trust::load(&config)?;
    let link_key_path = credentials.join("link.key");
    let link_key = LinkKey::from_pem(&read_file(&link_key_path)?, &link_key_path)?;
    let (kube_client, restored) = match &config.kubernetes {
        Some(kubernetes) => {
            let client = kubernetes::client(kubernetes).await?;
            // A rescheduled pod starts on an empty disk: the API gives back what it kept.
            let restored =
                kubernetes::durable::restore(&client, &config, &kubernetes.namespace).await;
            (Some(client), restored)
        }
        None => (None, kubernetes::durable::Restore::NotNeeded),
    };
    let state_file = StateFile::in_dir(&config.state_dir);
    let mut state = state_file.load()?;
    let (mut import_files, imports) =
        store::journal::Journal::<store::imports::ImportsJournal>::load(
            &config.state_dir,
            std::mem::take(&mut state.imports),
        )?;
    state.imports = imports;
    let (policy_files, policies) =
        store::journal::Journal::<store::policies::PoliciesJournal>::load(
            &config.state_dir,
            std::mem::take(&mut state.policies),
        )?;
    state.policies = policies;
    state.policies.tombstone_retention_ms = config.peering.tombstone_retention_ms;
    let peers_known: Vec<ClusterName> = state
        .imports
        .keys()
        .filter(|c| !state.links.contains_key(*c) && !state.redemptions.is_active(c))
        .cloned()
        .collect();
    if !peers_known.is_empty() {
        for gone in peers_known {
            state.imports.remove(&gone);
        }
        import_files.fold(&state.imports)?;
    }
    let identity = SpiffeId::gateway(&config.trust_domain, &config.cluster);
    let certs = CertStore::new(&issuer.issue(&identity, LEAF_LIFETIME, SystemTime::now())?)?;
    let trust = Arc::new(trust::Trust::new(
        bundle,
        issuer,
        trust::rotated_dir(&config),
    )?);

    let endpoint = peer::endpoint(
        &config,
        trust.store(),
        &certs,
        quic_socket(config.quic_addr)?,
    )?;
    let api_listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|error| GatewayError::Bind {
            what: "apiAddr",
            addr: config.api_addr,
            error,
        })?;
    let relay_bind = config.relay_bind();
    let relay_listener = tokio::net::TcpListener::bind(relay_bind)
        .await
        .map_err(|error| GatewayError::Bind {
            what: "relayAddr",
            addr: relay_bind,
            error,
        })?;
    let relay_addr = relay_listener
        .local_addr()
        .map_err(GatewayError::LocalAddr)?;
    let dns = match &config.dns {
        Some(dns_config) => Some((dns::bind(dns_config)?, dns::load_pool(&config, dns_config)?)),
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .map_err(|error| GatewayError::Bind {
            what: "adminAddr",
            addr: config.admin_addr,
            error,
        })?;

    // Marked only once every socket is bound: a start that fails there changes nothing.
    if state.running {
        // A crash: changes may have been sent to peers after the last write. Numbering them
        // again would let a peer at such a version miss the new ones, so start a new epoch:
        // peers get one snapshot and are exact again.
        tracing::warn!("the previous run did not stop cleanly: starting a new export epoch");
        state.export.renew_epoch(strait_io::random::random_u64());
    }
    state.running = true;
    // Endpoints that sidecars registered in the last run are leases that did not survive it:
    // withdraw them until the sidecars register again.
    let keys: Vec<_> = state.export.services().map(|(k, _)| k.clone()).collect();
    for key in keys {
        state.republish(&key);
    }
    state_file.write(&StateFile::encode(&state)?)?;
    let head = state.export.head();
    // On an empty disk the catalog is the API's: peers wait for it (and for the stored state
    // when it could not be read yet). With a state folder of its own, a gateway peers from what
    // it kept, whatever the API does (fail static).
    let awaiting: std::collections::BTreeSet<Awaited> = match &restored {
        kubernetes::durable::Restore::NotNeeded => Default::default(),
        kubernetes::durable::Restore::Unreadable(_) => [Awaited::Export, Awaited::State].into(),
        _ => [Awaited::Export].into(),
    };
    let links: Vec<_> = state.links.values().cloned().collect();
    let acceptor_peers = state.redemptions.active_clusters();
    let replica = if kube_client.is_some() {
        kubernetes::lease::identity()
    } else {
        String::new()
    };
    let golden_book = golden::book(&config, &replica);
    let shutdown_token = CancellationToken::new();
    let spans = strait_io::spans::SpanExporter::new(
        "strait-gateway",
        vec![(
            "strait.cluster",
            strait_federation::trace::Value::Text(config.cluster.to_string()),
        )],
        shutdown_token.clone(),
    );
    let metrics = Metrics::new(config.cluster.as_str());
    let (imports_journal, imports_pending) = store::journal::Writer::new();
    let (policies_journal, policies_pending) = store::journal::Writer::new();
    let shared = Arc::new(Shared {
        limits: limits::Limits::new(&config.limits, &metrics.limit_refusals),
        metrics,
        trust,
        config,
        certs,
        link_key,
        state: Mutex::new(state),
        state_file,
        imports_journal,
        policies_journal,
        write_lock: Mutex::new(()),
        dirty: AtomicBool::new(false),
        export_tx: watch::channel(head).0,
        catalog_tx: watch::channel(0).0,
        views_tx: watch::channel(0).0,
        policy_tx: watch::channel(0).0,
        quotas: Mutex::new(Default::default()),
        locations: Mutex::new(BTreeMap::new()),
        quota_tx: watch::channel(0).0,
        quotas_saved: std::sync::atomic::AtomicU64::new(0),
        zone: watch::channel(None).0,
        views: views::Views::default(),
        peers: Mutex::new(BTreeMap::new()),
        golden: Mutex::new(golden_book),
        golden_tx: watch::channel(0).0,
        policy_digest: Mutex::new(None),
        policies_changed_ms: std::sync::atomic::AtomicU64::new(unix_now_ms()),
        admin_addr: admin_listener
            .local_addr()
            .map_err(GatewayError::LocalAddr)?,
        dns_addr: std::sync::OnceLock::new(),
        spans,
        taps: Default::default(),
        endpoint,
        relay_addr,
        relay_service: Mutex::new(None),
        ready: AtomicBool::new(false),
        kubernetes: Arc::new(kubernetes::Health::default()),
        // In Kubernetes mode a replica leads once it holds the Lease.
        leading: watch::channel(kube_client.is_none()).0,
        peering: watch::channel(awaiting.is_empty()).0,
        awaiting: Mutex::new(awaiting),
        lease_turn: tokio::sync::Mutex::new(()),
        replica,
        siblings: Mutex::new(Vec::new()),
        leader_vips: watch::channel(None).0,
        kube: kube_client.clone(),
        shutdown: shutdown_token,
    });
    if let Some(collector) = &shared.config.telemetry.collector {
        shared.spans.configure(collector);
    }
    policies::load_quota_counts(&shared);
    let now = Instant::now();
    for cluster in acceptor_peers {
        lock(&shared.peers).insert(cluster, PeerStatus::awaiting(now));
    }
    for link in links {
        peer::start_dialer(&shared, link.spec, None);
    }
    tokio::spawn(peer::accept_loop(shared.clone()));
    tokio::spawn(peer::dial_when_peering(shared.clone()));
    tokio::spawn(api::serve(shared.clone(), api_listener));
    tokio::spawn(relay::serve(shared.clone(), relay_listener));
    tokio::spawn(strait_io::admin::serve(
        shared.clone(),
        admin_listener,
        shared.limits.admin.clone(),
        shared.shutdown.clone(),
        "gateway",
        dashboard::router(shared.clone()),
    ));
    tokio::spawn(housekeeping(shared.clone()));
    let imports_of = shared.clone();
    tokio::spawn(store::journal::keep(
        import_files,
        imports_pending,
        move || lock(&imports_of.state).imports.clone(),
    ));
    let policies_of = shared.clone();
    tokio::spawn(store::journal::keep(
        policy_files,
        policies_pending,
        move || lock(&policies_of.state).policies.clone(),
    ));
    if let Some(client) = kube_client {
        kubernetes::start(&shared, client, restored);
    }
    let mut zone = None;
    let dns_addr = match dns {
        Some((sockets, pool)) => {
            let addr = sockets.local_addr();
            if let Some(addr) = addr {
                let _ = shared.dns_addr.set(addr);
            }
            zone = dns::start(&shared, sockets, pool);
            addr
        }
        None => None,
    }
    .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    views::start(&shared, zone);
    shared.refresh_metrics();
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(
        cluster = %shared.config.cluster,
        quic = %shared.config.quic_addr,
        api = %shared.config.api_addr,
        admin = %shared.config.admin_addr,
        relay = %shared.relay_addr,
        dns = %dns_addr,
        "gateway ready"
    );

    let signalled = tokio::select! {
        () = shutdown => true,
        () = shared.shutdown.cancelled() => false,
    };
    shared.ready.store(false, Ordering::SeqCst);
    // In a pod, Kubernetes withdraws a terminating pod's endpoints while it stops; until every
    // node has, connections (relay flows, DNS, the injector) still reach this replica, so it
    // keeps serving them, not ready, for the drain period.
    let drain = shared
        .config
        .kubernetes
        .as_ref()
        .map_or(0, |k| k.drain_seconds);
    if signalled && drain > 0 {
        tracing::info!(
            seconds = drain,
            "stopping: serving until the endpoints are withdrawn"
        );
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(drain.into())) => {}
            () = shared.shutdown.cancelled() => {}
        }
    }
    shared.shutdown.cancel();
    kubernetes::lease::step_down(&shared).await;
    shared.endpoint.close(0u32.into(), b"gateway shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), shared.endpoint.wait_idle()).await;
    lock(&shared.state).running = false;
    // Whatever counted since the last write (at most a second's worth).
    policies::keep_quota_counts(&shared).await;
    shared.persist().await?;
    tracing::info!(cluster = %shared.config.cluster, "gateway stopped");
    Ok(())
}

/// Periodic chores: withdraw peers past their grace period, write dirty state, renew the
/// gateway's own certificate, refresh gauges.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let identity = SpiffeId::gateway(&shared.config.trust_domain, &shared.config.cluster);
    let mut renew_at = Instant::now() + LEAF_LIFETIME.mul_f64(0.7);
    // Tombstones are looked at a few times per retention, at most once a minute.
    let compact_every = Duration::from_millis(shared.config.peering.tombstone_retention_ms / 4)
        .clamp(Duration::from_millis(250), Duration::from_secs(60));
    let mut compact_at = Instant::now();
    let mut quotas_at = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        peer::withdraw_expired(&shared, Instant::now());
        golden::tick(&shared);
        peer::quality::sample(&shared, Instant::now());
        policies::expire_quota_windows(&shared);
        if Instant::now() >= quotas_at {
            quotas_at = Instant::now() + Duration::from_secs(1);
            policies::keep_quota_counts(&shared).await;
        }
        if Instant::now() >= compact_at {
            compact_at = Instant::now() + compact_every;
            policies::compact_tombstones(&shared);
        }
        if lock(&shared.state).expire_registrations(Instant::now()) {
            shared.mark_dirty();
            shared.export_changed(views::Touched::All);
        }
        if shared.dirty.load(Ordering::SeqCst)
            && let Err(e) = shared.persist().await
        {
            tracing::error!(error = %e, "cannot write state");
        }
        if Instant::now() >= renew_at {
            match shared
                .trust
                .issuer()
                .issue(&identity, LEAF_LIFETIME, SystemTime::now())
            {
                Ok(credential) => match shared.certs.replace(&credential) {
                    Ok(()) => {
                        tracing::info!("gateway certificate renewed");
                        renew_at = Instant::now() + LEAF_LIFETIME.mul_f64(0.7);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot use renewed certificate"),
                },
                Err(e) => tracing::error!(error = %e, "cannot renew gateway certificate"),
            }
        }
        shared.refresh_metrics();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_on_all_addresses_is_reached_at_the_pods_address() {
        let any: SocketAddr = "0.0.0.0:4436".parse().unwrap();
        assert_eq!(
            reachable(any, Some("10.1.2.3")).to_string(),
            "10.1.2.3:4436"
        );
        assert_eq!(reachable(any, Some("not an ip")), any);
        assert_eq!(reachable(any, None), any);
        let bound: SocketAddr = "127.0.0.1:4436".parse().unwrap();
        assert_eq!(reachable(bound, Some("10.1.2.3")), bound);
    }
}

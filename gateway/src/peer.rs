//! Peering with other clusters' gateways over QUIC: the endpoint, the dialer of each applied
//! Link, the acceptor that admits join tokens, and the loop that drives a federation session
//! (`strait_federation::session`) over the connection's control stream. Every wait on a peer has
//! a deadline; every byte from a peer goes through the bounded frame decoder.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use strait_federation::catalog::Position;
use strait_federation::identity::{ClusterName, Role};
use strait_federation::link::{Admission, LinkSpec};
use strait_federation::proto::peer::{PeerFrame, RefusalCode};
use strait_federation::session::{
    self, Event, PeerSession, SessionConfig, SessionError, parse_hello, parse_welcome,
};
use strait_federation::tls::{self, CertStore, PEER_ALPN, PeerRule};
use strait_federation::wire::{self, FrameDecoder, FrameError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::{GatewayError, Shared, lock, unix_now};

/// The longest wait for a QUIC handshake, a stream, or the first frame of a peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which side of a peering this gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// This gateway dials the peer (a Link document was applied here).
    Dialer,
    /// The peer dials this gateway (it redeemed one of our join tokens).
    Acceptor,
}

impl PeerRole {
    /// As shown by `get links`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Dialer => "dialer",
            PeerRole::Acceptor => "acceptor",
        }
    }
}

/// The state of a peering, as `get links` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    Disconnected,
    Refused,
}

impl LinkState {
    /// As shown by `get links` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Refused => "refused",
        }
    }
}

/// What the gateway knows of one peer right now.
#[derive(Debug)]
pub struct PeerStatus {
    pub role: PeerRole,
    pub address: String,
    pub state: LinkState,
    pub last_error: String,
    pub since: SystemTime,
    /// When the peer was lost; its services are withdrawn a grace period later.
    pub lost_at: Option<Instant>,
    pub connection: Option<quinn::Connection>,
    pub acked: Position,
    /// Identifies the current session, so a replaced one cannot overwrite its successor.
    pub session: u64,
    /// Cancelled when the peering is removed here (unlink): the session tells the peer.
    pub unlink: CancellationToken,
    /// Cancelled when this dialer is replaced by a newer Link or the gateway stops: the session
    /// ends quietly.
    pub retire: CancellationToken,
    /// The dialer task that owns this status (0 for acceptors), so a replaced dialer cannot
    /// overwrite its successor's state.
    pub owner: u64,
}

static NEXT_OWNER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Session ids come from one counter, so an old session can never pass for a new one.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_session() -> u64 {
    NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl PeerStatus {
    /// A peer that dials us, known from our ledger, not connected yet (after a restart).
    pub fn awaiting(now: Instant) -> Self {
        Self {
            role: PeerRole::Acceptor,
            address: String::new(),
            state: LinkState::Disconnected,
            last_error: String::new(),
            since: SystemTime::now(),
            lost_at: Some(now),
            connection: None,
            acked: Position::NONE,
            session: 0,
            unlink: CancellationToken::new(),
            retire: CancellationToken::new(),
            owner: 0,
        }
    }
}

/// Why a peer connection or session failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("reading from the peer: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("no answer from the peer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("the peer closed the control stream")]
    Closed,
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}")]
    Identity(String),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl PeerError {
    fn connection_error(&self) -> Option<&quinn::ConnectionError> {
        match self {
            PeerError::Connection(e)
            | PeerError::Read(quinn::ReadError::ConnectionLost(e))
            | PeerError::Write(quinn::WriteError::ConnectionLost(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether the TLS handshake failed (a certificate refused by either side): QUIC carries
    /// TLS alerts as error codes 0x100 to 0x1ff.
    pub fn is_tls_failure(&self) -> bool {
        let code = match self.connection_error() {
            Some(quinn::ConnectionError::TransportError(e)) => e.code,
            Some(quinn::ConnectionError::ConnectionClosed(c)) => c.error_code,
            _ => return false,
        };
        (0x100..0x200).contains(&u64::from(code))
    }

    /// A short label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            PeerError::Session(SessionError::Refused { .. }) => "refused",
            PeerError::Session(SessionError::Idle(_)) | PeerError::Timeout(..) => "timeout",
            PeerError::Session(_) | PeerError::Frame(_) => "protocol",
            PeerError::Closed
            | PeerError::Connection(_)
            | PeerError::Read(_)
            | PeerError::Write(_) => "connection",
            _ => "other",
        }
    }
}

async fn deadline<T, E: Into<PeerError>>(
    limit: Duration,
    what: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(PeerError::Timeout(limit, what)),
    }
}

/// Reads whole frames from a stream, never buffering more than the frame being read.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Wraps the receiving half of a control stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::default(),
            buffer: vec![0; 64 << 10],
        }
    }

    /// The next frame. Cancel-safe: bytes read are kept in the decoder.
    pub async fn next(&mut self) -> Result<PeerFrame, PeerError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let wanted = self.decoder.wanted()?.min(self.buffer.len());
            match self.recv.read(&mut self.buffer[..wanted]).await? {
                Some(n) => self.decoder.extend(&self.buffer[..n]),
                None => return Err(PeerError::Closed),
            }
        }
    }
}

async fn send_frame(
    send: &mut quinn::SendStream,
    frame: &PeerFrame,
    limit: Duration,
) -> Result<(), PeerError> {
    deadline(
        limit,
        "writing a frame",
        send.write_all(&wire::encode(frame)),
    )
    .await
}

/// Flows a peer may have open at once on its connection.
const MAX_FLOWS: u32 = 4096;

fn transport(config: &GatewayConfig) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.peering.idle_timeout())
        .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000)));
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(config.peering.keepalive()));
    // One stream per relayed flow, plus the control stream.
    transport.max_concurrent_bidi_streams(MAX_FLOWS.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// The QUIC endpoint of a gateway: accepts peer gateways of any cluster under the trust root
/// (the join token decides who may peer) and dials with the same socket.
pub fn endpoint(
    config: &GatewayConfig,
    bundle: &strait_federation::pki::TrustBundle,
    certs: &CertStore,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, GatewayError> {
    let tls = tls::server_config(bundle, certs, PeerRule::role(Role::Gateway), &[PEER_ALPN])?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(config));
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|error| GatewayError::Bind {
        what: "quicAddr",
        addr: config.quic_addr,
        error,
    })
}

fn client_config(shared: &Shared, peer: &ClusterName) -> Result<quinn::ClientConfig, GatewayError> {
    let tls = tls::client_config(
        &shared.bundle,
        &shared.certs,
        PeerRule::role_in(Role::Gateway, peer.clone()),
        &[PEER_ALPN],
    )?;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport(&shared.config));
    Ok(client)
}

/// An established control stream with a peer, after hello and welcome.
struct Established {
    connection: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    /// Where the peer stands in our export.
    peer_position: Position,
    /// Where the peer's cluster runs.
    peer_location: strait_federation::location::Location,
}

/// What happened to the first dial of a Link just applied.
#[derive(Debug)]
pub enum DialOutcome {
    Connected,
    Refused(String),
    Unreachable(String),
}

/// What a peer is told when this cluster removes the link.
fn unlinked_reason(shared: &Shared) -> String {
    format!("cluster {} removed the link", shared.config.cluster)
}

/// A refusal code as a metric label: `token_expired`, `protocol`, ...
fn refusal_label(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::RefusalUnspecified => "unspecified",
        RefusalCode::RefusalTokenInvalid => "token_invalid",
        RefusalCode::RefusalTokenExpired => "token_expired",
        RefusalCode::RefusalTokenReplayed => "token_replayed",
        RefusalCode::RefusalWrongCluster => "wrong_cluster",
        RefusalCode::RefusalProtocol => "protocol",
        RefusalCode::RefusalUnlinked => "unlinked",
    }
}

fn permanent(code: RefusalCode) -> bool {
    matches!(
        code,
        RefusalCode::RefusalTokenInvalid
            | RefusalCode::RefusalTokenExpired
            | RefusalCode::RefusalTokenReplayed
            | RefusalCode::RefusalWrongCluster
            | RefusalCode::RefusalUnlinked
    )
}

/// Starts (or restarts) dialing the gateway of a Link on record; `first` hears how the first
/// dial went. Returns false, starting nothing, when the record is gone or holds another spec
/// (an unlink or a newer apply got there first).
pub fn start_dialer(
    shared: &Arc<Shared>,
    spec: LinkSpec,
    first: Option<oneshot::Sender<DialOutcome>>,
) -> bool {
    let retire = shared.shutdown.child_token();
    let unlink = CancellationToken::new();
    let owner = NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut peers = lock(&shared.peers);
    let has_imports = {
        let state = lock(&shared.state);
        if state.links.get(&spec.cluster).map(|r| &r.spec) != Some(&spec) {
            return false;
        }
        state.imports.contains_key(&spec.cluster)
    };
    let previous = peers.insert(
        spec.cluster.clone(),
        PeerStatus {
            role: PeerRole::Dialer,
            address: spec.gateway_address.clone(),
            state: LinkState::Connecting,
            last_error: String::new(),
            since: SystemTime::now(),
            lost_at: has_imports.then(Instant::now),
            connection: None,
            acked: Position::NONE,
            session: 0,
            unlink: unlink.clone(),
            retire: retire.clone(),
            owner,
        },
    );
    drop(peers);
    if let Some(previous) = previous {
        // Replaced by a newer Link for the same cluster: end the old dialer quietly.
        previous.retire.cancel();
        if let Some(connection) = previous.connection {
            connection.close(0u32.into(), b"link replaced");
        }
    }
    let tokens = Tokens { unlink, retire };
    tokio::spawn(dial_loop(shared.clone(), spec, tokens, owner, first));
    true
}

fn set_state(shared: &Shared, peer: &ClusterName, owner: u64, state: LinkState, error: String) {
    if let Some(status) = lock(&shared.peers).get_mut(peer)
        && status.owner == owner
    {
        if status.state != state {
            status.since = SystemTime::now();
        }
        status.state = state;
        status.last_error = error;
    }
}

/// The ways a session or a dialer is told to stop.
#[derive(Clone)]
struct Tokens {
    unlink: CancellationToken,
    retire: CancellationToken,
}

impl Tokens {
    async fn stopped(&self) {
        tokio::select! {
            () = self.unlink.cancelled() => {}
            () = self.retire.cancelled() => {}
        }
    }
}

async fn dial_loop(
    shared: Arc<Shared>,
    spec: LinkSpec,
    tokens: Tokens,
    owner: u64,
    mut first: Option<oneshot::Sender<DialOutcome>>,
) {
    let peer = spec.cluster.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        set_state(&shared, &peer, owner, LinkState::Connecting, String::new());
        let attempt = tokio::select! {
            attempt = dial_once(&shared, &spec) => attempt,
            () = tokens.stopped() => return,
        };
        let outcome = match &attempt {
            Ok(_) => "connected",
            Err(PeerError::Session(SessionError::Refused { .. })) => "refused",
            Err(e) if e.is_tls_failure() => "refused",
            Err(_) => "failed",
        };
        shared
            .metrics
            .dials
            .with_label_values(&[peer.as_str(), outcome])
            .inc();
        match attempt {
            Ok(established) => {
                backoff = Duration::from_millis(100);
                if let Some(tx) = first.take() {
                    let _ = tx.send(DialOutcome::Connected);
                }
                if run_session(&shared, &peer, established, &tokens, owner).await {
                    return;
                }
            }
            Err(PeerError::Session(SessionError::Refused { code, reason })) => {
                tracing::warn!(peer = %peer, code = ?code, reason = %reason, "link refused by peer");
                set_state(&shared, &peer, owner, LinkState::Refused, reason.clone());
                // Stop only when `apply` still waits to hear it (it then undoes the link);
                // once it stopped waiting, this dialer goes on as any other.
                if let Some(tx) = first.take()
                    && tx.send(DialOutcome::Refused(reason)).is_ok()
                {
                    return;
                }
                if code == RefusalCode::RefusalUnlinked {
                    // The peer unlinked us while we were apart: forget the link here as well,
                    // unless a newer Link for that cluster replaced this dialer meanwhile.
                    let mut peers = lock(&shared.peers);
                    if peers.get(&peer).is_some_and(|s| s.owner == owner) {
                        peers.remove(&peer);
                        drop(peers);
                        forget_peer(&shared, &peer);
                    }
                    return;
                }
                if permanent(code) {
                    return;
                }
            }
            Err(e) if e.is_tls_failure() => {
                let reason = format!(
                    "the TLS handshake with cluster {peer}'s gateway failed ({e}): check that both clusters share the trust root and that the address reaches cluster {peer}'s gateway"
                );
                tracing::warn!(peer = %peer, reason = %reason, "link refused");
                set_state(&shared, &peer, owner, LinkState::Refused, reason.clone());
                if let Some(tx) = first.take()
                    && tx.send(DialOutcome::Refused(reason)).is_ok()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::info!(peer = %peer, error = %e, "cannot reach peer gateway");
                set_state(
                    &shared,
                    &peer,
                    owner,
                    LinkState::Disconnected,
                    e.to_string(),
                );
                if let Some(tx) = first.take() {
                    let _ = tx.send(DialOutcome::Unreachable(e.to_string()));
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tokens.stopped() => return,
        }
        backoff = (backoff * 2).min(shared.config.peering.max_backoff());
    }
}

async fn dial_once(shared: &Shared, spec: &LinkSpec) -> Result<Established, PeerError> {
    let address = deadline(HANDSHAKE_TIMEOUT, "resolving the gateway address", async {
        tokio::net::lookup_host(spec.gateway_address.as_str())
            .await
            .map_err(|e| PeerError::Resolve(format!("{}: {e}", spec.gateway_address)))
    })
    .await?
    .next()
    .ok_or_else(|| PeerError::Resolve(spec.gateway_address.clone()))?;
    let connecting = shared.endpoint.connect_with(
        client_config(shared, &spec.cluster)?,
        address,
        spec.cluster.as_str(),
    )?;
    let connection = deadline(HANDSHAKE_TIMEOUT, "QUIC handshake", connecting).await?;
    let (mut send, recv) = deadline(
        HANDSHAKE_TIMEOUT,
        "opening the control stream",
        connection.open_bi(),
    )
    .await?;
    let resume = lock(&shared.state)
        .imports
        .get(&spec.cluster)
        .map_or(Position::NONE, |i| i.position);
    let hello = session::hello_from(
        &shared.config.cluster,
        &shared.config.location,
        &spec.token,
        resume,
    );
    send_frame(&mut send, &hello, HANDSHAKE_TIMEOUT).await?;
    let mut reader = FrameReader::new(recv);
    let welcome = parse_welcome(
        deadline(HANDSHAKE_TIMEOUT, "waiting for the welcome", reader.next()).await?,
    )?;
    if welcome.cluster != spec.cluster {
        return Err(PeerError::Identity(format!(
            "the gateway at {} says it is cluster {}, not {}",
            spec.gateway_address, welcome.cluster, spec.cluster
        )));
    }
    Ok(Established {
        connection,
        send,
        reader,
        peer_position: welcome.resume,
        peer_location: welcome.location,
    })
}

/// Accepts peer connections until the gateway stops.
pub async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            () = shared.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match accept_one(&shared, incoming).await {
                Ok((peer, established, tokens, session)) => {
                    let _ = run_session_as(&shared, &peer, established, &tokens, session).await;
                }
                Err(e) => {
                    tracing::info!(remote = %remote, error = %e, "peer connection refused or failed");
                }
            }
        });
    }
}

async fn refuse(
    send: &mut quinn::SendStream,
    connection: &quinn::Connection,
    code: RefusalCode,
    reason: &str,
) {
    let _ = send_frame(
        send,
        &session::refusal(code, reason),
        Duration::from_secs(2),
    )
    .await;
    let _ = send.finish();
    // Give the refusal a moment to leave before the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    connection.close(1u32.into(), reason.as_bytes());
}

async fn accept_one(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
) -> Result<(ClusterName, Established, Tokens, u64), PeerError> {
    let connection = deadline(HANDSHAKE_TIMEOUT, "QUIC handshake", async {
        incoming.await
    })
    .await?;
    let chain = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| PeerError::Identity("the peer presented no certificate".into()))?;
    let identity = tls::peer_identity(&chain).map_err(PeerError::Identity)?;
    let (mut send, recv) = deadline(
        HANDSHAKE_TIMEOUT,
        "accepting the control stream",
        connection.accept_bi(),
    )
    .await?;
    let mut reader = FrameReader::new(recv);
    let first = deadline(HANDSHAKE_TIMEOUT, "waiting for the hello", reader.next()).await;
    let hello = match first.and_then(|f| parse_hello(f).map_err(PeerError::from)) {
        Ok(hello) => hello,
        Err(e) => {
            shared
                .metrics
                .refusals
                .with_label_values(&["protocol"])
                .inc();
            refuse(
                &mut send,
                &connection,
                RefusalCode::RefusalProtocol,
                &e.to_string(),
            )
            .await;
            return Err(e);
        }
    };
    let peer = hello.cluster.clone();
    let local = &shared.config.cluster;
    let refusal = if identity.cluster() != &peer {
        Some((
            RefusalCode::RefusalWrongCluster,
            format!(
                "the certificate belongs to cluster {} but the hello says {peer}",
                identity.cluster()
            ),
        ))
    } else if lock(&shared.state).links.contains_key(&peer) {
        Some((
            RefusalCode::RefusalWrongCluster,
            format!(
                "cluster {local} already dials cluster {peer}; one link per pair: unlink one side first"
            ),
        ))
    } else {
        let admission = {
            let mut state = lock(&shared.state);
            state.redemptions.admit(
                &shared.link_key,
                local,
                &shared.config.trust_domain,
                &peer,
                &hello.join_token,
                unix_now(),
            )
        };
        match admission {
            Ok(Admission::First) => {
                tracing::info!(peer = %peer, "new peering admitted");
                shared.persist().await?;
                None
            }
            Ok(Admission::Returning) => None,
            Err(e) => Some((e.code(), e.to_string())),
        }
    };
    if let Some((code, reason)) = refusal {
        tracing::warn!(peer = %peer, reason = %reason, "link refused");
        shared
            .metrics
            .refusals
            .with_label_values(&[refusal_label(code)])
            .inc();
        refuse(&mut send, &connection, code, &reason).await;
        return Err(PeerError::Session(SessionError::Refused { code, reason }));
    }
    // Register the new session before reading where the peer stands: from here on the old
    // session (if any) can no longer apply frames, so the position cannot move under us.
    // Peers then state: an unlink that ran since the admission (it revoked the token) is seen.
    let registered = {
        let mut peers = lock(&shared.peers);
        if !lock(&shared.state).redemptions.is_active(&peer) {
            None
        } else {
            let status = peers
                .entry(peer.clone())
                .or_insert_with(|| PeerStatus::awaiting(Instant::now()));
            // Closing the old connection ends its session quietly.
            if let Some(old) = status.connection.take() {
                old.close(0u32.into(), b"replaced by a newer connection");
            }
            status.owner = 0;
            status.role = PeerRole::Acceptor;
            status.state = LinkState::Connecting;
            status.lost_at.get_or_insert_with(Instant::now);
            status.address = connection.remote_address().to_string();
            status.session = next_session();
            let tokens = Tokens {
                unlink: status.unlink.clone(),
                retire: shared.shutdown.child_token(),
            };
            Some((tokens, status.session))
        }
    };
    let Some((tokens, session)) = registered else {
        let reason = unlinked_reason(shared);
        refuse(
            &mut send,
            &connection,
            RefusalCode::RefusalUnlinked,
            &reason,
        )
        .await;
        return Err(PeerError::Session(SessionError::Refused {
            code: RefusalCode::RefusalUnlinked,
            reason,
        }));
    };
    let resume = lock(&shared.state)
        .imports
        .get(&peer)
        .map_or(Position::NONE, |i| i.position);
    if let Err(e) = send_frame(
        &mut send,
        &session::welcome_from(local, &shared.config.location, resume),
        HANDSHAKE_TIMEOUT,
    )
    .await
    {
        // The new session never started: the peer counts as lost from now, so its services
        // are withdrawn after the grace period unless it comes back.
        if let Some(status) = lock(&shared.peers).get_mut(&peer)
            && status.session == session
        {
            status.state = LinkState::Disconnected;
            status.last_error = e.to_string();
            status.lost_at = Some(Instant::now());
        }
        return Err(e);
    }
    Ok((
        peer,
        Established {
            connection,
            send,
            reader,
            peer_position: hello.resume,
            peer_location: hello.location,
        },
        tokens,
        session,
    ))
}

/// Runs a dialer's session; returns true when the peering is over for good.
async fn run_session(
    shared: &Arc<Shared>,
    peer: &ClusterName,
    established: Established,
    tokens: &Tokens,
    owner: u64,
) -> bool {
    let session = {
        let mut peers = lock(&shared.peers);
        match peers.get_mut(peer) {
            Some(status) if status.owner == owner => {
                status.session = next_session();
                Some(status.session)
            }
            _ => None,
        }
    };
    let Some(session) = session else {
        // Replaced by a newer dialer, or unlinked while the dial finished: an unlinked peer
        // hears it on the connection just made.
        if tokens.unlink.is_cancelled() {
            let Established {
                mut send,
                connection,
                ..
            } = established;
            let reason = unlinked_reason(shared);
            refuse(
                &mut send,
                &connection,
                RefusalCode::RefusalUnlinked,
                &reason,
            )
            .await;
        }
        return true;
    };
    run_session_as(shared, peer, established, tokens, session).await
}

async fn run_session_as(
    shared: &Arc<Shared>,
    peer: &ClusterName,
    established: Established,
    tokens: &Tokens,
    session_id: u64,
) -> bool {
    let connection = established.connection.clone();
    {
        let mut peers = lock(&shared.peers);
        if let Some(status) = peers.get_mut(peer)
            && status.session == session_id
        {
            status.state = LinkState::Connected;
            status.last_error.clear();
            status.since = SystemTime::now();
            status.lost_at = None;
            status.connection = Some(connection.clone());
            // Until the peer acknowledges more, it holds what it said it had.
            status.acked = established.peer_position;
        }
    }
    tracing::info!(peer = %peer, remote = %connection.remote_address(), location = %established.peer_location, "peer connected");
    let moved = lock(&shared.locations).insert(peer.clone(), established.peer_location.clone())
        != Some(established.peer_location.clone());
    if moved {
        shared.views_changed();
    }
    crate::relay::accept_flows(shared.clone(), peer.clone(), connection.clone());
    let result = drive(shared, peer, established, tokens, session_id).await;
    let reason = match &result {
        Ok(()) => "closed",
        Err(e) => e.reason(),
    };
    shared
        .metrics
        .sessions_ended
        .with_label_values(&[peer.as_str(), reason])
        .inc();
    session_ended(shared, peer, session_id, result)
}

/// What to do when a session ends; returns true when the peering is over for good.
fn session_ended(
    shared: &Shared,
    peer: &ClusterName,
    session_id: u64,
    result: Result<(), PeerError>,
) -> bool {
    let mut peers = lock(&shared.peers);
    let Some(status) = peers.get_mut(peer) else {
        return true; // unlinked here
    };
    if status.session != session_id {
        return false; // replaced by a newer session
    }
    status.connection = None;
    status.lost_at = Some(Instant::now());
    status.since = SystemTime::now();
    match result {
        Ok(()) => {
            status.state = LinkState::Disconnected;
            false
        }
        Err(PeerError::Session(SessionError::Refused {
            code: RefusalCode::RefusalUnlinked,
            reason,
        })) => {
            tracing::warn!(peer = %peer, reason = %reason, "peer removed the link");
            peers.remove(peer);
            drop(peers);
            forget_peer(shared, peer);
            true
        }
        Err(e) => {
            tracing::info!(peer = %peer, error = %e, "peer session ended");
            status.state = LinkState::Disconnected;
            status.last_error = e.to_string();
            false
        }
    }
}

/// Drops a peering's records from a locked state: its link or admitted tokens, and its
/// imported services.
fn forget_locked(shared: &Shared, state: &mut crate::store::State, peer: &ClusterName) -> bool {
    let dialer = state.links.remove(peer).is_some();
    let acceptor = state.redemptions.revoke(peer);
    if let Some(imported) = state.imports.remove(peer) {
        shared
            .metrics
            .withdrawn
            .with_label_values(&[peer.as_str()])
            .inc_by(imported.services.len() as u64);
    }
    dialer || acceptor
}

/// Drops every trace of a peering: its link or admitted tokens, and its imported services.
fn forget_peer(shared: &Shared, peer: &ClusterName) -> bool {
    let existed = forget_locked(shared, &mut lock(&shared.state), peer);
    shared.metrics.forget_peer(peer.as_str());
    shared.mark_dirty();
    shared.catalog_changed();
    existed
}

/// Removes the peering with a cluster: tells the peer when it is connected, forgets its
/// services now (not after a grace period), and revokes its token.
pub async fn unlink(shared: &Arc<Shared>, peer: &ClusterName) -> Result<bool, GatewayError> {
    remove(shared, peer, true).await
}

/// Drops a Link its peer refused: like an unlink, but there is nobody to tell (the peer never
/// admitted it).
pub async fn discard(shared: &Arc<Shared>, peer: &ClusterName) -> Result<bool, GatewayError> {
    remove(shared, peer, false).await
}

async fn remove(
    shared: &Arc<Shared>,
    peer: &ClusterName,
    tell_idle: bool,
) -> Result<bool, GatewayError> {
    // One step under peers then state: no dial, accept or apply can slip in between the removal
    // of the status and of the records. The session (if any) sees its token cancelled and tells
    // the peer.
    let (existed, notify) = {
        let mut peers = lock(&shared.peers);
        let status = peers.remove(peer);
        if let Some(status) = &status {
            status.unlink.cancel();
        }
        let mut state = lock(&shared.state);
        let link = state.links.get(peer).map(|record| record.spec.clone());
        let existed = forget_locked(shared, &mut state, peer) || status.is_some();
        // A dialer without a live session (dialing, or between dials) has nobody to tell.
        let idle_dialer = status
            .as_ref()
            .is_some_and(|s| s.role == PeerRole::Dialer && s.connection.is_none());
        (existed, link.filter(|_| tell_idle && idle_dialer))
    };
    shared.metrics.forget_peer(peer.as_str());
    shared.catalog_changed();
    if let Some(spec) = notify {
        tokio::spawn(notify_unlink(shared.clone(), spec));
    }
    shared.persist().await?;
    Ok(existed)
}

/// Tells the gateway of a link we removed while no session was up: one dial, then the
/// refusal. Best effort: a peer that cannot be reached keeps the peering as disconnected.
async fn notify_unlink(shared: Arc<Shared>, spec: LinkSpec) {
    let dialed = tokio::time::timeout(2 * HANDSHAKE_TIMEOUT, dial_once(&shared, &spec)).await;
    if let Ok(Ok(mut established)) = dialed {
        let reason = unlinked_reason(&shared);
        refuse(
            &mut established.send,
            &established.connection,
            RefusalCode::RefusalUnlinked,
            &reason,
        )
        .await;
    }
}

/// Writes frames to the control stream in order, with a deadline per frame, so that the
/// session keeps reading while a write waits for the peer's flow-control window (two gateways
/// sending each other large snapshots would otherwise both block writing). When the channel
/// closes it finishes the stream.
async fn write_frames(
    mut send: quinn::SendStream,
    mut frames: mpsc::Receiver<Vec<u8>>,
    limit: Duration,
) -> Result<(), PeerError> {
    while let Some(bytes) = frames.recv().await {
        deadline(limit, "writing a frame", send.write_all(&bytes)).await?;
    }
    let _ = send.finish();
    // Give the last frames (a refusal) a moment to reach the peer.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    Ok(())
}

/// Ends a session with a refusal frame: queued frames and the refusal go out first (for a
/// bounded time), then the connection closes.
async fn close_with(
    frames: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<Result<(), PeerError>>,
    connection: &quinn::Connection,
    code: RefusalCode,
    reason: &str,
) {
    let refusal = wire::encode(&session::refusal(code, reason));
    let _ = tokio::time::timeout(Duration::from_secs(2), frames.send(refusal)).await;
    drop(frames);
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    connection.close(1u32.into(), reason.as_bytes());
}

async fn drive(
    shared: &Arc<Shared>,
    peer: &ClusterName,
    established: Established,
    tokens: &Tokens,
    session_id: u64,
) -> Result<(), PeerError> {
    let Established {
        connection,
        send,
        mut reader,
        peer_position,
        ..
    } = established;
    let peering = &shared.config.peering;
    let config = SessionConfig {
        keepalive: peering.keepalive(),
        idle_timeout: peering.idle_timeout(),
        ..SessionConfig::default()
    };
    let mut session = {
        let state = lock(&shared.state);
        let mut session = PeerSession::new(config, peer_position, &state.export, Instant::now());
        session.start_policies(&state.policies.set);
        session
    };
    let mut export = shared.export_tx.subscribe();
    let mut policies = shared.policy_tx.subscribe();
    policies.mark_unchanged();
    let mut quotas = shared.quota_tx.subscribe();
    // Everything counted so far in the windows in force, then what grows.
    let (counts, mut quota_sent) = crate::policies::quota_counts_for(shared, peer, 0);
    session.queue_quota(counts);
    let (frames, queued) = mpsc::channel::<Vec<u8>>(32);
    let mut writer = tokio::spawn(write_frames(send, queued, peering.idle_timeout()));
    let mut updates_counted = 0;
    loop {
        let sent = session.updates_sent();
        shared
            .metrics
            .updates_sent
            .with_label_values(&[peer.as_str()])
            .inc_by(sent - updates_counted);
        updates_counted = sent;
        let wake = tokio::time::Instant::from_std(session.poll_timeout());
        let pending = session.has_pending();
        let step = tokio::select! {
            biased;
            () = tokens.unlink.cancelled() => Step::Unlinked,
            () = tokens.retire.cancelled() => Step::Retired,
            written = &mut writer => Step::WriterEnded(written),
            frame = reader.next() => Step::Frame(frame),
            permit = frames.reserve(), if pending => match permit {
                Ok(permit) => {
                    if let Some(frame) = session.poll_transmit(Instant::now()) {
                        permit.send(wire::encode(&frame));
                    }
                    Step::Continue
                }
                Err(_) => Step::WriterEnded(Ok(Err(PeerError::Closed))),
            },
            changed = export.changed() => Step::ExportChanged(changed.is_ok()),
            changed = policies.changed() => Step::PoliciesChanged(changed.is_ok()),
            changed = quotas.changed() => Step::QuotasChanged(changed.is_ok()),
            () = tokio::time::sleep_until(wake) => Step::Timer,
        };
        match step {
            Step::Continue => {}
            Step::Unlinked => {
                let reason = unlinked_reason(shared);
                close_with(
                    frames,
                    writer,
                    &connection,
                    RefusalCode::RefusalUnlinked,
                    &reason,
                )
                .await;
                return Ok(());
            }
            Step::Retired => {
                connection.close(0u32.into(), b"link replaced or gateway shutting down");
                return Ok(());
            }
            Step::WriterEnded(written) => {
                return match written {
                    Ok(Ok(())) => Err(PeerError::Closed),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(PeerError::Gateway(GatewayError::Internal(e.to_string()))),
                };
            }
            Step::ExportChanged(false) => return Ok(()),
            Step::ExportChanged(true) => session.sync(&lock(&shared.state).export),
            Step::PoliciesChanged(false) | Step::QuotasChanged(false) => return Ok(()),
            Step::QuotasChanged(true) => {
                let (counts, sequence) =
                    crate::policies::quota_counts_for(shared, peer, quota_sent);
                quota_sent = sequence;
                session.queue_quota(counts);
            }
            Step::PoliciesChanged(true) => {
                session.sync_policies(&lock(&shared.state).policies.set);
            }
            Step::Timer => session.handle_timeout(Instant::now())?,
            Step::Frame(frame) => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e @ PeerError::Frame(_)) => {
                        tracing::warn!(peer = %peer, error = %e, "dropping peer for a bad frame");
                        close_with(
                            frames,
                            writer,
                            &connection,
                            RefusalCode::RefusalProtocol,
                            &e.to_string(),
                        )
                        .await;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                // Peers before state, as everywhere. A session applies frames only while it is
                // the peer's current session: once replaced or unlinked it changes nothing.
                let event = {
                    let peers = lock(&shared.peers);
                    if peers.get(peer).is_none_or(|s| s.session != session_id) {
                        None
                    } else {
                        let mut state = lock(&shared.state);
                        let imported = state.imports.entry(peer.clone()).or_default();
                        Some(
                            session
                                .handle_frame(frame, Instant::now(), imported)
                                .and_then(|event| match event {
                                    Some(Event::Policy(frame)) => session
                                        .handle_policy(
                                            frame,
                                            &mut state.policies,
                                            peer,
                                            crate::unix_now_ms(),
                                        )
                                        .map(|received| Some(Received::Policies(received))),
                                    other => Ok(other.map(Received::Catalog)),
                                }),
                        )
                    }
                };
                let Some(event) = event else {
                    if tokens.unlink.is_cancelled() {
                        // Unlinked meanwhile: the next turn (biased to the unlink token) tells
                        // the peer and closes.
                        continue;
                    }
                    return Ok(());
                };
                match event {
                    Ok(Some(Received::Policies(received))) => {
                        if policies_received(shared, peer, received) {
                            // On disk before anyone acts on it: a gateway that restarts
                            // while partitioned must not hand its sidecars an older set.
                            if let Err(e) = shared.persist().await {
                                tracing::error!(error = %e, "cannot write policies received");
                            }
                            shared.policies_changed();
                        }
                    }
                    Ok(Some(Received::Catalog(Event::Policy(_)))) => {}
                    Ok(Some(Received::Catalog(Event::Quota(usage)))) => {
                        if crate::policies::merge_quota_usage(shared, usage) {
                            shared.quota_tx.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(Some(Received::Catalog(Event::Imported {
                        changed, snapshot, ..
                    }))) => {
                        let kind = if snapshot { "snapshot" } else { "delta" };
                        shared
                            .metrics
                            .updates_received
                            .with_label_values(&[peer.as_str(), kind])
                            .inc();
                        // The new position is worth saving even when no service changed.
                        shared.mark_dirty();
                        if changed > 0 {
                            shared
                                .metrics
                                .services_changed
                                .with_label_values(&[peer.as_str()])
                                .inc_by(changed as u64);
                            shared.catalog_changed();
                        }
                    }
                    Ok(Some(Received::Catalog(Event::Acked(position)))) => {
                        if let Some(status) = lock(&shared.peers).get_mut(peer)
                            && status.session == session_id
                        {
                            status.acked = position;
                        }
                    }
                    Ok(None) => {}
                    Err(e @ SessionError::Refused { .. }) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "dropping peer for a protocol violation");
                        close_with(
                            frames,
                            writer,
                            &connection,
                            RefusalCode::RefusalProtocol,
                            &e.to_string(),
                        )
                        .await;
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// What a frame from the peer brought.
enum Received {
    Catalog(Event),
    Policies(strait_federation::policy::exchange::Received),
}

/// Takes note of policy entries a peer sent: counted, refusals logged with the peer's name;
/// whether any changed the set.
fn policies_received(
    shared: &Shared,
    peer: &ClusterName,
    received: strait_federation::policy::exchange::Received,
) -> bool {
    let count = |result: &str, n: usize| {
        if n > 0 {
            shared
                .metrics
                .policy_entries
                .with_label_values(&[peer.as_str(), result])
                .inc_by(n as u64);
        }
    };
    count("applied", received.changed.len());
    count("known", received.known);
    count("refused", received.refused.len());
    for error in &received.refused {
        tracing::warn!(peer = %peer, error = %error, "refused a policy from a peer");
    }
    for key in &received.changed {
        tracing::info!(peer = %peer, policy = %key, "policy changed by a peer");
    }
    !received.changed.is_empty()
}

/// What woke a session up.
enum Step {
    Continue,
    Unlinked,
    Retired,
    WriterEnded(Result<Result<(), PeerError>, tokio::task::JoinError>),
    Frame(Result<PeerFrame, PeerError>),
    ExportChanged(bool),
    PoliciesChanged(bool),
    QuotasChanged(bool),
    Timer,
}

/// Withdraws the services of peers lost for longer than the grace period. The decision and the
/// withdrawal happen under both locks (peers, then state), so a peer that reconnects meanwhile
/// keeps what its new session brings.
pub fn withdraw_expired(shared: &Shared, now: Instant) {
    let grace = shared.config.peering.grace_period();
    let mut withdrew = false;
    {
        let mut peers = lock(&shared.peers);
        let mut state = lock(&shared.state);
        for (peer, status) in peers.iter_mut() {
            let expired = status.connection.is_none()
                && status
                    .lost_at
                    .is_some_and(|t| now.duration_since(t) >= grace);
            if !expired {
                continue;
            }
            status.lost_at = None;
            if let Some(imported) = state.imports.get_mut(peer)
                && (!imported.services.is_empty() || imported.position != Position::NONE)
            {
                tracing::warn!(
                    peer = %peer,
                    services = imported.services.len(),
                    "peer lost past its grace period: services withdrawn"
                );
                shared
                    .metrics
                    .withdrawn
                    .with_label_values(&[peer.as_str()])
                    .inc_by(imported.services.len() as u64);
                imported.withdraw();
                withdrew = true;
            }
        }
    }
    if withdrew {
        shared.mark_dirty();
        shared.catalog_changed();
    }
}

//! Dialing the gateway of each applied Link: the handshake as the dialer, the retry loop with
//! back-off, and what a refusal means for the Link.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use strait_federation::catalog::Position;
use strait_federation::handshake::{self, DialerHandshake, Refusal};
use strait_federation::identity::ClusterName;
use strait_federation::link::LinkSpec;
use strait_federation::proto::peer::RefusalCode;
use strait_federation::session::SessionError;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::drive::{Established, Tokens, next_session, run_session_as};
use super::endpoint::{FrameReader, HANDSHAKE_TIMEOUT, client_config, refuse, send_frame};
use super::error::{PeerError, deadline};
use super::records::forget_peer;
use crate::peering::{LinkState, PeerRole, PeerStatus};
use crate::{Shared, lock};

static NEXT_OWNER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What happened to the first dial of a Link just applied.
#[derive(Debug)]
pub enum DialOutcome {
    Connected,
    Refused(String),
    Unreachable(String),
}

/// What is wrong with a Link before it is dialled (itself, another trust domain or root, a
/// peer that dials this cluster already); `None` when it may be dialled.
pub fn link_problem(shared: &Shared, spec: &LinkSpec) -> Option<String> {
    let local = &shared.config.cluster;
    if &spec.cluster == local {
        return Some(format!("cluster {local} cannot link to itself"));
    }
    if spec.trust_domain != shared.config.trust_domain {
        return Some(format!(
            "the link is for trust domain {}, this cluster is in {}",
            spec.trust_domain, shared.config.trust_domain
        ));
    }
    let bundle = shared.trust.bundle();
    if !bundle.contains_fingerprint(&spec.root_fingerprint)
        && !lock(&shared.state)
            .retired_roots
            .contains(&spec.root_fingerprint)
    {
        return Some(format!(
            "its trust root {} is not in this cluster's trust bundle ({}): the clusters do not share a root",
            spec.root_fingerprint,
            bundle.fingerprints().join(", ")
        ));
    }
    if lock(&shared.state).redemptions.is_active(&spec.cluster) {
        return Some(format!(
            "cluster {} already links to this cluster (it dials {local}); unlink it first",
            spec.cluster
        ));
    }
    None
}

/// Starts (or restarts) dialing the gateway of a Link on record; `first` hears how the first
/// dial went. Returns false, starting nothing, when the record is gone or holds another spec
/// (an unlink or a newer apply got there first).
pub fn start_dialer(
    shared: &Arc<Shared>,
    spec: LinkSpec,
    first: Option<oneshot::Sender<DialOutcome>>,
) -> bool {
    if !shared.peers_with_clusters() {
        // The Link is on record; it is dialed once the cluster's catalog is known
        // ([`dial_when_peering`]).
        return true;
    }
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
            replica: String::new(),
            siblings: Default::default(),
            health: None,
            quality: None,
        },
    );
    drop(peers);
    if let Some(mut previous) = previous {
        // Replaced by a newer Link for the same cluster: end the old dialer quietly.
        previous.retire.cancel();
        previous.close_all(b"link replaced");
    }
    let tokens = Tokens { unlink, retire };
    tokio::spawn(dial_loop(shared.clone(), spec, tokens, owner, first));
    true
}

/// Dials every Link on record once peering starts (a gateway that waited for its catalog).
pub async fn dial_when_peering(shared: Arc<Shared>) {
    let mut peering = shared.peering.subscribe();
    tokio::select! {
        waited = peering.wait_for(|peers| *peers) => if waited.is_err() { return },
        () = shared.shutdown.cancelled() => return,
    }
    let links: Vec<_> = lock(&shared.state).links.values().cloned().collect();
    for link in links {
        let dialing = lock(&shared.peers)
            .get(&link.spec.cluster)
            .is_some_and(|s| s.role == PeerRole::Dialer);
        if !dialing {
            start_dialer(&shared, link.spec, None);
        }
    }
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

/// How long a dial after the first may wait for the QUIC handshake. A peer that answered
/// once answers within a few round trips; while it cannot be reached (a partition), short
/// attempts with a short backoff keep the gap between two Initial packets under ~3 s, so the
/// link is back within seconds of the network healing, not after a 10 s attempt runs out.
const REDIAL_HANDSHAKE: Duration = Duration::from_secs(4);

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
        // The first dial (the one `apply` waits on) gets the whole handshake timeout.
        let handshake_limit = if first.is_some() {
            HANDSHAKE_TIMEOUT
        } else {
            REDIAL_HANDSHAKE
        };
        let attempt = tokio::select! {
            attempt = dial_once(&shared, &spec, handshake_limit) => attempt,
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
                if handshake::is_permanent(code) {
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

pub(super) async fn dial_once(
    shared: &Shared,
    spec: &LinkSpec,
    handshake_limit: Duration,
) -> Result<Established, PeerError> {
    let address = deadline(HANDSHAKE_TIMEOUT, "resolving the gateway address", async {
        tokio::net::lookup_host(spec.gateway_address.as_str())
            .await
            .map_err(|source| PeerError::Resolve {
                address: spec.gateway_address.clone(),
                source,
            })
    })
    .await?
    .next()
    .ok_or_else(|| PeerError::NoAddress(spec.gateway_address.clone()))?;
    let connecting = shared.endpoint.connect_with(
        client_config(shared, &spec.cluster)?,
        address,
        spec.cluster.as_str(),
    )?;
    let connection = deadline(handshake_limit, "QUIC handshake", connecting).await?;
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
    let handshake = DialerHandshake::new(
        shared.config.cluster.clone(),
        shared.config.location.clone(),
        spec.cluster.clone(),
        spec.gateway_address.clone(),
    )
    .from_replica(&shared.replica);
    send_frame(
        &mut send,
        &handshake.hello(&spec.token, resume),
        HANDSHAKE_TIMEOUT,
    )
    .await?;
    let mut reader = FrameReader::new(recv);
    let first = deadline(HANDSHAKE_TIMEOUT, "waiting for the welcome", reader.next()).await?;
    let welcome = handshake.handle_welcome(first)?;
    Ok(Established {
        connection,
        send,
        reader,
        peer_position: welcome.resume,
        peer_location: welcome.location,
        peer_replica: welcome.replica,
    })
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
                status.health = None;
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
            let reason = Refusal::unlinked(&shared.config.cluster).reason;
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

/// Tells the gateway of a link we removed while no session was up: one dial, then the
/// refusal. Best effort: a peer that cannot be reached keeps the peering as disconnected.
pub(super) async fn notify_unlink(shared: Arc<Shared>, spec: LinkSpec) {
    let dialed = tokio::time::timeout(
        2 * HANDSHAKE_TIMEOUT,
        dial_once(&shared, &spec, HANDSHAKE_TIMEOUT),
    )
    .await;
    if let Ok(Ok(mut established)) = dialed {
        let reason = Refusal::unlinked(&shared.config.cluster).reason;
        refuse(
            &mut established.send,
            &established.connection,
            RefusalCode::RefusalUnlinked,
            &reason,
        )
        .await;
    }
}

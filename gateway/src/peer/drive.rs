//! A federation session over an established control stream: registering it as the peer's
//! current session, feeding frames, timers and local changes to the sans-IO
//! [`PeerSession`], writing what it queues, and recording how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message as _;
use strait_federation::catalog::Position;
use strait_federation::handshake::Refusal;
use strait_federation::identity::ClusterName;
use strait_federation::proto::peer::{PeerFrame, RefusalCode};
use strait_federation::session::{self, Event, PeerSession, SessionConfig, SessionError};
use strait_federation::wire;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::endpoint::FrameReader;
use super::error::{PeerError, deadline};
use super::records::forget_peer;
use crate::peering::{LinkState, PeerStatus};
use crate::{GatewayError, Shared, lock};

/// Session ids come from one counter, so an old session can never pass for a new one.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(super) fn next_session() -> u64 {
    NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An established control stream with a peer, after hello and welcome.
pub(super) struct Established {
    pub(super) connection: quinn::Connection,
    pub(super) send: quinn::SendStream,
    pub(super) reader: FrameReader,
    /// Where the peer stands in our export.
    pub(super) peer_position: Position,
    /// Where the peer's cluster runs.
    pub(super) peer_location: strait_federation::location::Location,
    /// Which replica of the peer's gateway this is (empty: the only one).
    pub(super) peer_replica: String,
}

/// The ways a session or a dialer is told to stop.
#[derive(Clone)]
pub(super) struct Tokens {
    pub(super) unlink: CancellationToken,
    pub(super) retire: CancellationToken,
}

impl Tokens {
    pub(super) async fn stopped(&self) {
        tokio::select! {
            () = self.unlink.cancelled() => {}
            () = self.retire.cancelled() => {}
        }
    }
}

pub(super) async fn run_session_as(
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
            status.replica.clone_from(&established.peer_replica);
            // Until the peer acknowledges more, it holds what it said it had.
            status.acked = established.peer_position;
        }
    }
    tracing::info!(peer = %peer, replica = %established.peer_replica, remote = %connection.remote_address(), location = %established.peer_location, "peer connected");
    let moved = lock(&shared.locations).insert(peer.clone(), established.peer_location.clone())
        != Some(established.peer_location.clone());
    if moved {
        // Its services' backends say where it runs, and the settings list every cluster's.
        shared.catalog_changed(crate::views::Touched::All);
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
        // A sibling ends (or a replaced session): the current session goes on.
        if let Some(replica) = status
            .siblings
            .iter()
            .find(|(_, s)| s.session == session_id)
            .map(|(r, _)| r.clone())
        {
            status.siblings.remove(&replica);
            tracing::info!(peer = %peer, replica = %replica, "peer replica's session ended");
        }
        if !matches!(
            &result,
            Err(PeerError::Session(SessionError::Refused {
                code: RefusalCode::RefusalUnlinked,
                ..
            }))
        ) {
            return false;
        }
    }
    status.connection = None;
    status.lost_at = Some(Instant::now());
    status.since = SystemTime::now();
    match result {
        Ok(()) => {
            status.state = LinkState::Disconnected;
            promote_sibling(shared, peer, status);
            false
        }
        Err(PeerError::Session(SessionError::Refused {
            code: RefusalCode::RefusalUnlinked,
            reason,
        })) => {
            tracing::warn!(peer = %peer, reason = %reason, "peer removed the link");
            if let Some(mut status) = peers.remove(peer) {
                status.close_all(b"the peer removed the link");
            }
            drop(peers);
            forget_peer(shared, peer);
            true
        }
        Err(e) => {
            tracing::info!(peer = %peer, error = %e, "peer session ended");
            status.state = LinkState::Disconnected;
            status.last_error = e.to_string();
            promote_sibling(shared, peer, status);
            false
        }
    }
}

/// The current session ended: a sibling session (another replica of the peer's gateway) takes
/// its place. One that holds a catalog already brings it, so nothing is withdrawn and no
/// snapshot is awaited; one still waiting for its first snapshot leaves the import as it is
/// until that snapshot replaces it.
pub(super) fn promote_sibling(shared: &Shared, peer: &ClusterName, status: &mut PeerStatus) {
    let replica = status.successor().map(str::to_owned);
    let Some((replica, sibling)) = replica.and_then(|r| status.siblings.remove_entry(&r)) else {
        return;
    };
    tracing::info!(peer = %peer, replica = %replica, "another replica of the peer's gateway carries the peering");
    status.address = sibling.connection.remote_address().to_string();
    status.connection = Some(sibling.connection);
    status.session = sibling.session;
    status.health = None;
    status.acked = sibling.acked;
    status.replica = replica;
    status.state = LinkState::Connected;
    status.last_error.clear();
    status.lost_at = None;
    if sibling.imported.position != Position::NONE {
        // Peers then state, as everywhere.
        let mut state = lock(&shared.state);
        state.imports.insert(peer.clone(), sibling.imported);
        shared.journal_imports(&state, peer, &[], true);
        drop(state);
        shared.catalog_changed(crate::views::Touched::All);
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
    let mut golden = shared.golden_tx.subscribe();
    // The last minute of every cluster's golden metrics, then each new interval.
    let (batches, mut golden_sent) = crate::golden::outgoing(shared, peer, 0);
    queue_golden(shared, peer, &mut session, batches);
    session.queue_health(crate::health::frame(shared));
    let mut health_due = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::health::HEALTH_EVERY,
        crate::health::HEALTH_EVERY,
    );
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
            changed = golden.changed() => Step::GoldenChanged(changed.is_ok()),
            _ = health_due.tick() => Step::HealthDue,
            () = tokio::time::sleep_until(wake) => Step::Timer,
        };
        match step {
            Step::Continue => {}
            Step::Unlinked => {
                let reason = Refusal::unlinked(&shared.config.cluster).reason;
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
                    Err(e) => Err(PeerError::Gateway(GatewayError::Task(e))),
                };
            }
            Step::ExportChanged(false) => return Ok(()),
            Step::ExportChanged(true) => session.sync(&lock(&shared.state).export),
            Step::PoliciesChanged(false)
            | Step::QuotasChanged(false)
            | Step::GoldenChanged(false) => return Ok(()),
            Step::GoldenChanged(true) => {
                let (batches, next) = crate::golden::outgoing(shared, peer, golden_sent);
                golden_sent = next;
                queue_golden(shared, peer, &mut session, batches);
            }
            Step::HealthDue => session.queue_health(crate::health::frame(shared)),
            Step::QuotasChanged(true) => {
                let (counts, sequence) =
                    crate::policies::quota_counts_for(shared, peer, quota_sent);
                quota_sent = sequence;
                session.queue_quota(counts);
            }
            Step::PoliciesChanged(true) => {
                session.sync_policies(&lock(&shared.state).policies.set);
                session.queue_health(crate::health::frame(shared));
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
                // A sibling's catalog is kept aside in its entry; the current session's is the
                // cluster's import.
                let mut current = true;
                let mut policies_written = None;
                let event = {
                    let mut peers = lock(&shared.peers);
                    let status = peers.get_mut(peer);
                    let mut state = lock(&shared.state);
                    let state = &mut *state;
                    let imported = match status {
                        Some(status) if status.session == session_id => {
                            Some(state.imports.entry(peer.clone()).or_default())
                        }
                        Some(status) => {
                            current = false;
                            status
                                .siblings
                                .values_mut()
                                .find(|s| s.session == session_id)
                                .map(|s| &mut s.imported)
                        }
                        None => None,
                    };
                    let event = imported.map(|imported| {
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
                            })
                    });
                    if current
                        && let Some(Ok(Some(Received::Catalog(Event::Imported {
                            changed,
                            snapshot,
                            ..
                        })))) = &event
                    {
                        shared.journal_imports(state, peer, changed, *snapshot);
                    }
                    if let Some(Ok(Some(Received::Policies(received)))) = &event
                        && !received.changed.is_empty()
                    {
                        policies_written = Some(shared.journal_policies(state, &received.changed));
                    }
                    event
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
                            if let Some(written) = policies_written
                                && let Err(e) = written.wait().await
                            {
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
                    Ok(Some(Received::Catalog(Event::Golden(batch)))) => {
                        shared
                            .metrics
                            .golden_bytes
                            .with_label_values(&[peer.as_str(), "rx"])
                            .inc_by(batch.encoded_len() as u64);
                        crate::golden::merge(shared, peer, batch);
                    }
                    Ok(Some(Received::Catalog(Event::Health(health)))) => {
                        crate::health::received(shared, peer, session_id, health, connection.rtt());
                    }
                    Ok(Some(Received::Catalog(Event::Imported { .. }))) if !current => {}
                    Ok(Some(Received::Catalog(Event::Imported {
                        changed, snapshot, ..
                    }))) => {
                        let kind = if snapshot { "snapshot" } else { "delta" };
                        shared
                            .metrics
                            .updates_received
                            .with_label_values(&[peer.as_str(), kind])
                            .inc();
                        if !changed.is_empty() {
                            shared
                                .metrics
                                .services_changed
                                .with_label_values(&[peer.as_str()])
                                .inc_by(changed.len() as u64);
                            shared.catalog_changed(crate::views::Touched::services(changed));
                        }
                    }
                    Ok(Some(Received::Catalog(Event::Acked(position)))) => {
                        if let Some(status) = lock(&shared.peers).get_mut(peer) {
                            if status.session == session_id {
                                status.acked = position;
                            } else if let Some(sibling) = status
                                .siblings
                                .values_mut()
                                .find(|s| s.session == session_id)
                            {
                                sibling.acked = position;
                            }
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
    GoldenChanged(bool),
    HealthDue,
    Timer,
}

/// Queues golden-metric batches for the peer, counting their bytes.
fn queue_golden(
    shared: &Shared,
    peer: &ClusterName,
    session: &mut PeerSession,
    batches: Vec<strait_federation::proto::golden::Batch>,
) {
    let bytes: usize = batches.iter().map(|b| b.encoded_len()).sum();
    if bytes > 0 {
        shared
            .metrics
            .golden_bytes
            .with_label_values(&[peer.as_str(), "tx"])
            .inc_by(bytes as u64);
    }
    session.queue_golden(batches);
}

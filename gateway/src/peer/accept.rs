//! Accepting peer gateways that dial this one: the handshake as the acceptor (certificate,
//! hello, join token against the ledger), registering the session, and the welcome.

use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;
use strait_federation::catalog::{ImportedCatalog, Position};
use strait_federation::certificate;
use strait_federation::handshake::{AcceptorHandshake, HelloRefused, Refusal, refusal_label};
use strait_federation::identity::ClusterName;
use strait_federation::link::Admission;
use strait_federation::proto::peer::RefusalCode;
use strait_io::clock;

use super::drive::{Established, Tokens, next_session, run_session_as};
use super::endpoint::{FrameReader, HANDSHAKE_TIMEOUT, refuse, send_frame};
use super::error::{PeerError, deadline};
use crate::peering::{LinkState, PeerRole, PeerStatus, Sibling};
use crate::{Shared, lock};

/// The most replicas of one peer's gateway that may hold sessions with this gateway at once:
/// each holds a catalog, so a peer cannot make this gateway hold them without end.
const MAX_REPLICAS: usize = 8;

/// Accepts peer connections until the gateway stops.
pub async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            () = shared.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        if !shared.peers_with_clusters() {
            // Not before the cluster's catalog is known (Kubernetes mode, an empty disk): the
            // peer dials again.
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        // A forged source address could hold a handshake slot with one packet: once half the
        // slots are taken, a peer proves its address first (a QUIC Retry costs it one round
        // trip, and a spoofer never sees the token).
        let handshakes = &shared.limits.peer_handshakes;
        if !incoming.remote_address_validated()
            && handshakes.in_use() * 2 >= handshakes.limit().max()
        {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Some(handshake) = handshakes.admit(remote) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let accepted = accept_one(&shared, incoming).await;
            drop(handshake);
            match accepted {
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
        .ok_or(PeerError::NoCertificate)?;
    let identity = certificate::peer_identity(&chain)?;
    let (mut send, recv) = deadline(
        HANDSHAKE_TIMEOUT,
        "accepting the control stream",
        connection.accept_bi(),
    )
    .await?;
    let mut reader = FrameReader::new(recv);
    let handshake = AcceptorHandshake {
        local: &shared.config.cluster,
        location: &shared.config.location,
        replica: &shared.replica,
        trust_domain: &shared.config.trust_domain,
        key: &shared.link_key,
    };
    let first = match deadline(HANDSHAKE_TIMEOUT, "waiting for the hello", reader.next()).await {
        Ok(first) => first,
        Err(e) => {
            let code = RefusalCode::RefusalProtocol;
            shared
                .metrics
                .refusals
                .with_label_values(&[refusal_label(code)])
                .inc();
            refuse(&mut send, &connection, code, &e.to_string()).await;
            return Err(e);
        }
    };
    // The Link check and the admission under one lock: an apply or unlink cannot slip between.
    let decision = {
        let mut state = lock(&shared.state);
        let state = &mut *state;
        let dials_peer = state.links.contains_key(identity.cluster());
        handshake.handle_hello(
            first,
            identity.cluster(),
            dials_peer,
            &mut state.redemptions,
            clock::unix_now(),
        )
    };
    let hello = match decision {
        Ok(admitted) => {
            if admitted.admission == Admission::First {
                tracing::info!(peer = %admitted.hello.cluster, "new peering admitted");
                shared.persist().await?;
            }
            admitted.hello
        }
        Err(refused) => {
            let refusal = refused.refusal();
            if let HelloRefused::Refused(refusal) = &refused {
                tracing::warn!(peer = %identity.cluster(), reason = %refusal.reason, "link refused");
            }
            shared
                .metrics
                .refusals
                .with_label_values(&[refusal_label(refusal.code)])
                .inc();
            refuse(&mut send, &connection, refusal.code, &refusal.reason).await;
            return Err(PeerError::Session(refused.into_error()));
        }
    };
    let peer = hello.cluster.clone();
    // Register the new session before reading where the peer stands: from here on the old
    // session of that replica (if any) can no longer apply frames, so the position cannot move
    // under us. Peers then state: an unlink that ran since the admission (it revoked the token)
    // is seen.
    let registered = {
        let mut peers = lock(&shared.peers);
        let confirmed = handshake.confirm(&lock(&shared.state).redemptions, &peer);
        confirmed.and_then(|()| {
            let status = peers
                .entry(peer.clone())
                .or_insert_with(|| PeerStatus::awaiting(Instant::now()));
            let tokens = Tokens {
                unlink: status.unlink.clone(),
                retire: shared.shutdown.child_token(),
            };
            let session = next_session();
            if holds_current(status, &hello.replica) {
                // Another replica of the peer's gateway holds the current session: this one
                // runs beside it, and takes its place if it ends.
                if status.siblings.len() + 1 >= MAX_REPLICAS
                    && !status.siblings.contains_key(&hello.replica)
                {
                    return Err(Refusal {
                        code: RefusalCode::RefusalProtocol,
                        reason: format!(
                            "cluster {peer} already has {MAX_REPLICAS} gateway replicas connected to cluster {}",
                            shared.config.cluster
                        ),
                    });
                }
                let sibling = Sibling {
                    connection: connection.clone(),
                    session,
                    imported: ImportedCatalog::default(),
                    acked: hello.resume,
                };
                if let Some(old) = status.siblings.insert(hello.replica.clone(), sibling) {
                    old.connection
                        .close(0u32.into(), b"replaced by a newer connection");
                }
                return Ok((tokens, session, false));
            }
            // Closing the old connection ends its session quietly.
            if let Some(old) = status.connection.take() {
                old.close(0u32.into(), b"replaced by a newer connection");
            }
            if let Some(old) = status.siblings.remove(&hello.replica) {
                old.connection
                    .close(0u32.into(), b"replaced by a newer connection");
            }
            status.owner = 0;
            status.role = PeerRole::Acceptor;
            status.state = LinkState::Connecting;
            status.lost_at.get_or_insert_with(Instant::now);
            status.address = connection.remote_address().to_string();
            status.replica.clone_from(&hello.replica);
            status.session = session;
            status.health = None;
            Ok((tokens, session, true))
        })
    };
    let (tokens, session, current) = match registered {
        Ok(registered) => registered,
        Err(refusal) => {
            refuse(&mut send, &connection, refusal.code, &refusal.reason).await;
            return Err(PeerError::Session(refusal.into_error()));
        }
    };
    // A sibling's catalog starts empty: its replica sends a snapshot.
    let resume = if current {
        lock(&shared.state)
            .imports
            .get(&peer)
            .map_or(Position::NONE, |i| i.position)
    } else {
        Position::NONE
    };
    if let Err(e) = send_frame(&mut send, &handshake.welcome(resume), HANDSHAKE_TIMEOUT).await {
        // The new session never started: the peer counts as lost from now, so its services
        // are withdrawn after the grace period unless it comes back.
        if let Some(status) = lock(&shared.peers).get_mut(&peer) {
            status.siblings.retain(|_, s| s.session != session);
            if status.session == session {
                status.state = LinkState::Disconnected;
                status.last_error = e.to_string();
                status.lost_at = Some(Instant::now());
                // Another replica's session may carry the peering instead.
                super::drive::promote_sibling(shared, &peer, status);
            }
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
            peer_replica: hello.replica,
        },
        tokens,
        session,
    ))
}

/// Whether a replica other than `replica` holds the peer's current session (registered, and
/// not ended).
fn holds_current(status: &PeerStatus, replica: &str) -> bool {
    status.replica != replica
        && status.session != 0
        && matches!(status.state, LinkState::Connecting | LinkState::Connected)
}

//! Ending peerings: an unlink (the peer is told), a refused Link discarded, and the services of
//! peers lost past their grace period withdrawn.

use std::sync::Arc;
use std::time::Instant;

use strait_federation::catalog::Position;
use strait_federation::identity::ClusterName;

use super::dial::notify_unlink;
use super::records::forget_locked;
use crate::peering::PeerRole;
use crate::{GatewayError, Shared, lock};

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
    shared.catalog_changed(crate::views::Touched::All);
    if let Some(spec) = notify {
        tokio::spawn(notify_unlink(shared.clone(), spec));
    }
    shared.persist().await?;
    Ok(existed)
}

/// Withdraws the services of peers lost for longer than the grace period. The decision and the
/// withdrawal happen under both locks (peers, then state), so a peer that reconnects meanwhile
/// keeps what its new session brings.
pub fn withdraw_expired(shared: &Shared, now: Instant) {
    if shared.kube.is_some() && !shared.leads() {
        // A standby's imports of clusters it has no session with follow the API, where the
        // leader keeps them (`kubernetes::mirror`).
        return;
    }
    let grace = shared.config.peering.grace_period();
    let mut withdrew = false;
    {
        let mut peers = lock(&shared.peers);
        let mut state = lock(&shared.state);
        for (peer, status) in peers.iter_mut() {
            let expired = status.connection.is_none()
                && status.siblings.is_empty()
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
                shared.journal_imports(&state, peer, &[], true);
                withdrew = true;
            }
        }
    }
    if withdrew {
        shared.catalog_changed(crate::views::Touched::All);
    }
}

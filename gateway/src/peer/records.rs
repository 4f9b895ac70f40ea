//! A peering's records in the gateway's state (its Link or admitted tokens, its imported
//! services), and forgetting them.

use strait_federation::identity::ClusterName;

use crate::{Shared, lock};

/// Drops a peering's records from a locked state: its link or admitted tokens, and its
/// imported services.
pub(super) fn forget_locked(
    shared: &Shared,
    state: &mut crate::store::State,
    peer: &ClusterName,
) -> bool {
    let dialer = state.links.remove(peer).is_some();
    let acceptor = state.redemptions.revoke(peer);
    if let Some(imported) = state.imports.remove(peer) {
        shared
            .metrics
            .withdrawn
            .with_label_values(&[peer.as_str()])
            .inc_by(imported.services.len() as u64);
        shared.journal_imports(state, peer, &[], true);
    }
    dialer || acceptor
}

/// Drops every trace of a peering: its link or admitted tokens, and its imported services.
pub(super) fn forget_peer(shared: &Shared, peer: &ClusterName) -> bool {
    let existed = forget_locked(shared, &mut lock(&shared.state), peer);
    shared.metrics.forget_peer(peer.as_str());
    shared.mark_dirty();
    shared.catalog_changed(crate::views::Touched::All);
    existed
}

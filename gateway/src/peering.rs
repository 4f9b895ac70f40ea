//! What the gateway knows of each peering right now: which side it is, its state as `get links`
//! shows it, the live connection and how far the peer acknowledged our export. The peer driver
//! writes it; the relay, the operator API and the metrics read it.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use strait_federation::catalog::{ImportedCatalog, Position};
use tokio_util::sync::CancellationToken;

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
    /// Which replica of the peer's gateway holds the current session (empty: the only one).
    pub replica: String,
    /// Sessions with the peer's other gateway replicas, which dial this gateway while the
    /// current session is up (Kubernetes mode, where every replica peers). They carry flows
    /// and policies now; their catalogs are kept aside, and when the current session ends one
    /// of them takes its place with its catalog already complete.
    pub siblings: BTreeMap<String, Sibling>,
    /// What the peer last said of itself on the current session (`strait check`).
    pub health: Option<crate::health::PeerHealth>,
    /// How well the current connection reaches the peer, by the connection it judges.
    pub quality: Option<(usize, crate::peer::quality::Quality)>,
}

/// A session with another replica of a peer's gateway, beside the current one.
#[derive(Debug)]
pub struct Sibling {
    pub connection: quinn::Connection,
    pub session: u64,
    /// What that replica exported, as its session brought it.
    pub imported: ImportedCatalog,
    pub acked: Position,
}

impl PeerStatus {
    /// The smoothed round-trip time of the current connection, in milliseconds (0 without one).
    pub fn rtt_ms(&self) -> f64 {
        self.connection
            .as_ref()
            .map_or(0.0, |c| c.rtt().as_secs_f64() * 1000.0)
    }

    /// Why the current connection is degraded; `None` while it is healthy (or there is none).
    pub fn degraded(&self) -> Option<&str> {
        let connection = self.connection.as_ref()?;
        self.quality
            .as_ref()
            .filter(|(id, _)| *id == connection.stable_id())
            .and_then(|(_, quality)| quality.degraded())
    }

    /// The connections that can carry a flow to the peer: the current session's while it is
    /// connected, then its siblings'.
    pub fn flow_connections(&self) -> impl Iterator<Item = &quinn::Connection> {
        let current = self
            .connection
            .as_ref()
            .filter(|_| self.state == LinkState::Connected);
        current
            .into_iter()
            .chain(self.siblings.values().map(|s| &s.connection))
    }

    /// The sibling that takes the current session's place when it ends: one that already holds
    /// its catalog (a snapshot applied), else any.
    pub fn successor(&self) -> Option<&str> {
        successor(
            self.siblings
                .iter()
                .map(|(r, s)| (r.as_str(), s.imported.position)),
        )
    }

    /// Closes every connection with the peer (the current one and its siblings').
    pub fn close_all(&mut self, reason: &[u8]) {
        if let Some(connection) = self.connection.take() {
            connection.close(0u32.into(), reason);
        }
        for (_, sibling) in std::mem::take(&mut self.siblings) {
            sibling.connection.close(0u32.into(), reason);
        }
    }

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
            replica: String::new(),
            siblings: BTreeMap::new(),
            health: None,
            quality: None,
        }
    }
}

/// Of `(replica, position in its catalog)`, the first that holds a catalog, else the first.
fn successor<'a>(siblings: impl Iterator<Item = (&'a str, Position)> + Clone) -> Option<&'a str> {
    siblings
        .clone()
        .find(|(_, position)| *position != Position::NONE)
        .or_else(|| siblings.into_iter().next())
        .map(|(replica, _)| replica)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_that_holds_its_catalog_takes_over_before_one_still_waiting_for_it() {
        let held = Position {
            epoch: 7,
            version: 3,
        };
        let siblings = [("gw-a", Position::NONE), ("gw-b", held)];
        assert_eq!(successor(siblings.into_iter()), Some("gw-b"));
        let waiting = [("gw-a", Position::NONE), ("gw-c", Position::NONE)];
        assert_eq!(successor(waiting.into_iter()), Some("gw-a"));
        assert_eq!(successor(std::iter::empty()), None);
    }
}

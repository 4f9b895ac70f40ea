//! The peer session, sans IO: the handshake frames, then the catalog exchange between two
//! gateways. Each side exports its log to the other and imports the other's: an initial snapshot
//! or delta from where the importer stands, then deltas as the exporter changes, acknowledged by
//! the importer, with keep-alives both ways. The gateway feeds frames and the time in and sends
//! what the session queues; nothing here touches a socket or a clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use prost::Message;

use crate::catalog::{
    Changes, ExportLog, ImportedCatalog, Position, RecordError, ServiceKey, ServiceSpec,
};
use crate::identity::ClusterName;
use crate::policy::PolicyStore;
use crate::policy::exchange::{ExchangeError, PolicyBook, PolicyExchange, Received};
use crate::proto::peer::{self as wire, PeerFrame, RefusalCode, peer_frame::Body};
use crate::wire::TARGET_FRAME;

/// The most quota counts in one frame.
pub const MAX_QUOTA_COUNTS: usize = 4_096;
/// The longest policy digest a health frame may carry.
pub const MAX_DIGEST: usize = 64;

/// The protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Timers and bounds of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Send a keep-alive when nothing was sent for this long.
    pub keepalive: Duration,
    /// Give the peer up when nothing was received for this long.
    pub idle_timeout: Duration,
    /// The most services one peer may hold in an update being assembled (and in its catalog).
    pub max_services: usize,
    /// The most bytes of frames an update being assembled may take.
    pub max_update_bytes: usize,
    /// The most endpoints, summed over its services, one peer's catalog may hold.
    pub max_endpoints: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            max_services: 200_000,
            max_update_bytes: 256 << 20,
            max_endpoints: 2_000_000,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("refused by the peer ({code:?}): {reason}")]
    Refused { code: RefusalCode, reason: String },
    #[error("nothing heard from the peer for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("protocol violation: {0}")]
    Policy(#[from] ExchangeError),
}

/// A protocol violation with its reason.
pub(crate) fn protocol(reason: impl Into<String>) -> SessionError {
    SessionError::Protocol(reason.into())
}

/// A frame of one body.
pub(crate) fn frame(body: Body) -> PeerFrame {
    PeerFrame { body: Some(body) }
}

/// A refusal, the last frame of a session.
pub fn refusal(code: RefusalCode, reason: impl Into<String>) -> PeerFrame {
    frame(Body::Refusal(wire::Refusal {
        code: code as i32,
        reason: reason.into(),
    }))
}

/// A refusal received, as the error it ends the session with.
pub(crate) fn refused(r: wire::Refusal) -> SessionError {
    SessionError::Refused {
        code: RefusalCode::try_from(r.code).unwrap_or(RefusalCode::RefusalUnspecified),
        reason: r.reason.chars().take(1024).collect(),
    }
}

/// Something the gateway should act on after a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An update from the peer was applied to its imported catalog; `snapshot` when it
    /// replaced everything rather than carrying a delta.
    Imported {
        changed: Vec<ServiceKey>,
        position: Position,
        snapshot: bool,
    },
    /// The peer acknowledged our export up to a position.
    Acked(Position),
    /// A policy frame, for [`PeerSession::handle_policy`] (which needs the gateway's policies).
    Policy(PolicyFrame),
    /// Quota counts, for the gateway's quota book.
    Quota(wire::QuotaUsage),
    /// Golden metrics of one cluster's interval, for the gateway's golden book.
    Golden(crate::proto::golden::Batch),
    /// How the peer stands (its clock, its policy set).
    Health(wire::Health),
}

/// The golden-metric names a session has sent and received: each is sent once, then referred
/// to by its index for the rest of the session.
#[derive(Debug, Default)]
struct GoldenNames {
    sent: HashMap<String, u32>,
    received: Vec<String>,
}

/// Names one session keeps each way, at most (past it, batches carry their names again).
pub const MAX_SESSION_NAMES: usize = 65_536;

impl GoldenNames {
    /// The batch as this session sends it: its names replaced by the session's indices, the
    /// new ones queued first in a names frame; as it is when the table is full.
    fn outgoing(
        &mut self,
        mut batch: crate::proto::golden::Batch,
        outbox: &mut VecDeque<PeerFrame>,
    ) -> crate::proto::golden::Batch {
        let new: Vec<&String> = {
            let mut seen = std::collections::HashSet::new();
            batch
                .names
                .iter()
                .filter(|n| !self.sent.contains_key(*n) && seen.insert(*n))
                .collect()
        };
        if self.sent.len() + new.len() > MAX_SESSION_NAMES {
            return batch;
        }
        if !new.is_empty() {
            let names: Vec<String> = new.into_iter().cloned().collect();
            for name in &names {
                let index = self.sent.len() as u32;
                self.sent.insert(name.clone(), index);
            }
            outbox.push_back(frame(Body::GoldenNames(wire::GoldenNames { names })));
        }
        let index: Vec<u32> = batch.names.iter().map(|n| self.sent[n]).collect();
        let map = |i: &mut u32| *i = index.get(*i as usize).copied().unwrap_or(u32::MAX);
        for series in &mut batch.series {
            map(&mut series.namespace);
            map(&mut series.service);
            map(&mut series.source_cluster);
            map(&mut series.destination_cluster);
            map(&mut series.workload);
        }
        batch.names.clear();
        batch.session_names = true;
        batch
    }

    /// Takes note of names the peer will refer to.
    fn learn(&mut self, names: Vec<String>) -> Result<(), SessionError> {
        if self.received.len() + names.len() > MAX_SESSION_NAMES {
            return Err(protocol(format!(
                "more than {MAX_SESSION_NAMES} golden-metric names in one session"
            )));
        }
        if let Some(name) = names.iter().find(|n| n.len() > crate::golden::MAX_NAME) {
            return Err(protocol(format!(
                "a golden-metric name of {} bytes",
                name.len()
            )));
        }
        self.received.extend(names);
        Ok(())
    }

    /// A batch with its own names again, as the golden book reads it.
    fn incoming(
        &self,
        mut batch: crate::proto::golden::Batch,
    ) -> Result<crate::proto::golden::Batch, SessionError> {
        if !batch.session_names {
            return Ok(batch);
        }
        if batch.series.len() > crate::golden::MAX_SERIES_PER_MESSAGE {
            return Err(protocol("a golden batch with too many series"));
        }
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut names = Vec::new();
        let received = &self.received;
        let mut map = |i: &mut u32| -> Result<(), SessionError> {
            let name = received.get(*i as usize).ok_or_else(|| {
                protocol(format!(
                    "a golden batch refers to name {i}, but {} were given",
                    received.len()
                ))
            })?;
            *i = *local.entry(*i).or_insert_with(|| {
                names.push(name.clone());
                (names.len() - 1) as u32
            });
            Ok(())
        };
        for series in &mut batch.series {
            map(&mut series.namespace)?;
            map(&mut series.service)?;
            map(&mut series.source_cluster)?;
            map(&mut series.destination_cluster)?;
            map(&mut series.workload)?;
        }
        batch.names = names;
        batch.session_names = false;
        Ok(batch)
    }
}

/// A policy frame from the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyFrame {
    Digest(wire::PolicyDigest),
    Entries(wire::PolicyEntries),
}

#[derive(Debug)]
struct Staging {
    bytes: usize,
    next_part: u32,
    epoch: u64,
    from: u64,
    to: u64,
    reset: bool,
    upserts: Vec<(ServiceKey, ServiceSpec)>,
    removals: Vec<ServiceKey>,
}

/// An established session with one peer (after the [`handshake`](crate::handshake)).
///
/// # Calling contract
///
/// The caller owns the socket, the timers and the locks; the session owns the protocol. One
/// session per control stream, driven by one task:
/// - [`new`](Self::new) with the position the peer said it holds of our export (from its hello
///   or welcome) and our export log: the session queues what the peer lacks; then
///   [`start_policies`](Self::start_policies) with the policy set;
/// - each frame read from the stream goes to [`handle_frame`](Self::handle_frame) (with the
///   peer's imported catalog, under the gateway's lock); an [`Event::Policy`] it returns goes
///   on to [`handle_policy`](Self::handle_policy), an error ends the session;
/// - when our export, our policies or our quota counts change: [`sync`](Self::sync),
///   [`sync_policies`](Self::sync_policies), [`queue_quota`](Self::queue_quota);
/// - while [`has_pending`](Self::has_pending), write what
///   [`poll_transmit`](Self::poll_transmit) returns, in order;
/// - wake at [`poll_timeout`](Self::poll_timeout) and call
///   [`handle_timeout`](Self::handle_timeout): it queues keep-alives and ends an idle session.
///
/// Time: every method that needs it takes `now` (a monotonic `Instant` the caller reads);
/// policy versions take the caller's wall-clock milliseconds. Nothing here sleeps or reads a
/// clock, so tests drive it with made-up instants.
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    /// How far our export has been sent to the peer.
    sent: Position,
    /// How far the peer acknowledged our export.
    acked: Position,
    staging: Option<Staging>,
    last_sent: Instant,
    last_received: Instant,
    outbox: VecDeque<PeerFrame>,
    updates_sent: u64,
    policies: PolicyExchange,
    golden_names: GoldenNames,
}

impl PeerSession {
    /// Starts the exchange: `peer_position` is where the peer stands in our export (from its
    /// hello or welcome). Queues what the peer lacks.
    pub fn new(
        config: SessionConfig,
        peer_position: Position,
        export: &ExportLog,
        now: Instant,
    ) -> Self {
        let mut session = Self {
            config,
            sent: peer_position,
            acked: peer_position,
            staging: None,
            last_sent: now,
            last_received: now,
            outbox: VecDeque::new(),
            updates_sent: 0,
            policies: PolicyExchange::default(),
            golden_names: GoldenNames::default(),
        };
        session.sync(export);
        session
    }

    /// How far the peer acknowledged our export.
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// How far our export was sent.
    pub fn sent(&self) -> Position {
        self.sent
    }

    /// How many updates were queued to the peer so far.
    pub fn updates_sent(&self) -> u64 {
        self.updates_sent
    }

    /// Starts the policy exchange: queues our digest (once per session, after the handshake).
    pub fn start_policies(&mut self, set: &PolicyStore) {
        self.outbox.extend(PolicyExchange::digest_frames(set));
    }

    /// Queues the policies the peer lacks (nothing until its digest came).
    pub fn sync_policies(&mut self, set: &PolicyStore) {
        self.outbox.extend(self.policies.outgoing(set));
    }

    /// Handles a policy frame: learns the peer's digest, or merges its entries into `book`
    /// (`now_ms`: Unix milliseconds); then queues whatever the peer still lacks.
    pub fn handle_policy(
        &mut self,
        frame: PolicyFrame,
        book: &mut PolicyBook,
        peer: &ClusterName,
        now_ms: u64,
    ) -> Result<Received, SessionError> {
        let received = match frame {
            PolicyFrame::Digest(digest) => {
                self.policies.on_digest(digest)?;
                Received::default()
            }
            PolicyFrame::Entries(entries) => {
                self.policies.on_entries(entries, book, peer, now_ms)?
            }
        };
        self.sync_policies(&book.set);
        Ok(received)
    }

    /// Queues quota counts that grew, in frames of a bounded size.
    pub fn queue_quota(&mut self, counts: Vec<wire::QuotaCount>) {
        for chunk in counts.chunks(MAX_QUOTA_COUNTS) {
            self.outbox
                .push_back(frame(Body::QuotaUsage(wire::QuotaUsage {
                    counts: chunk.to_vec(),
                })));
        }
    }

    /// Queues golden-metric batches (each of a bounded size already). Names go once a
    /// session: a batch refers to those already sent by index, after a frame with the new ones
    /// (the same services recur every interval, so most batches carry no name at all).
    pub fn queue_golden(&mut self, batches: Vec<crate::proto::golden::Batch>) {
        for batch in batches {
            let batch = self.golden_names.outgoing(batch, &mut self.outbox);
            self.outbox.push_back(frame(Body::Golden(batch)));
        }
    }

    /// Queues a health frame.
    pub fn queue_health(&mut self, health: wire::Health) {
        self.outbox.push_back(frame(Body::Health(health)));
    }

    /// Queues what changed in our export since it was last sent.
    pub fn sync(&mut self, export: &ExportLog) {
        let changes = export.changes_since(self.sent);
        let head = export.head();
        if changes.is_empty() && head == self.sent {
            return;
        }
        self.queue_update(changes);
        self.sent = head;
    }

    fn queue_update(&mut self, changes: Changes) {
        let Changes {
            reset,
            from,
            to,
            upserts,
            removals,
        } = changes;
        let header = wire::Update {
            epoch: to.epoch,
            from_version: if reset { 0 } else { from.version },
            to_version: to.version,
            reset,
            complete: false,
            upserts: Vec::new(),
            removals: Vec::new(),
            part: 0,
        };
        let mut current = header.clone();
        let mut size = 0;
        let mut part = 0;
        let mut flush = |current: &mut wire::Update, outbox: &mut VecDeque<PeerFrame>| {
            let mut next = header.clone();
            part += 1;
            next.part = part;
            outbox.push_back(frame(Body::Update(std::mem::replace(current, next))));
        };
        for (key, spec) in upserts {
            let record = spec.to_wire(&key);
            size += record.encoded_len() + 4;
            current.upserts.push(record);
            if size >= TARGET_FRAME {
                flush(&mut current, &mut self.outbox);
                size = 0;
            }
        }
        for key in removals {
            let removal = wire::ServiceRef {
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
            };
            size += removal.encoded_len() + 4;
            current.removals.push(removal);
            if size >= TARGET_FRAME {
                flush(&mut current, &mut self.outbox);
                size = 0;
            }
        }
        current.complete = true;
        self.outbox.push_back(frame(Body::Update(current)));
        self.updates_sent += 1;
    }

    /// Handles one frame from the peer; `imported` is this peer's imported catalog.
    pub fn handle_frame(
        &mut self,
        frame: PeerFrame,
        now: Instant,
        imported: &mut ImportedCatalog,
    ) -> Result<Option<Event>, SessionError> {
        self.last_received = now;
        match frame.body {
            Some(Body::Update(update)) => self.handle_update(update, imported),
            Some(Body::Ack(ack)) => {
                let position = Position::from_wire(ack.position.as_ref());
                if position.epoch != self.sent.epoch || position.version > self.sent.version {
                    return Err(protocol(format!(
                        "acknowledged {position:?}, but only {:?} was sent",
                        self.sent
                    )));
                }
                self.acked = position;
                Ok(Some(Event::Acked(position)))
            }
            Some(Body::KeepAlive(_)) => Ok(None),
            Some(Body::QuotaUsage(usage)) => {
                if usage.counts.len() > MAX_QUOTA_COUNTS {
                    return Err(protocol(format!(
                        "quota usage with more than {MAX_QUOTA_COUNTS} counts"
                    )));
                }
                Ok(Some(Event::Quota(usage)))
            }
            Some(Body::Golden(batch)) => {
                Ok(Some(Event::Golden(self.golden_names.incoming(batch)?)))
            }
            Some(Body::GoldenNames(names)) => {
                self.golden_names.learn(names.names)?;
                Ok(None)
            }
            Some(Body::Health(health)) => {
                if health.policy_digest.len() > MAX_DIGEST {
                    return Err(protocol(format!(
                        "a policy digest of {} bytes (at most {MAX_DIGEST})",
                        health.policy_digest.len()
                    )));
                }
                Ok(Some(Event::Health(health)))
            }
            Some(Body::PolicyDigest(digest)) => {
                Ok(Some(Event::Policy(PolicyFrame::Digest(digest))))
            }
            Some(Body::PolicyEntries(entries)) => {
                Ok(Some(Event::Policy(PolicyFrame::Entries(entries))))
            }
            Some(Body::Refusal(r)) => Err(refused(r)),
            Some(Body::Hello(_)) | Some(Body::Welcome(_)) => {
                Err(protocol("handshake frame after the handshake"))
            }
            // A frame this version does not know (a newer peer's) decodes to no body: passed
            // over, so gateways of different versions keep their peering.
            None => Ok(None),
        }
    }

    fn handle_update(
        &mut self,
        update: wire::Update,
        imported: &mut ImportedCatalog,
    ) -> Result<Option<Event>, SessionError> {
        let staging = match self.staging.take() {
            Some(staging) => {
                if (staging.epoch, staging.from, staging.to, staging.reset)
                    != (
                        update.epoch,
                        update.from_version,
                        update.to_version,
                        update.reset,
                    )
                {
                    return Err(protocol(
                        "a part of an update does not match its first part",
                    ));
                }
                if update.part != staging.next_part {
                    return Err(protocol(format!(
                        "part {} of an update where part {} was due",
                        update.part, staging.next_part
                    )));
                }
                staging
            }
            None => {
                if update.part != 0 {
                    return Err(protocol(format!(
                        "part {} of an update whose first part never came",
                        update.part
                    )));
                }
                if update.epoch == 0 {
                    return Err(protocol("update with epoch 0"));
                }
                if update.to_version < update.from_version {
                    return Err(protocol("update goes back in version"));
                }
                let here = imported.position;
                if !update.reset
                    && (update.epoch != here.epoch || update.from_version != here.version)
                {
                    return Err(protocol(format!(
                        "delta from {}@{} does not follow our position {}@{}",
                        update.from_version, update.epoch, here.version, here.epoch
                    )));
                }
                Staging {
                    bytes: 0,
                    next_part: 0,
                    epoch: update.epoch,
                    from: update.from_version,
                    to: update.to_version,
                    reset: update.reset,
                    upserts: Vec::new(),
                    removals: Vec::new(),
                }
            }
        };
        let mut staging = staging;
        staging.next_part += 1;
        staging.bytes += update.encoded_len();
        if staging.bytes > self.config.max_update_bytes {
            return Err(protocol(format!(
                "update larger than {} bytes",
                self.config.max_update_bytes
            )));
        }
        if staging.upserts.len()
            + staging.removals.len()
            + update.upserts.len()
            + update.removals.len()
            > self.config.max_services
        {
            return Err(protocol(format!(
                "update holds more than {} services",
                self.config.max_services
            )));
        }
        for record in &update.upserts {
            staging.upserts.push(ServiceSpec::from_wire(record)?);
        }
        for removal in &update.removals {
            let record = wire::ServiceRecord {
                namespace: removal.namespace.clone(),
                name: removal.name.clone(),
                ..Default::default()
            };
            staging.removals.push(ServiceSpec::from_wire(&record)?.0);
        }
        if !update.complete {
            self.staging = Some(staging);
            return Ok(None);
        }
        // The catalog must still stand where the delta starts: nothing else may have changed it
        // while the parts arrived.
        let start = Position {
            epoch: staging.epoch,
            version: staging.from,
        };
        if !staging.reset && imported.position != start {
            return Err(protocol(format!(
                "delta from {}@{} completed, but our position moved to {}@{}",
                start.version, start.epoch, imported.position.version, imported.position.epoch
            )));
        }
        let position = Position {
            epoch: staging.epoch,
            version: staging.to,
        };
        let snapshot = staging.reset;
        let changed = imported.apply(Changes {
            reset: staging.reset,
            from: Position {
                epoch: staging.epoch,
                version: staging.from,
            },
            to: position,
            upserts: staging.upserts,
            removals: staging.removals,
        });
        let endpoints: usize = imported.services.values().map(|s| s.endpoints.len()).sum();
        if imported.services.len() > self.config.max_services
            || endpoints > self.config.max_endpoints
        {
            imported.withdraw();
            return Err(protocol(format!(
                "peer exports more than {} services or {} endpoints",
                self.config.max_services, self.config.max_endpoints
            )));
        }
        self.outbox.push_back(frame(Body::Ack(wire::Ack {
            position: Some(position.to_wire()),
        })));
        Ok(Some(Event::Imported {
            changed,
            position,
            snapshot,
        }))
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<PeerFrame> {
        let next = self.outbox.pop_front()?;
        self.last_sent = now;
        Some(next)
    }

    /// Whether frames wait to be sent.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// When [`PeerSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let idle = self.last_received + self.config.idle_timeout;
        if self.has_pending() {
            // Frames are waiting to be written: no keep-alive is due, only the idle deadline.
            return idle;
        }
        (self.last_sent + self.config.keepalive).min(idle)
    }

    /// Queues a keep-alive when one is due; fails when the peer has been silent too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if now >= self.last_received + self.config.idle_timeout {
            return Err(SessionError::Idle(now - self.last_received));
        }
        if now >= self.last_sent + self.config.keepalive && self.outbox.is_empty() {
            self.outbox
                .push_back(frame(Body::KeepAlive(wire::KeepAlive {})));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Endpoint, Port, Protocol};
    use crate::handshake::{hello, parse_hello, parse_welcome};
    use crate::identity::{Namespace, ServiceName};
    use std::collections::BTreeMap;

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: Namespace::new("shop").unwrap(),
            name: ServiceName::new(name).unwrap(),
        }
    }

    fn spec(endpoints: usize) -> ServiceSpec {
        ServiceSpec {
            export: true,
            ports: vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            }],
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    address: format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                        .parse()
                        .unwrap(),
                    hostname: None,
                    ready: true,
                })
                .collect(),
            labels: BTreeMap::new(),
            exported_at_ms: 0,
        }
    }

    /// Delivers every queued frame from one session to the other, returns how many.
    fn pump(
        from: &mut PeerSession,
        to: &mut PeerSession,
        into: &mut ImportedCatalog,
        now: Instant,
    ) -> usize {
        let mut n = 0;
        while let Some(f) = from.poll_transmit(now) {
            let bytes = crate::wire::encode(&f);
            let mut decoder = crate::wire::FrameDecoder::default();
            decoder.extend(&bytes);
            let f = decoder.next_frame().unwrap().unwrap();
            to.handle_frame(f, now, into).unwrap();
            n += 1;
        }
        n
    }

    #[test]
    fn a_snapshot_then_deltas_bring_the_importer_level_and_are_acknowledged() {
        let now = Instant::now();
        let mut west = ExportLog::new(11);
        let east = ExportLog::new(22);
        west.set(&key("api"), Some(&spec(1)));
        let mut at_west = PeerSession::new(SessionConfig::default(), Position::NONE, &west, now);
        let mut at_east = PeerSession::new(SessionConfig::default(), Position::NONE, &east, now);
        let mut east_imports = ImportedCatalog::default();
        let mut west_imports = ImportedCatalog::default();
        pump(&mut at_west, &mut at_east, &mut east_imports, now);
        pump(&mut at_east, &mut at_west, &mut west_imports, now);
        assert_eq!(east_imports.services.len(), 1);
        assert_eq!(at_west.acked(), west.head());

        west.set(&key("api"), None);
        west.set(&key("web"), Some(&spec(2)));
        at_west.sync(&west);
        pump(&mut at_west, &mut at_east, &mut east_imports, now);
        pump(&mut at_east, &mut at_west, &mut west_imports, now);
        assert_eq!(
            east_imports.services.keys().collect::<Vec<_>>(),
            vec![&key("web")]
        );
        assert_eq!(east_imports.position, west.head());
        assert_eq!(at_west.acked(), west.head());
    }

    #[test]
    fn a_large_snapshot_is_split_and_applied_only_when_complete() {
        let now = Instant::now();
        let mut west = ExportLog::new(11);
        for i in 0..3000 {
            west.set(&key(&format!("s{i}")), Some(&spec(8)));
        }
        let mut at_west = PeerSession::new(SessionConfig::default(), Position::NONE, &west, now);
        let mut at_east = PeerSession::new(
            SessionConfig::default(),
            Position::NONE,
            &ExportLog::new(2),
            now,
        );
        let mut imports = ImportedCatalog::default();
        let mut parts = 0;
        while let Some(f) = at_west.poll_transmit(now) {
            assert!(crate::wire::encode(&f).len() < crate::wire::MAX_FRAME);
            let complete = matches!(&f.body, Some(Body::Update(u)) if u.complete);
            at_east.handle_frame(f, now, &mut imports).unwrap();
            parts += 1;
            assert_eq!(
                imports.services.is_empty(),
                !complete,
                "nothing shows before the end"
            );
        }
        assert!(parts > 1, "3000 services need several frames");
        assert_eq!(imports.services.len(), 3000);
    }

    #[test]
    fn a_delta_that_skips_a_version_is_a_protocol_error() {
        let now = Instant::now();
        let mut west = ExportLog::new(11);
        west.set(&key("a"), Some(&spec(1)));
        west.set(&key("b"), Some(&spec(1)));
        let stale = Position {
            epoch: 11,
            version: 1,
        };
        let mut at_west = PeerSession::new(SessionConfig::default(), stale, &west, now);
        let mut at_east = PeerSession::new(
            SessionConfig::default(),
            Position::NONE,
            &ExportLog::new(2),
            now,
        );
        let mut imports = ImportedCatalog::default(); // at version 0, not 1
        let f = at_west.poll_transmit(now).unwrap();
        let err = at_east.handle_frame(f, now, &mut imports).unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
    }

    #[test]
    fn an_ack_for_what_was_never_sent_is_a_protocol_error() {
        let now = Instant::now();
        let west = ExportLog::new(11);
        let mut at_west = PeerSession::new(SessionConfig::default(), Position::NONE, &west, now);
        let ack = frame(Body::Ack(wire::Ack {
            position: Some(
                Position {
                    epoch: 11,
                    version: 99,
                }
                .to_wire(),
            ),
        }));
        assert!(
            at_west
                .handle_frame(ack, now, &mut ImportedCatalog::default())
                .is_err()
        );
    }

    #[test]
    fn golden_names_go_once_a_session_and_batches_arrive_with_their_own() {
        use crate::golden::{Counts, Direction, SeriesKey, decode, encode};
        use crate::proto::golden::Batch;
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut west = PeerSession::new(config.clone(), Position::NONE, &ExportLog::new(1), t0);
        let mut east = PeerSession::new(config, Position::NONE, &ExportLog::new(2), t0);
        while west.poll_transmit(t0).is_some() {}
        let key = |service: &str| SeriesKey {
            direction: Direction::Inbound,
            namespace: "shop".into(),
            service: service.into(),
            source_cluster: "east".into(),
            destination_cluster: "west".into(),
            workload: "deploy/api".into(),
        };
        let mut counts = Counts::default();
        counts.status_classes[1] = 3;
        let (api, orders) = (key("api"), key("orders"));
        let (names, series) = encode([(&api, &counts), (&orders, &counts)]);
        let batch = Batch {
            origin: "west".into(),
            interval: 7,
            interval_ms: 5_000,
            names,
            series,
            session_names: false,
        };
        west.queue_golden(vec![batch.clone(), batch.clone()]);
        let frames: Vec<PeerFrame> = std::iter::from_fn(|| west.poll_transmit(t0)).collect();
        assert_eq!(
            frames.len(),
            3,
            "one names frame, then two batches: {frames:?}"
        );
        assert!(matches!(frames[0].body, Some(Body::GoldenNames(_))));
        let inline = crate::wire::encode(&frame(Body::Golden(batch.clone()))).len();
        let by_index = crate::wire::encode(&frames[2]).len();
        assert!(
            by_index * 100 < inline * 55,
            "{by_index} bytes against {inline} with names"
        );
        let mut received = Vec::new();
        for f in frames {
            if let Some(Event::Golden(b)) = east
                .handle_frame(f, t0, &mut ImportedCatalog::default())
                .unwrap()
            {
                received.push(b);
            }
        }
        let expected = decode(&batch.names, &batch.series).unwrap();
        assert_eq!(received.len(), 2);
        for b in &received {
            assert!(!b.session_names);
            assert_eq!(decode(&b.names, &b.series).unwrap(), expected);
        }
        // A batch that names what the session never gave is a protocol violation.
        let mut bad = received[0].clone();
        bad.session_names = true;
        bad.names.clear();
        bad.series[0].service = 999;
        assert!(
            east.handle_frame(
                frame(Body::Golden(bad)),
                t0,
                &mut ImportedCatalog::default()
            )
            .is_err()
        );
    }

    #[test]
    fn a_frame_of_a_newer_version_is_passed_over_and_the_session_goes_on() {
        use prost::Message as _;
        let t0 = Instant::now();
        let mut east = PeerSession::new(
            SessionConfig::default(),
            Position::NONE,
            &ExportLog::new(2),
            t0,
        );
        // Field 99 of PeerFrame, unknown here: a body this version has no name for.
        let unknown = PeerFrame::decode(&[0x9a, 0x06, 0x01, 0x00][..]).unwrap();
        assert!(unknown.body.is_none());
        let event = east.handle_frame(unknown, t0, &mut ImportedCatalog::default());
        assert!(matches!(event, Ok(None)), "{event:?}");
        let keepalive = frame(Body::KeepAlive(wire::KeepAlive {}));
        assert!(
            east.handle_frame(keepalive, t0, &mut ImportedCatalog::default())
                .is_ok()
        );
    }

    #[test]
    fn keepalives_go_out_when_quiet_and_silence_ends_the_session() {
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut s = PeerSession::new(config.clone(), Position::NONE, &ExportLog::new(1), t0);
        while s.poll_transmit(t0).is_some() {}
        let t1 = t0 + config.keepalive;
        assert_eq!(s.poll_timeout(), t1);
        s.handle_timeout(t1).unwrap();
        assert!(matches!(
            s.poll_transmit(t1).and_then(|f| f.body),
            Some(Body::KeepAlive(_))
        ));
        let t2 = t0 + config.idle_timeout;
        assert!(matches!(s.handle_timeout(t2), Err(SessionError::Idle(_))));
    }

    #[test]
    fn no_keepalive_wakeup_is_due_while_frames_wait_to_be_written() {
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut west = ExportLog::new(1);
        west.set(&key("a"), Some(&spec(1)));
        // The snapshot stays queued (a writer blocked on flow control does not take it).
        let s = PeerSession::new(config.clone(), Position::NONE, &west, t0);
        assert!(s.has_pending());
        assert_eq!(s.poll_timeout(), t0 + config.idle_timeout);
    }

    #[test]
    fn a_peer_may_not_exceed_the_service_bound() {
        let now = Instant::now();
        let mut west = ExportLog::new(11);
        for i in 0..20 {
            west.set(&key(&format!("s{i}")), Some(&spec(1)));
        }
        let small = SessionConfig {
            max_services: 10,
            ..SessionConfig::default()
        };
        let mut at_west = PeerSession::new(SessionConfig::default(), Position::NONE, &west, now);
        let mut at_east = PeerSession::new(small, Position::NONE, &ExportLog::new(2), now);
        let f = at_west.poll_transmit(now).unwrap();
        assert!(
            at_east
                .handle_frame(f, now, &mut ImportedCatalog::default())
                .is_err()
        );
    }

    /// Mutated frames from a real exchange: whatever the bytes, the decoder and the session
    /// answer with a value or an error, never a panic, and a refused frame changes nothing.
    #[test]
    fn mutated_frames_never_panic_and_never_half_apply() {
        let now = Instant::now();
        let mut west = ExportLog::new(11);
        for i in 0..40 {
            west.set(&key(&format!("s{i}")), Some(&spec(i % 5 + 1)));
        }
        let mut exporter = PeerSession::new(SessionConfig::default(), Position::NONE, &west, now);
        let mut frames = Vec::new();
        while let Some(f) = exporter.poll_transmit(now) {
            frames.push(crate::wire::encode(&f));
        }
        west.set(&key("s1"), None);
        west.set(&key("new"), Some(&spec(2)));
        exporter.sync(&west);
        while let Some(f) = exporter.poll_transmit(now) {
            frames.push(crate::wire::encode(&f));
        }
        frames.push(crate::wire::encode(&hello(
            &ClusterName::new("west").unwrap(),
            "t",
            Position::NONE,
        )));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut bytes = frames[(next() % frames.len() as u64) as usize].clone();
            for _ in 0..=(next() % 4) {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    _ => bytes.truncate(at.max(1)),
                }
            }
            let mut decoder = crate::wire::FrameDecoder::default();
            decoder.extend(&bytes);
            let Ok(Some(frame)) = decoder.next_frame() else {
                continue;
            };
            let _ = parse_hello(frame.clone());
            let _ = parse_welcome(frame.clone());
            let mut importer = PeerSession::new(
                SessionConfig::default(),
                Position::NONE,
                &ExportLog::new(2),
                now,
            );
            let mut imported = ImportedCatalog::default();
            let before = imported.clone();
            if importer.handle_frame(frame, now, &mut imported).is_err() {
                assert_eq!(imported, before, "a refused frame changed the catalog");
            }
        }
    }
}

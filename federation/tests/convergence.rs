//! Convergence of the peer protocol under a hostile schedule: a deterministic, seeded random
//! simulation of two or three fully meshed gateways, in the style of quinn-proto's
//! random-interaction tests. Each step changes an export, delivers frames, partitions or
//! reconnects a pair, duplicates or reorders a frame in flight, restarts a gateway or moves the
//! simulated clock. After every step no importer may hold a state its exporter never had; after a
//! final heal every import equals its exporter's export exactly.
//!
//! Each gateway also keeps its sidecars' view as the gateway does (a `ViewLog` updated with the
//! services each step touched) and serves two sidecars (one whole, one that declared some
//! services) by deltas; messages to them are delayed and lost. After every step each sidecar
//! holds exactly what a whole view would give it, and the log holds exactly the clusterset
//! merged from scratch; a sidecar that misses a delta refuses the next and starts a whole view.
//!
//! A failing run prints its seed; `STRAIT_SIM_SEED=<seed> cargo test -p strait-federation --test
//! convergence` replays that seed alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use strait_federation::catalog::{
    Endpoint, ExportLog, ImportedCatalog, Port, Position, Protocol, ServiceKey, ServiceSpec,
    clusterset_service,
};
use strait_federation::handshake;
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use strait_federation::proto::peer::{PeerFrame, peer_frame::Body};
use strait_federation::proto::workload::{CatalogView, ServiceRef, VirtualAddress};
use strait_federation::session::{Event, PeerSession, SessionConfig, SessionError};
use strait_federation::view::{HeldView, Interest, ViewEntry, ViewLog, service_view};
use strait_federation::wire::{self, FrameDecoder};

/// xorshift64*: small, and the same on every platform, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads neighbouring seeds apart and never yields the all-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`, `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// How many service names the gateways draw from: small, so changes hit the same services often.
const POOL: usize = 30;

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: Namespace::new("shop").expect("a valid namespace"),
        name: ServiceName::new(name).expect("a valid service name"),
    }
}

fn cluster(index: usize) -> ClusterName {
    ClusterName::new(format!("gw{index}")).expect("a valid cluster name")
}

fn small_spec(port: u16) -> ServiceSpec {
    ServiceSpec {
        export: true,
        ports: vec![Port {
            name: "http".into(),
            port,
            protocol: Protocol::Http,
        }],
        endpoints: vec![Endpoint {
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            hostname: None,
            ready: true,
        }],
        labels: BTreeMap::new(),
        exported_at_ms: 0,
    }
}

/// A service whose record alone is larger than an update frame's target, so any update holding
/// it is split into parts.
fn big_spec() -> ServiceSpec {
    // Host names stay DNS labels (at most 63 characters), so size comes from their number.
    let padding = "x".repeat(50);
    ServiceSpec {
        endpoints: (0..3500)
            .map(|i| Endpoint {
                address: SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250 + 1) as u8], 8080)),
                hostname: Some(format!("pod-{i}{padding}")),
                ready: true,
            })
            .collect(),
        ..small_spec(8080)
    }
}

/// A service as a cluster could export it. A big one, like [`big_spec`], is larger than an update
/// frame's target, so the snapshots and deltas that hold it are split into parts.
fn random_spec(rng: &mut Rng, big: bool) -> ServiceSpec {
    let port = rng.pick(&[80u16, 8080, 9090]);
    let protocol = rng.pick(&[
        Protocol::Http,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Tcp,
    ]);
    let mut ports = vec![Port {
        name: "main".into(),
        port,
        protocol,
    }];
    if rng.chance(20) {
        ports.push(Port {
            name: "admin".into(),
            port: 9901,
            protocol: Protocol::Http,
        });
    }
    let count = if big {
        3500 + rng.below(400)
    } else {
        rng.below(4)
    };
    // Many endpoints with long (but valid, at most 63 characters) host names make a record
    // larger than an update frame's target.
    let padding = if big { "x".repeat(50) } else { String::new() };
    let subnet = rng.below(2) as u8;
    let named = big || rng.chance(20);
    let ready = !rng.chance(10);
    let endpoints = (0..count)
        .map(|i| Endpoint {
            address: SocketAddr::from(([10, subnet, (i / 250) as u8, (i % 250 + 1) as u8], port)),
            // An empty hostname is not representable on the wire (it reads back as none).
            hostname: named.then(|| format!("pod-{i}{padding}")),
            ready,
        })
        .collect();
    let mut labels = BTreeMap::new();
    if rng.chance(20) {
        labels.insert("tier".to_owned(), rng.pick(&["web", "db"]).to_owned());
    }
    ServiceSpec {
        export: true,
        ports,
        endpoints,
        labels,
        exported_at_ms: 0,
    }
}

/// Sends a frame through the codec as a stream would carry it.
fn through_the_wire(frame: &PeerFrame) -> PeerFrame {
    let mut decoder = FrameDecoder::default();
    decoder.extend(&wire::encode(frame));
    match decoder.next_frame() {
        Ok(Some(frame)) => frame,
        other => panic!("a whole encoded frame must decode: {other:?}"),
    }
}

/// Every state an exporter reached: its services at (exporter, epoch, version).
type History = HashMap<(usize, u64, u64), BTreeMap<ServiceKey, ServiceSpec>>;

fn record(history: &mut History, g: usize, export: &ExportLog) {
    let head = export.head();
    history.insert((g, head.epoch, head.version), services_of(export));
}

fn services_of(export: &ExportLog) -> BTreeMap<ServiceKey, ServiceSpec> {
    export
        .services()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect()
}

struct Gateway {
    export: ExportLog,
    /// What this gateway imported from each gateway, by index (its own entry stays empty).
    imports: Vec<ImportedCatalog>,
    /// The imports as last written to disk: a crash loses what was imported after.
    saved_imports: String,
    /// Its sidecars' view, kept as the gateway keeps it: by the services touched.
    views: ViewLog,
    /// Services touched since the view was last brought up to date (`None`: possibly all).
    touched: Option<BTreeSet<ServiceKey>>,
    sidecars: Vec<Sidecar>,
}

impl Gateway {
    fn new(export: ExportLog, imports: Vec<ImportedCatalog>) -> Self {
        Self {
            saved_imports: to_json(&imports),
            export,
            imports,
            views: ViewLog::new(VIEW_CHANGES_KEPT),
            touched: None,
            sidecars: vec![
                Sidecar::new(Interest::default()),
                Sidecar::new(Interest::of(
                    &[],
                    &(0..POOL / 3)
                        .map(|i| ServiceRef {
                            namespace: "shop".into(),
                            name: format!("s{i}"),
                        })
                        .collect::<Vec<_>>(),
                )),
            ],
        }
    }

    fn touch(&mut self, keys: impl IntoIterator<Item = ServiceKey>) {
        if let Some(touched) = &mut self.touched {
            touched.extend(keys);
        }
    }

    /// One service as gw`g` merges it now, from its export and its imports.
    fn merged(&self, g: usize, key: &ServiceKey) -> Option<ViewEntry> {
        let local = self
            .export
            .services()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.clone());
        let names: Vec<ClusterName> = (0..self.imports.len()).map(cluster).collect();
        let imports = self
            .imports
            .iter()
            .enumerate()
            .filter(|(p, _)| *p != g)
            .map(|(p, imported)| (&names[p], imported));
        let service = clusterset_service(key, &cluster(g), local.as_ref(), imports)?;
        // A virtual address per backend cluster, so that deltas carry them too.
        let virtual_addresses = service
            .backends
            .iter()
            .map(|(c, spec)| VirtualAddress {
                address: format!("240.0.{}.{}", c.as_str().len(), spec.ports[0].port % 250),
                namespace: key.namespace.to_string(),
                service: key.name.to_string(),
                cluster: c.to_string(),
                hostname: String::new(),
            })
            .collect();
        Some(ViewEntry {
            service: service_view(&service, |_| Default::default()),
            virtual_addresses,
        })
    }
}

/// How many changes a gateway's view keeps for deltas: few, so sidecars fall behind it.
const VIEW_CHANGES_KEPT: usize = 8;

/// A sidecar of a simulated gateway: the view its stream built, and where the stream stands.
struct Sidecar {
    interest: Interest,
    held: HeldView,
    /// The view log's version of the last message sent on the stream.
    at: Option<u64>,
    /// The stream's message count.
    sent: u64,
    /// Whether a message to it was lost since it last applied one.
    lost: bool,
}

impl Sidecar {
    fn new(interest: Interest) -> Self {
        Self {
            interest,
            held: HeldView::default(),
            at: None,
            sent: 0,
            lost: false,
        }
    }

    /// A new stream, as after a gateway's restart or a refused delta.
    fn restart(&mut self) {
        self.held = HeldView::default();
        self.at = None;
        self.sent = 0;
        self.lost = false;
    }

    /// The next message of the stream, as the gateway's stream makes it.
    fn next(&mut self, views: &ViewLog) -> Option<Vec<CatalogView>> {
        let part = self
            .at
            .and_then(|at| views.delta(at, &self.interest))
            .unwrap_or_else(|| views.whole(&self.interest));
        if part.is_empty() {
            return None;
        }
        let settings = part.whole.then(|| CatalogView {
            cluster: "sim".into(),
            ..CatalogView::default()
        });
        let messages: Vec<CatalogView> = part.messages(self.sent, settings).collect();
        self.sent += messages.len() as u64;
        self.at = Some(views.version());
        Some(messages)
    }
}

/// One direction of a connection: a QUIC stream, so frames arrive in order, unless a fault is
/// injected.
#[derive(Default)]
struct Stream {
    in_flight: VecDeque<PeerFrame>,
    /// The decoder at the receiving end.
    decoder: FrameDecoder,
    /// The last frame read, which a fault may deliver a second time.
    last_read: Option<PeerFrame>,
}

/// A connection between two gateways.
struct Link {
    ends: [usize; 2],
    /// `sessions[i]` runs at `ends[i]`.
    sessions: [PeerSession; 2],
    /// `streams[i]` carries frames from `ends[i]` to the other end.
    streams: [Stream; 2],
    /// Whether a frame was duplicated or reordered on this connection: only then may a frame
    /// be refused.
    tainted: bool,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    frames: u64,
    snapshots: u64,
    deltas: u64,
    split_parts: u64,
    faults: u64,
    violations: u64,
    idle_drops: u64,
    partitions: u64,
    restarts: u64,
    crashes: u64,
    state_losses: u64,
    compactions: u64,
    view_deltas: u64,
    view_wholes: u64,
    views_lost: u64,
    view_gaps: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.frames += other.frames;
        self.snapshots += other.snapshots;
        self.deltas += other.deltas;
        self.split_parts += other.split_parts;
        self.faults += other.faults;
        self.violations += other.violations;
        self.idle_drops += other.idle_drops;
        self.partitions += other.partitions;
        self.restarts += other.restarts;
        self.crashes += other.crashes;
        self.state_losses += other.state_losses;
        self.compactions += other.compactions;
        self.view_deltas += other.view_deltas;
        self.view_wholes += other.view_wholes;
        self.views_lost += other.views_lost;
        self.view_gaps += other.view_gaps;
    }
}

#[derive(Debug, Clone, Copy)]
struct Options {
    steps: usize,
    /// Whether frames in flight are duplicated and reordered.
    faults: bool,
    /// How often (in percent) an upserted service is big enough to split updates.
    big_percent: usize,
}

struct Sim {
    seed: u64,
    step: usize,
    options: Options,
    rng: Rng,
    now: Instant,
    config: SessionConfig,
    gateways: Vec<Gateway>,
    /// The pairs of gateways, each with at most one connection at a time in `links`.
    pairs: Vec<[usize; 2]>,
    links: Vec<Option<Link>>,
    history: History,
    /// `unchecked[g][p]`: gw`g`'s import of gw`p` may have changed since it was last checked.
    unchecked: Vec<Vec<bool>>,
    epochs: HashSet<u64>,
    keys: Vec<ServiceKey>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, options: Options) -> Self {
        let mut rng = Rng::new(seed);
        let count = 2 + rng.below(2);
        let pairs: Vec<[usize; 2]> = (0..count)
            .flat_map(|a| (a + 1..count).map(move |b| [a, b]))
            .collect();
        let mut sim = Self {
            seed,
            step: 0,
            options,
            rng,
            now: Instant::now(),
            config: SessionConfig::default(),
            gateways: Vec::new(),
            links: pairs.iter().map(|_| None).collect(),
            pairs,
            history: History::new(),
            unchecked: vec![vec![true; count]; count],
            epochs: HashSet::new(),
            keys: (0..POOL).map(|i| key(&format!("s{i}"))).collect(),
            stats: Stats::default(),
        };
        for g in 0..count {
            let export = ExportLog::new(sim.new_epoch());
            record(&mut sim.history, g, &export);
            let imports = vec![ImportedCatalog::default(); count];
            sim.gateways.push(Gateway::new(export, imports));
        }
        sim
    }

    fn run(mut self) -> Stats {
        for pair in 0..self.pairs.len() {
            self.connect(pair);
        }
        self.flush();
        for step in 0..self.options.steps {
            self.step = step;
            self.act();
            self.flush();
            self.follow_views(false);
            self.check();
        }
        self.step = self.options.steps;
        self.heal();
        self.follow_views(true);
        self.check();
        self.check_converged();
        self.stats
    }

    fn act(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..30 => {
                let g = self.rng.below(self.gateways.len());
                self.change_export(g);
            }
            30..62 => self.deliver_some(),
            62..66 => {
                if let Some(pair) = self.random_pair(true) {
                    self.links[pair] = None;
                    self.stats.partitions += 1;
                }
            }
            66..76 => match self.random_pair(false) {
                Some(pair) => self.connect(pair),
                None => self.deliver_some(),
            },
            76..82 if self.options.faults => self.inject_fault(),
            82..85 => {
                let g = self.rng.below(self.gateways.len());
                self.restart(g);
            }
            85..88 => {
                // A periodic save of the imports, which a later crash falls back to.
                let g = self.rng.below(self.gateways.len());
                self.gateways[g].saved_imports = to_json(&self.gateways[g].imports);
            }
            _ => self.advance_clock(),
        }
    }

    fn context(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn new_epoch(&mut self) -> u64 {
        // Random like a real incarnation (the full fixed64 range goes over the wire), but never
        // repeated within a run, or the history could not tell two incarnations apart.
        loop {
            let epoch = self.rng.next();
            if epoch != 0 && self.epochs.insert(epoch) {
                return epoch;
            }
        }
    }

    /// A pair with (`up`) or without a connection.
    fn random_pair(&mut self, up: bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.pairs.len())
            .filter(|p| self.links[*p].is_some() == up)
            .collect();
        (!candidates.is_empty()).then(|| candidates[self.rng.below(candidates.len())])
    }

    /// A new connection: the dialer's hello says where it stands in the acceptor's export, the
    /// acceptor's welcome where it stands in the dialer's; each session starts from there.
    fn connect(&mut self, pair: usize) {
        let [a, b] = self.pairs[pair];
        let hello = handshake::parse_hello(through_the_wire(&handshake::hello(
            &cluster(a),
            "join-token",
            self.gateways[a].imports[b].position,
        )))
        .unwrap_or_else(|e| panic!("{}: hello refused: {e}", self.context()));
        assert_eq!(hello.cluster, cluster(a));
        let welcome = handshake::parse_welcome(through_the_wire(&handshake::welcome(
            &cluster(b),
            self.gateways[b].imports[a].position,
        )))
        .unwrap_or_else(|e| panic!("{}: welcome refused: {e}", self.context()));
        assert_eq!(welcome.cluster, cluster(b));
        let at_a = PeerSession::new(
            self.config.clone(),
            welcome.resume,
            &self.gateways[a].export,
            self.now,
        );
        let at_b = PeerSession::new(
            self.config.clone(),
            hello.resume,
            &self.gateways[b].export,
            self.now,
        );
        self.links[pair] = Some(Link {
            ends: [a, b],
            sessions: [at_a, at_b],
            streams: Default::default(),
            tainted: false,
        });
    }

    /// Writes what every session queued onto its stream, as a gateway does after each event.
    fn flush(&mut self) {
        for link in self.links.iter_mut().flatten() {
            for side in 0..2 {
                while let Some(frame) = link.sessions[side].poll_transmit(self.now) {
                    link.streams[side].in_flight.push_back(frame);
                }
            }
        }
    }

    fn sync(&mut self, g: usize) {
        let export = &self.gateways[g].export;
        for link in self.links.iter_mut().flatten() {
            for side in 0..2 {
                if link.ends[side] == g {
                    link.sessions[side].sync(export);
                }
            }
        }
    }

    fn change_export(&mut self, g: usize) {
        for _ in 0..1 + self.rng.below(3) {
            let key = self.keys[self.rng.below(POOL)].clone();
            let roll = self.rng.below(100);
            let current = self.gateways[g]
                .export
                .services()
                .find(|(k, _)| **k == key)
                .map(|(_, s)| s.clone());
            let changed = if roll < 55 {
                let big = self.rng.chance(self.options.big_percent);
                let spec = random_spec(&mut self.rng, big);
                let changed = self.gateways[g].export.set(&key, Some(&spec));
                assert_eq!(changed.is_some(), current.as_ref() != Some(&spec));
                changed
            } else if roll < 90 {
                let changed = self.gateways[g].export.set(&key, None);
                assert_eq!(changed.is_some(), current.is_some());
                changed
            } else {
                // Setting what is already there is no change and no new version.
                let changed = self.gateways[g].export.set(&key, current.as_ref());
                assert_eq!(changed, None, "{}: setting the same state", self.context());
                changed
            };
            if let Some(version) = changed {
                self.gateways[g].touch([key.clone()]);
                let export = &self.gateways[g].export;
                assert_eq!(version, export.head().version);
                record(&mut self.history, g, export);
            }
            // Syncing between changes, not only after all of them, spreads one batch over
            // several updates.
            if self.rng.chance(30) {
                self.sync(g);
            }
        }
        if self.rng.chance(8) {
            // Dropping tombstones raises the floor, so importers behind it need a snapshot.
            let keep = self.rng.below(3);
            self.gateways[g].export.compact(keep);
            self.stats.compactions += 1;
        }
        self.sync(g);
    }

    /// Delivers some frames of one direction of one connection.
    fn deliver_some(&mut self) {
        let busy: Vec<(usize, usize)> = self
            .links
            .iter()
            .enumerate()
            .filter_map(|(pair, link)| link.as_ref().map(|l| (pair, l)))
            .flat_map(|(pair, link)| {
                (0..2)
                    .filter(|side| !link.streams[*side].in_flight.is_empty())
                    .map(move |side| (pair, side))
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        let (pair, side) = busy[self.rng.below(busy.len())];
        let count = if self.rng.chance(50) {
            usize::MAX
        } else {
            1 + self.rng.below(4)
        };
        self.deliver(pair, side, count);
    }

    /// Delivers up to `count` frames from `ends[side]` over the codec; a refused frame ends the
    /// connection.
    fn deliver(&mut self, pair: usize, side: usize, count: usize) {
        let context = self.context();
        let Some(link) = self.links[pair].as_mut() else {
            return;
        };
        self.unchecked[link.ends[1 - side]][link.ends[side]] = true;
        let result = receive(
            link,
            side,
            count,
            &mut self.gateways,
            &mut self.rng,
            &mut self.stats,
            self.now,
        );
        if let Err(e) = result {
            // Only a fault in flight may make a peer refuse a frame, and only as a protocol
            // violation: a valid record never fails, and no refusal is ever sent here.
            assert!(
                link.tainted,
                "{context}: a frame on a clean connection was refused: {e}"
            );
            assert!(
                matches!(e, SessionError::Protocol(_)),
                "{context}: a fault must read as a protocol violation, not {e}"
            );
            self.stats.violations += 1;
            self.links[pair] = None;
        }
    }

    fn inject_fault(&mut self) {
        let Some(pair) = self.random_pair(true) else {
            return;
        };
        let side = self.rng.below(2);
        let Some(link) = self.links[pair].as_mut() else {
            return;
        };
        let stream = &mut link.streams[side];
        let len = stream.in_flight.len();
        match self.rng.below(3) {
            0 if len >= 1 => {
                let i = self.rng.below(len);
                let copy = stream.in_flight[i].clone();
                let at = i + 1 + self.rng.below(len - i);
                stream.in_flight.insert(at, copy);
            }
            1 if len >= 2 => {
                let i = self.rng.below(len - 1);
                let j = i + 1 + self.rng.below(len - 1 - i);
                stream.in_flight.swap(i, j);
            }
            _ => match stream.last_read.clone() {
                // The frame just read arrives again.
                Some(frame) => stream.in_flight.push_front(frame),
                None => return,
            },
        }
        link.tainted = true;
        self.stats.faults += 1;
    }

    /// A restart ends every connection of the gateway; its state comes back from disk, or,
    /// when the state folder was lost, it starts over as a new incarnation.
    fn restart(&mut self, g: usize) {
        for pair in 0..self.pairs.len() {
            if self.pairs[pair].contains(&g) {
                self.links[pair] = None;
            }
        }
        self.stats.restarts += 1;
        self.unchecked[g].fill(true);
        if self.rng.chance(25) {
            self.stats.state_losses += 1;
            let old = services_of(&self.gateways[g].export);
            let mut export = ExportLog::new(self.new_epoch());
            record(&mut self.history, g, &export);
            // The cluster's services outlive the state folder: mostly the same ones are exported
            // again, from version 1, so importers may hold the same versions of the old
            // incarnation: only the epoch tells them apart.
            let services: Vec<(ServiceKey, ServiceSpec)> = if self.rng.chance(70) {
                old.into_iter().collect()
            } else {
                (0..self.rng.below(POOL))
                    .map(|_| {
                        let key = self.keys[self.rng.below(POOL)].clone();
                        (key, random_spec(&mut self.rng, false))
                    })
                    .collect()
            };
            for (key, spec) in services {
                if export.set(&key, Some(&spec)).is_some() {
                    record(&mut self.history, g, &export);
                }
            }
            let imports = vec![ImportedCatalog::default(); self.gateways.len()];
            self.gateways[g] = Gateway::new(export, imports);
            return;
        }
        let gateway = &self.gateways[g];
        let export: ExportLog = from_json(&to_json(&gateway.export));
        assert_eq!(export, gateway.export, "the export log survives a restart");
        let crash = self.rng.chance(50);
        let imports: Vec<ImportedCatalog> = if crash {
            self.stats.crashes += 1;
            from_json(&gateway.saved_imports)
        } else {
            let imports = from_json(&to_json(&gateway.imports));
            assert_eq!(imports, gateway.imports, "the imports survive a restart");
            imports
        };
        self.gateways[g].export = export;
        self.gateways[g].imports = imports;
        // A new process: a new view, and every sidecar starts a new stream.
        self.gateways[g].views = ViewLog::new(VIEW_CHANGES_KEPT);
        self.gateways[g].touched = None;
        for sidecar in &mut self.gateways[g].sidecars {
            sidecar.restart();
        }
    }

    /// Brings each gateway's view up to date with the services touched, as the gateway's task
    /// does, and sends its sidecars what changed. A sidecar is sometimes slow (it gets a later,
    /// larger delta), and a message is sometimes lost (the next delta does not follow what the
    /// sidecar holds: it refuses it and starts a whole view). With `all`, every sidecar is
    /// served. Then every sidecar holds what a whole view would give it.
    fn follow_views(&mut self, all: bool) {
        let context = self.context();
        for g in 0..self.gateways.len() {
            let keys: Vec<ServiceKey> = match self.gateways[g].touched.take() {
                Some(touched) => touched.into_iter().collect(),
                None => self.keys.clone(),
            };
            self.gateways[g].touched = Some(BTreeSet::new());
            let entries: Vec<(ServiceKey, Option<ViewEntry>)> = keys
                .into_iter()
                .map(|key| {
                    let entry = self.gateways[g].merged(g, &key);
                    (key, entry)
                })
                .collect();
            self.gateways[g].views.update(entries);
            for s in 0..self.gateways[g].sidecars.len() {
                if !all && self.rng.chance(30) {
                    continue;
                }
                let lost = !all && self.rng.chance(5);
                let gateway = &mut self.gateways[g];
                if all && gateway.sidecars[s].lost {
                    // Nothing more may come to show the gap: its stream ends, and a new one
                    // starts whole (a stream that loses a message is a broken stream).
                    gateway.sidecars[s].restart();
                }
                let Some(mut messages) = gateway.sidecars[s].next(&gateway.views) else {
                    continue;
                };
                if lost {
                    // One of the messages is lost (a large view's part, or the only one).
                    self.stats.views_lost += 1;
                    gateway.sidecars[s].lost = true;
                    let dropped = self.rng.below(messages.len());
                    messages.remove(dropped);
                }
                let sidecar = &mut gateway.sidecars[s];
                for message in messages {
                    if message.delta_from == 0 {
                        self.stats.view_wholes += 1;
                    } else {
                        self.stats.view_deltas += 1;
                    }
                    if let Err(gap) = sidecar.held.apply(message) {
                        self.stats.view_gaps += 1;
                        assert!(gap.held < gap.from, "{}: a refused delta {gap}", context);
                        sidecar.restart();
                        let whole = sidecar
                            .next(&gateway.views)
                            .unwrap_or_else(|| panic!("{}: a new stream starts whole", context));
                        assert_eq!(whole[0].delta_from, 0);
                        for message in whole {
                            sidecar.held.apply(message).unwrap_or_else(|e| {
                                panic!("{}: a whole view refused: {e}", context)
                            });
                        }
                        break;
                    }
                }
                if !lost {
                    sidecar.lost = false;
                }
            }
            // Merging every service from scratch is the slow part of a step: a sample of the
            // steps (and the end) is enough to catch a change the gateway did not touch.
            let scratch = all || self.rng.chance(15);
            self.check_views(g, all, scratch);
        }
    }

    /// gw`g`'s view holds what merging from scratch gives (when `scratch`), and each sidecar
    /// that is up to date holds what a whole view would give it.
    fn check_views(&self, g: usize, all: bool, scratch: bool) {
        let gateway = &self.gateways[g];
        for key in self.keys.iter().filter(|_| scratch) {
            let fresh = gateway.merged(g, key);
            assert_eq!(
                gateway.views.get(key),
                fresh.as_ref(),
                "{}: gw{g}'s view of {key} differs from the clusterset merged again",
                self.context()
            );
        }
        for (s, sidecar) in gateway.sidecars.iter().enumerate() {
            if (sidecar.at != Some(gateway.views.version()) || sidecar.lost) && !all {
                // Slow, or its last message was lost: it catches up later.
                continue;
            }
            assert!(
                sidecar.held.complete(),
                "{}: gw{g}'s sidecar {s} holds part of a view",
                self.context()
            );
            let want = gateway.views.whole(&sidecar.interest);
            let want_services: Vec<_> = want.entries.iter().map(|e| e.service.clone()).collect();
            let want_addresses: Vec<_> = want
                .entries
                .iter()
                .flat_map(|e| e.virtual_addresses.iter().cloned())
                .collect();
            let held = sidecar.held.whole();
            assert!(
                held.services == want_services && held.virtual_addresses == want_addresses,
                "{}: gw{g}'s sidecar {s} holds another view than a whole one",
                self.context()
            );
        }
    }

    /// Moves the clock, firing every timer due on the way, as a gateway's event loop would.
    fn advance_clock(&mut self) {
        let step = if self.rng.chance(5) {
            // Long enough for every connection to go idle.
            self.config.idle_timeout + Duration::from_secs(1)
        } else {
            Duration::from_millis(self.rng.below(4000) as u64)
        };
        let target = self.now + step;
        for _ in 0..10_000 {
            let due = self
                .links
                .iter()
                .flatten()
                .flat_map(|l| l.sessions.iter().map(PeerSession::poll_timeout))
                .min();
            match due {
                Some(due) if due <= target => {
                    self.now = self.now.max(due);
                    self.fire_timers();
                    self.flush();
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("{}: timers keep firing without progress", self.context());
    }

    fn fire_timers(&mut self) {
        for pair in 0..self.links.len() {
            let Some(link) = self.links[pair].as_mut() else {
                continue;
            };
            for side in 0..2 {
                if link.sessions[side].poll_timeout() > self.now {
                    continue;
                }
                match link.sessions[side].handle_timeout(self.now) {
                    Ok(()) => {}
                    Err(SessionError::Idle(_)) => {
                        self.stats.idle_drops += 1;
                        self.links[pair] = None;
                        break;
                    }
                    Err(e) => panic!("{}: a timer failed with {e}", self.context()),
                }
            }
        }
    }

    /// Ends the faults: connections that saw one are dropped, every pair is connected, and
    /// every frame is delivered until none is left.
    fn heal(&mut self) {
        for pair in 0..self.pairs.len() {
            if self.links[pair].as_ref().is_some_and(|l| l.tainted) {
                self.links[pair] = None;
            }
            if self.links[pair].is_none() {
                self.connect(pair);
            }
        }
        for _ in 0..1000 {
            self.flush();
            let mut moved = false;
            for pair in 0..self.pairs.len() {
                for side in 0..2 {
                    if self.links[pair]
                        .as_ref()
                        .is_some_and(|l| !l.streams[side].in_flight.is_empty())
                    {
                        moved = true;
                        self.deliver(pair, side, usize::MAX);
                        assert!(
                            self.links[pair].is_some(),
                            "{}: a healed connection ended",
                            self.context()
                        );
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("{}: frames never stop flowing", self.context());
    }

    /// No importer holds a state its exporter never had. Imports change only when frames
    /// arrive or their gateway restarts, so only those are compared again (comparing all of
    /// them after every step would dominate the run time).
    fn check(&mut self) {
        for (g, gateway) in self.gateways.iter().enumerate() {
            for (p, imported) in gateway.imports.iter().enumerate() {
                if !std::mem::take(&mut self.unchecked[g][p]) {
                    continue;
                }
                if p == g {
                    assert_eq!(imported, &ImportedCatalog::default());
                    continue;
                }
                if imported.position == Position::NONE {
                    assert!(
                        imported.services.is_empty(),
                        "{}: gw{g} holds services of gw{p} at no position",
                        self.context()
                    );
                    continue;
                }
                let at = imported.position;
                match self.history.get(&(p, at.epoch, at.version)) {
                    Some(expected) => assert!(
                        &imported.services == expected,
                        "{}: gw{g} imports at {at:?} what gw{p} never exported there: {}",
                        self.context(),
                        difference(&imported.services, expected),
                    ),
                    None => panic!(
                        "{}: gw{g} stands at {at:?} in gw{p}'s export, which never got there",
                        self.context()
                    ),
                }
            }
        }
        // The simulation syncs after every change: each session has sent its export's head.
        for link in self.links.iter().flatten() {
            for side in 0..2 {
                let head = self.gateways[link.ends[side]].export.head();
                assert_eq!(link.sessions[side].sent(), head, "{}", self.context());
            }
        }
    }

    /// Every import equals its exporter's export, and every export is acknowledged.
    fn check_converged(&self) {
        for (g, gateway) in self.gateways.iter().enumerate() {
            for (p, peer) in self.gateways.iter().enumerate() {
                if p == g {
                    continue;
                }
                let imported = &gateway.imports[p];
                assert_eq!(
                    imported.position,
                    peer.export.head(),
                    "{}: gw{g} did not catch up with gw{p}",
                    self.context()
                );
                let exported = services_of(&peer.export);
                assert!(
                    imported.services == exported,
                    "{}: gw{g}'s import of gw{p} differs from its export: {}",
                    self.context(),
                    difference(&imported.services, &exported),
                );
            }
        }
        for link in self.links.iter().flatten() {
            for side in 0..2 {
                let head = self.gateways[link.ends[side]].export.head();
                assert_eq!(
                    link.sessions[side].acked(),
                    head,
                    "{}: gw{} export not acknowledged",
                    self.context(),
                    link.ends[side]
                );
            }
        }
    }
}

/// Reads up to `count` frames from `streams[side]` of a link into the session at the other end.
/// The bytes arrive in pieces of random size, so frames are often split, as on a stream.
fn receive(
    link: &mut Link,
    side: usize,
    count: usize,
    gateways: &mut [Gateway],
    rng: &mut Rng,
    stats: &mut Stats,
    now: Instant,
) -> Result<(), SessionError> {
    let sender = link.ends[side];
    let receiver = link.ends[1 - side];
    let stream = &mut link.streams[side];
    let count = count.min(stream.in_flight.len());
    let mut bytes = Vec::new();
    for frame in stream.in_flight.drain(..count) {
        bytes.extend(wire::encode(&frame));
    }
    let mut offset = 0;
    while offset < bytes.len() {
        let left = bytes.len() - offset;
        let piece = if rng.chance(50) {
            left
        } else {
            1 + rng.below(left)
        };
        stream.decoder.extend(&bytes[offset..offset + piece]);
        offset += piece;
        loop {
            let frame = match stream.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => panic!("encoded frames must decode: {e}"),
            };
            stats.frames += 1;
            stream.last_read = Some(frame.clone());
            let update = match &frame.body {
                Some(Body::Update(u)) => Some((u.reset, u.complete)),
                _ => None,
            };
            let imported = &mut gateways[receiver].imports[sender];
            let event = link.sessions[1 - side].handle_frame(frame, now, imported)?;
            match update {
                Some((_, false)) => stats.split_parts += 1,
                Some((true, true)) => stats.snapshots += 1,
                Some((false, true)) => stats.deltas += 1,
                None => {}
            }
            if let Some(Event::Imported {
                position, changed, ..
            }) = event
            {
                assert_eq!(position, imported.position);
                gateways[receiver].touch(changed);
            }
        }
    }
    Ok(())
}

/// Which services an import has wrong, for failure messages (whole catalogs are unreadable).
fn difference(
    imported: &BTreeMap<ServiceKey, ServiceSpec>,
    exported: &BTreeMap<ServiceKey, ServiceSpec>,
) -> String {
    let names = |keys: Vec<&ServiceKey>| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let extra = names(
        imported
            .keys()
            .filter(|k| !exported.contains_key(*k))
            .collect(),
    );
    let missing = names(
        exported
            .keys()
            .filter(|k| !imported.contains_key(*k))
            .collect(),
    );
    let stale = names(
        imported
            .iter()
            .filter(|(k, s)| exported.get(*k).is_some_and(|e| e != *s))
            .map(|(k, _)| k)
            .collect(),
    );
    format!("extra {extra:?}, missing {missing:?}, different {stale:?}")
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("state serializes")
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).expect("state written by this build reads back")
}

/// Runs a simulation per seed (or only the seed in `STRAIT_SIM_SEED`), naming the seed of a
/// failure so it can be replayed. Returns the summed statistics and whether all seeds ran.
fn run_seeds(seeds: Range<u64>, options: Options) -> (Stats, bool) {
    let only = std::env::var("STRAIT_SIM_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("STRAIT_SIM_SEED is a number"));
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => seeds.collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        match panic::catch_unwind(AssertUnwindSafe(|| Sim::new(seed, options).run())) {
            Ok(stats) => total.add(&stats),
            Err(panic) => {
                eprintln!("seed {seed} failed; replay it alone with STRAIT_SIM_SEED={seed}");
                panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("{total:?}");
    (total, only.is_none())
}

#[test]
fn catalogs_converge_under_random_partitions_restarts_and_faults() {
    let (stats, all) = run_seeds(
        0..300,
        Options {
            steps: 300,
            faults: true,
            big_percent: 0,
        },
    );
    if all {
        // The schedule must actually reach every path it claims to test.
        assert!(stats.snapshots > 0 && stats.deltas > 0, "{stats:?}");
        assert!(stats.faults > 0 && stats.violations > 0, "{stats:?}");
        assert!(stats.idle_drops > 0 && stats.partitions > 0, "{stats:?}");
        assert!(stats.crashes > 0 && stats.state_losses > 0, "{stats:?}");
        assert!(stats.compactions > 0, "{stats:?}");
        assert!(stats.view_deltas > 0 && stats.view_wholes > 0, "{stats:?}");
        assert!(stats.views_lost > 0 && stats.view_gaps > 0, "{stats:?}");
    }
}

#[test]
fn split_updates_converge_under_random_partitions_restarts_and_faults() {
    let (stats, all) = run_seeds(
        1000..1020,
        Options {
            steps: 150,
            faults: true,
            big_percent: 15,
        },
    );
    if all {
        assert!(stats.split_parts > 0, "{stats:?}");
        assert!(stats.faults > 0 && stats.violations > 0, "{stats:?}");
    }
}

/// Connects an exporter and an importer afresh, as after a reconnect, and delivers everything
/// the exporter's new session sends.
fn resync(export: &ExportLog, imported: &mut ImportedCatalog, now: Instant) {
    let config = SessionConfig::default();
    let mut at_exporter = PeerSession::new(config.clone(), imported.position, export, now);
    let mut at_importer = PeerSession::new(config, Position::NONE, &ExportLog::new(0xea57), now);
    while let Some(frame) = at_exporter.poll_transmit(now) {
        at_importer
            .handle_frame(through_the_wire(&frame), now, imported)
            .expect("a fresh connection in order is accepted");
    }
}

/// The orders in which a transport that loses, repeats or reorders frames could hand over the
/// parts `0..n` of an update: every sequence of up to `n` parts, and the whole update with one
/// part repeated anywhere (after the last part, too). Shortest first, so a failure names the
/// simplest.
fn arrivals(n: usize) -> Vec<Vec<usize>> {
    let mut all = BTreeSet::new();
    let mut last: Vec<Vec<usize>> = vec![Vec::new()];
    for _ in 0..n {
        last = last
            .iter()
            .flat_map(|s| {
                (0..n).map(move |part| {
                    let mut longer = s.clone();
                    longer.push(part);
                    longer
                })
            })
            .collect();
        all.extend(last.iter().cloned());
    }
    for repeated in 0..n {
        for at in 0..=n {
            let mut sequence: Vec<usize> = (0..n).collect();
            sequence.insert(at, repeated);
            all.insert(sequence);
        }
    }
    let mut all: Vec<Vec<usize>> = all.into_iter().collect();
    all.sort_by_key(|s| s.len());
    all
}

/// A transport that loses, repeats or reorders frames must never make an importer apply part
/// of an update as if it were all of it: tried for every arrival in [`arrivals`] of the parts of
/// a three-part snapshot and of a three-part delta.
#[test]
fn no_lost_repeated_or_reordered_part_of_a_split_update_corrupts_an_import() {
    let now = Instant::now();
    let config = SessionConfig::default();
    for snapshot in [true, false] {
        let kind = if snapshot { "snapshot" } else { "delta" };
        let mut west = ExportLog::new(0x7e57);
        west.set(&key("s3"), Some(&small_spec(83)));
        let mut before = ImportedCatalog::default();
        if !snapshot {
            resync(&west, &mut before, now);
        }
        // Each big service fills a part alone: in key order in a snapshot, in version order in
        // a delta.
        west.set(&key("s0"), Some(&big_spec()));
        west.set(&key("s1"), Some(&big_spec()));
        west.set(&key("s2"), Some(&small_spec(82)));
        west.set(&key("s3"), None);
        let after = ImportedCatalog {
            position: west.head(),
            services: services_of(&west),
        };
        let mut at_west = PeerSession::new(config.clone(), before.position, &west, now);
        let parts: Vec<PeerFrame> = std::iter::from_fn(|| at_west.poll_transmit(now)).collect();
        assert_eq!(parts.len(), 3, "the {kind} is split in three");
        assert!(
            matches!(&parts[0].body, Some(Body::Update(u)) if u.reset == snapshot),
            "a {kind}"
        );

        // Encoded once: the big parts make this test's run time.
        let parts: Vec<Vec<u8>> = parts.iter().map(wire::encode).collect();

        for sequence in arrivals(parts.len()) {
            let mut imported = before.clone();
            let mut at_east =
                PeerSession::new(config.clone(), Position::NONE, &ExportLog::new(0xea57), now);
            let mut outcomes = Vec::new();
            for &part in &sequence {
                let mut decoder = FrameDecoder::default();
                decoder.extend(&parts[part]);
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    other => panic!("an encoded part must decode: {other:?}"),
                };
                let outcome = at_east.handle_frame(frame, now, &mut imported);
                let refused = outcome.is_err();
                outcomes.push(outcome);
                assert!(
                    imported == before || imported == after,
                    "{kind} parts {sequence:?} left the import at {:?} with {}, a state the \
                     exporter never had: {outcomes:?}",
                    imported.position,
                    difference(&imported.services, &after.services),
                );
                // A refused frame ends the connection.
                if refused {
                    break;
                }
            }
            if sequence == [0, 1, 2] {
                assert_eq!(imported, after, "the {kind} in order applies");
            }
        }
        // Whichever of the two states a fault left, the next connection resumes from there.
        for mut imported in [before, after.clone()] {
            resync(&west, &mut imported, now);
            assert_eq!(imported, after, "a reconnect after a {kind} catches up");
        }
    }
}

#[test]
fn a_reconnect_resumes_with_a_delta_not_a_snapshot() {
    let now = Instant::now();
    let config = SessionConfig::default();
    let mut west = ExportLog::new(0x7e57);
    for i in 0..10 {
        west.set(&key(&format!("s{i}")), Some(&small_spec(8000 + i)));
    }
    let east = ExportLog::new(0xea57);
    let mut east_imports = ImportedCatalog::default();
    let mut west_imports = ImportedCatalog::default();

    // The first connection brings east level with west.
    let mut at_west = PeerSession::new(config.clone(), east_imports.position, &west, now);
    let mut at_east = PeerSession::new(config.clone(), west_imports.position, &east, now);
    while let Some(frame) = at_west.poll_transmit(now) {
        at_east
            .handle_frame(through_the_wire(&frame), now, &mut east_imports)
            .expect("west's snapshot is accepted");
    }
    while let Some(frame) = at_east.poll_transmit(now) {
        at_west
            .handle_frame(through_the_wire(&frame), now, &mut west_imports)
            .expect("east's frames are accepted");
    }
    assert_eq!(east_imports.position, west.head());
    assert_eq!(at_west.acked(), west.head());
    drop((at_west, at_east));

    // Partitioned, west changes; east still stands where it was.
    let resume = east_imports.position;
    west.set(&key("s3"), Some(&small_spec(9003)));
    west.set(&key("s5"), None);
    west.set(&key("s20"), Some(&small_spec(9020)));

    // East dials again and says where it stands.
    let hello = handshake::parse_hello(through_the_wire(&handshake::hello(
        &cluster(1),
        "join-token",
        east_imports.position,
    )))
    .expect("a valid hello");
    assert_eq!(hello.resume, resume);
    let mut at_west = PeerSession::new(config.clone(), hello.resume, &west, now);
    let mut at_east = PeerSession::new(config, west_imports.position, &east, now);
    let first = at_west
        .poll_transmit(now)
        .expect("west has changes to send");
    let Some(Body::Update(update)) = &first.body else {
        panic!("the first frame is an update: {first:?}");
    };
    assert!(!update.reset, "a delta, not a snapshot");
    assert!(update.complete);
    assert_eq!(update.epoch, resume.epoch);
    assert_eq!(update.from_version, resume.version);
    assert_eq!(update.to_version, west.head().version);
    let upserted: Vec<&str> = update.upserts.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(upserted, ["s3", "s20"], "only what changed since");
    let removed: Vec<&str> = update.removals.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(removed, ["s5"]);
    assert!(
        at_west.poll_transmit(now).is_none(),
        "one update holds it all"
    );

    let event = at_east
        .handle_frame(through_the_wire(&first), now, &mut east_imports)
        .expect("the delta follows east's position");
    assert!(matches!(
        event,
        Some(Event::Imported { position, .. }) if position == west.head()
    ));
    assert_eq!(east_imports.services, services_of(&west));
}

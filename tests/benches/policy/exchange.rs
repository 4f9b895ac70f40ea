//! The in-process baseline of convergence: three gateways' policy books linked in a chain
//! through `PeerSession` and `PolicyExchange`, every frame encoded and decoded as on the control
//! stream, but no socket, no task and no disk.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use strait_federation::catalog::{ExportLog, ImportedCatalog, Position};
use strait_federation::document::DocumentPlace;
use strait_federation::identity::ClusterName;
use strait_federation::policy::exchange::PolicyBook;
use strait_federation::policy::{Policy, PolicyKey, PolicyKind};
use strait_federation::session::{Event, PeerSession, SessionConfig};
use strait_federation::wire::{self, FrameDecoder};
use strait_io::files::write_file;

use crate::{BULK, PerCall, SAMPLES, bulk_key, per_call, percentile, probe_json, unix_now_ms};

/// A probe policy, parsed and checked as `strait apply` does.
fn parsed(namespace: &str, name: &str) -> Result<(PolicyKey, Policy)> {
    let place = DocumentPlace {
        source: "bench".into(),
        index: 1,
        kind: None,
        name: None,
    };
    Ok(Policy::parse(
        PolicyKind::AuthorizationPolicy,
        probe_json(namespace, name),
        &place,
    )?)
}

/// One link in memory: a session at each end, with what each end imported and a decoder for
/// the bytes that reach it.
struct MemoryLink {
    ends: [usize; 2],
    sessions: [PeerSession; 2],
    imported: [ImportedCatalog; 2],
    decoders: [FrameDecoder; 2],
}

/// Gateways' policy books, linked in memory.
pub struct MemoryMesh {
    names: Vec<ClusterName>,
    books: Vec<PolicyBook>,
    links: Vec<MemoryLink>,
}

impl MemoryMesh {
    /// east - west - north, each link with its digests exchanged.
    pub fn chain() -> Result<Self> {
        let names = ["east", "west", "north"]
            .into_iter()
            .map(ClusterName::new)
            .collect::<Result<Vec<_>, _>>()?;
        let now = Instant::now();
        let session = |epoch: u64, book: &PolicyBook| {
            let mut session = PeerSession::new(
                SessionConfig::default(),
                Position::NONE,
                &ExportLog::new(epoch),
                now,
            );
            session.start_policies(&book.set);
            session
        };
        let books = vec![PolicyBook::default(); 3];
        let links = [[0, 1], [1, 2]]
            .into_iter()
            .map(|ends| MemoryLink {
                ends,
                sessions: [session(1, &books[ends[0]]), session(2, &books[ends[1]])],
                imported: Default::default(),
                decoders: Default::default(),
            })
            .collect();
        let mut mesh = Self {
            names,
            books,
            links,
        };
        mesh.pump(&mut [None; 3])?;
        Ok(mesh)
    }

    /// Tells every session of `node` that its set changed, as a gateway does.
    fn changed(&mut self, node: usize) {
        for link in &mut self.links {
            for side in 0..2 {
                if link.ends[side] == node {
                    link.sessions[side].sync_policies(&self.books[node].set);
                }
            }
        }
    }

    /// Delivers frames until no session has any left; notes when each gateway's set first
    /// changed.
    fn pump(&mut self, arrived: &mut [Option<Instant>; 3]) -> Result<()> {
        loop {
            let mut moved = false;
            let mut changed = Vec::new();
            let Self {
                names,
                books,
                links,
            } = self;
            for link in links.iter_mut() {
                for from in 0..2 {
                    let to = 1 - from;
                    while let Some(frame) = link.sessions[from].poll_transmit(Instant::now()) {
                        moved = true;
                        link.decoders[to].extend(&wire::encode(&frame));
                        while let Some(frame) = link.decoders[to].next_frame()? {
                            let event = link.sessions[to].handle_frame(
                                frame,
                                Instant::now(),
                                &mut link.imported[to],
                            )?;
                            let Some(Event::Policy(frame)) = event else {
                                continue;
                            };
                            let node = link.ends[to];
                            let received = link.sessions[to].handle_policy(
                                frame,
                                &mut books[node],
                                &names[link.ends[from]],
                                unix_now_ms(),
                            )?;
                            if !received.refused.is_empty() {
                                bail!("refused in memory: {:?}", received.refused);
                            }
                            if !received.changed.is_empty() {
                                arrived[node].get_or_insert_with(Instant::now);
                                changed.push(node);
                            }
                        }
                    }
                }
            }
            for node in changed {
                self.changed(node);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// Applies (or deletes) one policy in east and delivers it; the time to west and north.
    fn sample(&mut self, key: &PolicyKey, policy: Option<Policy>) -> Result<[Duration; 2]> {
        let started = Instant::now();
        let origin = self.names[0].clone();
        match policy {
            Some(policy) => {
                self.books[0].apply(key.clone(), policy, &origin, unix_now_ms())?;
            }
            None => {
                self.books[0].delete(key, &origin, unix_now_ms());
            }
        }
        self.changed(0);
        let mut arrived = [None; 3];
        self.pump(&mut arrived)?;
        let at = |node: usize| {
            arrived[node]
                .map(|t| t - started)
                .ok_or_else(|| anyhow!("{} did not change", self.names[node]))
        };
        Ok([at(1)?, at(2)?])
    }

    /// Applies BULK policies in east at once; the time until north holds them all.
    pub fn bulk(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let origin = self.names[0].clone();
        for n in 0..BULK {
            let (namespace, name) = bulk_key(n);
            let (key, policy) = parsed(&namespace, &name)?;
            self.books[0].apply(key, policy, &origin, unix_now_ms())?;
        }
        self.changed(0);
        self.pump(&mut [None; 3])?;
        if self.books[2].set.live_count() < BULK {
            bail!("north holds {} policies", self.books[2].set.live_count());
        }
        Ok(started.elapsed())
    }
}

/// Figures of the in-process baseline for one size of the set.
pub struct MemoryFigures {
    /// (to west, to north) of each apply and each delete.
    pub samples: Vec<[Duration; 2]>,
    /// Writing west's book as a gateway writes its state: to JSON, then to a synced file.
    pub state_encode: Duration,
    pub state_write: Duration,
    pub state_bytes: usize,
    /// One session's sync when its peer already holds everything.
    pub idle_sync: PerCall,
}

/// SAMPLES applies and deletes of a new policy each, then what a gateway's state write and a
/// session's sync cost at this size.
pub fn measure(mesh: &mut MemoryMesh, tag: &str, dir: &Path) -> Result<MemoryFigures> {
    let mut samples = Vec::new();
    for i in 0..SAMPLES {
        let (key, policy) = parsed("shop", &format!("mem-{tag}-{i}"))?;
        samples.push(mesh.sample(&key, Some(policy))?);
        samples.push(mesh.sample(&key, None)?);
    }
    let file = dir.join(format!("state-{tag}.json"));
    let (mut encodes, mut writes) = (Vec::new(), Vec::new());
    let mut state_bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let encoded = serde_json::to_string(&mesh.books[1])?;
        encodes.push(started.elapsed());
        let started = Instant::now();
        write_file(&file, &encoded, true)?;
        writes.push(started.elapsed());
        state_bytes = encoded.len();
    }
    let (books, links) = (&mesh.books, &mut mesh.links);
    let idle_sync = per_call(|| links[0].sessions[0].sync_policies(black_box(&books[0].set)));
    Ok(MemoryFigures {
        samples,
        state_encode: percentile(&encodes, 0.5),
        state_write: percentile(&writes, 0.5),
        state_bytes,
        idle_sync,
    })
}

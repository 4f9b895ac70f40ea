//! How a gateway's policy set changes, and how two linked gateways bring each other's sets up to
//! date. A [`PolicyBook`] is the set and the clock that stamps local changes. A
//! [`PolicyExchange`] is one peer session's side of the policy talk: it sends its digest (the
//! version of every policy it holds) once, learns the peer's, and from then on sends the peer
//! whatever it lacks: the rest of the set at first, then every change, whether made here or
//! received from another peer. Changes thus spread across the whole mesh, not only to direct
//! neighbours, and the last-writer-wins merge makes the order of arrival irrelevant.

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::replication::{Clock, Entry, Version};
use super::{Policy, PolicyKey, PolicyKind, PolicyStore};
use crate::document::Applied;
use crate::identity::{ClusterName, Namespace};
use crate::proto::peer::{self as wire, PeerFrame, peer_frame::Body};
use crate::wire::TARGET_FRAME;

/// The most policies (deletions included) a gateway holds or a peer may announce.
pub const MAX_POLICIES: usize = 50_000;

/// A gateway's policy set and the clock that stamps the changes made here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyBook {
    pub set: PolicyStore,
    pub clock: Clock,
    /// How long a deleted policy's tombstone is kept, in milliseconds (by its stamp); 0: for
    /// good. Set from the gateway's configuration, never stored.
    #[serde(skip)]
    pub tombstone_retention_ms: u64,
}

/// Why a local change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("the mesh already holds {MAX_POLICIES} policies (deletions included)")]
    Full,
}

impl PolicyBook {
    /// Reads a stored book entry by entry: one that no longer passes its checks (written by
    /// another strait version, or edited by hand) is left out and reported, never the reason
    /// a gateway cannot start. Peers that hold it send it again if they accept it.
    pub fn from_stored(stored: serde_json::Value) -> (PolicyBook, Vec<String>) {
        let mut book = PolicyBook {
            set: PolicyStore::default(),
            clock: stored
                .get("clock")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default(),
            tombstone_retention_ms: 0,
        };
        let mut skipped = Vec::new();
        let entries = stored
            .pointer("/set/entries")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        for (i, pair) in entries.into_iter().enumerate() {
            match serde_json::from_value::<(PolicyKey, Entry<Policy>)>(pair) {
                Ok((key, entry)) => {
                    book.set.merge(key, entry);
                }
                Err(e) => skipped.push(format!("stored policy {}: {e}", i + 1)),
            }
        }
        (book, skipped)
    }

    /// The stamp before which tombstones are dropped at `now_ms`; `None` while kept for good.
    pub fn tombstone_horizon(&self, now_ms: u64) -> Option<u64> {
        (self.tombstone_retention_ms > 0)
            .then(|| Clock::stamp_at(now_ms.saturating_sub(self.tombstone_retention_ms)))
    }

    /// Drops the tombstones older than the retention at `now_ms`; how many. A peer that was
    /// away for longer and still holds such a policy live brings it back when it returns: that
    /// is the price of a bounded set, as with Cassandra's `gc_grace_seconds`.
    pub fn compact(&mut self, now_ms: u64) -> usize {
        self.tombstone_horizon(now_ms)
            .map_or(0, |horizon| self.set.drop_tombstones_before(horizon))
    }

    /// Applies a policy made here at `now_ms` (Unix milliseconds). An unchanged document keeps
    /// its version, so applying a file again sends nothing across the mesh.
    pub fn apply(
        &mut self,
        key: PolicyKey,
        policy: Policy,
        origin: &ClusterName,
        now_ms: u64,
    ) -> Result<Applied, BookError> {
        let held = self.set.get(&key);
        let applied = match held.map(|e| e.body.as_ref()) {
            Some(Some(body)) if *body == policy => return Ok(Applied::Unchanged),
            Some(Some(_)) => Applied::Configured,
            Some(None) => Applied::Created,
            None if self.set.len() >= MAX_POLICIES => return Err(BookError::Full),
            None => Applied::Created,
        };
        let version = Version {
            stamp: self.clock.tick(now_ms),
            origin: origin.clone(),
        };
        self.set.merge(
            key,
            Entry {
                version,
                body: Some(policy),
            },
        );
        Ok(applied)
    }

    /// Deletes a policy here at `now_ms`; whether it was live.
    pub fn delete(&mut self, key: &PolicyKey, origin: &ClusterName, now_ms: u64) -> bool {
        if self.set.get(key).is_none_or(|e| e.body.is_none()) {
            return false;
        }
        let version = Version {
            stamp: self.clock.tick(now_ms),
            origin: origin.clone(),
        };
        self.set.merge(
            key.clone(),
            Entry {
                version,
                body: None,
            },
        );
        true
    }

    /// Takes a policy at the version it was stored with elsewhere (the custom resource a
    /// gateway wrote into its cluster's API, read back after a restart with an empty disk), as
    /// a peer's entry is taken: only when newer than what the book holds, never stamped further
    /// ahead than a peer may be, and within the bound. Whether the book changed.
    pub fn adopt(
        &mut self,
        key: PolicyKey,
        policy: Policy,
        version: Version,
        now_ms: u64,
    ) -> Result<bool, BookError> {
        if version.stamp > Clock::latest_acceptable(now_ms) {
            return Ok(false);
        }
        if self.set.get(&key).is_none() && self.set.len() >= MAX_POLICIES {
            return Err(BookError::Full);
        }
        self.clock.observe(version.stamp);
        Ok(self.set.merge(
            key,
            Entry {
                version,
                body: Some(policy),
            },
        ))
    }
}

/// Why a peer's policy frame was a protocol violation (the session ends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("policy entry without a version")]
    NoVersion,
    #[error("policy version names an invalid {field}: {value:?}")]
    BadKey { field: &'static str, value: String },
    #[error("policy digest announces more than {MAX_POLICIES} policies")]
    DigestTooLarge,
    #[error("a second policy digest")]
    SecondDigest,
}

/// What a batch of entries from a peer did.
#[derive(Debug, Default, PartialEq)]
pub struct Received {
    /// Policies whose entry changed here (news for other peers and for sidecars).
    pub changed: Vec<PolicyKey>,
    /// Entries this gateway held already, or held newer.
    pub known: usize,
    /// Entries this gateway would not take, and why: a document that fails its checks (a newer
    /// strait's field, say), a kind it does not know, a stamp from too far in the future, a
    /// full set. They are skipped, not fatal: the rest of the mesh still converges.
    pub refused: Vec<String>,
}

/// One session's side of the policy exchange.
#[derive(Debug, Default)]
pub struct PolicyExchange {
    /// What the peer holds, as far as this side knows; `None` until its digest is complete.
    peer_holds: Option<BTreeMap<PolicyKey, Version>>,
    /// A digest whose last part has not come yet.
    partial: BTreeMap<PolicyKey, Version>,
}

fn version_to_wire(key: &PolicyKey, version: &Version) -> wire::PolicyVersion {
    wire::PolicyVersion {
        kind: key.kind.as_str().to_owned(),
        namespace: key.namespace.to_string(),
        name: key.name.clone(),
        stamp: version.stamp,
        origin: version.origin.to_string(),
    }
}

/// A version from the wire: `None` for a kind this gateway does not know (a newer peer's),
/// which is skipped rather than fatal.
fn version_from_wire(
    version: Option<&wire::PolicyVersion>,
) -> Result<Option<(PolicyKey, Version)>, ExchangeError> {
    let version = version.ok_or(ExchangeError::NoVersion)?;
    let bad = |field: &'static str, value: &str| ExchangeError::BadKey {
        field,
        value: value.chars().take(80).collect(),
    };
    let is_name = |text: &str| {
        !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let Some(kind) = PolicyKind::ALL
        .into_iter()
        .find(|k| k.as_str() == version.kind)
    else {
        return if is_name(&version.kind) {
            Ok(None)
        } else {
            Err(bad("kind", &version.kind))
        };
    };
    let namespace = Namespace::new(version.namespace.as_str())
        .map_err(|_| bad("namespace", &version.namespace))?;
    crate::identity::ServiceName::new(version.name.as_str())
        .map_err(|_| bad("name", &version.name))?;
    let origin =
        ClusterName::new(version.origin.as_str()).map_err(|_| bad("origin", &version.origin))?;
    Ok(Some((
        PolicyKey {
            kind,
            namespace,
            name: version.name.clone(),
        },
        Version {
            stamp: version.stamp,
            origin,
        },
    )))
}

fn frame(body: Body) -> PeerFrame {
    PeerFrame { body: Some(body) }
}

impl PolicyExchange {
    /// A digest of the live policies of a set (kind, namespace, name and version of each):
    /// two gateways holding the same policies have the same digest, whatever deletions each
    /// still remembers.
    pub fn set_digest(set: &PolicyStore) -> Vec<u8> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for (key, _, version) in set.live() {
            context.update(format!("{key}\n{}\n{}\n", version.stamp, version.origin).as_bytes());
        }
        context.finish().as_ref().to_vec()
    }

    /// This side's digest, split into frames of about [`TARGET_FRAME`] bytes.
    pub fn digest_frames(set: &PolicyStore) -> Vec<PeerFrame> {
        let mut frames = Vec::new();
        let mut current = wire::PolicyDigest::default();
        let mut size = 0;
        for (key, entry) in set.entries() {
            let version = version_to_wire(key, &entry.version);
            size += version.encoded_len() + 4;
            current.versions.push(version);
            if size >= TARGET_FRAME {
                frames.push(frame(Body::PolicyDigest(std::mem::take(&mut current))));
                size = 0;
            }
        }
        current.complete = true;
        frames.push(frame(Body::PolicyDigest(current)));
        frames
    }

    /// Whether the peer's digest is complete (only then does this side send it entries).
    pub fn knows_peer(&self) -> bool {
        self.peer_holds.is_some()
    }

    /// Takes one part of the peer's digest; once the last part is in, what the peer lacks is
    /// due (see [`PolicyExchange::outgoing`]).
    pub fn on_digest(&mut self, digest: wire::PolicyDigest) -> Result<(), ExchangeError> {
        if self.peer_holds.is_some() {
            return Err(ExchangeError::SecondDigest);
        }
        if self.partial.len() + digest.versions.len() > MAX_POLICIES {
            return Err(ExchangeError::DigestTooLarge);
        }
        for version in &digest.versions {
            if let Some((key, version)) = version_from_wire(Some(version))? {
                self.partial.insert(key, version);
            }
        }
        if digest.complete {
            self.peer_holds = Some(std::mem::take(&mut self.partial));
        }
        Ok(())
    }

    /// The entries the peer lacks (nothing before its digest is complete), split into frames;
    /// from now on this side counts them as held by the peer.
    pub fn outgoing(&mut self, set: &PolicyStore) -> Vec<PeerFrame> {
        let Some(held) = self.peer_holds.as_mut() else {
            return Vec::new();
        };
        let lacking: Vec<_> = set.newer_than(held).collect();
        let mut frames = Vec::new();
        let mut current = wire::PolicyEntries::default();
        let mut size = 0;
        for (key, entry) in &lacking {
            let wire_entry = wire::PolicyEntry {
                version: Some(version_to_wire(key, &entry.version)),
                document: entry.body.as_ref().map(Policy::to_json).unwrap_or_default(),
            };
            size += wire_entry.encoded_len() + 4;
            current.entries.push(wire_entry);
            if size >= TARGET_FRAME {
                frames.push(frame(Body::PolicyEntries(std::mem::take(&mut current))));
                size = 0;
            }
        }
        if !current.entries.is_empty() {
            frames.push(frame(Body::PolicyEntries(current)));
        }
        for (key, entry) in lacking {
            held.insert(key.clone(), entry.version.clone());
        }
        frames
    }

    /// Merges a batch of entries from `peer` into `book` at `now_ms` (Unix milliseconds). An
    /// entry whose key or version is malformed ends the session; one this gateway will not take
    /// is skipped and reported.
    pub fn on_entries(
        &mut self,
        entries: wire::PolicyEntries,
        book: &mut PolicyBook,
        peer: &ClusterName,
        now_ms: u64,
    ) -> Result<Received, ExchangeError> {
        let mut received = Received::default();
        let source = format!("policy from peer {peer}");
        let latest = Clock::latest_acceptable(now_ms);
        for entry in entries.entries {
            let Some((key, version)) = version_from_wire(entry.version.as_ref())? else {
                let kind = entry.version.map(|v| v.kind).unwrap_or_default();
                received
                    .refused
                    .push(format!("{source}: kind {kind:?} is not known here"));
                continue;
            };
            if version.stamp > latest {
                received.refused.push(format!(
                    "{source}: {key} is stamped more than {} s ahead of this gateway's clock",
                    super::replication::MAX_SKEW_MS / 1000
                ));
                continue;
            }
            // Whatever becomes of it here, the peer holds this version.
            if let Some(held) = self.peer_holds.as_mut() {
                let newer = held.get(&key).is_none_or(|v| *v < version);
                if newer {
                    held.insert(key.clone(), version.clone());
                }
            }
            if book.set.get(&key).is_some_and(|e| e.version >= version) {
                received.known += 1;
                continue;
            }
            // A tombstone past the retention, of a policy not held here: this gateway dropped
            // it already (or would at once), and taking it back would only grow the set.
            if entry.document.is_empty()
                && book.set.get(&key).is_none()
                && book
                    .tombstone_horizon(now_ms)
                    .is_some_and(|horizon| version.stamp < horizon)
            {
                received.known += 1;
                continue;
            }
            if book.set.get(&key).is_none() && book.set.len() >= MAX_POLICIES {
                received.refused.push(format!(
                    "{source}: {key} does not fit: this gateway holds {MAX_POLICIES} policies"
                ));
                continue;
            }
            let body = if entry.document.is_empty() {
                None
            } else {
                match Policy::from_json(&key, &entry.document, &source) {
                    Ok(policy) => Some(policy),
                    Err(e) => {
                        received.refused.push(e.to_string());
                        continue;
                    }
                }
            };
            book.clock.observe(version.stamp);
            if book.set.merge(key.clone(), Entry { version, body }) {
                received.changed.push(key);
            }
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::DocumentPlace;

    /// The time the tests' gateways live at.
    const NOW_MS: u64 = 1_000_000;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn policy(name: &str, deny_from: &str) -> (PolicyKey, Policy) {
        let document = serde_json::json!({
            "apiVersion": "policy.strait.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "api"},
                "action": "deny",
                "rules": [{"from": [{"clusters": [deny_from]}]}],
            },
        });
        let place = DocumentPlace {
            source: "test".into(),
            index: 1,
            kind: None,
            name: None,
        };
        Policy::parse(PolicyKind::AuthorizationPolicy, document, &place).unwrap()
    }

    /// One side of a link in memory: a gateway's book and its exchange with one peer.
    struct Side {
        name: ClusterName,
        book: PolicyBook,
    }

    /// Delivers frames from one side to the other, as a session would.
    fn deliver(
        frames: Vec<PeerFrame>,
        exchange: &mut PolicyExchange,
        to: &mut Side,
        from: &ClusterName,
    ) -> Vec<PolicyKey> {
        let mut changed = Vec::new();
        for frame in frames {
            match frame.body {
                Some(Body::PolicyDigest(d)) => exchange.on_digest(d).unwrap(),
                Some(Body::PolicyEntries(e)) => {
                    let received = exchange.on_entries(e, &mut to.book, from, NOW_MS).unwrap();
                    assert!(received.refused.is_empty(), "{:?}", received.refused);
                    changed.extend(received.changed);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        changed
    }

    #[test]
    fn applying_the_same_document_again_keeps_its_version() {
        let mut book = PolicyBook::default();
        let (key, p) = policy("a", "west");
        let east = cluster("east");
        assert_eq!(
            book.apply(key.clone(), p.clone(), &east, 1_000),
            Ok(Applied::Created)
        );
        let version = book.set.get(&key).unwrap().version.clone();
        assert_eq!(
            book.apply(key.clone(), p, &east, 2_000),
            Ok(Applied::Unchanged)
        );
        assert_eq!(book.set.get(&key).unwrap().version, version);
        let (_, other) = policy("a", "north");
        assert_eq!(
            book.apply(key.clone(), other, &east, 3_000),
            Ok(Applied::Configured)
        );
        assert!(book.delete(&key, &east, 4_000));
        assert!(!book.delete(&key, &east, 5_000), "already deleted");
        let (_, again) = policy("a", "west");
        assert_eq!(book.apply(key, again, &east, 6_000), Ok(Applied::Created));
    }

    /// Two gateways that each changed policies while apart exchange digests and end with the
    /// same set; nothing is sent back to the side it came from.
    #[test]
    fn two_gateways_converge_after_a_digest_each() {
        let mut east = Side {
            name: cluster("east"),
            book: PolicyBook::default(),
        };
        let mut west = Side {
            name: cluster("west"),
            book: PolicyBook::default(),
        };
        let (a, pa) = policy("a", "west");
        let (b, pb) = policy("b", "east");
        let (c, pc) = policy("c", "north");
        east.book.apply(a.clone(), pa, &east.name, 1_000).unwrap();
        east.book
            .apply(c.clone(), pc.clone(), &east.name, 1_001)
            .unwrap();
        west.book.apply(b.clone(), pb, &west.name, 2_000).unwrap();
        west.book.apply(c.clone(), pc, &west.name, 500).unwrap();
        west.book.delete(&c, &west.name, 3_000);

        // east's side of the session with west, and west's with east.
        let mut east_x = PolicyExchange::default();
        let mut west_x = PolicyExchange::default();
        let west_name = west.name.clone();
        let east_name = east.name.clone();
        deliver(
            PolicyExchange::digest_frames(&east.book.set),
            &mut west_x,
            &mut west,
            &east_name,
        );
        deliver(
            PolicyExchange::digest_frames(&west.book.set),
            &mut east_x,
            &mut east,
            &west_name,
        );
        let to_west = east_x.outgoing(&east.book.set);
        let to_east = west_x.outgoing(&west.book.set);
        let west_changed = deliver(to_west, &mut west_x, &mut west, &east_name);
        let east_changed = deliver(to_east, &mut east_x, &mut east, &west_name);
        assert_eq!(west_changed, vec![a.clone()]);
        assert_eq!(east_changed, vec![b.clone(), c.clone()]);
        assert_eq!(east.book.set, west.book.set);
        let live: Vec<_> = east.book.set.live().map(|(k, _, _)| k.clone()).collect();
        assert_eq!(live, vec![a, b], "west deleted c after east applied it");
        // Each side already counts the other as holding everything: no echo.
        assert!(east_x.outgoing(&east.book.set).is_empty());
        assert!(west_x.outgoing(&west.book.set).is_empty());
    }

    /// A change made at one end of a chain of three reaches the other end through the middle.
    #[test]
    fn a_change_spreads_through_a_chain_of_gateways() {
        let names = ["east", "middle", "west"].map(cluster);
        let mut sides: Vec<Side> = names
            .iter()
            .map(|name| Side {
                name: name.clone(),
                book: PolicyBook::default(),
            })
            .collect();
        // Sessions east-middle and middle-west; each has an exchange per direction of view.
        let mut em = PolicyExchange::default(); // east's view of middle
        let mut me = PolicyExchange::default(); // middle's view of east
        let mut mw = PolicyExchange::default(); // middle's view of west
        let mut wm = PolicyExchange::default(); // west's view of middle
        // Everyone starts empty: each side's digest of its peer is empty and complete.
        for exchange in [&mut em, &mut me, &mut mw, &mut wm] {
            exchange
                .on_digest(wire::PolicyDigest {
                    versions: Vec::new(),
                    complete: true,
                })
                .unwrap();
        }
        let (key, p) = policy("no-west", "west");
        let east_name = names[0].clone();
        sides[0].book.apply(key.clone(), p, &east_name, 10).unwrap();
        let frames = em.outgoing(&sides[0].book.set);
        assert_eq!(frames.len(), 1);
        let changed = deliver(frames, &mut me, &mut sides[1], &names[0]);
        assert_eq!(changed, vec![key.clone()]);
        // The middle forwards news to its other peer, not back to east.
        assert!(me.outgoing(&sides[1].book.set).is_empty());
        let frames = mw.outgoing(&sides[1].book.set);
        deliver(frames, &mut wm, &mut sides[2], &names[1]);
        let at_west = sides[2].book.set.get(&key).unwrap();
        assert_eq!(at_west.version.origin, names[0]);
        assert!(at_west.body.is_some());
    }

    #[test]
    fn a_document_that_fails_its_checks_is_skipped_not_fatal() {
        let mut book = PolicyBook::default();
        let mut exchange = PolicyExchange::default();
        let (key, p) = policy("a", "west");
        let mut bad = p.document().clone();
        bad["spec"]["action"] = serde_json::json!("maybe");
        let good_version = Version {
            stamp: 7,
            origin: cluster("east"),
        };
        let entries = wire::PolicyEntries {
            entries: vec![
                wire::PolicyEntry {
                    version: Some(version_to_wire(&key, &good_version)),
                    document: bad.to_string(),
                },
                wire::PolicyEntry {
                    version: Some(version_to_wire(
                        &PolicyKey {
                            name: "b".into(),
                            ..key.clone()
                        },
                        &good_version,
                    )),
                    // The document of "a" under the key of "b": refused, not filed under b.
                    document: p.to_json(),
                },
            ],
        };
        let received = exchange
            .on_entries(entries, &mut book, &cluster("east"), NOW_MS)
            .unwrap();
        assert!(received.changed.is_empty());
        assert_eq!(received.refused.len(), 2);
        let text = received.refused[0].to_string();
        assert!(text.contains("spec.action"), "{text}");
        assert!(text.contains("peer east"), "{text}");
        assert!(
            received.refused[1]
                .to_string()
                .contains("not AuthorizationPolicy shop/b")
        );
        assert_eq!(book.set.len(), 0);

        // A kind from a newer strait is skipped; a kind that is not even a name is a
        // protocol violation.
        let of_kind = |kind: &str| wire::PolicyEntries {
            entries: vec![wire::PolicyEntry {
                version: Some(wire::PolicyVersion {
                    kind: kind.into(),
                    ..version_to_wire(&key, &good_version)
                }),
                document: String::new(),
            }],
        };
        let received = exchange
            .on_entries(of_kind("FuturePolicy"), &mut book, &cluster("east"), NOW_MS)
            .unwrap();
        assert!(
            received.refused[0].contains("not known here"),
            "{received:?}"
        );
        assert!(matches!(
            exchange.on_entries(of_kind("Se cret!"), &mut book, &cluster("east"), NOW_MS),
            Err(ExchangeError::BadKey { field: "kind", .. })
        ));
    }

    /// A stamp from far in the future would win over every change made anywhere, and could
    /// wrap the clock: it is refused, and the clock is untouched.
    #[test]
    fn an_adopted_policy_counts_only_when_newer_and_moves_the_clock() {
        let mut book = PolicyBook::default();
        let (key, older) = policy("api", "west");
        let (_, newer) = policy("api", "east");
        let now = 1_700_000_000_000;
        book.apply(key.clone(), newer.clone(), &cluster("east"), now)
            .unwrap();
        let held = book.set.get(&key).unwrap().version.clone();
        let stale = Version {
            stamp: held.stamp - 1,
            origin: cluster("west"),
        };
        assert!(!book.adopt(key.clone(), older.clone(), stale, now).unwrap());
        assert_eq!(book.set.get(&key).unwrap().body.as_ref(), Some(&newer));
        let later = Version {
            stamp: held.stamp + 10,
            origin: cluster("west"),
        };
        assert!(
            book.adopt(key.clone(), older.clone(), later.clone(), now)
                .unwrap()
        );
        assert_eq!(book.set.get(&key).unwrap().version, later);
        // A change made here afterwards is stamped after the adopted one.
        book.apply(key.clone(), newer, &cluster("east"), now)
            .unwrap();
        assert!(book.set.get(&key).unwrap().version.stamp > later.stamp);
        let future = Version {
            stamp: Clock::latest_acceptable(now) + 1,
            origin: cluster("west"),
        };
        assert!(!book.adopt(key, older, future, now).unwrap());
    }

    #[test]
    fn a_stamp_from_far_in_the_future_is_refused() {
        let mut book = PolicyBook::default();
        let mut exchange = PolicyExchange::default();
        let (key, p) = policy("a", "west");
        for stamp in [u64::MAX, Clock::latest_acceptable(NOW_MS) + 1] {
            let entries = wire::PolicyEntries {
                entries: vec![wire::PolicyEntry {
                    version: Some(version_to_wire(
                        &key,
                        &Version {
                            stamp,
                            origin: cluster("east"),
                        },
                    )),
                    document: p.to_json(),
                }],
            };
            let received = exchange
                .on_entries(entries, &mut book, &cluster("east"), NOW_MS)
                .unwrap();
            assert!(received.refused[0].contains("ahead"), "{received:?}");
        }
        assert!(book.set.is_empty());
        let west = cluster("west");
        book.apply(key.clone(), p, &west, NOW_MS).unwrap();
        assert!(book.set.get(&key).unwrap().version.stamp < Clock::latest_acceptable(NOW_MS));
        // Even a clock at the end of time does not wrap.
        let mut clock = Clock::default();
        clock.observe(u64::MAX);
        assert_eq!(clock.tick(NOW_MS), u64::MAX);
    }

    /// Tombstones older than the retention are dropped, live entries stay however old, and
    /// a peer that still holds a dropped tombstone cannot hand it back; a recent one it can.
    #[test]
    fn tombstones_past_the_retention_are_dropped_and_not_taken_back() {
        const DAY_MS: u64 = 86_400_000;
        let east = cluster("east");
        let mut book = PolicyBook {
            tombstone_retention_ms: 7 * DAY_MS,
            ..PolicyBook::default()
        };
        let (old_live, p_old) = policy("old-live", "west");
        let (old_gone, p_gone) = policy("old-gone", "west");
        let (new_gone, p_new) = policy("new-gone", "west");
        book.apply(old_live.clone(), p_old, &east, NOW_MS).unwrap();
        book.apply(old_gone.clone(), p_gone, &east, NOW_MS).unwrap();
        book.delete(&old_gone, &east, NOW_MS + 1);
        let later = NOW_MS + 8 * DAY_MS;
        book.apply(new_gone.clone(), p_new, &east, later).unwrap();
        book.delete(&new_gone, &east, later + 1);
        let held = book.set.clone();

        assert_eq!(book.compact(later + 2), 1);
        assert!(book.set.get(&old_gone).is_none());
        assert!(book.set.get(&new_gone).is_some_and(|e| e.body.is_none()));
        assert!(book.set.get(&old_live).is_some_and(|e| e.body.is_some()));
        assert_eq!(book.compact(later + 3), 0);

        // A peer that kept everything sends the set back in full.
        let mut exchange = PolicyExchange::default();
        let entries = wire::PolicyEntries {
            entries: held
                .entries()
                .map(|(key, entry)| wire::PolicyEntry {
                    version: Some(version_to_wire(key, &entry.version)),
                    document: entry.body.as_ref().map(Policy::to_json).unwrap_or_default(),
                })
                .collect(),
        };
        let received = exchange
            .on_entries(entries, &mut book, &cluster("west"), later + 3)
            .unwrap();
        assert!(received.changed.is_empty(), "{received:?}");
        assert_eq!(received.known, 3);
        assert!(book.set.get(&old_gone).is_none());

        // Kept for good when the retention is 0.
        let mut forever = PolicyBook {
            set: held,
            ..PolicyBook::default()
        };
        assert_eq!(forever.compact(u64::MAX / 2), 0);
        assert_eq!(forever.set.len(), 3);
    }

    #[test]
    fn a_large_set_travels_in_frames_of_bounded_size() {
        let mut book = PolicyBook::default();
        let east = cluster("east");
        for i in 0..3_000 {
            let (key, p) = policy(&format!("p{i}"), "west");
            book.apply(key, p, &east, i).unwrap();
        }
        let digest = PolicyExchange::digest_frames(&book.set);
        let mut exchange = PolicyExchange::default();
        exchange
            .on_digest(wire::PolicyDigest {
                versions: Vec::new(),
                complete: true,
            })
            .unwrap();
        let entries = exchange.outgoing(&book.set);
        assert!(entries.len() > 1, "split into several frames");
        for frame in digest.iter().chain(&entries) {
            assert!(frame.encoded_len() < 2 * TARGET_FRAME);
        }
        let mut other = PolicyBook::default();
        let mut receiving = PolicyExchange::default();
        for frame in entries {
            let Some(Body::PolicyEntries(e)) = frame.body else {
                panic!("entries expected")
            };
            receiving.on_entries(e, &mut other, &east, NOW_MS).unwrap();
        }
        assert_eq!(other.set, book.set);
    }
}

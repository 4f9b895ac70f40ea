//! Replication of policy: last-writer-wins per policy. Every change carries a [`Version`] (a
//! hybrid logical clock stamp and the cluster that made it); a gateway keeps, for each policy,
//! the entry with the highest version, deletions included (as tombstones). Merging is
//! commutative, associative and idempotent, so gateways that exchanged the same entries hold
//! the same set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::ClusterName;

/// The version of one change: a hybrid logical clock stamp, then the cluster that made it (so
/// two changes made at the same stamp in two clusters still have an order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub stamp: u64,
    pub origin: ClusterName,
}

/// A hybrid logical clock: stamps follow wall-clock milliseconds, yet always grow, and a
/// gateway that saw a stamp from the future stamps its next change after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    last: u64,
}

/// Stamps carry milliseconds in the high bits and a counter in the low 16.
const COUNTER_BITS: u32 = 16;
/// How far ahead of this gateway's clock a peer's stamp may be (an hour).
pub const MAX_SKEW_MS: u64 = 3_600_000;

impl Clock {
    /// A stamp for a change made now (`now_ms`: Unix milliseconds).
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        let physical = now_ms.saturating_mul(1 << COUNTER_BITS);
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// The latest stamp a gateway accepts from a peer at `now_ms`: one from further in the
    /// future (a peer's clock far ahead, or a forged stamp) would win over every change made
    /// anywhere until the real clocks caught up.
    pub fn latest_acceptable(now_ms: u64) -> u64 {
        Self::stamp_at(now_ms.saturating_add(MAX_SKEW_MS))
    }

    /// The lowest stamp a change made at `now_ms` can have.
    pub fn stamp_at(now_ms: u64) -> u64 {
        now_ms.saturating_mul(1 << COUNTER_BITS)
    }

    /// Takes note of a stamp received from a peer.
    pub fn observe(&mut self, stamp: u64) {
        self.last = self.last.max(stamp);
    }
}

/// One policy's latest known state: its body, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub version: Version,
    /// `None`: deleted at `version`.
    pub body: Option<T>,
}

/// The replicated set: for each key, the entry with the highest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet<K: Ord, T> {
    /// Written as a list of pairs: keys are structures, which JSON maps cannot hold.
    #[serde(with = "crate::catalog::map_as_list")]
    #[serde(bound(
        serialize = "K: Serialize, T: Serialize",
        deserialize = "K: Deserialize<'de>, T: Deserialize<'de>"
    ))]
    entries: BTreeMap<K, Entry<T>>,
}

impl<K: Ord, T> Default for PolicySet<K, T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, T: Clone + PartialEq> PolicySet<K, T> {
    /// Merges one entry; whether it changed the set (then it is news for other peers).
    pub fn merge(&mut self, key: K, entry: Entry<T>) -> bool {
        match self.entries.get(&key) {
            Some(held) if held.version >= entry.version => false,
            _ => {
                self.entries.insert(key, entry);
                true
            }
        }
    }

    /// Forgets a key altogether (a tombstone dropped, as a journal replays it).
    pub fn remove(&mut self, key: &K) -> Option<Entry<T>> {
        self.entries.remove(key)
    }

    /// The entry held for a key, tombstone or not.
    pub fn get(&self, key: &K) -> Option<&Entry<T>> {
        self.entries.get(key)
    }

    /// How many entries the set holds, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the tombstones stamped before `stamp` (live entries stay, however old); how many.
    pub fn drop_tombstones_before(&mut self, stamp: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.body.is_some() || e.version.stamp >= stamp);
        before - self.entries.len()
    }

    /// How many live policies the set holds.
    pub fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.body.is_some()).count()
    }

    /// The live policies (tombstones left out).
    pub fn live(&self) -> impl Iterator<Item = (&K, &T, &Version)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| Some((k, e.body.as_ref()?, &e.version)))
    }

    /// Every entry, tombstones included: what a peer that knows nothing needs.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &Entry<T>)> {
        self.entries.iter()
    }

    /// The entries a peer lacks, given the versions it holds.
    pub fn newer_than<'a, 'h>(
        &'a self,
        held: &'h BTreeMap<K, Version>,
    ) -> impl Iterator<Item = (&'a K, &'a Entry<T>)> + use<'a, 'h, K, T> {
        self.entries
            .iter()
            .filter(move |(k, e)| held.get(*k).is_none_or(|v| *v < e.version))
    }

    /// The version held for each key: what this gateway tells a peer it has.
    pub fn digest(&self) -> BTreeMap<K, Version> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.version.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_always_grows_and_follows_what_it_saw() {
        let mut clock = Clock::default();
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(999);
        assert!(a < b && b < c);
        clock.observe(5_000 << COUNTER_BITS);
        assert!(clock.tick(1_001) > 5_000 << COUNTER_BITS);
    }

    /// Three gateways receive the same changes in every order, with duplicates: they end with
    /// the same set.
    #[test]
    fn merging_in_any_order_converges() {
        let version = |stamp: u64, origin: &str| Version {
            stamp,
            origin: ClusterName::new(origin).unwrap(),
        };
        let changes: Vec<(&str, Entry<u32>)> = vec![
            (
                "a",
                Entry {
                    version: version(1, "east"),
                    body: Some(1),
                },
            ),
            (
                "a",
                Entry {
                    version: version(3, "west"),
                    body: Some(2),
                },
            ),
            (
                "a",
                Entry {
                    version: version(3, "east"),
                    body: None,
                },
            ),
            (
                "b",
                Entry {
                    version: version(2, "west"),
                    body: Some(5),
                },
            ),
            (
                "b",
                Entry {
                    version: version(2, "west"),
                    body: Some(5),
                },
            ),
            (
                "c",
                Entry {
                    version: version(9, "north"),
                    body: None,
                },
            ),
        ];
        let mut reference: Option<PolicySet<&str, u32>> = None;
        // Every rotation and its reverse: enough orders to catch an order-dependent merge.
        for start in 0..changes.len() {
            for reverse in [false, true] {
                let mut order: Vec<_> = changes[start..].iter().chain(&changes[..start]).collect();
                if reverse {
                    order.reverse();
                }
                let mut set = PolicySet::default();
                for (key, entry) in order {
                    set.merge(*key, entry.clone());
                }
                match &reference {
                    None => reference = Some(set),
                    Some(first) => assert_eq!(first, &set),
                }
            }
        }
        let set = reference.unwrap();
        let live: Vec<_> = set.live().map(|(k, v, _)| (*k, *v)).collect();
        assert_eq!(
            live,
            vec![("a", 2), ("b", 5)],
            "west's later write wins over east's delete at the same stamp"
        );
        // A peer holding a's old version and nothing else lacks a's new one, b and c's tombstone.
        let held = BTreeMap::from([("a", version(1, "east"))]);
        let lacking: Vec<_> = set.newer_than(&held).map(|(k, _)| *k).collect();
        assert_eq!(lacking, vec!["a", "b", "c"]);
        assert!(set.newer_than(&set.digest()).next().is_none());
    }
}

//! Virtual addresses for the zone's names: one per name, from a configured range, never two
//! names on one address, and the same address for a name across catalog changes and gateway
//! restarts. The first choice for a name is a hash of it (so even a lost file mostly gives the
//! same addresses); a collision takes the next free one; the choices are kept in a file.
//! A name that leaves the catalog keeps its address for a day (apps cache answers longer than
//! their TTL), unless the range runs out, when the longest-gone is reused first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// How long a released address stays reserved for its name, in seconds.
pub const HOLD_SECONDS: u64 = 24 * 3600;
/// Ranges larger than this many addresses are used only up to it.
const MAX_SIZE: u64 = 1 << 24;

pub use strait_federation::cidr::CidrRange;

/// How many addresses of a range are handed out: all but the first and the last, and at most
/// [`MAX_SIZE`].
fn usable(range: &CidrRange) -> u64 {
    let size = if range.host_bits() >= 24 {
        MAX_SIZE
    } else {
        1u64 << range.host_bits()
    };
    size - 2
}

/// The index of an address among a range's usable ones.
fn index_of(range: &CidrRange, address: IpAddr) -> Option<u64> {
    range
        .offset_of(address)
        .filter(|index| (1..=usable(range)).contains(index))
}

/// The virtual addresses of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vips {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Assignment {
    v4: u64,
    v6: Option<u64>,
    /// When the name left the catalog (unix seconds); `None` while it is in it.
    released: Option<u64>,
}

/// One family's taken addresses.
#[derive(Debug, Clone, Default)]
struct Taken(HashSet<u64>);

/// The addresses given to names.
#[derive(Debug, Clone)]
pub struct VipPool {
    v4: CidrRange,
    v6: Option<CidrRange>,
    names: HashMap<String, Assignment>,
    taken4: Taken,
    taken6: Taken,
    /// Set when an assignment was made or dropped since the last `take_changed`.
    changed: bool,
    now: u64,
}

/// How a pool is kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolFile {
    pub names: Vec<PoolEntry>,
}

/// One name's addresses on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolEntry {
    pub name: String,
    pub v4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u64>,
}

/// FNV-1a: a hash that stays the same across builds and versions (the std hasher does not
/// promise that), so a name's first-choice address never moves.
fn stable_hash(name: &str, seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

impl Taken {
    /// The first free index from the name's hash on, if any.
    fn probe(&self, range: &CidrRange, name: &str, seed: u64) -> Option<u64> {
        let usable = usable(range);
        if self.0.len() as u64 >= usable {
            return None;
        }
        let start = stable_hash(name, seed) % usable;
        (0..usable)
            .map(|step| (start + step) % usable + 1)
            .find(|index| !self.0.contains(index))
    }
}

impl VipPool {
    /// An empty pool over these ranges.
    pub fn new(v4: CidrRange, v6: Option<CidrRange>) -> Self {
        Self {
            v4,
            v6,
            names: HashMap::new(),
            taken4: Taken::default(),
            taken6: Taken::default(),
            changed: false,
            now: 0,
        }
    }

    /// A pool with the assignments of a file; those outside the ranges (changed since) or
    /// clashing with an earlier one are dropped, to be assigned again.
    pub fn with_file(v4: CidrRange, v6: Option<CidrRange>, file: PoolFile) -> Self {
        let mut pool = Self::new(v4, v6);
        for entry in file.names {
            let Some(index4) = index_of(&v4, IpAddr::V4(entry.v4)) else {
                pool.changed = true;
                continue;
            };
            let index6 = match (v6, entry.v6) {
                (Some(range), Some(address)) => {
                    index_of(&range, IpAddr::V6(address)).filter(|i| !pool.taken6.0.contains(i))
                }
                _ => None,
            };
            if pool.taken4.0.contains(&index4) || (v6.is_some() && index6.is_none()) {
                pool.changed = true;
                if pool.taken4.0.contains(&index4) {
                    continue;
                }
            }
            pool.taken4.0.insert(index4);
            if let Some(index6) = index6 {
                pool.taken6.0.insert(index6);
            }
            pool.names.insert(
                entry.name,
                Assignment {
                    v4: index4,
                    v6: index6,
                    released: entry.released,
                },
            );
        }
        pool
    }

    /// The pool as kept on disk, sorted by name.
    pub fn to_file(&self) -> PoolFile {
        let mut names: Vec<PoolEntry> = self
            .names
            .iter()
            .map(|(name, assignment)| PoolEntry {
                name: name.clone(),
                v4: self.vips(assignment).v4,
                v6: self.vips(assignment).v6,
                released: assignment.released,
            })
            .collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        PoolFile { names }
    }

    /// Sets the clock used for releases (unix seconds).
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Whether assignments changed since the last call (then they should be written).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// How many names hold an address (released ones included).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name holds an address.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn vips(&self, assignment: &Assignment) -> Vips {
        let v4 = match self.v4.nth(assignment.v4) {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let v6 = match (self.v6, assignment.v6) {
            (Some(range), Some(index)) => match range.nth(index) {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            },
            _ => None,
        };
        Vips { v4, v6 }
    }

    /// The addresses of a name, assigning them on first sight; `None` when the range is full
    /// of names still in use.
    pub fn assign(&mut self, name: &str) -> Option<Vips> {
        if let Some(assignment) = self.names.get_mut(name) {
            if assignment.released.take().is_some() {
                self.changed = true;
            }
            let needs_v6 = self.v6.is_some() && assignment.v6.is_none();
            let assignment = assignment.clone();
            if needs_v6 && let Some(range) = self.v6 {
                if let Some(index) = self.taken6.probe(&range, name, 6) {
                    self.taken6.0.insert(index);
                    if let Some(entry) = self.names.get_mut(name) {
                        entry.v6 = Some(index);
                    }
                    self.changed = true;
                }
                return self.names.get(name).map(|a| self.vips(a));
            }
            return Some(self.vips(&assignment));
        }
        let v4 = match self.taken4.probe(&self.v4, name, 4) {
            Some(index) => index,
            None => {
                self.evict_oldest_released()?;
                self.taken4.probe(&self.v4, name, 4)?
            }
        };
        self.taken4.0.insert(v4);
        let v6 = self.v6.and_then(|range| {
            let index = self.taken6.probe(&range, name, 6)?;
            self.taken6.0.insert(index);
            Some(index)
        });
        let assignment = Assignment {
            v4,
            v6,
            released: None,
        };
        let vips = self.vips(&assignment);
        self.names.insert(name.to_owned(), assignment);
        self.changed = true;
        Some(vips)
    }

    /// Frees the address of the name released longest ago.
    fn evict_oldest_released(&mut self) -> Option<()> {
        let (name, _) = self
            .names
            .iter()
            .filter_map(|(name, a)| Some((name, a.released?)))
            .min_by_key(|(_, released)| *released)?;
        let name = name.clone();
        self.remove(&name);
        Some(())
    }

    fn remove(&mut self, name: &str) {
        if let Some(assignment) = self.names.remove(name) {
            self.taken4.0.remove(&assignment.v4);
            if let Some(v6) = assignment.v6 {
                self.taken6.0.remove(&v6);
            }
            self.changed = true;
        }
    }

    /// Marks every name not in `live` as released (now), and frees those released longer
    /// than [`HOLD_SECONDS`] ago.
    pub fn retain_live<'a>(&mut self, live: impl IntoIterator<Item = &'a str>) {
        let live: HashSet<&str> = live.into_iter().collect();
        let now = self.now;
        for (name, assignment) in &mut self.names {
            if !live.contains(name.as_str()) && assignment.released.is_none() {
                assignment.released = Some(now);
                self.changed = true;
            }
        }
        self.expire();
    }

    /// Marks these names released (now), and frees those released longer than
    /// [`HOLD_SECONDS`] ago: [`VipPool::retain_live`] for names known to have left.
    pub fn release<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let now = self.now;
        let mut any = false;
        for name in names {
            if let Some(assignment) = self.names.get_mut(name)
                && assignment.released.is_none()
            {
                assignment.released = Some(now);
                self.changed = true;
                any = true;
            }
        }
        if any {
            self.expire();
        }
    }

    /// Frees the addresses of names released longer than [`HOLD_SECONDS`] ago.
    fn expire(&mut self) {
        let now = self.now;
        let expired: Vec<String> = self
            .names
            .iter()
            .filter(|(_, a)| {
                a.released
                    .is_some_and(|at| now.saturating_sub(at) > HOLD_SECONDS)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> CidrRange {
        CidrRange::parse(text).unwrap()
    }

    #[test]
    fn the_first_and_last_address_and_what_passes_the_cap_are_not_handed_out() {
        assert_eq!(usable(&range("10.9.0.0/30")), 2);
        assert_eq!(
            index_of(&range("10.9.0.0/30"), "10.9.0.0".parse().unwrap()),
            None
        );
        assert_eq!(
            index_of(&range("10.9.0.0/30"), "10.9.0.3".parse().unwrap()),
            None
        );
        assert_eq!(
            index_of(&range("10.9.0.0/30"), "10.9.0.2".parse().unwrap()),
            Some(2)
        );
        assert_eq!(usable(&range("10.0.0.0/8")), MAX_SIZE - 2);
    }

    #[test]
    fn a_name_keeps_its_address_and_no_two_names_share_one() {
        let mut pool = VipPool::new(range("10.9.0.0/28"), Some(range("fd00::/124")));
        let names: Vec<String> = (0..14).map(|i| format!("s{i}.shop.svc")).collect();
        let first: Vec<Vips> = names.iter().map(|n| pool.assign(n).unwrap()).collect();
        let unique: HashSet<_> = first.iter().map(|v| v.v4).collect();
        assert_eq!(unique.len(), 14, "14 names fill the 14 usable addresses");
        assert!(
            pool.assign("one-more.shop.svc").is_none(),
            "the range is full"
        );
        for (name, vips) in names.iter().zip(&first) {
            assert_eq!(pool.assign(name), Some(*vips));
            assert!(vips.v6.is_some());
        }
    }

    #[test]
    fn assignments_survive_a_restart_whatever_the_order() {
        let mut pool = VipPool::new(range("10.9.0.0/24"), None);
        let names: Vec<String> = (0..200).map(|i| format!("s{i}.shop.svc")).collect();
        let before: Vec<Vips> = names.iter().map(|n| pool.assign(n).unwrap()).collect();
        assert!(pool.take_changed());
        let file = serde_json::to_string(&pool.to_file()).unwrap();
        let mut again = VipPool::with_file(
            range("10.9.0.0/24"),
            None,
            serde_json::from_str(&file).unwrap(),
        );
        for (name, vips) in names.iter().zip(&before).rev() {
            assert_eq!(again.assign(name), Some(*vips), "{name}");
        }
        assert!(!again.take_changed(), "nothing new to write");
    }

    #[test]
    fn a_released_name_holds_its_address_until_the_range_needs_it() {
        let mut pool = VipPool::new(range("10.9.0.0/29"), None);
        pool.set_now(1_000);
        let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        let before: Vec<Vips> = names.iter().map(|n| pool.assign(n).unwrap()).collect();
        pool.retain_live(names[1..].iter().map(String::as_str));
        pool.set_now(2_000);
        // s0 is gone but keeps its address: a seventh name finds the range full but for it.
        let newcomer = pool.assign("s6").unwrap();
        assert_eq!(newcomer.v4, before[0].v4, "the released address is reused");
        assert!(pool.assign("s7").is_none());
        // A name that comes back within the hold time gets its old address.
        let mut pool = VipPool::new(range("10.9.0.0/24"), None);
        pool.set_now(0);
        let vips = pool.assign("s0").unwrap();
        pool.retain_live([]);
        pool.set_now(HOLD_SECONDS);
        pool.assign("s1").unwrap();
        assert_eq!(pool.assign("s0"), Some(vips));
        // Past the hold time it is freed.
        pool.retain_live([]);
        pool.set_now(3 * HOLD_SECONDS);
        pool.retain_live([]);
        assert!(pool.is_empty());
    }

    #[test]
    fn a_file_from_another_range_is_assigned_again() {
        let mut pool = VipPool::new(range("10.9.0.0/24"), None);
        pool.assign("a").unwrap();
        let file = pool.to_file();
        let mut moved = VipPool::with_file(range("10.10.0.0/24"), None, file);
        assert!(moved.take_changed());
        assert!(moved.is_empty());
        let vips = moved.assign("a").unwrap();
        assert!(range("10.10.0.0/24").contains(IpAddr::V4(vips.v4)));
    }
}

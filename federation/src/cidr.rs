//! Address ranges in CIDR form (`240.240.0.0/16`, `fd00:5354::/112`): parsed and checked
//! once, then asked whether they hold an address, or for their n-th address. The gateway hands
//! out virtual addresses from such ranges; sidecars recognise addresses of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range in CIDR form (`240.240.0.0/16`, `fd00:5354::/112`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    base: u128,
    prefix: u8,
    v6: bool,
}

/// Why a range did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{text:?}: expected ADDRESS/PREFIX, like 240.240.0.0/16")]
    Shape { text: String },
    #[error("{text:?}: {address:?} is not an IP address")]
    Address { text: String, address: String },
    #[error("{text:?}: {prefix:?} is not a prefix length")]
    Prefix { text: String, prefix: String },
    #[error("{text:?}: a prefix of at most /{max} is needed (at least 4 addresses)")]
    TooNarrow { text: String, max: u8 },
    #[error("{text:?}: host bits are set; the range starts at {start}")]
    HostBits { text: String, start: IpAddr },
}

impl CidrRange {
    /// Parses `address/prefix`; the range must hold at least 4 addresses.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (address, prefix) = text.split_once('/').ok_or_else(|| CidrError::Shape {
            text: text.to_owned(),
        })?;
        let address: IpAddr = address.parse().map_err(|_| CidrError::Address {
            text: text.to_owned(),
            address: address.to_owned(),
        })?;
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Prefix {
            text: text.to_owned(),
            prefix: prefix.to_owned(),
        })?;
        let (base, bits, v6) = match address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32, false),
            IpAddr::V6(v6) => (u128::from(v6), 128, true),
        };
        if prefix > bits - 2 {
            return Err(CidrError::TooNarrow {
                text: text.to_owned(),
                max: bits - 2,
            });
        }
        let host_bits = u32::from(bits - prefix);
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if base & mask != 0 {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                start: Self::render(base & !mask, v6),
            });
        }
        Ok(Self { base, prefix, v6 })
    }

    fn render(value: u128, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(value))
        } else {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        }
    }

    /// Whether it is an IPv6 range.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// How many bits of an address the range leaves free.
    pub fn host_bits(&self) -> u32 {
        let bits = if self.v6 { 128 } else { 32 };
        u32::from(bits - self.prefix)
    }

    /// The address `offset` places after the range's first.
    pub fn nth(&self, offset: u64) -> IpAddr {
        Self::render(self.base + u128::from(offset), self.v6)
    }

    /// How far an address of the range is from its first; `None` outside the range.
    pub fn offset_of(&self, address: IpAddr) -> Option<u64> {
        let value = match (address, self.v6) {
            (IpAddr::V4(v4), false) => u128::from(u32::from(v4)),
            (IpAddr::V6(v6), true) => u128::from(v6),
            _ => return None,
        };
        if !self.contains(address) {
            return None;
        }
        u64::try_from(value - self.base).ok()
    }

    /// Whether an address is in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        let host_bits = self.host_bits();
        let value = match (address, self.v6) {
            (IpAddr::V4(v4), false) => u128::from(u32::from(v4)),
            (IpAddr::V6(v6), true) => u128::from(v6),
            _ => return false,
        };
        host_bits >= 128 || value >> host_bits == self.base >> host_bits
    }
}

impl std::fmt::Display for CidrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Self::render(self.base, self.v6), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> CidrRange {
        CidrRange::parse(text).unwrap()
    }

    #[test]
    fn ranges_are_parsed_checked_and_asked() {
        assert_eq!(range("240.240.0.0/16").to_string(), "240.240.0.0/16");
        assert_eq!(range("fd00:5354::/112").to_string(), "fd00:5354::/112");
        assert!(range("fd00:5354::/112").is_v6() && !range("240.240.0.0/16").is_v6());
        for (bad, says) in [
            ("240.240.0.0", "ADDRESS/PREFIX"),
            ("240.240.0.1/16", "host bits"),
            ("240.240.0.0/31", "at least 4"),
            ("nope/16", "not an IP"),
        ] {
            let err = CidrRange::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let r = range("10.9.0.0/30");
        assert_eq!(r.host_bits(), 2);
        assert!(r.contains("10.9.0.3".parse().unwrap()));
        assert!(!r.contains("10.9.0.4".parse().unwrap()));
        assert!(!r.contains("fd00::1".parse().unwrap()));
        assert_eq!(r.nth(3), "10.9.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(r.offset_of("10.9.0.3".parse().unwrap()), Some(3));
        assert_eq!(r.offset_of("10.9.0.4".parse().unwrap()), None);
    }
}

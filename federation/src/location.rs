//! Where a cluster runs: its cloud, region and zone, as operators write them (`aws`,
//! `us-east-1`, `us-east-1a`). Gateways tell each other theirs when they link; sidecars use them
//! to prefer, after their own cluster, clusters of the same region, then of the same cloud,
//! before the rest of the mesh.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A cluster's place; every part is optional (empty when unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Location {
    pub cloud: String,
    pub region: String,
    pub zone: String,
}

/// How close another cluster is, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Closeness {
    SameRegion,
    SameCloud,
    Elsewhere,
}

/// Why the parts of a location were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("{what} {value:?}: expected a lower-case label (a-z, 0-9, -) of at most 63 characters")]
    Label { what: &'static str, value: String },
    #[error("a region needs its cloud")]
    RegionWithoutCloud,
}

impl Location {
    /// Checks the parts: each empty or a lower-case label of at most 63 characters.
    pub fn new(cloud: &str, region: &str, zone: &str) -> Result<Self, LocationError> {
        for (what, value) in [("cloud", cloud), ("region", region), ("zone", zone)] {
            let valid = value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(LocationError::Label {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        if !region.is_empty() && cloud.is_empty() {
            return Err(LocationError::RegionWithoutCloud);
        }
        Ok(Self {
            cloud: cloud.into(),
            region: region.into(),
            zone: zone.into(),
        })
    }

    /// How close `other` is to this location. Unknown parts never count as the same.
    pub fn closeness(&self, other: &Location) -> Closeness {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        if same(&self.cloud, &other.cloud) && same(&self.region, &other.region) {
            Closeness::SameRegion
        } else if same(&self.cloud, &other.cloud) {
            Closeness::SameCloud
        } else {
            Closeness::Elsewhere
        }
    }

    /// Whether nothing is known.
    pub fn is_unknown(&self) -> bool {
        self.cloud.is_empty() && self.region.is_empty() && self.zone.is_empty()
    }

    /// Whether this location is within `pattern`: `cloud`, `cloud/region` or
    /// `cloud/region/zone` (`aws` holds every AWS location). An unknown location is within none.
    pub fn within(&self, pattern: &str) -> bool {
        let wanted = pattern.split('/');
        !self.is_unknown()
            && wanted.clone().count() <= 3
            && wanted
                .zip([&self.cloud, &self.region, &self.zone])
                .all(|(want, have)| want == have)
    }

    /// Whether `pattern` is a location pattern: `cloud`, `cloud/region` or
    /// `cloud/region/zone`, each part a label as [`Location::new`] takes it.
    pub fn valid_pattern(pattern: &str) -> bool {
        let parts: Vec<&str> = pattern.split('/').collect();
        (1..=3).contains(&parts.len())
            && parts.iter().all(|p| !p.is_empty())
            && Location::new(
                parts[0],
                parts.get(1).copied().unwrap_or_default(),
                parts.get(2).copied().unwrap_or_default(),
            )
            .is_ok()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = [&self.cloud, &self.region, &self.zone]
            .into_iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        f.write_str(&parts.join("/"))
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Parts {
            #[serde(default)]
            cloud: String,
            #[serde(default)]
            region: String,
            #[serde(default)]
            zone: String,
        }
        let parts = Parts::deserialize(deserializer)?;
        Location::new(&parts.cloud, &parts.region, &parts.zone).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_ranked_by_region_then_cloud() {
        let here = Location::new("aws", "us-east-1", "us-east-1a").unwrap();
        let near = Location::new("aws", "us-east-1", "us-east-1b").unwrap();
        let same_cloud = Location::new("aws", "eu-west-1", "").unwrap();
        let other = Location::new("gcp", "us-east1", "").unwrap();
        assert_eq!(here.closeness(&near), Closeness::SameRegion);
        assert_eq!(here.closeness(&same_cloud), Closeness::SameCloud);
        assert_eq!(here.closeness(&other), Closeness::Elsewhere);
        assert_eq!(
            Location::default().closeness(&Location::default()),
            Closeness::Elsewhere
        );
        assert!(Location::new("AWS", "", "").is_err());
        assert!(Location::new("", "us-east-1", "").is_err());
        assert_eq!(here.to_string(), "aws/us-east-1/us-east-1a");
    }

    #[test]
    fn a_location_is_within_its_cloud_region_and_zone_only() {
        let here = Location::new("aws", "us-east-1", "us-east-1a").unwrap();
        for pattern in ["aws", "aws/us-east-1", "aws/us-east-1/us-east-1a"] {
            assert!(here.within(pattern), "{pattern}");
        }
        for pattern in [
            "gcp",
            "aws/us-east-10",
            "aws/us-east",
            "aws/us-east-1/us-east-1b",
            "aws/us-east-1/us-east-1a/x",
        ] {
            assert!(!here.within(pattern), "{pattern}");
        }
        assert!(!Location::default().within("aws"));
        assert!(Location::valid_pattern("gcp/europe-west1"));
        for bad in ["", "gcp//x", "a/b/c/d", "AWS", "/us-east-1"] {
            assert!(!Location::valid_pattern(bad), "{bad:?}");
        }
    }
}

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

impl Location {
    /// Checks the parts: each empty or a lower-case label of at most 63 characters.
    pub fn new(cloud: &str, region: &str, zone: &str) -> Result<Self, String> {
        for (what, value) in [("cloud", cloud), ("region", region), ("zone", zone)] {
            let valid = value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(format!(
                    "{what} {value:?}: expected a lower-case label (a-z, 0-9, -) of at most 63 characters"
                ));
            }
        }
        if !region.is_empty() && cloud.is_empty() {
            return Err("a region needs its cloud".into());
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
}

//! FailoverPolicy: the order in which a service's clusters are tried, for one service. Without
//! one, a caller's sidecar prefers its own cluster, then clusters of its region, then of its
//! cloud, then the rest of the mesh. A FailoverPolicy names its own tiers (its own cluster,
//! named clusters, locations, or the caller's region or cloud) and says whether the clusters it
//! does not name come after them or never. The first tier with a usable endpoint takes all of
//! the service's traffic; within a tier, requests are balanced by latency.

use serde::{Deserialize, Serialize};

use super::common::{PolicyMetadata, TargetRef, check_api_version};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{ClusterName, Namespace, ServiceName};
use crate::location::{Closeness, Location};

/// A part of the mesh relative to the caller's cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The caller's own cluster.
    Cluster,
    /// Other clusters of the caller's cloud and region.
    Region,
    /// Other clusters of the caller's cloud.
    Cloud,
}

/// One tier: the clusters it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    Scope(Scope),
    Clusters(Vec<ClusterName>),
    /// `cloud`, `cloud/region` or `cloud/region/zone`.
    Locations(Vec<String>),
}

/// What happens to clusters that no tier holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    /// Tried after every tier, in the default order (own cluster, region, cloud, the rest).
    #[default]
    Last,
    /// Never tried.
    Never,
}

/// A checked FailoverPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub namespace: Namespace,
    pub name: String,
    pub service: ServiceName,
    pub order: Vec<Tier>,
    pub unlisted: Unlisted,
}

/// Tiers of the default order: own cluster, same region, same cloud, the rest.
pub const DEFAULT_TIERS: usize = 4;

/// The tier of a cluster in the default order (0 to 3).
pub fn default_rank(
    here: &ClusterName,
    here_at: &Location,
    cluster: &ClusterName,
    at: &Location,
) -> usize {
    if cluster == here {
        return 0;
    }
    match here_at.closeness(at) {
        Closeness::SameRegion => 1,
        Closeness::SameCloud => 2,
        Closeness::Elsewhere => 3,
    }
}

impl Failover {
    /// How many tiers a caller sorts targets into under this policy.
    pub fn tiers(&self) -> usize {
        self.order.len()
            + match self.unlisted {
                Unlisted::Last => DEFAULT_TIERS,
                Unlisted::Never => 0,
            }
    }

    /// The tier of `cluster` (running at `at`) for a caller in `here` (running at `here_at`):
    /// the first that holds it, or after them all in the default order; `None`: never tried.
    pub fn rank(
        &self,
        here: &ClusterName,
        here_at: &Location,
        cluster: &ClusterName,
        at: &Location,
    ) -> Option<usize> {
        let closeness = (cluster != here).then(|| here_at.closeness(at));
        let holds = |tier: &Tier| match tier {
            Tier::Scope(Scope::Cluster) => cluster == here,
            Tier::Scope(Scope::Region) => closeness == Some(Closeness::SameRegion),
            Tier::Scope(Scope::Cloud) => {
                matches!(
                    closeness,
                    Some(Closeness::SameRegion | Closeness::SameCloud)
                )
            }
            Tier::Clusters(names) => names.contains(cluster),
            Tier::Locations(patterns) => patterns.iter().any(|p| at.within(p)),
        };
        self.order
            .iter()
            .position(holds)
            .or_else(|| match self.unlisted {
                Unlisted::Last => Some(self.order.len() + default_rank(here, here_at, cluster, at)),
                Unlisted::Never => None,
            })
    }
}

/// The most tiers of one policy, and clusters or locations of one tier.
pub const MAX_TIERS: usize = 16;
/// See [`MAX_TIERS`].
pub const MAX_TIER_ENTRIES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FailoverDocument {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: FailoverSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FailoverSpec {
    target_ref: TargetRef,
    order: Vec<TierDocument>,
    #[serde(default)]
    unlisted: Unlisted,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierDocument {
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    clusters: Option<Vec<String>>,
    #[serde(default)]
    locations: Option<Vec<String>>,
}

/// Parses and checks a FailoverPolicy document. Errors name the document and the field.
pub fn failover(
    document: serde_json::Value,
    place: &DocumentPlace,
) -> Result<Failover, DocumentError> {
    let document: FailoverDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let service = document.spec.target_ref.required_service(place)?;
    if document.spec.order.is_empty() || document.spec.order.len() > MAX_TIERS {
        return Err(field(
            place,
            "spec.order",
            format!("expected 1 to {MAX_TIERS} tiers"),
        ));
    }
    let mut order = Vec::with_capacity(document.spec.order.len());
    for (i, tier) in document.spec.order.into_iter().enumerate() {
        let at = format!("spec.order[{i}]");
        let entries = |values: &Vec<String>, what: &str| {
            if values.is_empty() || values.len() > MAX_TIER_ENTRIES {
                Err(field(
                    place,
                    format!("{at}.{what}"),
                    format!("expected 1 to {MAX_TIER_ENTRIES} entries"),
                ))
            } else {
                Ok(())
            }
        };
        order.push(match (tier.scope, tier.clusters, tier.locations) {
            (Some(scope), None, None) => Tier::Scope(scope),
            (None, Some(clusters), None) => {
                entries(&clusters, "clusters")?;
                Tier::Clusters(
                    clusters
                        .into_iter()
                        .enumerate()
                        .map(|(j, c)| {
                            ClusterName::new(c).map_err(|e| {
                                field(place, format!("{at}.clusters[{j}]"), e.to_string())
                            })
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            (None, None, Some(locations)) => {
                entries(&locations, "locations")?;
                for (j, location) in locations.iter().enumerate() {
                    if !Location::valid_pattern(location) {
                        return Err(field(
                            place,
                            format!("{at}.locations[{j}]"),
                            format!("{location:?}: expected cloud, cloud/region or cloud/region/zone"),
                        ));
                    }
                }
                Tier::Locations(locations)
            }
            _ => {
                return Err(field(
                    place,
                    at,
                    "expected exactly one of scope (cluster, region or cloud), clusters and locations",
                ));
            }
        });
    }
    Ok(Failover {
        namespace,
        name,
        service,
        order,
        unlisted: document.spec.unlisted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{assert_refused, parse_as};

    const PREFER_WEST: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: api-failover, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  order:
    - clusters: [west]
    - scope: cluster
    - locations: [gcp/europe-west1]
  unlisted: never
";

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn at(cloud: &str, region: &str) -> Location {
        Location::new(cloud, region, "").unwrap()
    }

    /// Clusters fall in the first tier that holds them; those no tier holds are never tried,
    /// or tried last in the default order.
    #[test]
    fn clusters_are_ranked_by_the_first_tier_that_holds_them() {
        let mut policy = parse_as("failover.yaml", failover, PREFER_WEST).unwrap();
        let (east, here_at) = (cluster("east"), at("aws", "us-east-1"));
        let rank = |policy: &Failover, name: &str, location: &Location| {
            policy.rank(&east, &here_at, &cluster(name), location)
        };
        assert_eq!(rank(&policy, "west", &at("aws", "us-east-1")), Some(0));
        assert_eq!(rank(&policy, "east", &here_at), Some(1));
        assert_eq!(rank(&policy, "eu", &at("gcp", "europe-west1")), Some(2));
        assert_eq!(rank(&policy, "near", &at("aws", "us-east-1")), None);
        assert_eq!(policy.tiers(), 3);
        policy.unlisted = Unlisted::Last;
        assert_eq!(policy.tiers(), 7);
        assert_eq!(rank(&policy, "near", &at("aws", "us-east-1")), Some(3 + 1));
        assert_eq!(rank(&policy, "far", &at("azure", "eastus")), Some(3 + 3));
        let scopes = Failover {
            order: vec![Tier::Scope(Scope::Cloud), Tier::Scope(Scope::Cluster)],
            ..policy
        };
        assert_eq!(rank(&scopes, "near", &at("aws", "us-east-1")), Some(0));
        assert_eq!(rank(&scopes, "cousin", &at("aws", "eu-west-1")), Some(0));
        assert_eq!(rank(&scopes, "east", &here_at), Some(1));
        assert_eq!(
            default_rank(&east, &here_at, &cluster("cousin"), &at("aws", "eu-west-1")),
            2
        );
    }

    #[test]
    fn a_bad_failover_policy_is_refused_naming_its_field() {
        let cases = [
            (
                PREFER_WEST.replace(
                    "    - scope: cluster\n",
                    "    - {scope: cluster, clusters: [a]}\n",
                ),
                "spec.order[1]: expected exactly one of scope",
            ),
            (
                PREFER_WEST.replace("scope: cluster", "scope: zone"),
                "spec.order[1].scope",
            ),
            (
                PREFER_WEST.replace("clusters: [west]", "clusters: [West_1]"),
                "spec.order[0].clusters[0]",
            ),
            (
                PREFER_WEST.replace("clusters: [west]", "clusters: []"),
                "spec.order[0].clusters: expected 1 to",
            ),
            (
                PREFER_WEST.replace("gcp/europe-west1", "gcp//x"),
                "spec.order[2].locations[0]",
            ),
            (PREFER_WEST.replace("never", "sometimes"), "spec.unlisted"),
            (
                PREFER_WEST.replace("  targetRef: {kind: Service, name: api}\n", ""),
                "missing field `targetRef`",
            ),
            (
                format!(
                    "{}  order: []\n",
                    PREFER_WEST.split("  order:").next().unwrap()
                ),
                "spec.order: expected 1 to 16 tiers",
            ),
        ];
        assert_refused("failover.yaml", failover, &cases);
    }
}

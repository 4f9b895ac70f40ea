//! Where a name goes, planned from the catalog alone: the destination it resolves to, the port,
//! and the targets in order of preference (this cluster's endpoints, then the other clusters
//! by closeness or by the service's FailoverPolicy); and the choice of the next target among
//! them, by the balancer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use strait_federation::catalog::{Port, ServiceKey};
use strait_federation::identity::ClusterName;
use strait_federation::location::Location;
use strait_federation::policy::failover::{DEFAULT_TIERS, Failover, default_rank};

use crate::Shared;
use crate::connect::Target;
use crate::directory::{Destination, Directory, ServiceEntry};

/// Targets in order of preference. By default: this cluster's ready endpoints; then other
/// clusters of the same region; of the same cloud; and the rest of the mesh. A FailoverPolicy
/// of the service gives its own order. The first tier with a usable target takes the request.
pub(crate) type Tiers = Vec<Vec<Target>>;

/// Where a name goes: its destination, the port, and the targets in order of preference.
pub(crate) struct Plan {
    pub(crate) dest: Destination,
    pub(crate) port: Port,
    pub(crate) tiers: Tiers,
}

/// Why a destination cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The catalog lacks the service (a route's backend that is gone, say).
    #[error("{0} is not in the mesh catalog")]
    NotInCatalog(ServiceKey),
    /// The name gave a port the service does not have.
    #[error("{service} has no port {port}")]
    NoSuchPort { service: ServiceKey, port: u16 },
    /// The name gave no port, and the service has no single or HTTP port to default to.
    #[error("{0} has no HTTP port: name one")]
    NoDefaultPort(ServiceKey),
}

/// Plans the way to a name: `None` when it is not a mesh name, an error when the service has
/// no such port.
pub(crate) fn plan(directory: &Directory, name: &str) -> Option<Result<Plan, PlanError>> {
    let dest = directory.resolve(name)?;
    directory.service(&dest.service)?;
    Some(plan_destination(directory, dest))
}

/// The most names remembered for one directory: the Host header is the caller's to write.
const REMEMBERED: usize = 1024;

/// Plans of the names asked for, kept for as long as the directory they came from is the one
/// in use: a name is planned once per view, not once per request (planning cost a tenth of a
/// client sidecar's instructions per request).
#[derive(Default)]
pub(crate) struct Plans {
    memo: Mutex<Option<Memo>>,
}

struct Memo {
    /// The directory the plans came from, held so that no other directory takes its address.
    directory: Arc<Directory>,
    /// Looked up by every request, so hashed with foldhash (see [`crate::balance::Balancer`]).
    plans: foldhash::HashMap<String, Arc<Plan>>,
}

impl Plans {
    /// The plan of `name` in `directory`: remembered, or planned now (and remembered, unless
    /// it failed or [`REMEMBERED`] names are).
    pub(crate) fn plan(
        &self,
        directory: &Arc<Directory>,
        name: &str,
    ) -> Option<Result<Arc<Plan>, PlanError>> {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if !memo
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(&m.directory, directory))
        {
            *memo = None;
        }
        let memo = memo.get_or_insert_with(|| Memo {
            directory: directory.clone(),
            plans: foldhash::HashMap::default(),
        });
        if let Some(plan) = memo.plans.get(name) {
            return Some(Ok(plan.clone()));
        }
        let planned = match plan(directory, name)? {
            Ok(planned) => Arc::new(planned),
            Err(error) => return Some(Err(error)),
        };
        if memo.plans.len() < REMEMBERED {
            memo.plans.insert(name.to_owned(), planned.clone());
        }
        Some(Ok(planned))
    }
}

/// Plans the way to a destination (a route's backend, say); an error when the catalog lacks
/// its service or the port.
pub(crate) fn plan_destination(
    directory: &Directory,
    dest: Destination,
) -> Result<Plan, PlanError> {
    let Some(entry) = directory.service(&dest.service) else {
        return Err(PlanError::NotInCatalog(dest.service));
    };
    match entry.port(dest.port) {
        Some(port) => Ok(Plan {
            tiers: tiers(directory, entry, &dest, port),
            port: port.clone(),
            dest,
        }),
        None => Err(no_port(dest)),
    }
}

/// Why a destination has no port to send to.
fn no_port(dest: Destination) -> PlanError {
    match dest.port {
        Some(port) => PlanError::NoSuchPort {
            service: dest.service,
            port,
        },
        None => PlanError::NoDefaultPort(dest.service),
    }
}

/// The targets of a destination in order of preference: by the service's FailoverPolicy, or
/// this cluster's ready endpoints and then the other clusters serving it by closeness. A name
/// that pins a cluster goes only there, whatever the order says.
fn tiers(directory: &Directory, entry: &ServiceEntry, dest: &Destination, port: &Port) -> Tiers {
    let local_cluster = directory.cluster.as_ref();
    let here_allowed = dest.cluster.is_none() || dest.cluster.as_ref() == local_cluster;
    let failover = directory
        .policies
        .failover(&entry.key)
        .filter(|_| dest.cluster.is_none());
    // The tier of a cluster; `None`: not tried.
    let rank = |cluster: &ClusterName, location: &Location| match (failover, local_cluster) {
        (Some(failover), Some(here)) => failover.rank(here, &directory.location, cluster, location),
        (_, Some(here)) => Some(default_rank(here, &directory.location, cluster, location)),
        // Before a view names this cluster: everything is elsewhere.
        (_, None) => Some(DEFAULT_TIERS - 1),
    };
    let mut tiers: Tiers = vec![Vec::new(); failover.map_or(DEFAULT_TIERS, Failover::tiers)];
    let mut place = |tier: Option<usize>, target: Target| {
        if let Some(tier) = tier.and_then(|t| tiers.get_mut(t)) {
            tier.push(target);
        }
    };
    if here_allowed && let Some(here) = local_cluster {
        let tier = rank(here, &directory.location);
        for endpoint in entry
            .local
            .iter()
            .filter(|e| e.ready)
            .filter(|e| dest.hostname.is_none() || e.hostname == dest.hostname)
        {
            place(tier, Target::Local(endpoint.address));
        }
    }
    let remote = entry
        .remote
        .iter()
        .filter(|(cluster, _, _)| match &dest.cluster {
            Some(pinned) => pinned == cluster && Some(pinned) != local_cluster,
            None => true,
        })
        .filter(|(_, hostnames, _)| dest.hostname.as_ref().is_none_or(|h| hostnames.contains(h)));
    // A cluster whose gateway is reached badly now goes after every other, into a last tier
    // of its own: used still, when nothing else can serve.
    let mut degraded = Vec::new();
    for (cluster, _, location) in remote {
        let tier = rank(cluster, location);
        let target = Target::remote(
            cluster.clone(),
            entry.key.clone(),
            port.port,
            dest.hostname.clone(),
        );
        if dest.cluster.is_none() && tier.is_some() && directory.degraded.contains(cluster) {
            degraded.push(target);
        } else {
            place(tier, target);
        }
    }
    if !degraded.is_empty() {
        tiers.push(degraded);
    }
    tiers
}

/// Chooses the next target (see [`crate::balance::Balancer::pick_in_tiers`]), leaving out
/// those in `avoid` while another is usable.
pub(crate) fn choose(shared: &Shared, tiers: &Tiers, avoid: &[Target]) -> Option<Target> {
    shared
        .balancer()
        .pick_in_tiers(tiers, avoid, Instant::now(), crate::balance::random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{directory, shop};

    fn planned(directory: &Directory, name: &str) -> Plan {
        plan(directory, name)
            .unwrap_or_else(|| panic!("{name} is a mesh name"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The cluster of each target of a tier.
    fn clusters(tier: &[Target]) -> Vec<String> {
        let here = ClusterName::new("east").unwrap();
        tier.iter().map(|t| t.cluster(&here).to_string()).collect()
    }

    #[test]
    fn a_plan_is_remembered_for_its_directory_only() {
        let plans = Plans::default();
        let first = Arc::new(directory(&[]));
        let planned = plans.plan(&first, "api.shop").unwrap().unwrap();
        let again = plans.plan(&first, "api.shop").unwrap().unwrap();
        assert!(Arc::ptr_eq(&planned, &again), "remembered");
        assert!(plans.plan(&first, "example.com").is_none());
        assert!(plans.plan(&first, "api.shop:9999").unwrap().is_err());
        // A new view: planned again, from it.
        let second = Arc::new(directory(&[]));
        let fresh = plans.plan(&second, "api.shop").unwrap().unwrap();
        assert!(!Arc::ptr_eq(&planned, &fresh));
        assert_eq!(fresh.tiers, planned.tiers);
        // No more than REMEMBERED names are kept.
        for port in 0..(REMEMBERED as u16 + 10) {
            let _ = plans.plan(&second, &format!("api.shop:{port}"));
        }
        let held = plans.memo.lock().unwrap().as_ref().unwrap().plans.len();
        assert!(held <= REMEMBERED, "{held}");
    }

    #[test]
    fn ready_endpoints_here_come_first_then_other_clusters_by_closeness() {
        let directory = directory(&[]);
        let plan = planned(&directory, "api.shop");
        assert_eq!(plan.port.port, 8080);
        assert_eq!(
            plan.tiers[0],
            [Target::Local("127.0.0.1:5000".parse().unwrap())],
            "api-1 is not ready"
        );
        let by_tier: Vec<_> = plan.tiers.iter().map(|t| clusters(t)).collect();
        assert_eq!(by_tier, [vec!["east"], vec!["west"], vec![], vec!["north"]]);
    }

    #[test]
    fn a_name_that_pins_a_cluster_or_an_endpoint_goes_only_there() {
        let directory = directory(&[]);
        let west = planned(&directory, "west.api.shop.svc.clusterset.local");
        let by_tier: Vec<_> = west.tiers.iter().map(|t| clusters(t)).collect();
        assert_eq!(by_tier, [vec![], vec!["west"], vec![], vec![]]);
        let here = planned(&directory, "api.shop.svc.cluster.local");
        assert_eq!(
            here.tiers.concat().len(),
            1,
            "this cluster's ready endpoint only"
        );
        let endpoint = planned(&directory, "api-7.west.api.shop.svc.clusterset.local");
        assert_eq!(
            endpoint.tiers.concat(),
            [Target::remote(
                ClusterName::new("west").unwrap(),
                shop("api"),
                8080,
                Some("api-7".into()),
            )]
        );
    }

    #[test]
    fn a_degraded_cluster_is_tried_after_every_other_unless_it_is_named() {
        let mut directory = directory(&[]);
        directory.degraded.insert(ClusterName::new("west").unwrap());
        let plan = planned(&directory, "api.shop");
        let by_tier: Vec<_> = plan.tiers.iter().map(|t| clusters(t)).collect();
        assert_eq!(
            by_tier,
            [vec!["east"], vec![], vec![], vec!["north"], vec!["west"]]
        );
        // A name that pins west still goes there.
        let pinned = planned(&directory, "west.api.shop.svc.clusterset.local");
        assert_eq!(pinned.tiers.concat().len(), 1);
    }

    #[test]
    fn a_failover_policy_orders_the_clusters_its_own_way() {
        let directory = directory(&["apiVersion: policy.strait.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: api-failover, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  order:
    - clusters: [north]
    - scope: cluster
  unlisted: never
"]);
        let plan = planned(&directory, "api.shop");
        let by_tier: Vec<_> = plan.tiers.iter().map(|t| clusters(t)).collect();
        assert_eq!(by_tier, [vec!["north"], vec!["east"]]);
    }

    #[test]
    fn names_outside_the_mesh_are_not_planned_and_missing_ports_say_so() {
        let directory = directory(&[]);
        assert!(plan(&directory, "example.com").is_none());
        assert!(plan(&directory, "nothere.shop").is_none());
        let error = |name| match plan(&directory, name) {
            Some(Err(e)) => e.to_string(),
            _ => panic!("{name} is planned"),
        };
        assert_eq!(error("api.shop:9999"), "shop/api has no port 9999");
        assert_eq!(error("cache.shop"), "shop/cache has no HTTP port: name one");
        let gone = Destination {
            service: shop("api-v3"),
            cluster: None,
            hostname: None,
            port: None,
        };
        assert_eq!(
            plan_destination(&directory, gone)
                .err()
                .unwrap()
                .to_string(),
            "shop/api-v3 is not in the mesh catalog"
        );
    }
}

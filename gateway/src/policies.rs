//! The gateway's side of mesh-wide policy: applying and deleting policies made in this cluster
//! (the operator API), and showing the set to operators and sidecars. The set itself lives in
//! the persisted state; peer sessions (`peer`) exchange it with linked gateways.

use strait_federation::identity::{ClusterName, Namespace};
use strait_federation::policy::exchange::{BookError, MAX_POLICIES};
use strait_federation::policy::replication::Version;
use strait_federation::policy::{Checked, Policy, PolicyKey, PolicyKind};
use strait_federation::proto::operator::{AppliedObject, PolicyView};
use strait_federation::proto::workload::PolicyDocument;
use strait_federation::resource::Resource;

use crate::store::State;
use crate::unix_now_ms;

/// Refuses a file whose new policies would take the set past its bound, before anything of the
/// file is applied.
pub fn check_capacity(state: &State, resources: &[Resource]) -> Result<(), String> {
    let new = resources
        .iter()
        .filter(|r| match r {
            Resource::Policy { key, .. } => state.policies.set.get(key).is_none(),
            _ => false,
        })
        .count();
    if state.policies.set.len() + new > MAX_POLICIES {
        return Err(BookError::Full.to_string());
    }
    Ok(())
}

/// Applies the file's policies as changes made in `cluster`; whether any changed.
pub fn apply(
    state: &mut State,
    cluster: &ClusterName,
    resources: &[Resource],
    objects: &mut Vec<AppliedObject>,
) -> Result<bool, BookError> {
    let mut changed = false;
    for resource in resources {
        let Resource::Policy { key, policy } = resource else {
            continue;
        };
        let result = state
            .policies
            .apply(key.clone(), policy.clone(), cluster, unix_now_ms())?;
        changed |= result != strait_federation::policy::exchange::Applied::Unchanged;
        objects.push(AppliedObject {
            kind: key.kind.to_string(),
            namespace: key.namespace.to_string(),
            name: key.name.clone(),
            result: result.as_str().into(),
        });
    }
    Ok(changed)
}

/// Deletes one policy as a change made in `cluster`; whether it was live.
pub fn delete(state: &mut State, cluster: &ClusterName, key: &PolicyKey) -> bool {
    state.policies.delete(key, cluster, unix_now_ms())
}

/// The key a delete command names.
pub fn key(kind: PolicyKind, namespace: &str, name: &str) -> Result<PolicyKey, String> {
    let namespace = Namespace::new(if namespace.is_empty() {
        "default"
    } else {
        namespace
    })
    .map_err(|e| e.to_string())?;
    Ok(PolicyKey {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

/// One live policy as it travels to sidecars.
fn document(key: &PolicyKey, policy: &Policy, version: &Version) -> PolicyDocument {
    PolicyDocument {
        kind: key.kind.to_string(),
        namespace: key.namespace.to_string(),
        name: key.name.clone(),
        document: policy.to_json(),
        stamp: version.stamp,
        origin: version.origin.to_string(),
    }
}

/// Every live policy, for `strait get policies`.
pub fn views(state: &State) -> Vec<PolicyView> {
    state
        .policies
        .set
        .live()
        .map(|(key, policy, version)| {
            let d = document(key, policy, version);
            PolicyView {
                kind: d.kind,
                namespace: d.namespace,
                name: d.name,
                document: d.document,
                stamp: d.stamp,
                origin: d.origin,
            }
        })
        .collect()
}

/// Every live policy as sidecars get it, split by what each sidecar needs: the policies
/// enforced inbound (authorization, rate limits) by namespace, as a sidecar enforces those of
/// its own namespace; routes, followed outbound, for all.
#[derive(Debug, Default)]
pub struct SidecarPolicies {
    pub inbound: std::collections::BTreeMap<Namespace, Vec<PolicyDocument>>,
    pub routes: Vec<PolicyDocument>,
}

impl SidecarPolicies {
    /// Sorts the state's live policies.
    pub fn of(state: &State) -> Self {
        let mut out = Self::default();
        for (key, policy, version) in state.policies.set.live() {
            let document = document(key, policy, version);
            match policy.checked() {
                Checked::Authorization(_) | Checked::RateLimit(_) => out
                    .inbound
                    .entry(key.namespace.clone())
                    .or_default()
                    .push(document),
                Checked::Route(_) => out.routes.push(document),
            }
        }
        out
    }

    /// What a sidecar of `namespace` gets.
    pub fn for_namespace(&self, namespace: &Namespace) -> Vec<PolicyDocument> {
        self.inbound
            .get(namespace)
            .into_iter()
            .flatten()
            .chain(&self.routes)
            .cloned()
            .collect()
    }
}

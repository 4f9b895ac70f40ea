//! Policies as resources: the six policy kinds (`policy.strait.dev/v1alpha1`) applied with
//! kubectl in any cluster join the mesh-wide set, and every policy of the set appears as a
//! resource in every linked cluster, its origin cluster and version in its status.
//!
//! Level-triggered like import. [`decide`] (no IO) compares what the API holds with the set:
//! - a resource whose spec changed since the gateway last read it (its `generation` is past
//!   `status.observedGeneration` and past what the gateway wrote) is a change made here: it is
//!   checked with the parser of `strait apply` and applied, or refused in its status;
//! - every other resource shows a version of the set: an older one is rewritten, a newer one
//!   (after a restart with an empty disk) is taken back into the set, one deleted in the set
//!   is deleted;
//! - a policy of the set with no resource is created.
//!
//! A finalizer (`policy.strait.dev/mesh`) lets the gateway see a `kubectl delete`, even one made
//! while it was down, and delete the policy mesh-wide; a resource that goes with its namespace
//! leaves the mesh's policy alone. So what the gateway writes is never read back as a change,
//! and a deletion anywhere is a deletion everywhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use strait_federation::document::{DocumentError, DocumentPlace};
use strait_federation::identity::{ClusterName, Namespace};
use strait_federation::policy::common::POLICY_API_VERSION;
use strait_federation::policy::exchange::PolicyBook;
use strait_federation::policy::replication::Version;
use strait_federation::policy::{Policy, PolicyKey, PolicyKind};
use tokio::sync::Notify;

use super::crd::{POLICY_GROUP, PolicyStatus, policy_plural};
use super::import::{MANAGED_BY, MANAGER};
use super::{Health, Unfinished, condition_patch};
use crate::{Shared, lock, unix_now_ms};

/// The finalizer on every policy resource the gateway has taken into the mesh.
pub const FINALIZER: &str = "policy.strait.dev/mesh";
/// The condition that says whether the resource's spec was accepted.
pub const ACCEPTED: &str = "Accepted";

/// The API resource of a policy kind.
pub fn resource(kind: PolicyKind) -> ApiResource {
    ApiResource {
        group: POLICY_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: POLICY_API_VERSION.into(),
        kind: kind.as_str().into(),
        plural: policy_plural(kind).into(),
    }
}

/// Which resource: kind, namespace, name.
pub type Place = (PolicyKind, String, String);

/// A policy resource as the API holds it, read into what [`decide`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub resource_version: String,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    /// Labels and annotations, kept when the gateway rewrites the spec.
    pub labels: serde_json::Value,
    pub annotations: serde_json::Value,
    pub spec: serde_json::Value,
    pub status: PolicyStatus,
}

impl Observed {
    /// Reads a watched object; `None` for one without the metadata every stored object has.
    pub fn read(kind: PolicyKind, object: &DynamicObject) -> Option<Self> {
        Some(Self {
            kind,
            namespace: object.namespace()?,
            name: object.metadata.name.clone()?,
            uid: object.metadata.uid.clone()?,
            generation: object.metadata.generation.unwrap_or(0),
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            deleting: object.metadata.deletion_timestamp.is_some(),
            finalizers: object.metadata.finalizers.clone().unwrap_or_default(),
            labels: serde_json::to_value(&object.metadata.labels).unwrap_or_default(),
            annotations: serde_json::to_value(&object.metadata.annotations).unwrap_or_default(),
            spec: object.data.get("spec").cloned().unwrap_or_default(),
            status: object
                .data
                .get("status")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default(),
        })
    }

    fn place(&self) -> Place {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// The generation the gateway last read and the version of the set the resource shows:
    /// by its status, or by what the gateway wrote into it when the watch has not shown that
    /// yet.
    fn seen(&self, memory: &Memory) -> (i64, Option<Version>) {
        let read = self.status.observed_generation.unwrap_or(0);
        match memory.shown.get(&self.uid) {
            Some((generation, version)) if *generation >= read => (*generation, version.clone()),
            _ => (read, self.status_version()),
        }
    }

    fn status_version(&self) -> Option<Version> {
        let origin = ClusterName::new(self.status.origin.as_deref()?).ok()?;
        let stamp = u64::try_from(self.status.version?).ok()?;
        Some(Version { stamp, origin })
    }

    /// The policy document this resource is, as `strait apply` reads it.
    fn document(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": POLICY_API_VERSION,
            "kind": self.kind.as_str(),
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec,
        })
    }

    /// Checks the resource as `strait apply` checks a document; the error as it says it.
    fn parse(&self) -> Result<(PolicyKey, Policy), String> {
        let place = DocumentPlace {
            source: format!("{}.{POLICY_GROUP}", policy_plural(self.kind)),
            index: 1,
            kind: Some(self.kind.to_string()),
            name: Some(format!("{}/{}", self.namespace, self.name)),
        };
        Policy::parse(self.kind, self.document(), &place).map_err(|e| match e {
            DocumentError::Field { field, message, .. } => format!("{field}: {message}"),
            other => other.to_string(),
        })
    }

    fn key(&self) -> Option<PolicyKey> {
        Some(PolicyKey {
            kind: self.kind,
            namespace: Namespace::new(self.namespace.as_str()).ok()?,
            name: self.name.clone(),
        })
    }
}

/// What the gateway remembers of its own writes, so that it never reads them back as changes.
#[derive(Debug, Default)]
pub struct Memory {
    /// What the gateway last wrote into a resource's status, by uid: the generation it read
    /// and the version of the set shown.
    pub shown: HashMap<String, (i64, Option<Version>)>,
    /// Resources the gateway deleted because the policy was deleted elsewhere, by uid.
    pub deleted: BTreeSet<String>,
}

/// One write to the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Sets the status: the version shown and whether the spec at `generation` was accepted
    /// (`refused`: the reason it was not).
    Status {
        place: Place,
        uid: String,
        shown: Option<Version>,
        generation: i64,
        refused: Option<(&'static str, String)>,
    },
    /// Sets the finalizers (ours added or removed), guarded by the resource version read.
    Finalizers {
        place: Place,
        resource_version: String,
        finalizers: Vec<String>,
    },
    /// Creates the resource of a policy of the set.
    Create {
        place: Place,
        document: serde_json::Value,
        version: Version,
    },
    /// Rewrites the resource to the set's version, guarded by the resource version read.
    Replace {
        place: Place,
        resource_version: String,
        labels: serde_json::Value,
        annotations: serde_json::Value,
        document: serde_json::Value,
        version: Version,
    },
    /// Deletes a resource whose policy was deleted elsewhere.
    Delete { place: Place, uid: String },
}

/// What one pass decided: the writes, and whether the set changed.
#[derive(Debug, Default)]
pub struct Decision {
    pub writes: Vec<Write>,
    pub changed: bool,
}

/// Compares the resources with the set, takes the changes made here into `book` (as changes
/// of `local` at `now_ms`), and says what to write. `terminating`: the namespaces being
/// deleted, whose resources go without deleting their policies from the mesh. `originates`:
/// whether this replica stamps changes made here (the leading one); a standby takes them once
/// the leader's status shows their version, so the mesh never sees two versions of one change.
pub fn decide(
    objects: &[Observed],
    book: &mut PolicyBook,
    memory: &Memory,
    local: &ClusterName,
    terminating: &BTreeSet<String>,
    originates: bool,
    now_ms: u64,
) -> Decision {
    let mut out = Decision::default();
    let mut present = BTreeSet::new();
    for object in objects {
        let key = object.key();
        if let Some(key) = &key {
            present.insert(key.clone());
        }
        let ours = object.finalizers.iter().any(|f| f == FINALIZER);
        if object.deleting {
            if ours {
                let deleted_here = !memory.deleted.contains(&object.uid)
                    && !terminating.contains(&object.namespace);
                if deleted_here && let Some(key) = &key {
                    // A tombstone only where the policy is live.
                    out.changed |= book.delete(key, local, now_ms);
                }
                out.writes.push(Write::Finalizers {
                    place: object.place(),
                    resource_version: object.resource_version.clone(),
                    finalizers: without_ours(&object.finalizers),
                });
            }
            continue;
        }
        let (read, shown) = object.seen(memory);
        if object.generation > read && !originates {
            continue;
        }
        if object.generation > read {
            // A change made here, with kubectl or GitOps.
            let refused = match (object.parse(), &key) {
                (Ok((_, policy)), Some(key)) => {
                    match book.apply(key.clone(), policy, local, now_ms) {
                        Ok(applied) => {
                            out.changed |=
                                applied != strait_federation::document::Applied::Unchanged;
                            None
                        }
                        Err(e) => Some(("Full", e.to_string())),
                    }
                }
                (Err(message), _) => Some(("Invalid", message)),
                (Ok(_), None) => Some(("Invalid", "metadata.namespace: not a namespace".into())),
            };
            // The version now in force, if any: the one just applied, or the one a refused
            // spec leaves in force.
            let shown = key
                .as_ref()
                .and_then(|k| book.set.get(k))
                .filter(|e| e.body.is_some())
                .map(|e| e.version.clone());
            if refused.is_none() && !ours {
                out.writes.push(Write::Finalizers {
                    place: object.place(),
                    resource_version: object.resource_version.clone(),
                    finalizers: with_ours(&object.finalizers),
                });
            }
            out.writes.push(Write::Status {
                place: object.place(),
                uid: object.uid.clone(),
                shown,
                generation: object.generation,
                refused,
            });
            continue;
        }
        let Some(key) = key else { continue };
        let held = book.set.get(&key).map(|e| e.version.clone());
        match (held, shown) {
            // Shows a version newer than the set's (or one the set lacks): the set was lost
            // with a disk, or is behind; the resource is the record, as a peer's entry is.
            (held, Some(shown)) if held.as_ref().is_none_or(|h| *h < shown) => {
                if let Ok((_, policy)) = object.parse() {
                    out.changed |= book.adopt(key, policy, shown, now_ms).unwrap_or(false);
                }
            }
            (Some(held), shown) => match book.set.get(&key).and_then(|e| e.body.as_ref()) {
                Some(policy) if shown.as_ref() != Some(&held) => out.writes.push(Write::Replace {
                    place: object.place(),
                    resource_version: object.resource_version.clone(),
                    labels: object.labels.clone(),
                    annotations: object.annotations.clone(),
                    document: policy.document().clone(),
                    version: held,
                }),
                Some(_) if !ours => out.writes.push(Write::Finalizers {
                    place: object.place(),
                    resource_version: object.resource_version.clone(),
                    finalizers: with_ours(&object.finalizers),
                }),
                Some(_) => {}
                // Deleted in the set: by another cluster, or here by `strait delete`.
                None if shown.is_some() => out.writes.push(Write::Delete {
                    place: object.place(),
                    uid: object.uid.clone(),
                }),
                None => {}
            },
            (None, _) => {}
        }
    }
    for (key, policy, version) in book.set.live() {
        if !present.contains(key) {
            out.writes.push(Write::Create {
                place: (key.kind, key.namespace.to_string(), key.name.clone()),
                document: policy.document().clone(),
                version: version.clone(),
            });
        }
    }
    out
}

fn with_ours(finalizers: &[String]) -> Vec<String> {
    let mut all = without_ours(finalizers);
    all.push(FINALIZER.to_owned());
    all
}

fn without_ours(finalizers: &[String]) -> Vec<String> {
    finalizers
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

/// Runs the policy controller until the gateway stops.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    health: Arc<Health>,
    namespaces: Store<KubeNamespace>,
    mut namespace_changes: tokio::sync::watch::Receiver<u64>,
) {
    let changed = Arc::new(Notify::new());
    let mut stores: Vec<(PolicyKind, Store<DynamicObject>)> = Vec::new();
    for kind in PolicyKind::ALL {
        let resource = resource(kind);
        let writer = reflector::store::Writer::new(resource.clone());
        stores.push((kind, writer.as_reader()));
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let stream = super::watch(api, watcher::Config::default());
        tokio::spawn(super::reflect(
            policy_plural(kind),
            writer,
            stream,
            changed.clone(),
            health.clone(),
        ));
    }
    // Not before every store has listed: a namespace not yet seen is not a deleted one.
    let ready = async {
        for (_, store) in &stores {
            store.wait_until_ready().await?;
        }
        namespaces.wait_until_ready().await
    };
    tokio::select! {
        result = ready => if result.is_err() { return },
        () = shared.shutdown.cancelled() => return,
    }
    let mut set_changed = shared.policy_tx.subscribe();
    let mut leading = shared.leading.subscribe();
    let mut memory = Memory::default();
    loop {
        let retry = reconcile(&shared, &client, &stores, &namespaces, &mut memory, &health)
            .await
            .retry();
        tokio::select! {
            () = changed.notified() => {}
            _ = set_changed.changed() => {}
            _ = leading.changed() => {}
            _ = namespace_changes.changed() => {}
            () = tokio::time::sleep(retry) => {}
            () = shared.shutdown.cancelled() => return,
        }
        // A burst of changes makes one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One pass; what it left undone.
async fn reconcile(
    shared: &Arc<Shared>,
    client: &Client,
    stores: &[(PolicyKind, Store<DynamicObject>)],
    namespaces: &Store<KubeNamespace>,
    memory: &mut Memory,
    health: &Health,
) -> Unfinished {
    let objects: Vec<Observed> = stores
        .iter()
        .flat_map(|(kind, store)| {
            store
                .state()
                .into_iter()
                .filter_map(|o| Observed::read(*kind, &o))
                .collect::<Vec<_>>()
        })
        .collect();
    // A resource deleted with its namespace (one being deleted, or gone) leaves the mesh's
    // policy alone.
    let terminating: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.deleting && !memory.deleted.contains(&o.uid))
        .map(|o| o.namespace.clone())
        .filter(|name| {
            namespaces
                .get(&reflector::ObjectRef::new(name))
                .is_none_or(|n| n.metadata.deletion_timestamp.is_some())
        })
        .collect();
    let leads = shared.leads();
    let decision = {
        let mut state = lock(&shared.state);
        decide(
            &objects,
            &mut state.policies,
            memory,
            &shared.config.cluster,
            &terminating,
            leads,
            unix_now_ms(),
        )
    };
    if decision.changed {
        shared.write_policies();
        shared.policies_changed();
    }
    let mut left = Unfinished::default();
    // A standby replica follows the resources into its set and writes nothing: the leading
    // replica does.
    let writes = if leads { decision.writes } else { Vec::new() };
    for write in writes {
        match execute(shared, client, write, memory).await {
            Ok(()) => {}
            Err(Failure::Pending) => left.pending = true,
            Err(Failure::NoNamespace) => left.namespaces = true,
            Err(Failure::Api(e)) => {
                health.fail("policies", super::describe(&e));
                left.pending = true;
            }
        }
    }
    if !left.pending {
        health.clear("policies");
    }
    // Forget the uids of resources that are gone.
    let uids: BTreeSet<&str> = objects.iter().map(|o| o.uid.as_str()).collect();
    memory.shown.retain(|uid, _| uids.contains(uid.as_str()));
    memory.deleted.retain(|uid| uids.contains(uid.as_str()));
    left
}

/// Why a write did not happen.
enum Failure {
    /// Not now (a conflict): the next pass tries again.
    Pending,
    /// The namespace does not exist here, or is being deleted: its watch says when to try.
    NoNamespace,
    Api(kube::Error),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(status) if status.is_not_found() => Failure::NoNamespace,
            kube::Error::Api(status) if status.code == 409 => Failure::Pending,
            // Namespaces being deleted refuse new objects.
            kube::Error::Api(status)
                if status.code == 403
                    && status.reason == "Forbidden"
                    && status.message.contains("being terminated") =>
            {
                Failure::NoNamespace
            }
            _ => Failure::Api(e),
        }
    }
}

/// The body of a policy resource written from the set: a new one (`metadata` holds its
/// labels), or a rewrite of one read at a resource version (`metadata` holds what it had).
fn body(
    place: &Place,
    document: &serde_json::Value,
    mut metadata: serde_json::Value,
) -> serde_json::Value {
    let (kind, namespace, name) = place;
    metadata["name"] = name.as_str().into();
    metadata["namespace"] = namespace.as_str().into();
    metadata["finalizers"] = serde_json::json!([FINALIZER]);
    serde_json::json!({
        "apiVersion": POLICY_API_VERSION,
        "kind": kind.as_str(),
        "metadata": metadata,
        "spec": document.get("spec").cloned().unwrap_or_default(),
    })
}

fn status_patch(
    shown: Option<&Version>,
    generation: i64,
    refused: Option<&(&'static str, String)>,
) -> serde_json::Value {
    let in_force = match shown {
        Some(version) => format!(
            "in force across the mesh as made in cluster {}",
            version.origin
        ),
        None => "not in force anywhere".to_owned(),
    };
    let (ok, reason, message) = match refused {
        None => (true, "Accepted", in_force.as_str()),
        Some((reason, message)) => (false, *reason, message.as_str()),
    };
    let mut patch = condition_patch(ACCEPTED, ok, reason, message);
    patch["status"]["observedGeneration"] = generation.into();
    patch["status"]["origin"] = shown.map(|v| v.origin.to_string()).into();
    patch["status"]["version"] = shown.and_then(|v| i64::try_from(v.stamp).ok()).into();
    patch
}

fn count(shared: &Shared, what: &str) {
    shared
        .metrics
        .kubernetes_writes
        .with_label_values(&[what])
        .inc();
}

async fn execute(
    shared: &Shared,
    client: &Client,
    write: Write,
    memory: &mut Memory,
) -> Result<(), Failure> {
    let api = |place: &Place| {
        Api::<DynamicObject>::namespaced_with(client.clone(), &place.1, &resource(place.0))
    };
    match write {
        Write::Status {
            place,
            uid,
            shown,
            generation,
            refused,
        } => {
            if let Some((_, message)) = &refused {
                tracing::warn!(kind = %place.0, namespace = %place.1, name = %place.2, reason = %message, "policy resource refused");
            }
            let patch = status_patch(shown.as_ref(), generation, refused.as_ref());
            api(&place)
                .patch_status(&place.2, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            count(shared, "policies/status");
            memory.shown.insert(uid, (generation, shown));
        }
        Write::Finalizers {
            place,
            resource_version,
            finalizers,
        } => {
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": resource_version,
                "finalizers": finalizers,
            }});
            api(&place)
                .patch(&place.2, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            count(shared, "policies");
        }
        Write::Create {
            place,
            document,
            version,
        } => {
            let metadata = serde_json::json!({"labels": {MANAGED_BY: MANAGER}});
            let object: DynamicObject = serde_json::from_value(body(&place, &document, metadata))
                .map_err(|e| Failure::Api(kube::Error::SerdeError(e)))?;
            let created = api(&place).create(&PostParams::default(), &object).await?;
            count(shared, "policies");
            shown(shared, &api(&place), &place, created, &version, memory).await?;
        }
        Write::Replace {
            place,
            resource_version,
            labels,
            annotations,
            document,
            version,
        } => {
            let metadata = serde_json::json!({
                "resourceVersion": resource_version,
                "labels": labels,
                "annotations": annotations,
            });
            let object: DynamicObject = serde_json::from_value(body(&place, &document, metadata))
                .map_err(|e| Failure::Api(kube::Error::SerdeError(e)))?;
            let replaced = api(&place)
                .replace(&place.2, &PostParams::default(), &object)
                .await?;
            count(shared, "policies");
            shown(shared, &api(&place), &place, replaced, &version, memory).await?;
        }
        Write::Delete { place, uid } => {
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            memory.deleted.insert(uid);
            match api(&place).delete(&place.2, &params).await {
                Ok(_) => count(shared, "deletes"),
                // Gone already: what the delete was for.
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// After writing a resource's spec from the set: remembers its generation as the gateway's
/// own, and sets its status to the version it now shows.
async fn shown(
    shared: &Shared,
    api: &Api<DynamicObject>,
    place: &Place,
    written: DynamicObject,
    version: &Version,
    memory: &mut Memory,
) -> Result<(), Failure> {
    let generation = written.metadata.generation.unwrap_or(0);
    // Remembered before the status is written: should that fail, the spec is still the
    // gateway's own, and the next pass writes the status without reading the spec as a change.
    if let Some(uid) = &written.metadata.uid {
        memory.shown.insert(uid.clone(), (generation, None));
    }
    let patch = status_patch(Some(version), generation, None);
    api.patch_status(&place.2, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    count(shared, "policies/status");
    if let Some(uid) = written.metadata.uid {
        memory
            .shown
            .insert(uid, (generation, Some(version.clone())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn spec(deny_from: &str) -> serde_json::Value {
        serde_json::json!({
            "targetRef": {"kind": "Service", "name": "api"},
            "action": "deny",
            "rules": [{"from": [{"clusters": [deny_from]}]}],
        })
    }

    /// A resource as kubectl leaves it: generation 1, no status, no finalizer.
    fn applied(name: &str, spec: serde_json::Value) -> Observed {
        Observed {
            kind: PolicyKind::AuthorizationPolicy,
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: 1,
            resource_version: "100".into(),
            deleting: false,
            finalizers: Vec::new(),
            labels: serde_json::Value::Null,
            annotations: serde_json::Value::Null,
            spec,
            status: PolicyStatus::default(),
        }
    }

    /// The resource after the gateway took it in: its finalizer and status written.
    fn settled(mut object: Observed, book: &PolicyBook) -> Observed {
        let key = object.key().unwrap();
        let version = book.set.get(&key).unwrap().version.clone();
        object.finalizers = vec![FINALIZER.into()];
        object.status = PolicyStatus {
            origin: Some(version.origin.to_string()),
            version: Some(version.stamp as i64),
            observed_generation: Some(object.generation),
            conditions: Vec::new(),
        };
        object
    }

    fn key(name: &str) -> PolicyKey {
        PolicyKey {
            kind: PolicyKind::AuthorizationPolicy,
            namespace: Namespace::new("shop").unwrap(),
            name: name.into(),
        }
    }

    fn pass(objects: &[Observed], book: &mut PolicyBook, local: &str) -> Decision {
        decide(
            objects,
            book,
            &Memory::default(),
            &cluster(local),
            &BTreeSet::new(),
            true,
            NOW,
        )
    }

    #[test]
    fn a_resource_applied_here_joins_the_set_with_a_finalizer_and_its_status() {
        let mut book = PolicyBook::default();
        let object = applied("deny", spec("west"));
        let decision = pass(std::slice::from_ref(&object), &mut book, "east");
        assert!(decision.changed);
        let entry = book.set.get(&key("deny")).unwrap();
        assert_eq!(entry.version.origin, cluster("east"));
        assert!(
            matches!(&decision.writes[0], Write::Finalizers { finalizers, .. } if finalizers == &[FINALIZER])
        );
        assert!(matches!(&decision.writes[1],
            Write::Status { shown: Some(v), generation: 1, refused: None, .. } if *v == entry.version));
        // Once settled, nothing more is written and the set keeps its version.
        let version = entry.version.clone();
        let decision = pass(&[settled(object, &book)], &mut book, "east");
        assert!(decision.writes.is_empty(), "{:?}", decision.writes);
        assert!(!decision.changed);
        assert_eq!(book.set.get(&key("deny")).unwrap().version, version);
    }

    #[test]
    fn a_resource_that_fails_the_checks_changes_nothing_and_says_which_field() {
        let mut book = PolicyBook::default();
        let mut bad = spec("west");
        bad["action"] = "maybe".into();
        let decision = pass(&[applied("deny", bad)], &mut book, "east");
        assert!(!decision.changed);
        assert!(book.set.is_empty());
        let [
            Write::Status {
                refused: Some((reason, message)),
                ..
            },
        ] = decision.writes.as_slice()
        else {
            panic!("{:?}", decision.writes)
        };
        assert_eq!(*reason, "Invalid");
        assert!(message.starts_with("spec.action: "), "{message}");
        assert!(message.contains("maybe"), "{message}");
    }

    #[test]
    fn a_bad_edit_keeps_the_policy_in_force_and_the_resource_as_written() {
        let mut book = PolicyBook::default();
        let object = applied("deny", spec("west"));
        pass(std::slice::from_ref(&object), &mut book, "east");
        let version = book.set.get(&key("deny")).unwrap().version.clone();
        let mut edited = settled(object, &book);
        edited.generation = 2;
        edited.spec["action"] = "maybe".into();
        let decision = pass(std::slice::from_ref(&edited), &mut book, "east");
        assert!(!decision.changed);
        assert_eq!(book.set.get(&key("deny")).unwrap().version, version);
        let [
            Write::Status {
                refused: Some(_),
                shown: Some(shown),
                generation: 2,
                ..
            },
        ] = decision.writes.as_slice()
        else {
            panic!("{:?}", decision.writes)
        };
        assert_eq!(*shown, version);
        // Refused at generation 2, it is left alone: neither rewritten nor read again.
        edited.status.observed_generation = Some(2);
        let decision = pass(&[edited], &mut book, "east");
        assert!(decision.writes.is_empty(), "{:?}", decision.writes);
    }

    #[test]
    fn what_the_gateway_writes_is_never_read_back_as_a_change() {
        // A policy made in east reaches west's set; west creates its resource.
        let mut east = PolicyBook::default();
        pass(&[applied("deny", spec("west"))], &mut east, "east");
        let mut west = PolicyBook::default();
        let (k, entry) = east.set.entries().next().unwrap();
        west.set.merge(k.clone(), entry.clone());
        let decision = pass(&[], &mut west, "west");
        let [
            Write::Create {
                document, version, ..
            },
        ] = decision.writes.as_slice()
        else {
            panic!("{:?}", decision.writes)
        };
        assert_eq!(version.origin, cluster("east"));
        // The created resource, seen before its status: the gateway remembers what it wrote.
        let mut created = applied("deny", document["spec"].clone());
        created.finalizers = vec![FINALIZER.into()];
        let mut memory = Memory::default();
        memory
            .shown
            .insert(created.uid.clone(), (1, Some(version.clone())));
        let decision = decide(
            std::slice::from_ref(&created),
            &mut west,
            &memory,
            &cluster("west"),
            &BTreeSet::new(),
            true,
            NOW,
        );
        assert!(decision.writes.is_empty(), "{:?}", decision.writes);
        assert!(!decision.changed);
        assert_eq!(
            west.set.get(&key("deny")).unwrap().version.origin,
            cluster("east")
        );
        // A newer version from east rewrites it, as the gateway's own.
        let mut edited = settled(applied("deny", spec("west")), &east);
        edited.generation = 2;
        edited.spec = spec("north");
        let mut east_edit = east.clone();
        pass(&[edited], &mut east_edit, "east");
        let (k, entry) = east_edit.set.entries().next().unwrap();
        west.set.merge(k.clone(), entry.clone());
        let decision = decide(
            &[created],
            &mut west,
            &memory,
            &cluster("west"),
            &BTreeSet::new(),
            true,
            NOW,
        );
        let [
            Write::Replace {
                document, version, ..
            },
        ] = decision.writes.as_slice()
        else {
            panic!("{:?}", decision.writes)
        };
        assert_eq!(document["spec"], spec("north"));
        assert_eq!(*version, entry.version);
        assert!(!decision.changed);
    }

    #[test]
    fn a_deletion_here_deletes_the_policy_and_one_made_elsewhere_deletes_the_resource() {
        let mut book = PolicyBook::default();
        let object = applied("deny", spec("west"));
        pass(std::slice::from_ref(&object), &mut book, "east");
        let mut deleting = settled(object.clone(), &book);
        deleting.deleting = true;
        let decision = pass(&[deleting], &mut book, "east");
        assert!(decision.changed);
        assert!(book.set.get(&key("deny")).unwrap().body.is_none());
        assert!(matches!(&decision.writes[..],
            [Write::Finalizers { finalizers, .. }] if finalizers.is_empty()));

        // Elsewhere: the tombstone arrives, and the resource goes.
        let mut other = PolicyBook::default();
        pass(std::slice::from_ref(&object), &mut other, "west");
        let shown = settled(object, &other);
        let (k, tombstone) = book.set.entries().next().unwrap();
        // The tombstone is newer than west's own version only if made later: make it so.
        let mut tombstone = tombstone.clone();
        tombstone.version.stamp = other.set.get(k).unwrap().version.stamp + 1;
        other.set.merge(k.clone(), tombstone);
        let decision = pass(std::slice::from_ref(&shown), &mut other, "west");
        assert!(!decision.changed);
        assert!(matches!(&decision.writes[..], [Write::Delete { uid, .. }] if *uid == shown.uid));
        // The deletion the gateway made is not read as one made here.
        let mut memory = Memory::default();
        memory.deleted.insert(shown.uid.clone());
        let mut going = shown;
        going.deleting = true;
        let decision = decide(
            &[going],
            &mut other,
            &memory,
            &cluster("west"),
            &BTreeSet::new(),
            true,
            NOW,
        );
        assert!(!decision.changed);
        assert!(matches!(&decision.writes[..], [Write::Finalizers { .. }]));
    }

    #[test]
    fn a_resource_that_goes_with_its_namespace_leaves_the_mesh_policy() {
        let mut book = PolicyBook::default();
        let object = applied("deny", spec("west"));
        pass(std::slice::from_ref(&object), &mut book, "east");
        let mut going = settled(object, &book);
        going.deleting = true;
        let terminating = BTreeSet::from(["shop".to_owned()]);
        let decision = decide(
            &[going],
            &mut book,
            &Memory::default(),
            &cluster("east"),
            &terminating,
            true,
            NOW,
        );
        assert!(!decision.changed);
        assert!(book.set.get(&key("deny")).unwrap().body.is_some());
        assert!(matches!(&decision.writes[..], [Write::Finalizers { .. }]));
    }

    #[test]
    fn after_an_empty_disk_the_resources_give_the_set_back_at_their_versions() {
        let mut before = PolicyBook::default();
        let object = applied("deny", spec("west"));
        pass(std::slice::from_ref(&object), &mut before, "east");
        let shown = settled(object, &before);
        let mut empty = PolicyBook::default();
        let decision = pass(std::slice::from_ref(&shown), &mut empty, "east");
        assert!(decision.changed);
        assert!(decision.writes.is_empty(), "{:?}", decision.writes);
        assert_eq!(empty.set.get(&key("deny")), before.set.get(&key("deny")));
        // A change made afterwards is stamped after the one taken back.
        let mut edited = shown.clone();
        edited.generation = 2;
        edited.spec = spec("north");
        pass(&[edited], &mut empty, "east");
        assert!(
            empty.set.get(&key("deny")).unwrap().version
                > before.set.get(&key("deny")).unwrap().version
        );
    }

    #[test]
    fn a_standby_takes_a_change_made_here_only_at_the_version_the_leader_shows() {
        let object = applied("deny", spec("west"));
        let mut standby = PolicyBook::default();
        let decision = decide(
            std::slice::from_ref(&object),
            &mut standby,
            &Memory::default(),
            &cluster("east"),
            &BTreeSet::new(),
            false,
            NOW,
        );
        assert!(!decision.changed);
        assert!(standby.set.get(&key("deny")).is_none());
        // The leader stamps it and shows the version in the status: the standby adopts that one.
        let mut leader = PolicyBook::default();
        pass(std::slice::from_ref(&object), &mut leader, "east");
        let decision = decide(
            &[settled(object, &leader)],
            &mut standby,
            &Memory::default(),
            &cluster("east"),
            &BTreeSet::new(),
            false,
            NOW + 5,
        );
        assert!(decision.changed);
        assert_eq!(
            standby.set.get(&key("deny")).unwrap().version,
            leader.set.get(&key("deny")).unwrap().version
        );
    }
}

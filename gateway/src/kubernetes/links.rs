//! Links as resources: a `Link` (`strait.dev/v1alpha1`) in the gateway's namespace, its join
//! token in a Secret it names, makes the gateway dial that cluster, and its `Ready` condition
//! says how the peering stands, with the peer's own refusal as the message (expired, tampered,
//! replayed, revoked, another root). Deleting a Link the gateway dialled for it unlinks. In
//! Kubernetes mode `strait link` prints [`manifests`]: the Secret and the Link, as one YAML
//! stream for `kubectl apply -f -` in the other cluster. No kubeconfig leaves a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::link::LinkSpec as DialSpec;
use tokio::sync::Notify;

use super::crd::Link;
use super::{FIELD_MANAGER, Health};
use crate::peering::LinkState;
use crate::store::LinkRecord;
use crate::{GatewayError, Shared, lock, unix_now};

/// The Secret key of a join token unless the Link names another.
const TOKEN_KEY: &str = "token";

/// The name of the Secret that carries the join token for a link to `cluster`.
fn secret_name(cluster: &ClusterName) -> String {
    format!("strait-link-{cluster}")
}

/// What `strait link` prints in Kubernetes mode: a Secret holding the join token and a Link
/// naming it, both in `namespace` (the gateway namespace, the same in every cluster).
pub fn manifests(spec: &DialSpec, namespace: &str) -> Result<String, GatewayError> {
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(&spec.cluster), "namespace": namespace},
        "type": "Opaque",
        "stringData": {TOKEN_KEY: spec.token},
    });
    let mut link = serde_json::json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "Link",
        "metadata": {"name": spec.cluster.as_str(), "namespace": namespace},
        "spec": {
            "cluster": spec.cluster.as_str(),
            "trustDomain": spec.trust_domain.to_string(),
            "gatewayAddress": spec.gateway_address,
            "rootFingerprint": spec.root_fingerprint,
            "tokenSecret": {"name": secret_name(&spec.cluster)},
        },
    });
    if let Some(expires) = &spec.expires {
        link["spec"]["expires"] = expires.clone().into();
    }
    Ok(format!(
        "{}---\n{}",
        serde_saphyr::to_string(&secret)?,
        serde_saphyr::to_string(&link)?
    ))
}

/// A Link resource read into what the dialer takes, or why it cannot be.
fn dial_spec(link: &Link, secrets: &Store<Secret>) -> Result<DialSpec, (&'static str, String)> {
    let spec = &link.spec;
    let cluster = ClusterName::new(spec.cluster.clone())
        .map_err(|e| ("Invalid", format!("spec.cluster: {e}")))?;
    let trust_domain = TrustDomain::new(spec.trust_domain.clone())
        .map_err(|e| ("Invalid", format!("spec.trustDomain: {e}")))?;
    let key = spec.token_secret.key.as_deref().unwrap_or(TOKEN_KEY);
    let namespace = link.namespace().unwrap_or_default();
    let secret = secrets
        .get(&reflector::ObjectRef::new(&spec.token_secret.name).within(&namespace))
        .ok_or_else(|| {
            (
                "SecretNotFound",
                format!(
                    "no Secret {namespace}/{} holds the join token",
                    spec.token_secret.name
                ),
            )
        })?;
    let token = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        })
        .ok_or_else(|| {
            (
                "SecretNotFound",
                format!(
                    "Secret {namespace}/{} has no key {key:?}",
                    spec.token_secret.name
                ),
            )
        })?;
    Ok(DialSpec {
        cluster,
        trust_domain,
        gateway_address: spec.gateway_address.clone(),
        root_fingerprint: spec.root_fingerprint.clone(),
        token: token.trim().to_owned(),
        expires: spec.expires.clone(),
    })
}

/// The `Ready` condition of a link the gateway dials: (status, reason, message).
fn readiness(shared: &Shared, cluster: &ClusterName) -> (bool, &'static str, String) {
    match lock(&shared.peers).get(cluster) {
        Some(status) => match status.state {
            LinkState::Connected => (true, "Connected", format!("connected to cluster {cluster}")),
            LinkState::Refused => (false, "Refused", status.last_error.clone()),
            LinkState::Connecting => (false, "Connecting", status.last_error.clone()),
            LinkState::Disconnected => (false, "Disconnected", status.last_error.clone()),
        },
        None => (false, "Connecting", String::new()),
    }
}

/// Runs the Link controller until the gateway stops.
pub async fn run(shared: Arc<Shared>, client: Client, health: Arc<Health>) {
    let Some(namespace) = shared
        .config
        .kubernetes
        .as_ref()
        .map(|k| k.namespace.clone())
    else {
        return;
    };
    let changed = Arc::new(Notify::new());
    let config = watcher::Config::default();
    let (links, writer) = reflector::store::<Link>();
    let stream = super::watch(
        Api::<Link>::namespaced(client.clone(), &namespace),
        config.clone(),
    );
    tokio::spawn(super::reflect(
        "links",
        writer,
        stream,
        changed.clone(),
        health.clone(),
    ));
    let (secrets, writer) = reflector::store::<Secret>();
    let stream = super::watch(
        Api::<Secret>::namespaced(client.clone(), &namespace),
        config,
    );
    tokio::spawn(super::reflect(
        "secrets",
        writer,
        stream,
        changed.clone(),
        health,
    ));
    tokio::select! {
        _ = async { let _ = links.wait_until_ready().await; let _ = secrets.wait_until_ready().await; } => {}
        () = shared.shutdown.cancelled() => return,
    }
    let statuses = Api::<Link>::namespaced(client, &namespace);
    // The specs this controller dialled, by cluster: a Link is dialled again only when its spec
    // changes, so a refused one is not retried in a loop.
    let mut dialled: HashMap<ClusterName, DialSpec> = HashMap::new();
    let mut written: HashMap<String, (bool, &'static str, String)> = HashMap::new();
    loop {
        reconcile(
            &shared,
            &links,
            &secrets,
            &statuses,
            &mut dialled,
            &mut written,
        )
        .await;
        // Peering state changes without an API event: the status is refreshed every second.
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

async fn reconcile(
    shared: &Arc<Shared>,
    links: &Store<Link>,
    secrets: &Store<Secret>,
    statuses: &Api<Link>,
    dialled: &mut HashMap<ClusterName, DialSpec>,
    written: &mut HashMap<String, (bool, &'static str, String)>,
) {
    let mut present: BTreeMap<ClusterName, ()> = BTreeMap::new();
    for link in links.state() {
        let name = link.name_any();
        let wanted = match dial_spec(&link, secrets) {
            Err((reason, message)) => (false, reason, message),
            Ok(spec) => match crate::peer::link_problem(shared, &spec) {
                Some(problem) => (false, "Invalid", problem),
                None => {
                    let cluster = spec.cluster.clone();
                    present.insert(cluster.clone(), ());
                    if dialled.get(&cluster) != Some(&spec) {
                        lock(&shared.state).links.insert(
                            cluster.clone(),
                            LinkRecord {
                                spec: spec.clone(),
                                created: unix_now(),
                            },
                        );
                        if let Err(e) = shared.persist().await {
                            tracing::error!(error = %e, "cannot write a Link applied in Kubernetes");
                        }
                        tracing::info!(peer = %cluster, link = %name, "dialing a Link resource");
                        crate::peer::start_dialer(shared, spec.clone(), None);
                        dialled.insert(cluster.clone(), spec);
                    }
                    readiness(shared, &cluster)
                }
            },
        };
        // Only the leading replica writes the Link's condition, from its own peering.
        if written.get(&name) == Some(&wanted) || !shared.leads() {
            continue;
        }
        let (ready, reason, message) = &wanted;
        let status = super::condition_patch("Ready", *ready, reason, message);
        match statuses
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&status),
            )
            .await
        {
            Ok(_) => {
                shared
                    .metrics
                    .kubernetes_writes
                    .with_label_values(&["links/status"])
                    .inc();
                written.insert(name, wanted);
            }
            Err(e) => {
                tracing::warn!(link = %name, error = %super::describe(&e), "cannot write a Link's status")
            }
        }
    }
    let live: Vec<String> = links.state().iter().map(|l| l.name_any()).collect();
    written.retain(|name, _| live.contains(name));
    // A Link deleted from the API: the peering it made goes, and the peer hears it.
    let gone: Vec<ClusterName> = dialled
        .keys()
        .filter(|c| !present.contains_key(*c))
        .cloned()
        .collect();
    for cluster in gone {
        dialled.remove(&cluster);
        tracing::info!(peer = %cluster, "Link resource deleted: unlinking");
        if let Err(e) = crate::peer::unlink(shared, &cluster).await {
            tracing::error!(peer = %cluster, error = %e, "cannot unlink");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_prints_as_a_secret_and_a_link_naming_it() {
        let spec = DialSpec {
            cluster: ClusterName::new("west").unwrap(),
            trust_domain: TrustDomain::new("example.mesh").unwrap(),
            gateway_address: "west.example:4433".into(),
            root_fingerprint: "sha256:ab".into(),
            token: "eyJ.token".into(),
            expires: Some("2026-12-07T00:00:00Z".into()),
        };
        let text = manifests(&spec, "strait-system").unwrap();
        let documents: Vec<serde_json::Value> = text
            .split("---\n")
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect();
        assert_eq!(documents[0]["kind"], "Secret");
        assert_eq!(documents[0]["metadata"]["namespace"], "strait-system");
        assert_eq!(documents[0]["stringData"]["token"], "eyJ.token");
        assert_eq!(documents[1]["kind"], "Link");
        assert_eq!(
            documents[1]["spec"]["tokenSecret"]["name"],
            "strait-link-west"
        );
        assert_eq!(documents[1]["spec"]["gatewayAddress"], "west.example:4433");
        let link: Link = serde_json::from_value(documents[1].clone()).unwrap();
        assert_eq!(link.spec.cluster, "west");
    }
}

//! Kubernetes mode: with a `kubernetes:` block in `gateway.yaml` the gateway is a controller of
//! its cluster's API (kube-rs watchers and reflectors, server-side apply). It exports what the
//! cluster's ServiceExports name ([`export`]), writes what other clusters export as MCS
//! ServiceImports and EndpointSlices ([`import`]), dials the Link resources ([`links`]), keeps
//! the policy resources and the mesh-wide set in step ([`policies`]), checks sidecars'
//! service-account tokens ([`identity`]), keeps what must outlive a disk in the API
//! ([`durable`]), and lets one replica lead ([`lease`]) while every replica peers, finds its
//! siblings ([`replicas`]) and, standing by, takes from the API what the leader imported from
//! peers it has no session with ([`mirror`]). The federation code is the same as in universal
//! mode. See docs/kubernetes.md.

pub mod access;
pub mod crd;
pub mod credentials;
pub mod durable;
pub mod export;
pub mod identity;
pub mod import;
pub mod inject;
pub mod lease;
pub mod links;
pub mod mirror;
pub mod policies;
pub mod rbac;
pub mod replicas;
pub mod slices;
pub mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{reflector, watcher};
use tokio::sync::Notify;

use crate::config::KubernetesConfig;
use crate::{Shared, lock};

/// The field manager of everything the gateway writes.
pub const FIELD_MANAGER: &str = "strait.dev";

/// Why the gateway cannot reach or use its cluster's API right now, by what failed; empty when
/// all is well. `/readyz` answers 503 with these reasons while any is set.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<&'static str, String>>,
    /// The gateway's rights as its API last said them.
    pub access: access::AccessCache,
    /// The sidecar injector's serving certificate chain (PEM), once it serves.
    pub injector_chain: std::sync::OnceLock<String>,
}

impl Health {
    /// Records a failure of one part (`services`, `imports`, ...).
    pub fn fail(&self, what: &'static str, reason: String) {
        let mut problems = lock(&self.problems);
        if problems.get(what) != Some(&reason) {
            tracing::warn!(part = what, reason = %reason, "Kubernetes API");
            problems.insert(what, reason);
        }
    }

    /// Holds readiness back while a part gets ready (not a failure: said at debug level).
    pub fn wait(&self, what: &'static str, reason: &str) {
        tracing::debug!(part = what, reason, "not ready yet");
        lock(&self.problems).insert(what, reason.to_owned());
    }

    /// Ends a [`wait`](Self::wait).
    pub fn done_waiting(&self, what: &'static str) {
        if lock(&self.problems).remove(what).is_some() {
            tracing::debug!(part = what, "ready");
        }
    }

    /// Clears a part's failure once it works again.
    pub fn clear(&self, what: &'static str) {
        if lock(&self.problems).remove(what).is_some() {
            tracing::info!(part = what, "Kubernetes API answers again");
        }
    }

    /// Each part that fails, with its reason.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.problems)
            .iter()
            .map(|(what, reason)| format!("{what}: {reason}"))
            .collect()
    }

    /// The reasons, one line, when something fails.
    pub fn problem(&self) -> Option<String> {
        let problems = lock(&self.problems);
        (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(|(what, reason)| format!("kubernetes {what}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// An API error as operators read it: a refusal names the verb and resource that RBAC lacks.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = inner.source();
    }
    text
}

/// Feeds a reflected watch, waking the reconcile on every change and telling the gateway's
/// health when the API fails (and when it answers again).
pub(crate) async fn reflect<K, W>(
    what: &'static str,
    writer: reflector::store::Writer<K>,
    stream: W,
    changed: Arc<Notify>,
    health: Arc<Health>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    W: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    let stream = reflector::reflector(writer, stream);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => {
                health.clear(what);
                changed.notify_one();
            }
            Err(e) if routine(&e) => tracing::debug!(part = what, error = %e, "watch restarts"),
            Err(e) => health.fail(what, describe(&e)),
        }
    }
}

/// Whether a watch error is routine: the API ends a watch whose resource version it no longer
/// keeps (410 Gone, `too old resource version`) and the watcher lists again at once. Not a
/// failure of the API: it must not make the gateway unready, even for a moment.
pub(crate) fn routine(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// What a reconcile pass left undone, and so when the next pass is due without a change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unfinished {
    /// A write failed and is tried again in 5 s.
    pub pending: bool,
    /// An object waits for its namespace to exist: the namespace watch wakes the pass, and a
    /// minute is the longest wait should that watch fail.
    pub namespaces: bool,
}

impl Unfinished {
    /// Both passes' leftovers.
    pub fn and(self, other: Unfinished) -> Unfinished {
        Unfinished {
            pending: self.pending || other.pending,
            namespaces: self.namespaces || other.namespaces,
        }
    }

    /// How long until the next pass when nothing changes.
    pub fn retry(self) -> Duration {
        if self.pending {
            Duration::from_secs(5)
        } else if self.namespaces {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(3600)
        }
    }
}

/// One condition of an object's status: its type, whether it holds, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub holds: bool,
    pub reason: &'static str,
    pub message: String,
}

/// A status patch that sets one condition (`Valid`, `Ready`) of an object.
pub(crate) fn condition_patch(
    kind: &'static str,
    ok: bool,
    reason: &'static str,
    message: &str,
) -> serde_json::Value {
    conditions_patch(&[Condition {
        kind,
        holds: ok,
        reason,
        message: message.to_owned(),
    }])
}

/// A status patch that sets the conditions of an object (a merge patch replaces the list
/// whole). An empty message becomes the reason: the API server's merge patch reads `""` as
/// null, which the Condition schema refuses (a Link still connecting, with no error yet, was
/// never shown).
pub(crate) fn conditions_patch(conditions: &[Condition]) -> serde_json::Value {
    let now = strait_federation::link::rfc3339(crate::unix_now());
    let list: Vec<serde_json::Value> = conditions
        .iter()
        .map(|c| {
            let message = if c.message.is_empty() {
                c.reason
            } else {
                c.message.as_str()
            };
            serde_json::json!({
                "type": c.kind,
                "status": if c.holds { "True" } else { "False" },
                "reason": c.reason,
                "message": message,
                "lastTransitionTime": now,
            })
        })
        .collect();
    serde_json::json!({"status": {"conditions": list}})
}

/// Why Kubernetes mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client of the cluster's API, from the kubeconfig or the pod's service account.
pub async fn client(config: &KubernetesConfig) -> Result<Client, KubernetesError> {
    let config = match &config.kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => kube::Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// Looks up the relay Service's ClusterIP and port `relay` until it is known, then tells the
/// sidecars (a new view) to open their flows there.
async fn find_relay_service(shared: Arc<Shared>, client: Client, namespace: String, name: String) {
    let services = kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, &namespace);
    loop {
        let found = match tokio::time::timeout(Duration::from_secs(10), services.get(&name)).await {
            Ok(Ok(service)) => service.spec.and_then(|spec| {
                let ip: std::net::IpAddr = spec.cluster_ip?.parse().ok()?;
                let port = spec
                    .ports?
                    .into_iter()
                    .find(|p| p.name.as_deref() == Some("relay"))?
                    .port;
                Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
            }),
            Ok(Err(e)) => {
                tracing::debug!(service = %name, error = %e, "relay Service not found yet");
                None
            }
            Err(_) => None,
        };
        if let Some(address) = found {
            tracing::info!(service = %name, %address, "sidecars open flows at the relay Service");
            *lock(&shared.relay_service) = Some(address);
            // The relay's address is a setting: streams send it again.
            shared.views_changed();
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Starts the controllers; they run until the gateway stops. The gateway serves from its last
/// state while the API cannot be reached, and `/readyz` says why.
pub fn start(shared: &Arc<Shared>, client: Client, restored: durable::Restore) {
    let health = shared.kubernetes.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        // The EndpointSlice version is chosen by discovery, which needs the API: wait for it.
        let mut backoff = Duration::from_millis(200);
        loop {
            match client.apiserver_version().await {
                Ok(_) => {
                    health.clear("api");
                    break;
                }
                Err(e) => health.fail("api", describe(&e)),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shared.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        let Some(config) = shared.config.kubernetes.clone() else {
            return;
        };
        tokio::spawn(lease::run(
            shared.clone(),
            client.clone(),
            config.namespace.clone(),
            config.lease_duration_seconds,
            health.clone(),
        ));
        tokio::spawn(follow_leadership(shared.clone()));
        if let Some(secret) = config.credentials_secret.clone() {
            tokio::spawn(credentials::run(
                shared.clone(),
                client.clone(),
                config.namespace.clone(),
                secret,
            ));
        }
        tokio::spawn(durable::run(
            shared.clone(),
            client.clone(),
            config.namespace.clone(),
            health.clone(),
            restored,
        ));
        if let Some(service) = config.relay_service.clone() {
            tokio::spawn(find_relay_service(
                shared.clone(),
                client.clone(),
                config.namespace.clone(),
                service,
            ));
        }
        let slices = slices::served(&client).await;
        tracing::info!(endpointslices = %slices.api_version, "Kubernetes mode");
        tokio::spawn(export::run(shared.clone(), client.clone(), health.clone()));
        tokio::spawn(links::run(shared.clone(), client.clone(), health.clone()));
        let (namespaces, namespace_changes) = watch_namespaces(&shared, &client, &health);
        if let Some(injector) = config.injector.clone() {
            start_webhook(&shared, &injector, namespaces.clone(), &health).await;
        }
        tokio::spawn(policies::run(
            shared.clone(),
            client.clone(),
            health.clone(),
            namespaces,
            namespace_changes.clone(),
        ));
        tokio::spawn(mirror::run(
            shared.clone(),
            client.clone(),
            slices.clone(),
            config.namespace,
            health.clone(),
        ));
        tokio::spawn(import::run(
            shared,
            client,
            slices,
            health,
            namespace_changes,
        ));
    });
}

/// Starts the sidecar injector's webhook; what stops it is said on `/readyz`.
async fn start_webhook(
    shared: &Arc<Shared>,
    injector: &crate::config::InjectorConfig,
    namespaces: reflector::Store<k8s_openapi::api::core::v1::Namespace>,
    health: &Health,
) {
    let tls = (|| -> Result<(Arc<rustls::ServerConfig>, String), String> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let chain_pem = read(&injector.cert_file)?;
        let chain = strait_federation::pki::parse_certs(&chain_pem, &injector.cert_file)
            .map_err(|e| e.to_string())?;
        let key =
            <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
                read(&injector.key_file)?.as_bytes(),
            )
            .map_err(|e| format!("{}: {e}", injector.key_file.display()))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", injector.cert_file.display()))?;
        Ok((Arc::new(config), chain_pem))
    })();
    let listener = match tls {
        Ok((tls, chain_pem)) => tokio::net::TcpListener::bind(injector.addr)
            .await
            .map(|listener| {
                let _ = health.injector_chain.set(chain_pem);
                (listener, tls)
            })
            .map_err(|e| format!("cannot listen on {}: {e}", injector.addr)),
        Err(e) => Err(e),
    };
    match listener {
        Ok((listener, tls)) => {
            let bundle = shared.trust.bundle().to_pem().to_owned();
            let injection = Arc::new(inject::Injection {
                image: injector.image.clone(),
                gateway: injector.gateway_address.clone(),
                bundle: Some(bundle),
            });
            tracing::info!(addr = %injector.addr, "sidecar injector listening");
            tokio::spawn(webhook::serve(
                shared.clone(),
                listener,
                tls,
                namespaces,
                injection,
            ));
        }
        Err(reason) => health.fail("injector", reason),
    }
}

/// Watches the cluster's namespaces: what waits for a namespace (an import, a policy resource)
/// is written as soon as it appears, not at the next retry, and whether a namespace is being
/// deleted is read from the store, not asked of the API. The counter moves on every change.
fn watch_namespaces(
    shared: &Arc<Shared>,
    client: &Client,
    health: &Arc<Health>,
) -> (
    reflector::Store<k8s_openapi::api::core::v1::Namespace>,
    tokio::sync::watch::Receiver<u64>,
) {
    use k8s_openapi::api::core::v1::Namespace;
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let (store, writer) = reflector::store::<Namespace>();
    let stream = reflector::reflector(
        writer,
        watch(
            kube::Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    let (shared, health) = (shared.clone(), health.clone());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = shared.shutdown.cancelled() => return,
            };
            match event {
                Some(Ok(_)) => {
                    health.clear("namespaces");
                    tx.send_modify(|n| *n += 1);
                }
                Some(Err(e)) if routine(&e) => {
                    tracing::debug!(part = "namespaces", error = %e, "watch restarts");
                }
                Some(Err(e)) => health.fail("namespaces", describe(&e)),
                None => return,
            }
        }
    });
    (store, rx)
}

/// Runs one request on the Leases under [`Shared::lease_turn`], bounded by `limit`; `None` once
/// the gateway stops: a request after a clean stop could take back what it gave up.
pub(crate) async fn in_turn<T>(
    shared: &Shared,
    limit: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Option<Result<T, kube::Error>> {
    let _turn = shared.lease_turn.lock().await;
    if shared.shutdown.is_cancelled() {
        return None;
    }
    Some(
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| Err(kube::Error::Service("the Lease request timed out".into()))),
    )
}

/// What changes with the Lease for peering. A replica that takes it over counts the grace
/// period of the peers it has no session with from now: a standby does not withdraw (the API
/// holds those imports), so a peer that never comes back is withdrawn by the new leader. One
/// that loses it while alive closes the sessions of peers that dialed it, which then reach the
/// new leader through the Service that selects it.
async fn follow_leadership(shared: Arc<Shared>) {
    let mut leading = shared.leading.subscribe();
    let mut led = *leading.borrow_and_update();
    loop {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return },
            () = shared.shutdown.cancelled() => return,
        }
        let leads = *leading.borrow_and_update();
        if leads == led {
            continue;
        }
        led = leads;
        let now = std::time::Instant::now();
        let mut peers = lock(&shared.peers);
        for status in peers.values_mut() {
            if leads {
                if status.connection.is_none() && status.siblings.is_empty() {
                    status.lost_at = Some(now);
                }
            } else if status.role == crate::peering::PeerRole::Acceptor
                && (status.connection.is_some() || !status.siblings.is_empty())
            {
                status.close_all(b"this replica no longer leads: dial the cluster again");
            }
        }
    }
}

/// The gateway's watch of `api`: every watcher is built here, so that each one tries again
/// after a failure as [`watch_backoff`] says.
pub(crate) fn watch<K>(
    api: kube::Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    watcher(api, config).backoff(watch_backoff())
}

/// The longest wait between two tries of a failed watch, before jitter (which adds up to as
/// much again).
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// How a failed watch is tried again: after 0.8 s, doubling up to [`WATCH_BACKOFF_MAX`], and
/// from 0.8 s again after two minutes without a failure. kube's own default goes up to 30 s
/// (60 with jitter): after the API server restarted, a watch that had failed a few times
/// while it was away started again up to a minute after the API answered, and the gateway
/// stayed not ready all that time.
fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .with_jitter();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(120))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_watch_is_tried_again_within_eight_seconds_however_often_it_failed() {
        let delays: Vec<Duration> = watch_backoff().take(40).collect();
        assert_eq!(delays.len(), 40, "the watch is tried for ever");
        assert!(delays[0] >= Duration::from_millis(800), "{delays:?}");
        assert!(
            delays.iter().all(|delay| *delay <= Duration::from_secs(8)),
            "{delays:?}"
        );
        assert!(delays[10..].iter().all(|delay| *delay >= WATCH_BACKOFF_MAX));
    }

    #[test]
    fn a_condition_never_has_an_empty_message() {
        let patch = condition_patch("Ready", false, "Connecting", "");
        assert_eq!(patch["status"]["conditions"][0]["message"], "Connecting");
        let patch = condition_patch("Ready", false, "Refused", "the token expired");
        assert_eq!(
            patch["status"]["conditions"][0]["message"],
            "the token expired"
        );
    }

    #[test]
    fn an_expired_resource_version_is_routine_and_other_watch_errors_are_not() {
        let status = |code: u16| {
            Box::new(kube::core::Status {
                code,
                message: "too old resource version: 214 (215)".into(),
                reason: "Expired".into(),
                ..Default::default()
            })
        };
        assert!(routine(&watcher::Error::WatchError(status(410))));
        assert!(!routine(&watcher::Error::WatchError(status(403))));
        assert!(!routine(&watcher::Error::NoResourceVersion));
    }
}

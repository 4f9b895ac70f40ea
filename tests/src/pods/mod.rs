//! Pods that really run, where no container runtime exists: test stand-ins for the kubelet,
//! the scheduler and kube-proxy of a real API server (test code, not product).
//!
//! A [`World`] is a network namespace the test thread enters, so that everything it starts
//! (etcd, the API servers, the stand-ins, kubectl, helm) lives there, on its loopback and its
//! bridges, and nothing touches the machine's own network. Each cluster has a [`Node`]: a
//! bridge `10.S.0.1/24` in the world, a Node object with its heartbeat and Lease, a scheduler
//! binding every pending pod to it, a kubelet running each pod in a network namespace of its own
//! (a veth to the bridge, address `10.S.0.N`) with its volumes mounted at their paths in a
//! mount namespace, init containers first, and the pod's IP and readiness written to its
//! status; and a kube-proxy that DNATs each Service's ClusterIP to its ready endpoints with
//! iptables in the world (and the first address of the service range, the `kubernetes`
//! Service, to the API server). Containers run the machine's programs: the image `strait:*` is
//! the strait binary; any other image must give `command`.

mod cluster;
mod kubelet;
mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as NodeObject, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

pub use cluster::{PodCluster, tool};
pub use kubelet::RunningPod;

/// Why pods cannot run on this machine (the tests then say so and skip), if they cannot.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("running pods needs root (network and mount namespaces, iptables)".into());
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-restore",
        "nsenter",
        "unshare",
        "setpriv",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "running pods needs {tool} (apt-get install iproute2 iptables util-linux)"
            ));
        }
    }
    None
}

/// Runs a command to completion; an error with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace the test runs in; deleted when dropped.
pub struct World {
    pub name: String,
}

impl World {
    /// A new world, with its loopback up and forwarding on.
    pub fn create() -> Result<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "strait-world-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let world = Self { name };
        run("ip", &["-n", &world.name, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &world.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        Ok(world)
    }

    /// Moves the calling thread into the world: what it starts afterwards (threads, processes,
    /// sockets) lives there.
    pub fn enter(&self) -> Result<()> {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace file descriptor; only this thread's namespace changes.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// What a cluster's node is.
pub struct NodeSpec {
    pub cluster: String,
    /// The node's subnet is 10.S.0.0/24 (its bridge 10.S.0.1).
    pub subnet: u8,
    /// The API server's port, reached by pods through the `kubernetes` Service.
    pub api_port: u16,
    /// The cluster's service range, a /24 (`10.96.S.0/24`).
    pub service_range: String,
    /// Where pods keep their volumes and logs.
    pub dir: PathBuf,
    /// Programs by image name (the part before `:`).
    pub images: BTreeMap<String, PathBuf>,
}

impl NodeSpec {
    /// The bridge's address, the node's and the pods' gateway.
    pub fn bridge_ip(&self) -> String {
        format!("10.{}.0.1", self.subnet)
    }

    /// The `kubernetes` Service's address: the first of the service range.
    pub fn api_service_ip(&self) -> String {
        let base = self.service_range.split('/').next().unwrap_or_default();
        let mut octets: Vec<&str> = base.split('.').collect();
        octets.truncate(3);
        format!("{}.1", octets.join("."))
    }

    fn name(&self) -> String {
        format!("{}-node", self.cluster)
    }
}

/// A cluster's node: its kubelet, scheduler and kube-proxy stand-ins, until dropped.
pub struct Node {
    pub spec: Arc<NodeSpec>,
    stop: CancellationToken,
    pods: Arc<Mutex<BTreeMap<String, RunningPod>>>,
}

impl Node {
    /// Registers the node in the cluster and starts serving it (call from the world, on a
    /// runtime made there).
    pub async fn start(client: Client, spec: NodeSpec) -> Result<Self> {
        let spec = Arc::new(spec);
        let bridge = format!("sb{}", spec.subnet);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", spec.bridge_ip()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // Connections from the world itself to a ClusterIP need a route before kube-proxy's
        // DNAT rewrites them.
        run("ip", &["route", "add", &spec.service_range, "dev", &bridge])?;
        proxy::install(&spec)?;
        register(&client, &spec).await?;
        let node = Self {
            spec: spec.clone(),
            stop: CancellationToken::new(),
            pods: Arc::default(),
        };
        tokio::spawn(heartbeat(client.clone(), spec.clone(), node.stop.clone()));
        tokio::spawn(schedule(client.clone(), spec.clone(), node.stop.clone()));
        tokio::spawn(proxy::serve(
            client.clone(),
            spec.clone(),
            node.stop.clone(),
        ));
        tokio::spawn(kubelet::serve(
            client,
            spec,
            node.pods.clone(),
            node.stop.clone(),
        ));
        Ok(node)
    }

    /// The running pods: namespace/name → address.
    pub fn pods(&self) -> BTreeMap<String, String> {
        self.pods
            .lock()
            .map(|pods| {
                pods.values()
                    .map(|p| (p.key.clone(), p.ip.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The process of a container of pod `namespace/name`, while it runs.
    pub fn pid(&self, pod: &str, container: &str) -> Option<u32> {
        let pods = self.pods.lock().ok()?;
        let running = pods.values().find(|p| p.key == pod)?;
        running.pid(container)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(mut pods) = self.pods.lock() {
            for (_, pod) in std::mem::take(&mut *pods) {
                pod.stop_now();
            }
        }
        proxy::uninstall(&self.spec);
        let _ = run("ip", &["link", "del", &format!("sb{}", self.spec.subnet)]);
    }
}

/// The time now, as the API writes it.
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The time now with microseconds, as Leases take it.
fn micro_time() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The Node object, ready, and the namespaces a node's objects live in.
async fn register(client: &Client, spec: &NodeSpec) -> Result<()> {
    for name in ["default", "kube-node-lease"] {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }))?;
        let _ = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await;
    }
    let name = spec.name();
    let node: NodeObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"}},
    }))?;
    Api::<NodeObject>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("registering node {name}"))?;
    beat(client, spec).await
}

/// The node's status and Lease, renewed.
async fn beat(client: &Client, spec: &NodeSpec) -> Result<()> {
    let name = spec.name();
    let now = now();
    let status = serde_json::json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "strait's test kubelet is serving",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": spec.bridge_ip()},
                      {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
    }});
    Api::<NodeObject>::all(client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": micro_time()},
    });
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            &name,
            &PatchParams::apply("strait-test-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

async fn heartbeat(client: Client, spec: Arc<NodeSpec>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        if let Err(e) = beat(&client, &spec).await {
            eprintln!("test kubelet {}: heartbeat: {e:#}", spec.cluster);
        }
    }
}

/// The scheduler: binds every pending pod to this node.
async fn schedule(client: Client, spec: Arc<NodeSpec>, stop: CancellationToken) {
    let pods = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(pods, config).boxed();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let pending: Vec<Pod> = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => vec![pod],
            Ok(_) => continue,
            Err(e) => {
                eprintln!("test scheduler {}: {e}", spec.cluster);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for pod in pending {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
            else {
                continue;
            };
            let binding = serde_json::json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": spec.name()},
            });
            let result = Api::<Pod>::namespaced(client.clone(), namespace)
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
            if let Err(e) = result {
                eprintln!(
                    "test scheduler {}: binding {namespace}/{name}: {e}",
                    spec.cluster
                );
            }
        }
    }
}

/// The path of a pod's own folder under the node's.
pub(crate) fn pod_dir(spec: &NodeSpec, namespace: &str, name: &str) -> PathBuf {
    spec.dir.join("pods").join(format!("{namespace}_{name}"))
}

/// Whether a path is one the stand-in can mount a volume at (under /etc, /var or /run, which
/// each pod sees through an overlay of its own).
pub(crate) fn mountable(path: &Path) -> bool {
    ["/etc/", "/var/", "/run/"]
        .iter()
        .any(|root| path.to_string_lossy().starts_with(root))
        && !path.to_string_lossy().contains('\'')
        && !path.to_string_lossy().contains("..")
}

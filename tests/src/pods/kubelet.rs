//! The kubelet stand-in: runs the pods bound to its node. Each pod gets a network namespace
//! (a veth to the node's bridge), its volumes written to its folder (Secrets, ConfigMaps,
//! emptyDirs, projected service-account tokens from the TokenRequest API), `/etc/hosts` with the
//! cluster's Services and `/etc/resolv.conf` naming the gateway's DNS Service; each container
//! is a process in that network namespace and a mount namespace of its own, where `/etc`,
//! `/var` and `/run` are overlays and the volumes are bound at their paths, run as its user.
//! Init containers run first, to success; containers are restarted when they exit. The pod's
//! address, its containers' states and its readiness (from readiness probes) go to its status.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{NodeSpec, mountable, now, pod_dir, run};

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a stopped pod's processes get between SIGTERM and SIGKILL, unless the pod says.
const GRACE: Duration = Duration::from_secs(30);

/// A pod this node runs.
pub struct RunningPod {
    /// `namespace/name`.
    pub key: String,
    pub ip: String,
    netns: String,
    /// The process of each container now running.
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Set when the pod is being deleted: exited containers are not restarted.
    terminating: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl RunningPod {
    /// A container's process, while it runs.
    pub fn pid(&self, container: &str) -> Option<u32> {
        self.pids.lock().ok()?.get(container).copied()
    }

    /// Stops every process at once and removes the network namespace.
    pub(super) fn stop_now(&self) {
        self.stop.cancel();
        if let Ok(pids) = self.pids.lock() {
            for pid in pids.values() {
                signal(*pid, libc::SIGKILL);
            }
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: signalling a process this node started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Follows the pods bound to this node: starts new ones, stops deleted ones.
pub(super) async fn serve(
    client: Client,
    spec: Arc<NodeSpec>,
    pods: Arc<Mutex<BTreeMap<String, RunningPod>>>,
    stop: CancellationToken,
) {
    let next = Arc::new(AtomicU8::new(10));
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", spec.name()));
    let mut events = watcher::watcher(Api::<Pod>::all(client.clone()), config).boxed();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(_) => continue,
            Err(e) => {
                eprintln!("test kubelet {}: {e}", spec.cluster);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let terminating = deleted || pod.metadata.deletion_timestamp.is_some();
        if terminating {
            let running = pods.lock().ok().and_then(|mut p| p.remove(&uid));
            if let Some(running) = running {
                running.terminating.store(true, Ordering::SeqCst);
                let pids: Vec<u32> = running
                    .pids
                    .lock()
                    .map(|p| p.values().copied().collect())
                    .unwrap_or_default();
                for pid in &pids {
                    signal(*pid, libc::SIGTERM);
                }
                // Until every container has exited, or the pod's grace period ends.
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .map_or(GRACE, |s| Duration::from_secs(s.max(0) as u64));
                let deadline = tokio::time::Instant::now() + grace;
                while running.pids.lock().is_ok_and(|p| !p.is_empty())
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                running.stop_now();
            }
            if !deleted {
                let api = Api::<Pod>::namespaced(client.clone(), &namespace);
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                let _ = api.delete(&name, &params).await;
            }
            continue;
        }
        let known = pods.lock().map(|p| p.contains_key(&uid)).unwrap_or(true);
        if known || pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
            continue;
        }
        let host = next.fetch_add(1, Ordering::Relaxed);
        let ip = format!("10.{}.0.{host}", spec.subnet);
        let running = RunningPod {
            key: format!("{namespace}/{name}"),
            ip: ip.clone(),
            netns: format!("strait-pod-{}-{}-{host}", std::process::id(), spec.subnet),
            pids: Arc::default(),
            terminating: Arc::default(),
            stop: stop.child_token(),
        };
        let task = PodTask {
            client: client.clone(),
            spec: spec.clone(),
            pod: serde_json::to_value(&pod).unwrap_or_default(),
            ip,
            host,
            netns: running.netns.clone(),
            pids: running.pids.clone(),
            terminating: running.terminating.clone(),
            stop: running.stop.clone(),
        };
        if let Ok(mut pods) = pods.lock() {
            pods.insert(uid, running);
        }
        tokio::spawn(async move {
            let key = format!("{}/{}", task.namespace(), task.name());
            if let Err(e) = task.run().await {
                eprintln!("test kubelet: pod {key}: {e:#}");
            }
        });
    }
}

/// What one pod's run needs.
struct PodTask {
    client: Client,
    spec: Arc<NodeSpec>,
    pod: Value,
    ip: String,
    host: u8,
    netns: String,
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    terminating: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// One container's state, for the pod's status.
#[derive(Clone, Default)]
struct ContainerState {
    running: bool,
    restarts: u32,
}

impl PodTask {
    fn namespace(&self) -> &str {
        self.pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn dir(&self) -> PathBuf {
        pod_dir(&self.spec, self.namespace(), self.name())
    }

    async fn run(self) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)?;
        self.network()?;
        let volumes = self.volumes(&dir).await?;
        self.name_files(&dir).await?;
        let states: Arc<Mutex<BTreeMap<String, ContainerState>>> = Arc::default();
        self.status_of(&states, &BTreeMap::new()).await?;
        for container in self.pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = container["name"].as_str().unwrap_or_default().to_owned();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut child = self.spawn(container, &volumes, &dir).await?;
                let status = tokio::select! {
                    () = self.stop.cancelled() => return Ok(()),
                    status = child.wait() => status?,
                };
                if status.success() {
                    break;
                }
                if attempts >= 10 {
                    bail!(
                        "init container {name} failed {attempts} times ({status}); see {}",
                        dir.join(format!("{name}.log")).display()
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let containers: Vec<Value> = self.pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let task = Arc::new(self);
        for container in containers.clone() {
            let task = task.clone();
            let states = states.clone();
            let volumes = volumes.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                let name = container["name"].as_str().unwrap_or_default().to_owned();
                loop {
                    let mut child = match task.spawn(&container, &volumes, &dir).await {
                        Ok(child) => child,
                        Err(e) => {
                            eprintln!(
                                "test kubelet: {}/{}: {name}: {e:#}",
                                task.namespace(),
                                task.name()
                            );
                            return;
                        }
                    };
                    if let Ok(mut s) = states.lock() {
                        s.entry(name.clone()).or_default().running = true;
                    }
                    tokio::select! {
                        () = task.stop.cancelled() => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            return;
                        }
                        _ = child.wait() => {}
                    }
                    if let Ok(mut pids) = task.pids.lock() {
                        pids.remove(&name);
                    }
                    if task.terminating.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(mut s) = states.lock() {
                        let state = s.entry(name.clone()).or_default();
                        state.running = false;
                        state.restarts += 1;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        // Readiness, probed until the pod stops; the status follows it.
        let mut last = None;
        loop {
            let mut ready = BTreeMap::new();
            for container in &containers {
                let name = container["name"].as_str().unwrap_or_default().to_owned();
                let running = states
                    .lock()
                    .map(|s| s.get(&name).is_some_and(|c| c.running))
                    .unwrap_or(false);
                let probed = match container.get("readinessProbe") {
                    Some(probe) if running => task.probe(container, probe).await,
                    _ => running,
                };
                ready.insert(name, probed);
            }
            let restarts: Vec<u32> = states
                .lock()
                .map(|s| s.values().map(|c| c.restarts).collect())
                .unwrap_or_default();
            let now = (ready.clone(), restarts);
            if last.as_ref() != Some(&now) {
                if let Err(e) = task.status_of(&states, &ready).await {
                    eprintln!(
                        "test kubelet: {}/{}: status: {e:#}",
                        task.namespace(),
                        task.name()
                    );
                } else {
                    last = Some(now);
                }
            }
            tokio::select! {
                () = task.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }

    /// The pod's network namespace: eth0 on the node's bridge, loopback, a default route.
    fn network(&self) -> Result<()> {
        let veth = format!("vp{}x{}", self.spec.subnet, self.host);
        run("ip", &["netns", "add", &self.netns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.netns,
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "set",
                &veth,
                "master",
                &format!("sb{}", self.spec.subnet),
                "up",
            ],
        )?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", self.netns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        inside(&["addr", "add", &format!("{}/24", self.ip), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", &self.spec.bridge_ip()])?;
        Ok(())
    }

    /// Writes each volume into the pod's folder; their folders by name.
    async fn volumes(&self, dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
        let namespace = self.namespace().to_owned();
        let mut folders = BTreeMap::new();
        let fs_group = self.pod["spec"]["securityContext"]["fsGroup"].as_u64();
        for volume in self.pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            let folder = dir.join("volumes").join(name);
            std::fs::create_dir_all(&folder)?;
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777))?;
            let mode = |source: &Value| source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            if let Some(secret) = volume.get("secret") {
                let found = Api::<Secret>::namespaced(self.client.clone(), &namespace)
                    .get(secret["secretName"].as_str().unwrap_or_default())
                    .await
                    .with_context(|| format!("volume {name}: Secret {}", secret["secretName"]))?;
                for (key, value) in found.data.unwrap_or_default() {
                    write(&folder.join(key), &value.0, mode(secret), fs_group)?;
                }
            } else if let Some(map) = volume.get("configMap") {
                let found = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace)
                    .get(map["name"].as_str().unwrap_or_default())
                    .await
                    .with_context(|| format!("volume {name}: ConfigMap {}", map["name"]))?;
                for (key, value) in found.data.unwrap_or_default() {
                    write(&folder.join(key), value.as_bytes(), mode(map), fs_group)?;
                }
            } else if volume.get("emptyDir").is_some() {
            } else if let Some(projected) = volume.get("projected") {
                for source in projected["sources"].as_array().into_iter().flatten() {
                    if let Some(token) = source.get("serviceAccountToken") {
                        let issued = self
                            .token(token)
                            .await
                            .with_context(|| format!("volume {name}"))?;
                        let path = token["path"].as_str().unwrap_or("token");
                        write(
                            &folder.join(path),
                            issued.as_bytes(),
                            mode(projected),
                            fs_group,
                        )?;
                    } else if let Some(map) = source.get("configMap") {
                        let found = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace)
                            .get(map["name"].as_str().unwrap_or_default())
                            .await;
                        if let Ok(found) = found {
                            let data = found.data.unwrap_or_default();
                            for item in map["items"].as_array().into_iter().flatten() {
                                let key = item["key"].as_str().unwrap_or_default();
                                let path = item["path"].as_str().unwrap_or(key);
                                if let Some(value) = data.get(key) {
                                    write(
                                        &folder.join(path),
                                        value.as_bytes(),
                                        mode(projected),
                                        fs_group,
                                    )?;
                                }
                            }
                        } else if map["optional"] != true {
                            bail!("volume {name}: ConfigMap {} does not exist", map["name"]);
                        }
                    } else {
                        bail!(
                            "volume {name}: this projected source is not supported by the test kubelet: {source}"
                        );
                    }
                }
            } else {
                bail!("volume {name}: this kind is not supported by the test kubelet: {volume}");
            }
            folders.insert(name.to_owned(), folder);
        }
        Ok(folders)
    }

    /// A token the API server issues the pod's service account, bound to the pod.
    async fn token(&self, source: &Value) -> Result<String> {
        let account = self.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let request = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"].as_str().unwrap_or("https://kubernetes.default.svc")],
                "expirationSeconds": source["expirationSeconds"].as_i64().unwrap_or(3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                   "name": self.name(), "uid": self.pod["metadata"]["uid"]},
            },
        }))?;
        Ok(
            Api::<ServiceAccount>::namespaced(self.client.clone(), self.namespace())
                .create_token_request(account, &PostParams::default(), &request)
                .await?
                .status
                .context("a TokenRequest without status")?
                .token,
        )
    }

    /// `/etc/hosts` (this pod, and every Service by its names) and `/etc/resolv.conf` (the
    /// gateway's DNS Service, when there is one).
    async fn name_files(&self, dir: &Path) -> Result<()> {
        let services = Api::<Service>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        let mut hosts = format!("127.0.0.1\tlocalhost\n{}\t{}\n", self.ip, self.name());
        let mut nameserver = self.spec.bridge_ip();
        for service in services {
            let (Some(namespace), Some(name)) =
                (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let Some(ip) = service
                .spec
                .and_then(|s| s.cluster_ip)
                .filter(|ip| ip != "None")
            else {
                continue;
            };
            if namespace == "strait-system" && name == "strait-dns" {
                nameserver = ip.clone();
            }
            let short = if namespace == self.namespace() {
                format!(" {name}")
            } else {
                String::new()
            };
            hosts.push_str(&format!("{ip}\t{name}.{namespace}.svc.cluster.local {name}.{namespace}.svc {name}.{namespace}{short}\n"));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions ndots:1 timeout:1 attempts:2\n"),
        )?;
        Ok(())
    }

    /// A container's environment: its own, the API's address, and `fieldRef`s resolved.
    async fn environment(&self, container: &Value) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("HOSTNAME".to_owned(), self.name().to_owned()),
            (
                "KUBERNETES_SERVICE_HOST".to_owned(),
                self.spec.api_service_ip(),
            ),
            ("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned()),
        ];
        for item in container["env"].as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default().to_owned();
            let value = if let Some(value) = item["value"].as_str() {
                value.to_owned()
            } else if let Some(field) = item["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "status.podIP" => self.ip.clone(),
                    "status.hostIP" => self.spec.bridge_ip(),
                    "spec.nodeName" => self.spec.name(),
                    path => {
                        let mut value = &self.pod;
                        for step in path.split('.') {
                            value = &value[step];
                        }
                        value.as_str().unwrap_or_default().to_owned()
                    }
                }
            } else if let Some(key) = item["valueFrom"]["configMapKeyRef"].as_object() {
                let map = Api::<ConfigMap>::namespaced(self.client.clone(), self.namespace())
                    .get(key["name"].as_str().unwrap_or_default())
                    .await?;
                map.data
                    .unwrap_or_default()
                    .get(key["key"].as_str().unwrap_or_default())
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// Starts a container's process in the pod's namespaces.
    async fn spawn(
        &self,
        container: &Value,
        volumes: &BTreeMap<String, PathBuf>,
        dir: &Path,
    ) -> Result<tokio::process::Child> {
        let name = container["name"].as_str().unwrap_or_default();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let image = container["image"].as_str().unwrap_or_default();
        let image_name = image.split(':').next().unwrap_or_default();
        let mut argv = strings(&container["command"]);
        if argv.is_empty() {
            let program = self.spec.images.get(image_name).with_context(|| {
                format!("container {name}: image {image} has no program here and no command")
            })?;
            argv.push(program.to_string_lossy().into_owned());
        }
        argv.extend(strings(&container["args"]));
        let scratch = dir.join(format!("scratch-{name}"));
        std::fs::create_dir_all(&scratch)?;
        let quote = |p: &Path| format!("'{}'", p.to_string_lossy());
        let mut script = format!("set -e\nmount -t tmpfs tmpfs {}\n", quote(&scratch));
        for root in ["etc", "var", "run"] {
            let upper = scratch.join(root).join("u");
            let work = scratch.join(root).join("w");
            script.push_str(&format!(
                "mkdir -p {u} {w}\nmount -t overlay overlay -o lowerdir=/{root},upperdir={u},workdir={w} /{root}\n",
                u = quote(&upper),
                w = quote(&work)
            ));
        }
        script.push_str(&format!(
            "mount --bind {} /etc/hosts\nmount --bind {} /etc/resolv.conf\n",
            quote(&dir.join("hosts")),
            quote(&dir.join("resolv.conf"))
        ));
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let path = PathBuf::from(mount["mountPath"].as_str().unwrap_or_default());
            if !mountable(&path) {
                bail!(
                    "container {name}: the test kubelet mounts volumes only under /etc, /var and /run, not at {}",
                    path.display()
                );
            }
            let volume = mount["name"].as_str().unwrap_or_default();
            let mut source = volumes
                .get(volume)
                .with_context(|| format!("container {name}: no volume {volume}"))?
                .clone();
            if let Some(sub) = mount["subPath"].as_str() {
                source = source.join(sub);
            }
            script.push_str(&format!(
                "mkdir -p {p}\nmount --bind {s} {p}\n",
                p = quote(&path),
                s = quote(&source)
            ));
        }
        let context = |key: &str| {
            container["securityContext"][key]
                .as_u64()
                .or_else(|| self.pod["spec"]["securityContext"][key].as_u64())
        };
        match context("runAsUser") {
            Some(user) if user != 0 => {
                let group = context("runAsGroup").unwrap_or(user);
                let groups = match self.pod["spec"]["securityContext"]["fsGroup"].as_u64() {
                    Some(fs) => format!("--groups={fs}"),
                    None => "--clear-groups".to_owned(),
                };
                script.push_str(&format!(
                    "exec setpriv --reuid={user} --regid={group} {groups} -- \"$@\"\n"
                ));
            }
            _ => script.push_str("exec \"$@\"\n"),
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let mut command = tokio::process::Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args(&argv)
            .env_clear()
            .envs(self.environment(container).await?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("container {name}: starting {}", argv.join(" ")))?;
        if let (Some(pid), Ok(mut pids)) = (child.id(), self.pids.lock()) {
            pids.insert(name.to_owned(), pid);
        }
        Ok(child)
    }

    /// Whether a readiness probe passes (HTTP GET or TCP connect to the pod's address; an exec
    /// probe counts as passed).
    async fn probe(&self, container: &Value, probe: &Value) -> bool {
        let port_of = |port: &Value| -> Option<u16> {
            match port {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(name) => container["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["containerPort"].as_u64())
                    .and_then(|n| u16::try_from(n).ok()),
                _ => None,
            }
        };
        let attempt = async {
            if let Some(get) = probe.get("httpGet") {
                let port = port_of(&get["port"])?;
                let path = get["path"].as_str().unwrap_or("/");
                let mut stream = tokio::net::TcpStream::connect((self.ip.as_str(), port))
                    .await
                    .ok()?;
                let request = format!("GET {path} HTTP/1.0\r\nHost: {}:{port}\r\n\r\n", self.ip);
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await.ok()?;
                let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
                Some((200..400).contains(&status))
            } else if let Some(tcp) = probe.get("tcpSocket") {
                let port = port_of(&tcp["port"])?;
                Some(
                    tokio::net::TcpStream::connect((self.ip.as_str(), port))
                        .await
                        .is_ok(),
                )
            } else {
                Some(true)
            }
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
            Ok(Some(true))
        )
    }

    /// Writes the pod's status: its address, phase, conditions and containers.
    async fn status_of(
        &self,
        states: &Arc<Mutex<BTreeMap<String, ContainerState>>>,
        ready: &BTreeMap<String, bool>,
    ) -> Result<()> {
        let states = states.lock().map(|s| s.clone()).unwrap_or_default();
        let now = now();
        let all_ready = !ready.is_empty() && ready.values().all(|r| *r);
        let truth = |b: bool| if b { "True" } else { "False" };
        let containers: Vec<Value> = self.pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default();
                let state = states.get(name).cloned().unwrap_or_default();
                let running = if state.running {
                    json!({"running": {"startedAt": now}})
                } else {
                    json!({"waiting": {"reason": "ContainerCreating"}})
                };
                json!({"name": name, "image": c["image"], "imageID": "", "ready": ready.get(name).copied().unwrap_or(false),
                       "restartCount": state.restarts, "started": state.running, "state": running})
            })
            .collect();
        let initialized = !ready.is_empty();
        let status = json!({"status": {
            "phase": if initialized { "Running" } else { "Pending" },
            "hostIP": self.spec.bridge_ip(),
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": truth(initialized), "lastTransitionTime": now},
                {"type": "ContainersReady", "status": truth(all_ready), "lastTransitionTime": now},
                {"type": "Ready", "status": truth(all_ready), "lastTransitionTime": now},
            ],
            "containerStatuses": containers,
        }});
        Api::<Pod>::namespaced(self.client.clone(), self.namespace())
            .patch_status(self.name(), &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }
}

/// Writes a volume's file (its folders made), readable as `mode` says by the pod's fsGroup.
fn write(path: &Path, bytes: &[u8], mode: u32, fs_group: Option<u64>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(group) = fs_group.and_then(|g| u32::try_from(g).ok()) {
        std::os::unix::fs::chown(path, None, Some(group))?;
    }
    Ok(())
}

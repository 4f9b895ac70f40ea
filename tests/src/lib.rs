//! Whole-mesh test harness: a trust root in a temporary folder, gateways started as real
//! `strait` processes on loopback ports, the CLI driven as an operator would, and waits on
//! conditions with deadlines (never bare sleeps).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

mod child;
mod http;
pub mod kube;
pub mod load;
pub mod netns;
pub mod otlp;
pub mod pods;
pub mod rogue;
pub mod terraform;
pub mod workloads;

use child::{log_tail, reap, signal, wait_child};
pub use child::{proc_cpu_ticks, proc_memory};
pub use http::{http_get, http_get_host, metric};

/// The demo's gRPC service (client side), which the sample app serves.
pub mod demo {
    tonic::include_proto!("strait.demo.v1");
}

/// The newest modification time of the sources the `strait` binary is built from.
fn newest_source(root: &Path) -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(Some(modified));
            }
        }
    }
    let mut newest = None;
    for dir in [
        "federation/src",
        "federation/proto",
        "io/src",
        "gateway/src",
        "sidecar/src",
        "cli/src",
        "cli/proto",
        // Built into the binary for `strait install`.
        "deploy/helm/strait",
    ] {
        walk(&root.join(dir), &mut newest);
    }
    newest
}

/// The `strait` binary, rebuilt first when a source file is newer than it (so a run of this
/// package alone never tests an old binary). `cargo build --workspace --bins` resolves
/// features as the test build does, so it rebuilds only what changed.
pub fn strait_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("STRAIT_BIN") {
            return PathBuf::from(path);
        }
        // Test executables live in target/<profile>/deps; the binary in target/<profile>.
        let exe = std::env::current_exe().expect("the test executable has a path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executables live in target/<profile>/deps");
        let bin = profile_dir.join("strait");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests crate lives in the workspace");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_none() || newest_source(root) > built {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(root)
                .args(["build", "--workspace", "--bins"])
                .args(if profile_dir.ends_with("release") {
                    &["--release"][..]
                } else {
                    &[][..]
                })
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the strait binary failed");
        }
        bin
    })
}

/// A free loopback port (UDP or TCP) below the OS's ephemeral range. A port the OS hands out
/// for port 0 is free only until it is handed out again, to any outgoing connection: a gateway
/// that binds it a moment later can find it taken. Ports from 20000-32767 (checked free here)
/// are never given to outgoing connections. Within one test process no port is handed out
/// twice (until 12,768 have been): the tests running side by side pick ports before their
/// gateways bind them, so a check that a port is free cannot tell them apart.
pub fn free_port(udp: bool) -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // One random start per process, then consecutive numbers.
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        u64::from(std::process::id()).wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()))
    }) % PORT_RANGE;
    for _ in 0..1_000 {
        let port = spread_port(seed + NEXT.fetch_add(1, Ordering::Relaxed));
        let free = if udp {
            UdpSocket::bind(("127.0.0.1", port)).is_ok()
        } else {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if free {
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767")
}

/// How many ports [`free_port`] chooses from.
const PORT_RANGE: u64 = 12_768;

/// The n-th port of the test range: 12,768 consecutive `n` give 12,768 different ports, spread
/// over the range (7,919 is prime to 12,768).
fn spread_port(n: u64) -> u16 {
    20_000 + ((n % PORT_RANGE) * 7_919 % PORT_RANGE) as u16
}

/// Waits until `check` returns `Some`, or fails after `limit` with the last observation.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {limit:?} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The policy document of the acceptance check: a deny of every caller from cluster west.
pub const NO_WEST_TO_API: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-west-to-api, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: deny
  rules:
    - from: [{clusters: [west]}]
";

/// A gateway's addresses, on ports free on loopback (the API's on `api_host`).
#[derive(Clone, Copy)]
struct Ports {
    quic: SocketAddr,
    relay: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
}

impl Ports {
    fn free(api_host: &str) -> Result<Self> {
        Ok(Self {
            quic: format!("127.0.0.1:{}", free_port(true)).parse()?,
            relay: format!("127.0.0.1:{}", free_port(false)).parse()?,
            api: format!("{api_host}:{}", free_port(false)).parse()?,
            admin: format!("127.0.0.1:{}", free_port(false)).parse()?,
            dns: format!("127.0.0.1:{}", free_dns_port()?).parse()?,
        })
    }
}

/// A gateway process and its addresses.
pub struct Gateway {
    pub cluster: String,
    pub dir: PathBuf,
    pub quic: SocketAddr,
    /// Where this cluster's sidecars open flows to other clusters.
    pub relay: SocketAddr,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// Where the gateway answers DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// More environment for the process (`POD_NAME`, say).
    pub env: Vec<(String, String)>,
    /// A command the process runs under (`ip netns exec NAME`, say).
    pub prefix: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    runs: usize,
}

impl Gateway {
    /// Starts the process and waits for `/readyz`.
    pub fn start(&mut self, mesh: &Mesh) -> Result<()> {
        self.launch(mesh)?;
        let admin = self.admin;
        wait_for(
            Duration::from_secs(15),
            &format!("gateway {} ready", self.cluster),
            || {
                Ok(http_get(admin, "/readyz")
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ()))
            },
        )
        .with_context(|| self.log_tail())
    }

    /// Starts the process without waiting for it to be ready.
    pub fn launch(&mut self, mesh: &Mesh) -> Result<()> {
        if self.child.is_some() {
            bail!("gateway {} is already running", self.cluster);
        }
        self.runs += 1;
        let log = std::fs::File::create(&self.log)?;
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(strait_bin());
                command
            }
            None => Command::new(strait_bin()),
        };
        let child = command
            .args(["gateway", "run", "--config"])
            .arg(self.dir.join("gateway.yaml"))
            .env("STRAIT_CONFIG", &mesh.config)
            .env("STRAIT_LOG", "info,strait_gateway=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting strait gateway run")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process with SIGTERM and checks that it exits 0.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, "TERM")?;
        let status = wait_child(&mut child, Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "gateway {} exited with {status} after SIGTERM\n{}",
                self.cluster,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Kills the process at once (a crash, or a lost machine).
    pub fn kill(&mut self) -> Result<()> {
        reap(self.child.take());
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the running process, in bytes (Linux).
    pub fn rss_bytes(&self) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("gateway {} is not running", self.cluster))?;
        proc_memory(pid, "VmRSS")
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(self.admin, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// A second replica of this gateway (Kubernetes mode): the same cluster, issuer and
    /// configuration in a folder of its own, on ports of its own, with an empty state (a pod
    /// of its own, with its own disk). Not started.
    pub fn replica(&self, name: &str) -> Result<Gateway> {
        let dir = self.dir.with_file_name(format!("{}-{name}", self.cluster));
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let file = path.file_name().unwrap_or_default();
            if path.is_file() && file != "state.json" && file != "vips.json" {
                std::fs::copy(&path, dir.join(file))?;
            }
        }
        let ports = Ports::free(&self.api.ip().to_string())?;
        let config = dir.join("gateway.yaml");
        let mut text = std::fs::read_to_string(&config)?;
        for (old, new) in [
            (self.quic, ports.quic),
            (self.relay, ports.relay),
            (self.api, ports.api),
            (self.admin, ports.admin),
            (self.dns, ports.dns),
        ] {
            text = text.replace(&old.to_string(), &new.to_string());
        }
        text = text.replace(
            &self.dir.to_string_lossy().into_owned(),
            &dir.to_string_lossy(),
        );
        std::fs::write(&config, text)?;
        let log = self
            .log
            .with_file_name(format!("{}-{name}.log", self.cluster));
        Ok(Gateway::new(&self.cluster, dir, log, ports))
    }

    fn new(cluster: &str, dir: PathBuf, log: PathBuf, ports: Ports) -> Self {
        Gateway {
            cluster: cluster.into(),
            log,
            dir,
            quic: ports.quic,
            relay: ports.relay,
            api: ports.api,
            admin: ports.admin,
            dns: ports.dns,
            env: Vec::new(),
            prefix: Vec::new(),
            child: None,
            runs: 0,
        }
    }

    /// The whole log of the gateway's latest run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the gateway's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(
            &self.log,
            &format!("gateway {} log (run {})", self.cluster, self.runs),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}

/// The last 30 lines of a log, titled, for failure messages.
/// A mesh under test: one trust root, gateways, a contexts file, all in a temporary folder.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub trust: PathBuf,
}

/// The result of a CLI command.
#[derive(Debug)]
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    fn from(output: Output) -> Self {
        Self {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The output, or an error with stderr when the command failed.
    pub fn success(self) -> Result<String> {
        if self.ok {
            Ok(self.stdout)
        } else {
            Err(anyhow!("command failed: {}", self.stderr.trim()))
        }
    }
}

impl Mesh {
    /// A new mesh with a trust root for `example.mesh`.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("strait-test-").tempdir()?;
        let mesh = Self {
            config: dir.path().join("config"),
            trust: dir.path().join("trust"),
            dir,
        };
        mesh.cli(
            &["trust", "init", "--trust-domain", "example.mesh", "--dir"],
            &[&mesh.trust],
        )
        .success()?;
        Ok(mesh)
    }

    /// Runs `strait ARGS PATHS` with this mesh's contexts file.
    pub fn cli(&self, args: &[&str], paths: &[&Path]) -> CliOutput {
        let output = Command::new(strait_bin())
            .args(args)
            .args(paths)
            .env("STRAIT_CONFIG", &self.config)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) => CliOutput::from(output),
            Err(e) => CliOutput {
                ok: false,
                stdout: String::new(),
                stderr: format!("cannot run strait: {e}"),
            },
        }
    }

    /// `strait --context CLUSTER ARGS`.
    pub fn ctl(&self, cluster: &str, args: &[&str]) -> CliOutput {
        let mut all = vec!["--context", cluster];
        all.extend_from_slice(args);
        self.cli(&all, &[])
    }

    /// Initializes a gateway for `cluster` under this mesh's root (not started). `peering`
    /// lines, when given, replace the default peering timers in its config.
    pub fn gateway(&self, cluster: &str, peering: Option<&str>) -> Result<Gateway> {
        self.gateway_under(cluster, &self.trust, peering)
    }

    /// Initializes and starts a gateway for `cluster`.
    pub fn start(&self, cluster: &str, peering: Option<&str>) -> Result<Gateway> {
        let mut gateway = self.gateway(cluster, peering)?;
        gateway.start(self)?;
        Ok(gateway)
    }

    /// Waits until `cluster` sees `service` served from exactly `clusters` (none: absent).
    pub fn wait_served(
        &self,
        cluster: &str,
        service: &str,
        clusters: &[&str],
        limit: Duration,
    ) -> Result<()> {
        wait_for(
            limit,
            &format!("{service} served from {clusters:?} in {cluster}'s catalog"),
            || Ok((self.served_from(cluster, service)? == clusters).then_some(())),
        )
    }

    /// Initializes a gateway under another trust folder.
    pub fn gateway_under(
        &self,
        cluster: &str,
        trust: &Path,
        peering: Option<&str>,
    ) -> Result<Gateway> {
        self.gateway_with_api(cluster, trust, peering, "127.0.0.1")
    }

    /// Initializes a gateway whose API listens on `api_host` (an address sidecars in another
    /// network namespace can reach, say).
    pub fn gateway_with_api(
        &self,
        cluster: &str,
        trust: &Path,
        peering: Option<&str>,
        api_host: &str,
    ) -> Result<Gateway> {
        self.gateway_with(cluster, trust, peering, api_host, &[])
    }

    /// Initializes a gateway in Kubernetes mode, watching the cluster of `kubeconfig`.
    pub fn kubernetes_gateway(&self, cluster: &str, kubeconfig: &Path) -> Result<Gateway> {
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        self.gateway_with(
            cluster,
            &self.trust,
            None,
            "127.0.0.1",
            &["--kubeconfig", &kubeconfig],
        )
    }

    /// Initializes a gateway with more `gateway init` arguments.
    pub fn gateway_with(
        &self,
        cluster: &str,
        trust: &Path,
        peering: Option<&str>,
        api_host: &str,
        extra: &[&str],
    ) -> Result<Gateway> {
        let dir = self.dir.path().join(cluster);
        let ports = Ports::free(api_host)?;
        let Ports {
            quic,
            relay,
            api,
            admin,
            dns,
        } = ports;
        self.cli(
            &[
                "gateway",
                "init",
                "--cluster",
                cluster,
                "--quic-addr",
                &quic.to_string(),
                "--api-addr",
                &api.to_string(),
                "--admin-addr",
                &admin.to_string(),
                "--relay-addr",
                &relay.to_string(),
                "--dns-addr",
                &dns.to_string(),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .chain(["--trust"])
            .collect::<Vec<_>>(),
            &[trust, Path::new("--dir"), &dir],
        )
        .success()?;
        if let Some(peering) = peering {
            let path = dir.join("gateway.yaml");
            let text = std::fs::read_to_string(&path)?;
            let kept: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("peering:"))
                .collect();
            std::fs::write(&path, format!("{}\npeering:\n{peering}\n", kept.join("\n")))?;
        }
        let log = self.dir.path().join(format!("{cluster}.log"));
        Ok(Gateway::new(cluster, dir, log, ports))
    }

    /// Writes a file in the mesh folder and returns its path.
    pub fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `strait --context CLUSTER apply -f` a YAML text.
    pub fn apply(&self, cluster: &str, name: &str, yaml: &str) -> CliOutput {
        match self.file(name, yaml) {
            Ok(path) => self.cli(&["--context", cluster, "apply", "-f"], &[&path]),
            Err(e) => CliOutput {
                ok: false,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Links `dialer` to `target`: `strait --context TARGET link`, applied on DIALER.
    pub fn link(&self, dialer: &str, target: &str) -> Result<String> {
        let document = self.ctl(target, &["link"]).success()?;
        self.apply(
            dialer,
            &format!("{target}-link-for-{dialer}.yaml"),
            &document,
        )
        .success()
    }

    /// The services a cluster sees: (namespace/name, clusters serving it).
    pub fn services(&self, cluster: &str) -> Result<Vec<(String, Vec<String>)>> {
        let text = self
            .ctl(cluster, &["get", "services", "-o", "json"])
            .success()?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let items = value["items"]
            .as_array()
            .ok_or_else(|| anyhow!("no items in {text}"))?;
        Ok(items
            .iter()
            .map(|s| {
                (
                    format!(
                        "{}/{}",
                        s["namespace"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("")
                    ),
                    s["clusters"]
                        .as_array()
                        .map(|c| {
                            c.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The clusters serving one service in a cluster's view (empty when absent).
    pub fn served_from(&self, cluster: &str, service: &str) -> Result<Vec<String>> {
        Ok(self
            .services(cluster)?
            .into_iter()
            .find(|(name, _)| name == service)
            .map(|(_, clusters)| clusters)
            .unwrap_or_default())
    }

    /// The state of a cluster's link with `peer` ("" when there is none).
    pub fn link_state(&self, cluster: &str, peer: &str) -> Result<String> {
        Ok(self.link_view(cluster, peer)?["state"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// What `get links -o json` in `cluster` says of the link with `peer` (null when absent).
    pub fn link_view(&self, cluster: &str, peer: &str) -> Result<serde_json::Value> {
        let text = self
            .ctl(cluster, &["get", "links", "-o", "json"])
            .success()?;
        let mut value: serde_json::Value = serde_json::from_str(&text)?;
        let items = value["items"].as_array_mut().map(std::mem::take);
        Ok(items
            .into_iter()
            .flatten()
            .find(|l| l["cluster"] == peer)
            .unwrap_or_default())
    }
}

/// A universal-mode Service document.
pub fn service(namespace: &str, name: &str, export: bool, port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  export: {export}\n  ports: [{{name: http, port: {port}, protocol: http}}]\n  endpoints: [{{address: 127.0.0.1:9001}}]\n"
    )
}

/// A process started by a test (a sidecar or a sample app) that prints one JSON line when it
/// is up: its addresses.
pub struct Process {
    pub name: String,
    /// The JSON line it printed when it started.
    pub started: serde_json::Value,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `strait ARGS` and waits (up to 30 s) for its first line of standard output.
    pub fn start(mesh: &Mesh, name: &str, args: &[String]) -> Result<Self> {
        Self::start_in(mesh, name, &[], args)
    }

    /// Starts `PREFIX strait ARGS` (`ip netns exec NS`, say) like [`Process::start`].
    pub fn start_in(mesh: &Mesh, name: &str, prefix: &[&str], args: &[String]) -> Result<Self> {
        let command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(strait_bin());
                command
            }
            None => Command::new(strait_bin()),
        };
        Self::spawn(mesh, name, command, args)
    }

    /// Starts `PROGRAM ARGS` (a copy of `strait` elsewhere, say) like [`Process::start`].
    pub fn start_program(mesh: &Mesh, name: &str, program: &Path, args: &[String]) -> Result<Self> {
        Self::spawn(mesh, name, Command::new(program), args)
    }

    fn spawn(mesh: &Mesh, name: &str, mut command: Command, args: &[String]) -> Result<Self> {
        let log = mesh.dir.path().join(format!("{name}.log"));
        let mut child = command
            .args(args)
            .env("STRAIT_CONFIG", &mesh.config)
            .env("STRAIT_LOG", "info,strait_sidecar=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = std::fs::File::create(mesh.dir.path().join(format!("{name}.stdout")))?;
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(stdout);
            let _ = std::io::BufRead::read_line(&mut reader, &mut line);
            let _ = tx.send(line);
            // Keep draining so the process never blocks on a full pipe; what follows the first
            // line (access logs) is kept for the test.
            let mut rest = rest;
            let _ = std::io::copy(&mut reader, &mut rest);
        });
        let mut process = Self {
            name: name.into(),
            started: serde_json::Value::Null,
            child: Some(child),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("{name} printed nothing within 30 s\n{}", process.log_tail()))?;
        process.started = serde_json::from_str(&line)
            .with_context(|| format!("{name} printed {line:?}\n{}", process.log_tail()))?;
        Ok(process)
    }

    /// The lines it printed after its first one (a sidecar's access log).
    pub fn later_lines(&self) -> Vec<String> {
        let path = self.log.with_extension("stdout");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// An address from the started line (`inbound`, `proxy`, `admin`, `address`...).
    pub fn addr(&self, key: &str) -> Result<SocketAddr> {
        self.started[key]
            .as_str()
            .ok_or_else(|| anyhow!("{} printed no {key}", self.name))?
            .parse()
            .with_context(|| format!("{}'s {key}", self.name))
    }

    /// The address of its n-th upstream listener.
    pub fn upstream(&self, n: usize) -> Result<SocketAddr> {
        self.started["upstreams"][n]
            .as_str()
            .ok_or_else(|| anyhow!("{} has no upstream {n}", self.name))?
            .parse()
            .map_err(Into::into)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A field of /proc/PID/status in bytes (VmRSS, VmHWM).
    pub fn memory(&self, field: &str) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        proc_memory(pid, field)
    }

    /// Kills the process at once.
    pub fn kill(&mut self) -> Result<()> {
        reap(self.child.take());
        Ok(())
    }

    /// Stops the process with SIGTERM and checks that it exits 0.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, "TERM")?;
        let status = wait_child(&mut child, Duration::from_secs(10))?;
        if !status.success() {
            bail!("{} exited with {status}\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, &format!("{} log", self.name))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}

impl Mesh {
    /// Starts a sample app (`http`, `grpc` or `tcp`) that says it is `service` in `cluster`.
    pub fn app(&self, kind: &str, cluster: &str, service: &str, pod: &str) -> Result<Process> {
        self.app_with(kind, cluster, service, pod, &[])
    }

    /// Starts a sample app with more arguments (`--broken 503`, say).
    pub fn app_with(
        &self,
        kind: &str,
        cluster: &str,
        service: &str,
        pod: &str,
        extra: &[&str],
    ) -> Result<Process> {
        let args: Vec<String> = [
            "demo-app",
            "--kind",
            kind,
            "--cluster",
            cluster,
            "--service",
            service,
            "--pod",
            pod,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        Process::start(self, &format!("app-{pod}"), &args)
    }

    /// A bootstrap document for `namespace/account` in `cluster` (`strait sidecar token`).
    pub fn bootstrap(&self, cluster: &str, namespace: &str, account: &str) -> Result<String> {
        self.ctl(
            cluster,
            &[
                "sidecar",
                "token",
                "-n",
                namespace,
                "--service-account",
                account,
            ],
        )
        .success()
    }

    /// Mints a bootstrap document for `namespace/account` in `cluster` and runs a sidecar with
    /// it and `args`; waits until its admin port says it is ready.
    pub fn sidecar(
        &self,
        cluster: &str,
        namespace: &str,
        account: &str,
        name: &str,
        args: &[String],
    ) -> Result<Process> {
        self.sidecar_from(strait_bin(), cluster, namespace, account, name, args)
    }

    /// [`Mesh::sidecar`], run by `program` (a copy of `strait` elsewhere, say).
    pub fn sidecar_from(
        &self,
        program: &Path,
        cluster: &str,
        namespace: &str,
        account: &str,
        name: &str,
        args: &[String],
    ) -> Result<Process> {
        let bootstrap = self.bootstrap(cluster, namespace, account)?;
        let path = self.file(&format!("{name}.bootstrap.yaml"), &bootstrap)?;
        let mut all: Vec<String> = vec![
            "sidecar".into(),
            "run".into(),
            "--bootstrap".into(),
            path.display().to_string(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ];
        all.extend_from_slice(args);
        let sidecar = Process::start_program(self, name, program, &all)?;
        let admin = sidecar.addr("admin")?;
        wait_for(
            Duration::from_secs(20),
            &format!("sidecar {name} ready"),
            || {
                Ok(http_get(admin, "/readyz")
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ()))
            },
        )
        .with_context(|| sidecar.log_tail())?;
        Ok(sidecar)
    }
}

/// A loopback port free on both UDP and TCP (a DNS server takes both).
pub fn free_dns_port() -> Result<u16> {
    // From the test range, like every other port: an ephemeral one may be taken by an
    // outgoing connection before the gateway binds it.
    for _ in 0..50 {
        let port = free_port(true);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no loopback port free on both UDP and TCP")
}

impl Gateway {
    /// Sets the `workloads` section of the gateway's config (before it starts).
    pub fn set_workloads(&self, yaml: &str) -> Result<()> {
        self.set_section("workloads", yaml)
    }

    /// Replaces a top-level section of the gateway's config (before it starts).
    pub fn set_section(&self, key: &str, yaml: &str) -> Result<()> {
        let path = self.dir.join("gateway.yaml");
        let text = std::fs::read_to_string(&path)?;
        // Drop the section `gateway init` wrote (the key and its indented lines).
        let mut kept = Vec::new();
        let mut inside = false;
        let heading = format!("{key}:");
        for line in text.lines() {
            if line.starts_with(&heading) {
                inside = true;
            } else if inside && !line.starts_with(' ') {
                inside = false;
            }
            if !inside {
                kept.push(line);
            }
        }
        std::fs::write(&path, format!("{}\n{heading}\n{yaml}\n", kept.join("\n")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Tests running side by side in one process never get the same port, wherever the
    /// process's sequence starts (its seed is below the range).
    #[test]
    fn consecutive_picks_never_repeat_a_port() {
        for start in [0, 1, 5_000, super::PORT_RANGE - 1] {
            let ports: std::collections::HashSet<u16> = (0..super::PORT_RANGE)
                .map(|i| super::spread_port(start + i))
                .collect();
            assert_eq!(ports.len() as u64, super::PORT_RANGE, "from {start}");
            assert!(ports.iter().all(|p| (20_000..32_768).contains(p)));
        }
    }
}

//! A real Kubernetes control plane for whole-mesh tests: etcd and kube-apiserver v1.20.2 on
//! loopback ports, one per test cluster, built by `scripts/kube-control-plane.sh` and cached
//! outside the checkout. There is no kubelet or scheduler: tests write the objects a cluster's
//! controllers would (EndpointSlices) themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::child::reap;
use crate::{free_port, wait_for};

/// Where the binaries are, or why there are none (the test then says so and skips).
pub fn binaries() -> std::result::Result<PathBuf, String> {
    let cache = std::env::var_os("STRAIT_KUBE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(home.join("strait/kube-v1.20.2"))
        })
        .ok_or("no HOME to find the cache in")?;
    if !cache.join("kube-apiserver").is_file() {
        return Err(format!(
            "no kube-apiserver in {}: run scripts/kube-control-plane.sh build (scripts/test.sh does)",
            cache.display()
        ));
    }
    let etcd = Command::new("etcd").arg("--version").output();
    if !etcd.is_ok_and(|o| o.status.success()) {
        return Err("no etcd on PATH: apt-get install etcd-server".into());
    }
    Ok(cache)
}

/// One cluster's control plane; stopped when dropped.
pub struct ControlPlane {
    pub name: String,
    /// An admin kubeconfig (a static token bound to `system:masters`).
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    apiserver_args: Vec<String>,
    bin: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and an API server for cluster `name` under `dir`, and waits until it answers.
    pub fn start(name: &str, dir: &Path) -> Result<Self> {
        let bin = binaries().map_err(anyhow::Error::msg)?;
        let dir = dir.join(format!("kube-{name}"));
        std::fs::create_dir_all(&dir)?;
        // The service-account signing key (ECDSA P-256, PKCS#8) and its public half.
        let key = rcgen::KeyPair::generate()?;
        std::fs::write(dir.join("sa.key"), key.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), key.public_key_pem())?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("admin-token-{name},admin,admin,system:masters\n"),
        )?;
        let client_port = free_port(false);
        let peer_port = free_port(false);
        let api_port = free_port(false);
        let etcd = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--name",
                name,
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("{name}=http://127.0.0.1:{peer_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log"))?)
            .spawn()
            .context("starting etcd")?;
        let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", path("certs")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--api-audiences=https://kubernetes.default.svc,strait".into(),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=192.0.2.0/24".into(),
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
        ];
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: admin-token-{name}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: admin}}\ncurrent-context: {name}\n",
                path("certs/apiserver.crt")
            ),
        )?;
        let mut plane = Self {
            name: name.into(),
            kubeconfig,
            dir,
            etcd: Some(etcd),
            apiserver: None,
            apiserver_args,
            bin,
        };
        plane.start_apiserver()?;
        Ok(plane)
    }

    /// (Re)starts the API server on the same port and data, and waits until it answers.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("the API server of {} runs already", self.name);
        }
        let child = Command::new(self.bin.join("kube-apiserver"))
            .args(&self.apiserver_args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("apiserver.log"))?)
            .spawn()
            .context("starting kube-apiserver")?;
        self.apiserver = Some(child);
        let runtime = tokio::runtime::Runtime::new()?;
        // The kubeconfig names the serving certificate the API server writes as it starts.
        wait_for(
            Duration::from_secs(90),
            &format!("the API server of {}", self.name),
            || {
                Ok(runtime.block_on(async {
                    let client = self.client().await.ok()?;
                    client.apiserver_version().await.ok().map(|_| ())
                }))
            },
        )
        .with_context(|| crate::child::log_tail(&self.dir.join("apiserver.log"), "apiserver log"))
    }

    /// Stops the API server (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        reap(self.apiserver.take());
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        let file = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        reap(self.apiserver.take());
        reap(self.etcd.take());
    }
}

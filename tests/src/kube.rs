//! A real Kubernetes control plane for whole-mesh tests: etcd and kube-apiserver v1.20.2 on
//! loopback ports, one per test cluster, built by `scripts/kube-control-plane.sh` and cached
//! outside the checkout. There is no kubelet or scheduler: tests write the objects a cluster's
//! controllers would (EndpointSlices) themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use strait_gateway::kubernetes::crd::{Link, ServiceExport, ServiceImport};

use crate::child::reap;
use crate::{Gateway, Mesh, free_port, wait_for};

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

/// helm and kubectl, or why they are not there.
pub fn helm_and_kubectl() -> std::result::Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os("STRAIT_KUBE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/strait/kube-v1.20.2"))
        })
        .ok_or("no HOME to find the tools in")?
        .join("tools");
    let (helm, kubectl) = (dir.join("helm"), dir.join("kubectl"));
    if !helm.is_file() || !kubectl.is_file() {
        return Err(format!(
            "no helm or kubectl in {}: run scripts/kube-control-plane.sh tools (scripts/test.sh does)",
            dir.display()
        ));
    }
    Ok((helm, kubectl))
}

/// One cluster's control plane; stopped when dropped.
pub struct ControlPlane {
    pub name: String,
    /// An admin kubeconfig (a static token bound to `system:masters`).
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    /// The API server's port.
    pub api_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controllers: Option<Child>,
    apiserver_args: Vec<String>,
    bin: PathBuf,
}

/// How a control plane is set up beyond the defaults.
pub struct PlaneOptions<'a> {
    /// The address the API server listens on (pods reach it here).
    pub bind: &'a str,
    /// The Services' address range; its first address is the `kubernetes` Service's.
    pub service_range: &'a str,
    /// Whether kube-controller-manager runs (Deployments make pods, Services EndpointSlices,
    /// namespaces their service accounts and tokens).
    pub controllers: bool,
}

impl Default for PlaneOptions<'_> {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1",
            service_range: "192.0.2.0/24",
            controllers: false,
        }
    }
}

impl ControlPlane {
    /// Starts etcd and an API server for cluster `name` under `dir`, and waits until it answers.
    pub fn start(name: &str, dir: &Path) -> Result<Self> {
        Self::start_with(name, dir, &PlaneOptions::default())
    }

    /// [`start`](Self::start), set up as `options` say.
    pub fn start_with(name: &str, dir: &Path, options: &PlaneOptions) -> Result<Self> {
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
            format!("--bind-address={}", options.bind),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", path("certs")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--api-audiences=https://kubernetes.default.svc,strait".into(),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-cluster-ip-range={}", options.service_range),
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
            api_port,
            etcd: Some(etcd),
            apiserver: None,
            controllers: None,
            apiserver_args,
            bin,
        };
        plane.start_apiserver()?;
        if options.controllers {
            let child = Command::new(plane.bin.join("kube-controller-manager"))
                .arg("--kubeconfig")
                .arg(&plane.kubeconfig)
                .args(["--bind-address=127.0.0.1", "--secure-port=0", "--port=0"])
                .arg(format!(
                    "--service-account-private-key-file={}",
                    plane.dir.join("sa.key").display()
                ))
                .arg(format!(
                    "--root-ca-file={}",
                    plane.dir.join("certs/apiserver.crt").display()
                ))
                .args([
                    "--use-service-account-credentials=false",
                    "--controllers=*,-nodeipam,-route,-cloud-node-lifecycle,-service",
                    "--leader-elect=false",
                    "--node-monitor-grace-period=60s",
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    plane.dir.join("controller-manager.log"),
                )?)
                .spawn()
                .context("starting kube-controller-manager")?;
            plane.controllers = Some(child);
        }
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
        // The kubeconfig names the serving certificate the API server writes as it starts;
        // ready includes its default roles (what every account may read, such as /version).
        wait_for(
            Duration::from_secs(90),
            &format!("the API server of {}", self.name),
            || {
                Ok(runtime.block_on(async {
                    let client = self.client().await.ok()?;
                    let readyz = hyper::Request::get("/readyz").body(Vec::new()).ok()?;
                    let said = client.request_text(readyz).await.ok()?;
                    (said.trim() == "ok").then_some(())
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
        reap(self.controllers.take());
        reap(self.apiserver.take());
        reap(self.etcd.take());
    }
}

/// Namespaces `strait-system` and `shop`, and strait's CRDs from `deploy/crds/`, as
/// `kubectl apply -f deploy/crds/` installs them.
pub async fn prepare(client: &Client) -> Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    for name in ["strait-system", "shop"] {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }))?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for entry in std::fs::read_dir(&folder)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| path.display().to_string())?;
        crds.create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("creating the CRD of {}", path.display()))?;
    }
    // The API serves a CRD's resources a moment after it is created.
    let exports = Api::<ServiceExport>::all(client.clone());
    let imports = Api::<ServiceImport>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while exports.list(&ListParams::default()).await.is_err()
        || imports.list(&ListParams::default()).await.is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the CRDs were never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `kubectl apply -f -` of a YAML stream (a Secret, a Link) into the gateway namespace.
pub async fn apply_stream(client: &Client, text: &str) -> Result<()> {
    let apply = kube::api::PatchParams::apply("strait-tests").force();
    for document in text.split("---\n").filter(|d| !d.trim().is_empty()) {
        let document = document.trim_start_matches('\n');
        let value: serde_json::Value = serde_saphyr::from_str(document)?;
        let name = value["metadata"]["name"]
            .as_str()
            .context("a name")?
            .to_owned();
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .context("a namespace")?;
        match value["kind"].as_str() {
            Some("Secret") => {
                Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
                    .patch(&name, &apply, &kube::api::Patch::Apply(&value))
                    .await?;
            }
            Some("Link") => {
                Api::<Link>::namespaced(client.clone(), namespace)
                    .patch(&name, &apply, &kube::api::Patch::Apply(&value))
                    .await?;
            }
            other => anyhow::bail!("strait link printed a {other:?}"),
        }
    }
    Ok(())
}

/// The `Ready` condition of Link NAME: (status, reason, message).
pub async fn link_ready(client: &Client, name: &str) -> Option<(String, String, String)> {
    let link = Api::<Link>::namespaced(client.clone(), "strait-system")
        .get(name)
        .await
        .ok()?;
    link.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason, c.message))
}

/// Links DIALER's cluster to TARGET's the Kubernetes way: `strait --context TARGET link`
/// applied as resources in the dialer's cluster; waits until the Link says it is connected.
pub fn link_with_resources(
    mesh: &Mesh,
    runtime: &tokio::runtime::Runtime,
    dialer: &Client,
    target: &str,
) -> Result<()> {
    let stream = mesh.ctl(target, &["link"]).success()?;
    runtime.block_on(apply_stream(dialer, &stream))?;
    wait_for(
        Duration::from_secs(10),
        &format!("Link {target} ready"),
        || {
            Ok(runtime
                .block_on(link_ready(dialer, target))
                .filter(|(status, _, _)| status == "True")
                .map(|_| ()))
        },
    )
}

/// One Kubernetes cluster under test: its control plane with strait's CRDs and the namespaces
/// `strait-system` and `shop`, an admin client, and its gateway in Kubernetes mode, started.
pub struct KubeCluster {
    pub plane: ControlPlane,
    pub client: Client,
    pub gateway: Gateway,
}

impl KubeCluster {
    /// Starts cluster `name` of `mesh`.
    pub fn start(mesh: &Mesh, runtime: &tokio::runtime::Runtime, name: &str) -> Result<Self> {
        let plane = ControlPlane::start(name, mesh.dir.path())?;
        let client = runtime.block_on(plane.client())?;
        runtime.block_on(prepare(&client))?;
        let mut gateway = mesh.kubernetes_gateway(name, &plane.kubeconfig)?;
        gateway.start(mesh)?;
        Ok(Self {
            plane,
            client,
            gateway,
        })
    }

    /// Restarts the gateway serving the sidecar injector's webhook on a loopback port, with a
    /// serving certificate the API server trusts, and registers the webhook for new pods of
    /// every namespace (the gateway decides which to inject). Returns the webhook's URL and the
    /// certificate (PEM).
    pub fn serve_injector(
        &mut self,
        mesh: &Mesh,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.self_signed(&key)?;
        std::fs::write(self.gateway.dir.join("webhook.crt"), cert.pem())?;
        std::fs::write(self.gateway.dir.join("webhook.key"), key.serialize_pem())?;
        let port = free_port(false);
        self.gateway.stop()?;
        self.gateway.set_section(
            "kubernetes",
            &format!(
                "  kubeconfig: {}\n  injector:\n    addr: 127.0.0.1:{port}\n    certFile: webhook.crt\n    keyFile: webhook.key\n    image: strait:test\n    gatewayAddress: {}",
                self.plane.kubeconfig.display(),
                self.gateway.api
            ),
        )?;
        self.gateway.start(mesh)?;
        wait_for(Duration::from_secs(10), "the webhook listening", || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ()))
        })
        .with_context(|| self.gateway.log_tail())?;
        let url = format!("https://127.0.0.1:{port}/mutate");
        let webhook = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "strait-injector"},
            "webhooks": [{
                "name": "inject.strait.dev",
                "clientConfig": {"url": url,
                                 "caBundle": k8s_openapi::ByteString(cert.pem().into_bytes())},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                    "operator": "NotIn", "values": ["kube-system", "strait-system"]}]},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        });
        runtime.block_on(
            Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
                self.client.clone(),
            )
            .create(&PostParams::default(), &serde_json::from_value(webhook)?),
        )?;
        Ok((url, cert.pem()))
    }
}

/// Service account NAMESPACE/NAME.
pub async fn service_account(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let account = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await?;
    Ok(())
}

/// A token the API server issues service account NAMESPACE/NAME for `audience` (an hour).
pub async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
    audience: &str,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("a TokenRequest without status")?
        .token)
}

/// A kubeconfig of `plane` that signs in as service account NAMESPACE/NAME, with a token the
/// API server issued it (the account must exist).
pub async fn account_kubeconfig(
    plane: &ControlPlane,
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<PathBuf> {
    let token = request_token(client, namespace, name, "https://kubernetes.default.svc").await?;
    let admin = std::fs::read_to_string(&plane.kubeconfig)?;
    let start = admin
        .find("    token: ")
        .context("the admin kubeconfig's token")?;
    let end = start + admin[start..].find('\n').context("a line")?;
    let path = plane.dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!("{}    token: {token}{}", &admin[..start], &admin[end..]),
    )?;
    Ok(path)
}

/// Namespace NAME, its default service account (no controller manager runs here to make it),
/// and labels.
pub async fn namespace_with(client: &Client, name: &str, labels: serde_json::Value) -> Result<()> {
    let namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    service_account(client, name, "default").await
}

/// A pod of one container with a port, without a mounted token.
pub fn pod(namespace: &str, name: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "app:1",
                                 "ports": [{"name": "http", "containerPort": port}]}]},
    })
}

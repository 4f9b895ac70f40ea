//! Two real API servers whose pods really run (the test stand-ins of `strait_tests::pods` for
//! the kubelet, the scheduler and kube-proxy; kube-controller-manager for Deployments,
//! ReplicaSets, EndpointSlices and service-account tokens), all inside a network namespace
//! the test makes: strait installed with `helm install`, its gateways running in pods, and the
//! two clusters linked the documented way. Needs root, iproute2, iptables, util-linux, the
//! control plane and helm/kubectl; says so and skips without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;
use strait_tests::kube::{ControlPlane, PlaneOptions, binaries, helm_and_kubectl, link_ready};
use strait_tests::pods::{Node, NodeSpec, World};
use strait_tests::{Mesh, wait_for};

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    strait_tests::pods::missing()
        .or_else(|| binaries().err())
        .or_else(|| helm_and_kubectl().err())
}

/// Runs a tool with a kubeconfig; its stdout.
fn tool(program: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(anyhow!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One cluster whose pods run: its control plane, its node, and its credentials folder.
struct PodCluster {
    name: String,
    node: Node,
    client: Client,
    plane: ControlPlane,
    credentials: PathBuf,
}

impl PodCluster {
    /// Starts cluster `name` with subnet `subnet`, and installs strait with the chart.
    fn install(
        mesh: &Mesh,
        runtime: &tokio::runtime::Runtime,
        name: &str,
        subnet: u8,
    ) -> Result<Self> {
        let (helm, kubectl) = helm_and_kubectl().map_err(anyhow::Error::msg)?;
        let service_range = format!("10.96.{subnet}.0/24");
        let plane = ControlPlane::start_with(
            name,
            mesh.dir.path(),
            &PlaneOptions {
                bind: "0.0.0.0",
                service_range: &service_range,
                controllers: true,
            },
        )?;
        let client = runtime.block_on(plane.client())?;
        let spec = NodeSpec {
            cluster: name.into(),
            subnet,
            api_port: plane.api_port,
            service_range,
            dir: mesh.dir.path().join(format!("node-{name}")),
            images: BTreeMap::from([("strait".to_owned(), strait_tests::strait_bin().to_owned())]),
        };
        let node = runtime.block_on(Node::start(client.clone(), spec))?;
        let credentials = mesh.dir.path().join(format!("credentials-{name}"));
        mesh.cli(
            &[
                "trust",
                "issue",
                "--cluster",
                name,
                "--trust",
                &mesh.trust.to_string_lossy(),
                "--dir",
                &credentials.to_string_lossy(),
            ],
            &[],
        )
        .success()?;
        tool(
            &kubectl,
            &plane.kubeconfig,
            &["create", "namespace", "strait-system"],
        )?;
        tool(
            &kubectl,
            &plane.kubeconfig,
            &[
                "-n",
                "strait-system",
                "create",
                "secret",
                "generic",
                "strait-cluster-credentials",
                &format!("--from-file={}", credentials.display()),
            ],
        )?;
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/strait");
        tool(
            &helm,
            &plane.kubeconfig,
            &[
                "install",
                "strait",
                &chart.to_string_lossy(),
                "--namespace",
                "strait-system",
                "--set",
                &format!("cluster={name},trustDomain=example.mesh,dns.serviceIP=10.96.{subnet}.53"),
            ],
        )?;
        Ok(Self {
            name: name.into(),
            node,
            client,
            plane,
            credentials,
        })
    }

    /// Waits until the gateway Deployment has `replicas` ready pods.
    fn gateways_ready(&self, runtime: &tokio::runtime::Runtime, replicas: i32) -> Result<()> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), "strait-system");
        wait_for(
            Duration::from_secs(90),
            &format!("{replicas} gateway pods ready in {}", self.name),
            || {
                let deployment = runtime.block_on(deployments.get("strait-gateway"))?;
                let ready = deployment
                    .status
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok((ready >= replicas).then_some(()))
            },
        )
        .with_context(|| self.logs())
    }

    /// A Service's ClusterIP.
    fn service_ip(&self, runtime: &tokio::runtime::Runtime, name: &str) -> Result<String> {
        let service = runtime
            .block_on(Api::<Service>::namespaced(self.client.clone(), "strait-system").get(name))?;
        service
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service {name} has no ClusterIP"))
    }

    /// The last lines of every pod's logs and the control plane's, for failures.
    fn logs(&self) -> String {
        let mut out = format!("pods of {}: {:?}\n", self.name, self.node.pods());
        let dir = self.node.spec.dir.join("pods");
        for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    out.push_str(&format!(
                        "--- {} ---\n{}\n",
                        path.display(),
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    ));
                }
            }
        }
        let controllers = std::fs::read_to_string(self.plane.dir.join("controller-manager.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = controllers.lines().collect();
        out.push_str(&format!(
            "--- controller-manager ---\n{}\n",
            lines[lines.len().saturating_sub(10)..].join("\n")
        ));
        out
    }
}

#[test]
fn the_chart_runs_its_gateways_in_pods_and_two_clusters_link_the_documented_way() -> Result<()> {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let world = World::create()?;
    world.enter()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mesh = Mesh::new()?;
    let west = PodCluster::install(&mesh, &runtime, "west", 1)?;
    let east = PodCluster::install(&mesh, &runtime, "east", 2)?;
    west.gateways_ready(&runtime, 2)?;
    east.gateways_ready(&runtime, 2)?;

    // The operator's context from the credentials folder, the gateway's API as its Service
    // is reached; the Link from `strait link` applied to east with kubectl.
    let api = format!("{}:4434", west.service_ip(&runtime, "strait-gateway")?);
    mesh.cli(
        &[
            "context",
            "add",
            "west-pods",
            "--credentials",
            &west.credentials.to_string_lossy(),
            "--gateway",
            &api,
        ],
        &[],
    )
    .success()?;
    let quic = format!("{}:4433", west.service_ip(&runtime, "strait-gateway-quic")?);
    let document = mesh
        .cli(&["--context", "west-pods", "link", "--address", &quic], &[])
        .success()
        .with_context(|| west.logs())?;
    let file = mesh.file("west-link.yaml", &document)?;
    let (_, kubectl) = helm_and_kubectl().map_err(anyhow::Error::msg)?;
    tool(
        &kubectl,
        &east.plane.kubeconfig,
        &["apply", "-f", &file.to_string_lossy()],
    )?;
    wait_for(Duration::from_secs(30), "east's Link to west ready", || {
        Ok(runtime
            .block_on(link_ready(&east.client, "west"))
            .filter(|(status, _, _)| status == "True")
            .map(|_| ()))
    })
    .with_context(|| format!("{}\n{}", east.logs(), west.logs()))?;
    let links = mesh
        .cli(
            &["--context", "west-pods", "get", "links", "-o", "json"],
            &[],
        )
        .success()?;
    ensure!(links.contains("\"east\""), "{links}");
    drop((east, west));
    drop(world);
    Ok(())
}

//! One cluster whose pods run, with strait installed by its Helm chart: what the pods tests
//! and benchmarks start from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;

use super::{Node, NodeSpec};
use crate::kube::{ControlPlane, PlaneOptions, helm_and_kubectl};
use crate::{Mesh, wait_for};

/// Runs a tool with a kubeconfig; its stdout.
pub fn tool(program: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
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
pub struct PodCluster {
    pub name: String,
    pub node: Node,
    pub client: Client,
    pub plane: ControlPlane,
    pub credentials: PathBuf,
}

impl PodCluster {
    /// Starts cluster `name` with subnet `subnet`, and installs strait with the chart.
    pub fn install(
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
            images: BTreeMap::from([("strait".to_owned(), crate::strait_bin().to_owned())]),
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

    /// Waits until Deployment NAMESPACE/NAME has `replicas` ready pods.
    pub fn deployment_ready(
        &self,
        runtime: &tokio::runtime::Runtime,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) -> Result<()> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), namespace);
        wait_for(
            Duration::from_secs(90),
            &format!(
                "{replicas} pods of {namespace}/{name} ready in {}",
                self.name
            ),
            || {
                let ready = runtime
                    .block_on(deployments.get(name))?
                    .status
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok((ready >= replicas).then_some(()))
            },
        )
        .with_context(|| self.logs())
    }

    /// A Service's ClusterIP.
    pub fn service_ip(&self, runtime: &tokio::runtime::Runtime, name: &str) -> Result<String> {
        let service = runtime
            .block_on(Api::<Service>::namespaced(self.client.clone(), "strait-system").get(name))?;
        service
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service {name} has no ClusterIP"))
    }

    /// The last lines of every pod's logs and the control plane's, for failures.
    pub fn logs(&self) -> String {
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

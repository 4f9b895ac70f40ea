//! Two real API servers whose pods really run (the test stand-ins of `strait_tests::pods` for
//! the kubelet, the scheduler and kube-proxy; kube-controller-manager for Deployments,
//! ReplicaSets, EndpointSlices and service-account tokens), all inside a network namespace
//! the test makes: strait installed with `helm install`, its gateways running in pods, and the
//! two clusters linked the documented way. Needs root, iproute2, iptables, util-linux, the
//! control plane and helm/kubectl; says so and skips without them.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use strait_tests::kube::{binaries, helm_and_kubectl, link_ready};
use strait_tests::pods::{PodCluster, World, tool};
use strait_tests::{Mesh, wait_for};

#[test]
fn the_chart_runs_its_gateways_in_pods_and_two_clusters_link_the_documented_way() -> Result<()> {
    if let Some(why) = strait_tests::pods::missing()
        .or_else(|| binaries().err())
        .or_else(|| helm_and_kubectl().err())
        .or_else(|| {
            // The sample apps are Python.
            strait_tests::pods::run("python3", &["--version"])
                .err()
                .map(|_| "no python3 (apt-get install python3)".to_owned())
        })
    {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let world = World::create()?;
    world.enter()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mesh = Mesh::new()?;
    let west = PodCluster::install(&mesh, &runtime, "west", 1)?;
    let east = PodCluster::install(&mesh, &runtime, "east", 2)?;
    west.deployment_ready(&runtime, "strait-system", "strait-gateway", 2)?;
    east.deployment_ready(&runtime, "strait-system", "strait-gateway", 2)?;

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
    // Injected workloads: shop/api in west (exported), shop/web in east calling it by its
    // clusterset name with plain HTTP; both get their sidecars from the gateways' webhooks.
    for cluster in [&west, &east] {
        tool(
            &kubectl,
            &cluster.plane.kubeconfig,
            &["create", "namespace", "shop"],
        )?;
        tool(
            &kubectl,
            &cluster.plane.kubeconfig,
            &["label", "namespace", "shop", "strait.dev/inject=enabled"],
        )?;
    }
    let api = mesh.file("api.yaml", API)?;
    tool(
        &kubectl,
        &west.plane.kubeconfig,
        &["apply", "-f", &api.to_string_lossy()],
    )?;
    let web = mesh.file("web.yaml", WEB)?;
    tool(
        &kubectl,
        &east.plane.kubeconfig,
        &["apply", "-f", &web.to_string_lossy()],
    )?;
    for (cluster, name) in [(&west, "api"), (&east, "web")] {
        cluster.deployment_ready(&runtime, "shop", name, 1)?;
        let pods = runtime.block_on(
            Api::<Pod>::namespaced(cluster.client.clone(), "shop")
                .list(&ListParams::default().labels(&format!("app={name}"))),
        )?;
        let spec = pods
            .items
            .first()
            .and_then(|p| p.spec.clone())
            .context("no pod")?;
        ensure!(
            spec.containers.first().map(|c| c.name.as_str()) == Some("strait-proxy")
                && spec
                    .init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == "strait-init"),
            "shop/{name} was not injected"
        );
    }
    // The client's requests arrive, and the app sees the caller's identity.
    let answers = || -> Vec<String> {
        let dir = east.node.spec.dir.join("pods");
        let mut lines = Vec::new();
        for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if pod.file_name().to_string_lossy().starts_with("shop_web") {
                let text = std::fs::read_to_string(pod.path().join("web.log")).unwrap_or_default();
                lines.extend(text.lines().map(str::to_owned));
            }
        }
        lines
    };
    wait_for(
        Duration::from_secs(30),
        "web's requests answered by west's api",
        || {
            Ok(answers()
                .iter()
                .any(|l| l.starts_with("200 "))
                .then_some(()))
        },
    )
    .with_context(|| format!("{:?}\n{}\n{}", answers().last(), east.logs(), west.logs()))?;
    let answered = answers();
    let line = answered
        .iter()
        .find(|l| l.starts_with("200 "))
        .context("no answer")?;
    ensure!(
        line.contains("spiffe://example.mesh/") && line.contains("east") && line.contains("web"),
        "the app saw {line}"
    );

    // A gateway replica deleted during traffic: requests keep succeeding. The client sends one
    // request at a time, so at most one is in flight on the replica that goes.
    let before = answers().len();
    let victim = east
        .node
        .pods()
        .into_keys()
        .find(|k| k.starts_with("strait-system/strait-gateway"))
        .context("no gateway pod in east")?;
    let victim = victim.trim_start_matches("strait-system/").to_owned();
    tool(
        &kubectl,
        &east.plane.kubeconfig,
        &[
            "-n",
            "strait-system",
            "delete",
            "pod",
            &victim,
            "--wait=false",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(10));
    let during: Vec<String> = answers()[before..].to_vec();
    let failed: Vec<&String> = during.iter().filter(|l| !l.starts_with("200 ")).collect();
    eprintln!(
        "gateway replica {victim} deleted: {} of {} requests failed in the next 10 s {failed:?}",
        failed.len(),
        during.len()
    );
    ensure!(during.len() >= 20, "only {} requests in 10 s", during.len());
    ensure!(
        failed.len() <= 1,
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        during.len()
    );
    drop((east, west));
    drop(world);
    Ok(())
}

/// West's shop/api: an HTTP app that answers with the caller identity its sidecar gives it,
/// its Service and its ServiceExport.
const API: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: python:3
        command:
        - python3
        - -c
        - |
          import http.server
          class Handler(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  body = ("caller=%s\n" % self.headers.get("strait-client-id", "none")).encode()
                  self.send_response(200)
                  self.send_header("content-length", str(len(body)))
                  self.end_headers()
                  self.wfile.write(body)
              def log_message(self, *args):
                  pass
          http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
        ports: [{name: http, containerPort: 8080}]
        # Probed on the port it serves: the sidecar runs the probe, the port stays meshed.
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080, targetPort: 8080, appProtocol: http}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: api, namespace: shop}
"#;

/// East's shop/web: a client that calls api.shop.svc.clusterset.local with plain HTTP every
/// 50 ms and writes each answer (status and body, or the error) on a line.
const WEB: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: python:3
        command:
        - python3
        - -u
        - -c
        - |
          import time, urllib.request
          while True:
              try:
                  with urllib.request.urlopen("http://api.shop.svc.clusterset.local:8080/", timeout=2) as r:
                      print(r.status, r.read().decode().strip(), flush=True)
              except Exception as e:
                  print("ERR", repr(e), flush=True)
              time.sleep(0.05)
"#;

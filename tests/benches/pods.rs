//! Pods benchmark: one real API server whose pods run (the test stand-ins of
//! `strait_tests::pods`), strait installed with its Helm chart. Prints, beside the targets:
//! - pod start to ready: pods created one at a time in a namespace labelled for injection
//!   (ready means the app and the sidecar are ready), beside the same pods in a namespace that is
//!   not (the baseline, in the same run);
//! - the sidecar's memory in a pod (the server is nginx): the resident size of the client's and the server's
//!   `strait-proxy` after their first requests, and at most while `wrk` in the client pod sends
//!   as many requests per second as it can to the server by its clusterset name.
//!
//! Needs root, iproute2, iptables, util-linux, wrk, the control plane and helm/kubectl; says so
//! and skips without them. Run: `cargo bench -p strait-tests --bench pods`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use strait_tests::kube::{binaries, helm_and_kubectl};
use strait_tests::pods::{PodCluster, World, tool};
use strait_tests::{Mesh, wait_for};

/// Pods created in each namespace.
const PODS: usize = 10;
/// How long `wrk` runs.
const LOAD_SECONDS: u64 = 15;

/// The server under load: nginx answering "ok" (its configuration written in the pod's own
/// /run).
const NGINX: &str = "printf 'user root; worker_processes 1; pid /run/nginx.pid; error_log stderr;\\n\
events { worker_connections 1024; }\\n\
http { access_log off; client_body_temp_path /run/nginx-body; proxy_temp_path /run/nginx-proxy;\\n\
fastcgi_temp_path /run/nginx-fcgi; uwsgi_temp_path /run/nginx-uwsgi; scgi_temp_path /run/nginx-scgi;\\n\
server { listen 8080; location / { return 200 \"ok\\\\n\"; } } }\\n' > /run/nginx.conf && exec nginx -c /run/nginx.conf -g 'daemon off;'";

/// A pod of the sample HTTP app (Python) in `namespace`.
fn app_pod(namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"containers": [{
            "name": "app", "image": "python:3",
            "command": ["python3", "-m", "http.server", "8080"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }]},
    })
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates `PODS` pods one at a time; the time from each create to its Ready condition.
fn start_times(
    runtime: &tokio::runtime::Runtime,
    cluster: &PodCluster,
    namespace: &str,
) -> Result<Vec<Duration>> {
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), namespace);
    let mut times = Vec::new();
    for i in 0..PODS {
        let name = format!("start-{i}");
        let spec = serde_json::from_value(app_pod(namespace, &name))?;
        let created = Instant::now();
        runtime.block_on(pods.create(&PostParams::default(), &spec))?;
        wait_for(
            Duration::from_secs(30),
            &format!("{namespace}/{name} ready"),
            || Ok(ready(&runtime.block_on(pods.get(&name))?).then_some(())),
        )
        .with_context(|| cluster.logs())?;
        times.push(created.elapsed());
    }
    Ok(times)
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

fn summary(mut values: Vec<Duration>) -> String {
    values.sort();
    let at = |q: f64| values[((values.len() as f64 * q) as usize).min(values.len() - 1)];
    format!(
        "median {:.2} s, max {:.2} s",
        at(0.5).as_secs_f64(),
        values[values.len() - 1].as_secs_f64()
    )
}

fn main() -> Result<()> {
    let missing = strait_tests::pods::missing()
        .or_else(|| binaries().err())
        .or_else(|| helm_and_kubectl().err())
        .or_else(|| {
            (!std::process::Command::new("sh")
                .args(["-c", "command -v wrk"])
                .output()
                .is_ok_and(|o| o.status.success()))
            .then(|| "no wrk (apt-get install wrk)".to_owned())
        });
    if let Some(why) = missing {
        println!("pods benchmark skipped: {why}");
        return Ok(());
    }
    let world = World::create()?;
    world.enter()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mesh = Mesh::new()?;
    let west = PodCluster::install(&mesh, &runtime, "west", 1)?;
    west.deployment_ready(&runtime, "strait-system", "strait-gateway", 2)?;
    let (_, kubectl) = helm_and_kubectl().map_err(anyhow::Error::msg)?;
    let kubeconfig = west.plane.kubeconfig.clone();
    tool(&kubectl, &kubeconfig, &["create", "namespace", "plain"])?;
    tool(&kubectl, &kubeconfig, &["create", "namespace", "shop"])?;
    tool(
        &kubectl,
        &kubeconfig,
        &["label", "namespace", "shop", "strait.dev/inject=enabled"],
    )?;
    // Service accounts (and their tokens) come from the controller manager a moment later.
    for namespace in ["plain", "shop"] {
        let accounts = Api::<ServiceAccount>::namespaced(west.client.clone(), namespace);
        wait_for(
            Duration::from_secs(30),
            &format!("the default service account of {namespace}, with its token"),
            || {
                let account = runtime.block_on(accounts.get_opt("default"))?;
                Ok(account
                    .filter(|a| a.secrets.as_ref().is_some_and(|s| !s.is_empty()))
                    .map(|_| ()))
            },
        )?;
    }

    let baseline = start_times(&runtime, &west, "plain")?;
    let injected = start_times(&runtime, &west, "shop")?;

    // The server, exported, and a client pod whose wrk calls it by its clusterset name.
    let api = mesh.file(
        "api.yaml",
        &format!(
            "# shop/api, its Service and its ServiceExport\n{}\n---\n{}",
            serde_json::to_string(&{
                let mut api = app_pod("shop", "api");
                api["spec"]["containers"][0]["command"] = serde_json::json!(["sh", "-c", NGINX]);
                api
            })?,
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
               "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 8080, "appProtocol": "http"}]}}
---
{"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "api", "namespace": "shop"}}"#
        ),
    )?;
    tool(
        &kubectl,
        &kubeconfig,
        &["apply", "-f", &api.to_string_lossy()],
    )?;
    let client = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": "shop"},
        "spec": {"containers": [{
            "name": "client", "image": "wrk",
            "command": ["sh", "-c", format!(
                "until curl -sf -o /dev/null http://api.shop.svc.clusterset.local:8080/; do sleep 0.2; done; \
                 echo warm; sleep 5; wrk -t1 -c16 -d{LOAD_SECONDS}s http://api.shop.svc.clusterset.local:8080/; sleep 3600")],
        }]},
    });
    runtime.block_on(
        Api::<Pod>::namespaced(west.client.clone(), "shop")
            .create(&PostParams::default(), &serde_json::from_value(client)?),
    )?;
    let log = west.node.spec.dir.join("pods/shop_client/client.log");
    wait_for(Duration::from_secs(60), "the client's first answer", || {
        Ok(std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("warm")
            .then_some(()))
    })
    .with_context(|| west.logs())?;
    let proxies = || -> Result<(u32, u32)> {
        Ok((
            west.node
                .pid("shop/client", "strait-proxy")
                .context("the client's sidecar")?,
            west.node
                .pid("shop/api", "strait-proxy")
                .context("the server's sidecar")?,
        ))
    };
    let (client_pid, server_pid) = proxies()?;
    let idle = (rss_mib(client_pid)?, rss_mib(server_pid)?);
    let mut peak = idle;
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS + 15);
    let rate = loop {
        std::thread::sleep(Duration::from_millis(500));
        peak.0 = peak.0.max(rss_mib(client_pid)?);
        peak.1 = peak.1.max(rss_mib(server_pid)?);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("Requests/sec:")) {
            break line.trim_start_matches("Requests/sec:").trim().to_owned();
        }
        if Instant::now() > deadline {
            return Err(anyhow!("wrk never finished:\n{text}"));
        }
    };
    let after = (rss_mib(client_pid)?, rss_mib(server_pid)?);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");

    println!(
        "pods benchmark (kube-apiserver 1.20.2, the test kubelet, strait installed with its chart)"
    );
    println!(
        "  pod start to ready, {PODS} pods one at a time: injected {}   no injection {}   (target < 2 s injected)",
        summary(injected.clone()),
        summary(baseline.clone())
    );
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "  injection adds {:.2} s at the median",
        median(injected).as_secs_f64() - median(baseline).as_secs_f64()
    );
    println!(
        "  sidecar RSS after the first requests: client {:.1} MiB, server {:.1} MiB",
        idle.0, idle.1
    );
    println!(
        "  under wrk (1 thread, 16 connections, {LOAD_SECONDS} s: {rate} req/s{}): at most client {:.1} MiB, server {:.1} MiB; after: {:.1} / {:.1} MiB   (target < 20 MiB at 1,000 req/s)",
        if errors.is_empty() {
            String::new()
        } else {
            format!(", {errors}")
        },
        peak.0,
        peak.1,
        after.0,
        after.1
    );
    drop(west);
    drop(world);
    Ok(())
}

//! Injector benchmark: the sidecar injector's webhook, served by a gateway, in front of a real
//! API server (kube-apiserver 1.20.2 and etcd on loopback). Prints the latency per admission
//! (target: p99 < 10 ms) measured two ways in one run:
//! - the webhook alone: AdmissionReviews of a pod posted over one keep-alive HTTPS connection,
//!   as the API server sends them;
//! - as a user sees it: pod creates through the API server in a namespace labelled for
//!   injection, beside creates in a namespace that is not (the webhook is asked and leaves the
//!   pod alone) and, as the baseline, creates with no webhook registered at all.
//!
//! Skipped, saying so, where the control plane is not built (scripts/test.sh builds it).
//! Run: `cargo bench -p strait-tests --bench injector`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use strait_tests::kube::{KubeCluster, binaries, namespace_with, pod};
use strait_tests::{Mesh, wait_for};

/// AdmissionReviews posted straight to the webhook.
const REVIEWS: usize = 2_000;
/// Pods created through the API server in each namespace.
const PODS: usize = 200;
/// How long one review or create may take before the run fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// p50, p99 and the largest of some latencies.
fn summary(mut values: Vec<Duration>) -> (Duration, Duration, Duration) {
    values.sort();
    let at = |q: f64| values[((values.len() as f64 * q) as usize).min(values.len() - 1)];
    (at(0.50), at(0.99), values[values.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One AdmissionReview of pod NAMESPACE/NAME, as the API server sends it.
fn review(namespace: &str, name: &str, uid: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("review-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": pod(namespace, name, 8080),
        },
    })
}

/// Posts `REVIEWS` reviews over one connection; their latencies.
async fn post_reviews(url: &str, cert_pem: &str) -> Result<Vec<Duration>> {
    let address = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .context("the webhook's URL")?
        .to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes())?)?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::with_capacity(REVIEWS);
    for i in 0..REVIEWS {
        let body = serde_json::to_vec(&review("store", &format!("direct-{i}"), i))?;
        let request = hyper::Request::post("/mutate")
            .header("host", &address)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let response = tokio::time::timeout(CALL_TIMEOUT, async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await
        .context("the webhook did not answer in time")??;
        latencies.push(started.elapsed());
        let (status, body) = response;
        ensure!(status == 200, "the webhook answered {status}");
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        ensure!(
            answer["response"]["allowed"] == true && answer["response"]["patch"].is_string(),
            "review {i} was not given the sidecar: {answer}"
        );
    }
    Ok(latencies)
}

/// Creates `PODS` pods in `namespace`; their latencies, checking each got the sidecar or not.
async fn create_pods(
    client: &Client,
    namespace: &str,
    prefix: &str,
    injected: bool,
) -> Result<Vec<Duration>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let mut latencies = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let spec = serde_json::from_value(pod(namespace, &format!("{prefix}-{i}"), 8080))?;
        let started = Instant::now();
        let created =
            tokio::time::timeout(CALL_TIMEOUT, pods.create(&PostParams::default(), &spec))
                .await
                .context("the API server did not answer in time")??;
        latencies.push(started.elapsed());
        let first = created
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.as_str());
        ensure!(
            (first == Some("strait-proxy")) == injected,
            "pod {namespace}/{prefix}-{i}: first container {first:?}"
        );
    }
    Ok(latencies)
}

fn main() -> Result<()> {
    if let Err(why) = binaries() {
        println!("injector benchmark skipped: {why}");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut west = KubeCluster::start(&mesh, &runtime, "west")?;
    let (url, cert) = west.serve_injector(&mesh, &runtime)?;
    let client = west.client.clone();
    runtime.block_on(namespace_with(
        &client,
        "store",
        serde_json::json!({"strait.dev/inject": "enabled"}),
    ))?;
    runtime.block_on(namespace_with(&client, "plain", serde_json::json!({})))?;
    // The gateway injects once it has seen the labelled namespace.
    let mut attempt = 0;
    wait_for(Duration::from_secs(10), "a first injected pod", || {
        attempt += 1;
        let spec = serde_json::from_value(pod("store", &format!("warm-{attempt}"), 8080))?;
        let created = runtime.block_on(
            Api::<Pod>::namespaced(client.clone(), "store").create(&PostParams::default(), &spec),
        )?;
        Ok(created
            .spec
            .and_then(|s| s.containers.first().map(|c| c.name == "strait-proxy"))
            .filter(|injected| *injected)
            .map(|_| ()))
    })
    .with_context(|| west.gateway.log_tail())?;

    let direct = runtime.block_on(post_reviews(&url, &cert))?;
    let injected = runtime.block_on(create_pods(&client, "store", "web", true))?;
    let asked = runtime.block_on(create_pods(&client, "plain", "asked", false))?;
    // The baseline: no webhook at all (the API server drops it within a moment; pods of the
    // labelled namespace then come back untouched).
    runtime.block_on(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete("strait-injector", &DeleteParams::default()),
    )?;
    let mut probe = 0;
    wait_for(Duration::from_secs(10), "the webhook unregistered", || {
        probe += 1;
        let spec = serde_json::from_value(pod("store", &format!("probe-{probe}"), 8080))?;
        let created = runtime.block_on(
            Api::<Pod>::namespaced(client.clone(), "store").create(&PostParams::default(), &spec),
        )?;
        Ok(created
            .spec
            .and_then(|s| s.containers.first().map(|c| c.name == "app"))
            .filter(|plain| *plain)
            .map(|_| ()))
    })?;
    let baseline = runtime.block_on(create_pods(&client, "plain", "baseline", false))?;

    let (d50, d99, dmax) = summary(direct);
    let (i50, i99, imax) = summary(injected);
    let (a50, a99, amax) = summary(asked);
    let (b50, b99, bmax) = summary(baseline);
    println!("injector benchmark (kube-apiserver 1.20.2, one gateway serving the webhook)");
    println!(
        "  webhook alone, {REVIEWS} reviews on one connection: p50 {}  p99 {}  max {}   (target p99 < 10 ms)",
        ms(d50),
        ms(d99),
        ms(dmax)
    );
    println!(
        "  pod create, injected ({PODS}):           p50 {}  p99 {}  max {}",
        ms(i50),
        ms(i99),
        ms(imax)
    );
    println!(
        "  pod create, asked and left alone ({PODS}): p50 {}  p99 {}  max {}",
        ms(a50),
        ms(a99),
        ms(amax)
    );
    println!(
        "  pod create, no webhook ({PODS}):           p50 {}  p99 {}  max {}   (baseline)",
        ms(b50),
        ms(b99),
        ms(bmax)
    );
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64().max(1e-9);
    println!(
        "  injection adds {} at p50 ({:.2}x the baseline), {} at p99 ({:.2}x)",
        ms(i50.saturating_sub(b50)),
        ratio(i50, b50),
        ms(i99.saturating_sub(b99)),
        ratio(i99, b99)
    );
    if d99 >= Duration::from_millis(10) {
        return Err(anyhow!(
            "the webhook's p99 {} misses the 10 ms target",
            ms(d99)
        ));
    }
    west.gateway.stop()?;
    Ok(())
}

//! The demo's traffic generator and its golden-metrics table: each route calls a mesh name
//! through a client sidecar at a steady rate and records what came back (which cluster served
//! it, which caller identity the serving sidecar saw, status and latency).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::apps::proto::OrderRequest;
use super::apps::proto::orders_client::OrdersClient;

/// Calls per second of each route.
const RATE: u64 = 25;
/// Latency samples kept per row (enough for hours of demo at the demo's rate).
const MAX_SAMPLES: usize = 1 << 20;

/// What a route calls.
#[derive(Debug, Clone)]
pub enum Call {
    /// An HTTP GET of `/` with this Host.
    Http { host: String },
    /// The gRPC `Place` of the orders service at this authority.
    Grpc { authority: String },
    /// A TCP connection to an upstream listener of the sidecar (`proxy`): a line, echoed back.
    Tcp,
}

/// One stream of calls from a cluster's client sidecar.
#[derive(Debug, Clone)]
pub struct Route {
    pub source_cluster: String,
    /// The cluster expected to serve, for failed calls that cannot say.
    pub expected_cluster: String,
    pub service: String,
    pub proxy: SocketAddr,
    pub call: Call,
}

#[derive(Debug, Default)]
struct Row {
    requests: u64,
    successes: u64,
    micros: Vec<u32>,
    caller: Option<String>,
}

/// What the routes saw, per (source cluster, destination cluster, service).
#[derive(Debug, Default)]
pub struct Stats {
    rows: Mutex<BTreeMap<(String, String, String), Row>>,
    started: Mutex<Option<Instant>>,
}

impl Stats {
    fn record(
        &self,
        route: &Route,
        served_by: Option<String>,
        caller: Option<String>,
        ok: bool,
        latency: Duration,
    ) {
        let key = (
            route.source_cluster.clone(),
            served_by.unwrap_or_else(|| route.expected_cluster.clone()),
            route.service.clone(),
        );
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let row = rows.entry(key).or_default();
        row.requests += 1;
        if ok {
            row.successes += 1;
        }
        if row.micros.len() < MAX_SAMPLES {
            row.micros
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
        if caller.is_some() {
            row.caller = caller;
        }
    }

    /// One JSON row per (source, destination, service), as the report and the table show them.
    pub fn rows(&self) -> Vec<Value> {
        let elapsed = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(1.0, |s| s.elapsed().as_secs_f64().max(0.001));
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.iter()
            .map(|((source, destination, service), row)| {
                let mut sorted = row.micros.clone();
                sorted.sort_unstable();
                let quantile = |q: f64| -> f64 {
                    if sorted.is_empty() {
                        return 0.0;
                    }
                    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
                    (f64::from(sorted[index - 1]) / 10.0).round() / 100.0
                };
                json!({
                    "source_cluster": source,
                    "destination_cluster": destination,
                    "service": service,
                    "requests": row.requests,
                    "success_rate": if row.requests == 0 { 0.0 } else { row.successes as f64 / row.requests as f64 },
                    "rps": ((row.requests as f64 / elapsed) * 10.0).round() / 10.0,
                    "latency_ms": {"p50": quantile(0.5), "p95": quantile(0.95), "p99": quantile(0.99)},
                    "caller_identity_seen": row.caller,
                })
            })
            .collect()
    }
}

/// The golden-metrics table of the rows.
pub fn table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<7} {:<7} {:<12} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
        "FROM", "TO", "SERVICE", "REQUESTS", "SUCCESS", "RPS", "P50 ms", "P99 ms", "CALLER SEEN"
    );
    for row in rows {
        let text = |key: &str| row[key].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!(
            "{:<7} {:<7} {:<12} {:>8} {:>7.1}% {:>8.1} {:>8.2} {:>8.2}  {}\n",
            text("source_cluster"),
            text("destination_cluster"),
            text("service"),
            row["requests"].as_u64().unwrap_or(0),
            row["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
            row["rps"].as_f64().unwrap_or(0.0),
            row["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            row["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            text("caller_identity_seen"),
        ));
    }
    out
}

/// Starts every route; they run until `stop`.
pub fn start(routes: Vec<Route>, stop: CancellationToken) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    *stats.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    for route in routes {
        let stats = stats.clone();
        let stop = stop.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let mut grpc = match &route.call {
                Call::Grpc { authority } => grpc_client(route.proxy, authority).ok(),
                Call::Http { .. } | Call::Tcp => None,
            };
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let started = Instant::now();
                let (served_by, caller, ok) = match &route.call {
                    Call::Http { host } => call_http(&http, route.proxy, host).await,
                    Call::Grpc { .. } => match grpc.as_mut() {
                        Some(client) => call_grpc(client).await,
                        None => (None, None, false),
                    },
                    Call::Tcp => call_tcp(route.proxy, &route.expected_cluster).await,
                };
                stats.record(&route, served_by, caller, ok, started.elapsed());
            }
        });
    }
    stats
}

async fn call_http(
    client: &Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    host: &str,
) -> (Option<String>, Option<String>, bool) {
    let Ok(request) = hyper::Request::get(format!("http://{proxy}/"))
        .header(hyper::header::HOST, host)
        .body(Empty::new())
    else {
        return (None, None, false);
    };
    let call = async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let value: Value = serde_json::from_slice(&body).ok()?;
        Some((
            value["cluster"].as_str().map(str::to_owned),
            value["caller"].as_str().map(str::to_owned),
            ok,
        ))
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Some(result)) => result,
        _ => (None, None, false),
    }
}

fn grpc_client(
    proxy: SocketAddr,
    authority: &str,
) -> anyhow::Result<OrdersClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(format!("http://{authority}").parse()?)
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(OrdersClient::new(channel))
}

async fn call_grpc(
    client: &mut OrdersClient<tonic::transport::Channel>,
) -> (Option<String>, Option<String>, bool) {
    let request = OrderRequest {
        item: "espresso".into(),
        quantity: 1,
    };
    match client.place(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            (Some(reply.cluster), Some(reply.caller), true)
        }
        Err(_) => (None, None, false),
    }
}

async fn call_tcp(upstream: SocketAddr, cluster: &str) -> (Option<String>, Option<String>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let call = async {
        let mut tcp = tokio::net::TcpStream::connect(upstream).await.ok()?;
        tcp.write_all(b"ledger entry\n").await.ok()?;
        let mut echo = [0u8; 13];
        tcp.read_exact(&mut echo).await.ok()?;
        Some(&echo == b"ledger entry\n")
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Some(ok)) => (Some(cluster.to_owned()), None, ok),
        _ => (None, None, false),
    }
}

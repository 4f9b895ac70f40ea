//! The data plane end to end: gateways, sidecars and sample apps as separate processes on
//! loopback. Requests go app → sidecar → (gateway → QUIC → gateway) → sidecar → app over real
//! sockets, with mutual TLS between the sidecars.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use strait_tests::demo::OrderRequest;
use strait_tests::demo::orders_client::OrdersClient;
use strait_tests::workloads::{api, client, endpoint, get_json, linked_pair, wait_route};
use strait_tests::{http_get_host, metric, proc_memory, wait_for};

const CALLER_EAST: &str = "spiffe://example.mesh/cluster/east/ns/shop/sa/web";

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn grpc(proxy: SocketAddr, authority: &str) -> Result<OrdersClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(format!("http://{authority}").parse()?)
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    Ok(OrdersClient::new(channel))
}

#[test]
fn http1_http2_grpc_and_tcp_reach_local_and_remote_endpoints_with_the_callers_identity()
-> Result<()> {
    let (mesh, east_gateway, west_gateway) = linked_pair(None)?;
    let ports = [
        ("http", 8080, "http"),
        ("http", 8081, "http2"),
        ("grpc", 9090, "grpc"),
        ("tcp", 5432, "tcp"),
    ];
    let _east = endpoint(&mesh, "east", "mix", "mix-east-0", &ports)?;
    let west = endpoint(&mesh, "west", "mix", "mix-west-0", &ports)?;
    let web = client(
        &mesh,
        "east",
        &[
            "mix.shop.svc.cluster.local:5432",
            "west.mix.shop.svc.clusterset.local:5432",
        ],
    )?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "west.mix.shop.svc.clusterset.local", "west")?;

    // HTTP/1.1, here and there; the app sees the caller's identity, not a gateway's.
    for (host, cluster) in [
        ("mix.shop.svc.cluster.local", "east"),
        ("west.mix.shop.svc.clusterset.local", "west"),
        ("mix.shop", "east"),
    ] {
        let answer = get_json(proxy, host)?;
        ensure!(answer["cluster"] == cluster, "{host}: {answer}");
        ensure!(answer["caller"] == CALLER_EAST, "{host}: {answer}");
        ensure!(answer["protocol"] == "HTTP/1.1", "{host}: {answer}");
    }

    runtime()?.block_on(async {
        // HTTP/2 from the app (prior knowledge) to an http2 port: HTTP/2 all the way.
        let tcp = tokio::net::TcpStream::connect(proxy).await?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await?;
        tokio::spawn(connection);
        for (authority, cluster) in [
            ("mix.shop.svc.cluster.local:8081", "east"),
            ("west.mix.shop.svc.clusterset.local:8081", "west"),
        ] {
            let request =
                hyper::Request::get(format!("http://{authority}/h2")).body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            ensure!(
                response.status() == 200,
                "{authority}: {}",
                response.status()
            );
            let body = response.into_body().collect().await?.to_bytes();
            let answer: Value = serde_json::from_slice(&body)?;
            ensure!(answer["cluster"] == cluster, "{authority}: {answer}");
            ensure!(answer["protocol"] == "HTTP/2.0", "{authority}: {answer}");
            ensure!(answer["caller"] == CALLER_EAST, "{authority}: {answer}");
        }

        // gRPC, unary and server streaming.
        for (authority, cluster) in [
            ("mix.shop.svc.cluster.local:9090", "east"),
            ("west.mix.shop.svc.clusterset.local:9090", "west"),
        ] {
            let mut orders = grpc(proxy, authority)?;
            let placed = orders
                .place(OrderRequest {
                    item: "tea".into(),
                    quantity: 1,
                })
                .await?
                .into_inner();
            ensure!(
                placed.cluster == cluster && placed.caller == CALLER_EAST,
                "{placed:?}"
            );
            let refused = orders
                .place(OrderRequest::default())
                .await
                .expect_err("an empty item is refused by the app");
            ensure!(
                refused.code() == tonic::Code::InvalidArgument,
                "{refused:?}"
            );
            let mut stream = orders
                .track(OrderRequest {
                    item: "tea".into(),
                    quantity: 100,
                })
                .await?
                .into_inner();
            let mut sequences = Vec::new();
            while let Some(reply) = stream.message().await? {
                ensure!(reply.cluster == cluster, "{reply:?}");
                sequences.push(reply.sequence);
            }
            ensure!(sequences == (1..=100).collect::<Vec<_>>(), "{sequences:?}");
        }
        anyhow::Ok(())
    })?;

    // Opaque TCP through the per-upstream listeners.
    for n in 0..2 {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(web.upstream(n)?)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let message = format!("ping {n} through the mesh\n");
        tcp.write_all(message.as_bytes())?;
        let mut echoed = vec![0u8; message.len()];
        tcp.read_exact(&mut echoed)?;
        ensure!(
            echoed == message.as_bytes(),
            "{:?}",
            String::from_utf8_lossy(&echoed)
        );
    }

    // The destination sidecar and both gateways measured it.
    let west_admin = west.sidecar.addr("admin")?;
    wait_for(Duration::from_secs(10), "west's inbound metrics", || {
        let (_, text) = strait_tests::http_get(west_admin, "/metrics")?;
        let http = metric(
            &text,
            "strait_requests_total",
            &[
                "direction=\"inbound\"",
                "source_cluster=\"east\"",
                "status_class=\"2xx\"",
            ],
        );
        let tcp = metric(
            &text,
            "strait_tcp_connections_total",
            &["direction=\"inbound\"", "source_cluster=\"east\""],
        );
        Ok((http.is_some_and(|n| n >= 5.0) && tcp == Some(1.0)).then_some(()))
    })?;
    wait_for(
        Duration::from_secs(10),
        "the gateways' flow metrics",
        || {
            let east = metric(
                &east_gateway.metrics()?,
                "strait_gateway_flows_total",
                &[
                    "direction=\"outbound\"",
                    "peer=\"west\"",
                    "service=\"mix\"",
                    "outcome=\"ok\"",
                ],
            );
            let west = metric(
                &west_gateway.metrics()?,
                "strait_gateway_open_flows",
                &["direction=\"inbound\"", "peer=\"east\""],
            );
            Ok((east >= Some(1.0) && west >= Some(1.0)).then_some(()))
        },
    )?;
    Ok(())
}

/// A body of `size` zero bytes in 64 KiB frames, made as it is sent.
fn zeros(size: u64) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    let chunk = Bytes::from(vec![0u8; 64 << 10]);
    StreamBody::new(futures::stream::unfold(size, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(chunk.len() as u64);
                (Ok(Frame::data(chunk.slice(..n as usize))), left - n)
            })
        }
    }))
    .boxed()
}

#[test]
fn a_100_mb_body_and_a_thousand_concurrent_requests_cross_one_gateway_pair() -> Result<()> {
    let (mesh, east_gateway, west_gateway) = linked_pair(None)?;
    let api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;

    let pids = [
        ("east client sidecar", web.pid()),
        ("east gateway", east_gateway.pid()),
        ("west gateway", west_gateway.pid()),
        ("west sidecar", api.sidecar.pid()),
    ];
    let before: Vec<u64> = pids
        .iter()
        .map(|(name, pid)| proc_memory(pid.ok_or_else(|| anyhow!("{name} not running"))?, "VmRSS"))
        .collect::<Result<_>>()?;

    const SIZE: u64 = 100 << 20;
    runtime()?.block_on(async {
        let client: Client<_, http_body_util::combinators::BoxBody<Bytes, std::io::Error>> =
            Client::builder(TokioExecutor::new()).build_http();
        // Streamed both ways at once: the app echoes the body as it arrives.
        let request = hyper::Request::post(format!("http://{proxy}/echo"))
            .header(hyper::header::HOST, "api.shop.svc.clusterset.local")
            .body(zeros(SIZE))?;
        let started = Instant::now();
        let response = client.request(request).await?;
        ensure!(response.status() == 200, "{}", response.status());
        let mut body = response.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                ensure!(data.iter().all(|b| *b == 0), "corrupted bytes");
                received += data.len() as u64;
            }
        }
        ensure!(received == SIZE, "echoed {received} of {SIZE} bytes");
        println!(
            "100 MiB echoed across clusters in {:?} ({:.0} MB/s each way)",
            started.elapsed(),
            SIZE as f64 / started.elapsed().as_secs_f64() / 1e6
        );

        // 1,000 requests at once, all across the one gateway pair.
        let empty: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut tasks = Vec::new();
        for n in 0..1000 {
            let empty = empty.clone();
            tasks.push(tokio::spawn(async move {
                let request = hyper::Request::get(format!("http://{proxy}/n/{n}"))
                    .header(hyper::header::HOST, "api.shop.svc.clusterset.local")
                    .body(Empty::new())?;
                let response = empty.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                let answer: Value = serde_json::from_slice(&body)?;
                ensure!(
                    status == 200 && answer["cluster"] == "west",
                    "{status}: {answer}"
                );
                anyhow::Ok(())
            }));
        }
        let mut failures = Vec::new();
        for task in tasks {
            if let Err(e) = task.await? {
                failures.push(e.to_string());
            }
        }
        ensure!(
            failures.is_empty(),
            "{} of 1000 failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        anyhow::Ok(())
    })?;

    for ((name, pid), rss) in pids.iter().zip(before) {
        let pid = pid.ok_or_else(|| anyhow!("{name} not running"))?;
        let peak = proc_memory(pid, "VmHWM")?;
        println!("{name}: {} MiB before, peak {} MiB", rss >> 20, peak >> 20);
        // 100 MiB went through each process; none may have held it.
        ensure!(
            peak < rss + (48 << 20),
            "{name} peaked at {} MiB from {} MiB: the body was buffered",
            peak >> 20,
            rss >> 20
        );
    }
    Ok(())
}

/// Sends `count` requests for `host` one after another; returns the cluster/pod of each answer
/// (None for a failure).
fn send_many(proxy: SocketAddr, host: &str, count: usize) -> Vec<Option<(String, String)>> {
    (0..count)
        .map(|_| {
            get_json(proxy, host).ok().map(|v| {
                (
                    v["cluster"].as_str().unwrap_or_default().to_owned(),
                    v["pod"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn a_request_without_an_answer_in_time_gets_a_gateway_timeout() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = mesh.sidecar(
        "east",
        "shop",
        "web",
        "web-east",
        &["--proxy-addr", "127.0.0.1:0", "--request-timeout", "300ms"].map(String::from),
    )?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;
    let started = Instant::now();
    let (status, body) = http_get_host(proxy, "api.shop", "/delay/3000")?;
    ensure!(status == 504, "{status}: {body}");
    ensure!(body.contains("within"), "{body}");
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The connection to the other cluster is still good for the next request.
    let answer = get_json(proxy, "api.shop")?;
    ensure!(answer["cluster"] == "west", "{answer}");
    Ok(())
}

#[test]
fn a_gateway_back_after_an_outage_carries_traffic_again_within_two_seconds() -> Result<()> {
    let (mesh, mut east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    let host = "api.shop.svc.clusterset.local";
    wait_route(proxy, host, "west")?;

    // East's gateway is gone for 12 s while the client keeps calling: every call fails, and
    // the client's sidecar sets the way to west aside for ever longer (up to 30 s).
    east_gateway.kill()?;
    let down = Instant::now();
    let mut failed = 0;
    while down.elapsed() < Duration::from_secs(12) {
        if http_get_host(proxy, host, "/").map_or(true, |(status, _)| status != 200) {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        failed > 20,
        "calls succeeded while the gateway was down ({failed} failed)"
    );

    // Back: the first call that works comes within a second or two of the gateway being
    // ready, not when the client's backoff runs out (before the fix: 3.6–5.7 s).
    east_gateway.start(&mesh)?;
    let ready = Instant::now();
    wait_for(Duration::from_secs(2), "west reached again", || {
        Ok(http_get_host(proxy, host, "/")
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|_| ()))
    })?;
    println!(
        "cross-cluster calls back {:?} after the gateway was ready again",
        ready.elapsed()
    );
    Ok(())
}

#[test]
fn an_endpoint_killed_mid_test_is_avoided() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _first = api(&mesh, "east", "api-east-0")?;
    let mut second = api(&mesh, "east", "api-east-1")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_for(Duration::from_secs(20), "both endpoints serving", || {
        let pods: std::collections::BTreeSet<_> = send_many(proxy, "api.shop", 20)
            .into_iter()
            .flatten()
            .map(|(_, pod)| pod)
            .collect();
        Ok((pods.len() == 2).then_some(()))
    })?;

    // The endpoint dies without deregistering: its lease still lists it for a while.
    second.sidecar.kill()?;
    for app in &mut second.apps {
        app.kill()?;
    }
    let answers = send_many(proxy, "api.shop", 200);
    let failures = answers.iter().filter(|a| a.is_none()).count();
    ensure!(
        failures <= 2,
        "{failures} of 200 requests failed after the kill"
    );
    ensure!(
        answers[10..]
            .iter()
            .all(|a| a.as_ref().is_some_and(|(_, pod)| pod == "api-east-0-http")),
        "requests still went to the dead endpoint: {answers:?}"
    );
    Ok(())
}

#[test]
fn when_a_clusters_endpoints_are_gone_traffic_fails_over_to_the_other_cluster_and_returns()
-> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let mut local = api(&mesh, "east", "api-east-0")?;
    let _remote = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    let host = "api.shop.svc.clusterset.local";
    wait_route(proxy, "west.api.shop.svc.clusterset.local", "west")?;
    // Local first.
    let answers = send_many(proxy, host, 20);
    ensure!(
        answers
            .iter()
            .all(|a| a.as_ref().is_some_and(|(c, _)| c == "east")),
        "{answers:?}"
    );

    local.sidecar.kill()?;
    let answers = send_many(proxy, host, 100);
    let failures = answers.iter().filter(|a| a.is_none()).count();
    ensure!(failures <= 2, "{failures} of 100 failed over: {answers:?}");
    ensure!(
        answers[5..]
            .iter()
            .all(|a| a.as_ref().is_some_and(|(c, _)| c == "west")),
        "traffic did not move to west: {answers:?}"
    );

    // A new local endpoint takes the traffic back.
    let _back = api(&mesh, "east", "api-east-1")?;
    wait_route(proxy, host, "east")?;
    Ok(())
}

#[test]
fn a_sidecar_or_app_stopped_the_moment_it_says_it_started_exits_cleanly() -> Result<()> {
    // Before the fix the signal handlers were installed only once the process waited for
    // them, after its "started" line: a SIGTERM sent at once killed it (signal 15, no clean
    // deregistration).
    let (mesh, _east, _west) = linked_pair(None)?;
    let bootstrap = mesh.bootstrap("east", "shop", "api")?;
    let path = mesh.file("prompt.bootstrap.yaml", &bootstrap)?;
    for round in 0..5 {
        let mut app = mesh.app("http", "east", "shop/api", &format!("prompt-app-{round}"))?;
        app.stop()?;
        let mut sidecar = strait_tests::Process::start(
            &mesh,
            &format!("prompt-sidecar-{round}"),
            &[
                "sidecar".into(),
                "run".into(),
                "--bootstrap".into(),
                path.display().to_string(),
            ],
        )?;
        sidecar.stop()?;
    }
    Ok(())
}

#[test]
fn a_sidecar_whose_certificate_is_renewed_keeps_serving() -> Result<()> {
    // Certificates of 4 s, renewed at 70 %: several renewals during the test.
    let (mesh, _east_gateway, _west_gateway) =
        linked_pair(Some("  certTtlSeconds: 4\n  leaseSeconds: 15"))?;
    let server = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let answer = get_json(proxy, "api.shop")?;
        ensure!(answer["caller"] == CALLER_EAST, "{answer}");
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for sidecar in [&web, &server.sidecar] {
        let (_, text) = strait_tests::http_get(sidecar.addr("admin")?, "/metrics")?;
        let renewals = metric(&text, "strait_certificate_renewals_total", &[]).unwrap_or(0.0);
        ensure!(renewals >= 2.0, "{}: {renewals} renewals", sidecar.name);
    }
    // Every certificate first issued has expired: new handshakes need the renewed ones.
    let fresh = api(&mesh, "east", "api-east-0")?;
    wait_route(proxy, "api.shop.svc.cluster.local", "east")?;
    drop(fresh);
    println!("{sent} requests across 9 s of renewals");
    Ok(())
}

#[test]
fn the_relay_refuses_malformed_and_unroutable_flows_and_keeps_relaying() -> Result<()> {
    use std::io::{Read, Write};
    use strait_federation::flow::{FlowTarget, MAX_FLOW_FRAME};
    use strait_federation::proto::peer::FlowReply;

    let (mesh, east_gateway, west_gateway) = linked_pair(None)?;
    mesh.apply(
        "west",
        "ledger.yaml",
        &strait_tests::service("shop", "ledger", false, 5432),
    )
    .success()?;
    let _api = api(&mesh, "west", "api-west-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, "api.shop", "west")?;

    // The relay's answer to `bytes`: the refusal it wrote before closing, if any.
    let answer = |bytes: &[u8]| -> Result<Option<FlowReply>> {
        let mut tcp = std::net::TcpStream::connect(east_gateway.relay)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.write_all(bytes)?;
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply);
        if reply.len() < 2 {
            return Ok(None);
        }
        Ok(Some(prost::Message::decode(&reply[2..])?))
    };
    let header = |cluster: &str, service: &str| -> Result<Vec<u8>> {
        let open = FlowTarget {
            cluster: strait_federation::identity::ClusterName::new(cluster)?,
            service: strait_federation::catalog::ServiceKey {
                namespace: strait_federation::identity::Namespace::new("shop")?,
                name: strait_federation::identity::ServiceName::new(service)?,
            },
            port: 5432,
            hostname: None,
            source_cluster: None,
            forwarded: false,
            trace: None,
        };
        let body = prost::Message::encode_to_vec(&open.to_wire());
        Ok([&(body.len() as u16).to_be_bytes()[..], &body].concat())
    };
    let refused = |reply: Option<FlowReply>, words: &str| -> Result<()> {
        let reply =
            reply.ok_or_else(|| anyhow!("no answer; expected a refusal saying {words:?}"))?;
        ensure!(!reply.ok && reply.error.contains(words), "{reply:?}");
        Ok(())
    };
    // A length beyond the limit, before any of it is read.
    let oversized = ((MAX_FLOW_FRAME + 1) as u16).to_be_bytes();
    refused(answer(&oversized)?, "larger than the limit")?;
    // Not a header at all.
    refused(answer(&[0, 4, 0xff, 0xff, 0xff, 0xff])?, "malformed")?;
    // A header naming a service west does not export.
    refused(answer(&header("west", "ledger")?)?, "not exported")?;
    // A header for a cluster that is not linked, and one for this cluster.
    refused(answer(&header("north", "api")?)?, "not connected")?;
    refused(answer(&header("east", "api")?)?, "this cluster")?;
    // Half a header, then silence: dropped without harm.
    let _ = answer(&[0, 40, 1])?;

    // Meanwhile real flows still cross, and both gateways are healthy.
    ensure!(get_json(proxy, "api.shop")?["cluster"] == "west");
    for gateway in [&east_gateway, &west_gateway] {
        let (status, _) = strait_tests::http_get(gateway.admin, "/readyz")?;
        ensure!(status == 200, "gateway {} not ready", gateway.cluster);
    }
    let refusals = metric(
        &east_gateway.metrics()?,
        "strait_gateway_flows_total",
        &["direction=\"outbound\"", "outcome=\"refused\""],
    );
    ensure!(refusals >= Some(1.0), "refused flows were not counted");
    Ok(())
}

#[test]
fn a_bootstrap_token_only_works_at_the_gateway_that_issued_it() -> Result<()> {
    let (mesh, _east_gateway, west_gateway) = linked_pair(None)?;
    let bootstrap = mesh.bootstrap("east", "shop", "web")?;
    // East's token presented to west's gateway.
    let stolen = bootstrap
        .lines()
        .map(|l| {
            if l.starts_with("gateway:") {
                format!("gateway: {}", west_gateway.api)
            } else if l.starts_with("cluster:") {
                "cluster: west".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = mesh.file("stolen.yaml", &stolen)?;
    let output = mesh.cli(&["sidecar", "run", "--bootstrap"], &[&path]);
    ensure!(!output.ok, "a sidecar joined west with east's token");
    ensure!(
        output.stderr.contains("bootstrap token") && output.stderr.contains("east"),
        "{}",
        output.stderr
    );
    Ok(())
}

/// Whether every one of `count` requests through `proxy` was answered by `cluster`.
fn all_served_by(proxy: SocketAddr, host: &str, count: usize, cluster: &str) -> Result<()> {
    let answers = send_many(proxy, host, count);
    ensure!(
        answers
            .iter()
            .all(|a| a.as_ref().is_some_and(|(c, _)| c == cluster)),
        "not all from {cluster}: {answers:?}"
    );
    Ok(())
}

/// A FailoverPolicy for shop/api with the given tiers and `unlisted`.
fn failover_policy(order: &str, unlisted: &str) -> String {
    format!(
        "apiVersion: policy.strait.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: api-failover, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  order: {order}
  unlisted: {unlisted}
"
    )
}

/// East's clients fail over to a cluster of their own region first, and to another cloud only
/// when that one has nothing left; a FailoverPolicy (applied in another cluster) replaces that
/// order for its service, and can leave clusters out altogether.
#[test]
fn failover_prefers_the_same_region_unless_a_failover_policy_orders_otherwise() -> Result<()> {
    let mesh = strait_tests::Mesh::new()?;
    let mut gateways = Vec::new();
    for (cluster, cloud, region) in [
        ("east", "aws", "us-east-1"),
        ("south", "aws", "us-east-1"),
        ("west", "gcp", "us-east1"),
    ] {
        let mut gateway = mesh.gateway(cluster, None)?;
        gateway.set_section("location", &format!("  cloud: {cloud}\n  region: {region}"))?;
        gateway.start(&mesh)?;
        gateways.push(gateway);
    }
    mesh.link("east", "south")?;
    mesh.link("east", "west")?;
    let _far = api(&mesh, "west", "api-west-0")?;
    let mut near = api(&mesh, "south", "api-south-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    let host = "api.shop.svc.clusterset.local";
    wait_route(proxy, "west.api.shop.svc.clusterset.local", "west")?;
    wait_route(proxy, host, "south")?;
    // West answers fast too, yet every request goes to the same region.
    all_served_by(proxy, host, 40, "south")?;

    // Applied in west, followed by east's client: the other cloud first, nothing else.
    mesh.apply(
        "west",
        "failover.yaml",
        &failover_policy("[{locations: [gcp]}]", "never"),
    )
    .success()?;
    wait_route(proxy, host, "west")?;
    all_served_by(proxy, host, 40, "west")?;
    // A name that pins a cluster still reaches it.
    ensure!(get_json(proxy, "south.api.shop.svc.clusterset.local")?["cluster"] == "south");

    // The region only: with south's endpoint gone, west is never tried.
    mesh.apply(
        "west",
        "failover.yaml",
        &failover_policy("[{scope: region}]", "never"),
    )
    .success()?;
    wait_route(proxy, host, "south")?;
    near.sidecar.kill()?;
    wait_for(Duration::from_secs(20), "api unavailable from east", || {
        Ok((http_get_host(proxy, host, "/")?.0 == 503).then_some(()))
    })?;

    // Without the policy, the default order falls through to the other cloud.
    let path = mesh.file(
        "failover.yaml",
        &failover_policy("[{scope: region}]", "never"),
    )?;
    mesh.cli(&["--context", "west", "delete", "-f"], &[&path])
        .success()?;
    wait_route(proxy, host, "west")?;
    all_served_by(proxy, host, 20, "west")?;
    Ok(())
}

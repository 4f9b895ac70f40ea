//! Mesh-wide policy end to end: documents applied with the CLI in one cluster, replicated by
//! real gateways over QUIC, and enforced by real sidecars in front of the sample apps.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_federation::proto::authorizer::authorizer_server::{Authorizer, AuthorizerServer};
use strait_federation::proto::authorizer::{CheckRequest, CheckResponse};
use strait_tests::workloads::{
    Answer, api, client, endpoint, get, get_json, linked_pair, wait_route,
};
use strait_tests::{Gateway, Mesh, NO_WEST_TO_API, http_get_host, metric, wait_for};

const API: &str = "api.shop.svc.clusterset.local";

/// A policy's name, origin and version as `strait get policies -o json` shows them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    kind: String,
    name: String,
    origin: String,
    version: String,
}

fn policies(mesh: &Mesh, cluster: &str) -> Result<Vec<Listed>> {
    let text = mesh
        .ctl(cluster, &["get", "policies", "-o", "json"])
        .success()?;
    let list: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    let items = list["items"].as_array().context("items")?;
    let mut listed: Vec<Listed> = items
        .iter()
        .map(|item| Listed {
            kind: item["kind"].as_str().unwrap_or_default().to_owned(),
            name: item["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            origin: item["status"]["origin"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            version: item["status"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    listed.sort();
    Ok(listed)
}

/// The status through `proxy` of GET / at `host`, and the body.
fn status(proxy: SocketAddr, host: &str) -> (u16, String) {
    http_get_host(proxy, host, "/").unwrap_or((0, String::new()))
}

/// Waits until GET / at `host` through `proxy` answers `want`; how long it took.
fn wait_status(proxy: SocketAddr, host: &str, want: u16, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    wait_for(limit, &format!("{host} answering {want}"), || {
        Ok((status(proxy, host).0 == want).then_some(()))
    })?;
    Ok(started.elapsed())
}

/// Sends a line through a TCP upstream listener; whether it came back.
fn tcp_echoes(upstream: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut tcp = std::net::TcpStream::connect(upstream)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.write_all(b"ping\n")?;
        let mut echoed = [0u8; 5];
        tcp.read_exact(&mut echoed)?;
        Ok(&echoed == b"ping\n")
    };
    attempt().unwrap_or(false)
}

#[test]
fn a_deny_applied_in_east_is_enforced_in_west_held_while_partitioned_and_lifted_by_delete()
-> Result<()> {
    let (mesh, east_gateway, mut west_gateway) = linked_pair(None)?;
    let ports = [("http", 8080, "http"), ("tcp", 5432, "tcp")];
    let api_east = endpoint(&mesh, "east", "api", "api-east-0", &ports)?;
    let api_west = endpoint(&mesh, "west", "api", "api-west-0", &ports)?;
    let web_east = client(&mesh, "east", &[])?;
    let web_west = client(&mesh, "west", &["api.shop.svc.cluster.local:5432"])?;
    let (east_proxy, west_proxy) = (web_east.addr("proxy")?, web_west.addr("proxy")?);
    wait_route(west_proxy, API, "west")?;
    wait_route(east_proxy, API, "east")?;
    wait_route(east_proxy, &format!("west.{API}"), "west")?;
    ensure!(tcp_echoes(web_west.upstream(0)?), "TCP before the policy");

    // A bad document is refused whole, naming the field; nothing reaches the mesh.
    let bad = mesh.apply(
        "east",
        "bad.yaml",
        &NO_WEST_TO_API.replace("action: deny", "action: deny\n  actoin: allow"),
    );
    ensure!(!bad.ok, "a document with an unknown field was accepted");
    ensure!(
        bad.stderr.contains("bad.yaml: document 1") && bad.stderr.contains("spec.actoin"),
        "{}",
        bad.stderr
    );
    ensure!(policies(&mesh, "east")?.is_empty());

    let applied = mesh
        .apply("east", "no-west.yaml", NO_WEST_TO_API)
        .success()?;
    ensure!(applied.contains("no-west-to-api created"), "{applied}");
    // West's client reaches west's api directly, sidecar to sidecar: the policy applied in
    // east must have reached west's gateway and, from it, west's sidecar.
    let took = wait_status(west_proxy, API, 403, Duration::from_secs(5))?;
    println!("deny enforced in west {took:?} after apply in east");
    let (_, body) = status(west_proxy, API);
    ensure!(body.contains("shop/no-west-to-api"), "{body}");
    // East's callers are not concerned, here or in west.
    ensure!(get_json(east_proxy, API)?["cluster"] == "east");
    ensure!(get_json(east_proxy, &format!("west.{API}"))?["cluster"] == "west");
    // Opaque TCP from west is refused (closed before the app is dialled).
    ensure!(!tcp_echoes(web_west.upstream(0)?), "TCP got through a deny");

    // Both gateways list it, with the same version, made in east.
    let at_west = policies(&mesh, "west")?;
    ensure!(at_west.len() == 1, "{at_west:?}");
    ensure!(at_west[0].name == "no-west-to-api" && at_west[0].origin == "east");
    ensure!(!at_west[0].version.is_empty());
    ensure!(policies(&mesh, "east")? == at_west);

    // The destination sidecar counted both refusals by the policy's name.
    let admin = api_west.sidecar.addr("admin")?;
    let text = http_get_host(admin, "localhost", "/metrics")?.1;
    for protocol in ["http", "tcp"] {
        let denied = metric(
            &text,
            "strait_authorization_denied_total",
            &[
                &format!("protocol=\"{protocol}\""),
                "policy=\"shop/no-west-to-api\"",
                "source_cluster=\"west\"",
            ],
        );
        ensure!(denied >= Some(1.0), "{protocol}: {denied:?}");
    }

    // Fail static: with west's gateway gone, west's sidecars keep enforcing what they had.
    west_gateway.kill()?;
    for _ in 0..5 {
        ensure!(status(west_proxy, API).0 == 403, "the deny lapsed");
    }
    west_gateway.start(&mesh)?;
    ensure!(
        status(west_proxy, API).0 == 403,
        "the deny lapsed on restart"
    );
    let restarted = policies(&mesh, "west")?;
    ensure!(
        restarted == at_west,
        "west's gateway restarted without the policy: {restarted:?}, not {at_west:?}"
    );

    // East may take the old connection for alive until its idle timeout: wait until west,
    // which knows it restarted, has east's new session.
    wait_for(Duration::from_secs(20), "east linked to west again", || {
        Ok((mesh.link_state("west", "east")? == "connected").then_some(()))
    })?;

    // Deleted in east, lifted in west within 5 s.
    let path = mesh.file("no-west.yaml", NO_WEST_TO_API)?;
    let deleted = mesh
        .cli(&["--context", "east", "delete", "-f"], &[&path])
        .success()?;
    ensure!(deleted.contains("no-west-to-api deleted"), "{deleted}");
    let took = wait_status(west_proxy, API, 200, Duration::from_secs(5))?;
    println!("deny lifted in west {took:?} after delete in east");
    ensure!(tcp_echoes(web_west.upstream(0)?), "TCP after the delete");
    ensure!(policies(&mesh, "west")?.is_empty());
    // The deletion is held as a tombstone in both clusters, and shown.
    for gateway in [&east_gateway, &west_gateway] {
        wait_for(Duration::from_secs(5), "one tombstone shown", || {
            let text = http_get_host(gateway.admin, "localhost", "/metrics")?.1;
            Ok((metric(&text, "strait_policy_tombstones", &[]) == Some(1.0)).then_some(()))
        })?;
    }
    // Deleting again names what was not there and fails.
    let again = mesh.cli(&["--context", "east", "delete", "-f"], &[&path]);
    ensure!(
        !again.ok && again.stdout.contains("not found"),
        "{}",
        again.stdout
    );
    drop(api_east);
    Ok(())
}

#[test]
fn an_allow_policy_admits_only_its_callers_methods_and_paths() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "east", "api-east-0")?;
    let web_east = client(&mesh, "east", &[])?;
    let web_west = client(&mesh, "west", &[])?;
    let (east_proxy, west_proxy) = (web_east.addr("proxy")?, web_west.addr("proxy")?);
    wait_route(east_proxy, API, "east")?;
    wait_route(west_proxy, API, "east")?;
    // Only web of west may call, and only GET under /public/; everyone else is refused.
    mesh.apply(
        "west",
        "allow.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: public-from-west, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{clusters: [west], serviceAccounts: [web]}]
      to: [{methods: [GET], paths: [/public/*]}]
",
    )
    .success()?;
    wait_status(east_proxy, API, 403, Duration::from_secs(5))?;
    let (code, _) = http_get_host(west_proxy, API, "/public/menu")?;
    ensure!(code == 200, "west GET /public/menu: {code}");
    let (code, _) = http_get_host(west_proxy, API, "/private")?;
    ensure!(code == 403, "west GET /private: {code}");
    let (code, _) = http_get_host(east_proxy, API, "/public/menu")?;
    ensure!(code == 403, "east GET /public/menu: {code}");
    // Paths are judged, and sent to the app, normalized: no way around the rule by spelling.
    let (code, body) = http_get_host(west_proxy, API, "/public/../private")?;
    ensure!(code == 403, "west GET /public/../private: {code} {body}");
    let (code, body) = http_get_host(west_proxy, API, "//%70ublic/./menu")?;
    ensure!(code == 200, "west GET //%70ublic/./menu: {code} {body}");
    let seen: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        seen["path"] == "/public/menu",
        "the app saw {}",
        seen["path"]
    );
    let (code, _) = http_get_host(west_proxy, API, "/public%2F..%2Fprivate")?;
    ensure!(code == 400, "an escaped slash: {code}");
    Ok(())
}

/// Three gateways, north and east both linked to west (the hub). A change applied at one end
/// crosses the hub; with the hub down, both ends change on their own, go on enforcing what
/// they have, and all three converge once it is back.
#[test]
fn policies_converge_across_three_gateways_after_a_partition_heals() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut gateways: Vec<Gateway> = Vec::new();
    for cluster in ["west", "east", "north"] {
        gateways.push(mesh.start(cluster, None)?);
    }
    mesh.link("east", "west")?;
    mesh.link("north", "west")?;
    let policy = |name: &str, cluster: &str| {
        NO_WEST_TO_API
            .replace("no-west-to-api", name)
            .replace("[west]", &format!("[{cluster}]"))
    };
    let all_equal = |want: usize| -> Result<Option<Vec<Listed>>> {
        let sets: Vec<_> = ["east", "west", "north"]
            .iter()
            .map(|c| policies(&mesh, c))
            .collect::<Result<_>>()?;
        Ok((sets[0].len() == want && sets.iter().all(|s| *s == sets[0])).then(|| sets[0].clone()))
    };

    let started = Instant::now();
    mesh.apply("east", "a.yaml", &policy("a", "south"))
        .success()?;
    let first = wait_for(Duration::from_secs(5), "a everywhere", || all_equal(1))?;
    println!("a policy reached three gateways in {:?}", started.elapsed());
    ensure!(first[0].origin == "east");

    // The hub goes down: east and north are cut off from each other.
    gateways[0].kill()?;
    mesh.apply("east", "b.yaml", &policy("b", "south"))
        .success()?;
    mesh.apply("north", "c.yaml", &policy("c", "south"))
        .success()?;
    let path = mesh.file("a.yaml", &policy("a", "south"))?;
    mesh.cli(&["--context", "north", "delete", "-f"], &[&path])
        .success()?;
    // Each side holds its own view meanwhile.
    let names = |cluster: &str| -> Result<Vec<String>> {
        Ok(policies(&mesh, cluster)?
            .into_iter()
            .map(|p| p.name)
            .collect())
    };
    ensure!(names("east")? == ["a", "b"], "{:?}", names("east")?);
    ensure!(names("north")? == ["c"], "{:?}", names("north")?);

    let healed = Instant::now();
    gateways[0].start(&mesh)?;
    let converged = wait_for(Duration::from_secs(15), "one set after the heal", || {
        all_equal(2)
    })?;
    println!(
        "three gateways converged {:?} after the hub came back",
        healed.elapsed()
    );
    let names: Vec<_> = converged
        .iter()
        .map(|p| (p.name.as_str(), p.origin.as_str()))
        .collect();
    ensure!(
        names == [("b", "east"), ("c", "north")],
        "north's later delete of a wins everywhere: {converged:?}"
    );
    Ok(())
}

/// The operator's authorizer for the test: allows a request that carries `x-ticket: ok`,
/// and takes two seconds over `/slow`.
struct TicketAuthorizer;

#[tonic::async_trait]
impl Authorizer for TicketAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.path == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let allow = request.headers.get("x-ticket").map(String::as_str) == Some("ok");
        Ok(tonic::Response::new(CheckResponse {
            allow,
            reason: if allow {
                String::new()
            } else {
                format!("no ticket for {} {}", request.method, request.path)
            },
        }))
    }
}

fn external_policy(address: SocketAddr, fail_open: bool) -> String {
    format!(
        "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: tickets, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  action: external
  external: {{address: '{address}', timeout: 300ms, failOpen: {fail_open}}}
"
    )
}

#[test]
fn an_external_authorizer_decides_and_its_policy_fails_open_or_closed() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = runtime.spawn({
        let stop = stop.clone();
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(TicketAuthorizer))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.cancelled_owned(),
            )
    });

    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let api_east = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    mesh.apply("east", "tickets.yaml", &external_policy(address, false))
        .success()?;
    wait_status(proxy, API, 403, Duration::from_secs(5))?;
    let denied = get(proxy, API, "/orders", &[])?;
    ensure!(
        denied.body.contains("no ticket for GET /orders"),
        "{}",
        denied.body
    );
    ensure!(get(proxy, API, "/orders", &[("X-Ticket", "ok")])?.status == 200);

    // Too slow: the policy's 300 ms pass, and it fails closed.
    let started = Instant::now();
    let slow = get(proxy, API, "/slow", &[("X-Ticket", "ok")])?;
    ensure!(slow.status == 403, "{} {}", slow.status, slow.body);
    ensure!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Gone: still closed; then the same policy set to fail open lets requests through.
    stop.cancel();
    runtime.block_on(server)??;
    let gone = get(proxy, API, "/orders", &[("X-Ticket", "ok")])?;
    ensure!(gone.status == 403, "{} {}", gone.status, gone.body);
    ensure!(gone.body.contains("failed closed"), "{}", gone.body);
    mesh.apply("east", "tickets.yaml", &external_policy(address, true))
        .success()?;
    wait_status(proxy, API, 200, Duration::from_secs(5))?;

    let text = http_get_host(api_east.sidecar.addr("admin")?, "localhost", "/metrics")?.1;
    for result in ["allow", "deny", "error_denied", "error_allowed"] {
        let count = metric(
            &text,
            "strait_external_checks_total",
            &["policy=\"shop/tickets\"", &format!("result=\"{result}\"")],
        );
        ensure!(count >= Some(1.0), "{result}: {count:?}");
    }
    Ok(())
}

#[test]
fn a_rate_limit_gives_each_caller_its_own_bucket_and_overrides_some() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let api_east = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "east", &[])?;
    let batch = mesh.sidecar(
        "east",
        "shop",
        "batch",
        "batch-east",
        &["--proxy-addr".to_owned(), "127.0.0.1:0".into()],
    )?;
    let (web_proxy, batch_proxy) = (web.addr("proxy")?, batch.addr("proxy")?);
    wait_route(web_proxy, API, "east")?;
    wait_route(batch_proxy, API, "east")?;
    mesh.apply(
        "west",
        "limits.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limits, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  limit: {requests: 5, per: 1m}
  overrides:
    - from: {serviceAccounts: [batch]}
      limit: {requests: 2, per: 1m}
",
    )
    .success()?;
    // web spends its five (some perhaps before the policy arrived), then is refused.
    wait_status(web_proxy, API, 429, Duration::from_secs(5))?;
    let limited = get(web_proxy, API, "/", &[])?;
    ensure!(limited.status == 429, "{}", limited.status);
    let retry_after: u64 = limited
        .header("retry-after")
        .context("Retry-After")?
        .parse()?;
    ensure!((1..=12).contains(&retry_after), "Retry-After {retry_after}");
    // batch has its own bucket, of two.
    let answers: Vec<u16> = (0..4)
        .map(|_| get(batch_proxy, API, "/", &[]).map_or(0, |a| a.status))
        .collect();
    ensure!(answers == [200, 200, 429, 429], "batch: {answers:?}");

    let text = http_get_host(api_east.sidecar.addr("admin")?, "localhost", "/metrics")?.1;
    let counted = metric(
        &text,
        "strait_rate_limited_total",
        &["protocol=\"http\"", "policy=\"shop/api-limits\""],
    );
    ensure!(counted >= Some(3.0), "{counted:?}");
    Ok(())
}

/// Waits until an endpoint's sidecar holds `count` policies of `kind`.
fn wait_policies(admin: SocketAddr, kind: &str, count: f64) -> Result<()> {
    wait_for(
        Duration::from_secs(5),
        &format!("{count} {kind} at {admin}"),
        || {
            let text = http_get_host(admin, "localhost", "/metrics")?.1;
            let held = metric(&text, "strait_policies", &[&format!("kind=\"{kind}\"")]);
            Ok((held == Some(count)).then_some(()))
        },
    )
}

/// The same service account calls `api` in both clusters, each through its own cluster's
/// endpoint, paced at a known rate: together they get the quota, not the quota each, within
/// the documented bound (total rate × (2 × report interval + a peer hop)).
/// Applies in east a Quota of `limit` requests an hour per service account on shop/api.
/// Hour-long windows, so a test never straddles one: it waits for the next hour when fewer
/// than 30 s of this one are left.
fn hourly_quota(mesh: &Mesh, limit: u32) -> Result<()> {
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        % 3600;
    if into_hour > 3600 - 30 {
        std::thread::sleep(Duration::from_secs(3600 - into_hour + 1));
    }
    mesh.apply(
        "east",
        "quota.yaml",
        &format!(
            "apiVersion: policy.strait.dev/v1alpha1
kind: Quota
metadata: {{name: web-per-hour, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  limit: {{requests: {limit}, per: 1h}}
  key: serviceAccount
"
        ),
    )
    .success()?;
    Ok(())
}

#[test]
fn a_mesh_wide_quota_holds_across_two_clusters_within_its_bound() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let api_east = api(&mesh, "east", "api-east-0")?;
    let api_west = api(&mesh, "west", "api-west-0")?;
    let web_east = client(&mesh, "east", &[])?;
    let web_west = client(&mesh, "west", &[])?;
    let proxies = [web_east.addr("proxy")?, web_west.addr("proxy")?];
    wait_route(proxies[0], API, "east")?;
    wait_route(proxies[1], API, "west")?;
    const LIMIT: u32 = 40;
    hourly_quota(&mesh, LIMIT)?;
    wait_policies(api_east.sidecar.addr("admin")?, "Quota", 1.0)?;
    wait_policies(api_west.sidecar.addr("admin")?, "Quota", 1.0)?;

    // 80 requests a second in all, alternating clusters, until both are refused for a while.
    let pace = Duration::from_millis(12);
    let rate = 1.0 / pace.as_secs_f64();
    let mut admitted = [0u32; 2];
    let mut refused_in_a_row = 0;
    for i in 0..400 {
        let side = i % 2;
        let started = Instant::now();
        let status = get(proxies[side], API, "/", &[])?.status;
        match status {
            200 => {
                admitted[side] += 1;
                refused_in_a_row = 0;
            }
            429 => refused_in_a_row += 1,
            other => anyhow::bail!("unexpected {other}"),
        }
        if refused_in_a_row >= 20 {
            break;
        }
        std::thread::sleep(pace.saturating_sub(started.elapsed()));
    }
    let total = admitted[0] + admitted[1];
    let bound = (rate * (2.0 * 0.1 + 0.1)).ceil() as u32;
    println!(
        "quota of {LIMIT}: {total} admitted (east {}, west {}) at {rate:.0} req/s; bound {LIMIT} + {bound}",
        admitted[0], admitted[1]
    );
    ensure!(total >= LIMIT, "only {total} of {LIMIT} admitted");
    ensure!(
        total <= LIMIT + bound,
        "{total} admitted: beyond {LIMIT} + {bound}"
    );
    ensure!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
    Ok(())
}

#[test]
fn a_lone_gateway_restarted_goes_on_counting_the_quota_window_it_was_in() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut gateway = mesh.start("east", None)?;
    let mut api_east = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    const LIMIT: u32 = 10;
    hourly_quota(&mesh, LIMIT)?;
    wait_policies(api_east.sidecar.addr("admin")?, "Quota", 1.0)?;
    let spend = |count: usize| -> Result<u32> {
        let mut admitted = 0;
        for _ in 0..count {
            match get(proxy, API, "/", &[])?.status {
                200 => admitted += 1,
                429 => {}
                other => anyhow::bail!("unexpected {other}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(admitted)
    };
    let before = spend(20)?;
    ensure!(before >= LIMIT, "only {before} of {LIMIT} admitted");

    // Once the gateway holds what was admitted (the sidecar reports every 100 ms; the counts
    // reach quotas.json within a second), it and the service's sidecar restart (a rollout,
    // say): the window goes on.
    let counted = gateway.dir.join("quotas.json");
    wait_for(
        Duration::from_secs(5),
        "the admitted requests counted",
        || {
            let counts: Vec<(Value, String, u64)> = std::fs::read_to_string(&counted)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            let total: u64 = counts.iter().map(|(_, _, count)| count).sum();
            Ok((total >= u64::from(before)).then_some(()))
        },
    )?;
    gateway.stop()?;
    drop(api_east);
    gateway.start(&mesh)?;
    api_east = api(&mesh, "east", "api-east-0")?;
    wait_policies(api_east.sidecar.addr("admin")?, "Quota", 1.0)?;
    // A fresh sidecar admits until the answer to its first report (100 ms) tells it the
    // window's total: a few requests at 20 a second, as docs/policy-quota.md bounds it.
    let mut after = 0;
    wait_for(Duration::from_secs(10), "shop/api served again", || {
        Ok(match get(proxy, API, "/", &[])?.status {
            200 => {
                after += 1;
                Some(())
            }
            429 => Some(()),
            _ => None,
        })
    })?;
    after += spend(20)?;
    println!("quota of {LIMIT}: {before} admitted before the restart, {after} after");
    ensure!(
        after <= 5,
        "{after} more admitted after the restart: the window's count was lost"
    );
    Ok(())
}

/// An issuer for the test: an EC key, its JWKS, and tokens it signs.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    jwks: String,
}

impl Issuer {
    fn new() -> Result<Self> {
        Self::with_key_id("k1")
    }

    fn with_key_id(kid: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::generate()?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)?;
        jwk.common.key_id = Some(kid.into());
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        Ok(Self {
            key,
            kid: kid.into(),
            jwks,
        })
    }

    fn token(&self, subject: &str, groups: &[&str], valid_for: i64) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "iss": "https://id.example",
            "sub": subject,
            "aud": "shop-api",
            "exp": now + valid_for,
            "groups": groups,
        });
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

#[test]
fn a_jwt_is_checked_at_the_inbound_sidecar_and_its_claims_authorize() -> Result<()> {
    let issuer = Issuer::new()?;
    let forger = Issuer::new()?;
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api = api(&mesh, "east", "api-east-0")?;
    let web = client(&mesh, "west", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    // Applied in west, enforced in east: a token of the issuer, and for /admin the admin group.
    // The issuer's keys are in a file beside the policy's, read by `strait apply`.
    mesh.file("keys.json", &issuer.jwks)?;
    mesh.apply(
        "west",
        "jwt.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: api-jwt, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  jwtRules:
    - issuer: https://id.example
      audiences: [shop-api]
      jwksFile: keys.json
---
apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-users, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{requestPrincipals: ['https://id.example/*']}]
      to: [{paths: [/orders/*]}]
    - from: [{requestPrincipals: ['*'], claims: {groups: [admin]}}]
",
    )
    .success()?;
    wait_status(proxy, API, 403, Duration::from_secs(5))?;
    // The cluster holds the keys themselves, not the name of a file it cannot read.
    let listed = mesh
        .ctl("east", &["get", "policies", "-o", "json"])
        .success()?;
    ensure!(
        listed.contains("\"jwks\"") && !listed.contains("jwksFile"),
        "{listed}"
    );
    let bearer = |token: &str| format!("Bearer {token}");
    let alice = issuer.token("alice", &["staff"], 300)?;
    let root = issuer.token("root", &["admin"], 300)?;
    let cases = [
        ("no token", "/orders/1", None, 403),
        ("alice's orders", "/orders/1", Some(bearer(&alice)), 200),
        ("alice is no admin", "/admin", Some(bearer(&alice)), 403),
        ("an admin", "/admin", Some(bearer(&root)), 200),
        (
            "a forged token",
            "/orders/1",
            Some(bearer(&forger.token("alice", &["admin"], 300)?)),
            401,
        ),
        (
            "an expired token",
            "/orders/1",
            Some(bearer(&issuer.token("alice", &["staff"], -600)?)),
            401,
        ),
        (
            "not a token",
            "/orders/1",
            Some("Bearer nonsense".into()),
            401,
        ),
    ];
    for (what, path, authorization, want) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let answer = get(proxy, API, path, &headers)?;
        ensure!(
            answer.status == want,
            "{what}: {} (want {want}): {}",
            answer.status,
            answer.body
        );
        if want == 401 {
            ensure!(answer.header("www-authenticate").is_some(), "{what}");
        }
    }
    Ok(())
}

/// `healthy: true` admits a caller only while the mesh knows it as ready: its sidecar says so
/// with every request and connection, from what it registered with its gateway. When the
/// caller's app stops answering its probe, its calls are refused (HTTP and TCP); once the app
/// is back, they are admitted again.
#[test]
fn a_caller_is_admitted_only_while_it_is_ready() -> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let ports = [("http", 8080, "http"), ("tcp", 5432, "tcp")];
    let _api = endpoint(&mesh, "east", "api", "api-east-0", &ports)?;
    // shop/web in west: a caller that is itself a service, with an app the mesh probes.
    let mut web_app = mesh.app("http", "west", "shop/web", "web-west-0")?;
    let web_address = web_app.addr("address")?;
    let web = mesh.sidecar(
        "west",
        "shop",
        "web",
        "web-west-0",
        &[
            "--service".into(),
            "web".into(),
            "--port".into(),
            format!("8080/http={web_address}"),
            "--proxy-addr".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            "api.shop.svc.clusterset.local:5432=127.0.0.1:0".into(),
        ],
    )?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    mesh.apply(
        "east",
        "ready-only.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ready-callers, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{namespaces: [shop], healthy: true}]
",
    )
    .success()?;
    // The policy is in force (the gateway's own view shows it) and the ready caller passes;
    // a header the app writes cannot claim readiness for it either way.
    wait_for(Duration::from_secs(10), "the policy in west", || {
        Ok((!policies(&mesh, "west")?.is_empty()).then_some(()))
    })?;
    let answer = get(proxy, API, "/", &[("strait-caller-ready", "false")])?;
    ensure!(answer.status == 200, "a ready caller: {}", answer.status);
    ensure!(tcp_echoes(web.upstream(0)?), "TCP from a ready caller");

    // The app stops: its sidecar registers it as not ready, and says so.
    web_app.kill()?;
    let took = wait_status(proxy, API, 403, Duration::from_secs(15))?;
    println!("an unready caller refused {took:?} after its app stopped");
    let answer = get(proxy, API, "/", &[("strait-caller-ready", "true")])?;
    ensure!(
        answer.status == 403,
        "an unready caller forged readiness: {}",
        answer.status
    );
    ensure!(
        answer.body.contains("shop/ready-callers") || answer.body.contains("no allow policy"),
        "{}",
        answer.body
    );
    ensure!(!tcp_echoes(web.upstream(0)?), "TCP from an unready caller");

    // Back on its address, the app is probed ready again and the caller admitted.
    let _web_app = mesh.app_with(
        "http",
        "west",
        "shop/web",
        "web-west-0",
        &["--listen", &web_address.to_string()],
    )?;
    let took = wait_status(proxy, API, 200, Duration::from_secs(15))?;
    println!("the caller admitted again {took:?} after its app came back");
    ensure!(tcp_echoes(web.upstream(0)?), "TCP once ready again");
    Ok(())
}

/// An issuer's key server for the test: answers every request with the status and JSON it is
/// set to (HTTP/1.1, one request per connection), and counts the requests.
struct KeyServer {
    address: SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl KeyServer {
    fn start(jwks: &str) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let answer = std::sync::Arc::new(std::sync::Mutex::new((200, jwks.to_owned())));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shared_answer, counter) = (answer.clone(), served.clone());
        // Lives as long as the test process; each connection is served and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                    head.push(byte[0]);
                }
                // A readiness probe connects and closes without a request: not counted.
                if !head.ends_with(b"\r\n\r\n") {
                    continue;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = shared_answer
                    .lock()
                    .map(|a| a.clone())
                    .unwrap_or((500, String::new()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Self {
            address,
            answer,
            served,
        })
    }

    fn set(&self, status: u16, body: &str) {
        if let Ok(mut answer) = self.answer.lock() {
            *answer = (status, body.to_owned());
        }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Keys fetched from a URL served inside the mesh (`jwksUri`): the issuer's key server runs in
/// west behind its sidecar; api's sidecar in east fetches it through the gateways. A rotated key
/// is fetched again when a token names it; a key server that fails leaves the last keys in use.
#[test]
fn keys_are_fetched_from_a_mesh_service_and_follow_a_rotation() -> Result<()> {
    let (first, second) = (Issuer::with_key_id("k1")?, Issuer::with_key_id("k2")?);
    let keys = KeyServer::start(&first.jwks)?;
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let api_east = api(&mesh, "east", "api-east-0")?;
    let _key_sidecar = mesh.sidecar(
        "west",
        "auth",
        "keys",
        "keys-west-0",
        &[
            "--service".into(),
            "keys".into(),
            "--export".into(),
            "--port".into(),
            format!("8080/http={}", keys.address),
        ],
    )?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_route(proxy, API, "east")?;
    wait_for(Duration::from_secs(20), "keys served from west", || {
        Ok((mesh.served_from("east", "auth/keys")? == ["west"]).then_some(()))
    })?;
    mesh.apply(
        "east",
        "jwks-uri.yaml",
        "apiVersion: policy.strait.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: api-jwt, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  jwtRules:
    - issuer: https://id.example
      audiences: [shop-api]
      jwksUri: http://keys.auth.svc.clusterset.local:8080/jwks.json
---
apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-users, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: allow
  rules:
    - from: [{requestPrincipals: ['https://id.example/*']}]
",
    )
    .success()?;
    wait_status(proxy, API, 403, Duration::from_secs(5))?;
    let call = |issuer: &Issuer| -> Result<Answer> {
        let token = format!("Bearer {}", issuer.token("alice", &[], 300)?);
        get(proxy, API, "/", &[("Authorization", &token)])
    };
    let answer = call(&first)?;
    ensure!(
        answer.status == 200,
        "the first key: {} {}",
        answer.status,
        answer.body
    );
    ensure!(keys.served() >= 1, "the key server was never asked");

    // The issuer rotates to k2: the first token naming it makes the sidecar fetch again (at
    // most every 10 s), and k1 is no longer accepted.
    keys.set(200, &second.jwks);
    let started = Instant::now();
    wait_for(Duration::from_secs(20), "the rotated key accepted", || {
        Ok((call(&second)?.status == 200).then_some(()))
    })?;
    println!(
        "rotated key accepted {:?} after the rotation",
        started.elapsed()
    );
    let answer = call(&first)?;
    ensure!(
        answer.status == 401,
        "the retired key: {} {}",
        answer.status,
        answer.body
    );

    // The key server fails: the sidecar keeps the keys it has (fail static) and counts the
    // failed fetch, which a token naming an unknown key brings about.
    keys.set(503, "unavailable");
    let unknown = Issuer::with_key_id("k3")?;
    let before = keys.served();
    wait_for(
        Duration::from_secs(20),
        "a fetch of the failing key server",
        || {
            let _ = call(&unknown)?;
            Ok((keys.served() > before).then_some(()))
        },
    )?;
    let answer = call(&second)?;
    ensure!(
        answer.status == 200,
        "the kept key: {} {}",
        answer.status,
        answer.body
    );
    let text = http_get_host(api_east.sidecar.addr("admin")?, "localhost", "/metrics")?.1;
    ensure!(
        metric(&text, "strait_jwks_fetches_total", &["result=\"error\""]) >= Some(1.0),
        "no failed fetch counted: {}",
        text.lines()
            .filter(|l| l.contains("jwks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

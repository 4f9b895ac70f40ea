//! `strait demo`: a whole mesh on this machine with nothing installed: a trust root, clusters
//! `east` and `west` each with a gateway, sample apps behind sidecars (`shop/api` in both
//! clusters; `shop/orders` (gRPC) and `shop/ledger-db` (TCP, not exported) in west only; a
//! client sidecar `shop/web` in each), a link between them and live traffic across it. It adds
//! contexts `east` and `west` to the contexts file so every command works against it.

pub mod apps;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::json;
use strait_federation::catalog::{Port, Protocol};
use strait_federation::identity::{AccountName, ClusterName, ServiceName, TrustDomain};
use strait_federation::proto::operator::{
    ApplyRequest, CreateLinkRequest, CreateWorkloadTokenRequest,
};
use strait_gateway::config::GatewayConfig;
use strait_gateway::init::{InitOptions, TrustDir, init_gateway};
use strait_sidecar::config::{
    AppPort, BOOTSTRAP_KIND, Bootstrap, ServiceConfig, SidecarConfig, Upstream,
};
use tokio_util::sync::CancellationToken;

use self::apps::{AppIdentity, AppKind};
use crate::context;
use crate::output::{self, Format};

/// Options of `strait demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 20s); without it, run until Ctrl-C.
    #[arg(long, value_parser = strait_federation::duration::parse_duration)]
    duration: Option<Duration>,
    /// `table` prints for people; `json` prints a ready event first and a report at the end.
    #[arg(short, long, value_enum, default_value = "table")]
    output: DemoOutput,
    /// Keep the mesh's files in this folder instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What the demo prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoOutput {
    /// Tables for people, with a live golden-metrics table.
    Table,
    /// A ready event line first, one JSON report at the end.
    Json,
}

const CLUSTERS: [&str; 2] = ["east", "west"];

fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// A port free on both UDP and TCP, for a DNS server.
fn free_dns_port() -> Result<u16> {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(anyhow::anyhow!("no port free on both UDP and TCP"))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let temporary;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("strait-demo-").tempdir()?;
            temporary.path().to_owned()
        }
    };
    let json_output = args.output == DemoOutput::Json;
    let say = |line: &str| {
        if !json_output {
            println!("{line}");
        }
    };
    let trust = dir.join("trust");
    TrustDir::create(&trust, TrustDomain::new("demo.mesh")?)?;
    let stop = CancellationToken::new();
    let mut gateways = Vec::new();
    for name in CLUSTERS {
        let cluster = ClusterName::new(name)?;
        let made = init_gateway(InitOptions {
            cluster: cluster.clone(),
            trust_dir: trust.clone(),
            dir: dir.join(name),
            quic_addr: format!("127.0.0.1:{}", free_port(true)?).parse()?,
            api_addr: format!("127.0.0.1:{}", free_port(false)?).parse()?,
            admin_addr: format!("127.0.0.1:{}", free_port(false)?).parse()?,
            advertise_addr: None,
            relay_addr: None,
            dns_addr: Some(format!("127.0.0.1:{}", free_dns_port()?).parse()?),
            location: Default::default(),
            operator: AccountName::new("demo")?,
            kubeconfig: None,
        })?;
        context::add(context::Context {
            name: name.into(),
            cluster,
            trust_domain: made.config.trust_domain.clone(),
            api_addr: made.config.api_addr.to_string(),
            bundle: made.bundle.clone(),
            cert: made.operator_cert.clone(),
            key: made.operator_key.clone(),
        })?;
        let config: GatewayConfig = made.config;
        let stop = stop.clone();
        gateways.push((
            config.clone(),
            tokio::spawn(async move { strait_gateway::run(config, stop.cancelled_owned()).await }),
        ));
    }
    let result = drive(&args, &gateways, json_output, &say).await;
    stop.cancel();
    if args.dir.is_none() {
        // The demo's files go with its temporary folder: so do the contexts that point there.
        if let Err(e) = context::remove_under(&CLUSTERS, &dir) {
            eprintln!("cannot remove the demo's contexts: {e:#}");
        }
    }
    for (config, task) in gateways {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("gateway {}: {e}", config.cluster),
            Err(e) => eprintln!("gateway {}: {e}", config.cluster),
        }
    }
    result
}

async fn connect_retrying(name: &str) -> Result<context::Client> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match context::connect(Some(name)).await {
            Ok((_, client)) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("gateway {name} never came up")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A workload of the demo: a sample app (if any) behind its sidecar.
struct Workload {
    cluster: &'static str,
    sidecar: strait_sidecar::Sidecar,
}

/// What a demo workload is made of.
struct WorkloadSpec {
    cluster: &'static str,
    account: &'static str,
    /// The app and its service port: (kind, service name, port, protocol, exported).
    app: Option<(AppKind, &'static str, u16, Protocol, bool)>,
    proxy: bool,
    upstreams: Vec<String>,
}

/// Starts a sample app and its sidecar, certified by its cluster's gateway.
async fn start_workload(
    client: &mut context::Client,
    bundle_pem: &str,
    api_addr: &str,
    trust_domain: &TrustDomain,
    spec: WorkloadSpec,
    stop: &CancellationToken,
) -> Result<Workload> {
    let token = client
        .create_workload_token(CreateWorkloadTokenRequest {
            namespace: "shop".into(),
            service_account: spec.account.into(),
            ttl_seconds: 0,
        })
        .await
        .map_err(|e| {
            anyhow!(
                "a bootstrap token for shop/{}: {}",
                spec.account,
                e.message()
            )
        })?
        .into_inner();
    let bootstrap = Bootstrap {
        api_version: strait_federation::document::API_VERSION.into(),
        kind: BOOTSTRAP_KIND.into(),
        gateway: api_addr.to_owned(),
        cluster: ClusterName::new(spec.cluster)?,
        trust_domain: trust_domain.clone(),
        identity: token.identity,
        bundle: bundle_pem.to_owned(),
        token: token.token,
    };
    let mut config = SidecarConfig::new(bootstrap);
    if let Some((kind, name, port, protocol, export)) = spec.app {
        let pod = format!("{name}-{}-0", spec.cluster);
        let target = apps::start(
            kind,
            "127.0.0.1:0".parse()?,
            AppIdentity {
                service: format!("shop/{name}"),
                cluster: spec.cluster.into(),
                pod: pod.clone(),
                broken: None,
            },
            stop.clone(),
        )
        .await?;
        config.service = Some(ServiceConfig {
            name: ServiceName::new(name)?,
            ports: vec![AppPort {
                port: Port {
                    name: protocol.as_str().into(),
                    port,
                    protocol,
                },
                target,
            }],
            export,
            hostname: Some(pod),
        });
    }
    if spec.proxy {
        config.proxy_addr = Some("127.0.0.1:0".parse()?);
    }
    config.admin_addr = Some("127.0.0.1:0".parse()?);
    // As a Deployment per account would be named in Kubernetes: `strait stat deploy` shows it.
    config.workload = Some(format!("deploy/{}", spec.account));
    config.upstreams = spec
        .upstreams
        .iter()
        .map(|u| Upstream::parse(u).map_err(|e| anyhow!(e)))
        .collect::<Result<_>>()?;
    let sidecar = strait_sidecar::start(config).await?;
    Ok(Workload {
        cluster: spec.cluster,
        sidecar,
    })
}

/// The demo's workloads, per cluster.
fn workload_specs(cluster: &'static str) -> Vec<WorkloadSpec> {
    let mut specs = vec![
        WorkloadSpec {
            cluster,
            account: "api",
            app: Some((AppKind::Http, "api", 8080, Protocol::Http, true)),
            proxy: false,
            upstreams: Vec::new(),
        },
        WorkloadSpec {
            cluster,
            account: "web",
            app: None,
            proxy: true,
            upstreams: if cluster == "west" {
                vec!["ledger-db.shop:5432=127.0.0.1:0".into()]
            } else {
                Vec::new()
            },
        },
    ];
    if cluster == "west" {
        specs.push(WorkloadSpec {
            cluster,
            account: "orders",
            app: Some((AppKind::Grpc, "orders", 9090, Protocol::Grpc, true)),
            proxy: false,
            upstreams: Vec::new(),
        });
        specs.push(WorkloadSpec {
            cluster,
            account: "ledger",
            app: Some((AppKind::Tcp, "ledger-db", 5432, Protocol::Tcp, false)),
            proxy: false,
            upstreams: Vec::new(),
        });
    }
    specs
}

/// The routes of the traffic generator: local and cross-cluster calls of `shop/api` from
/// both clusters, and gRPC calls of `shop/orders` (served in west only) from both.
fn routes(
    proxies: &BTreeMap<&'static str, SocketAddr>,
    ledger: Option<SocketAddr>,
) -> Vec<traffic::Route> {
    let mut routes = Vec::new();
    for (source, other) in [("east", "west"), ("west", "east")] {
        let proxy = proxies[source];
        routes.push(traffic::Route {
            source_cluster: source.into(),
            expected_cluster: source.into(),
            service: "shop/api".into(),
            proxy,
            call: traffic::Call::Http {
                host: "api.shop.svc.cluster.local".into(),
            },
        });
        routes.push(traffic::Route {
            source_cluster: source.into(),
            expected_cluster: other.into(),
            service: "shop/api".into(),
            proxy,
            call: traffic::Call::Http {
                host: format!("{other}.api.shop.svc.clusterset.local"),
            },
        });
        routes.push(traffic::Route {
            source_cluster: source.into(),
            expected_cluster: "west".into(),
            service: "shop/orders".into(),
            proxy,
            call: traffic::Call::Grpc {
                authority: "orders.shop.svc.clusterset.local:9090".into(),
            },
        });
    }
    // Opaque TCP through west's client sidecar's listener for shop/ledger-db.
    if let Some(upstream) = ledger {
        routes.push(traffic::Route {
            source_cluster: "west".into(),
            expected_cluster: "west".into(),
            service: "shop/ledger-db".into(),
            proxy: upstream,
            call: traffic::Call::Tcp,
        });
    }
    routes
}

/// Waits until a request through `proxy` for `host` is answered by `cluster`.
async fn wait_for_route(proxy: SocketAddr, host: &str, cluster: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    loop {
        let request = hyper::Request::get(format!("http://{proxy}/"))
            .header(hyper::header::HOST, host)
            .body(http_body_util::Empty::new())?;
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(2), client.request(request)).await
            && response.status().is_success()
        {
            use http_body_util::BodyExt;
            let body = response.into_body().collect().await?.to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            if value["cluster"] == cluster {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{host} through the {cluster} route did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(
    args: &DemoArgs,
    gateways: &[(
        GatewayConfig,
        tokio::task::JoinHandle<Result<(), strait_gateway::GatewayError>>,
    )],
    json_output: bool,
    say: &dyn Fn(&str),
) -> Result<()> {
    let mut east = connect_retrying("east").await?;
    let mut west = connect_retrying("west").await?;
    let link = west
        .create_link(CreateLinkRequest::default())
        .await
        .map_err(|e| anyhow!("{}", e.message()))?
        .into_inner()
        .document;
    east.apply(ApplyRequest {
        source: "demo/west-link.yaml".into(),
        documents: link,
    })
    .await
    .map_err(|e| anyhow!("linking east to west: {}", e.message()))?;

    let stop = CancellationToken::new();
    let mut workloads = Vec::new();
    let started = async {
        for ((config, _), client) in gateways.iter().zip([&mut east, &mut west]) {
            let cluster: &'static str = if config.cluster.as_str() == "east" {
                "east"
            } else {
                "west"
            };
            let bundle = std::fs::read_to_string(config.file("bundle.pem"))?;
            for spec in workload_specs(cluster) {
                workloads.push(
                    start_workload(
                        client,
                        &bundle,
                        &config.api_addr.to_string(),
                        &config.trust_domain,
                        spec,
                        &stop,
                    )
                    .await?,
                );
            }
        }
        anyhow::Ok(())
    };
    let result = match started.await {
        Ok(()) => {
            run_traffic(
                args,
                gateways,
                &mut east,
                &mut west,
                &workloads,
                &stop,
                json_output,
                say,
            )
            .await
        }
        Err(e) => Err(e),
    };
    stop.cancel();
    for workload in workloads {
        workload.sidecar.stop().await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_traffic(
    args: &DemoArgs,
    gateways: &[(
        GatewayConfig,
        tokio::task::JoinHandle<Result<(), strait_gateway::GatewayError>>,
    )],
    east: &mut context::Client,
    west: &mut context::Client,
    workloads: &[Workload],
    stop: &CancellationToken,
    json_output: bool,
    say: &dyn Fn(&str),
) -> Result<()> {
    let proxies: BTreeMap<&'static str, SocketAddr> = workloads
        .iter()
        .filter_map(|w| Some((w.cluster, w.sidecar.proxy_addr?)))
        .collect();
    let dns: BTreeMap<String, SocketAddr> = gateways
        .iter()
        .filter_map(|(config, _)| Some((config.cluster.to_string(), config.dns.as_ref()?.addr)))
        .collect();
    for (source, other) in [("east", "west"), ("west", "east")] {
        wait_for_route(proxies[source], "api.shop.svc.cluster.local", source).await?;
        wait_for_route(
            proxies[source],
            &format!("{other}.api.shop.svc.clusterset.local"),
            other,
        )
        .await?;
    }
    let ledger = workloads
        .iter()
        .filter(|w| w.cluster == "west")
        .find_map(|w| w.sidecar.upstream_addrs.first().copied());
    let stats = traffic::start(routes(&proxies, ledger), stop.clone());
    let dashboards: BTreeMap<String, String> = gateways
        .iter()
        .map(|(config, _)| {
            (
                config.cluster.to_string(),
                strait_gateway::health::dashboard_url(config.admin_addr),
            )
        })
        .collect();
    // Every admin port with metrics: the gateways' and the sidecars'.
    let metrics_targets: Vec<String> = gateways
        .iter()
        .map(|(config, _)| config.admin_addr.to_string())
        .chain(
            workloads
                .iter()
                .filter_map(|w| Some(w.sidecar.admin_addr?.to_string())),
        )
        .collect();

    if json_output {
        println!(
            "{}",
            json!({
                "event": "ready",
                "clusters": CLUSTERS,
                "proxies": proxies.iter().map(|(c, p)| (c.to_string(), json!(p.to_string()))).collect::<serde_json::Map<_, _>>(),
                "dns": dns.iter().map(|(c, a)| (c.to_string(), json!(a.to_string()))).collect::<serde_json::Map<_, _>>(),
                "dashboards": dashboards,
                "metrics_targets": metrics_targets,
            })
        );
    } else {
        say("strait demo: clusters east and west are up, linked over QUIC, with traffic.\n");
        say(&format!(
            "Dashboard: {}    (west's: {})\n",
            dashboards["east"], dashboards["west"]
        ));
        let services = context::list_services(east).await?;
        say("The federated catalog, as east sees it:");
        say(&output::services(&services, Format::Table)?);
        let services = context::list_services(west).await?;
        say("As west sees it (shop/ledger-db is not exported: it stays in west):");
        say(&output::services(&services, Format::Table)?);
        say(&format!(
            "Try this next (contexts east and west were added to {}):",
            context::path()?.display()
        ));
        say(&format!(
            "  curl -x http://{} http://api.shop.svc.clusterset.local/          # east's client sidecar",
            proxies["east"]
        ));
        say(&format!(
            "  curl -x http://{} http://west.api.shop.svc.clusterset.local/     # pinned to west",
            proxies["east"]
        ));
        if let Some(ledger) = workloads
            .iter()
            .find(|w| w.cluster == "west" && !w.sidecar.upstream_addrs.is_empty())
        {
            say(&format!(
                "  echo hello | nc -q1 {} {}      # TCP to shop/ledger-db through west's sidecar",
                ledger.sidecar.upstream_addrs[0].ip(),
                ledger.sidecar.upstream_addrs[0].port()
            ));
        }
        if let Some(addr) = dns.get("east") {
            say(&format!(
                "  dig @{} -p {} api.shop.svc.clusterset.local +short     # east's gateway DNS: a virtual IP",
                addr.ip(),
                addr.port()
            ));
            say(&format!(
                "  dig @{} -p {} _http._tcp.west.api.shop.svc.clusterset.local SRV +short",
                addr.ip(),
                addr.port()
            ));
        }
        say("  strait --context east get services");
        say("  strait --context west get links -o json");
        say("  strait --context east check                          # trust, links, policies, DNS");
        say(
            "  strait --context east stat services --all-clusters   # golden metrics of every cluster",
        );
        say("  strait --context east top                            # the busiest routes, live");
        for (config, _) in gateways {
            say(&format!(
                "  curl http://{}/metrics    # {}'s gateway: flows relayed",
                config.admin_addr, config.cluster
            ));
        }
        for workload in workloads.iter().filter(|w| w.sidecar.proxy_addr.is_some()) {
            if let Some(admin) = workload.sidecar.admin_addr {
                say(&format!(
                    "  curl http://{admin}/metrics    # {}'s client sidecar: golden metrics",
                    workload.cluster
                ));
            }
        }
        say(match args.duration {
            Some(_) => "\nRunning for the requested duration; golden metrics every 5 s.",
            None => "\nGolden metrics every 5 s. Press Ctrl-C to stop.",
        });
    }

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut table_tick = tokio::time::interval(Duration::from_secs(5));
    table_tick.tick().await;
    let interrupted = crate::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = table_tick.tick() => {
                if !json_output {
                    say(&traffic::table(&stats.rows()));
                }
            }
            () = until_deadline => break,
            () = &mut interrupted => break,
        }
    }
    stop.cancel();

    let rows = stats.rows();
    if json_output {
        // A root rotation during the demo renews the context's certificates: connect again.
        let mut fresh = context::connect(Some("east"))
            .await
            .map(|(_, client)| client);
        let east = match fresh.as_mut() {
            Ok(client) => client,
            Err(_) => east,
        };
        let links = context::list_links(east).await?;
        let services = context::list_services(east).await?;
        let report = json!({
            "clusters": CLUSTERS,
            "links": links.iter().map(|l| json!({"from": "east", "to": l.cluster, "state": l.state})).collect::<Vec<_>>(),
            "services": services.iter().map(|s| json!({"service": format!("{}/{}", s.namespace, s.name), "clusters": s.clusters})).collect::<Vec<_>>(),
            "proxies": proxies.iter().map(|(c, p)| (c.to_string(), json!(p.to_string()))).collect::<serde_json::Map<_, _>>(),
            "traffic": rows,
        });
        println!("{report}");
    } else {
        say("Final golden metrics:");
        say(&traffic::table(&rows));
    }
    Ok(())
}

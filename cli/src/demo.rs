//! `strait demo`: a whole mesh on this machine with nothing installed: a trust root, clusters
//! `east` and `west` each with a gateway, sample services, and a link between them. It adds
//! contexts `east` and `west` to the contexts file so every command works against it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::json;
use strait_federation::identity::{AccountName, ClusterName, TrustDomain};
use strait_federation::proto::operator::{ApplyRequest, CreateLinkRequest};
use strait_gateway::config::GatewayConfig;
use strait_gateway::init::{InitOptions, TrustDir, init_gateway};
use tokio_util::sync::CancellationToken;

use crate::context;
use crate::output::{self, Format};

/// Options of `strait demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 20s); without it, run until Ctrl-C.
    #[arg(long, value_parser = crate::parse_duration)]
    duration: Option<Duration>,
    /// `table` prints for people; `json` prints a ready event first and a report at the end.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    /// Keep the mesh's files in this folder instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const CLUSTERS: [&str; 2] = ["east", "west"];

fn services(cluster: &str) -> String {
    let api_port = if cluster == "east" { 18081 } else { 18082 };
    let mut text = format!(
        "kind: Service
metadata: {{name: api, namespace: shop}}
spec:
  export: true
  ports: [{{name: http, port: 8080, protocol: http}}]
  endpoints: [{{address: 127.0.0.1:{api_port}}}]
"
    );
    if cluster == "west" {
        text.push_str(
            "---
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  export: true
  ports: [{name: grpc, port: 9090, protocol: grpc}]
  endpoints: [{address: 127.0.0.1:18090}]
---
kind: Service
metadata: {name: ledger-db, namespace: shop}
spec:
  export: false
  ports: [{name: tcp, port: 5432, protocol: tcp}]
  endpoints: [{address: 127.0.0.1:18432}]
",
        );
    }
    text
}

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
    let json_output = args.output == Format::Json;
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
            operator: AccountName::new("demo")?,
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
    for (name, client) in [("east", &mut east), ("west", &mut west)] {
        client
            .apply(ApplyRequest {
                source: format!("demo/{name}-services.yaml"),
                documents: services(name),
            })
            .await
            .map_err(|e| anyhow!("applying the sample services of {name}: {}", e.message()))?;
    }
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

    // Wait for both catalogs to hold the other cluster's exported services.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let east_view = context::list_services(&mut east).await?;
        let west_view = context::list_services(&mut west).await?;
        let federated = east_view.iter().any(|s| s.name == "orders")
            && west_view
                .iter()
                .any(|s| s.name == "api" && s.clusters.len() == 2);
        if federated {
            break;
        }
        if Instant::now() > deadline {
            bail!("the two gateways did not federate their catalogs within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if json_output {
        println!(
            "{}",
            json!({"event": "ready", "clusters": CLUSTERS, "proxies": {}})
        );
    } else {
        say("strait demo: clusters east and west are up and linked over QUIC.\n");
        let services = context::list_services(&mut east).await?;
        say("The federated catalog, as east sees it:");
        say(&output::services(&services, Format::Table)?);
        let links = context::list_links(&mut east).await?;
        let services = context::list_services(&mut west).await?;
        say(
            "The same catalog, as west sees it (shop/ledger-db is not exported: it stays in west):",
        );
        say(&output::services(&services, Format::Table)?);
        say("east's links:");
        say(&output::links(&links, Format::Table)?);
        say(&format!(
            "Try this next (contexts east and west were added to {}):",
            context::path()?.display()
        ));
        say("  strait --context east get services");
        say("  strait --context west get links -o json");
        for (config, _) in gateways {
            say(&format!(
                "  curl http://{}/metrics    # {}'s gateway",
                config.admin_addr, config.cluster
            ));
        }
        say(match args.duration {
            Some(_) => "\nRunning for the requested duration.",
            None => "\nPress Ctrl-C to stop.",
        });
    }

    match args.duration {
        Some(duration) => {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = crate::shutdown_signal() => {}
            }
        }
        None => crate::shutdown_signal().await,
    }

    if json_output {
        let links = context::list_links(&mut east).await?;
        let services = context::list_services(&mut east).await?;
        let report = json!({
            "clusters": CLUSTERS,
            "links": links.iter().map(|l| json!({"from": "east", "to": l.cluster, "state": l.state})).collect::<Vec<_>>(),
            "services": services.iter().map(|s| json!({"service": format!("{}/{}", s.namespace, s.name), "clusters": s.clusters})).collect::<Vec<_>>(),
            "traffic": [],
        });
        println!("{report}");
    }
    Ok(())
}

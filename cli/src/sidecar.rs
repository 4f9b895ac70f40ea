//! `strait sidecar token` (a bootstrap document for a new sidecar), `strait sidecar run` and
//! `strait sidecar init` (the iptables rules that send a pod's traffic through its sidecar).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use strait_federation::document::API_VERSION;
use strait_federation::identity::ServiceName;
use strait_federation::proto::operator::CreateWorkloadTokenRequest;
use strait_sidecar::config::{
    AppPort, BOOTSTRAP_KIND, Bootstrap, ServiceConfig, SidecarConfig, TokenKind, Upstream,
};

use crate::context;

#[derive(Subcommand)]
pub enum SidecarCommand {
    /// Print a bootstrap document with which a new sidecar joins this cluster as one workload
    /// identity (the gateway's address, the trust bundle and a signed token; no private key).
    Token(TokenArgs),
    /// Run a sidecar until SIGTERM or SIGINT. Prints one JSON line with its bound addresses
    /// once it is certified and listening.
    Run(Box<RunArgs>),
    /// Redirect a pod's TCP to its sidecar with iptables (the injected init container runs
    /// it; needs NET_ADMIN and NET_RAW): the app's outbound connections to the transparent
    /// port, connections to the app's ports to the inbound port; the sidecar's own uid passes.
    /// Running it again leaves the rules as once.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// The uid the sidecar runs as: its traffic is never redirected.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// The sidecar's transparent port (`--transparent-addr`).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The sidecar's inbound port (`--inbound-addr`).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Which inbound ports go to the sidecar: `all`, `none`, or a comma-separated list (the
    /// pod's container ports).
    #[arg(long, default_value = "all")]
    inbound_ports: String,
    /// Inbound ports that reach the app directly (comma-separated; the sidecar's admin port
    /// among them).
    #[arg(long, value_delimiter = ',', default_value = "15020")]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports reached directly (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Outbound destinations reached directly (comma-separated CIDR ranges, IPv4 or IPv6).
    #[arg(long, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<strait_sidecar::init::Cidr>,
    /// Set the IPv6 rules too: `auto` (when the pod has an IPv6 address), `on` or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    ipv6: String,
    /// Print the rules (`iptables-restore` input for a fresh pod) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    /// The workload's namespace.
    #[arg(short, long)]
    namespace: String,
    /// The workload's service account.
    #[arg(long = "service-account", visible_alias = "sa")]
    service_account: String,
    /// How long the token may be used to get a first certificate. Short by default: a sidecar
    /// needs it only to start; give a longer one (e.g. 720h) to a sidecar that restarts with the
    /// same bootstrap document, and revoke it when its workload goes (`strait revoke token`).
    #[arg(long, default_value = "24h", value_parser = strait_federation::duration::parse_duration)]
    ttl: Duration,
    /// The gateway address sidecars dial, when not the context's API address.
    #[arg(long)]
    gateway: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// The bootstrap document from `strait sidecar token`. In Kubernetes mode, instead:
    /// --gateway, --bundle and --token-file.
    #[arg(
        long,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    bootstrap: Option<PathBuf>,
    /// Kubernetes mode: the gateway's API address (host:port); its cluster is learned from its
    /// certificate.
    #[arg(long, requires = "token_file")]
    gateway: Option<String>,
    /// Kubernetes mode: the trust bundle (PEM), from `strait trust init`.
    #[arg(long, requires = "token_file")]
    bundle: Option<PathBuf>,
    /// Kubernetes mode: the trust bundle's PEM itself, instead of --bundle (an injected
    /// sidecar finds it in its environment).
    #[arg(
        long,
        env = "STRAIT_TRUST_BUNDLE",
        hide_env_values = true,
        conflicts_with = "bundle"
    )]
    bundle_pem: Option<String>,
    /// Kubernetes mode: the pod's projected service-account token (audience `strait`); the
    /// gateway checks it with the API server and certifies the pod's service account.
    #[arg(long, requires = "gateway")]
    token_file: Option<PathBuf>,
    /// The service this sidecar fronts; its endpoint is registered with the gateway.
    #[arg(long)]
    service: Option<String>,
    /// A port of the service: `PORT/PROTOCOL=APP_ADDRESS` (e.g. `8080/http=127.0.0.1:9000`);
    /// protocols http, http2, grpc, tcp. May be repeated.
    #[arg(long = "port", requires = "service")]
    ports: Vec<String>,
    /// Kubernetes mode: a port of the app that other sidecars call (their connections reach
    /// the inbound port through the pod's iptables rules): `PORT/PROTOCOL`, the app on
    /// 127.0.0.1:PORT, or `PORT/PROTOCOL=APP_ADDRESS`; protocols http, http2, grpc, tcp. The
    /// endpoint is the pod's, from the cluster's EndpointSlices: nothing is registered. May be
    /// repeated.
    #[arg(long = "app-port", requires = "token_file", conflicts_with = "service")]
    app_ports: Vec<String>,
    /// Kubernetes mode: an app's probe the admin server runs for the kubelet at
    /// `/app-health/CONTAINER/KIND`: `CONTAINER/KIND=http:PORT/PATH` or `CONTAINER/KIND=tcp:PORT`
    /// (the injector moves the pod's HTTP and TCP probes here). May be repeated.
    #[arg(long = "app-probe", requires = "admin_addr")]
    app_probes: Vec<String>,
    /// Export the service to linked clusters.
    #[arg(long, requires = "service")]
    export: bool,
    /// This endpoint's pod or host name (for per-endpoint DNS names).
    #[arg(long, requires = "service")]
    hostname: Option<String>,
    /// Where other sidecars reach this one (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:0")]
    inbound_addr: SocketAddr,
    /// The address registered for this endpoint, when not the inbound address.
    #[arg(long)]
    advertise_addr: Option<SocketAddr>,
    /// The app's HTTP proxy port (set `http_proxy` to it, or send requests with a mesh Host).
    #[arg(long)]
    proxy_addr: Option<SocketAddr>,
    /// Health, readiness and Prometheus metrics.
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// A TCP listener for one mesh name: `NAME:PORT=LISTEN` (e.g.
    /// `db.shop:5432=127.0.0.1:15432`). May be repeated.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// Where iptables redirects the app's outbound connections (SO_ORIGINAL_DST).
    #[arg(long)]
    transparent_addr: Option<SocketAddr>,
    /// How long a request may wait for its response headers.
    #[arg(long, default_value = "15s", value_parser = strait_federation::duration::parse_duration)]
    request_timeout: Duration,
    /// How long connecting to an endpoint may take.
    #[arg(long, default_value = "3s", value_parser = strait_federation::duration::parse_duration)]
    connect_timeout: Duration,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Write one JSON line per HTTP request and TCP flow to standard output (the gateway can
    /// also switch access logs on for a whole namespace).
    #[arg(long, env = "STRAIT_ACCESS_LOG")]
    access_log: bool,
    /// The services the workload calls: `NAMESPACE` (its services) or `NAMESPACE/SERVICE`; the
    /// gateway then sends only those, and their changes. Names outside them resolve to
    /// nothing. Unset: every service of the mesh. May be repeated or comma-separated.
    #[arg(long = "watch", env = "STRAIT_WATCH", value_delimiter = ',')]
    watch: Vec<String>,
    /// The workload this sidecar belongs to (e.g. deploy/web), for `strait stat deploy`.
    #[arg(long, env = "STRAIT_WORKLOAD")]
    workload: Option<String>,
    /// Threads that carry the sidecar's traffic. 1 (the default) serves every connection on
    /// one thread, which costs the least CPU per request (no hand-offs between threads), as
    /// Linkerd's proxy does by default; more spread connections over that many threads, for a
    /// workload whose traffic needs more than one core of proxying.
    #[arg(long, env = "STRAIT_SIDECAR_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Connections open at once on the inbound port; one more is closed when accepted.
    #[arg(long, env = "STRAIT_MAX_INBOUND_CONNECTIONS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_inbound_connections: u32,
    /// Connections open at once from the app (proxy, transparent and upstream listeners
    /// together); one more is closed when accepted.
    #[arg(long, env = "STRAIT_MAX_OUTBOUND_CONNECTIONS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_outbound_connections: u32,
    /// Bytes of a request's target and headers (each header counted as HTTP/2 does: name,
    /// value and 32); a larger request gets 431 naming this flag.
    #[arg(long, env = "STRAIT_MAX_HEADER_BYTES", default_value_t = 64 << 10,
          value_parser = clap::value_parser!(u32).range(1024..), help_heading = "Limits")]
    max_header_bytes: u32,
    /// The largest request body kept in memory to retry or mirror; a larger one is sent once
    /// and not mirrored.
    #[arg(long, env = "STRAIT_MAX_REPLAY_BODY_BYTES", default_value_t = 64 << 10,
          value_parser = clap::value_parser!(u32).range(0..=(64 << 20)), help_heading = "Limits")]
    max_replay_body_bytes: u32,
    /// Mirror copies in flight at once; more are skipped.
    #[arg(long, env = "STRAIT_MAX_MIRRORS_IN_FLIGHT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=100_000), help_heading = "Limits")]
    max_mirrors_in_flight: u32,
    /// Connections open at once on the admin port; one more is closed when accepted.
    #[arg(long, env = "STRAIT_MAX_ADMIN_CONNECTIONS", default_value_t = 1_024,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_admin_connections: u32,
}

/// The threads a command's runtime gets, when the command says (`sidecar run --threads`).
pub fn threads(command: &SidecarCommand) -> Option<usize> {
    match command {
        SidecarCommand::Run(args) => Some(usize::from(args.threads)),
        SidecarCommand::Token(_) | SidecarCommand::Init(_) => None,
    }
}

/// Runs a `strait sidecar` command.
pub async fn run(context: Option<&str>, command: SidecarCommand) -> Result<()> {
    match command {
        SidecarCommand::Token(args) => token(context, args).await,
        SidecarCommand::Run(args) => run_sidecar(*args).await,
        SidecarCommand::Init(args) => init(&args),
    }
}

fn init(args: &InitArgs) -> Result<()> {
    use strait_sidecar::init::{self, Family, InboundPorts, Redirect};
    let inbound_ports = if args.inbound_ports == "all" {
        InboundPorts::All
    } else if args.inbound_ports == "none" {
        InboundPorts::Only(Vec::new())
    } else {
        InboundPorts::Only(
            args.inbound_ports
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .with_context(|| {
                            format!(
                                "--inbound-ports: {p:?} is not a port (1-65535), `all` or `none`"
                            )
                        })
                })
                .collect::<Result<_>>()?,
        )
    };
    let redirect = Redirect {
        proxy_uid: args.proxy_uid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        inbound_ports,
        skip_inbound_ports: args.skip_inbound_ports.clone(),
        skip_outbound_ports: args.skip_outbound_ports.clone(),
        skip_outbound_cidrs: args.skip_outbound_cidrs.clone(),
    };
    let ipv6 = match args.ipv6.as_str() {
        "on" => true,
        "off" => false,
        _ => init::has_ipv6(),
    };
    let families: &[Family] = if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for family in families {
        let label = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        if args.dry_run {
            print!(
                "# {label}-restore --noflush\n{}",
                init::restore_input(&redirect, *family, "")
            );
        } else {
            let applied = init::apply(&redirect, *family)?;
            let rules = applied.lines().filter(|l| l.starts_with("-A")).count();
            println!("{label}: {rules} rules set");
        }
    }
    Ok(())
}

async fn token(context: Option<&str>, args: TokenArgs) -> Result<()> {
    let (ctx, mut client) = context::connect(context).await?;
    let response = client
        .create_workload_token(CreateWorkloadTokenRequest {
            namespace: args.namespace,
            service_account: args.service_account,
            ttl_seconds: args.ttl.as_secs().max(1),
        })
        .await
        .map_err(crate::status)?
        .into_inner();
    let bootstrap = Bootstrap {
        api_version: API_VERSION.into(),
        kind: BOOTSTRAP_KIND.into(),
        gateway: args.gateway.unwrap_or(ctx.api_addr.clone()),
        cluster: ctx.cluster.clone(),
        trust_domain: ctx.trust_domain.clone(),
        identity: response.identity,
        bundle: std::fs::read_to_string(&ctx.bundle)
            .with_context(|| format!("reading {}", ctx.bundle.display()))?,
        token: response.token,
    };
    eprintln!(
        "bootstrap token {} for {} (revoke it with: strait revoke token {})",
        response.token_id, bootstrap.identity, response.token_id
    );
    print!("{}", serde_saphyr::to_string(&bootstrap)?);
    Ok(())
}

/// Where a Kubernetes-mode sidecar's trust bundle comes from.
enum Bundle<'a> {
    File(&'a std::path::Path),
    /// The PEM itself (`STRAIT_TRUST_BUNDLE`).
    Pem(&'a str),
}

/// A bootstrap made of `--gateway`, `--bundle` and `--token-file`: the trust domain from the
/// bundle's root, the cluster from the certificate of the gateway that answers.
async fn service_account_bootstrap(
    gateway: &str,
    bundle: Bundle<'_>,
    token_path: &std::path::Path,
) -> Result<Bootstrap> {
    let (pem, bundle_path) = match bundle {
        Bundle::File(path) => (strait_io::files::read_file(path)?, path.to_owned()),
        Bundle::Pem(pem) => (pem.to_owned(), PathBuf::from("$STRAIT_TRUST_BUNDLE")),
    };
    let bundle_path = bundle_path.as_path();
    let roots = strait_federation::pki::parse_certs(&pem, bundle_path)?;
    let trust_domain = roots
        .iter()
        .find_map(strait_federation::certificate::trust_domain_of)
        .with_context(|| format!("{}: no root names a trust domain", bundle_path.display()))?;
    let bundle =
        strait_federation::pki::TrustBundle::from_pem(trust_domain.clone(), &pem, bundle_path)?;
    let token = strait_io::files::read_file(token_path)?.trim().to_owned();
    if token.is_empty() {
        bail!("{}: the token file is empty", token_path.display());
    }
    let gateway_id = strait_io::api::gateway_identity(gateway, &bundle).await?;
    Ok(Bootstrap {
        api_version: API_VERSION.into(),
        kind: BOOTSTRAP_KIND.into(),
        gateway: gateway.to_owned(),
        cluster: gateway_id.cluster().clone(),
        trust_domain,
        identity: String::new(),
        bundle: pem,
        token,
    })
}

/// Builds a sidecar configuration from `strait sidecar run` flags.
async fn config(args: &RunArgs) -> Result<SidecarConfig> {
    let bundle = match (&args.bundle, &args.bundle_pem) {
        (Some(path), _) => Some(Bundle::File(path)),
        (None, Some(pem)) => Some(Bundle::Pem(pem)),
        (None, None) => None,
    };
    let mut config = match (&args.bootstrap, &args.gateway, bundle, &args.token_file) {
        (Some(bootstrap), ..) => SidecarConfig::new(Bootstrap::load(bootstrap)?),
        (None, Some(gateway), Some(bundle), Some(token)) => {
            let mut config =
                SidecarConfig::new(service_account_bootstrap(gateway, bundle, token).await?);
            config.token_kind = TokenKind::ServiceAccount;
            config
        }
        _ => bail!(
            "give --bootstrap, or --gateway, --token-file and the bundle (--bundle, or STRAIT_TRUST_BUNDLE)"
        ),
    };
    if let Some(name) = &args.service {
        let ports = args
            .ports
            .iter()
            .map(|p| AppPort::parse(p).map_err(|e| anyhow::anyhow!("--port {p}: {e}")))
            .collect::<Result<Vec<_>>>()?;
        if ports.is_empty() {
            bail!("--service {name} needs at least one --port");
        }
        config.service = Some(ServiceConfig {
            name: ServiceName::new(name.clone()).context("--service")?,
            ports,
            export: args.export,
            hostname: args.hostname.clone(),
        });
    }
    for probe in &args.app_probes {
        let parsed = probe.split_once('=').and_then(|(key, spec)| {
            let (container, kind) = key.split_once('/')?;
            let valid = |s: &str| !s.is_empty() && !s.contains('/');
            (valid(container) && valid(kind))
                .then_some(())
                .and(strait_io::admin::AppProbe::parse(spec))
                .map(|p| (key.to_owned(), p))
        });
        let (key, parsed) = parsed.ok_or_else(|| {
            anyhow::anyhow!(
                "--app-probe {probe}: expected CONTAINER/KIND=http:PORT/PATH or CONTAINER/KIND=tcp:PORT"
            )
        })?;
        config.app_probes.insert(key, parsed);
    }
    config.app_ports = args
        .app_ports
        .iter()
        .map(|p| {
            let full = if p.contains('=') {
                p.clone()
            } else {
                let port = p.split_once('/').map_or(p.as_str(), |(port, _)| port);
                format!("{p}=127.0.0.1:{port}")
            };
            AppPort::parse(&full).map_err(|e| anyhow::anyhow!("--app-port {p}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    config.upstreams = args
        .upstreams
        .iter()
        .map(|u| Upstream::parse(u).map_err(|e| anyhow::anyhow!("--upstream {u}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    config.inbound_addr = args.inbound_addr;
    config.advertise_addr = args.advertise_addr;
    config.proxy_addr = args.proxy_addr;
    config.admin_addr = args.admin_addr;
    config.transparent_addr = args.transparent_addr;
    config.request_timeout = args.request_timeout;
    config.connect_timeout = args.connect_timeout;
    config.access_log = args.access_log;
    config.workload = args.workload.clone();
    config.watch = args
        .watch
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| {
            strait_sidecar::config::Watched::parse(w)
                .map_err(|e| anyhow::anyhow!("--watch {w}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    config.limits = strait_sidecar::limits::LimitsConfig {
        inbound_connections: args.max_inbound_connections,
        outbound_connections: args.max_outbound_connections,
        header_bytes: args.max_header_bytes,
        replay_body_bytes: args.max_replay_body_bytes,
        mirrors_in_flight: args.max_mirrors_in_flight,
        admin_connections: args.max_admin_connections,
    };
    Ok(config)
}

async fn run_sidecar(args: RunArgs) -> Result<()> {
    crate::init_logs(&args.log_format);
    let sidecar = strait_sidecar::start(config(&args).await?).await?;
    // One binary holds the gateway and the CLI too, and start-up code runs once: keep resident
    // only the code the sidecar runs from now on.
    let _ = sidecar.ready(std::time::Duration::from_secs(10)).await;
    strait_sidecar::residence::trim_code();
    // Listening for signals before saying it started: one sent at once stops it cleanly.
    let stopped = crate::shutdown_signal();
    println!(
        "{}",
        json!({
            "event": "started",
            "identity": sidecar.identity().to_string(),
            "inbound": sidecar.inbound_addr.to_string(),
            "proxy": sidecar.proxy_addr.map(|a| a.to_string()),
            "admin": sidecar.admin_addr.map(|a| a.to_string()),
            "transparent": sidecar.transparent_addr.map(|a| a.to_string()),
            "upstreams": sidecar.upstream_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    );
    stopped.await;
    sidecar.stop().await;
    Ok(())
}

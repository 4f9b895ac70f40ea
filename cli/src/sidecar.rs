//! `strait sidecar token` (a bootstrap document for a new sidecar), `strait sidecar run` and
//! `strait sidecar init` (the iptables rules that send a pod's traffic through its sidecar).

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use strait_federation::document::API_VERSION;
use strait_federation::proto::operator::CreateWorkloadTokenRequest;
use strait_sidecar::config::{BOOTSTRAP_KIND, Bootstrap};

use crate::context;

#[derive(Subcommand)]
pub enum SidecarCommand {
    /// Print a bootstrap document with which a new sidecar joins this cluster as one workload
    /// identity (the gateway's address, the trust bundle and a signed token; no private key).
    Token(TokenArgs),
    /// Run a sidecar until SIGTERM or SIGINT. Prints one JSON line with its bound addresses
    /// once it is certified and listening.
    Run(Box<strait_cli::proxy::RunArgs>),
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

/// The threads a command's runtime gets, when the command says (`sidecar run --threads`).
pub fn threads(command: &SidecarCommand) -> Option<usize> {
    match command {
        SidecarCommand::Run(args) => Some(args.threads()),
        SidecarCommand::Token(_) | SidecarCommand::Init(_) => None,
    }
}

/// Runs a `strait sidecar` command.
pub async fn run(context: Option<&str>, command: SidecarCommand) -> Result<()> {
    match command {
        SidecarCommand::Token(args) => token(context, args).await,
        SidecarCommand::Run(args) => strait_cli::proxy::run(*args).await,
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

//! `strait`: the one binary of the strait mesh. Runs gateways and drives them: trust, gateway
//! set-up, apply/get/delete, link/unlink, and the demo.

mod check;
mod context;
mod dashboard;
mod demo;
mod inject;
mod install;
mod output;
mod rotate;
mod sidecar;
mod stat;
mod tap;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use strait_cli::process::{self, init_logs, shutdown_signal};
use strait_federation::identity::{AccountName, ClusterName, TrustDomain};
use strait_federation::proto::operator::{
    ApplyRequest, CreateLinkRequest, DeleteRequest, UnlinkRequest,
};
use strait_gateway::config::GatewayConfig;
use strait_gateway::init::{InitOptions, TrustDir, absolute, init_gateway};

use crate::output::Format;

/// strait: one service mesh over many clusters and clouds.
#[derive(Parser)]
#[command(name = "strait", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// The context (cluster) to talk to, from $STRAIT_CONFIG (default ~/.strait/config); the
    /// last one given counts, except for `trust rotate`, where each one given takes the stage.
    #[arg(long, global = true, env = "STRAIT_CONTEXT", action = clap::ArgAction::Append)]
    context: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make and manage the mesh's trust root.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Set up and run a cluster's east-west gateway.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Apply documents (Service, Link, AuthorizationPolicy, HTTPRoute, RateLimitPolicy, Quota, RequestAuthentication, FailoverPolicy) from files ("-" reads
    /// standard input). Policies reach every linked cluster.
    Apply {
        /// A YAML file of one or more documents; may be repeated.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Add strait's sidecar to the pods of Kubernetes YAML (Pods, Deployments, StatefulSets,
    /// DaemonSets, Jobs, CronJobs, Lists) and print it; other kinds pass through. What the
    /// admission webhook does to the same pods.
    Inject(inject::InjectArgs),
    /// Print the manifests that install strait in a Kubernetes cluster (`strait install
    /// --cluster C | kubectl apply -f -`): the Helm chart deploy/helm/strait rendered as `helm
    /// template --include-crds` renders it, with the same values.
    Install(install::InstallArgs),
    /// Check the mesh through the context's gateway: trust, the gateway, every link (RTT, lag,
    /// clock skew), policies in sync, DNS. With --pre, check a Kubernetes cluster before
    /// installing strait: the API's version and groups, the caller's rights, CRDs installed by
    /// something else, the credentials Secret.
    Check(check::CheckArgs),
    /// Golden metrics (success rate, requests per second, latency p50/p95/p99) by service,
    /// by pair of clusters (links) or by workload (deploy); --all-clusters for the whole
    /// federation, from this one context.
    Stat(stat::StatArgs),
    /// The busiest services and cluster pairs, refreshed live in the terminal (`top deploy/web`
    /// for one workload, `top api` for one service).
    Top(stat::TopArgs),
    /// Live requests of a namespace (or one service), as this cluster's sidecars carry them:
    /// time, direction, clusters, method, path, status, latency, caller, trace.
    Tap(tap::TapArgs),
    /// The gateway's web dashboard: prints its URL and opens a browser where there is one.
    Dashboard(dashboard::DashboardArgs),
    /// Show services (local and imported), links, or the mesh-wide policies.
    Get {
        /// What to show: services, links or policies.
        resource: GetResource,
        /// Only services of this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a service, a link or a policy, by kind and name or by the documents of files.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["kind", "files"])))]
    Delete {
        /// What to delete: service, link, authorizationpolicy, httproute, ratelimitpolicy, quota or requestauthentication.
        #[arg(requires = "name")]
        kind: Option<String>,
        /// Its name (the cluster's name for a link).
        name: Option<String>,
        /// The namespace of a service or a policy.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Delete what the documents of this file name ("-" reads standard input); may be
        /// repeated.
        #[arg(short = 'f', long = "filename", conflicts_with = "kind")]
        files: Vec<PathBuf>,
    },
    /// Print a Link document that lets another cluster link to this one.
    Link {
        /// How long the join token stays valid for its first use (e.g. 30m, 24h).
        #[arg(long, default_value = "24h", value_parser = strait_federation::duration::parse_duration)]
        ttl: Duration,
        /// The address peers should dial, when not the gateway's advertised one.
        #[arg(long)]
        address: Option<String>,
    },
    /// Remove the peering with a cluster (both sides, when the peer is reachable).
    Unlink {
        /// The linked cluster's name.
        cluster: String,
    },
    /// Bootstrap and run a workload's sidecar.
    #[command(subcommand)]
    Sidecar(sidecar::SidecarCommand),
    /// Revoke a bootstrap token, an identity or an operator certificate at the context's
    /// gateway: a revoked token certifies no one; a revoked workload identity is certified no
    /// more (first certificate or renewal); a revoked operator identity or certificate is
    /// refused by the operator API.
    Revoke {
        /// What to revoke.
        #[arg(value_parser = ["token", "identity", "certificate"])]
        kind: String,
        /// The token's id (`strait sidecar token` prints it), the SPIFFE identity
        /// (spiffe://TD/cluster/C/ns/NS/sa/SA or .../operator/NAME), or the certificate's
        /// fingerprint (sha256:...).
        value: String,
    },
    /// Add, list and pick the contexts (clusters) the other commands talk to.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Start a whole two-cluster mesh on this machine (east and west, linked).
    Demo(demo::DemoArgs),
    /// Run one of the demo's sample apps (for tests and benchmarks). Prints its address as JSON.
    #[command(hide = true)]
    DemoApp {
        /// Which app.
        #[arg(long, value_enum)]
        kind: demo::apps::AppKind,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The cluster it says it runs in.
        #[arg(long, default_value = "local")]
        cluster: String,
        /// The service it says it is (namespace/name).
        #[arg(long, default_value = "shop/api")]
        service: String,
        /// The pod name it says it has.
        #[arg(long, default_value = "app-0")]
        pod: String,
        /// Answer every HTTP request with this status (a broken app).
        #[arg(long, value_parser = clap::value_parser!(u16).range(100..600))]
        broken: Option<u16>,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Make a new root for a trust domain.
    Init {
        /// The trust domain, such as example.mesh.
        #[arg(long)]
        trust_domain: String,
        /// The folder to write root.crt, root.key, bundle.pem and trust.yaml into.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sign a cluster's intermediate issuer, for a gateway set up where the root is not.
    Issue {
        /// The cluster's name.
        #[arg(long)]
        cluster: String,
        /// The trust folder (with root.key).
        #[arg(long)]
        trust: PathBuf,
        /// The gateway folder to write issuer.crt, issuer.key, bundle.pem and trust.yaml into.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Rotate the root without an outage, in three stages: add, reissue, retire.
    #[command(subcommand)]
    Rotate(rotate::RotateCommand),
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Lay out a gateway folder and add a context for it.
    Init(Box<GatewayInit>),
    /// Run a gateway until SIGTERM or SIGINT.
    Run {
        /// The gateway.yaml written by `strait gateway init`.
        #[arg(long)]
        config: PathBuf,
        /// Log format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
}

#[derive(Args)]
struct GatewayInit {
    /// The cluster's name (a DNS label).
    #[arg(long)]
    cluster: String,
    /// The trust folder made by `strait trust init` (or copied by `strait trust issue`).
    #[arg(long)]
    trust: PathBuf,
    /// The gateway folder to create.
    #[arg(long)]
    dir: PathBuf,
    /// UDP address for peer gateways (QUIC).
    #[arg(long)]
    quic_addr: SocketAddr,
    /// TCP address of the operator API.
    #[arg(long)]
    api_addr: SocketAddr,
    /// TCP address of the admin HTTP server (health, readiness, metrics).
    #[arg(long)]
    admin_addr: SocketAddr,
    /// The address other clusters dial, when not --quic-addr (a load balancer's).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// TCP address where this cluster's sidecars open flows to other clusters (default: the
    /// API address's host, any free port; sidecars learn it from the gateway).
    #[arg(long)]
    relay_addr: Option<SocketAddr>,
    /// Where the gateway answers DNS for the clusterset zone (`<svc>.<ns>.svc.clusterset.local`),
    /// on UDP and TCP. No DNS server when unset.
    #[arg(long)]
    dns_addr: Option<SocketAddr>,
    /// The cloud the cluster runs in (aws, gcp, azure...): with --region, sidecars of linked
    /// clusters prefer closer clusters when they fail over.
    #[arg(long, default_value = "")]
    cloud: String,
    /// The cloud region the cluster runs in (us-east-1...).
    #[arg(long, default_value = "")]
    region: String,
    /// The zone the cluster runs in (us-east-1a...).
    #[arg(long, default_value = "")]
    zone: String,
    /// The operator identity's name for the CLI context.
    #[arg(long, default_value = "admin")]
    operator: String,
    /// The context's name (default: the cluster's name).
    #[arg(long)]
    context_name: Option<String>,
    /// Kubernetes mode: the kubeconfig of the cluster this gateway watches (its Services,
    /// EndpointSlices and ServiceExports are exported; ServiceImports are written back).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GetResource {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "link")]
    Links,
    #[value(alias = "policy")]
    Policies,
}

#[derive(Args)]
struct OutputArg {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Sidecar(command) => sidecar::threads(command),
        _ => None,
    };
    if let Command::Sidecar(sidecar::SidecarCommand::Run(_)) = &cli.command {
        strait_cli::proxy::hand_over();
    }
    process::run_to_exit(threads, run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let context = cli.context.last().map(String::as_str);
    match cli.command {
        Command::Trust(TrustCommand::Init { trust_domain, dir }) => {
            let trust_domain = TrustDomain::new(trust_domain).context("--trust-domain")?;
            let made = TrustDir::create(&dir, trust_domain)?;
            let bundle = made.bundle()?;
            println!(
                "trust root for {} written to {}",
                made.trust_domain,
                dir.display()
            );
            println!("root fingerprint: {}", bundle.fingerprints().join(", "));
            println!("keep root.key offline; clusters need only bundle.pem and their issuer");
        }
        Command::Trust(TrustCommand::Issue {
            cluster,
            trust,
            dir,
        }) => {
            let cluster = ClusterName::new(cluster).context("--cluster")?;
            TrustDir::open(&trust)?.issue_cluster(&cluster, &dir)?;
            println!("issuer for cluster {cluster} written to {}", dir.display());
        }
        Command::Trust(TrustCommand::Rotate(command)) => rotate::run(command, &cli.context).await?,
        Command::Gateway(GatewayCommand::Init(init)) => gateway_init(*init)?,
        Command::Gateway(GatewayCommand::Run { config, log_format }) => {
            init_logs(&log_format);
            let config = GatewayConfig::load(&config)?;
            strait_gateway::run(config, shutdown_signal()).await?;
        }
        Command::Apply { files } => apply(context, files).await?,
        Command::Inject(args) => inject::run(context, args)?,
        Command::Install(args) => install::run(context, args)?,
        Command::Check(args) => check::run(context, args).await?,
        Command::Stat(args) => stat::stat(context, args).await?,
        Command::Top(args) => stat::top(context, args).await?,
        Command::Dashboard(args) => dashboard::run(context, args).await?,
        Command::Tap(args) => tap::run(context, args).await?,
        Command::Get {
            resource,
            namespace,
            output,
        } => get(context, resource, namespace.as_deref(), output.output).await?,
        Command::Delete {
            kind,
            name,
            namespace,
            files,
        } => {
            if !files.is_empty() {
                return delete_files(context, files).await;
            }
            let (kind, name) = kind.zip(name).context("give KIND NAME, or -f FILE")?;
            let (ctx, mut client) = context::connect(context).await?;
            let deleted = client
                .delete(DeleteRequest {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner()
                .deleted;
            let what = if kind.starts_with("link") {
                name
            } else {
                format!("{namespace}/{name}")
            };
            if !deleted {
                bail!("{kind} {what} not found in cluster {}", ctx.cluster);
            }
            println!("{kind} {what} deleted");
        }
        Command::Link { ttl, address } => {
            let (_, mut client) = context::connect(context).await?;
            let document = client
                .create_link(CreateLinkRequest {
                    ttl_seconds: ttl.as_secs().max(1),
                    address: address.unwrap_or_default(),
                    plain: false,
                })
                .await
                .map_err(status)?
                .into_inner()
                .document;
            print!("{document}");
        }
        Command::Unlink { cluster } => {
            let (ctx, mut client) = context::connect(context).await?;
            let removed = client
                .unlink(UnlinkRequest {
                    cluster: cluster.clone(),
                })
                .await
                .map_err(status)?
                .into_inner()
                .removed;
            if !removed {
                bail!("cluster {} has no link with {cluster}", ctx.cluster);
            }
            println!("link between {} and {cluster} removed", ctx.cluster);
        }
        Command::Sidecar(command) => sidecar::run(context, command).await?,
        Command::Context(command) => context_command(command)?,
        Command::Revoke { kind, value } => {
            let (ctx, mut client) = context::connect(context).await?;
            let answer = client
                .revoke(strait_federation::proto::operator::RevokeRequest {
                    kind: kind.clone(),
                    value: value.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{kind} {value} {} at the gateway of {}",
                if answer.changed {
                    "revoked"
                } else {
                    "was already revoked"
                },
                ctx.cluster
            );
        }
        Command::Demo(args) => demo::run(args).await?,
        Command::DemoApp {
            kind,
            listen,
            cluster,
            service,
            pod,
            broken,
        } => {
            let stop = tokio_util::sync::CancellationToken::new();
            let identity = demo::apps::AppIdentity {
                service,
                cluster,
                pod,
                broken: broken.and_then(|s| hyper::StatusCode::from_u16(s).ok()),
            };
            let address = demo::apps::start(kind, listen, identity, stop.clone()).await?;
            let stopped = shutdown_signal();
            println!(
                "{}",
                serde_json::json!({"event": "started", "address": address.to_string()})
            );
            stopped.await;
            stop.cancel();
        }
    }
    Ok(())
}

/// A gRPC status as an error that reads well.
pub(crate) fn status(status: tonic::Status) -> anyhow::Error {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(&status);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    // In TLS 1.3 a refused client certificate surfaces only at the first call, as a transport
    // error: say what it most likely means.
    if text.contains("transport error") {
        text.push_str(
            " (the gateway may have refused this context's operator certificate: it serves only operators of its own cluster)",
        );
    }
    anyhow!(text)
}

#[derive(Subcommand)]
enum ContextCommand {
    /// Add a context for a gateway set up elsewhere (a Helm install): signs an operator
    /// credential with the cluster's issuer in the folder `strait trust issue` wrote.
    Add {
        /// The context's name.
        name: String,
        /// The cluster's credentials folder (issuer.crt, issuer.key, bundle.pem), as `strait
        /// trust issue --dir` wrote it; the operator credential is written beside them.
        #[arg(long)]
        credentials: PathBuf,
        /// The gateway's operator API as reached from here (host:port), such as the local end
        /// of `kubectl -n strait-system port-forward service/strait-gateway 4434`.
        #[arg(long)]
        gateway: String,
        /// The operator's name in its identity.
        #[arg(long, default_value = "admin")]
        operator: String,
    },
    /// List the contexts; the current one is marked.
    List,
    /// Make a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
}

fn context_command(command: ContextCommand) -> Result<()> {
    match command {
        ContextCommand::Add {
            name,
            credentials,
            gateway,
            operator,
        } => {
            let operator = AccountName::new(operator).context("--operator")?;
            let made = strait_gateway::init::issue_operator(&credentials, operator)
                .with_context(|| format!("--credentials {}", credentials.display()))?;
            let path = context::add(context::Context {
                name: name.clone(),
                cluster: made.cluster.clone(),
                trust_domain: made.trust_domain,
                api_addr: gateway,
                bundle: made.bundle,
                cert: made.cert,
                key: made.key,
            })?;
            println!(
                "context {name} (cluster {}) added to {}",
                made.cluster,
                path.display()
            );
        }
        ContextCommand::List => {
            let (_, file) = context::load()?;
            for c in &file.contexts {
                let mark = if file.current_context.as_deref() == Some(c.name.as_str()) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {}\tcluster {}\t{}", c.name, c.cluster, c.api_addr);
            }
        }
        ContextCommand::Use { name } => {
            let (path, mut file) = context::load()?;
            file.select(Some(&name), &path)?;
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("context {name} is current");
        }
    }
    Ok(())
}

fn gateway_init(init: GatewayInit) -> Result<()> {
    let cluster = ClusterName::new(init.cluster).context("--cluster")?;
    let operator = AccountName::new(init.operator).context("--operator")?;
    let made = init_gateway(InitOptions {
        cluster: cluster.clone(),
        trust_dir: init.trust,
        dir: init.dir,
        quic_addr: init.quic_addr,
        api_addr: init.api_addr,
        admin_addr: init.admin_addr,
        advertise_addr: init.advertise_addr,
        relay_addr: init.relay_addr,
        dns_addr: init.dns_addr,
        location: strait_federation::location::Location::new(&init.cloud, &init.region, &init.zone)
            .map_err(|e| anyhow::anyhow!("--cloud/--region/--zone: {e}"))?,
        operator,
        kubeconfig: init.kubeconfig,
    })?;
    let name = init.context_name.unwrap_or_else(|| cluster.to_string());
    let path = context::add(context::Context {
        name: name.clone(),
        cluster: cluster.clone(),
        trust_domain: made.config.trust_domain.clone(),
        api_addr: made.config.api_addr.to_string(),
        bundle: absolute(&made.bundle)?,
        cert: absolute(&made.operator_cert)?,
        key: absolute(&made.operator_key)?,
    })?;
    println!(
        "gateway for cluster {cluster} written to {}",
        made.config_path.display()
    );
    println!("context {name} added to {}", path.display());
    println!(
        "run it with: strait gateway run --config {}",
        made.config_path.display()
    );
    Ok(())
}

/// Reads one file given with -f ("-": standard input), never more than the limit a file may
/// hold: a larger one is refused before it costs memory. Its name for messages, and its text.
fn read_limited(file: &Path) -> Result<(String, String)> {
    use strait_federation::resource::MAX_FILE_BYTES;
    let too_large = |source: &str, size: String| {
        anyhow!(
            "{source}: {size} bytes; a file may hold at most {MAX_FILE_BYTES} bytes (4 MiB): split it"
        )
    };
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .context("reading standard input")?;
        if text.len() > MAX_FILE_BYTES {
            return Err(too_large("<stdin>", format!("more than {MAX_FILE_BYTES}")));
        }
        return Ok(("<stdin>".to_owned(), text));
    }
    let source = file.display().to_string();
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {source}"))?
        .len();
    if size > MAX_FILE_BYTES as u64 {
        return Err(too_large(&source, size.to_string()));
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {source}"))?;
    Ok((source, text))
}

/// Reads every file given with -f (first, so that a missing file fails before anything is
/// changed): each file's name for messages, and its text.
fn read_files(files: Vec<PathBuf>) -> Result<Vec<(String, String)>> {
    let mut documents = Vec::new();
    for file in files {
        let (source, text) = read_limited(&file)?;
        // A key set's file is named relative to the policy's file (standard input: the
        // working folder).
        let beside = file
            .parent()
            .filter(|_| file.as_os_str() != "-")
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let text = strait_federation::resource::inline_key_files(&source, &text, |path| {
            read_key_file(&beside.join(path))
        })?;
        documents.push((source, text));
    }
    Ok(documents)
}

/// Why a `jwksFile` could not be read (the caller names the file).
#[derive(Debug, thiserror::Error)]
enum KeyFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{size} bytes; a key set may have at most {limit}")]
    TooLarge { size: u64, limit: u64 },
}

/// Reads a JWKS file named by a RequestAuthentication's `jwksFile`.
fn read_key_file(path: &Path) -> Result<String, KeyFileError> {
    let limit = strait_federation::policy::authentication::MAX_JWKS_BYTES as u64;
    let size = std::fs::metadata(path)?.len();
    if size > limit {
        return Err(KeyFileError::TooLarge { size, limit });
    }
    Ok(std::fs::read_to_string(path)?)
}

/// How `apply` and `delete -f` print an object: `kind/namespace/name result`.
fn print_object(object: strait_federation::proto::operator::AppliedObject) {
    let name = if object.namespace.is_empty() {
        object.name
    } else {
        format!("{}/{}", object.namespace, object.name)
    };
    println!("{}/{} {}", object.kind.to_lowercase(), name, object.result);
}

async fn apply(context: Option<&str>, files: Vec<PathBuf>) -> Result<()> {
    let documents = read_files(files)?;
    let (_, mut client) = context::connect(context).await?;
    for (source, text) in documents {
        let response = client
            .apply(ApplyRequest {
                source,
                documents: text,
            })
            .await
            .map_err(status)?
            .into_inner();
        response.objects.into_iter().for_each(print_object);
    }
    Ok(())
}

/// `strait delete -f`: deletes what each file's documents name; fails when one named nothing.
async fn delete_files(context: Option<&str>, files: Vec<PathBuf>) -> Result<()> {
    let documents = read_files(files)?;
    let (ctx, mut client) = context::connect(context).await?;
    let mut missing = 0;
    for (source, text) in documents {
        let response = client
            .delete(DeleteRequest {
                source,
                documents: text,
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        missing += response
            .objects
            .iter()
            .filter(|o| o.result != "deleted")
            .count();
        response.objects.into_iter().for_each(print_object);
    }
    if missing > 0 {
        bail!("{missing} object(s) not found in cluster {}", ctx.cluster);
    }
    Ok(())
}

async fn get(
    context: Option<&str>,
    resource: GetResource,
    namespace: Option<&str>,
    format: Format,
) -> Result<()> {
    let (_, mut client) = context::connect(context).await?;
    let text = match resource {
        GetResource::Services => {
            let mut services = context::list_services(&mut client).await?;
            if let Some(namespace) = namespace {
                services.retain(|s| s.namespace == namespace);
            }
            output::services(&services, format)?
        }
        GetResource::Links => output::links(&context::list_links(&mut client).await?, format)?,
        GetResource::Policies => {
            let mut policies = context::list_policies(&mut client).await?;
            if let Some(namespace) = namespace {
                policies.retain(|p| p.namespace == namespace);
            }
            output::policies(&policies, format)?
        }
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_by_name_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        // 200 MB, sparse: reading it would cost the memory the check must spare.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(200_000_000)
            .unwrap();
        let error = read_files(vec![path.clone()]).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}: 200000000 bytes; a file may hold at most 4194304 bytes (4 MiB): split it",
                path.display()
            )
        );
    }

    /// Typed errors print their source's text and also name it as their source: the report
    /// says each cause once, and still shows the context and the causes no message quotes.
    #[test]
    fn an_error_report_says_each_cause_once() {
        let io = std::io::Error::other("connection refused");
        let typed = KeyFileError::Io(io);
        let error = anyhow::Error::new(typed).context("keys.json");
        assert_eq!(process::report(&error), "keys.json: connection refused");
        let plain = anyhow::anyhow!("inner").context("outer").context("top");
        assert_eq!(process::report(&plain), "top: outer: inner");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

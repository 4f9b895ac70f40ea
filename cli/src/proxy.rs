//! `sidecar run`, the data plane: `strait sidecar run` and `strait-proxy run` take the same
//! flags and run the same code. `strait` hands the command over to `strait-proxy` when that
//! binary sits beside it: linked without the gateway and the operator commands, it holds
//! two fifths of the code, and a sidecar keeps resident less of it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::json;
use strait_federation::document::API_VERSION;
use strait_federation::identity::ServiceName;
use strait_sidecar::config::{
    AppPort, BOOTSTRAP_KIND, Bootstrap, ServiceConfig, SidecarConfig, TokenKind, Upstream,
};

use crate::process;

/// The sidecar's own binary, looked for beside `strait`.
pub const PROXY_BINARY: &str = "strait-proxy";

/// The flags of `sidecar run`.
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

impl RunArgs {
    /// The threads that carry the sidecar's traffic (`--threads`).
    pub fn threads(&self) -> usize {
        usize::from(self.threads)
    }
}

/// Where glibc reads its allocator's settings from, once, when a process starts.
const MALLOC_SETTINGS: &str = "GLIBC_TUNABLES";
/// What the hand-over gives `strait-proxy` when [`MALLOC_SETTINGS`] is unset: glibc keeps up to
/// 64 freed chunks of each size per thread (7 by default) for the next allocation of that
/// size. On the bench's load each sidecar ran 3-4 % fewer instructions per request; after
/// 10,000 connections closed, the client sidecar held 13.8 MiB instead of 10.5 (with 256: 19.4).
const MALLOC_CACHE: &str = "glibc.malloc.tcache_count=64";

/// Replaces this process with `strait-proxy run` and the flags of `strait sidecar run`, when
/// a `strait-proxy` of this very version sits beside this binary. Returns when there is none,
/// or it cannot be started: the caller then runs the sidecar itself.
pub fn hand_over() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let proxy = exe.with_file_name(PROXY_BINARY);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(args) = proxy_args(&args) else {
        return;
    };
    if !same_version(&proxy) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new(&proxy);
        command.args(args);
        // Only when unset: an operator's own setting stands whole.
        if std::env::var_os(MALLOC_SETTINGS).is_none() {
            command.env(MALLOC_SETTINGS, MALLOC_CACHE);
        }
        let error = command.exec();
        eprintln!(
            "warning: cannot start {}: {error}; running the sidecar in this process",
            proxy.display()
        );
    }
}

/// The arguments of `strait-proxy` for a `strait` command line (without its program name):
/// `run`, then what followed `sidecar run`. Options given before `sidecar` are `strait`'s own.
pub fn proxy_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let at = args
        .windows(2)
        .position(|pair| pair[0] == "sidecar" && pair[1] == "run")?;
    Some(
        std::iter::once(OsString::from("run"))
            .chain(args[at + 2..].iter().cloned())
            .collect(),
    )
}

/// Whether `proxy` is a `strait-proxy` of this version: an older one left beside a newer
/// `strait` must not run in its name.
fn same_version(proxy: &Path) -> bool {
    if !proxy.is_file() {
        return false;
    }
    let expected = format!("{PROXY_BINARY} {}\n", env!("CARGO_PKG_VERSION"));
    std::process::Command::new(proxy)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout == expected.as_bytes())
}

/// Where a Kubernetes-mode sidecar's trust bundle comes from.
enum Bundle<'a> {
    File(&'a Path),
    /// The PEM itself (`STRAIT_TRUST_BUNDLE`).
    Pem(&'a str),
}

/// A bootstrap made of `--gateway`, `--bundle` and `--token-file`: the trust domain from the
/// bundle's root, the cluster from the certificate of the gateway that answers.
async fn service_account_bootstrap(
    gateway: &str,
    bundle: Bundle<'_>,
    token_path: &Path,
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

/// Runs a sidecar until SIGTERM or SIGINT: `strait sidecar run` and `strait-proxy run`.
pub async fn run(args: RunArgs) -> Result<()> {
    process::init_logs(&args.log_format);
    let sidecar = strait_sidecar::start(config(&args).await?).await?;
    // Start-up code and data are used once: keep resident only what the sidecar runs from now
    // on.
    let _ = sidecar.ready(std::time::Duration::from_secs(10)).await;
    strait_sidecar::residence::trim_read_only();
    // Listening for signals before saying it started: one sent at once stops it cleanly.
    let stopped = process::shutdown_signal();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn strait_proxy_gets_what_followed_sidecar_run() {
        assert_eq!(
            proxy_args(&args(&["sidecar", "run", "--bootstrap", "b.yaml"])),
            Some(args(&["run", "--bootstrap", "b.yaml"]))
        );
        // strait's own options before `sidecar` stay behind, even one whose value is `sidecar`.
        assert_eq!(
            proxy_args(&args(&[
                "--context",
                "sidecar",
                "sidecar",
                "run",
                "--threads",
                "2"
            ])),
            Some(args(&["run", "--threads", "2"]))
        );
        assert_eq!(proxy_args(&args(&["sidecar", "token", "-n", "run"])), None);
        assert_eq!(proxy_args(&args(&["run", "sidecar"])), None);
    }
}

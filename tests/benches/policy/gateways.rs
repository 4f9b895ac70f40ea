//! Convergence on real gateways: three `strait gateway run` processes on loopback, changes
//! applied in one through its operator API, and their arrival in the others read from the
//! gateways' own timestamped log lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use strait_federation::identity::{ClusterName, Role, TrustDomain};
use strait_federation::pki::{Credential, TrustBundle};
use strait_federation::proto::operator::operator_client::OperatorClient;
use strait_federation::proto::operator::{ApplyRequest, DeleteRequest, ListLinksRequest};
use strait_federation::tls::API_ALPN;
use strait_federation::tls::{CertStore, PeerRule};
use strait_io::files::read_file;
use strait_tests::{Gateway, Mesh, metric, wait_for};

use crate::{BULK, BULK_PER_FILE, CpuSample, SAMPLES, bulk_key, probe_yaml};

/// A tracing timestamp (`2026-11-05T10:11:12.123456Z`, UTC) as a wall-clock time.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.split(':');
    let hours: u64 = time.next()?.parse().ok()?;
    let minutes: u64 = time.next()?.parse().ok()?;
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let whole = days * 86_400 + hours * 3_600 + minutes * 60;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(seconds))
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One "policy changed by a peer" line: when, which policy (`namespace/name`), from which peer.
struct Arrival {
    at: SystemTime,
    policy: String,
    peer: String,
}

/// Follows a gateway's log for the line it writes when a peer's entry changed its set: merged
/// into the set held in memory, just before the gateway writes its state and tells its other
/// peers and its sidecars.
struct LogWatch {
    path: PathBuf,
    offset: u64,
    partial: String,
    arrivals: Vec<Arrival>,
}

impl LogWatch {
    fn new(mesh: &Mesh, gateway: &Gateway) -> Self {
        Self {
            path: mesh.dir.path().join(format!("{}.log", gateway.cluster)),
            offset: 0,
            partial: String::new(),
            arrivals: Vec::new(),
        }
    }

    fn read(&mut self) -> Result<()> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(());
        };
        let complete: String = self.partial.drain(..=end).collect();
        for line in complete.lines() {
            if !line.contains("policy changed by a peer") {
                continue;
            }
            let line = without_colours(line);
            let at = line
                .split_whitespace()
                .next()
                .and_then(parse_timestamp)
                .ok_or_else(|| anyhow!("no timestamp in {line:?}"))?;
            let field = |name: &str| {
                line.split_once(&format!(" {name}="))
                    .map(|(_, rest)| rest.to_owned())
                    .ok_or_else(|| anyhow!("no {name} in {line:?}"))
            };
            // `policy=AuthorizationPolicy ns/name` is the last field, `peer=` comes before it.
            let policy = field("policy")?
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_owned();
            let peer = field("peer")?
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            self.arrivals.push(Arrival { at, policy, peer });
        }
        Ok(())
    }

    /// The next arrival of `policy` (in order: an apply's, then its deletion's).
    fn wait(&mut self, policy: &str, limit: Duration) -> Result<Arrival> {
        let deadline = Instant::now() + limit;
        loop {
            self.read()?;
            if let Some(i) = self.arrivals.iter().position(|a| a.policy == policy) {
                return Ok(self.arrivals.remove(i));
            }
            if Instant::now() > deadline {
                bail!(
                    "{policy} not merged by {} within {limit:?}",
                    self.path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until `count` arrivals of policies in namespaces starting with `prefix` were
    /// seen; takes them, and returns the last one's time.
    fn wait_many(&mut self, prefix: &str, count: usize, limit: Duration) -> Result<SystemTime> {
        let deadline = Instant::now() + limit;
        loop {
            self.read()?;
            let seen = self
                .arrivals
                .iter()
                .filter(|a| a.policy.starts_with(prefix))
                .count();
            if seen >= count {
                let last = self
                    .arrivals
                    .iter()
                    .filter(|a| a.policy.starts_with(prefix))
                    .map(|a| a.at)
                    .max()
                    .unwrap_or(UNIX_EPOCH);
                self.arrivals.retain(|a| !a.policy.starts_with(prefix));
                return Ok(last);
            }
            if Instant::now() > deadline {
                bail!("{seen} of {count} {prefix}* policies merged within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// An operator API client kept open across samples, so that a sample times the apply and
/// not the start of a CLI process and its TLS handshake.
struct Operator {
    runtime: tokio::runtime::Runtime,
    client: OperatorClient<tonic::transport::Channel>,
}

/// How the benchmark's operator client dials.
#[derive(Clone, Copy, PartialEq)]
enum Dialing {
    /// As the CLI does.
    AsTheCli,
    /// The same, with Nagle's algorithm off on the client's socket (TCP_NODELAY).
    NoDelay,
}

/// A channel like the CLI's, but with TCP_NODELAY on the client's socket.
async fn no_delay_channel(
    address: &str,
    cluster: &ClusterName,
    bundle: &TrustBundle,
    credential: &Credential,
) -> Result<tonic::transport::Channel> {
    strait_federation::tls::install_default_provider();
    let certs = CertStore::new(credential)?;
    let rule = PeerRule::role_in(Role::Gateway, cluster.clone());
    let config = strait_federation::tls::client_config(
        &strait_federation::tls::TrustStore::new(bundle.clone())?,
        &certs,
        rule,
        &[API_ALPN],
    )?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = rustls::pki_types::ServerName::try_from(cluster.to_string())?;
    let target = address.to_owned();
    let connect = tower::service_fn(move |_: tonic::transport::Uri| {
        let (connector, server_name, target) =
            (connector.clone(), server_name.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect_with_connector(connect)
            .await?,
    )
}

impl Operator {
    /// Connects as the CLI context named `cluster` does.
    fn connect(mesh: &Mesh, cluster: &str, dialing: Dialing) -> Result<Self> {
        let contexts: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&mesh.config)?)
                .map_err(|e| anyhow!("contexts file: {e}"))?;
        let context = contexts["contexts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == cluster)
            .ok_or_else(|| anyhow!("no context {cluster}"))?;
        let text = |field: &str| {
            context[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("context {cluster} has no {field}"))
        };
        let bundle = strait_io::pki::read_bundle(
            std::path::Path::new(&text("bundle")?),
            TrustDomain::new(text("trustDomain")?)?,
        )?;
        let credential = Credential {
            chain_pem: read_file(std::path::Path::new(&text("cert")?))?,
            key_pem: read_file(std::path::Path::new(&text("key")?))?,
        };
        let address = text("apiAddr")?;
        let cluster = ClusterName::new(text("cluster")?)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = runtime.block_on(async {
            match dialing {
                Dialing::AsTheCli => {
                    strait_gateway::api::connect(&address, &cluster, &bundle, &credential)
                        .await
                        .map_err(|e| anyhow!("operator API of {cluster}: {e}"))
                }
                Dialing::NoDelay => no_delay_channel(&address, &cluster, &bundle, &credential)
                    .await
                    .map(OperatorClient::new),
            }
        })?;
        Ok(Self {
            runtime,
            client: channel,
        })
    }

    /// A call that does no work in the gateway: the API's round trip alone.
    fn list_links(&mut self) -> Result<()> {
        self.runtime
            .block_on(self.client.list_links(ListLinksRequest::default()))?;
        Ok(())
    }

    fn apply(&mut self, source: &str, documents: String) -> Result<()> {
        let request = ApplyRequest {
            source: source.into(),
            documents,
        };
        self.runtime
            .block_on(self.client.apply(request))
            .with_context(|| format!("applying {source}"))?;
        Ok(())
    }

    fn delete(&mut self, namespace: &str, name: &str) -> Result<()> {
        let request = DeleteRequest {
            kind: "AuthorizationPolicy".into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        };
        let response = self
            .runtime
            .block_on(self.client.delete(request))
            .with_context(|| format!("deleting {namespace}/{name}"))?;
        if !response.into_inner().deleted {
            bail!("{namespace}/{name} was not there to delete");
        }
        Ok(())
    }
}

/// The figures of one series of samples on real gateways.
#[derive(Default)]
pub struct Series {
    /// The apply (or delete) call to east's operator API, until it answered.
    pub call: Vec<Duration>,
    /// From just before the call to each watched gateway's merge.
    pub arrivals: Vec<Vec<Duration>>,
    /// The peer each watched gateway heard it from (first copy).
    pub via: Vec<Vec<String>>,
}

/// Applies (or deletes) SAMPLES probe policies in east, each a new name, and times their
/// arrival in each watched gateway.
fn series(
    operator: &mut Operator,
    watches: &mut [&mut LogWatch],
    tag: &str,
) -> Result<(Series, Series)> {
    let mut applies = Series {
        arrivals: vec![Vec::new(); watches.len()],
        via: vec![Vec::new(); watches.len()],
        ..Series::default()
    };
    let mut deletes = Series {
        arrivals: vec![Vec::new(); watches.len()],
        via: vec![Vec::new(); watches.len()],
        ..Series::default()
    };
    for i in 0..SAMPLES {
        let name = format!("probe-{tag}-{i}");
        let policy = format!("shop/{name}");
        for (series, delete) in [(&mut applies, false), (&mut deletes, true)] {
            let wall = SystemTime::now();
            let started = Instant::now();
            if delete {
                operator.delete("shop", &name)?;
            } else {
                operator.apply(&format!("{name}.yaml"), probe_yaml("shop", &name))?;
            }
            series.call.push(started.elapsed());
            for (w, watch) in watches.iter_mut().enumerate() {
                let arrival = watch.wait(&policy, Duration::from_secs(10))?;
                series.arrivals[w].push(arrival.at.duration_since(wall).unwrap_or_default());
                series.via[w].push(arrival.peer);
            }
        }
    }
    Ok((applies, deletes))
}

/// Cross-check for the log timestamps: after an apply, polls north's /metrics (which refreshes
/// its gauges on every scrape) every 2 ms for the live policy count; the delay between the log
/// line and the gauge, per sample.
fn gauge_lag(
    operator: &mut Operator,
    north: &Gateway,
    watch: &mut LogWatch,
    samples: usize,
) -> Result<Vec<Duration>> {
    let count = |gateway: &Gateway| -> Result<f64> {
        metric(
            &gateway.metrics()?,
            "strait_policies",
            &["kind=\"AuthorizationPolicy\""],
        )
        .ok_or_else(|| anyhow!("no strait_policies gauge"))
    };
    let mut lags = Vec::new();
    for i in 0..samples {
        let name = format!("probe-gauge-{i}");
        let before = count(north)?;
        operator.apply(&format!("{name}.yaml"), probe_yaml("shop", &name))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            if count(north)? > before {
                break SystemTime::now();
            }
            if Instant::now() > deadline {
                bail!("{name} not counted by north's gauge within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let logged = watch.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
        lags.push(seen.duration_since(logged.at).unwrap_or_default());
        operator.delete("shop", &name)?;
        watch.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
    }
    Ok(lags)
}

fn connected(mesh: &Mesh, dialer: &str, target: &str) -> Result<()> {
    wait_for(
        Duration::from_secs(15),
        &format!("{dialer} linked to {target}"),
        || Ok((mesh.link_state(dialer, target)? == "connected").then_some(())),
    )
}

/// Everything measured on real gateways.
pub struct Processes {
    /// The operator API's round trip without work, as the CLI dials and with TCP_NODELAY.
    pub round_trip: [Vec<Duration>; 2],
    /// Applies and deletes through the chain, the set empty: with the CLI's dialling, then
    /// with TCP_NODELAY on the client's socket.
    pub chain_empty: (Series, Series),
    pub chain_empty_no_delay: (Series, Series),
    /// North with a direct link to east beside the chain.
    pub direct_empty: (Series, Series),
    /// Through the chain with BULK policies held, as above.
    pub chain_loaded: (Series, Series),
    pub chain_loaded_no_delay: (Series, Series),
    /// How long after its log line north's /metrics counted the policy.
    pub gauge_lags: Vec<Duration>,
    /// `strait apply -f` of one policy, the whole command.
    pub cli_apply: Vec<Duration>,
    /// The bulk apply: its calls, and the last merge in west and in north.
    pub bulk_applies: Duration,
    pub bulk_to_west: Duration,
    pub bulk_to_north: Duration,
    /// The live count of each gateway's /metrics at the end.
    pub live: Vec<(String, f64)>,
    /// Share of the machine's CPU used by other processes meanwhile.
    pub other_cpu: f64,
}

/// Starts the gateways, measures, and stops them.
pub fn run() -> Result<Processes> {
    let mesh = Mesh::new()?;
    let west = mesh.start("west", None)?;
    let east = mesh.start("east", None)?;
    let north = mesh.start("north", None)?;
    mesh.link("east", "west")?;
    mesh.link("north", "west")?;
    connected(&mesh, "east", "west")?;
    connected(&mesh, "north", "west")?;
    let pids: Vec<u32> = [&west, &east, &north]
        .into_iter()
        .filter_map(Gateway::pid)
        .collect();
    let cpu_before = CpuSample::now(&pids)?;
    let mut operator = Operator::connect(&mesh, "east", Dialing::AsTheCli)?;
    let mut no_delay = Operator::connect(&mesh, "east", Dialing::NoDelay)?;
    let mut west_log = LogWatch::new(&mesh, &west);
    let mut north_log = LogWatch::new(&mesh, &north);

    let mut round_trip: [Vec<Duration>; 2] = Default::default();
    for _ in 0..SAMPLES {
        for (client, times) in [&mut operator, &mut no_delay]
            .into_iter()
            .zip(&mut round_trip)
        {
            let started = Instant::now();
            client.list_links()?;
            times.push(started.elapsed());
        }
    }
    // Warm-up: the first change of every session, then the chain, empty.
    series(&mut operator, &mut [&mut west_log, &mut north_log], "warm")?;
    let chain_empty = series(&mut operator, &mut [&mut west_log, &mut north_log], "chain")?;
    let chain_empty_no_delay = series(
        &mut no_delay,
        &mut [&mut west_log, &mut north_log],
        "nodelay",
    )?;
    let gauge_lags = gauge_lag(&mut operator, &north, &mut north_log, 5)?;

    // What a CLI process adds to an apply (process start, contexts file, TLS handshake).
    let mut cli_apply = Vec::new();
    for i in 0..5 {
        let name = format!("probe-cli-{i}");
        let started = Instant::now();
        mesh.apply("east", &format!("{name}.yaml"), &probe_yaml("shop", &name))
            .success()?;
        cli_apply.push(started.elapsed());
        west_log.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
        north_log.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
        operator.delete("shop", &name)?;
        west_log.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
        north_log.wait(&format!("shop/{name}"), Duration::from_secs(10))?;
    }

    // A direct link east - north beside the chain: north hears of a change from east itself.
    mesh.link("east", "north")?;
    connected(&mesh, "east", "north")?;
    let direct_empty = series(&mut operator, &mut [&mut north_log], "direct")?;
    mesh.ctl("east", &["unlink", "north"]).success()?;
    wait_for(Duration::from_secs(15), "east unlinked from north", || {
        Ok(mesh.link_state("east", "north")?.is_empty().then_some(()))
    })?;
    // West heard of the direct series too (from east): not part of any figure.
    west_log.read()?;
    west_log.arrivals.clear();

    // 10,000 policies, applied in east in files of BULK_PER_FILE.
    let started_wall = SystemTime::now();
    let started = Instant::now();
    for (part, first) in (0..BULK).step_by(BULK_PER_FILE).enumerate() {
        let text = (first..(first + BULK_PER_FILE).min(BULK))
            .map(|n| {
                let (namespace, name) = bulk_key(n);
                probe_yaml(&namespace, &name)
            })
            .collect::<Vec<_>>()
            .join("---\n");
        if text.len() >= 4 << 20 {
            bail!(
                "bulk file {part} is {} bytes, over the API's 4 MiB",
                text.len()
            );
        }
        operator.apply(&format!("bulk-{part}.yaml"), text)?;
    }
    let bulk_applies = started.elapsed();
    let limit = Duration::from_secs(120);
    let bulk_to_west = west_log
        .wait_many("bulk", BULK, limit)?
        .duration_since(started_wall)?;
    let bulk_to_north = north_log
        .wait_many("bulk", BULK, limit)?
        .duration_since(started_wall)?;
    series(
        &mut operator,
        &mut [&mut west_log, &mut north_log],
        "warm-loaded",
    )?;
    let chain_loaded = series(
        &mut operator,
        &mut [&mut west_log, &mut north_log],
        "loaded",
    )?;
    let chain_loaded_no_delay = series(
        &mut no_delay,
        &mut [&mut west_log, &mut north_log],
        "loaded-nodelay",
    )?;

    // Every gateway holds the same live set (the gauge counts it on each scrape).
    let live = [&east, &west, &north]
        .into_iter()
        .map(|gateway| {
            let count = metric(
                &gateway.metrics()?,
                "strait_policies",
                &["kind=\"AuthorizationPolicy\""],
            )
            .unwrap_or(f64::NAN);
            Ok((gateway.cluster.clone(), count))
        })
        .collect::<Result<Vec<_>>>()?;
    let other_cpu = CpuSample::now(&pids)?.others_since(&cpu_before);
    drop(operator);
    drop(no_delay);
    for mut gateway in [east, west, north] {
        gateway.stop()?;
    }
    Ok(Processes {
        round_trip,
        chain_empty,
        chain_empty_no_delay,
        direct_empty,
        chain_loaded,
        chain_loaded_no_delay,
        gauge_lags,
        cli_apply,
        bulk_applies,
        bulk_to_west,
        bulk_to_north,
        live,
        other_cpu,
    })
}

//! The gateway's DNS server: authoritative for the clusterset zone (`clusterset.local`),
//! answering from the federated catalog with virtual addresses that sidecars intercept.
//!
//! `zone` (the names and the answer to a query) and `wire` (the packet format) are sans-IO;
//! `vip` keeps the virtual addresses stable. This module owns the sockets and tasks: one
//! thread per UDP socket (several sockets on one port with SO_REUSEPORT, one per core, up to
//! four) doing blocking receives and sends, a TCP listener on the runtime with bounded
//! connections and timeouts. The zone changes in place as the catalog does ([`crate::views`]).
//!
//! UDP runs on threads of its own, not on the async runtime, because at moderate rates the
//! runtime's readiness dance (a receive that finds nothing, an epoll wait, a worker woken per
//! datagram) cost more than the answer: measured at 20,000 queries/s, 15 µs of CPU per query
//! against Knot's and NSD's 9. A blocked `recvfrom` costs one wake-up per datagram.
//!
//! It does not run on hickory-server's `Server`: with a request handler that does nothing but
//! answer one fixed record, that server spent 7.6 µs of CPU per UDP query on this machine
//! (a task spawned and a channel crossed per query), more than the whole 6 µs budget.
//! `bench/dns.sh` measures this loop beside Knot DNS and NSD; hickory is the tests' client.

pub mod vip;
pub mod wire;

pub use wire::Transport;
pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{DnsConfig, GatewayConfig};
use crate::{GatewayError, Shared, unix_now};
use vip::{PoolFile, VipPool};
use zone::{Zone, ZoneSettings};

/// A TCP connection idle for this long between queries is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long one query or answer may take to cross a TCP connection.
const TCP_IO: Duration = Duration::from_secs(5);
/// The largest UDP datagram read (a query is far smaller; longer ones are cut and refused).
const MAX_UDP_QUERY: usize = 4096;

/// The DNS server's sockets, bound before the gateway reports ready.
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: TcpListener,
}

/// How often a UDP thread with nothing to read looks at the shutdown flag.
const UDP_WAKE: Duration = Duration::from_millis(250);

/// Binds the DNS address on TCP and on as many UDP sockets as there are cores (the kernel
/// spreads queries over them).
pub fn bind(config: &DnsConfig) -> Result<Sockets, GatewayError> {
    let addr = config.addr;
    let fail = |error| GatewayError::Bind {
        what: "dns.addr",
        addr,
        error,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let domain = socket2::Domain::for_address(addr);
    let mut udp = Vec::with_capacity(cores);
    let mut bound = addr;
    for _ in 0..cores {
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
                .map_err(fail)?;
        socket.set_reuse_port(true).map_err(fail)?;
        socket.set_read_timeout(Some(UDP_WAKE)).map_err(fail)?;
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&bound.into()).map_err(fail)?;
        // With port 0, the first socket picks the port and the others join it.
        bound = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(bound);
        udp.push(socket.into());
    }
    let tcp = std::net::TcpListener::bind(bound).map_err(fail)?;
    tcp.set_nonblocking(true).map_err(fail)?;
    Ok(Sockets {
        udp,
        tcp: TcpListener::from_std(tcp).map_err(fail)?,
    })
}

impl Sockets {
    /// The address answered on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }
}

/// Reads the virtual-address pool of a gateway, as the last run left it.
pub fn load_pool(config: &GatewayConfig, dns: &DnsConfig) -> Result<VipPool, GatewayError> {
    // Checked when the configuration was loaded: an error here is a bug, not a bad file.
    let (v4, v6) = dns.ranges()?;
    let path = config.file("vips.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: PoolFile = serde_json::from_str(&text).map_err(|e| GatewayError::State {
                path: path.clone(),
                message: format!("unreadable ({e}); move it away to assign virtual addresses anew"),
            })?;
            Ok(VipPool::with_file(v4, v6, file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VipPool::new(v4, v6)),
        Err(e) => Err(GatewayError::State {
            path,
            message: e.to_string(),
        }),
    }
}

/// The zone in force, changed in place under its lock (answers take the lock for reading).
pub type LiveZone = std::sync::RwLock<Zone>;

/// Reads the zone in force (a writer that panicked left it whole: each change is applied
/// before the lock is given back).
pub fn read(zone: &LiveZone) -> std::sync::RwLockReadGuard<'_, Zone> {
    zone.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the tasks that serve the zone; returns what keeps it current, for the task that
/// follows the catalog ([`crate::views`]).
pub fn start(shared: &Arc<Shared>, sockets: Sockets, pool: VipPool) -> Option<ZoneKeeper> {
    let config = shared.config.dns.clone()?;
    let keeper = ZoneKeeper {
        settings: ZoneSettings {
            origin: config.zone.clone(),
            ttl: config.ttl_seconds,
            server: Some(config.addr.ip()).filter(|ip| !ip.is_unspecified()),
        },
        serial: unix_now() as u32,
        pool,
        unwritten: None,
        rebuild: true,
    };
    for (i, socket) in sockets.udp.into_iter().enumerate() {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || serve_udp(&shared, &socket));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a DNS thread");
        }
    }
    tokio::spawn(serve_tcp(shared.clone(), sockets.tcp));
    Some(keeper)
}

/// What keeps the zone current: its settings and serial, and the virtual addresses.
pub struct ZoneKeeper {
    settings: ZoneSettings,
    serial: u32,
    pool: VipPool,
    /// The pool's assignments when they changed and are not on disk yet.
    unwritten: Option<PoolFile>,
    /// Set until the zone is built, and when the addresses were replaced.
    rebuild: bool,
}

impl ZoneKeeper {
    /// Whether the next change must build the zone whole (none yet, or new addresses).
    pub fn rebuilds(&self) -> bool {
        self.rebuild
    }

    /// Builds the zone from every service of the clusterset view (in key order), and
    /// publishes it.
    pub fn build(
        &mut self,
        shared: &Shared,
        services: &[strait_federation::catalog::ClustersetService],
    ) {
        self.change(shared, |keeper, cluster| {
            let zone = Zone::build(
                &keeper.settings,
                keeper.serial,
                cluster,
                services,
                &mut keeper.pool,
            );
            let names = zone.len();
            shared
                .zone
                .send_replace(Some(Arc::new(LiveZone::new(zone))));
            names
        });
        self.rebuild = false;
    }

    /// Applies changed services to the zone in force, in place.
    pub fn update(
        &mut self,
        shared: &Shared,
        changed: &[(
            strait_federation::catalog::ServiceKey,
            Option<strait_federation::catalog::ClustersetService>,
        )],
    ) {
        let Some(live) = shared.zone.borrow().clone() else {
            return;
        };
        self.change(shared, |keeper, cluster| {
            let mut zone = live
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            zone.update(keeper.serial, cluster, changed, &mut keeper.pool);
            let names = zone.len();
            drop(zone);
            // Wakes those that follow the zone (it changed in place).
            shared.zone.send_modify(|_| {});
            names
        });
    }

    /// One change of the zone, timed, with the pool's assignments kept for writing.
    fn change(
        &mut self,
        shared: &Shared,
        apply: impl FnOnce(&mut Self, &strait_federation::identity::ClusterName) -> usize,
    ) {
        let started = std::time::Instant::now();
        self.pool.set_now(unix_now());
        self.serial = self.serial.wrapping_add(1);
        let names = apply(self, &shared.config.cluster);
        shared
            .metrics
            .dns_zone_build_seconds
            .set(started.elapsed().as_secs_f64());
        shared.metrics.dns_names.set(names as i64);
        shared
            .metrics
            .dns_virtual_addresses
            .set(self.pool.len() as i64);
        if self.pool.take_changed() {
            self.unwritten = Some(self.pool.to_file());
        }
    }

    /// Takes the leading replica's addresses: the next change builds the zone again with them.
    pub fn adopt_pool(&mut self, shared: &Shared, file: &PoolFile) {
        if let Some(config) = &shared.config.dns
            && let Ok((v4, v6)) = config.ranges()
        {
            self.pool = VipPool::with_file(v4, v6, file.clone());
            self.rebuild = true;
        }
    }

    /// Writes the pool's assignments when they changed, off the runtime's threads; one write
    /// at a time (two writers would share the temporary file, and an older snapshot could land
    /// last).
    pub async fn write_pool(&mut self, shared: &Shared) {
        let Some(file) = self.unwritten.take() else {
            return;
        };
        let path = shared.config.file("vips.json");
        let written = tokio::task::spawn_blocking(move || -> Result<(), GatewayError> {
            let text = serde_json::to_string(&file)?;
            Ok(strait_io::files::write_file(&path, &text, false)?)
        })
        .await
        .map_err(GatewayError::from)
        .and_then(|written| written);
        if let Err(error) = written {
            tracing::error!(%error, "cannot write the virtual addresses");
        }
    }
}

/// The zone a task answers from: refreshed only when a new one was published, so the common
/// case costs one atomic load.
struct Current {
    rx: watch::Receiver<Option<Arc<LiveZone>>>,
    zone: Option<Arc<LiveZone>>,
}

impl Current {
    fn new(shared: &Shared) -> Self {
        let mut rx = shared.zone.subscribe();
        let zone = rx.borrow_and_update().clone();
        Self { rx, zone }
    }

    fn get(&mut self) -> Option<std::sync::RwLockReadGuard<'_, Zone>> {
        if self.rx.has_changed().unwrap_or(false) {
            self.zone = self.rx.borrow_and_update().clone();
        }
        self.zone.as_deref().map(read)
    }
}

/// Answers datagrams on one socket until the gateway stops.
fn serve_udp(shared: &Shared, socket: &std::net::UdpSocket) {
    let mut zone = Current::new(shared);
    let mut packet = vec![0u8; MAX_UDP_QUERY];
    let mut answer = Vec::with_capacity(wire::EDNS_UDP_LIMIT);
    while !shared.shutdown.is_cancelled() {
        // Errors here are per datagram (an ICMP error from an earlier answer, say) or the
        // wake-up timeout.
        let Ok((length, peer)) = socket.recv_from(&mut packet) else {
            continue;
        };
        let Some(rcode) = zone
            .get()
            .and_then(|zone| zone.answer(&packet[..length], &mut answer, Transport::Udp))
        else {
            shared.metrics.dns_dropped.inc();
            continue;
        };
        shared.metrics.count_dns(Transport::Udp, rcode);
        if let Err(error) = socket.send_to(&answer, peer) {
            tracing::debug!(%peer, %error, "cannot send a DNS answer");
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, _, slot) = tokio::select! {
            accepted = shared.limits.dns_tcp.accept(&listener) => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let Some(slot) = slot else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serve_connection(&shared, stream) => {}
                () = shared.shutdown.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Answers queries on one TCP connection (two-byte length, then the message) until the client
/// closes it, stays idle, or sends something that is not a query.
async fn serve_connection(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut zone = Current::new(shared);
    let mut packet = Vec::new();
    let mut answer = Vec::new();
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        packet.resize(usize::from(u16::from_be_bytes(length)), 0);
        match tokio::time::timeout(TCP_IO, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(rcode) = zone
            .get()
            .and_then(|zone| zone.answer(&packet, &mut answer, Transport::Tcp))
        else {
            shared.metrics.dns_dropped.inc();
            return;
        };
        shared.metrics.count_dns(Transport::Tcp, rcode);
        // One write for length and message: two would be two segments (no delay is on).
        let mut framed = Vec::with_capacity(2 + answer.len());
        framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(TCP_IO, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

//! A degraded peer, told from the QUIC connection alone (no probe service): east dials west
//! through a UDP relay that can drop packets, and north directly; shop/api runs in west and
//! north. While the relay drops 30 % of the packets, east marks west degraded and its sidecars
//! send every request to north; when the loss ends, west gets traffic again.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::workloads::{api, client, get_json, wait_connected};
use strait_tests::{Mesh, wait_for};

/// Forwards UDP datagrams between one client and `target`, dropping the share `loss` (per
/// thousand) of them in each direction.
struct LossyRelay {
    address: SocketAddr,
    loss: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(target: SocketAddr) -> Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let back = UdpSocket::bind("127.0.0.1:0")?;
        back.connect(target)?;
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        }
        let address = front.local_addr()?;
        let loss = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let (front, back) = (Arc::new(front), Arc::new(back));
        let mut threads = Vec::new();
        for outbound in [true, false] {
            let (front, back, loss, stop, client) = (
                front.clone(),
                back.clone(),
                loss.clone(),
                stop.clone(),
                client.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                // xorshift: which datagrams drop, the same on every run.
                let mut seed: u64 = if outbound { 0x9E37_79B9 } else { 0x85EB_CA6B };
                while !stop.load(Ordering::SeqCst) {
                    let received = if outbound {
                        front.recv_from(&mut buffer).map(|(n, from)| {
                            *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                            n
                        })
                    } else {
                        back.recv(&mut buffer)
                    };
                    let Ok(n) = received else { continue };
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if (seed % 1000) < u64::from(loss.load(Ordering::SeqCst)) {
                        continue;
                    }
                    if outbound {
                        let _ = back.send(&buffer[..n]);
                    } else if let Some(to) = *client.lock().unwrap_or_else(|p| p.into_inner()) {
                        let _ = front.send_to(&buffer[..n], to);
                    }
                }
            }));
        }
        Ok(Self {
            address,
            loss,
            stop,
            threads,
        })
    }

    fn set_loss_per_thousand(&self, loss: u32) {
        self.loss.store(loss, Ordering::SeqCst);
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Why east says its link to west is degraded (empty: it is not).
fn degraded(mesh: &Mesh) -> Result<String> {
    let check = mesh.ctl("east", &["check", "-o", "json"]);
    let report: Value =
        serde_json::from_str(&check.stdout).with_context(|| format!("{check:?}"))?;
    Ok(report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["description"].as_str())
        .find(|d| d.starts_with("the link to west is degraded"))
        .unwrap_or_default()
        .to_owned())
}

/// Which cluster served each of `count` requests.
fn served_by(proxy: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for _ in 0..count {
        let cluster = get_json(proxy, "api.shop")
            .ok()
            .and_then(|v| v["cluster"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "failed".into());
        *by.entry(cluster).or_insert(0) += 1;
    }
    by
}

#[test]
fn a_lossy_peer_is_marked_degraded_from_its_connection_and_traffic_moves_to_another_cluster()
-> Result<()> {
    let mesh = Mesh::new()?;
    let west = mesh.start("west", None)?;
    let _north = mesh.start("north", None)?;
    let east = mesh.start("east", None)?;
    let relay = LossyRelay::start(west.quic)?;
    let document = mesh
        .ctl("west", &["link", "--address", &relay.address.to_string()])
        .success()?;
    mesh.apply("east", "west-link-for-east.yaml", &document)
        .success()?;
    mesh.link("east", "north")?;
    wait_connected(&mesh, "east", "west")?;
    wait_connected(&mesh, "east", "north")?;
    let _west_api = api(&mesh, "west", "api-west-0")?;
    let _north_api = api(&mesh, "north", "api-north-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;

    // Healthy: both clusters serve.
    wait_for(
        Duration::from_secs(20),
        "both west and north serving",
        || {
            let by = served_by(proxy, 20);
            Ok((by.contains_key("west") && by.contains_key("north")).then_some(()))
        },
    )?;

    // 30 % of the packets between east and west lost: degraded, from QUIC's own counters.
    relay.set_loss_per_thousand(300);
    let lossy = Instant::now();
    // A busy link shows it within seconds; one the balancer already avoids (it is slower) is
    // judged over 30 s of keep-alives.
    let reason = wait_for(Duration::from_secs(40), "west degraded", || {
        let _ = served_by(proxy, 10); // traffic, so that loss shows
        let reason = degraded(&mesh)?;
        Ok((!reason.is_empty()).then_some(reason))
    })
    .with_context(|| east.log_tail())?;
    eprintln!(
        "degraded {:?} after the loss began: {reason}",
        lossy.elapsed()
    );
    ensure!(reason.contains("% of packets lost"), "{reason}");
    // The sidecar hears of it with its next view.
    wait_for(Duration::from_secs(5), "the sidecar avoiding west", || {
        Ok((served_by(proxy, 10).get("north") == Some(&10)).then_some(()))
    })?;
    let by = served_by(proxy, 100);
    eprintln!("while degraded: {by:?}");
    ensure!(
        by.get("north") == Some(&100),
        "requests still went to the degraded cluster: {by:?}"
    );

    // The loss ends: west is tried again (30 s after the last loss while it is quiet) and
    // serves again.
    relay.set_loss_per_thousand(0);
    let healed = Instant::now();
    wait_for(Duration::from_secs(60), "west serving again", || {
        let by = served_by(proxy, 10);
        Ok(by.contains_key("west").then_some(()))
    })?;
    eprintln!(
        "west served again {:?} after the loss ended",
        healed.elapsed()
    );
    ensure!(degraded(&mesh)?.is_empty(), "still degraded");
    Ok(())
}

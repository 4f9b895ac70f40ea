//! DNS convergence benchmark: the time from a catalog change in one cluster to the new answer
//! from another cluster's gateway DNS. Two gateways as real processes on loopback (west exports,
//! east answers), with 5,000 services already exported (a zone of 10,000 names and as many SRV
//! names), so every change lands in a zone of realistic size (changed in place).
//! Each sample applies one service in west with the CLI and asks east over UDP every 2 ms until
//! the answer changes; then withdraws it and waits for NXDOMAIN.
//!
//! Query throughput and CPU per query against Knot DNS and NSD are in `bench/dns.sh`.
//!
//! Run: `cargo bench -p strait-tests --bench dns`

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strait_tests::{Mesh, service};

const BACKGROUND: usize = 5_000;
const SAMPLES: usize = 20;
const TARGET: Duration = Duration::from_secs(1);

/// A plain A query for `name`, as a stub resolver sends it.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// The rcode and answer count of one query, or `None` when no answer came within 200 ms.
fn ask(socket: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Result<Option<(u8, u16)>> {
    socket.send_to(&query(id, name), server)?;
    let mut buffer = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        match socket.recv_from(&mut buffer) {
            Ok((n, _)) if n >= 12 && u16::from_be_bytes([buffer[0], buffer[1]]) == id => {
                return Ok(Some((
                    buffer[3] & 0x0F,
                    u16::from_be_bytes([buffer[6], buffer[7]]),
                )));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Asks every 2 ms until `done` accepts the answer; the time it took from `since`.
fn wait_until(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    since: Instant,
    done: impl Fn(u8, u16) -> bool,
) -> Result<Duration> {
    let mut id = 0u16;
    while since.elapsed() < Duration::from_secs(10) {
        id = id.wrapping_add(1);
        if let Some((rcode, answers)) = ask(socket, server, id, name)?
            && done(rcode, answers)
        {
            return Ok(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{name}: no change within 10 s")
}

fn percentile(values: &[Duration], share: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * share).round() as usize]
}

fn main() -> Result<()> {
    let mesh = Mesh::new()?;
    let east = mesh.start("east", None)?;
    let _west = mesh.start("west", None)?;
    mesh.link("east", "west")?;
    let background: Vec<String> = (0..BACKGROUND)
        .map(|i| service(&format!("ns{}", i % 20), &format!("svc-{i}"), true, 8080))
        .collect();
    mesh.apply("west", "background.yaml", &background.join("---\n"))
        .success()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    // The background zone is in east before sampling starts.
    wait_until(
        &socket,
        east.dns,
        &format!(
            "svc-{}.ns{}.svc.clusterset.local",
            BACKGROUND - 1,
            (BACKGROUND - 1) % 20
        ),
        Instant::now(),
        |rcode, answers| rcode == 0 && answers == 1,
    )?;
    let (mut appear, mut vanish, mut applies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let name = format!("probe-{i}.shop.svc.clusterset.local");
        let file = format!("probe-{i}.yaml");
        let started = Instant::now();
        mesh.apply(
            "west",
            &file,
            &service("shop", &format!("probe-{i}"), true, 8080),
        )
        .success()?;
        applies.push(started.elapsed());
        appear.push(wait_until(
            &socket,
            east.dns,
            &name,
            started,
            |rcode, answers| rcode == 0 && answers == 1,
        )?);
        let started = Instant::now();
        mesh.apply(
            "west",
            &file,
            &service("shop", &format!("probe-{i}"), false, 8080),
        )
        .success()?;
        vanish.push(wait_until(
            &socket,
            east.dns,
            &name,
            started,
            |rcode, _| rcode == 3,
        )?);
    }
    println!(
        "DNS convergence across two gateways ({SAMPLES} samples, {BACKGROUND} services already exported)"
    );
    println!(
        "  from `strait apply` in west (CLI start and API call included) to east's new answer:"
    );
    for (what, values) in [
        ("apply itself (CLI)", &applies),
        ("name appears", &appear),
        ("name withdrawn (NXDOMAIN)", &vanish),
    ] {
        println!(
            "  {what:28} median {:>7.1} ms   p90 {:>7.1} ms   max {:>7.1} ms",
            percentile(values, 0.5).as_secs_f64() * 1e3,
            percentile(values, 0.9).as_secs_f64() * 1e3,
            percentile(values, 1.0).as_secs_f64() * 1e3,
        );
    }
    let build = strait_tests::metric(&east.metrics()?, "strait_dns_zone_build_seconds", &[])
        .unwrap_or(f64::NAN);
    println!(
        "  one rebuild of east's zone (the last one): {:.1} ms",
        build * 1e3
    );
    let worst = percentile(&appear, 1.0).max(percentile(&vanish, 1.0));
    println!(
        "  target: under {} ms; worst sample {:.1} ms: {}",
        TARGET.as_millis(),
        worst.as_secs_f64() * 1e3,
        if worst < TARGET { "met" } else { "NOT met" }
    );
    Ok(())
}

//! Federation benchmark: two gateways as real processes on loopback.
//! Prints the time for 10,000 services to converge (as a delta after a bulk apply, and as a
//! snapshot when a third cluster links), the bytes on the wire per single-service delta, and the
//! memory of a gateway holding 10,000 imported services, beside the targets and beside an
//! in-process baseline (the same work without sockets).
//!
//! Run: `cargo bench -p strait-tests --bench federation`

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use strait_federation::catalog::{ExportLog, ImportedCatalog, Position, ServiceKey, ServiceSpec};
use strait_federation::resource::{Resource, parse_documents};
use strait_federation::session::{PeerSession, SessionConfig};
use strait_federation::wire;
use strait_tests::{Gateway, Mesh, metric, service, wait_for};

const SERVICES: u16 = 10_000;
const SAMPLES: usize = 20;

fn documents(count: u16, port: u16) -> String {
    (0..count)
        .map(|i| service(&format!("ns{}", i % 50), &format!("svc-{i}"), true, port))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn imported_from(gateway: &Gateway, peer: &str) -> Result<f64> {
    metric(
        &gateway.metrics()?,
        "strait_catalog_services",
        &[&format!("source_cluster=\"{peer}\"")],
    )
    .ok_or_else(|| anyhow!("no catalog size for {peer}"))
}

fn peer_metric(gateway: &Gateway, name: &str, labels: &[&str]) -> Result<f64> {
    Ok(metric(&gateway.metrics()?, name, labels).unwrap_or(0.0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The same convergence without sockets or processes: parse, export, one snapshot through the
/// session and the codec, applied on the other side.
fn in_process_baseline(yaml: &str) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let resources = parse_documents("bench.yaml", yaml)?;
    let mut log = ExportLog::new(7);
    for resource in &resources {
        if let Resource::Service { key, spec } = resource {
            log.set(key, Some(spec));
        }
    }
    let now = Instant::now();
    let mut exporter = PeerSession::new(SessionConfig::default(), Position::NONE, &log, now);
    let mut importer = PeerSession::new(
        SessionConfig::default(),
        Position::NONE,
        &ExportLog::new(9),
        now,
    );
    let mut imported = ImportedCatalog::default();
    let mut decoder = wire::FrameDecoder::default();
    while let Some(frame) = exporter.poll_transmit(now) {
        decoder.extend(&wire::encode(&frame));
        while let Some(frame) = decoder.next_frame()? {
            importer.handle_frame(frame, now, &mut imported)?;
        }
    }
    let elapsed = started.elapsed();
    // One single-service delta, as framed on the control stream.
    let (key, mut spec): (ServiceKey, ServiceSpec) = imported
        .services
        .iter()
        .next()
        .map(|(k, s)| (k.clone(), s.clone()))
        .ok_or_else(|| anyhow!("nothing imported"))?;
    spec.ports[0].port += 1;
    log.set(&key, Some(&spec));
    exporter.sync(&log);
    let frame = exporter
        .poll_transmit(now)
        .ok_or_else(|| anyhow!("no delta queued"))?;
    Ok((elapsed, wire::encode(&frame).len()))
}

fn main() -> Result<()> {
    let mesh = Mesh::new()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    west.start(&mesh)?;
    east.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_for(Duration::from_secs(10), "link", || {
        Ok((mesh.link_state("east", "west")? == "connected").then_some(()))
    })?;
    let idle_rss = east.rss_bytes()?;

    // 1. Bulk apply in west, already linked: how long until east holds all 10,000.
    let yaml = documents(SERVICES, 8080);
    let path = mesh.file("bulk.yaml", &yaml)?;
    let started = Instant::now();
    mesh.cli(&["--context", "west", "apply", "-f"], &[&path])
        .success()?;
    let applied = started.elapsed();
    wait_for(Duration::from_secs(60), "10,000 services in east", || {
        Ok((imported_from(&east, "west")? >= f64::from(SERVICES)).then_some(()))
    })?;
    let converged = started.elapsed();

    // 2. Memory of the importer holding them (after its state was written).
    std::thread::sleep(Duration::from_millis(1500));
    let loaded_rss = east.rss_bytes()?;

    // 3. Snapshot: a third cluster links to west and receives all 10,000 at once.
    let mut north = mesh.gateway("north", None)?;
    north.start(&mesh)?;
    let document = mesh.ctl("west", &["link"]).success()?;
    let link_path = mesh.file("north-link.yaml", &document)?;
    let started = Instant::now();
    mesh.cli(&["--context", "north", "apply", "-f"], &[&link_path])
        .success()?;
    wait_for(Duration::from_secs(60), "10,000 services in north", || {
        Ok((imported_from(&north, "west")? >= f64::from(SERVICES)).then_some(()))
    })?;
    let snapshot = started.elapsed();
    north.stop()?;

    // 4. Bytes on the wire per single-service delta (west's UDP bytes to east, both ways).
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for sample in 0..SAMPLES {
        let deltas = peer_metric(
            &east,
            "strait_peer_updates_received_total",
            &["peer=\"west\"", "kind=\"delta\""],
        )?;
        let tx = peer_metric(
            &west,
            "strait_peer_udp_bytes",
            &["peer=\"east\"", "direction=\"tx\""],
        )?;
        let rx = peer_metric(
            &west,
            "strait_peer_udp_bytes",
            &["peer=\"east\"", "direction=\"rx\""],
        )?;
        let one = service("ns0", "svc-0", true, 9000 + sample as u16);
        mesh.apply("west", "one.yaml", &one).success()?;
        wait_for(Duration::from_secs(5), "the delta in east", || {
            let now = peer_metric(
                &east,
                "strait_peer_updates_received_total",
                &["peer=\"west\"", "kind=\"delta\""],
            )?;
            Ok((now > deltas).then_some(()))
        })?;
        // Wait for the acknowledgement to come back, so the exchange is complete.
        wait_for(Duration::from_secs(5), "the ack in west", || {
            Ok(
                (peer_metric(&west, "strait_peer_sync_lag_versions", &["peer=\"east\""])? == 0.0)
                    .then_some(()),
            )
        })?;
        sent.push(
            peer_metric(
                &west,
                "strait_peer_udp_bytes",
                &["peer=\"east\"", "direction=\"tx\""],
            )? - tx,
        );
        received.push(
            peer_metric(
                &west,
                "strait_peer_udp_bytes",
                &["peer=\"east\"", "direction=\"rx\""],
            )? - rx,
        );
    }

    let (baseline, frame_bytes) = in_process_baseline(&yaml)?;
    west.stop()?;
    east.stop()?;

    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "strait federation benchmark ({SERVICES} services, gateways as processes on loopback)"
    );
    println!();
    println!(
        "convergence, bulk apply then delta: {:>8.0} ms  (target < 1000 ms: {:.2}x of target)",
        converged.as_secs_f64() * 1e3,
        converged.as_secs_f64()
    );
    println!(
        "  of which the local apply (parse, persist, export): {:>6.0} ms",
        applied.as_secs_f64() * 1e3
    );
    println!(
        "  federation after the apply returned: {:>20.0} ms",
        (converged - applied).as_secs_f64() * 1e3
    );
    println!(
        "convergence, snapshot to a new link: {:>7.0} ms  (includes dial, handshake, token admission)",
        snapshot.as_secs_f64() * 1e3
    );
    println!(
        "in-process baseline (parse + export + one snapshot through session and codec, no sockets): {:.0} ms",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "  ratio, bulk convergence over the in-process baseline: {:.2}x",
        converged.as_secs_f64() / baseline.as_secs_f64()
    );
    println!();
    println!("single-service delta: frame on the control stream {frame_bytes} bytes");
    println!(
        "  UDP bytes west→east per delta (median of {SAMPLES}): {:.0}  (target < 200: {:.2}x of target)",
        median(sent.clone()),
        median(sent) / 200.0
    );
    println!(
        "  UDP bytes east→west (ack) per delta (median of {SAMPLES}): {:.0}",
        median(received)
    );
    println!();
    println!(
        "memory of east: idle {:.1} MiB, holding {SERVICES} imported services {:.1} MiB (target < 100 MB: {:.2}x of target)",
        mb(idle_rss),
        mb(loaded_rss),
        loaded_rss as f64 / 100e6
    );
    println!(
        "  per imported service: {:.0} bytes",
        (loaded_rss.saturating_sub(idle_rss)) as f64 / f64::from(SERVICES)
    );
    Ok(())
}

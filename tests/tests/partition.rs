//! A partition between two clusters, for real: west's gateway runs in a network namespace of
//! its own, and iptables inside it drops every UDP packet (QUIC) to and from east for longer
//! than the idle timeout, then lets them through again. Each side goes on with what it had
//! (fail static during the grace period), takes changes of its own meanwhile, and both
//! converge within 5 s of the heal with nothing lost. Needs root, `ip` and `iptables`; says so
//! and skips without them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::netns::Namespace;
use strait_tests::workloads::wait_connected;
use strait_tests::{Gateway, Mesh, NO_WEST_TO_API, service, wait_for};

/// The names of the policies a cluster's gateway holds, sorted.
fn policy_names(mesh: &Mesh, cluster: &str) -> Result<Vec<String>> {
    let text = mesh
        .ctl(cluster, &["get", "policies", "-o", "json"])
        .success()?;
    let list: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Moves every address of a gateway's config (and of `gateway`, and its context's API) from
/// loopback to `ip`.
fn bind_to(mesh: &Mesh, gateway: &mut Gateway, ip: &str) -> Result<()> {
    let path = gateway.dir.join("gateway.yaml");
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(&path, text.replace("127.0.0.1:", &format!("{ip}:")))?;
    let contexts = std::fs::read_to_string(&mesh.config)?;
    let api = gateway.api.to_string();
    ensure!(contexts.contains(&api), "no context holds {api}");
    std::fs::write(
        &mesh.config,
        contexts.replace(&api, &format!("{ip}:{}", gateway.api.port())),
    )?;
    for addr in [
        &mut gateway.quic,
        &mut gateway.relay,
        &mut gateway.api,
        &mut gateway.admin,
        &mut gateway.dns,
    ] {
        addr.set_ip(ip.parse()?);
    }
    Ok(())
}

/// Drops (`-I`) or lets through again (`-D`) every UDP packet in and out of the namespace.
fn udp(ns: &Namespace, action: &str) -> Result<()> {
    for chain in ["INPUT", "OUTPUT"] {
        ns.exec(&["iptables", action, chain, "-p", "udp", "-j", "DROP"])?;
    }
    Ok(())
}

#[test]
fn a_partition_keeps_each_side_serving_what_it_had_and_converges_within_5_s_of_healing()
-> Result<()> {
    if let Some(reason) = strait_tests::pods::missing() {
        println!("skipped: {reason}");
        return Ok(());
    }
    let ns = Namespace::create("pt", 232)?;
    let mesh = Mesh::new()?;
    // Default peering: a 10 s idle timeout, a 30 s grace period, dials backing off to 2 s.
    let mut east = mesh.gateway("east", None)?;
    let mut west = mesh.gateway("west", None)?;
    bind_to(&mesh, &mut east, &ns.host_ip)?;
    bind_to(&mesh, &mut west, &ns.inner_ip)?;
    west.prefix = ns.prefix();
    east.start(&mesh)?;
    west.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_connected(&mesh, "east", "west")?;
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.wait_served("east", "shop/api", &["west"], Duration::from_secs(10))?;

    // The cut: nothing passes between the gateways' QUIC endpoints.
    let cut = Instant::now();
    udp(&ns, "-I")?;
    // Each side takes changes of its own meanwhile: a policy on each, a new service in west.
    let deny = |name: &str| NO_WEST_TO_API.replace("no-west-to-api", name);
    mesh.apply("east", "east-policy.yaml", &deny("from-east"))
        .success()?;
    mesh.apply("west", "west-policy.yaml", &deny("from-west"))
        .success()?;
    mesh.apply(
        "west",
        "orders.yaml",
        &service("shop", "orders", true, 8081),
    )
    .success()?;
    // The link drops after the idle timeout; east keeps west's services (fail static).
    wait_for(
        Duration::from_secs(20),
        "east sees west disconnected",
        || Ok((mesh.link_state("east", "west")? != "connected").then_some(())),
    )?;
    let dropped_after = cut.elapsed();
    // Long enough for the dialer's backoff to reach its longest (2 s), within the grace
    // period (30 s).
    std::thread::sleep(Duration::from_secs(25).saturating_sub(cut.elapsed()));
    ensure!(
        mesh.served_from("east", "shop/api")? == ["west"],
        "east dropped west's api {:?} into a partition shorter than the grace period",
        cut.elapsed()
    );
    ensure!(policy_names(&mesh, "east")? == ["from-east"]);
    ensure!(policy_names(&mesh, "west")? == ["from-west"]);

    // The heal.
    udp(&ns, "-D")?;
    let healed = Instant::now();
    let both = vec!["from-east".to_owned(), "from-west".to_owned()];
    wait_for(
        Duration::from_secs(5),
        "one mesh again after the heal",
        || {
            let converged = mesh.served_from("east", "shop/orders")? == ["west"]
                && mesh.served_from("east", "shop/api")? == ["west"]
                && policy_names(&mesh, "east")? == both
                && policy_names(&mesh, "west")? == both;
            Ok(converged.then_some(()))
        },
    )
    .with_context(|| format!("{}\n{}", east.log_tail(), west.log_tail()))?;
    println!(
        "partition of {:?} (link dropped after {dropped_after:?}); converged {:?} after the heal",
        healed.duration_since(cut),
        healed.elapsed()
    );
    wait_connected(&mesh, "east", "west")?;
    Ok(())
}

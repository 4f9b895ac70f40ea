//! Transparent interception: an app in its own network namespace connects to an address, an
//! iptables rule redirects the connection to its sidecar, and the sidecar carries it to the
//! mesh service that address belongs to (or, outside the mesh, straight to it). The address is
//! an endpoint's, or a virtual address that the gateway's DNS gave the app's system resolver
//! for a clusterset name. Needs root, `ip`, `iptables`, `setpriv` and `curl`; says so and
//! skips without them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::netns::Namespace;
use strait_tests::pods::run;
use strait_tests::{Mesh, Process, http_get, wait_for};

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    strait_tests::pods::missing().or_else(|| {
        run("sh", &["-c", "command -v curl"])
            .is_err()
            .then(|| "needs curl".to_owned())
    })
}

#[test]
fn a_redirected_connection_reaches_the_service_by_its_address_or_its_name() -> Result<()> {
    if let Some(reason) = missing() {
        println!("skipped: {reason}");
        return Ok(());
    }
    let ns = Namespace::create("tp", 231)?;
    let mesh = Mesh::new()?;
    let mut gateway = mesh.gateway_with_api("east", &mesh.trust, None, &ns.host_ip)?;
    // The gateway's DNS where the namespace's resolver looks: port 53 of the host side.
    gateway.dns = format!("{}:53", ns.host_ip).parse()?;
    gateway.set_section("dns", &format!("  addr: {}", gateway.dns))?;
    ns.set_resolver(&ns.host_ip)?;
    gateway.start(&mesh)?;

    // The service's sidecar and an app outside the mesh, reachable from the namespace.
    let app = mesh.app("http", "east", "shop/api", "api-0")?;
    let mut args: Vec<String> = [
        "--service",
        "api",
        "--export",
        "--hostname",
        "api-0",
        "--inbound-addr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("{}:0", ns.host_ip));
    args.push("--port".into());
    args.push(format!("8080/http={}", app.addr("address")?));
    let server = mesh.sidecar("east", "shop", "api", "api-0", &args)?;
    let service_address = server.addr("inbound")?;
    let outside = Process::start(
        &mesh,
        "outside",
        &[
            "demo-app".into(),
            "--kind".into(),
            "http".into(),
            "--listen".into(),
            format!("{}:0", ns.host_ip),
            "--service".into(),
            "none/outside".into(),
        ],
    )?;
    let outside_address = outside.addr("address")?;

    // The app's sidecar inside the namespace, with a transparent port.
    let bootstrap = mesh
        .ctl(
            "east",
            &[
                "sidecar",
                "token",
                "-n",
                "shop",
                "--service-account",
                "web",
                "--gateway",
                &gateway.api.to_string(),
            ],
        )
        .success()?;
    let path = mesh.file("web.bootstrap.yaml", &bootstrap)?;
    let client = Process::start_in(
        &mesh,
        "web",
        &["ip", "netns", "exec", &ns.name],
        &[
            "sidecar".into(),
            "run".into(),
            "--bootstrap".into(),
            path.display().to_string(),
            "--transparent-addr".into(),
            "127.0.0.1:15001".into(),
            "--admin-addr".into(),
            format!("{}:0", ns.inner_ip),
        ],
    )?;
    let admin: SocketAddr = client.addr("admin")?;
    wait_for(
        Duration::from_secs(20),
        "the namespace's sidecar ready",
        || {
            Ok(http_get(admin, "/readyz")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        },
    )
    .with_context(|| client.log_tail())?;

    // The pod's rules, as the injected init container sets them (twice: a restarted init
    // container runs again): everything the app (nobody) opens goes to the transparent port,
    // the sidecar's own traffic (root here) passes, and connections to port 8080 from outside
    // go to the inbound port.
    let init: Vec<String> = [
        "sidecar",
        "init",
        "--proxy-uid",
        "0",
        "--inbound-ports",
        "8080",
        "--ipv6",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bin = strait_tests::strait_bin().display().to_string();
    let mut command = vec![bin.as_str()];
    command.extend(init.iter().map(String::as_str));
    for _ in 0..2 {
        ns.exec(&command)?;
    }
    let saved = ns.exec(&["iptables-save", "-t", "nat"])?;
    let mut dry: Vec<&str> = init.iter().map(String::as_str).collect();
    dry.push("--dry-run");
    let dry_run = mesh.cli(&dry, &[]).success()?;
    let rules = |text: &str, prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    for jump in [
        "-A PREROUTING -p tcp -j STRAIT_INBOUND",
        "-A OUTPUT -p tcp -j STRAIT_OUTPUT",
    ] {
        ensure!(rules(&saved, jump) == 1, "{jump} not there once:\n{saved}");
    }
    for chain in ["-A STRAIT_INBOUND ", "-A STRAIT_OUTPUT "] {
        ensure!(
            rules(&saved, chain) == rules(&dry_run, chain) && rules(&saved, chain) > 0,
            "{chain}: the table holds other rules than --dry-run prints:\n{saved}\n{dry_run}"
        );
    }
    // Inbound: a connection to the pod's port 8080 lands on the inbound port.
    let _inbound = Process::start_in(
        &mesh,
        "inbound",
        &["ip", "netns", "exec", &ns.name],
        &[
            "demo-app".into(),
            "--kind".into(),
            "http".into(),
            "--listen".into(),
            "0.0.0.0:15006".into(),
            "--service".into(),
            "shop/inbound".into(),
        ],
    )?;
    let (status, body) = http_get(format!("{}:8080", ns.inner_ip).parse()?, "/in")?;
    ensure!(
        status == 200 && body.contains("shop/inbound"),
        "port 8080 did not reach the inbound port: {status} {body}"
    );
    let curl = |url: &str| -> Result<Value> {
        let body = ns.exec(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "10",
            url,
        ])?;
        serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))
    };
    // A request through the redirect, retried until the sidecar has what it needs (its
    // catalog, the virtual addresses); it must reach the service with the app's identity.
    let reaches_service = |url: &str| -> Result<()> {
        let answer = wait_for(Duration::from_secs(20), url, || Ok(curl(url).ok()))
            .with_context(|| client.log_tail())?;
        let path = url.rsplit('/').next().unwrap_or_default();
        ensure!(answer["path"] == format!("/{path}"), "{url}: {answer}");
        ensure!(
            answer["caller"] == "spiffe://example.mesh/cluster/east/ns/shop/sa/web",
            "{url}: the service did not see the redirected app's identity: {answer}"
        );
        Ok(())
    };
    // Addressed to the service's endpoint: carried by the sidecars.
    reaches_service(&format!("http://{service_address}/hello"))?;
    // Not in the mesh: straight through, as if there were no sidecar.
    let answer = curl(&format!("http://{outside_address}/plain"))?;
    ensure!(
        answer["service"] == "none/outside" && answer["caller"].is_null(),
        "{answer}"
    );
    // By name: the system resolver asks the gateway, gets a virtual address, and the
    // connection to it is carried to the service, with the same identity.
    for url in [
        "http://api.shop.svc.clusterset.local:8080/by-name",
        "http://east.api.shop.svc.clusterset.local:8080/by-cluster",
        "http://api-0.east.api.shop.svc.clusterset.local:8080/by-pod",
    ] {
        reaches_service(url)?;
    }
    // A virtual address that names nothing (a stale answer) is refused at once, not dialled.
    let started = std::time::Instant::now();
    let stale = curl("http://240.240.255.254:8080/stale");
    ensure!(stale.is_err(), "{stale:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "a stale virtual address took {:?} to fail",
        started.elapsed()
    );
    Ok(())
}

//! Limits on what a stranger can make strait hold, each hit for real over loopback: the
//! connection over a cap is closed at once while those under it are served, headers over the
//! limit get a 431 naming the flag, and every refusal is counted in
//! `strait_limit_refusals_total` under the setting an operator would change.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strait_tests::workloads::{api, client, get, get_json};
use strait_tests::{Mesh, Process, http_get, metric, strait_bin, wait_for};

const REFUSALS: &str = "strait_limit_refusals_total";

/// Opens a connection and holds it. Each capped port has one accept loop that admits in the
/// order the kernel queued the connections, so the connection opened after the held ones is
/// the one over the cap.
fn hold(addr: SocketAddr) -> Result<TcpStream> {
    Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?)
}

/// Whether a new connection to `addr` is closed by the far end without a byte, after
/// `greeting` is sent (within 2 s; a connection still open then is not closed).
fn closed_at_once(addr: SocketAddr, greeting: &[u8]) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let _ = stream.write_all(greeting);
    let mut byte = [0u8; 1];
    Ok(match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(_) => false,
    })
}

/// What a new connection to `addr` reads before the far end closes it, after `greeting`
/// is sent; `None` when it is still open after 2 s.
fn answer_then_close(addr: SocketAddr, greeting: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let _ = stream.write_all(greeting);
    let mut read = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Some(read)),
            Ok(n) => read.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(Some(read)),
            Err(_) => return Ok(None),
        }
    }
}

/// Whether a held connection is still open (reading from it would block).
fn still_open(stream: &mut TcpStream) -> Result<bool> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut byte = [0u8; 1];
    Ok(match stream.read(&mut byte) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    })
}

fn refusals(admin: SocketAddr, setting: &str) -> Result<f64> {
    let (_, text) = http_get(admin, "/metrics")?;
    Ok(metric(&text, REFUSALS, &[&format!("limit=\"{setting}\"")]).unwrap_or(0.0))
}

#[test]
fn a_sidecar_refuses_connections_over_its_cap_and_headers_over_its_limit_naming_each_flag()
-> Result<()> {
    let mesh = Mesh::new()?;
    let _east = mesh.start("east", None)?;
    let app = mesh.app("http", "east", "shop/api", "api-0")?;
    let api = mesh.sidecar(
        "east",
        "shop",
        "api",
        "api-0",
        &[
            "--service".into(),
            "api".into(),
            "--port".into(),
            format!("8080/http={}", app.addr("address")?),
            "--max-header-bytes".into(),
            "2048".into(),
        ],
    )?;
    let web: Process = mesh.sidecar(
        "east",
        "shop",
        "web",
        "web-0",
        &[
            "--proxy-addr".into(),
            "127.0.0.1:0".into(),
            "--max-outbound-connections".into(),
            "3".into(),
            "--max-header-bytes".into(),
            "8192".into(),
        ],
    )?;
    let proxy = web.addr("proxy")?;
    let (web_admin, api_admin) = (web.addr("admin")?, api.addr("admin")?);
    wait_for(Duration::from_secs(20), "api.shop answered", || {
        Ok(get_json(proxy, "api.shop").ok().map(|_| ()))
    })?;

    // Headers: over the caller's limit, its own sidecar answers; under it but over the
    // callee's, the callee's sidecar does. Each 431 names the flag and its value.
    for (size, limit) in [(9_000, 8192), (3_000, 2048)] {
        let value = "a".repeat(size);
        let refused = get(proxy, "api.shop", "/", &[("x-large", &value)])?;
        ensure!(refused.status == 431, "{} {}", refused.status, refused.body);
        let reason = format!("limit --max-header-bytes = {limit} reached");
        ensure!(refused.body.contains(&reason), "{}", refused.body);
    }
    let small = get(proxy, "api.shop", "/", &[("x-small", "a")])?;
    ensure!(small.status == 200, "{} {}", small.status, small.body);
    ensure!(refusals(web_admin, "--max-header-bytes")? == 1.0);
    ensure!(refusals(api_admin, "--max-header-bytes")? == 1.0);

    // Connections: three held open, the fourth is closed unanswered and counted; the held
    // ones stay open, and one closed makes room again.
    let mut held = (0..3).map(|_| hold(proxy)).collect::<Result<Vec<_>>>()?;
    let request = b"GET / HTTP/1.0\r\nHost: api.shop\r\n\r\n";
    ensure!(
        closed_at_once(proxy, request)?,
        "a fourth connection was served"
    );
    for stream in &mut held {
        ensure!(still_open(stream)?, "a held connection was closed");
    }
    ensure!(refusals(web_admin, "--max-outbound-connections")? >= 1.0);
    held.pop();
    wait_for(
        Duration::from_secs(5),
        "room for a connection again",
        || Ok(get_json(proxy, "api.shop").ok().map(|_| ())),
    )?;
    Ok(())
}

#[test]
fn a_gateway_caps_connections_on_its_api_relay_dns_and_admin_ports_as_its_limits_say() -> Result<()>
{
    let mesh = Mesh::new()?;
    let mut east = mesh.gateway("east", None)?;
    east.set_section(
        "limits",
        "  apiConnections: 3\n  relayConnections: 2\n  dnsTcpConnections: 1\n  adminConnections: 4",
    )?;
    east.start(&mesh)?;
    let admin = east.admin;

    // Each port: the cap's worth held open (a TLS handshake, a flow header or a DNS query
    // not yet sent), then one more is closed at once; closing the held ones makes room.
    let query = {
        // A query for the zone's SOA, length-prefixed as DNS over TCP sends it.
        let mut message = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["clusterset", "local"] {
            message.push(label.len() as u8);
            message.extend_from_slice(label.as_bytes());
        }
        message.extend_from_slice(&[0, 0, 6, 0, 1]);
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&message);
        framed
    };
    for (addr, cap, setting, greeting) in [
        (east.api, 3, "limits.apiConnections", &b"\x16\x03\x01"[..]),
        (east.relay, 2, "limits.relayConnections", &b"\x00"[..]),
        (east.dns, 1, "limits.dnsTcpConnections", &query[..]),
    ] {
        let mut held = (0..cap).map(|_| hold(addr)).collect::<Result<Vec<_>>>()?;
        let answer = answer_then_close(addr, greeting)?
            .with_context(|| format!("{setting}: one over the cap was served"))?;
        // A relay flow is told why, as the flow's answer; the other ports just close.
        let reason = format!("limit {setting} = {cap} reached");
        if setting == "limits.relayConnections" {
            ensure!(
                String::from_utf8_lossy(&answer).contains(&reason),
                "{setting}: the refusal does not say {reason:?}: {answer:?}"
            );
        } else {
            ensure!(answer.is_empty(), "{setting}: answered {answer:?}");
        }
        for stream in &mut held {
            ensure!(
                still_open(stream)?,
                "{setting}: a held connection was closed"
            );
        }
        drop(held);
        ensure!(
            refusals(admin, setting)? >= 1.0,
            "{setting}: the refusal was not counted"
        );
    }
    // The API serves again once the held connections are gone.
    wait_for(Duration::from_secs(5), "the API serving again", || {
        Ok(mesh
            .ctl("east", &["get", "links"])
            .success()
            .ok()
            .map(|_| ()))
    })?;
    // DNS over TCP answers again: an answer to the query (its ID, 0x1234, after the length).
    wait_for(
        Duration::from_secs(5),
        "DNS over TCP answering again",
        || {
            let mut stream = TcpStream::connect_timeout(&east.dns, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(&query)?;
            let mut head = [0u8; 4];
            Ok(stream
                .read_exact(&mut head)
                .ok()
                .filter(|()| head[2..] == [0x12, 0x34]))
        },
    )?;

    // The admin port: four held, the fifth closed; counted once room is made to read it.
    let held = (0..4).map(|_| hold(admin)).collect::<Result<Vec<_>>>()?;
    ensure!(
        closed_at_once(admin, b"GET /metrics HTTP/1.0\r\n\r\n")?,
        "a fifth admin connection was served"
    );
    drop(held);
    let counted = wait_for(Duration::from_secs(5), "the admin port serving", || {
        Ok(refusals(admin, "limits.adminConnections").ok())
    })
    .context("reading the admin refusals")?;
    ensure!(counted >= 1.0, "the admin refusal was not counted");
    Ok(())
}

/// Sends one keep-alive GET for `host` on `stream` and reads its answer whole; the status.
fn keep_alive_get(stream: &mut TcpStream, host: &str) -> Result<u16> {
    write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(stream.read(&mut byte)? == 1, "closed in the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .context("an answer without content-length")?
        .trim()
        .parse()?;
    stream.read_exact(&mut vec![0; length])?;
    Ok(head.get(9..12).unwrap_or_default().parse()?)
}

#[test]
fn an_idle_keep_alive_connection_costs_the_sidecar_less_than_8_kib() -> Result<()> {
    const HELD: usize = 2_000;
    let mesh = Mesh::new()?;
    let _east = mesh.start("east", None)?;
    let _api = api(&mesh, "east", "api-0")?;
    let web = client(&mesh, "east", &[])?;
    let proxy = web.addr("proxy")?;
    wait_for(Duration::from_secs(20), "api.shop answered", || {
        Ok(get_json(proxy, "api.shop").ok().map(|_| ()))
    })?;
    let hold_some = |count: usize| -> Result<Vec<TcpStream>> {
        (0..count)
            .map(|_| {
                let mut stream = hold(proxy)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let status = keep_alive_get(&mut stream, "api.shop")?;
                ensure!(status == 200, "status {status}");
                Ok(stream)
            })
            .collect()
    };
    // A first few held, so that what the path touches once is in before the measure.
    let mut held = hold_some(100)?;
    let before = web.memory("VmRSS")?;
    held.extend(hold_some(HELD)?);
    let during = web.memory("VmRSS")?;
    let each = during.saturating_sub(before) as f64 / HELD as f64 / 1024.0;
    println!(
        "{HELD} idle keep-alive connections: {} → {} KiB resident, {each:.2} KiB each",
        before >> 10,
        during >> 10
    );
    ensure!(each < 8.0, "{each:.2} KiB per idle connection");
    // Parked connections still serve their next request.
    for stream in held.iter_mut().step_by(100) {
        ensure!(keep_alive_get(stream, "api.shop")? == 200);
    }
    Ok(())
}

/// The binary a running process executes.
fn executable(process: &Process) -> Result<std::path::PathBuf> {
    let pid = process.pid().context("the process is running")?;
    Ok(std::fs::read_link(format!("/proc/{pid}/exe"))?)
}

/// `strait` in `dir`, as a hard link (a copy across file systems): a `strait` with no
/// `strait-proxy` of this build next to it.
fn lone_strait(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let lone = dir.join("strait");
    if std::fs::hard_link(strait_bin(), &lone).is_err() {
        std::fs::copy(strait_bin(), &lone)?;
    }
    Ok(lone)
}

#[test]
fn sidecar_run_is_handed_to_strait_proxy_and_runs_in_strait_when_there_is_none() -> Result<()> {
    if !cfg!(target_os = "linux") {
        println!("skipped: reads /proc");
        return Ok(());
    }
    let beside = strait_bin().with_file_name("strait-proxy");
    if !beside.is_file() {
        println!(
            "skipped: no strait-proxy beside {} (STRAIT_BIN without it)",
            strait_bin().display()
        );
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let _east = mesh.start("east", None)?;
    // `strait sidecar run`, with strait-proxy beside strait: the sidecar runs from strait-proxy.
    let api = api(&mesh, "east", "api-0")?;
    let exe = executable(&api.sidecar)?;
    ensure!(
        exe.file_name() == Some("strait-proxy".as_ref()),
        "the sidecar runs {}",
        exe.display()
    );
    // With glibc's per-thread cache of freed memory raised, as the hand-over sets it (unless
    // the caller set the variable: then the caller's).
    let expected = format!(
        "GLIBC_TUNABLES={}",
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "glibc.malloc.tcache_count=64".into())
    );
    let pid = api.sidecar.pid().context("the sidecar is running")?;
    let environment = std::fs::read(format!("/proc/{pid}/environ"))?;
    ensure!(
        environment
            .split(|byte| *byte == 0)
            .any(|entry| entry == expected.as_bytes()),
        "the handed-over sidecar lacks {expected}"
    );

    // A strait alone, and one beside a strait-proxy of another version: both run the sidecar
    // themselves, and it serves.
    let alone = tempfile::tempdir()?;
    let skewed = tempfile::tempdir()?;
    let stranger = skewed.path().join("strait-proxy");
    std::fs::write(
        &stranger,
        "#!/bin/sh\necho strait-proxy 0.0.0-other\nexit 0\n",
    )?;
    std::fs::set_permissions(
        &stranger,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    for (dir, name) in [(alone.path(), "web-alone"), (skewed.path(), "web-skewed")] {
        let program = lone_strait(dir)?;
        let args = ["--proxy-addr".to_owned(), "127.0.0.1:0".into()];
        let web = mesh.sidecar_from(&program, "east", "shop", "web", name, &args)?;
        ensure!(
            executable(&web)? == program,
            "{name} runs {}",
            executable(&web)?.display()
        );
        let proxy = web.addr("proxy")?;
        wait_for(Duration::from_secs(20), "api.shop answered", || {
            Ok(get_json(proxy, "api.shop").ok().map(|_| ()))
        })
        .with_context(|| web.log_tail())?;
    }
    Ok(())
}

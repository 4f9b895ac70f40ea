//! The gateway's DNS server, asked by real clients over real sockets: hickory's resolver over
//! UDP and TCP, and `dig` where it is installed. Two gateways (east, west) are linked; west
//! exports services and east answers for them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};
use strait_tests::{Gateway, Mesh, wait_for};

/// West's services: `api` (exported, one endpoint with a pod name, two ports) and `ledger`
/// (not exported).
const WEST_SERVICES: &str = "kind: Service
metadata: {name: api, namespace: shop}
spec:
  export: true
  ports: [{name: http, port: 8080, protocol: http}, {name: grpc, port: 9090, protocol: grpc}]
  endpoints: [{address: 127.0.0.1:9001, hostname: api-0}]
---
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  export: false
  ports: [{name: db, port: 5432, protocol: tcp}]
  endpoints: [{address: 127.0.0.1:9002}]
";

/// East and west, linked, with west's services applied and seen by east.
fn linked_pair(mesh: &Mesh) -> Result<(Gateway, Gateway)> {
    let east = mesh.start("east", None)?;
    let west = mesh.start("west", None)?;
    mesh.link("east", "west")?;
    mesh.apply("west", "west.yaml", WEST_SERVICES).success()?;
    mesh.wait_served("east", "shop/api", &["west"], Duration::from_secs(10))?;
    // The zone is rebuilt a moment after the catalog changes: wait for the names too.
    let runtime = runtime()?;
    let resolver = resolver(east.dns, ProtocolConfig::Udp)?;
    wait_for(
        Duration::from_secs(10),
        "east's DNS answering for west's api",
        || {
            let answer = runtime.block_on(ask(
                &resolver,
                "api-0.west.api.shop.svc.clusterset.local",
                RecordType::A,
            ));
            Ok(in_vip_range(&answer).then_some(()))
        },
    )?;
    Ok((east, west))
}

/// A resolver that asks one server over one transport and caches nothing.
fn resolver(server: SocketAddr, protocol: ProtocolConfig) -> Result<TokioResolver> {
    let mut connection = ConnectionConfig::new(protocol);
    connection.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        vec![connection],
    )]);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(2);
    Ok(
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()?,
    )
}

/// What a lookup gave, as one comparable line: the records, or the response code.
async fn ask(resolver: &TokioResolver, name: &str, rtype: RecordType) -> String {
    match resolver.lookup(format!("{name}."), rtype).await {
        Ok(lookup) => {
            let mut records: Vec<String> = lookup
                .answers()
                .iter()
                .map(|record| match &record.data {
                    RData::A(a) => format!("A {}", a.0),
                    RData::AAAA(a) => format!("AAAA {}", a.0),
                    RData::SRV(srv) => format!("SRV {} {}", srv.port, srv.target),
                    other => format!("{other:?}"),
                })
                .collect();
            records.sort();
            records.join(", ")
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
            format!("no records ({})", none.response_code)
        }
        Err(NetError::Dns(DnsError::ResponseCode(code))) => format!("rcode {code}"),
        Err(other) => format!("error {other}"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn in_vip_range(answer: &str) -> bool {
    answer
        .strip_prefix("A ")
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]))
}

#[test]
fn every_name_form_is_answered_alike_over_udp_and_tcp() -> Result<()> {
    let mesh = Mesh::new()?;
    let (east, _west) = linked_pair(&mesh)?;
    let runtime = runtime()?;
    let names = [
        ("api.shop.svc.clusterset.local", RecordType::A),
        ("west.api.shop.svc.clusterset.local", RecordType::A),
        ("api-0.west.api.shop.svc.clusterset.local", RecordType::A),
        ("API.Shop.SVC.clusterset.local", RecordType::A),
        ("_http._tcp.api.shop.svc.clusterset.local", RecordType::SRV),
        (
            "_grpc._tcp.west.api.shop.svc.clusterset.local",
            RecordType::SRV,
        ),
        ("api.shop.svc.clusterset.local", RecordType::AAAA),
        ("shop.svc.clusterset.local", RecordType::A),
        ("nothere.shop.svc.clusterset.local", RecordType::A),
        ("ledger.shop.svc.clusterset.local", RecordType::A),
        ("east.api.shop.svc.clusterset.local", RecordType::A),
        ("api.shop.svc.cluster.local", RecordType::A),
    ];
    let mut by_transport = Vec::new();
    for protocol in [ProtocolConfig::Udp, ProtocolConfig::Tcp] {
        let resolver = resolver(east.dns, protocol)?;
        let answers: BTreeMap<String, String> = runtime.block_on(async {
            let mut answers = BTreeMap::new();
            for (name, rtype) in names {
                answers.insert(format!("{name} {rtype}"), ask(&resolver, name, rtype).await);
            }
            answers
        });
        by_transport.push(answers);
    }
    let answers = &by_transport[0];
    assert_eq!(answers, &by_transport[1], "UDP and TCP answer alike");
    let get = |key: &str| answers[key].as_str();
    let clusterset = get("api.shop.svc.clusterset.local A");
    let in_west = get("west.api.shop.svc.clusterset.local A");
    let pod = get("api-0.west.api.shop.svc.clusterset.local A");
    for answer in [clusterset, in_west, pod] {
        assert!(in_vip_range(answer), "{answers:#?}");
    }
    assert!(clusterset != in_west && in_west != pod && clusterset != pod);
    assert_eq!(
        get("API.Shop.SVC.clusterset.local A"),
        clusterset,
        "names ignore case"
    );
    assert_eq!(
        get("_http._tcp.api.shop.svc.clusterset.local SRV"),
        "SRV 8080 api.shop.svc.clusterset.local."
    );
    assert_eq!(
        get("_grpc._tcp.west.api.shop.svc.clusterset.local SRV"),
        "SRV 9090 west.api.shop.svc.clusterset.local."
    );
    // The name exists without that type, or is an empty non-terminal: no data, not NXDOMAIN.
    assert_eq!(
        get("api.shop.svc.clusterset.local AAAA"),
        "no records (No Error)"
    );
    assert_eq!(get("shop.svc.clusterset.local A"), "no records (No Error)");
    // Not exported anywhere, exported by another cluster only, or not ours to answer.
    for name in [
        "nothere.shop.svc.clusterset.local A",
        "ledger.shop.svc.clusterset.local A",
        "east.api.shop.svc.clusterset.local A",
    ] {
        assert_eq!(get(name), "no records (Non-Existent Domain)", "{name}");
    }
    assert!(
        get("api.shop.svc.cluster.local A").contains("Refused"),
        "{answers:#?}"
    );
    Ok(())
}

/// `dig`, as the acceptance check runs it; skipped where dig is not installed.
fn dig(server: SocketAddr, args: &[&str]) -> Option<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn dig_gets_addresses_and_nxdomain_over_udp_and_tcp() -> Result<()> {
    if dig("127.0.0.1:53".parse()?, &["-v"]).is_none() {
        eprintln!("skipped: dig is not installed (Debian package bind9-dnsutils)");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let (east, _west) = linked_pair(&mesh)?;
    for transport in ["+notcp", "+tcp"] {
        for name in [
            "api.shop.svc.clusterset.local",
            "west.api.shop.svc.clusterset.local",
        ] {
            let short = dig(east.dns, &[name, "A", "+short", transport]).unwrap_or_default();
            let address: IpAddr = short
                .trim()
                .parse()
                .with_context(|| format!("dig {name} {transport}: {short:?}"))?;
            assert!(matches!(address, IpAddr::V4(_)), "{short}");
        }
        let missing = dig(
            east.dns,
            &["nothere.shop.svc.clusterset.local", "A", transport],
        )
        .unwrap_or_default();
        assert!(missing.contains("status: NXDOMAIN"), "{missing}");
        // The answer is authoritative and carries the zone's SOA for negative caching.
        assert!(missing.contains(" aa"), "{missing}");
        assert!(missing.contains("IN\tSOA"), "{missing}");
    }
    Ok(())
}

/// Asks until `check` accepts the answer; returns how long it took.
fn wait_answer(
    runtime: &tokio::runtime::Runtime,
    resolver: &TokioResolver,
    name: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    wait_for(Duration::from_secs(10), what, || {
        let answer = runtime.block_on(ask(resolver, name, RecordType::A));
        Ok(check(&answer).then_some(()))
    })?;
    Ok(start.elapsed())
}

#[test]
fn a_name_appears_when_a_service_is_exported_and_goes_when_it_is_withdrawn() -> Result<()> {
    let mesh = Mesh::new()?;
    let (east, _west) = linked_pair(&mesh)?;
    let runtime = runtime()?;
    let resolver = resolver(east.dns, ProtocolConfig::Udp)?;
    let name = "late.shop.svc.clusterset.local";
    assert!(
        runtime
            .block_on(ask(&resolver, name, RecordType::A))
            .contains("Non-Existent")
    );
    let exported = strait_tests::service("shop", "late", true, 8080);
    mesh.apply("west", "late.yaml", &exported).success()?;
    let appeared = wait_answer(&runtime, &resolver, name, "the new name", in_vip_range)?;
    let withdrawn = strait_tests::service("shop", "late", false, 8080);
    mesh.apply("west", "late.yaml", &withdrawn).success()?;
    let gone = wait_answer(&runtime, &resolver, name, "the name to go", |a| {
        a.contains("Non-Existent")
    })?;
    eprintln!("appeared in east {appeared:?} after west's apply; gone {gone:?} after withdrawal");
    Ok(())
}

#[test]
fn virtual_addresses_survive_a_gateway_restart() -> Result<()> {
    let mesh = Mesh::new()?;
    let (mut east, _west) = linked_pair(&mesh)?;
    // Names in both orders of arrival: a few more services, exported from east itself.
    let mut local = String::new();
    for i in 0..20 {
        local.push_str(&strait_tests::service("shop", &format!("s{i}"), true, 8080));
        local.push_str("---\n");
    }
    mesh.apply("east", "local.yaml", &local).success()?;
    let runtime = runtime()?;
    let names: Vec<String> = (0..20)
        .map(|i| format!("s{i}.shop.svc.clusterset.local"))
        .chain(["west.api.shop.svc.clusterset.local".to_owned()])
        .collect();
    let snapshot = |resolver: &TokioResolver| -> Result<BTreeMap<String, String>> {
        let mut answers = BTreeMap::new();
        for name in &names {
            let answer = runtime.block_on(ask(resolver, name, RecordType::A));
            if !in_vip_range(&answer) {
                bail!("{name}: {answer}");
            }
            answers.insert(name.clone(), answer);
        }
        Ok(answers)
    };
    let before = wait_for(Duration::from_secs(10), "every name answered", || {
        Ok(snapshot(&resolver(east.dns, ProtocolConfig::Udp)?).ok())
    })?;
    east.stop()?;
    east.start(&mesh)?;
    let after = wait_for(Duration::from_secs(10), "every name answered again", || {
        Ok(snapshot(&resolver(east.dns, ProtocolConfig::Udp)?).ok())
    })?;
    assert_eq!(before, after);
    Ok(())
}

#[test]
fn malformed_oversized_and_stalled_queries_leave_the_server_answering() -> Result<()> {
    use std::io::{Read, Write};
    let mesh = Mesh::new()?;
    let (east, _west) = linked_pair(&mesh)?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    udp.set_read_timeout(Some(Duration::from_millis(300)))?;
    // Runts, a response, garbage, a datagram larger than any query, a pointer loop.
    let mut garbage = vec![0xA5u8; 9000];
    garbage[2] = 0x01;
    let packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 11],
        vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0],
        garbage,
        vec![
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xC0, 12, 0, 1, 0, 1,
        ],
    ];
    for packet in &packets {
        udp.send_to(packet, east.dns)?;
    }
    let mut buffer = [0u8; 2048];
    let mut answered = 0;
    while let Ok((n, _)) = udp.recv_from(&mut buffer) {
        assert!(n >= 12);
        answered += 1;
    }
    // The garbage and the pointer loop get FORMERR; runts and the response get nothing.
    assert_eq!(answered, 2, "answers to five hostile packets");
    // TCP: one connection that never sends, one that announces 65535 bytes and stops, one
    // that sends a runt.
    let _idle = std::net::TcpStream::connect(east.dns)?;
    let mut stalled = std::net::TcpStream::connect(east.dns)?;
    stalled.write_all(&[0xFF, 0xFF, 1, 2, 3])?;
    let mut runt = std::net::TcpStream::connect(east.dns)?;
    runt.write_all(&[0, 3, 1, 2, 3])?;
    runt.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut rest = Vec::new();
    let closed = runt.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)),
        "a runt closes its connection: {closed:?}"
    );
    // The server still answers, on both transports.
    let runtime = runtime()?;
    for protocol in [ProtocolConfig::Udp, ProtocolConfig::Tcp] {
        let answer = runtime.block_on(ask(
            &resolver(east.dns, protocol)?,
            "api.shop.svc.clusterset.local",
            RecordType::A,
        ));
        assert!(in_vip_range(&answer), "{answer}");
    }
    let metrics = east.metrics()?;
    let formerr = strait_tests::metric(
        &metrics,
        "strait_dns_answers_total",
        &["transport=\"udp\"", "rcode=\"formerr\""],
    );
    assert!(formerr.unwrap_or(0.0) >= 2.0, "{metrics}");
    Ok(())
}

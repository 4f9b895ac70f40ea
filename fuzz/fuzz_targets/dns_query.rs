//! Throws arbitrary packets at the gateway's DNS answer path, over UDP and TCP, and checks what
//! comes back against an independent reader (hickory-proto) and a few rules of the protocol.
//! See ../README.md for the invariants.

#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use strait_federation::catalog::{
    ClustersetService, Endpoint, Port, Protocol, ServiceKey, ServiceSpec,
};
use strait_federation::identity::ClusterName;
use strait_gateway::dns::Transport;
use strait_gateway::dns::vip::{CidrRange, VipPool};
use strait_gateway::dns::wire;
use strait_gateway::dns::zone::{Zone, ZoneSettings};

/// Built once: the zone does not change between inputs.
static ZONE: LazyLock<Zone> = LazyLock::new(build_zone);

fuzz_target!(|packet: &[u8]| {
    check(&ZONE, packet);
});

fn port(name: &str, port: u16) -> Port {
    Port {
        name: name.into(),
        port,
        protocol: Protocol::Http,
    }
}

fn spec(export: bool, ports: Vec<Port>, pods: &[&str]) -> ServiceSpec {
    ServiceSpec {
        export,
        ports,
        endpoints: pods
            .iter()
            .enumerate()
            .map(|(i, pod)| Endpoint {
                address: format!("10.1.0.{}:8080", i + 1).parse().unwrap(),
                hostname: Some((*pod).into()),
                ready: true,
            })
            .collect(),
        labels: Default::default(),
    }
}

fn service(name: &str, backends: Vec<(&str, ServiceSpec)>) -> ClustersetService {
    ClustersetService {
        key: ServiceKey {
            namespace: "shop".parse().unwrap(),
            name: name.parse().unwrap(),
        },
        exported: backends[0].1.export,
        backends: backends
            .into_iter()
            .map(|(cluster, spec)| (ClusterName::new(cluster).unwrap(), spec))
            .collect(),
    }
}

/// East's view of the clusterset: services on east and west, pod names (one as long as a label
/// may be), several ports, a name with more SRV records than fit in a UDP answer (the catalog
/// would refuse the repeated port name; the zone takes what it is given), a service east does
/// not export, and IPv6 addresses beside the IPv4 ones.
fn build_zone() -> Zone {
    let web = || {
        vec![
            port("http", 8080),
            port("grpc", 9090),
            port("metrics", 9100),
        ]
    };
    let long_pod = "p".repeat(63);
    let services = vec![
        service(
            "api",
            vec![
                ("east", spec(true, web(), &["api-0", "api-1"])),
                ("west", spec(true, web(), &["api-7", &long_pod])),
            ],
        ),
        service(
            "orders",
            vec![(
                "west",
                spec(
                    true,
                    vec![port("http", 80), port("admin", 8081)],
                    &["orders-0", "orders-1", "orders-2"],
                ),
            )],
        ),
        service("ledger", vec![("east", spec(false, web(), &["ledger-0"]))]),
        service(
            "bulk",
            vec![(
                "east",
                spec(true, (0..80).map(|i| port("tcp", 7000 + i)).collect(), &[]),
            )],
        ),
    ];
    let mut pool = VipPool::new(
        CidrRange::parse("240.240.0.0/16").unwrap(),
        Some(CidrRange::parse("fd00:5354::/112").unwrap()),
    );
    let settings = ZoneSettings {
        origin: "clusterset.local".into(),
        ttl: 5,
        server: None,
    };
    let local = ClusterName::new("east").unwrap();
    Zone::build(&settings, 1, &local, &services, &mut pool)
}

/// The length of the question section when the packet is a standard query (QR clear, opcode 0)
/// with exactly one question whose name is plain labels within 255 bytes, read here without
/// the gateway's parser.
fn plain_question(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 || (packet[2] >> 3) & 0x0F != 0 {
        return None;
    }
    if packet[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        at += len;
    }
    let name = at - 12;
    (name <= 255 && at + 4 <= packet.len()).then_some(name + 4)
}

/// Answers `packet` over both transports and checks every invariant.
fn check(zone: &Zone, packet: &[u8]) {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let udp_rcode = zone.answer(packet, &mut udp, Transport::Udp);
    let tcp_rcode = zone.answer(packet, &mut tcp, Transport::Tcp);
    let deserves_answer = packet.len() >= 12 && packet[2] & 0x80 == 0;
    assert_eq!(udp_rcode.is_some(), deserves_answer, "UDP answered or not");
    assert_eq!(tcp_rcode.is_some(), deserves_answer, "TCP answered or not");
    let (Some(udp_rcode), Some(tcp_rcode)) = (udp_rcode, tcp_rcode) else {
        return;
    };
    assert_eq!(udp_rcode, tcp_rcode, "the same code over both transports");
    let query_edns = wire::parse(packet).is_some_and(|(query, _)| query.edns.is_some());
    let udp_message = check_answer(packet, &udp, udp_rcode, query_edns);
    let tcp_message = check_answer(packet, &tcp, tcp_rcode, query_edns);

    let udp_limit = if query_edns {
        wire::EDNS_UDP_LIMIT
    } else {
        wire::PLAIN_UDP_LIMIT
    };
    assert!(
        udp.len() <= udp_limit,
        "UDP answer of {} bytes (EDNS in query: {query_edns})",
        udp.len()
    );
    assert!(tcp.len() <= usize::from(u16::MAX), "TCP answer too long");
    assert!(!tcp_message.metadata.truncation, "TC set over TCP");
    if !udp_message.metadata.truncation {
        // Only additional records may be left out without saying so.
        assert_eq!(udp_message.answers, tcp_message.answers, "UDP without TC");
        assert_eq!(
            udp_message.authorities, tcp_message.authorities,
            "UDP without TC"
        );
    }
    if tcp.len() <= wire::PLAIN_UDP_LIMIT {
        assert_eq!(
            udp, tcp,
            "an answer that fits is the same over both transports"
        );
    }
}

/// The invariants of one answer; returns it parsed.
fn check_answer(packet: &[u8], out: &[u8], rcode: wire::Rcode, query_edns: bool) -> Message {
    let message = match Message::from_vec(out) {
        Ok(message) => message,
        Err(error) => panic!("the answer does not parse ({error}): {out:02x?}"),
    };
    assert_eq!(out[..2], packet[..2], "the ID is echoed");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(
        u16::from(message.metadata.response_code),
        rcode.code(),
        "the code returned is the code sent"
    );
    assert_eq!(
        message.edns.is_some(),
        query_edns,
        "an OPT record in the answer exactly when the query had one"
    );
    match plain_question(packet) {
        Some(len) => {
            assert_eq!(out[4..6], [0, 1], "one question in the answer");
            assert_eq!(
                out.get(12..12 + len),
                Some(&packet[12..12 + len]),
                "the question is echoed as sent"
            );
            assert_eq!(message.queries.len(), 1);
        }
        None => assert_eq!(out[4..6], [0, 0], "no question in the answer"),
    }
    message
}

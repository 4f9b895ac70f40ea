//! What the DNS answer path must do with any packet, shared by the mutation test here and the
//! cargo-fuzz target in fuzz/ (which includes this file): the zone both throw packets at, and
//! the invariants every answer keeps, checked against an independent reader (hickory-proto).

use hickory_proto::op::{Message, MessageType};
use strait_federation::catalog::{
    ClustersetService, Endpoint, Port, Protocol, ServiceKey, ServiceSpec,
};
use strait_federation::identity::ClusterName;
use strait_gateway::dns::Transport;
use strait_gateway::dns::vip::{CidrRange, VipPool};
use strait_gateway::dns::wire::{self, Rcode};
use strait_gateway::dns::zone::{Zone, ZoneSettings};

pub fn port(name: &str, port: u16) -> Port {
    Port {
        name: name.into(),
        port,
        protocol: Protocol::Http,
    }
}

pub fn spec(export: bool, ports: Vec<Port>, pods: &[&str]) -> ServiceSpec {
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
        exported_at_ms: 0,
    }
}

pub fn service(name: &str, backends: Vec<(&str, ServiceSpec)>) -> ClustersetService {
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
pub fn build_zone() -> Zone {
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
pub fn plain_question(packet: &[u8]) -> Option<usize> {
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

/// Answers `packet` over both transports and checks every invariant; returns the UDP answer's
/// code.
pub fn check(zone: &Zone, packet: &[u8]) -> Option<Rcode> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let udp_rcode = zone.answer(packet, &mut udp, Transport::Udp);
    let tcp_rcode = zone.answer(packet, &mut tcp, Transport::Tcp);
    let deserves_answer = packet.len() >= 12 && packet[2] & 0x80 == 0;
    assert_eq!(udp_rcode.is_some(), deserves_answer, "UDP: {packet:02x?}");
    assert_eq!(tcp_rcode.is_some(), deserves_answer, "TCP: {packet:02x?}");
    let (Some(udp_rcode), Some(tcp_rcode)) = (udp_rcode, tcp_rcode) else {
        return None;
    };
    assert_eq!(udp_rcode, tcp_rcode, "{packet:02x?}");
    let query_edns = wire::parse(packet).is_some_and(|(query, _)| query.edns.is_some());
    let udp_message = check_answer(packet, &udp, udp_rcode, query_edns);
    let tcp_message = check_answer(packet, &tcp, tcp_rcode, query_edns);
    let udp_limit = if query_edns {
        wire::EDNS_UDP_LIMIT
    } else {
        wire::PLAIN_UDP_LIMIT
    };
    assert!(udp.len() <= udp_limit, "{} bytes: {packet:02x?}", udp.len());
    assert!(
        !tcp_message.metadata.truncation,
        "TC over TCP: {packet:02x?}"
    );
    if !udp_message.metadata.truncation {
        // Only additional records may be left out without saying so.
        assert_eq!(udp_message.answers, tcp_message.answers, "{packet:02x?}");
        assert_eq!(
            udp_message.authorities, tcp_message.authorities,
            "{packet:02x?}"
        );
    }
    if tcp.len() <= wire::PLAIN_UDP_LIMIT {
        assert_eq!(udp, tcp, "an answer that fits differs: {packet:02x?}");
    }
    Some(udp_rcode)
}

/// The invariants of one answer; returns it parsed.
pub fn check_answer(packet: &[u8], out: &[u8], rcode: Rcode, query_edns: bool) -> Message {
    let message = match Message::from_vec(out) {
        Ok(message) => message,
        Err(error) => panic!("unparsable answer ({error}) {out:02x?} to {packet:02x?}"),
    };
    assert_eq!(out[..2], packet[..2], "ID: {packet:02x?}");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(
        u16::from(message.metadata.response_code),
        rcode.code(),
        "{packet:02x?}"
    );
    assert_eq!(message.edns.is_some(), query_edns, "OPT: {packet:02x?}");
    match plain_question(packet) {
        Some(len) => {
            assert_eq!(out[4..6], [0, 1], "one question: {packet:02x?}");
            assert_eq!(
                out.get(12..12 + len),
                Some(&packet[12..12 + len]),
                "question echoed: {packet:02x?}"
            );
            assert_eq!(message.queries.len(), 1);
        }
        None => assert_eq!(out[4..6], [0, 0], "no question: {packet:02x?}"),
    }
    message
}

//! The zone's names and answers, and its changes in place against a rebuilt zone.

use super::*;
use crate::dns::vip::CidrRange;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use strait_federation::catalog::{Endpoint, Port, Protocol, ServiceSpec};
use strait_federation::seeded::Seeded;

fn spec(export: bool, pods: &[&str]) -> ServiceSpec {
    ServiceSpec {
        export,
        ports: vec![
            Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            },
            Port {
                name: "metrics".into(),
                port: 9090,
                protocol: Protocol::Http,
            },
        ],
        endpoints: pods
            .iter()
            .enumerate()
            .map(|(i, pod)| Endpoint {
                address: format!("10.0.0.{}:8080", i + 1).parse().unwrap(),
                hostname: Some((*pod).into()),
                ready: true,
            })
            .collect(),
        labels: Default::default(),
        exported_at_ms: 0,
    }
}

fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

fn service(name: &str, backends: Vec<(&str, ServiceSpec)>) -> ClustersetService {
    ClustersetService {
        key: ServiceKey {
            namespace: "shop".parse().unwrap(),
            name: name.parse().unwrap(),
        },
        exported: backends[0].1.export,
        backends: backends.into_iter().map(|(c, s)| (cluster(c), s)).collect(),
    }
}

/// East's view: its own api (exported) and ledger (not), west's api and orders.
fn zone(v6: bool) -> Zone {
    let services = vec![
        service(
            "api",
            vec![
                ("east", spec(true, &["api-0"])),
                ("west", spec(true, &["api-7"])),
            ],
        ),
        service("ledger", vec![("east", spec(false, &["ledger-0"]))]),
        service("orders", vec![("west", spec(true, &[]))]),
    ];
    let mut pool = VipPool::new(
        CidrRange::parse("240.240.0.0/16").unwrap(),
        v6.then(|| CidrRange::parse("fd00:5354::/112").unwrap()),
    );
    let settings = ZoneSettings {
        origin: "clusterset.local".into(),
        ttl: 5,
        server: Some("127.0.0.1".parse().unwrap()),
    };
    Zone::build(&settings, 7, &cluster("east"), &services, &mut pool)
}

fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    crate::dns::wire::tests::query(name, qtype, edns)
}

fn ask(zone: &Zone, packet: &[u8], transport: Transport) -> Message {
    let mut out = Vec::new();
    zone.answer(packet, &mut out, transport).expect("an answer");
    Message::from_vec(&out).expect("the answer parses")
}

#[test]
fn exported_services_have_every_name_form_and_others_have_none() {
    let zone = zone(false);
    for name in [
        "api.shop.svc.clusterset.local",
        "east.api.shop.svc.clusterset.local",
        "west.api.shop.svc.clusterset.local",
        "api-0.east.api.shop.svc.clusterset.local",
        "api-7.west.api.shop.svc.clusterset.local",
        "orders.shop.svc.clusterset.local",
        "west.orders.shop.svc.clusterset.local",
    ] {
        assert!(zone.node(name).is_some_and(|n| n.v4.is_some()), "{name}");
    }
    for name in [
        "ledger.shop.svc.clusterset.local",
        "east.ledger.shop.svc.clusterset.local",
        "east.orders.shop.svc.clusterset.local",
    ] {
        assert!(zone.node(name).is_none(), "{name}");
    }
    let srv = zone
        .node("_http._tcp.api.shop.svc.clusterset.local")
        .unwrap();
    assert_eq!(srv.srv.len(), 1);
    assert!(
        zone.node("shop.svc.clusterset.local").is_some(),
        "empty non-terminal"
    );
    let addresses: std::collections::HashSet<_> = zone.virtual_names().map(|n| n.vips.v4).collect();
    assert_eq!(
        addresses.len(),
        zone.virtual_names().count(),
        "no address twice"
    );
}

#[test]
fn a_found_name_answers_its_address_with_the_question_as_sent() {
    let zone = zone(false);
    let message = ask(
        &zone,
        &query("API.shop.svc.clusterset.local", 1, None),
        Transport::Udp,
    );
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert!(message.metadata.authoritative);
    assert_eq!(
        message.queries[0].name().to_string(),
        "API.shop.svc.clusterset.local."
    );
    let expected = zone
        .node("api.shop.svc.clusterset.local")
        .unwrap()
        .v4
        .unwrap();
    match message.answers[0].data {
        RData::A(a) => assert_eq!(a.0, expected),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(message.answers[0].ttl, 5);
}

#[test]
fn missing_names_types_and_zones_get_the_right_codes() {
    let zone = zone(false);
    let cases = [
        (
            "nothere.shop.svc.clusterset.local",
            1,
            ResponseCode::NXDomain,
            true,
        ),
        (
            "ledger.shop.svc.clusterset.local",
            1,
            ResponseCode::NXDomain,
            true,
        ),
        (
            "api.shop.svc.clusterset.local",
            28,
            ResponseCode::NoError,
            true,
        ),
        ("shop.svc.clusterset.local", 1, ResponseCode::NoError, true),
        (
            "api.shop.svc.cluster.local",
            1,
            ResponseCode::Refused,
            false,
        ),
        ("example.com", 1, ResponseCode::Refused, false),
        ("clusterset.local", 252, ResponseCode::Refused, false),
    ];
    for (name, qtype, code, has_soa) in cases {
        let message = ask(&zone, &query(name, qtype, Some(1232)), Transport::Udp);
        assert_eq!(message.metadata.response_code, code, "{name}");
        assert!(message.answers.is_empty(), "{name}");
        let soa = message
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA);
        assert_eq!(soa, has_soa, "{name}: SOA in the authority section");
        assert!(message.edns.is_some(), "{name}: EDNS is answered with EDNS");
    }
}

#[test]
fn aaaa_records_come_with_an_ipv6_range() {
    let zone = zone(true);
    let message = ask(
        &zone,
        &query("api.shop.svc.clusterset.local", 28, None),
        Transport::Udp,
    );
    assert!(matches!(message.answers[0].data, RData::AAAA(_)));
}

#[test]
fn srv_names_point_at_the_service_with_its_address_added() {
    let zone = zone(false);
    let message = ask(
        &zone,
        &query("_http._tcp.west.api.shop.svc.clusterset.local", 33, None),
        Transport::Udp,
    );
    let RData::SRV(srv) = &message.answers[0].data else {
        panic!("{:?}", message.answers)
    };
    assert_eq!(srv.port, 8080);
    assert_eq!(
        srv.target.to_string(),
        "west.api.shop.svc.clusterset.local."
    );
    assert_eq!(message.additionals[0].name, srv.target);
    assert!(matches!(message.additionals[0].data, RData::A(_)));
}

#[test]
fn the_origin_has_its_soa_and_ns() {
    let zone = zone(false);
    let soa = ask(&zone, &query("clusterset.local", 6, None), Transport::Udp);
    let RData::SOA(record) = &soa.answers[0].data else {
        panic!()
    };
    assert_eq!(record.serial, 7);
    assert_eq!(record.minimum, 5);
    let ns = ask(&zone, &query("clusterset.local", 2, None), Transport::Tcp);
    let RData::NS(target) = &ns.answers[0].data else {
        panic!()
    };
    let server = ask(
        &zone,
        &query(&target.0.to_string(), 1, None),
        Transport::Udp,
    );
    assert!(matches!(server.answers[0].data, RData::A(a) if a.0.is_loopback()));
}

#[test]
fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let pods: Vec<String> = (0..200).map(|i| format!("api-{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let mut ports = spec(true, &pods);
    ports.ports = (0..60)
        .map(|i| Port {
            name: "http".into(),
            port: 8000 + i,
            protocol: Protocol::Http,
        })
        .collect();
    // Sixty SRV records on one name: the same port name would be refused by the catalog,
    // but the zone takes what it is given.
    let services = vec![service("api", vec![("east", ports)])];
    let mut pool = VipPool::new(CidrRange::parse("240.240.0.0/16").unwrap(), None);
    let settings = ZoneSettings {
        origin: "clusterset.local".into(),
        ttl: 5,
        server: Some("127.0.0.1".parse().unwrap()),
    };
    let zone = Zone::build(&settings, 1, &cluster("east"), &services, &mut pool);
    let packet = query("_http._tcp.api.shop.svc.clusterset.local", 33, None);
    let mut out = Vec::new();
    zone.answer(&packet, &mut out, Transport::Udp).unwrap();
    assert!(out.len() <= 512);
    let udp = Message::from_vec(&out).unwrap();
    assert!(udp.metadata.truncation);
    let tcp = ask(&zone, &packet, Transport::Tcp);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    assert_eq!(tcp.additionals.len(), 1, "one target, its address once");
}

#[test]
fn answers_are_compressed() {
    let zone = zone(false);
    let packet = query("_http._tcp.api.shop.svc.clusterset.local", 33, None);
    let mut out = Vec::new();
    zone.answer(&packet, &mut out, Transport::Udp).unwrap();
    // Header + question + SRV (owner pointer, 10, 6 + the target whole, as RFC 2782 wants)
    // + A (owner pointer into the question, 10, 4).
    let target = wire::encode_name("api.shop.svc.clusterset.local").unwrap();
    assert_eq!(
        out.len(),
        packet.len() + (2 + 10 + 6 + target.len()) + (2 + 10 + 4)
    );
}

/// A pseudo-random walk over a small catalog: services come and go, gain and lose pods, change
/// ports and clusters, and stop being exported.
struct Walk(Seeded);

impl Walk {
    fn next(&mut self, below: u64) -> u64 {
        self.0.below(below)
    }

    fn service(&mut self, name: &str) -> ClustersetService {
        let pods: Vec<String> = (0..self.next(3)).map(|i| format!("{name}-{i}")).collect();
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        let mut backends = Vec::new();
        if self.next(3) > 0 {
            backends.push(("east", spec(self.next(4) > 0, &pods)));
        }
        if backends.is_empty() || self.next(2) == 0 {
            let mut other = spec(true, &pods[..pods.len().min(1)]);
            other.ports[0].port = 8000 + self.next(3) as u16;
            other.ports.truncate(1 + self.next(2) as usize);
            backends.push(("west", other));
        }
        service(name, backends)
    }
}

fn every_question(zone: &Zone, rebuilt: &Zone) -> Vec<Vec<u8>> {
    let mut names: Vec<&Vec<u8>> = zone.nodes.keys().chain(rebuilt.nodes.keys()).collect();
    names.sort();
    names.dedup();
    let mut packets = Vec::new();
    for name in names {
        let dotted = dotted(name);
        for qtype in [
            rtype::A,
            rtype::AAAA,
            rtype::SRV,
            rtype::ANY,
            rtype::SOA,
            16,
        ] {
            packets.push(query(&dotted, qtype, None));
        }
        packets.push(query(&format!("absent.{dotted}"), rtype::A, None));
    }
    packets
}

#[test]
fn a_zone_changed_in_place_answers_byte_for_byte_as_a_rebuilt_one() {
    let east = cluster("east");
    let settings = ZoneSettings {
        origin: "clusterset.local".into(),
        ttl: 5,
        server: Some("127.0.0.1".parse().unwrap()),
    };
    let mut walk = Walk(Seeded::new(7));
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    let mut catalog: BTreeMap<ServiceKey, ClustersetService> = BTreeMap::new();
    for name in &names {
        if walk.next(2) == 0 {
            let service = walk.service(name);
            catalog.insert(service.key.clone(), service);
        }
    }
    let mut pool = VipPool::new(
        CidrRange::parse("240.240.0.0/24").unwrap(),
        Some(CidrRange::parse("fd00:5354::/120").unwrap()),
    );
    let all: Vec<ClustersetService> = catalog.values().cloned().collect();
    let mut zone = Zone::build(&settings, 1, &east, &all, &mut pool);
    let mut names_seen = 0;
    for step in 2..200u32 {
        pool.set_now(u64::from(step) * 100);
        let mut changed = Vec::new();
        for _ in 0..=walk.next(3) {
            let name = &names[walk.next(names.len() as u64) as usize];
            let service = (walk.next(4) > 0).then(|| walk.service(name));
            let key = service
                .as_ref()
                .map_or_else(|| service_key(name), |s| s.key.clone());
            match &service {
                Some(s) => catalog.insert(key.clone(), s.clone()),
                None => catalog.remove(&key),
            };
            changed.retain(|(k, _): &(ServiceKey, _)| *k != key);
            changed.push((key, service));
        }
        let mut rebuilt_pool = pool.clone();
        zone.update(step, &east, &changed, &mut pool);
        let all: Vec<ClustersetService> = catalog.values().cloned().collect();
        let rebuilt = Zone::build(&settings, step, &east, &all, &mut rebuilt_pool);
        assert_eq!(zone.nodes, rebuilt.nodes, "step {step}: the names differ");
        assert_eq!(
            zone.virtual_names().collect::<Vec<_>>(),
            rebuilt.virtual_names().collect::<Vec<_>>(),
            "step {step}"
        );
        assert_eq!(
            pool.to_file(),
            rebuilt_pool.to_file(),
            "step {step}: the pools differ"
        );
        for packet in every_question(&zone, &rebuilt) {
            for transport in [Transport::Udp, Transport::Tcp] {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                zone.answer(&packet, &mut ours, transport);
                rebuilt.answer(&packet, &mut theirs, transport);
                assert_eq!(ours, theirs, "step {step}: an answer differs");
            }
        }
        names_seen = names_seen.max(zone.len());
    }
    assert!(
        names_seen > 50,
        "the walk made a zone of {names_seen} names only"
    );
}

fn service_key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "shop".parse().unwrap(),
        name: name.parse().unwrap(),
    }
}

/// A name in wire form, dotted.
fn dotted(name: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut at = 0;
    while at < name.len() && name[at] != 0 {
        let end = at + 1 + usize::from(name[at]);
        labels.push(String::from_utf8_lossy(&name[at + 1..end]).into_owned());
        at = end;
    }
    labels.join(".")
}

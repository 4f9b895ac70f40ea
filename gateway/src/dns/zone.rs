//! The names of the clusterset zone, made from the federated catalog, and the answer to a
//! query about them. A zone is built once per catalog change and then only read: every lookup
//! is one hash probe, whether the name exists or not, and no answer walks the zone.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use strait_federation::catalog::ClustersetService;
use strait_federation::identity::ClusterName;

use super::vip::{VipPool, Vips};
use super::wire::{self, Data, Flags, Owner, Rcode, Section, Transport, Writer, rtype};

/// What a name of the zone answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// SRV records: port and target (lowercased wire form, a name of this zone).
    pub srv: Vec<(u16, Vec<u8>)>,
}

/// A name handed to sidecars with its virtual addresses: what they intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualName {
    pub service: strait_federation::catalog::ServiceKey,
    /// Set for `<cluster>.<svc>...` and `<pod>.<cluster>.<svc>...`.
    pub cluster: Option<ClusterName>,
    /// Set for `<pod>.<cluster>.<svc>...`.
    pub hostname: Option<String>,
    pub vips: Vips,
}

/// The zone's settings.
#[derive(Debug, Clone)]
pub struct ZoneSettings {
    /// The zone's name, dotted (`clusterset.local`).
    pub origin: String,
    /// TTL of every answer, and of negative answers (the SOA minimum), in seconds.
    pub ttl: u32,
    /// The server's own address, answered for the NS target `ns.dns.<origin>`.
    pub server: Option<std::net::IpAddr>,
}

/// Whether a port name makes an SRV label: an IANA-style service name (RFC 6335).
fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 62
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One version of the zone.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Vec<u8>,
    origin_labels: usize,
    /// `ns.dns.<origin>` and `hostmaster.<origin>`, for the SOA and NS records.
    primary: Vec<u8>,
    mailbox: Vec<u8>,
    ttl: u32,
    serial: u32,
    nodes: HashMap<Vec<u8>, Node>,
    /// The names with virtual addresses, for the sidecars.
    virtual_names: Vec<VirtualName>,
}

impl Zone {
    /// Builds the zone from the clusterset view: only exported services have names (an import
    /// is exported by definition; a local service when it says so). Virtual addresses come
    /// from `pool`, which keeps them stable; names it cannot give an address to are left out.
    pub fn build(
        settings: &ZoneSettings,
        serial: u32,
        local: &ClusterName,
        services: &[ClustersetService],
        pool: &mut VipPool,
    ) -> Self {
        let origin = wire::encode_name(&settings.origin).unwrap_or_else(|| vec![0]);
        let with_origin =
            |dotted: &str| wire::encode_name(&format!("{dotted}.{}", settings.origin));
        let mut zone = Zone {
            origin_labels: wire::count_labels(&origin),
            primary: with_origin("ns.dns").unwrap_or_else(|| origin.clone()),
            mailbox: with_origin("hostmaster").unwrap_or_else(|| origin.clone()),
            origin,
            ttl: settings.ttl,
            serial,
            nodes: HashMap::new(),
            virtual_names: Vec::new(),
        };
        zone.nodes.insert(zone.origin.clone(), Node::default());
        let primary = zone.primary.clone();
        let node = zone.insert(primary);
        match settings.server {
            Some(std::net::IpAddr::V4(v4)) => node.v4 = Some(v4),
            Some(std::net::IpAddr::V6(v6)) => node.v6 = Some(v6),
            None => {}
        }
        let mut live = Vec::new();
        for service in services {
            let backends: Vec<_> = service
                .backends
                .iter()
                .filter(|(cluster, spec)| cluster != local || spec.export)
                .collect();
            if backends.is_empty() {
                continue;
            }
            let key = &service.key;
            let base = format!("{}.{}.svc", key.name, key.namespace);
            let ports = &backends[0].1.ports;
            let mut add = |zone: &mut Zone,
                           dotted: String,
                           cluster: Option<&ClusterName>,
                           hostname: Option<&String>,
                           ports: &[strait_federation::catalog::Port]| {
                let Some(name) = with_origin(&dotted) else {
                    return;
                };
                let Some(vips) = pool.assign(&dotted) else {
                    tracing::warn!(name = %dotted, "the virtual address range is full: name left out");
                    return;
                };
                for port in ports.iter().filter(|p| is_service_name(&p.name)) {
                    if let Some(srv_name) = with_origin(&format!("_{}._tcp.{dotted}", port.name)) {
                        zone.insert(srv_name).srv.push((port.port, name.clone()));
                    }
                }
                live.push(dotted);
                let node = zone.insert(name);
                node.v4 = Some(vips.v4);
                node.v6 = vips.v6;
                zone.virtual_names.push(VirtualName {
                    service: key.clone(),
                    cluster: cluster.cloned(),
                    hostname: hostname.cloned(),
                    vips,
                });
            };
            add(&mut zone, base.clone(), None, None, ports);
            for (cluster, spec) in &backends {
                let in_cluster = format!("{cluster}.{base}");
                add(
                    &mut zone,
                    in_cluster.clone(),
                    Some(cluster),
                    None,
                    &spec.ports,
                );
                for endpoint in &spec.endpoints {
                    if let Some(hostname) = &endpoint.hostname {
                        add(
                            &mut zone,
                            format!("{hostname}.{in_cluster}"),
                            Some(cluster),
                            Some(hostname),
                            &[],
                        );
                    }
                }
            }
        }
        pool.retain_live(live.iter().map(String::as_str));
        zone
    }

    /// The node of a name, with every name between it and the origin made to exist (empty
    /// non-terminals answer "no data", not "no such name").
    fn insert(&mut self, name: Vec<u8>) -> &mut Node {
        let mut at = 0;
        while at < name.len() && name[at..] != self.origin[..] {
            let next = at + 1 + usize::from(name[at]);
            if self.nodes.contains_key(&name[next..]) {
                // Its ancestors were made with it.
                break;
            }
            self.nodes.insert(name[next..].to_vec(), Node::default());
            at = next;
        }
        self.nodes.entry(name).or_default()
    }

    /// How many names the zone has (the origin and empty non-terminals included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the zone is only its origin.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The names with virtual addresses.
    pub fn virtual_names(&self) -> &[VirtualName] {
        &self.virtual_names
    }

    /// The node of a dotted name, for tests and tools.
    pub fn node(&self, dotted: &str) -> Option<&Node> {
        self.nodes.get(&wire::encode_name(dotted)?)
    }

    /// Answers one packet into `out` (cleared first), within the size the transport allows.
    /// Returns the rcode sent, or `None` when the packet gets no answer at all.
    pub fn answer(&self, packet: &[u8], out: &mut Vec<u8>, transport: Transport) -> Option<Rcode> {
        let (query, error) = wire::parse(packet)?;
        let limit = match transport {
            Transport::Udp => wire::udp_limit(&query),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let writer = Writer::new(out, packet, &query, limit);
        let rcode = match (error, &query.question) {
            (Some(code), _) => code,
            (None, None) => Rcode::FormErr,
            (None, Some(question)) => {
                return Some(self.answer_question(question, writer));
            }
        };
        Some(writer.finish(Flags {
            authoritative: false,
            rcode,
        }))
    }

    fn answer_question(&self, question: &wire::Question, mut writer: Writer<'_>) -> Rcode {
        let in_zone = question.label_count() >= self.origin_labels
            && question.suffix(question.label_count() - self.origin_labels) == &self.origin[..];
        let transfer = matches!(question.qtype, rtype::AXFR | rtype::IXFR);
        if question.qclass != wire::CLASS_IN || !in_zone || transfer {
            return writer.finish(Flags {
                authoritative: false,
                rcode: Rcode::Refused,
            });
        }
        let Some(node) = self.nodes.get(question.name()) else {
            self.negative(&mut writer);
            return writer.finish(Flags {
                authoritative: true,
                rcode: Rcode::NxDomain,
            });
        };
        let is_origin = question.label_count() == self.origin_labels;
        let ttl = self.ttl;
        let any = question.qtype == rtype::ANY;
        let mut answered = false;
        if let Some(v4) = node.v4.filter(|_| any || question.qtype == rtype::A) {
            writer.record(
                Section::Answer,
                Owner::Question,
                rtype::A,
                ttl,
                Data::V4(v4),
            );
            answered = true;
        }
        if let Some(v6) = node.v6.filter(|_| any || question.qtype == rtype::AAAA) {
            writer.record(
                Section::Answer,
                Owner::Question,
                rtype::AAAA,
                ttl,
                Data::V6(v6),
            );
            answered = true;
        }
        if any || question.qtype == rtype::SRV {
            for (port, target) in &node.srv {
                writer.record(
                    Section::Answer,
                    Owner::Question,
                    rtype::SRV,
                    ttl,
                    Data::Srv {
                        port: *port,
                        target,
                    },
                );
                answered = true;
            }
        }
        if is_origin && (any || question.qtype == rtype::SOA) {
            writer.record(
                Section::Answer,
                Owner::Question,
                rtype::SOA,
                ttl,
                self.soa(),
            );
            answered = true;
        }
        if is_origin && (any || question.qtype == rtype::NS) {
            writer.record(
                Section::Answer,
                Owner::Question,
                rtype::NS,
                ttl,
                Data::Name(&self.primary),
            );
            answered = true;
        }
        if !answered {
            self.negative(&mut writer);
        } else if question.qtype == rtype::SRV {
            // The targets' addresses, so a client needs no second query; each target once.
            for (i, (_, target)) in node.srv.iter().enumerate() {
                if node.srv[..i].iter().any(|(_, earlier)| earlier == target) {
                    continue;
                }
                if let Some(target_node) = self.nodes.get(target) {
                    if let Some(v4) = target_node.v4 {
                        let owner = Owner::Name(target);
                        writer.record(Section::Additional, owner, rtype::A, ttl, Data::V4(v4));
                    }
                    if let Some(v6) = target_node.v6 {
                        let owner = Owner::Name(target);
                        writer.record(Section::Additional, owner, rtype::AAAA, ttl, Data::V6(v6));
                    }
                }
            }
        }
        writer.finish(Flags {
            authoritative: true,
            rcode: Rcode::NoError,
        })
    }

    fn soa(&self) -> Data<'_> {
        Data::Soa {
            primary: &self.primary,
            mailbox: &self.mailbox,
            serial: self.serial,
            negative_ttl: self.ttl,
        }
    }

    /// The SOA in the authority section of a negative answer, so resolvers cache it (RFC 2308).
    fn negative(&self, writer: &mut Writer<'_>) {
        writer.record(
            Section::Authority,
            Owner::Name(&self.origin),
            rtype::SOA,
            self.ttl,
            self.soa(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::vip::CidrRange;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};
    use strait_federation::catalog::{Endpoint, Port, Protocol, ServiceKey, ServiceSpec};

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
        let addresses: std::collections::HashSet<_> =
            zone.virtual_names().iter().map(|n| n.vips.v4).collect();
        assert_eq!(
            addresses.len(),
            zone.virtual_names().len(),
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
}

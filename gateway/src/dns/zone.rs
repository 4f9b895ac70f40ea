//! The names of the clusterset zone, made from the federated catalog, and the answer to a
//! query about them. A zone is built once, then changed in place one service at a time (the
//! work follows the change, not the zone's size); every lookup is one hash probe, whether the
//! name exists or not, and no answer walks the zone.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use strait_federation::catalog::{ClustersetService, ServiceKey};
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
    /// How many names put in the zone stand at or below this one: it leaves with the last.
    uses: u32,
}

/// A name handed to sidecars with its virtual addresses: what they intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualName {
    pub service: ServiceKey,
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

/// What one service put in the zone, to take it out again.
#[derive(Debug, Clone, Default)]
struct Contribution {
    /// Every name put in for it, once per time it was put in.
    names: Vec<Vec<u8>>,
    /// Its names with virtual addresses, dotted, as the pool knows them.
    dotted: Vec<String>,
    virtual_names: Vec<VirtualName>,
}

/// One version of the zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The origin, dotted and in wire form.
    origin_dotted: String,
    origin: Vec<u8>,
    origin_labels: usize,
    /// `ns.dns.<origin>` and `hostmaster.<origin>`, for the SOA and NS records.
    primary: Vec<u8>,
    mailbox: Vec<u8>,
    ttl: u32,
    serial: u32,
    nodes: HashMap<Vec<u8>, Node>,
    /// What each service put in, in key order (the order sidecars get the names in).
    services: BTreeMap<ServiceKey, Contribution>,
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
            origin_dotted: settings.origin.clone(),
            origin_labels: wire::count_labels(&origin),
            primary: with_origin("ns.dns").unwrap_or_else(|| origin.clone()),
            mailbox: with_origin("hostmaster").unwrap_or_else(|| origin.clone()),
            origin,
            ttl: settings.ttl,
            serial,
            nodes: HashMap::new(),
            services: BTreeMap::new(),
        };
        zone.nodes.insert(
            zone.origin.clone(),
            Node {
                uses: 1,
                ..Node::default()
            },
        );
        let primary = zone.primary.clone();
        let node = zone.insert(primary);
        match settings.server {
            Some(std::net::IpAddr::V4(v4)) => node.v4 = Some(v4),
            Some(std::net::IpAddr::V6(v6)) => node.v6 = Some(v6),
            None => {}
        }
        for service in services {
            zone.put(local, service, pool);
        }
        let live: Vec<&str> = zone
            .services
            .values()
            .flat_map(|c| c.dotted.iter().map(String::as_str))
            .collect();
        pool.retain_live(live);
        zone
    }

    /// Applies changed services in place, as [`Zone::build`] would have made them: each
    /// service's names are taken out and put in again (`None`: the service is gone). Costs in
    /// proportion to the change, not to the zone; the answers are those of a rebuilt zone.
    pub fn update(
        &mut self,
        serial: u32,
        local: &ClusterName,
        changed: &[(ServiceKey, Option<ClustersetService>)],
        pool: &mut VipPool,
    ) {
        let mut released = Vec::new();
        for (key, _) in changed {
            if let Some(old) = self.services.remove(key) {
                for name in &old.names {
                    self.take_out(name);
                }
                released.extend(old.dotted);
            }
        }
        let mut ordered: Vec<&ClustersetService> =
            changed.iter().filter_map(|(_, s)| s.as_ref()).collect();
        ordered.sort_by(|a, b| a.key.cmp(&b.key));
        for service in ordered {
            self.put(local, service, pool);
        }
        let live: std::collections::HashSet<&str> = changed
            .iter()
            .filter_map(|(key, _)| self.services.get(key))
            .flat_map(|c| c.dotted.iter().map(String::as_str))
            .collect();
        pool.release(
            released
                .iter()
                .map(String::as_str)
                .filter(|n| !live.contains(n)),
        );
        self.serial = serial;
    }

    /// Puts one service's names in (none when no cluster it is named for exports it).
    fn put(&mut self, local: &ClusterName, service: &ClustersetService, pool: &mut VipPool) {
        let backends: Vec<_> = service
            .backends
            .iter()
            .filter(|(cluster, spec)| cluster != local || spec.export)
            .collect();
        if backends.is_empty() {
            return;
        }
        let key = &service.key;
        let base = format!("{}.{}.svc", key.name, key.namespace);
        let mut contribution = Contribution::default();
        let mut add = |zone: &mut Zone,
                       dotted: String,
                       cluster: Option<&ClusterName>,
                       hostname: Option<&String>,
                       ports: &[strait_federation::catalog::Port]| {
            let Some(name) = zone.with_origin(&dotted) else {
                return;
            };
            let Some(vips) = pool.assign(&dotted) else {
                tracing::warn!(name = %dotted, "the virtual address range is full: name left out");
                return;
            };
            for port in ports.iter().filter(|p| is_service_name(&p.name)) {
                if let Some(srv_name) = zone.with_origin(&format!("_{}._tcp.{dotted}", port.name)) {
                    zone.insert(srv_name.clone())
                        .srv
                        .push((port.port, name.clone()));
                    contribution.names.push(srv_name);
                }
            }
            contribution.dotted.push(dotted);
            let node = zone.insert(name.clone());
            node.v4 = Some(vips.v4);
            node.v6 = vips.v6;
            contribution.names.push(name);
            contribution.virtual_names.push(VirtualName {
                service: key.clone(),
                cluster: cluster.cloned(),
                hostname: hostname.cloned(),
                vips,
            });
        };
        add(self, base.clone(), None, None, &backends[0].1.ports);
        for (cluster, spec) in &backends {
            let in_cluster = format!("{cluster}.{base}");
            add(self, in_cluster.clone(), Some(cluster), None, &spec.ports);
            for endpoint in &spec.endpoints {
                if let Some(hostname) = &endpoint.hostname {
                    add(
                        self,
                        format!("{hostname}.{in_cluster}"),
                        Some(cluster),
                        Some(hostname),
                        &[],
                    );
                }
            }
        }
        self.services.insert(key.clone(), contribution);
    }

    fn with_origin(&self, dotted: &str) -> Option<Vec<u8>> {
        wire::encode_name(&format!("{dotted}.{}", self.origin_dotted))
    }

    /// The node of a name, with every name between it and the origin made to exist (empty
    /// non-terminals answer "no data", not "no such name"); each is used once more.
    fn insert(&mut self, name: Vec<u8>) -> &mut Node {
        let mut at = 0;
        while at < name.len() && name[at..] != self.origin[..] {
            let next = at + 1 + usize::from(name[at]);
            if at > 0 {
                self.nodes.entry(name[at..].to_vec()).or_default().uses += 1;
            }
            at = next;
        }
        let node = self.nodes.entry(name).or_default();
        node.uses += 1;
        node
    }

    /// Undoes one [`Zone::insert`] of a name: the name's data goes, and every name on its way
    /// to the origin that nothing else uses.
    fn take_out(&mut self, name: &[u8]) {
        let mut at = 0;
        while at < name.len() && name[at..] != self.origin[..] {
            let next = at + 1 + usize::from(name[at]);
            if let Some(node) = self.nodes.get_mut(&name[at..]) {
                if at == 0 {
                    // Only its own service puts data on a name, and it takes all of it out.
                    node.v4 = None;
                    node.v6 = None;
                    node.srv.clear();
                }
                node.uses = node.uses.saturating_sub(1);
                if node.uses == 0 {
                    self.nodes.remove(&name[at..]);
                }
            }
            at = next;
        }
    }

    /// How many names the zone has (the origin and empty non-terminals included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the zone is only its origin.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The names with virtual addresses, by service.
    pub fn virtual_names(&self) -> impl Iterator<Item = &VirtualName> {
        self.services.values().flat_map(|c| c.virtual_names.iter())
    }

    /// The names of one service with virtual addresses.
    pub fn virtual_names_of(&self, key: &ServiceKey) -> &[VirtualName] {
        self.services
            .get(key)
            .map_or(&[], |c| c.virtual_names.as_slice())
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
mod tests;

//! The DNS wire format, as far as an authoritative server of one zone needs it: reading a query
//! (header, one question, an EDNS OPT record) and writing an answer with compressed names.
//! Nothing here allocates per query beyond the output buffer, and nothing trusts the input:
//! every length is checked against the packet before it is used.

/// The fixed header of every DNS message.
pub const HEADER_LEN: usize = 12;
/// The largest answer over UDP without EDNS (RFC 1035).
pub const PLAIN_UDP_LIMIT: usize = 512;
/// The largest answer over UDP that this server offers with EDNS: the size that avoids IP
/// fragmentation on any path (DNS flag day 2020).
pub const EDNS_UDP_LIMIT: usize = 1232;
/// The longest name in wire form (RFC 1035).
pub const MAX_NAME: usize = 255;

/// Record types this server knows by name.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

/// The class of Internet records.
pub const CLASS_IN: u16 = 1;

/// Response codes this server sends (RFC 1035, RFC 6891 for BADVERS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    NxDomain,
    NotImp,
    Refused,
    /// An EDNS version this server does not speak (extended code 16).
    BadVers,
}

impl Rcode {
    /// The code: the low 4 bits go in the header, the rest in the OPT record.
    pub fn code(self) -> u16 {
        match self {
            Self::NoError => 0,
            Self::FormErr => 1,
            Self::NxDomain => 3,
            Self::NotImp => 4,
            Self::Refused => 5,
            Self::BadVers => 16,
        }
    }

    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoError => "noerror",
            Self::FormErr => "formerr",
            Self::NxDomain => "nxdomain",
            Self::NotImp => "notimp",
            Self::Refused => "refused",
            Self::BadVers => "badvers",
        }
    }
}

/// The EDNS options of a query that matter to the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the client takes.
    pub udp_size: u16,
    pub version: u8,
}

/// A question, read from a query packet. The name is kept twice: as the client wrote it (echoed
/// in the answer, case and all) and lowercased in wire form (the lookup key).
#[derive(Debug, Clone)]
pub struct Question {
    /// The lowercased name in wire form, root label included.
    lower: [u8; MAX_NAME],
    len: usize,
    /// Where each label starts within the name (at most 127 labels fit in 255 bytes).
    starts: [u8; 128],
    labels: usize,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// The lowercased name in wire form (length-prefixed labels, then the root's 0).
    pub fn name(&self) -> &[u8] {
        &self.lower[..self.len]
    }

    /// How many labels the name has (the root not counted).
    pub fn label_count(&self) -> usize {
        self.labels
    }

    /// The name without its first `skip` labels, in wire form.
    pub fn suffix(&self, skip: usize) -> &[u8] {
        match self.starts.get(skip) {
            Some(&start) if skip < self.labels => &self.lower[usize::from(start)..self.len],
            _ => &self.lower[self.len - 1..self.len],
        }
    }

    /// The offset of the suffix that skips `skip` labels, within the name.
    fn suffix_offset(&self, skip: usize) -> usize {
        if skip < self.labels {
            usize::from(self.starts[skip])
        } else {
            self.len - 1
        }
    }

    /// The labels of the name, lowercased.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator {
        (0..self.labels).map(|i| {
            let start = usize::from(self.starts[i]);
            let len = usize::from(self.lower[start]);
            &self.lower[start + 1..start + 1 + len]
        })
    }
}

/// A query that deserves an answer.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    /// Absent when the packet has no question to echo (an error answer still goes out).
    pub question: Option<Question>,
    /// The question's bytes as sent (name, type, class), echoed in the answer.
    question_raw: std::ops::Range<usize>,
    pub edns: Option<Edns>,
}

/// A bounds-checked reader over a packet.
struct Reader<'a> {
    packet: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let bytes = self.packet.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.packet.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.packet.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(())
    }

    /// Skips a name anywhere in the message (compression pointers end it).
    fn skip_name(&mut self) -> Option<()> {
        for _ in 0..128 {
            let len = *self.packet.get(self.at)?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    self.at += 1;
                    return Some(());
                }
                0x00 => self.skip(1 + usize::from(len))?,
                0xC0 => return self.skip(2),
                _ => return None,
            }
        }
        None
    }

    /// Reads the question's name: plain labels only (a query has nothing to point back to).
    fn question(&mut self) -> Option<Question> {
        let mut question = Question {
            lower: [0; MAX_NAME],
            len: 0,
            starts: [0; 128],
            labels: 0,
            qtype: 0,
            qclass: 0,
        };
        loop {
            let len = usize::from(*self.packet.get(self.at)?);
            if len == 0 {
                if question.len + 1 > MAX_NAME {
                    return None;
                }
                question.lower[question.len] = 0;
                question.len += 1;
                self.at += 1;
                break;
            }
            if len > 63 || question.len + 1 + len + 1 > MAX_NAME || question.labels >= 127 {
                return None;
            }
            let label = self.packet.get(self.at + 1..self.at + 1 + len)?;
            question.starts[question.labels] = question.len as u8;
            question.labels += 1;
            question.lower[question.len] = len as u8;
            for (to, from) in question.lower[question.len + 1..question.len + 1 + len]
                .iter_mut()
                .zip(label)
            {
                *to = from.to_ascii_lowercase();
            }
            question.len += 1 + len;
            self.at += 1 + len;
        }
        question.qtype = self.u16()?;
        question.qclass = self.u16()?;
        Some(question)
    }
}

/// Reads a packet as a query, with the error code to answer it with if it is not a clean one.
/// `None`: the packet deserves no answer at all (shorter than a header, or a response:
/// answering those would let anyone bounce traffic off this server).
pub fn parse(packet: &[u8]) -> Option<(Query, Option<Rcode>)> {
    if packet.len() < HEADER_LEN {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    let (questions, answers, authorities, additionals) = (count(4), count(6), count(8), count(10));
    let mut query = Query {
        id,
        opcode: ((flags >> 11) & 0x0F) as u8,
        recursion_desired: flags & 0x0100 != 0,
        question: None,
        question_raw: HEADER_LEN..HEADER_LEN,
        edns: None,
    };
    if query.opcode != 0 {
        return Some((query, Some(Rcode::NotImp)));
    }
    if questions != 1 {
        return Some((query, Some(Rcode::FormErr)));
    }
    let mut reader = Reader {
        packet,
        at: HEADER_LEN,
    };
    let Some(question) = reader.question() else {
        return Some((query, Some(Rcode::FormErr)));
    };
    query.question_raw = HEADER_LEN..reader.at;
    query.question = Some(question);
    if answers != 0 || authorities != 0 {
        return Some((query, Some(Rcode::FormErr)));
    }
    for _ in 0..additionals {
        let is_root = packet.get(reader.at) == Some(&0);
        let record = (|| {
            reader.skip_name()?;
            let rtype = reader.u16()?;
            let class = reader.u16()?;
            let ttl = reader.u32()?;
            let rdlen = reader.u16()?;
            reader.skip(usize::from(rdlen))?;
            Some((rtype, class, ttl))
        })();
        let Some((rtype, class, ttl)) = record else {
            return Some((query, Some(Rcode::FormErr)));
        };
        if rtype == rtype::OPT {
            if query.edns.is_some() || !is_root {
                return Some((query, Some(Rcode::FormErr)));
            }
            query.edns = Some(Edns {
                udp_size: class,
                version: ((ttl >> 16) & 0xFF) as u8,
            });
        }
    }
    if query.edns.is_some_and(|e| e.version != 0) {
        return Some((query, Some(Rcode::BadVers)));
    }
    Some((query, None))
}

/// The largest answer this query may get over UDP.
pub fn udp_limit(query: &Query) -> usize {
    match query.edns {
        Some(edns) => usize::from(edns.udp_size).clamp(PLAIN_UDP_LIMIT, EDNS_UDP_LIMIT),
        None => PLAIN_UDP_LIMIT,
    }
}

/// The header flags of an answer.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    pub authoritative: bool,
    pub rcode: Rcode,
}

/// Writes one answer message into a buffer, compressing owner names and the names in SOA and
/// NS data against the question's, which always sits right after the header.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    query: &'a Query,
    counts: [u16; 3],
    section: usize,
    /// Where the answer must end (the transport's limit); records beyond it are not written.
    limit: usize,
    truncated: bool,
}

/// The sections records go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Answer = 0,
    Authority = 1,
    Additional = 2,
}

impl<'a> Writer<'a> {
    /// Starts an answer to `query` in `out` (cleared), copying the question as it was sent.
    pub fn new(out: &'a mut Vec<u8>, packet: &[u8], query: &'a Query, limit: usize) -> Self {
        out.clear();
        out.extend_from_slice(&query.id.to_be_bytes());
        out.extend_from_slice(&[0; 10]);
        let has_question = query.question.is_some();
        if has_question {
            out.extend_from_slice(&packet[query.question_raw.clone()]);
            out[5] = 1;
        }
        let limit = limit.max(out.len() + if query.edns.is_some() { 11 } else { 0 });
        Self {
            out,
            query,
            counts: [0; 3],
            section: 0,
            limit,
            truncated: false,
        }
    }

    /// Writes `name` (lowercased wire form), pointing into the question's name for the longest
    /// suffix they share.
    fn name(&mut self, name: &[u8]) {
        let Some(question) = &self.query.question else {
            self.out.extend_from_slice(name);
            return;
        };
        // Walk the labels of `name`; at each label boundary, check whether the rest equals a
        // suffix of the question name (which has as many labels left).
        let total_labels = count_labels(name);
        let mut at = 0;
        let mut remaining = total_labels;
        while remaining > 0 {
            if remaining <= question.labels {
                let skip = question.labels - remaining;
                if question.suffix(skip) == &name[at..] {
                    let pointer = (HEADER_LEN + question.suffix_offset(skip)) as u16 | 0xC000;
                    self.out.extend_from_slice(&pointer.to_be_bytes());
                    return;
                }
            }
            let len = usize::from(name[at]);
            self.out.extend_from_slice(&name[at..at + 1 + len]);
            at += 1 + len;
            remaining -= 1;
        }
        self.out.push(0);
    }

    /// Adds a record, unless it would pass the limit (then the answer is marked truncated and
    /// nothing more is added to the answer or authority sections).
    pub fn record(&mut self, section: Section, owner: Owner<'_>, rtype: u16, ttl: u32, data: Data) {
        debug_assert!(section as usize >= self.section);
        if self.truncated {
            return;
        }
        self.section = section as usize;
        let mark = self.out.len();
        match owner {
            Owner::Question => self.out.extend_from_slice(&0xC00Cu16.to_be_bytes()),
            Owner::Name(name) => self.name(name),
        }
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        let length_at = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        match data {
            Data::V4(address) => self.out.extend_from_slice(&address.octets()),
            Data::V6(address) => self.out.extend_from_slice(&address.octets()),
            Data::Name(name) => self.name(name),
            Data::Srv { port, target } => {
                self.out.extend_from_slice(&[0, 0, 0, 100]);
                self.out.extend_from_slice(&port.to_be_bytes());
                // RFC 2782: the target is never compressed (resolvers that do not know SRV
                // could not follow a pointer in it, RFC 3597).
                self.out.extend_from_slice(target);
            }
            Data::Soa {
                primary,
                mailbox,
                serial,
                negative_ttl,
            } => {
                self.name(primary);
                self.name(mailbox);
                for value in [serial, 3600, 600, 86400, negative_ttl] {
                    self.out.extend_from_slice(&value.to_be_bytes());
                }
            }
        }
        let reserve = if self.query.edns.is_some() { 11 } else { 0 };
        if self.out.len() + reserve > self.limit {
            self.out.truncate(mark);
            if section != Section::Additional {
                self.truncated = true;
            }
            return;
        }
        let length = (self.out.len() - length_at - 2) as u16;
        self.out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
        self.counts[section as usize] += 1;
    }

    /// Finishes the message: header flags and counts, and the OPT record when the query had
    /// EDNS. Returns the rcode sent.
    pub fn finish(self, flags: Flags) -> Rcode {
        let rcode = flags.rcode.code();
        let mut bits: u16 = 0x8000 | (u16::from(self.query.opcode) << 11) | (rcode & 0x0F);
        if flags.authoritative {
            bits |= 0x0400;
        }
        if self.truncated {
            bits |= 0x0200;
        }
        if self.query.recursion_desired {
            bits |= 0x0100;
        }
        self.out[2..4].copy_from_slice(&bits.to_be_bytes());
        let mut additional = self.counts[2];
        if self.query.edns.is_some() {
            self.out.push(0);
            self.out.extend_from_slice(&rtype::OPT.to_be_bytes());
            self.out
                .extend_from_slice(&(EDNS_UDP_LIMIT as u16).to_be_bytes());
            let extended = u32::from(rcode >> 4) << 24;
            self.out.extend_from_slice(&extended.to_be_bytes());
            self.out.extend_from_slice(&[0, 0]);
            additional += 1;
        }
        self.out[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.out[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.out[10..12].copy_from_slice(&additional.to_be_bytes());
        flags.rcode
    }
}

/// The owner name of a record.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'n> {
    /// The question's name (a two-byte pointer).
    Question,
    /// Another name, lowercased wire form.
    Name(&'n [u8]),
}

/// The data of a record.
#[derive(Debug, Clone, Copy)]
pub enum Data<'n> {
    V4(std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
    Name(&'n [u8]),
    Srv {
        port: u16,
        target: &'n [u8],
    },
    Soa {
        primary: &'n [u8],
        mailbox: &'n [u8],
        serial: u32,
        negative_ttl: u32,
    },
}

/// How many labels a wire-form name has (the root not counted).
pub fn count_labels(name: &[u8]) -> usize {
    let mut at = 0;
    let mut labels = 0;
    while let Some(&len) = name.get(at) {
        if len == 0 {
            break;
        }
        labels += 1;
        at += 1 + usize::from(len);
    }
    labels
}

/// A dotted name (`api.shop.svc.clusterset.local`) in lowercased wire form; `None` when a label
/// is empty or longer than 63 bytes, or the name longer than 255.
pub fn encode_name(dotted: &str) -> Option<Vec<u8>> {
    let dotted = dotted.trim_end_matches('.');
    let mut wire = Vec::with_capacity(dotted.len() + 2);
    if !dotted.is_empty() {
        for label in dotted.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    wire.push(0);
    (wire.len() <= MAX_NAME).then_some(wire)
}

/// How a query arrived: it decides the size limit of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver sends it.
    pub(crate) fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.trim_end_matches('.').split('.') {
            packet.push(label.len() as u8);
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            packet[11] = 1;
            packet.extend_from_slice(&[0, 0, 41]);
            packet.extend_from_slice(&size.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        packet
    }

    #[test]
    fn a_question_is_read_lowercased_with_its_labels() {
        let packet = query("API.Shop.svc.clusterset.local", rtype::A, Some(4096));
        let Some((query, None)) = parse(&packet) else {
            panic!("not a clean query")
        };
        let question = query.question.unwrap();
        assert_eq!(
            question.name(),
            encode_name("api.shop.svc.clusterset.local").unwrap()
        );
        assert_eq!(question.label_count(), 5);
        assert_eq!(question.suffix(3), encode_name("clusterset.local").unwrap());
        assert_eq!(question.suffix(5), [0]);
        assert_eq!(question.labels().next_back().unwrap(), b"local");
        assert_eq!(query.edns.unwrap().udp_size, 4096);
    }

    #[test]
    fn responses_and_runts_are_dropped() {
        assert!(parse(&[0; 11]).is_none());
        let mut packet = query("a.b", rtype::A, None);
        packet[2] |= 0x80;
        assert!(parse(&packet).is_none());
    }

    #[test]
    fn malformed_queries_get_an_error_code_not_a_panic() {
        let good = query("api.shop.svc.clusterset.local", rtype::A, Some(1232));
        // Every truncation of a good query.
        for end in HEADER_LEN..good.len() {
            match parse(&good[..end]) {
                Some((_, Some(Rcode::FormErr))) => {}
                other => panic!("cut at {end}: {other:?}"),
            }
        }
        // A label that claims more bytes than the packet has, a pointer in the question, two
        // questions, an unknown opcode, an EDNS version 1.
        let mut long_label = good.clone();
        long_label[12] = 63;
        let mut pointer = good.clone();
        pointer[12] = 0xC0;
        let mut two = good.clone();
        two[5] = 2;
        let mut opcode = good.clone();
        opcode[2] = 0x28;
        let mut version = good.clone();
        let at = version.len() - 5;
        version[at] = 1;
        for (packet, expected) in [
            (long_label, Rcode::FormErr),
            (pointer, Rcode::FormErr),
            (two, Rcode::FormErr),
            (opcode, Rcode::NotImp),
            (version, Rcode::BadVers),
        ] {
            match parse(&packet) {
                Some((_, Some(code))) => assert_eq!(code, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn names_are_compressed_against_the_question() {
        let packet = query("_http._tcp.api.shop.svc.clusterset.local", rtype::SRV, None);
        let Some((query, None)) = parse(&packet) else {
            panic!()
        };
        let mut out = Vec::new();
        let mut writer = Writer::new(&mut out, &packet, &query, 512);
        let target = encode_name("api.shop.svc.clusterset.local").unwrap();
        writer.record(
            Section::Answer,
            Owner::Question,
            rtype::SRV,
            5,
            Data::Srv {
                port: 80,
                target: &target,
            },
        );
        let other = encode_name("west.api.shop.svc.clusterset.local").unwrap();
        writer.record(
            Section::Additional,
            Owner::Name(&other),
            rtype::A,
            5,
            Data::V4("240.240.0.1".parse().unwrap()),
        );
        writer.finish(Flags {
            authoritative: true,
            rcode: Rcode::NoError,
        });
        // The SRV target is written whole (RFC 2782), its owner is a pointer to the question.
        let srv_data = packet.len() + 2 + 10 + 6;
        let srv_end = srv_data + target.len();
        assert_eq!(out[packet.len()..packet.len() + 2], 0xC00Cu16.to_be_bytes());
        assert_eq!(out[srv_data..srv_end], target[..]);
        // The other name is one label and a pointer to the question's third label.
        let pointer = (HEADER_LEN + 11) as u16 | 0xC000;
        assert_eq!(out[srv_end], 4);
        assert_eq!(&out[srv_end + 1..srv_end + 5], b"west");
        assert_eq!(out[srv_end + 5..srv_end + 7], pointer.to_be_bytes());
        assert_eq!(out[7], 1);
        assert_eq!(out[11], 1);
    }

    #[test]
    fn an_answer_past_the_limit_is_truncated() {
        let packet = query("api.shop.svc.clusterset.local", rtype::A, None);
        let Some((query, None)) = parse(&packet) else {
            panic!()
        };
        let mut out = Vec::new();
        let mut writer = Writer::new(&mut out, &packet, &query, 80);
        for i in 0..10 {
            writer.record(
                Section::Answer,
                Owner::Question,
                rtype::A,
                5,
                Data::V4(std::net::Ipv4Addr::new(240, 240, 0, i)),
            );
        }
        writer.finish(Flags {
            authoritative: true,
            rcode: Rcode::NoError,
        });
        assert!(out.len() <= 80);
        assert_eq!(out[2] & 0x02, 0x02, "TC is set");
        let answers = u16::from_be_bytes([out[6], out[7]]);
        assert_eq!(usize::from(answers), (out.len() - packet.len()) / 16);
    }
}

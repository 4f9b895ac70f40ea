//! The DNS answer path against malformed input, without a fuzzer: random packets and mutations
//! of valid queries from a fixed-seed generator, each answered over UDP and TCP and checked
//! against an independent reader (hickory-proto) and the rules of the protocol. The same
//! invariants as the cargo-fuzz target in fuzz/, so any failure here reproduces there.

use std::sync::LazyLock;

use hickory_proto::op::{Message, ResponseCode};
use strait_gateway::dns::Transport;
use strait_gateway::dns::wire::{self, Rcode, rtype};
use strait_gateway::dns::zone::Zone;

/// Packets of random bytes; with the mutations below, about 200,000 inputs in all.
const RANDOM_PACKETS: usize = 50_000;
/// Mutated valid queries.
const MUTATED_QUERIES: usize = 150_000;

const ORIGIN: &str = "clusterset.local";

#[path = "support/dns_invariants.rs"]
mod invariants;

use invariants::build_zone;

static ZONE: LazyLock<Zone> = LazyLock::new(build_zone);

/// Answers over both transports and checks every invariant; the UDP answer's code.
fn check(packet: &[u8]) -> Option<Rcode> {
    invariants::check(&ZONE, packet)
}

#[path = "support/rng.rs"]
mod rng;

use rng::Rng;

/// A name in wire form (no compression, case kept).
fn wire_name(dotted: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in dotted
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire
}

/// An OPT record: root owner, payload size, extended rcode 0, `version`, no options.
fn opt(udp_size: u16, version: u8) -> Vec<u8> {
    let mut record = vec![0];
    record.extend_from_slice(&rtype::OPT.to_be_bytes());
    record.extend_from_slice(&udp_size.to_be_bytes());
    record.extend_from_slice(&[0, version, 0, 0, 0, 0]);
    record
}

/// A standard query with a question of `name` (wire form), and an OPT record when asked.
fn query_wire(id: u16, name: &[u8], qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(name);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        packet[11] = 1;
        packet.extend(opt(size, 0));
    }
    packet
}

fn query(id: u16, dotted: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    query_wire(id, &wire_name(dotted), qtype, edns)
}

/// A name of exactly `len` bytes in wire form, ending in the zone's origin when `in_zone`.
fn name_of_length(len: usize, in_zone: bool) -> Vec<u8> {
    let suffix = if in_zone { wire_name(ORIGIN) } else { vec![0] };
    let mut name = Vec::new();
    let mut left = len - suffix.len();
    while left > 0 {
        // Labels of up to 63 bytes, never leaving a remainder of 1 (a label needs 2 bytes).
        let mut take = left.min(64);
        if left - take == 1 {
            take -= 1;
        }
        name.push((take - 1) as u8);
        name.extend(std::iter::repeat_n(b'x', take - 1));
        left -= take;
    }
    name.extend(suffix);
    assert_eq!(name.len(), len);
    name
}

/// A name of `labels` one-byte labels (127 of them fill the 255 bytes).
fn name_of_labels(labels: usize) -> Vec<u8> {
    let mut name = Vec::new();
    for i in 0..labels {
        name.extend_from_slice(&[1, b'a' + (i % 26) as u8]);
    }
    name.push(0);
    name
}

/// Valid queries to mutate: every name form and record type, with and without EDNS.
fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "api.shop.svc.clusterset.local",
        "west.api.shop.svc.clusterset.local",
        "api-0.east.api.shop.svc.clusterset.local",
        "_http._tcp.api.shop.svc.clusterset.local",
        "_admin._tcp.west.orders.shop.svc.clusterset.local",
        "_tcp._tcp.bulk.shop.svc.clusterset.local",
        "shop.svc.clusterset.local",
        "clusterset.local",
        "nothere.shop.svc.clusterset.local",
        "ledger.shop.svc.clusterset.local",
        "example.com",
        "",
    ];
    let types = [
        rtype::A,
        rtype::AAAA,
        rtype::SRV,
        rtype::SOA,
        rtype::NS,
        rtype::ANY,
    ];
    let mut seeds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (j, &qtype) in types.iter().enumerate() {
            let id = (i * 16 + j) as u16;
            seeds.push(query(id, name, qtype, None));
            seeds.push(query(id, name, qtype, Some(1232)));
            seeds.push(query(id, name, qtype, Some(512 + 100 * j as u16)));
        }
    }
    seeds.push(query_wire(1, &name_of_labels(127), rtype::A, None));
    seeds.push(query_wire(
        2,
        &name_of_length(255, true),
        rtype::A,
        Some(4096),
    ));
    seeds
}

/// Where the question's label length bytes are, up to the first byte that is not one.
fn label_offsets(packet: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = wire::HEADER_LEN;
    while let Some(&len) = packet.get(at) {
        if len == 0 || len > 63 {
            break;
        }
        offsets.push(at);
        at += 1 + usize::from(len);
    }
    offsets
}

/// Where the question ends (after type and class), when the name is plain labels.
fn question_end(packet: &[u8]) -> Option<usize> {
    let last = label_offsets(packet).last().copied();
    let root = last.map_or(wire::HEADER_LEN, |at| at + 1 + usize::from(packet[at]));
    (packet.get(root) == Some(&0)).then_some(root + 5)
}

fn add_to_count(packet: &mut [u8], at: usize, n: u16) {
    if packet.len() >= wire::HEADER_LEN {
        let count = u16::from_be_bytes([packet[at], packet[at + 1]]).wrapping_add(n);
        packet[at..at + 2].copy_from_slice(&count.to_be_bytes());
    }
}

/// One change to a packet; applied a few times over.
fn mutate(rng: &mut Rng, packet: &mut Vec<u8>) {
    match rng.below(16) {
        // A bit flipped.
        0 | 1 if !packet.is_empty() => {
            let at = rng.below(packet.len());
            packet[at] ^= 1 << rng.below(8);
        }
        // A byte overwritten.
        2 if !packet.is_empty() => {
            let at = rng.below(packet.len());
            let random = rng.byte();
            packet[at] = *rng.pick(&[0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF, random]);
        }
        // Cut short.
        3 => packet.truncate(rng.below(packet.len() + 1)),
        // Bytes added at the end.
        4 => {
            let n = 1 + rng.below(64);
            packet.extend(rng.bytes(n));
        }
        // A byte inserted or removed in the middle.
        5 if !packet.is_empty() => {
            let at = rng.below(packet.len());
            if rng.below(2) == 0 {
                packet.insert(at, rng.byte());
            } else {
                packet.remove(at);
            }
        }
        // A label length changed.
        6 => {
            let offsets = label_offsets(packet);
            if !offsets.is_empty() {
                let at = *rng.pick(&offsets);
                let len = packet[at];
                let random = rng.byte();
                packet[at] = *rng.pick(&[
                    0,
                    len.wrapping_add(1),
                    len.wrapping_sub(1),
                    63,
                    64,
                    0x80,
                    0xC0,
                    random,
                ]);
            }
        }
        // A count in the header changed.
        7 if packet.len() >= wire::HEADER_LEN => {
            let at = 4 + 2 * rng.below(4);
            let random = rng.next() as u16;
            let count = *rng.pick(&[0, 1, 2, 3, 0xFF, 0xFFFF, random]);
            packet[at..at + 2].copy_from_slice(&count.to_be_bytes());
        }
        // An OPT record added: any payload size, now and then version 1.
        8 => {
            let version = if rng.below(4) == 0 { 1 } else { 0 };
            let random = rng.next() as u16;
            let size = *rng.pick(&[0, 511, 512, 1232, 1233, 4096, 0xFFFF, random]);
            packet.extend(opt(size, version));
            add_to_count(packet, 10, 1);
        }
        // The last 11 bytes (the OPT record of a seed with EDNS) repeated.
        9 if packet.len() >= wire::HEADER_LEN + 11 => {
            let tail = packet[packet.len() - 11..].to_vec();
            packet.extend(tail);
            add_to_count(packet, 10, 1);
        }
        // A compression pointer in place of a label of the question, or of the root.
        10 => {
            let mut offsets = label_offsets(packet);
            if let Some(end) = question_end(packet) {
                offsets.push(end - 5);
            }
            if !offsets.is_empty() {
                let at = *rng.pick(&offsets);
                let random = rng.below(packet.len() + 1) as u16;
                let target = *rng.pick(&[12, at as u16, random]);
                let pointer = 0xC000 | (target & 0x3FFF);
                let mut rest = pointer.to_be_bytes().to_vec();
                rest.extend_from_slice(&[0, 1, 0, 1]);
                packet.truncate(at);
                packet.extend(rest);
            }
        }
        // A record added after the question, in any section, its name a pointer.
        11 => {
            let mut record = vec![0xC0, 0x0C];
            record.extend_from_slice(&rtype::A.to_be_bytes());
            record.extend_from_slice(&[0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
            let at = question_end(packet)
                .unwrap_or(packet.len())
                .min(packet.len());
            packet.splice(at..at, record);
            add_to_count(packet, 6 + 2 * rng.below(3), 1);
        }
        // The question's name replaced by a long one: 127 labels, 255 bytes or 256.
        12 if packet.len() >= wire::HEADER_LEN => {
            let name = match rng.below(4) {
                0 => name_of_labels(127),
                1 => name_of_labels(128),
                2 => name_of_length(255, rng.below(2) == 0),
                _ => name_of_length(256, rng.below(2) == 0),
            };
            let end = question_end(packet).map_or(packet.len(), |end| end - 4);
            packet.splice(wire::HEADER_LEN..end.max(wire::HEADER_LEN), name);
        }
        // The flags changed: QR, opcode, anything.
        13 if packet.len() >= 4 => {
            let at = 2 + rng.below(2);
            packet[at] = rng.byte();
        }
        // The type or class changed.
        14 => {
            if let Some(end) = question_end(packet).filter(|&end| end <= packet.len()) {
                let at = end - 4 + 2 * rng.below(2);
                let random = rng.next() as u16;
                let value = *rng.pick(&[0, 1, 3, 41, 252, 255, 254, random]);
                packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        // A letter of the name uppercased.
        _ => {
            let first = label_offsets(packet).first().map(|&at| at + 1);
            if let Some(letter) = first.and_then(|at| packet.get_mut(at)) {
                letter.make_ascii_uppercase();
            }
        }
    }
}

fn answer(packet: &[u8], transport: Transport) -> (Option<Rcode>, Vec<u8>) {
    let mut out = Vec::new();
    let rcode = ZONE.answer(packet, &mut out, transport);
    (rcode, out)
}

#[test]
fn random_packets_of_any_length_keep_every_invariant() {
    let mut rng = Rng(0x5EED_0000_D115_0001);
    let mut answered = 0;
    for _ in 0..RANDOM_PACKETS {
        let len = rng.below(600);
        let mut packet = rng.bytes(len);
        // Half of them look like standard queries in the header, so they get past it.
        if len >= 4 && rng.below(2) == 0 {
            packet[2] &= 0x07;
            packet[3] = 0;
            if len >= 6 {
                packet[4] = 0;
                packet[5] = 1;
            }
        }
        answered += usize::from(check(&packet).is_some());
    }
    assert!(answered > RANDOM_PACKETS / 4, "only {answered} answered");
}

#[test]
fn mutated_queries_keep_every_invariant() {
    let seeds = seeds();
    for seed in &seeds {
        assert!(
            matches!(
                check(seed),
                Some(Rcode::NoError | Rcode::NxDomain | Rcode::Refused)
            ),
            "seed {seed:02x?}"
        );
    }
    let mut rng = Rng(0x5EED_0000_D115_0002);
    let mut codes = std::collections::HashMap::new();
    for _ in 0..MUTATED_QUERIES {
        let mut packet = rng.pick(&seeds).clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut packet);
        }
        let code = check(&packet).map_or("none", Rcode::as_str);
        *codes.entry(code).or_insert(0usize) += 1;
    }
    // The mutations reach every kind of answer, not only the first error.
    for code in [
        "none", "noerror", "nxdomain", "refused", "formerr", "notimp", "badvers",
    ] {
        assert!(
            codes.get(code).is_some_and(|&n| n > 100),
            "{code}: {codes:?}"
        );
    }
}

#[test]
fn a_query_with_the_qr_bit_set_gets_no_answer() {
    let mut packet = query(7, "api.shop.svc.clusterset.local", rtype::A, None);
    packet[2] |= 0x80;
    assert_eq!(answer(&packet, Transport::Udp).0, None);
    assert_eq!(answer(&packet, Transport::Tcp).0, None);
}

#[test]
fn a_packet_shorter_than_a_header_gets_no_answer() {
    let packet = query(7, "api.shop.svc.clusterset.local", rtype::A, None);
    for len in 0..wire::HEADER_LEN {
        assert_eq!(answer(&packet[..len], Transport::Udp).0, None, "{len}");
        assert_eq!(answer(&packet[..len], Transport::Tcp).0, None, "{len}");
    }
    // A bare header is answered (with FORMERR: it has no question).
    assert_eq!(check(&packet[..wire::HEADER_LEN]), Some(Rcode::FormErr));
}

#[test]
fn a_query_with_two_questions_gets_formerr() {
    let mut packet = query(7, "api.shop.svc.clusterset.local", rtype::A, None);
    let question = packet[wire::HEADER_LEN..].to_vec();
    packet.extend(question);
    packet[5] = 2;
    assert_eq!(check(&packet), Some(Rcode::FormErr));
    let message = Message::from_vec(&answer(&packet, Transport::Udp).1).unwrap();
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    assert!(message.queries.is_empty());
}

#[test]
fn opcode_2_gets_notimp_with_the_opcode_echoed() {
    let mut packet = query(7, "api.shop.svc.clusterset.local", rtype::A, None);
    packet[2] = (packet[2] & 0x87) | (2 << 3);
    assert_eq!(check(&packet), Some(Rcode::NotImp));
    let message = Message::from_vec(&answer(&packet, Transport::Udp).1).unwrap();
    assert_eq!(message.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(u8::from(message.metadata.op_code), 2);
}

#[test]
fn edns_version_1_gets_badvers_in_the_opt_record() {
    let mut packet = query(7, "api.shop.svc.clusterset.local", rtype::A, None);
    packet.extend(opt(1232, 1));
    packet[11] = 1;
    assert_eq!(check(&packet), Some(Rcode::BadVers));
    let out = answer(&packet, Transport::Udp).1;
    assert_eq!(out[3] & 0x0F, 0, "the header keeps the low bits of 16");
    let message = Message::from_vec(&out).unwrap();
    let edns = message.edns.expect("an OPT record");
    assert_eq!(edns.rcode_high(), 1, "16 >> 4 in the OPT record");
    assert_eq!(edns.version(), 0, "the version this server speaks");
    assert!(message.answers.is_empty());
}

#[test]
fn an_uppercase_query_gets_the_lowercase_answer_with_its_own_question() {
    for (name, qtype, edns) in [
        ("api.shop.svc.clusterset.local", rtype::A, None),
        (
            "west.api.shop.svc.clusterset.local",
            rtype::AAAA,
            Some(1232),
        ),
        ("_http._tcp.api.shop.svc.clusterset.local", rtype::SRV, None),
        (
            "_tcp._tcp.bulk.shop.svc.clusterset.local",
            rtype::SRV,
            Some(1232),
        ),
        ("clusterset.local", rtype::ANY, None),
        ("nothere.shop.svc.clusterset.local", rtype::A, Some(1232)),
        ("example.com", rtype::A, None),
    ] {
        let lower = query(9, name, qtype, edns);
        let upper = query(9, &name.to_ascii_uppercase(), qtype, edns);
        let question = wire::HEADER_LEN..wire::HEADER_LEN + wire_name(name).len() + 4;
        for transport in [Transport::Udp, Transport::Tcp] {
            let (lower_code, lower_out) = answer(&lower, transport);
            let (upper_code, upper_out) = answer(&upper, transport);
            assert_eq!(lower_code, upper_code, "{name}");
            assert_eq!(lower_out.len(), upper_out.len(), "{name}");
            assert_eq!(
                upper_out[question.clone()],
                upper[question.clone()],
                "{name}"
            );
            assert_eq!(lower_out[..question.start], upper_out[..question.start]);
            assert_eq!(
                lower_out[question.end..],
                upper_out[question.end..],
                "{name}"
            );
        }
    }
}

#[test]
fn a_name_of_127_labels_is_answered_and_one_of_128_gets_formerr() {
    let packet = query_wire(7, &name_of_labels(127), rtype::A, None);
    assert_eq!(check(&packet), Some(Rcode::Refused));
    let packet = query_wire(7, &name_of_labels(128), rtype::A, None);
    assert_eq!(check(&packet), Some(Rcode::FormErr));
}

#[test]
fn a_name_of_255_bytes_is_answered_and_one_of_256_gets_formerr() {
    for edns in [None, Some(1232)] {
        let packet = query_wire(7, &name_of_length(255, true), rtype::A, edns);
        assert_eq!(check(&packet), Some(Rcode::NxDomain));
        let packet = query_wire(7, &name_of_length(255, false), rtype::A, edns);
        assert_eq!(check(&packet), Some(Rcode::Refused));
        let packet = query_wire(7, &name_of_length(256, true), rtype::A, edns);
        assert_eq!(check(&packet), Some(Rcode::FormErr));
    }
}

#[test]
fn a_big_answer_stays_within_each_udp_limit_and_whole_over_tcp() {
    let name = "_tcp._tcp.bulk.shop.svc.clusterset.local";
    for (edns, limit) in [
        (None, 512),
        (Some(100), 512),
        (Some(1000), 1000),
        (Some(1232), 1232),
        (Some(4096), 1232),
    ] {
        let packet = query(7, name, rtype::SRV, edns);
        assert_eq!(check(&packet), Some(Rcode::NoError));
        let udp = answer(&packet, Transport::Udp).1;
        // Filled to within one SRV record (its target is never compressed) of the limit.
        assert!(
            udp.len() <= limit && udp.len() > limit - 64,
            "{edns:?}: {}",
            udp.len()
        );
        assert!(Message::from_vec(&udp).unwrap().metadata.truncation);
    }
    let packet = query(7, name, rtype::SRV, None);
    let tcp = Message::from_vec(&answer(&packet, Transport::Tcp).1).unwrap();
    assert_eq!(tcp.answers.len(), 80);
}

//! The sidecar's protocol detection against any first bytes, without a fuzzer: random bytes
//! and mutations of real openings (HTTP/1 requests, the HTTP/2 preface, TLS, SSH, a database's
//! greeting) from a fixed-seed generator, each checked with the same invariants as the
//! cargo-fuzz target `protocol_detection` in fuzz/ (which includes the same support file).

#[path = "support/detect_invariants.rs"]
mod invariants;

use strait_sidecar::outbound::looks_like_http;

/// Random peeks, under 1 s in a debug build.
const RANDOM_PEEKS: usize = 200_000;
/// Mutated openings, under 1 s in a debug build.
const MUTATED_OPENINGS: usize = 200_000;

#[path = "../../gateway/tests/support/rng.rs"]
mod rng;

use rng::Rng;

/// What apps send first, HTTP or not.
const OPENINGS: [&[u8]; 12] = [
    b"GET / HTTP/1.1\r\nHost: api\r\n",
    b"POST /orders HTTP/1.1\r\n",
    b"PUT /a HTTP/1.1\r\n",
    b"HEAD / HTTP/1.0\r\n",
    b"DELETE /a/1 HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"PATCH /a HTTP/1.1\r\n",
    b"TRACE / HTTP/1.1\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
];

#[test]
fn random_peeks_are_told_apart_by_the_rule() {
    let mut rng = Rng(0x5EED_0000_DE7E_0001);
    for _ in 0..RANDOM_PEEKS {
        let len = rng.below(invariants::PEEKED + 1);
        let first: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        invariants::check(&first);
    }
}

#[test]
fn mutated_openings_are_told_apart_by_the_rule() {
    let mut rng = Rng(0x5EED_0000_DE7E_0002);
    let mut http = 0;
    for _ in 0..MUTATED_OPENINGS {
        let mut first = OPENINGS[rng.below(OPENINGS.len())].to_vec();
        for _ in 0..1 + rng.below(2) {
            if first.is_empty() {
                break;
            }
            let at = rng.below(first.len());
            match rng.below(4) {
                0 => first[at] ^= 1 << rng.below(8),
                1 => first[at] = rng.byte(),
                2 => first[at] = first[at].to_ascii_lowercase(),
                _ => first.truncate(at),
            }
        }
        invariants::check(&first);
        http += usize::from(looks_like_http(
            &first[..first.len().min(invariants::PEEKED)],
        ));
    }
    // The mutations reach both answers, not only one.
    assert!(http > MUTATED_OPENINGS / 10, "{http} taken for HTTP");
    assert!(http < MUTATED_OPENINGS * 9 / 10, "{http} taken for HTTP");
}

#[test]
fn a_short_read_of_a_method_is_tcp_until_its_space_and_of_the_preface_from_8_bytes() {
    assert!(!looks_like_http(b"GET"));
    assert!(looks_like_http(b"GET "));
    assert!(!looks_like_http(b"OPTIONS"));
    assert!(looks_like_http(b"OPTIONS "));
    assert!(!looks_like_http(b"PRI * H"));
    assert!(looks_like_http(b"PRI * HT"));
    assert!(!looks_like_http(b"PRI * HX"));
    assert!(!looks_like_http(b"get / HTTP/1.1"));
    for opening in OPENINGS {
        invariants::check(opening);
    }
}

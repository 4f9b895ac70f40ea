//! What the sidecar's protocol detection must say of any first bytes of a redirected
//! connection, shared by the mutation test (sidecar/tests/detect_mutations.rs) and the
//! cargo-fuzz target `protocol_detection` (which includes this file). Detection is checked
//! against the rule written out independently: HTTP when the bytes begin with a method and a
//! space (or the HTTP/2 preface), or are a beginning of one at least 8 bytes long (a short
//! read of a long preface); TCP otherwise.

use strait_sidecar::outbound::looks_like_http;

/// The HTTP/1 methods the sidecar routes as HTTP, each with its space.
pub const METHODS: [&str; 8] = [
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "TRACE ",
];
/// The start of the HTTP/2 connection preface.
pub const PREFACE: &str = "PRI * HTTP/2";
/// How many bytes the sidecar peeks at.
pub const PEEKED: usize = 16;

/// The rule, token by token.
pub fn expected(first: &[u8]) -> bool {
    METHODS
        .iter()
        .chain(std::iter::once(&PREFACE))
        .map(|token| token.as_bytes())
        .any(|token| first.starts_with(token) || (first.len() >= 8 && token.starts_with(first)))
}

/// Checks every invariant on one peek's bytes (and on each shorter read of them).
pub fn check(first: &[u8]) {
    let first = &first[..first.len().min(PEEKED)];
    for len in 0..=first.len() {
        let read = &first[..len];
        let http = looks_like_http(read);
        assert_eq!(http, expected(read), "{:?}", String::from_utf8_lossy(read));
    }
}

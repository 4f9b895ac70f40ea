//! Throws arbitrary first bytes at the sidecar's protocol detection (`looks_like_http`), which
//! decides whether a redirected connection is proxied as HTTP or as TCP. See ../README.md for
//! the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../sidecar/tests/support/detect_invariants.rs"]
mod invariants;

fuzz_target!(|first: &[u8]| {
    invariants::check(first);
});

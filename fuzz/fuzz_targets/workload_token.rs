//! Throws arbitrary text at the gateway as a sidecar's bootstrap token (`verify_workload`).
//! See ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/link_key.rs"]
mod link_key;
#[path = "../../federation/tests/support/token_invariants.rs"]
#[allow(dead_code)]
mod token_invariants;

fuzz_target!(|bytes: &[u8]| {
    // A gRPC string field: UTF-8 or the request does not decode.
    let Ok(token) = std::str::from_utf8(bytes) else {
        return;
    };
    token_invariants::check_workload(token);
});

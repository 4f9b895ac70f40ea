//! Throws arbitrary messages at the gateway's workload API: one byte names the message
//! (CertifyRequest, RegisterRequest, ...), the rest is its protobuf; each message read goes on
//! through the pure checks the gateway makes of it. See ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/workload_api_invariants.rs"]
#[allow(dead_code)]
mod invariants;
#[path = "../../federation/tests/support/link_key.rs"]
#[allow(dead_code)]
mod link_key;
#[path = "../../federation/tests/support/token_invariants.rs"]
#[allow(dead_code)]
mod token_invariants;

fuzz_target!(|input: &[u8]| {
    invariants::check(input);
});

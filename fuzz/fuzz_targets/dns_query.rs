//! Throws arbitrary packets at the gateway's DNS answer path, over UDP and TCP, and checks what
//! comes back against an independent reader (hickory-proto) and a few rules of the protocol.
//! See ../README.md for the invariants.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use strait_gateway::dns::zone::Zone;

#[path = "../../gateway/tests/support/dns_invariants.rs"]
mod invariants;

/// Built once: the zone does not change between inputs.
static ZONE: LazyLock<Zone> = LazyLock::new(invariants::build_zone);

fuzz_target!(|packet: &[u8]| {
    invariants::check(&ZONE, packet);
});

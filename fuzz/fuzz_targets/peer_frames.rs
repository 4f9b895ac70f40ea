//! Throws arbitrary bytes at the peer protocol as a peer gateway's control stream: the frame
//! decoder (whole and in pieces) against an independent reading of the length prefixes, the
//! handshake parsers, and a session fed every frame decoded, with the memory each may take
//! bounded. See ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/peer_frame_invariants.rs"]
mod invariants;

fuzz_target!(|stream: &[u8]| {
    invariants::check(stream);
});

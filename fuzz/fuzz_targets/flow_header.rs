//! Throws arbitrary bytes at the start of a relayed flow: the header a sidecar or a peer
//! gateway sends (its 2-byte length, the protobuf, the checks of `FlowTarget::from_wire`) and
//! the answer after it. See ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/flow_invariants.rs"]
mod invariants;

fuzz_target!(|stream: &[u8]| {
    invariants::check(stream);
});

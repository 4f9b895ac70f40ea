//! Throws arbitrary text at the policy parsers: as the YAML of `strait apply` (every kind,
//! through `parse_documents`) and as one policy's JSON from a peer or the state file. See
//! ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/policy_invariants.rs"]
mod invariants;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    invariants::check(text);
});

//! Throws arbitrary text at `strait apply` as a Link document (`parse_documents`), and the
//! token of each Link taken at the gateway's key and ledger; also the whole text as a token,
//! as a peer's hello carries it. See ../README.md for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../federation/tests/support/allocation.rs"]
mod allocation;
#[path = "../../federation/tests/support/link_invariants.rs"]
mod invariants;
#[path = "../../federation/tests/support/link_key.rs"]
mod link_key;
#[path = "../../federation/tests/support/token_invariants.rs"]
#[allow(dead_code)]
mod token_invariants;

fuzz_target!(|bytes: &[u8]| {
    // The CLI and the operator API take UTF-8 text only.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    invariants::check(text);
    token_invariants::check_join(text);
});

//! What the gateway must do with any policy text: YAML an operator applies (every kind, through
//! `parse_documents`), and JSON a peer or the state file hands over (`Policy::from_json`, and
//! `Policy`'s `Deserialize`). Shared by the mutation test
//! (federation/tests/decoder_mutations.rs) and the cargo-fuzz target `policy_documents` (which
//! includes this file).

use strait_federation::document::DocumentPlace;
use strait_federation::policy::{MAX_DOCUMENT_BYTES, Policy, PolicyKind};
use strait_federation::resource::{Resource, parse_documents};

use super::allocation::{assert_bounded, peak_during};

/// The name the text is parsed under; every error starts with it.
pub const SOURCE: &str = "policy.yaml";

/// Checks every invariant on one text: as the YAML of `strait apply`, and as the JSON of one
/// policy from a peer.
pub fn check(text: &str) {
    let (parsed, peak) = peak_during(|| parse_documents(SOURCE, text));
    assert_bounded("parsing policy documents", text.len(), peak, 4096, 1 << 20);
    match parsed {
        Ok(resources) => {
            assert!(!resources.is_empty(), "a text taken with no document in it");
            for resource in resources {
                if let Resource::Policy { key, policy } = resource {
                    check_travels(&key, &policy);
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(SOURCE),
                "an error without its file: {message}"
            );
        }
    }
    check_json(text);
}

/// A policy taken once is taken wherever it travels, as the same policy.
fn check_travels(key: &strait_federation::policy::PolicyKey, policy: &Policy) {
    let json = policy.to_json();
    assert!(
        json.len() <= MAX_DOCUMENT_BYTES,
        "{} bytes of JSON",
        json.len()
    );
    let again = Policy::from_json(key, &json, "peer").expect("a policy taken travels");
    assert_eq!(&again, policy);
    assert_eq!(
        again.checked(),
        policy.checked(),
        "{key} checks otherwise at a peer"
    );
    let stored: Policy = serde_json::from_str(&json).expect("a policy taken is stored");
    assert_eq!(stored.checked(), policy.checked());
}

/// The text as one policy's JSON, as a peer sends it: read for the kind it names, it is taken
/// by `from_json` and by the state file exactly when `Policy::parse` takes it.
fn check_json(text: &str) {
    let Ok(document) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    // The state file reads the kind as commands name it (any case, plural or singular).
    let named = document
        .get("kind")
        .and_then(|k| k.as_str())
        .and_then(PolicyKind::parse);
    let kind = named.unwrap_or(PolicyKind::AuthorizationPolicy);
    let place = DocumentPlace {
        source: "peer".into(),
        index: 1,
        kind: Some(kind.to_string()),
        name: None,
    };
    let parsed = Policy::parse(kind, document.clone(), &place);
    let stored = serde_json::from_str::<Policy>(text);
    match parsed {
        Ok((key, policy)) => {
            if text.len() <= MAX_DOCUMENT_BYTES {
                let from_peer = Policy::from_json(&key, text, "peer").expect("taken from a peer");
                assert_eq!(from_peer.checked(), policy.checked());
            }
            if named.is_some() {
                let stored =
                    stored.expect("a policy Policy::parse takes is read from the state file");
                assert_eq!(stored.checked(), policy.checked());
                check_travels(&key, &policy);
            } else {
                assert!(stored.is_err(), "the state file took a policy of no kind");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("peer"), "{message}");
            assert!(
                stored.is_err(),
                "the state file took what a peer is refused"
            );
        }
    }
}

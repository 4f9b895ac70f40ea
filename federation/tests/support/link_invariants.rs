//! What `strait apply` and the operator API must do with any text offered as a Link document,
//! shared by the mutation test (federation/tests/decoder_mutations.rs) and the cargo-fuzz
//! target `link_document` (which includes this file with `token_invariants`): parsed within a
//! memory bound, refused naming the file, and a Link taken is one that reads back the same and
//! whose token is checked like any other.

use strait_federation::link::LinkDocument;
use strait_federation::resource::{Resource, parse_documents};

use super::allocation::{assert_bounded, peak_during};
use super::token_invariants::check_join;

/// The name the text is parsed under; every error starts with it.
pub const SOURCE: &str = "link.yaml";

/// Checks every invariant on one text.
pub fn check(text: &str) {
    let (parsed, peak) = peak_during(|| parse_documents(SOURCE, text));
    assert_bounded("parsing a Link document", text.len(), peak, 4096, 1 << 20);
    let resources = match parsed {
        Ok(resources) => resources,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(SOURCE),
                "an error without its file: {message}"
            );
            return;
        }
    };
    assert!(!resources.is_empty(), "a text taken with no document in it");
    for resource in resources {
        let Resource::Link(spec) = resource else {
            continue;
        };
        assert!(spec.root_fingerprint.starts_with("sha256:"));
        assert!(!spec.gateway_address.is_empty());
        // The document a gateway prints for this spec (`strait link`) reads back as the same.
        let printed = serde_saphyr::to_string(&LinkDocument::new(spec.clone()))
            .expect("a Link document prints");
        match parse_documents(SOURCE, &printed).as_deref() {
            Ok([Resource::Link(again)]) => assert_eq!(again, &spec, "{printed}"),
            other => panic!("a Link taken does not read back: {other:?}\n{printed}"),
        }
        check_join(&spec.token);
    }
}

//! Mesh-wide policy, the part that needs no sockets: the documents operators write, checked
//! into validated types; the decision for one request; and the replicated set of policies that
//! every gateway converges on whatever the order in which changes reach it.
//!
//! `authorization` holds AuthorizationPolicy (documents and decisions), `route` HTTPRoute
//! (matches, weighted splits, timeouts, retries), `replication` the versions and the
//! last-writer-wins set. Nothing here is wired into `apply`, the peer protocol
//! or the sidecars yet.

pub mod authorization;
pub mod replication;
pub mod route;

/// The API version of policy documents.
pub const POLICY_API_VERSION: &str = "policy.strait.dev/v1alpha1";

/// What the tests of every policy kind share: parsing a document as a file would give it, and
/// checking that bad documents are refused naming the field.
#[cfg(test)]
pub(crate) mod testing {
    use crate::resource::{DocumentError, DocumentPlace};

    /// A kind's parser.
    pub type Parser<T> = fn(serde_json::Value, &DocumentPlace) -> Result<T, DocumentError>;

    /// Parses `yaml` as document 1 of the file `source`.
    pub fn parse_as<T>(source: &str, parser: Parser<T>, yaml: &str) -> Result<T, DocumentError> {
        let place = DocumentPlace {
            source: source.into(),
            index: 1,
            kind: None,
            name: None,
        };
        parser(
            serde_saphyr::from_str(yaml).expect("test documents are YAML"),
            &place,
        )
    }

    /// Asserts that each document is refused with an error naming its field and its place.
    pub fn assert_refused<T: std::fmt::Debug>(
        source: &str,
        parser: Parser<T>,
        cases: &[(String, &str)],
    ) {
        for (yaml, field) in cases {
            let err = parse_as(source, parser, yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains(&format!("{source}: document 1")), "{err}");
        }
    }
}

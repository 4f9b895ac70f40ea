//! Mesh-wide policy, the part that needs no sockets: the documents operators write, checked
//! into validated types; the decision for one request; and the replicated set of policies that
//! every gateway converges on whatever the order in which changes reach it.
//!
//! `authorization` holds AuthorizationPolicy (documents and decisions), `route` HTTPRoute
//! (matches, weighted splits, timeouts, retries), `failover` FailoverPolicy (the order of a
//! service's clusters), `replication` the versions and the last-writer-wins set, `exchange`
//! how two gateways bring each other's sets up to date, `common` the schema and checks the kinds
//! share (each kind imports it, never another kind). This module ties the kinds together: a
//! [`Policy`] is one checked document of any kind, kept with the document as written so that it
//! can travel (to peers, to sidecars, to `strait get`) and be checked again wherever it arrives.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::document::{DocumentError, DocumentPlace, field};
use crate::identity::Namespace;

pub mod authentication;
pub mod authorization;
pub mod common;
pub mod exchange;
pub mod failover;
pub mod path;
pub mod quota;
pub mod ratelimit;
pub mod replication;
pub mod route;

/// The kinds of policy documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    AuthorizationPolicy,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    RateLimitPolicy,
    Quota,
    RequestAuthentication,
    FailoverPolicy,
}

impl PolicyKind {
    /// Every kind, in the order `strait get policies` lists them.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::AuthorizationPolicy,
        PolicyKind::HttpRoute,
        PolicyKind::RateLimitPolicy,
        PolicyKind::Quota,
        PolicyKind::RequestAuthentication,
        PolicyKind::FailoverPolicy,
    ];

    /// The kind as documents write it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::HttpRoute => "HTTPRoute",
            PolicyKind::RateLimitPolicy => "RateLimitPolicy",
            PolicyKind::Quota => "Quota",
            PolicyKind::RequestAuthentication => "RequestAuthentication",
            PolicyKind::FailoverPolicy => "FailoverPolicy",
        }
    }

    /// The kind a document or a command names: its exact name, or (for commands) its
    /// lower-case name, plural or singular, as kubectl accepts them.
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        let singular = lower.strip_suffix("ies").map_or_else(
            || lower.strip_suffix('s').unwrap_or(&lower).to_owned(),
            |stem| format!("{stem}y"),
        );
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().to_ascii_lowercase() == singular)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What names one policy across the mesh: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Namespace,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A policy in its checked form.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Authorization(authorization::Authorization),
    Route(route::Route),
    RateLimit(ratelimit::RateLimit),
    Quota(quota::Quota),
    Authentication(authentication::Authentication),
    Failover(failover::Failover),
}

/// One checked policy document, kept with the document as written.
#[derive(Debug, Clone)]
pub struct Policy {
    document: serde_json::Value,
    checked: Checked,
}

/// Two policies are the same when their documents are: the checked form follows from it.
impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl Eq for Policy {}

/// The largest policy document, in bytes of JSON: policies travel to every gateway and
/// sidecar, so none may grow without bound.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 10;

impl Policy {
    /// Parses and checks a policy document of `kind` (a YAML or JSON document already read as
    /// a value). Errors name the place and the field.
    pub fn parse(
        kind: PolicyKind,
        document: serde_json::Value,
        place: &DocumentPlace,
    ) -> Result<(PolicyKey, Policy), DocumentError> {
        let size = serde_json::to_vec(&document).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_DOCUMENT_BYTES {
            return Err(field(
                place,
                "(document)",
                format!("{size} bytes; a policy may have at most {MAX_DOCUMENT_BYTES}"),
            ));
        }
        let (key, checked) = match kind {
            PolicyKind::AuthorizationPolicy => {
                let policy = authorization::authorization(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                };
                (key, Checked::Authorization(policy))
            }
            PolicyKind::HttpRoute => {
                let route = route::route(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: route.namespace.clone(),
                    name: route.name.clone(),
                };
                (key, Checked::Route(route))
            }
            PolicyKind::RateLimitPolicy => {
                let limit = ratelimit::rate_limit(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: limit.namespace.clone(),
                    name: limit.name.clone(),
                };
                (key, Checked::RateLimit(limit))
            }
            PolicyKind::Quota => {
                let quota = quota::quota(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: quota.namespace.clone(),
                    name: quota.name.clone(),
                };
                (key, Checked::Quota(quota))
            }
            PolicyKind::RequestAuthentication => {
                let authentication = authentication::authentication(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: authentication.namespace.clone(),
                    name: authentication.name.clone(),
                };
                (key, Checked::Authentication(authentication))
            }
            PolicyKind::FailoverPolicy => {
                let failover = failover::failover(document.clone(), place)?;
                let key = PolicyKey {
                    kind,
                    namespace: failover.namespace.clone(),
                    name: failover.name.clone(),
                };
                (key, Checked::Failover(failover))
            }
        };
        Ok((key, Policy { document, checked }))
    }

    /// Parses a policy that arrived as JSON text (from a peer, a gateway or the state file)
    /// and checks that it is the one `key` names. `source` says where it came from.
    pub fn from_json(key: &PolicyKey, text: &str, source: &str) -> Result<Policy, DocumentError> {
        let place = DocumentPlace {
            source: source.to_owned(),
            index: 1,
            kind: Some(key.kind.to_string()),
            name: Some(format!("{}/{}", key.namespace, key.name)),
        };
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(field(
                &place,
                "(document)",
                format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
            ));
        }
        let document: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| field(&place, "(document)", format!("not JSON: {e}")))?;
        let (parsed, policy) = Policy::parse(key.kind, document, &place)?;
        if &parsed != key {
            return Err(field(
                &place,
                "metadata",
                format!("the document is {parsed}, not {key}"),
            ));
        }
        Ok(policy)
    }

    /// The document as written.
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// The document as compact JSON, as it travels.
    pub fn to_json(&self) -> String {
        self.document.to_string()
    }

    /// The checked form.
    pub fn checked(&self) -> &Checked {
        &self.checked
    }
}

/// The set of policies a gateway holds, replicated across the mesh.
pub type PolicyStore = replication::PolicySet<PolicyKey, Policy>;

/// Written as the document; read by checking it again, so a state file edited by hand (or
/// written by an older strait) cannot hold a policy that would not pass `apply`.
impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.document.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let document = serde_json::Value::deserialize(deserializer)?;
        let kind = document
            .get("kind")
            .and_then(|k| k.as_str())
            .and_then(PolicyKind::parse)
            .ok_or_else(|| serde::de::Error::custom("a stored policy without a known kind"))?;
        let place = DocumentPlace {
            source: "stored policy".into(),
            index: 1,
            kind: Some(kind.to_string()),
            name: None,
        };
        Policy::parse(kind, document, &place)
            .map(|(_, policy)| policy)
            .map_err(serde::de::Error::custom)
    }
}

/// What the tests of every policy kind share: parsing a document as a file would give it, and
/// checking that bad documents are refused naming the field.
#[cfg(test)]
pub(crate) mod testing {
    use crate::document::{DocumentError, DocumentPlace};

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

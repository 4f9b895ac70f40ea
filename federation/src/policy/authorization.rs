//! AuthorizationPolicy: the document, its checked form, and the decision for one request.
//!
//! Decisions follow the semantics operators know from Istio's AuthorizationPolicy: first, each
//! matching `external` policy asks the operator's authorizer (the sidecar does that, it needs a
//! socket); then a request matching any `deny` policy of its service is denied; otherwise, if
//! the service has `allow` policies, it must match one of them; a service without policies
//! allows everything.

use serde::{Deserialize, Serialize};

use super::common::{
    PolicyMetadata, RequestPrincipal, Source, SourceDocument, TargetRef, check_api_version,
    checked, duration, source_of,
};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{Namespace, ServiceName, SpiffeId};
use crate::text;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Ask the external authorizer the policy names.
    External,
}

/// The external authorizer of an `external` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct External {
    /// `host:port` of its gRPC service (HTTP/2 cleartext).
    pub address: String,
    /// How long a check may take.
    pub timeout: std::time::Duration,
    /// Allow the request when the authorizer cannot answer in time (else deny it).
    pub fail_open: bool,
}

/// What a rule is about, for HTTP requests; a rule with operations never matches raw TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Upper-case methods.
    pub methods: Vec<String>,
    /// Exact paths, or prefixes written with a trailing `*` (`/admin/*`).
    pub paths: Vec<String>,
}

/// One rule: any of its sources, and any of its operations (empty lists match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    /// Its sources are those of the rule before it (a caller given many paths, rule by rule):
    /// a request checks them once. Worked out when the policy is checked.
    #[serde(default)]
    pub same_sources_as_previous: bool,
}

/// A checked authorization policy of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub namespace: Namespace,
    pub name: String,
    /// The service it protects; `None`: every service of the namespace.
    pub target: Option<ServiceName>,
    pub action: Action,
    /// A policy without rules matches every request (deny-all, or allow-all).
    pub rules: Vec<Rule>,
    /// For `external` policies: the authorizer to ask.
    pub external: Option<External>,
}

/// The request being decided.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's verified identity; `None` for a caller without a mesh certificate.
    pub caller: Option<&'a SpiffeId>,
    /// Method and path, for HTTP; `None` for raw TCP.
    pub http: Option<(&'a str, &'a str)>,
    /// Who the request's valid JWT says the caller is, if it carried one.
    pub principal: Option<&'a RequestPrincipal>,
    /// Where the caller's cluster runs, when known.
    pub caller_location: Option<&'a crate::location::Location>,
    /// Whether the calling workload is ready, as its own sidecar (registered with the mesh)
    /// says; `false` when no sidecar said so.
    pub caller_healthy: bool,
}

/// What to do with a request, and which policy said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this policy (`namespace/name`), or by the absence of a matching allow policy.
    Deny {
        by: String,
    },
}

impl Source {
    /// Whether a request matches: its caller, and its JWT when the source asks for one.
    fn matches_request(&self, request: &Request<'_>) -> bool {
        if !self.matches(request.caller) {
            return false;
        }
        if self
            .healthy
            .is_some_and(|wanted| wanted != request.caller_healthy)
        {
            return false;
        }
        if !self.locations.is_empty() {
            // `aws` matches aws/…; `aws/us-east-1` that region; a location never matches an
            // unknown one.
            let Some(location) = request.caller_location else {
                return false;
            };
            if !self.locations.iter().any(|wanted| location.within(wanted)) {
                return false;
            }
        }
        if self.request_principals.is_empty() && self.claims.is_empty() {
            return true;
        }
        let Some(principal) = request.principal else {
            return false;
        };
        let principal_ok = self.request_principals.is_empty()
            || self
                .request_principals
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => text::starts_with(&principal.principal, prefix),
                    None => text::same(p, &principal.principal),
                });
        principal_ok
            && self
                .claims
                .iter()
                .all(|(name, values)| match principal.claims.get(name) {
                    Some(serde_json::Value::String(s)) => values.contains(s),
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .filter_map(|i| i.as_str())
                        .any(|i| values.iter().any(|v| v == i)),
                    _ => false,
                })
    }
}

impl Operation {
    fn matches(&self, http: Option<(&str, &str)>) -> bool {
        let Some((method, path)) = http else {
            return false;
        };
        (self.methods.is_empty() || self.methods.iter().any(|m| text::same(m, method)))
            && (self.paths.is_empty()
                || self.paths.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => text::starts_with(path, prefix),
                    None => text::same(p, path),
                }))
    }
}

impl Rule {
    fn sources_match(&self, request: &Request<'_>) -> bool {
        self.from.is_empty() || self.from.iter().any(|s| s.matches_request(request))
    }

    fn operations_match(&self, request: &Request<'_>) -> bool {
        self.to.is_empty() || self.to.iter().any(|o| o.matches(request.http))
    }
}

impl Authorization {
    /// Whether the policy applies to `service` of `namespace`.
    pub fn protects(&self, namespace: &Namespace, service: &ServiceName) -> bool {
        &self.namespace == namespace && self.target.as_ref().is_none_or(|t| t == service)
    }

    /// Whether the request matches the policy's rules: any rule, its sources and its
    /// operations. Sources shared with the rule before are not checked again.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let mut previous = false;
        for rule in &self.rules {
            let sources = if rule.same_sources_as_previous {
                previous
            } else {
                rule.sources_match(request)
            };
            previous = sources;
            if sources && rule.operations_match(request) {
                return true;
            }
        }
        false
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Decides a request to `service` of `namespace` under `policies` (those of other services
/// are skipped).
pub fn decide<'p>(
    policies: impl IntoIterator<Item = &'p Authorization>,
    namespace: &Namespace,
    service: &ServiceName,
    request: &Request<'_>,
) -> Decision {
    let mut allow_policies = false;
    let mut allowed = false;
    for policy in policies {
        if !policy.protects(namespace, service) {
            continue;
        }
        match policy.action {
            // Asked by the sidecar before this decision (see `externals`).
            Action::External => {}
            Action::Deny if policy.matches(request) => {
                return Decision::Deny { by: policy.label() };
            }
            Action::Deny => {}
            Action::Allow => {
                allow_policies = true;
                allowed = allowed || policy.matches(request);
            }
        }
    }
    if allow_policies && !allowed {
        Decision::Deny {
            by: "no allow policy matched".into(),
        }
    } else {
        Decision::Allow
    }
}

/// The `external` policies of `service` that a request matches: each authorizer must allow it
/// before the other policies are looked at.
pub fn externals<'p>(
    policies: impl IntoIterator<Item = &'p Authorization>,
    namespace: &Namespace,
    service: &ServiceName,
    request: &Request<'_>,
) -> Vec<&'p Authorization> {
    policies
        .into_iter()
        .filter(|p| {
            p.action == Action::External && p.protects(namespace, service) && p.matches(request)
        })
        .collect()
}

/// An AuthorizationPolicy as written (Kubernetes style), before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthorizationDocument {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: AuthorizationSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthorizationSpec {
    #[serde(default)]
    target_ref: Option<TargetRef>,
    action: Action,
    #[serde(default)]
    rules: Vec<RuleDocument>,
    #[serde(default)]
    external: Option<ExternalDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExternalDocument {
    address: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fail_open: bool,
}

/// How long a check may take when the policy does not say.
const DEFAULT_EXTERNAL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest a policy may let a check take.
const MAX_EXTERNAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks the `external` block against the action.
fn external(
    place: &DocumentPlace,
    action: Action,
    document: Option<ExternalDocument>,
) -> Result<Option<External>, DocumentError> {
    let document = match (action, document) {
        (Action::External, Some(document)) => document,
        (Action::External, None) => {
            return Err(field(
                place,
                "spec.external",
                "missing: an external policy names its authorizer (address, timeout, failOpen)",
            ));
        }
        (_, Some(_)) => {
            return Err(field(
                place,
                "spec.external",
                "only a policy with action: external names an authorizer",
            ));
        }
        (_, None) => return Ok(None),
    };
    let valid_address = document
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| {
            !host.is_empty()
                && host.len() <= 253
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    if !valid_address {
        return Err(field(
            place,
            "spec.external.address",
            format!("{:?}: expected host:port", document.address),
        ));
    }
    let timeout = match document.timeout {
        None => DEFAULT_EXTERNAL_TIMEOUT,
        Some(text) => duration(&text)
            .filter(|t| *t <= MAX_EXTERNAL_TIMEOUT)
            .ok_or_else(|| {
                field(
                    place,
                    "spec.external.timeout",
                    format!("{text:?}: expected a duration like 200ms or 2s, at most 10s"),
                )
            })?,
    };
    Ok(Some(External {
        address: document.address,
        timeout,
        fail_open: document.fail_open,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDocument {
    #[serde(default)]
    from: Vec<SourceDocument>,
    #[serde(default)]
    to: Vec<OperationDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationDocument {
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// Parses and checks an AuthorizationPolicy document (a YAML document already read as a
/// value). Errors name the document and the field.
pub fn authorization(
    document: serde_json::Value,
    place: &DocumentPlace,
) -> Result<Authorization, DocumentError> {
    let document: AuthorizationDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let target = match document.spec.target_ref {
        None => None,
        Some(target) => target.service(place)?,
    };
    let rules = checked(place, "spec.rules", document.spec.rules, |rule, at| {
        Ok(Rule {
            from: checked(place, &format!("{at}.from"), rule.from, |source, at| {
                source_of(place, at, source)
            })?,
            to: checked(place, &format!("{at}.to"), rule.to, |operation, at| {
                Ok(Operation {
                    methods: checked(
                        place,
                        &format!("{at}.methods"),
                        operation.methods,
                        |m, at| {
                            let valid = !m.is_empty()
                                && m.len() <= 16
                                && m.bytes().all(|b| b.is_ascii_uppercase());
                            if valid {
                                Ok(m)
                            } else {
                                Err(field(
                                    place,
                                    at,
                                    format!("{m:?}: expected an upper-case HTTP method"),
                                ))
                            }
                        },
                    )?,
                    paths: checked(place, &format!("{at}.paths"), operation.paths, |p, at| {
                        let star = p.find('*');
                        let valid = p.starts_with('/')
                            && p.len() <= 1024
                            && star.is_none_or(|i| i == p.len() - 1);
                        if valid {
                            Ok(p)
                        } else {
                            Err(field(
                                place,
                                at,
                                format!(
                                    "{p:?}: expected a path starting with '/', with at most a trailing '*'"
                                ),
                            ))
                        }
                    })?,
                })
            })?,
            same_sources_as_previous: false,
        })
    })?;
    let mut rules = rules;
    for i in 1..rules.len() {
        rules[i].same_sources_as_previous = rules[i].from == rules[i - 1].from;
    }
    let external = external(place, document.spec.action, document.spec.external)?;
    Ok(Authorization {
        namespace,
        name,
        target,
        action: document.spec.action,
        rules,
        external,
    })
}

#[cfg(test)]
mod tests;

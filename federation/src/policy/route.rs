//! HTTPRoute: how requests to a service are matched (path, method, headers) and split by
//! weight between services of its namespace or clusters of one service, with per-route
//! timeouts, retries and a mirror. The document, its checked form, and the choice for one
//! request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{PolicyMetadata, TargetRef, check_api_version, duration};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{ClusterName, Namespace, ServiceName};

/// How a rule matches a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// One way a request can match a rule: every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub path: Option<PathMatch>,
    /// Upper case.
    pub method: Option<String>,
    /// Lower-case names and exact values.
    pub headers: Vec<(String, String)>,
}

/// Where a share of the matching requests goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// A service of the route's namespace.
    pub service: ServiceName,
    /// Only this cluster's instances of it, when set.
    pub cluster: Option<ClusterName>,
    pub weight: u32,
}

/// Retries of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Retries after the first try (so at most `attempts + 1` tries).
    pub attempts: u32,
    /// Retry requests that are not idempotent too (POST, PATCH).
    pub non_idempotent: bool,
    /// Retries may add at most this share of the live traffic (percent).
    pub budget_percent: u32,
}

/// Changes to the headers of a request or a response: set (replace), add (append), remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEdits {
    /// Lower-case names and their values.
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A copy of a share of a rule's requests, sent to another service and its answer dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// A service of the route's namespace.
    pub service: ServiceName,
    /// Only this cluster's instances of it, when set.
    pub cluster: Option<ClusterName>,
    /// The share of the rule's requests copied, 1 to 100.
    pub percent: u32,
}

/// One rule: any of its matches (none: every request), then the split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRule {
    pub matches: Vec<Match>,
    pub backends: Vec<Backend>,
    /// Made to the request before it is sent (to every backend).
    pub request_headers: HeaderEdits,
    /// Made to the response before the caller gets it.
    pub response_headers: HeaderEdits,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub retries: Option<Retries>,
    /// Where a copy of the requests goes, if anywhere.
    pub mirror: Option<Mirror>,
}

/// A checked route of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub namespace: Namespace,
    pub name: String,
    pub service: ServiceName,
    /// In order: the first rule that matches decides.
    pub rules: Vec<RouteRule>,
}

impl Match {
    fn matches<'h>(
        &self,
        method: &str,
        path: &str,
        header: &impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(exact)) => path == exact,
            // `/v2` matches `/v2` and `/v2/x`, not `/v20`.
            Some(PathMatch::Prefix(prefix)) => {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || path == prefix
                    || path
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(name, value)| header(name) == Some(value.as_str()))
    }
}

impl Route {
    /// The rule and backend for a request: the first rule with a matching match, and a backend
    /// chosen by weight with `random` (any `u64`, uniformly drawn). `None`: no rule matches
    /// (the request goes to the service as if there were no route).
    pub fn select<'h>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str>,
        random: u64,
    ) -> Option<(&RouteRule, &Backend)> {
        let rule = self.rules.iter().find(|rule| {
            rule.matches.is_empty()
                || rule
                    .matches
                    .iter()
                    .any(|m| m.matches(method, path, &header))
        })?;
        let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
        let mut point = random % total.max(1);
        for backend in &rule.backends {
            let weight = u64::from(backend.weight);
            if point < weight {
                return Some((rule, backend));
            }
            point -= weight;
        }
        None
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteDocument {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: RouteSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteSpec {
    target_ref: TargetRef,
    rules: Vec<RuleDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleDocument {
    #[serde(default)]
    matches: Vec<MatchDocument>,
    backend_refs: Vec<BackendDocument>,
    #[serde(default)]
    timeouts: Option<TimeoutsDocument>,
    #[serde(default)]
    retries: Option<RetriesDocument>,
    #[serde(default)]
    filters: Vec<FilterDocument>,
}

/// A filter, in the Gateway API's shape: its type, and the field of that type's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilterDocument {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifierDocument>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifierDocument>,
    #[serde(default)]
    request_mirror: Option<MirrorDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MirrorDocument {
    backend_ref: MirrorRefDocument,
    #[serde(default = "hundred")]
    percent: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorRefDocument {
    name: String,
    #[serde(default)]
    cluster: Option<String>,
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderModifierDocument {
    #[serde(default)]
    set: Vec<HeaderDocument>,
    #[serde(default)]
    add: Vec<HeaderDocument>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDocument {
    #[serde(default)]
    path: Option<PathDocument>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathDocument {
    #[serde(rename = "type", default = "path_prefix")]
    kind: String,
    value: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDocument {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendDocument {
    name: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeoutsDocument {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    per_try: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetriesDocument {
    attempts: u32,
    #[serde(default)]
    non_idempotent: bool,
    #[serde(default = "twenty")]
    budget_percent: u32,
}

fn twenty() -> u32 {
    20
}

/// The most rules, matches or backends of one list.
const MAX_LIST: usize = 64;
/// The most retries a rule may ask for.
const MAX_RETRIES: u32 = 10;

fn bounded<T>(
    place: &DocumentPlace,
    at: &str,
    list: &[T],
    least: usize,
) -> Result<(), DocumentError> {
    if list.len() < least || list.len() > MAX_LIST {
        return Err(field(
            place,
            at,
            format!("expected {least} to {MAX_LIST} entries, got {}", list.len()),
        ));
    }
    Ok(())
}

/// A header name, lower-cased: an HTTP token.
fn header_name(place: &DocumentPlace, at: &str, name: &str) -> Result<String, DocumentError> {
    let lower = name.to_ascii_lowercase();
    let token = !lower.is_empty()
        && lower.len() <= 128
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !token {
        return Err(field(
            place,
            at,
            format!("{name:?}: expected a header name"),
        ));
    }
    Ok(lower)
}

/// Headers a route may not change: those that carry the connection, the routing or the
/// caller's identity (only the destination's sidecar sets that one).
const PROTECTED_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-length",
    "strait-client-id",
];

/// What a rule's filters do: header edits of the request and of the response, and a mirror.
type Filters = (HeaderEdits, HeaderEdits, Option<Mirror>);

/// Checks a RequestMirror filter's mirror: a service of the namespace, maybe one cluster, and a
/// share of 1 to 100 percent.
fn mirror(
    place: &DocumentPlace,
    at: &str,
    document: MirrorDocument,
) -> Result<Mirror, DocumentError> {
    if !(1..=100).contains(&document.percent) {
        return Err(field(
            place,
            format!("{at}.percent"),
            format!("{}: expected 1 to 100", document.percent),
        ));
    }
    let backend = document.backend_ref;
    let (service, cluster) = service_ref(
        place,
        &format!("{at}.backendRef"),
        backend.name,
        backend.cluster,
    )?;
    Ok(Mirror {
        service,
        cluster,
        percent: document.percent,
    })
}

/// A reference to a service of the route's namespace, in one cluster or any (`at`: where the
/// reference is, for errors).
fn service_ref(
    place: &DocumentPlace,
    at: &str,
    name: String,
    cluster: Option<String>,
) -> Result<(ServiceName, Option<ClusterName>), DocumentError> {
    let service =
        ServiceName::new(name).map_err(|e| field(place, format!("{at}.name"), e.to_string()))?;
    let cluster = cluster
        .map(|c| {
            ClusterName::new(c).map_err(|e| field(place, format!("{at}.cluster"), e.to_string()))
        })
        .transpose()?;
    Ok((service, cluster))
}

/// What a rule's filters do.
fn filters(
    place: &DocumentPlace,
    at: &str,
    documents: Vec<FilterDocument>,
) -> Result<Filters, DocumentError> {
    bounded(place, &format!("{at}.filters"), &documents, 0)?;
    let mut request = HeaderEdits::default();
    let mut response = HeaderEdits::default();
    let mut mirrored = None;
    for (i, filter) in documents.into_iter().enumerate() {
        let at = format!("{at}.filters[{i}]");
        if filter.kind == "RequestMirror" {
            if filter.request_header_modifier.is_some() || filter.response_header_modifier.is_some()
            {
                return Err(field(
                    place,
                    at,
                    "a RequestMirror filter holds requestMirror only",
                ));
            }
            let Some(document) = filter.request_mirror else {
                return Err(field(
                    place,
                    format!("{at}.requestMirror"),
                    "missing: a RequestMirror filter needs it",
                ));
            };
            if mirrored.is_some() {
                return Err(field(
                    place,
                    at,
                    "a rule has at most one RequestMirror filter",
                ));
            }
            mirrored = Some(mirror(place, &format!("{at}.requestMirror"), document)?);
            continue;
        }
        if filter.request_mirror.is_some() {
            return Err(field(
                place,
                format!("{at}.requestMirror"),
                format!("only a RequestMirror filter holds it, not {}", filter.kind),
            ));
        }
        let (modifier, edits, field_name) = match filter.kind.as_str() {
            "RequestHeaderModifier" => (
                filter.request_header_modifier,
                &mut request,
                "requestHeaderModifier",
            ),
            "ResponseHeaderModifier" => (
                filter.response_header_modifier,
                &mut response,
                "responseHeaderModifier",
            ),
            other => {
                return Err(field(
                    place,
                    format!("{at}.type"),
                    format!(
                        "{other:?}: expected RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"
                    ),
                ));
            }
        };
        let Some(modifier) = modifier else {
            return Err(field(
                place,
                format!("{at}.{field_name}"),
                format!("missing: a {} filter needs it", filter.kind),
            ));
        };
        let at = format!("{at}.{field_name}");
        let name = |name: &str, at: String| -> Result<String, DocumentError> {
            let name = header_name(place, &at, name)?;
            if PROTECTED_HEADERS.contains(&name.as_str()) {
                return Err(field(
                    place,
                    at,
                    format!("{name:?} may not be changed by a route"),
                ));
            }
            Ok(name)
        };
        let pairs = |list: Vec<HeaderDocument>, at: String| {
            bounded(place, &at, &list, 0)?;
            list.into_iter()
                .enumerate()
                .map(|(j, h)| {
                    let valid = h.value.len() <= 4096
                        && h.value
                            .bytes()
                            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
                    if !valid {
                        return Err(field(
                            place,
                            format!("{at}[{j}].value"),
                            "expected visible ASCII, at most 4096 bytes",
                        ));
                    }
                    Ok((name(&h.name, format!("{at}[{j}].name"))?, h.value))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        edits.set.extend(pairs(modifier.set, format!("{at}.set"))?);
        edits.add.extend(pairs(modifier.add, format!("{at}.add"))?);
        bounded(place, &format!("{at}.remove"), &modifier.remove, 0)?;
        for (j, removed) in modifier.remove.iter().enumerate() {
            edits
                .remove
                .push(name(removed, format!("{at}.remove[{j}]"))?);
        }
    }
    Ok((request, response, mirrored))
}

fn rule(
    place: &DocumentPlace,
    at: &str,
    document: RuleDocument,
) -> Result<RouteRule, DocumentError> {
    bounded(place, &format!("{at}.matches"), &document.matches, 0)?;
    bounded(
        place,
        &format!("{at}.backendRefs"),
        &document.backend_refs,
        1,
    )?;
    let mut matches = Vec::with_capacity(document.matches.len());
    for (i, m) in document.matches.into_iter().enumerate() {
        let at = format!("{at}.matches[{i}]");
        let path = match m.path {
            None => None,
            Some(path) => {
                if !path.value.starts_with('/') || path.value.len() > 1024 {
                    return Err(field(
                        place,
                        format!("{at}.path.value"),
                        format!("{:?}: expected a path starting with '/'", path.value),
                    ));
                }
                Some(match path.kind.as_str() {
                    "Exact" => PathMatch::Exact(path.value),
                    "PathPrefix" => PathMatch::Prefix(path.value),
                    other => {
                        return Err(field(
                            place,
                            format!("{at}.path.type"),
                            format!("{other:?}: expected Exact or PathPrefix"),
                        ));
                    }
                })
            }
        };
        if let Some(method) = &m.method
            && (method.is_empty()
                || method.len() > 16
                || !method.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(field(
                place,
                format!("{at}.method"),
                format!("{method:?}: expected an upper-case HTTP method"),
            ));
        }
        bounded(place, &format!("{at}.headers"), &m.headers, 0)?;
        let mut headers = Vec::with_capacity(m.headers.len());
        for (j, header) in m.headers.into_iter().enumerate() {
            let name = header_name(place, &format!("{at}.headers[{j}].name"), &header.name)?;
            headers.push((name, header.value));
        }
        matches.push(Match {
            path,
            method: m.method,
            headers,
        });
    }
    let mut backends = Vec::with_capacity(document.backend_refs.len());
    for (i, backend) in document.backend_refs.into_iter().enumerate() {
        let at = format!("{at}.backendRefs[{i}]");
        let (service, cluster) = service_ref(place, &at, backend.name, backend.cluster)?;
        backends.push(Backend {
            service,
            cluster,
            weight: backend.weight,
        });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(field(
            place,
            format!("{at}.backendRefs"),
            "the weights add up to 0: no request could be sent",
        ));
    }
    let (request_headers, response_headers, mirror) = filters(place, at, document.filters)?;
    let timeouts = document.timeouts.unwrap_or(TimeoutsDocument {
        request: None,
        per_try: None,
    });
    let parse_duration = |value: Option<String>, name: &str| {
        value
            .map(|text| {
                duration(&text).ok_or_else(|| {
                    field(
                        place,
                        format!("{at}.timeouts.{name}"),
                        format!("{text:?}: expected a duration like 250ms, 2s or 1m (at most 1h)"),
                    )
                })
            })
            .transpose()
    };
    let timeout = parse_duration(timeouts.request, "request")?;
    let per_try_timeout = parse_duration(timeouts.per_try, "perTry")?;
    let retries = match document.retries {
        None => None,
        Some(retries) => {
            if retries.attempts > MAX_RETRIES {
                return Err(field(
                    place,
                    format!("{at}.retries.attempts"),
                    format!("at most {MAX_RETRIES}"),
                ));
            }
            if retries.budget_percent > 100 {
                return Err(field(
                    place,
                    format!("{at}.retries.budgetPercent"),
                    "expected 0 to 100",
                ));
            }
            Some(Retries {
                attempts: retries.attempts,
                non_idempotent: retries.non_idempotent,
                budget_percent: retries.budget_percent,
            })
        }
    };
    Ok(RouteRule {
        matches,
        backends,
        request_headers,
        response_headers,
        timeout,
        per_try_timeout,
        retries,
        mirror,
    })
}

/// Parses and checks an HTTPRoute document. Errors name the document and the field.
pub fn route(document: serde_json::Value, place: &DocumentPlace) -> Result<Route, DocumentError> {
    let document: RouteDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let service = document.spec.target_ref.service(place)?.ok_or_else(|| {
        field(
            place,
            "spec.targetRef",
            "a route needs the Service it routes",
        )
    })?;
    bounded(place, "spec.rules", &document.spec.rules, 1)?;
    let rules = document
        .spec
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(place, &format!("spec.rules[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        namespace,
        name,
        service,
        rules,
    })
}

#[cfg(test)]
mod tests;

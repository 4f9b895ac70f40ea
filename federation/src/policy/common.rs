//! What the policy kinds share: the API version, metadata and target of every policy document,
//! the sources a rule or an override names, the request principal a token gives, and the bounds
//! and durations their documents are checked against. Each kind imports from here, never from
//! another kind.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::{DocumentError, DocumentPlace, field};
use crate::identity::{ClusterName, Namespace, ServiceName, SpiffeId};
use crate::text;

/// The API version of policy documents.
pub const POLICY_API_VERSION: &str = "policy.strait.dev/v1alpha1";

/// Refuses a policy document of another API version, naming the field.
pub(super) fn check_api_version(version: &str, place: &DocumentPlace) -> Result<(), DocumentError> {
    if version != POLICY_API_VERSION {
        return Err(field(
            place,
            "apiVersion",
            format!("{version:?} is not known; expected {POLICY_API_VERSION}"),
        ));
    }
    Ok(())
}

/// The metadata of every policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyMetadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl PolicyMetadata {
    /// The namespace (`default` when absent) and the name, a DNS label like the services
    /// policies protect.
    pub(super) fn checked(
        self,
        place: &DocumentPlace,
    ) -> Result<(Namespace, String), DocumentError> {
        let namespace = Namespace::new(self.namespace.unwrap_or_else(|| "default".into()))
            .map_err(|e| field(place, "metadata.namespace", e.to_string()))?;
        ServiceName::new(self.name.as_str())
            .map_err(|e| field(place, "metadata.name", e.to_string()))?;
        Ok((namespace, self.name))
    }
}

/// What a policy applies to: a Service of its namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetRef {
    kind: String,
    name: String,
}

impl TargetRef {
    /// The service named, for kinds that always apply to one service.
    pub(super) fn required_service(
        self,
        place: &DocumentPlace,
    ) -> Result<ServiceName, DocumentError> {
        self.service(place)?
            .ok_or_else(|| field(place, "spec.targetRef", "expected a Service"))
    }

    /// The service named, checked.
    pub(super) fn service(
        self,
        place: &DocumentPlace,
    ) -> Result<Option<ServiceName>, DocumentError> {
        if self.kind != "Service" {
            return Err(field(
                place,
                "spec.targetRef.kind",
                format!("{:?}: expected Service", self.kind),
            ));
        }
        ServiceName::new(self.name)
            .map(Some)
            .map_err(|e| field(place, "spec.targetRef.name", e.to_string()))
    }
}

/// Who a rule is about; every field given must match (an empty list matches anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub clusters: Vec<ClusterName>,
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<String>,
    /// Whole SPIFFE identities (parsed when checked, so a request compares them part by part).
    pub identities: Vec<SpiffeId>,
    /// Request principals (`<iss>/<sub>` of a valid JWT), exact or with a trailing `*`; `*`
    /// alone: any valid token.
    pub request_principals: Vec<String>,
    /// Claims of the request's JWT: each named claim must hold one of the values (a string
    /// claim equal to one, or a list claim containing one).
    pub claims: Vec<(String, Vec<String>)>,
    /// Where the caller's cluster runs: `cloud`, `cloud/region` or `cloud/region/zone`.
    pub locations: Vec<String>,
    /// Whether the calling workload must be ready (`true`) or not ready (`false`) as the mesh
    /// knows it; `None`: either.
    pub healthy: Option<bool>,
}

impl Source {
    /// Whether a caller is one this source names.
    // Inlined into the rule loop: left to the compiler it became a call per rule, and 100
    // rules failing at their sources were measured 25-45 % slower.
    #[inline(always)]
    pub fn matches(&self, caller: Option<&SpiffeId>) -> bool {
        let Some(SpiffeId::Workload {
            cluster,
            namespace,
            service_account,
            ..
        }) = caller
        else {
            // Only workloads have a namespace and an account: anything else matches a source
            // only when it asks for nothing.
            return self.clusters.is_empty()
                && self.namespaces.is_empty()
                && self.service_accounts.is_empty()
                && self.identities.is_empty();
        };
        (self.clusters.is_empty() || self.clusters.contains(cluster))
            && (self.namespaces.is_empty() || self.namespaces.contains(namespace))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .iter()
                    .any(|a| text::same(a, service_account.as_str())))
            && (self.identities.is_empty() || caller.is_some_and(|c| self.identities.contains(c)))
    }
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPrincipal {
    /// `<iss>/<sub>`, as Istio writes request principals.
    pub principal: String,
    /// Every claim of the token.
    pub claims: serde_json::Value,
}

/// A source as written, before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SourceDocument {
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    locations: Vec<String>,
    #[serde(default)]
    healthy: Option<bool>,
}

/// The most rules, sources or values of one list a policy may hold: policies travel to every
/// gateway and sidecar, so one document can never grow without bound.
pub const MAX_LIST: usize = 256;

/// Checks a list's length and each of its values, naming the offending field.
pub(super) fn checked<T, U>(
    place: &DocumentPlace,
    at: &str,
    values: Vec<T>,
    check: impl Fn(T, &str) -> Result<U, DocumentError>,
) -> Result<Vec<U>, DocumentError> {
    if values.len() > MAX_LIST {
        return Err(field(place, at, format!("at most {MAX_LIST} entries")));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| check(value, &format!("{at}[{i}]")))
        .collect()
}

/// Checks one source of a rule (also the `from` of a rate limit's override).
pub(super) fn source_of(
    place: &DocumentPlace,
    at: &str,
    source: SourceDocument,
) -> Result<Source, DocumentError> {
    Ok(Source {
        healthy: source.healthy,
        clusters: checked(
            place,
            &format!("{at}.clusters"),
            source.clusters,
            |c, at| ClusterName::new(c).map_err(|e| field(place, at, e.to_string())),
        )?,
        namespaces: checked(
            place,
            &format!("{at}.namespaces"),
            source.namespaces,
            |n, at| Namespace::new(n).map_err(|e| field(place, at, e.to_string())),
        )?,
        service_accounts: checked(
            place,
            &format!("{at}.serviceAccounts"),
            source.service_accounts,
            |a, at| {
                crate::identity::AccountName::new(a.as_str())
                    .map_err(|e| field(place, at, e.to_string()))?;
                Ok(a)
            },
        )?,
        identities: checked(
            place,
            &format!("{at}.identities"),
            source.identities,
            |id, at| {
                id.parse::<SpiffeId>()
                    .map_err(|e| field(place, at, e.to_string()))
            },
        )?,
        locations: checked(
            place,
            &format!("{at}.locations"),
            source.locations,
            |l, at| {
                if crate::location::Location::valid_pattern(&l) {
                    Ok(l)
                } else {
                    Err(field(
                        place,
                        at,
                        format!("{l:?}: expected cloud, cloud/region or cloud/region/zone"),
                    ))
                }
            },
        )?,
        request_principals: checked(
            place,
            &format!("{at}.requestPrincipals"),
            source.request_principals,
            |p, at| {
                if p.is_empty() || p.len() > 1024 {
                    return Err(field(
                        place,
                        at,
                        "expected <iss>/<sub>, a prefix with *, or *",
                    ));
                }
                Ok(p)
            },
        )?,
        claims: {
            if source.claims.len() > MAX_LIST {
                return Err(field(
                    place,
                    format!("{at}.claims"),
                    format!("at most {MAX_LIST} claims"),
                ));
            }
            source
                .claims
                .into_iter()
                .map(|(name, values)| {
                    if name.is_empty() || values.is_empty() || values.len() > MAX_LIST {
                        return Err(field(
                            place,
                            format!("{at}.claims.{name}"),
                            "expected a claim name and 1 to 256 values",
                        ));
                    }
                    Ok((name, values))
                })
                .collect::<Result<_, _>>()?
        },
    })
}

/// Parses `250ms`, `2s`, `1m`.
pub(super) fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60)?),
        _ => return None,
    };
    (!duration.is_zero() && duration <= Duration::from_secs(3600)).then_some(duration)
}

/// Parses the period of a limit: `250ms`, `1s`, `1m`, and also `1h` and `1d`.
pub(super) fn period(text: &str) -> Option<Duration> {
    duration(text).or_else(|| {
        // Cut at a character, not a byte: the text may end in any character.
        let (number, unit) = if let Some(number) = text.strip_suffix('h') {
            (number, 3600)
        } else {
            (text.strip_suffix('d')?, 86_400)
        };
        let number: u64 = number.parse().ok()?;
        Some(Duration::from_secs(number.checked_mul(unit)?))
    })
}

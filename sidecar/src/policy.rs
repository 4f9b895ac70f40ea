//! The mesh-wide policies as this sidecar follows them: checked again from the documents the
//! gateway streams (a sidecar trusts no document it did not check), and arranged so that a
//! request's decision looks only at the policies that can concern it.

use std::collections::HashMap;

use strait_federation::catalog::ServiceKey;
use strait_federation::identity::{Namespace, ServiceName};
use strait_federation::policy::authentication::Authentication;
use strait_federation::policy::authorization::{self, Authorization, Decision, Request};
use strait_federation::policy::failover::Failover;
use strait_federation::policy::quota::Quota;
use strait_federation::policy::ratelimit::RateLimit;
use strait_federation::policy::route::Route;
use strait_federation::policy::{Checked, Policy, PolicyKey, PolicyKind};
use strait_federation::proto::workload::PolicyDocument;

/// The authorization policies of one namespace.
#[derive(Debug, Clone, Default)]
struct NamespacePolicies {
    /// Those without a target: every service of the namespace.
    whole: Vec<Authorization>,
    by_service: HashMap<ServiceName, Vec<Authorization>>,
}

/// The policies of one catalog view.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Authorization policies by namespace, then by the service they protect.
    authorization: HashMap<Namespace, NamespacePolicies>,
    /// Routes by the service they route.
    routes: HashMap<ServiceKey, Vec<Route>>,
    /// Rate limits by the service they limit.
    rate_limits: HashMap<ServiceKey, Vec<RateLimit>>,
    /// Quotas by the service they hold.
    quotas: HashMap<ServiceKey, Vec<Quota>>,
    /// The failover order of each service that has one (the first policy by name).
    failovers: HashMap<ServiceKey, Failover>,
    /// The namespace's RequestAuthentications.
    authentications: Vec<Authentication>,
    /// How many documents were skipped for failing their checks.
    pub refused: usize,
    /// What the table was built from (see [`fingerprint`]).
    pub fingerprint: u64,
}

/// A fingerprint of a view's policy documents: every field of each, in order. A view whose
/// fingerprint is the previous one's keeps the previous table: building it costs about 15 µs
/// a rule (150 ms at 10,000), hashing the documents under 0.5 ms, and most views change only the
/// catalog.
pub fn fingerprint(documents: &[PolicyDocument]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    documents.len().hash(&mut hasher);
    for document in documents {
        let PolicyDocument {
            kind,
            namespace,
            name,
            document,
            stamp,
            origin,
        } = document;
        (kind, namespace, name, document, stamp, origin).hash(&mut hasher);
    }
    hasher.finish()
}

impl Policies {
    /// Checks and sorts the documents of a view; one that fails its checks is skipped and
    /// logged (the gateway checked it, so this only guards against a newer gateway's fields).
    pub fn from_documents(documents: &[PolicyDocument]) -> Self {
        Self::build(documents, fingerprint(documents))
    }

    /// [`Policies::from_documents`] when the documents' fingerprint is known.
    pub(crate) fn build(documents: &[PolicyDocument], fingerprint: u64) -> Self {
        let mut policies = Self {
            fingerprint,
            ..Self::default()
        };
        for document in documents {
            let key = PolicyKind::ALL
                .into_iter()
                .find(|k| k.as_str() == document.kind)
                .zip(Namespace::new(document.namespace.as_str()).ok())
                .map(|(kind, namespace)| PolicyKey {
                    kind,
                    namespace,
                    name: document.name.clone(),
                });
            let checked = key
                .as_ref()
                .map(|key| Policy::from_json(key, &document.document, "policy from the gateway"));
            match checked {
                Some(Ok(policy)) => match policy.checked().clone() {
                    Checked::Authorization(a) => {
                        let namespace = policies
                            .authorization
                            .entry(a.namespace.clone())
                            .or_default();
                        match &a.target {
                            None => namespace.whole.push(a),
                            Some(service) => namespace
                                .by_service
                                .entry(service.clone())
                                .or_default()
                                .push(a),
                        }
                    }
                    Checked::Authentication(authentication) => {
                        policies.authentications.push(authentication)
                    }
                    Checked::Quota(quota) => policies
                        .quotas
                        .entry(ServiceKey {
                            namespace: quota.namespace.clone(),
                            name: quota.service.clone(),
                        })
                        .or_default()
                        .push(quota),
                    Checked::RateLimit(limit) => policies
                        .rate_limits
                        .entry(ServiceKey {
                            namespace: limit.namespace.clone(),
                            name: limit.service.clone(),
                        })
                        .or_default()
                        .push(limit),
                    Checked::Failover(failover) => {
                        let service = ServiceKey {
                            namespace: failover.namespace.clone(),
                            name: failover.service.clone(),
                        };
                        match policies.failovers.get(&service) {
                            Some(kept) if kept.name <= failover.name => {}
                            _ => {
                                policies.failovers.insert(service, failover);
                            }
                        }
                    }
                    Checked::Route(r) => policies
                        .routes
                        .entry(ServiceKey {
                            namespace: r.namespace.clone(),
                            name: r.service.clone(),
                        })
                        .or_default()
                        .push(r),
                },
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "skipping a policy that fails its checks");
                    policies.refused += 1;
                }
                None => {
                    tracing::warn!(kind = %document.kind, namespace = %document.namespace, "skipping a policy of an unknown kind");
                    policies.refused += 1;
                }
            }
        }
        policies
    }

    /// The decision for a request to `service` of `namespace`: the namespace's policies and
    /// the service's own, in Istio's order (a matching deny wins; then, if any allow policy
    /// applies, one must match).
    pub fn authorize(
        &self,
        namespace: &Namespace,
        service: &ServiceName,
        request: &Request<'_>,
    ) -> Decision {
        let Some(policies) = self.authorization.get(namespace) else {
            return Decision::Allow;
        };
        let own = policies.by_service.get(service).into_iter().flatten();
        authorization::decide(
            policies.whole.iter().chain(own),
            namespace,
            service,
            request,
        )
    }

    /// The `external` policies a request to `service` of `namespace` matches: their
    /// authorizers must allow it first.
    pub fn externals(
        &self,
        namespace: &Namespace,
        service: &ServiceName,
        request: &Request<'_>,
    ) -> Vec<&Authorization> {
        let Some(policies) = self.authorization.get(namespace) else {
            return Vec::new();
        };
        let own = policies.by_service.get(service).into_iter().flatten();
        authorization::externals(
            policies.whole.iter().chain(own),
            namespace,
            service,
            request,
        )
    }

    /// The RequestAuthentications that apply to `service` of `namespace`.
    pub fn authentications(
        &self,
        namespace: &Namespace,
        service: &ServiceName,
    ) -> Vec<&Authentication> {
        self.authentications
            .iter()
            .filter(|a| &a.namespace == namespace && a.target.as_ref().is_none_or(|t| t == service))
            .collect()
    }

    /// The mesh-wide quotas of a service.
    pub fn quotas(&self, service: &ServiceKey) -> &[Quota] {
        self.quotas.get(service).map_or(&[], Vec::as_slice)
    }

    /// The rate limits of a service.
    pub fn rate_limits(&self, service: &ServiceKey) -> &[RateLimit] {
        self.rate_limits.get(service).map_or(&[], Vec::as_slice)
    }

    /// The failover order of a service, if a policy gives one.
    pub fn failover(&self, service: &ServiceKey) -> Option<&Failover> {
        self.failovers.get(service)
    }

    /// The routes of a service, in the order their documents came.
    pub fn routes(&self, service: &ServiceKey) -> &[Route] {
        self.routes.get(service).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::identity::SpiffeId;

    fn document(name: &str, target: Option<&str>, action: &str, from: &str) -> PolicyDocument {
        let mut spec = serde_json::json!({
            "action": action,
            "rules": [{"from": [{"clusters": [from]}]}],
        });
        if let Some(target) = target {
            spec["targetRef"] = serde_json::json!({"kind": "Service", "name": target});
        }
        PolicyDocument {
            kind: "AuthorizationPolicy".into(),
            namespace: "shop".into(),
            name: name.into(),
            document: serde_json::json!({
                "apiVersion": "policy.strait.dev/v1alpha1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": spec,
            })
            .to_string(),
            stamp: 1,
            origin: "east".into(),
        }
    }

    fn caller(cluster: &str) -> SpiffeId {
        format!("spiffe://mesh.test/cluster/{cluster}/ns/shop/sa/web")
            .parse()
            .unwrap()
    }

    /// Namespace-wide and per-service policies both apply; another service's do not; a
    /// document that fails its checks (or names another policy) is skipped and counted.
    #[test]
    fn a_request_is_decided_by_its_namespace_and_service_policies_only() {
        let mut forged = document("allow-all", None, "allow", "east");
        forged.name = "something-else".into();
        let policies = Policies::from_documents(&[
            document("no-west-to-api", Some("api"), "deny", "west"),
            document("only-east", None, "allow", "east"),
            document("no-east-to-cart", Some("cart"), "deny", "east"),
            document("broken", None, "perhaps", "east"),
            forged,
        ]);
        assert_eq!(policies.refused, 2);
        let shop = Namespace::new("shop").unwrap();
        let api = ServiceName::new("api").unwrap();
        let cart = ServiceName::new("cart").unwrap();
        let decide = |service: &ServiceName, cluster: &str| {
            let caller = caller(cluster);
            policies.authorize(
                &shop,
                service,
                &Request {
                    caller: Some(&caller),
                    http: Some(("GET", "/")),
                    principal: None,
                    caller_location: None,
                    caller_healthy: true,
                },
            )
        };
        assert_eq!(decide(&api, "east"), Decision::Allow);
        assert_eq!(
            decide(&api, "west"),
            Decision::Deny {
                by: "shop/no-west-to-api".into()
            }
        );
        assert_eq!(
            decide(&cart, "east"),
            Decision::Deny {
                by: "shop/no-east-to-cart".into()
            }
        );
        assert!(matches!(decide(&cart, "north"), Decision::Deny { .. }));
        let other = Namespace::new("other").unwrap();
        let caller = caller("west");
        let request = Request {
            caller: Some(&caller),
            http: None,
            principal: None,
            caller_location: None,
            caller_healthy: true,
        };
        assert_eq!(policies.authorize(&other, &api, &request), Decision::Allow);
    }
}

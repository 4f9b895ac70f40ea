//! Workloads joining the mesh: the bootstrap token a new sidecar presents to its gateway to get
//! its first certificate (like a Kubernetes service-account token, scoped to one identity), and
//! the checks on what a sidecar registers.

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::{AccountName, ClusterName, Namespace, SpiffeId, TrustDomain};
use crate::link::{LinkKey, TokenError, rfc3339, token_id_text};

/// The `aud` of every bootstrap token.
pub const WORKLOAD_AUDIENCE: &str = "strait-workload";
/// How long a bootstrap token is valid unless told otherwise.
pub const DEFAULT_WORKLOAD_TOKEN_TTL_SECONDS: u64 = 24 * 3600;

/// The claims of a bootstrap token: which workload identity its holder may be certified as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadClaims {
    /// The cluster whose gateway issued the token.
    pub iss: String,
    pub aud: String,
    pub td: String,
    /// The namespace of the identity.
    pub ns: String,
    /// The service account of the identity.
    pub sa: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

impl LinkKey {
    /// Mints a bootstrap token for one workload identity of `cluster`, issued at `now` (unix
    /// seconds) with a unique `token_id` (the caller draws it at random).
    #[allow(clippy::too_many_arguments)]
    pub fn issue_workload(
        &self,
        cluster: &ClusterName,
        trust_domain: &TrustDomain,
        namespace: &Namespace,
        service_account: &AccountName,
        now: u64,
        ttl_seconds: u64,
        token_id: u128,
    ) -> Result<String, TokenError> {
        let claims = WorkloadClaims {
            iss: cluster.to_string(),
            aud: WORKLOAD_AUDIENCE.into(),
            td: trust_domain.to_string(),
            ns: namespace.to_string(),
            sa: service_account.to_string(),
            jti: token_id_text(token_id),
            iat: now,
            exp: now + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks a bootstrap token (signature, audience, issuer, trust domain, expiry) and returns
    /// the identity it grants.
    pub fn verify_workload(
        &self,
        token: &str,
        local: &ClusterName,
        trust_domain: &TrustDomain,
        now: u64,
    ) -> Result<SpiffeId, TokenError> {
        self.verify_workload_token(token, local, trust_domain, now)
            .map(|verified| verified.identity)
    }

    /// [`verify_workload`](Self::verify_workload), with the token's id (what revokes it).
    pub fn verify_workload_token(
        &self,
        token: &str,
        local: &ClusterName,
        trust_domain: &TrustDomain,
        now: u64,
    ) -> Result<VerifiedToken, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.set_audience(&[WORKLOAD_AUDIENCE]);
        let claims =
            match jsonwebtoken::decode::<WorkloadClaims>(token, &self.decoding, &validation) {
                Ok(data) => data.claims,
                Err(e) => {
                    // Say whose token it is when it names another cluster: the usual mistake is a
                    // token carried to the wrong gateway, not a forgery.
                    if let Ok(claims) =
                        jsonwebtoken::dangerous::insecure_decode::<WorkloadClaims>(token)
                        && claims.claims.iss != local.as_str()
                    {
                        return Err(TokenError::WrongCluster {
                            issued_by: claims.claims.iss,
                            expected: local.to_string(),
                        });
                    }
                    return Err(TokenError::Invalid(e.to_string()));
                }
            };
        if claims.iss != local.as_str() {
            return Err(TokenError::WrongCluster {
                issued_by: claims.iss,
                expected: local.to_string(),
            });
        }
        if claims.td != trust_domain.as_str() {
            return Err(TokenError::Invalid(format!(
                "issued for trust domain {:?}, not {trust_domain}",
                claims.td
            )));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired {
                at: rfc3339(claims.exp),
            });
        }
        let invalid = |e: crate::identity::NameError| TokenError::Invalid(e.to_string());
        Ok(VerifiedToken {
            identity: SpiffeId::Workload {
                trust_domain: trust_domain.clone(),
                cluster: local.clone(),
                namespace: Namespace::new(claims.ns).map_err(invalid)?,
                service_account: AccountName::new(claims.sa).map_err(invalid)?,
            },
            id: claims.jti,
        })
    }
}

/// A bootstrap token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The identity it grants.
    pub identity: SpiffeId,
    /// Its id (`jti`): what `strait revoke token` names.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (ClusterName, TrustDomain, Namespace, AccountName) {
        (
            ClusterName::new("east").unwrap(),
            TrustDomain::new("example.mesh").unwrap(),
            Namespace::new("shop").unwrap(),
            AccountName::new("web").unwrap(),
        )
    }

    #[test]
    fn a_bootstrap_token_grants_exactly_its_identity() {
        let key = LinkKey::generate().unwrap();
        let (cluster, td, ns, sa) = names();
        let token = key
            .issue_workload(&cluster, &td, &ns, &sa, 1000, 60, 7)
            .unwrap();
        let id = key.verify_workload(&token, &cluster, &td, 1030).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://example.mesh/cluster/east/ns/shop/sa/web"
        );
    }

    #[test]
    fn an_expired_foreign_or_link_token_is_refused() {
        let key = LinkKey::generate().unwrap();
        let (cluster, td, ns, sa) = names();
        let token = key
            .issue_workload(&cluster, &td, &ns, &sa, 1000, 60, 7)
            .unwrap();
        assert!(matches!(
            key.verify_workload(&token, &cluster, &td, 1060),
            Err(TokenError::Expired { .. })
        ));
        let west = ClusterName::new("west").unwrap();
        assert!(matches!(
            key.verify_workload(&token, &west, &td, 1001),
            Err(TokenError::WrongCluster { .. })
        ));
        let other = LinkKey::generate().unwrap();
        assert!(matches!(
            other.verify_workload(&token, &cluster, &td, 1001),
            Err(TokenError::Invalid(_))
        ));
        // West's gateway, handed east's token, says whose it is.
        assert!(matches!(
            other.verify_workload(&token, &west, &td, 1001),
            Err(TokenError::WrongCluster { .. })
        ));
        // A join token is not a bootstrap token: its audience differs.
        let (join, _) = key.issue(&cluster, &td, 1000, 60, 8).unwrap();
        assert!(matches!(
            key.verify_workload(&join, &cluster, &td, 1001),
            Err(TokenError::Invalid(_))
        ));
    }
}

//! What a gateway must do with any join token (inside a Link document, or a peer's hello) and
//! any bootstrap token (a new sidecar's), shared by the mutation test
//! (federation/tests/decoder_mutations.rs) and the cargo-fuzz targets `link_document` and
//! `workload_token` (which include this file). A token is accepted only when it is a compact
//! JWS whose header and claims read, independently, as exactly what the gateway returns.

use strait_federation::identity::{ClusterName, SpiffeId};
use strait_federation::link::{
    Admission, JoinClaims, Redemptions, TOKEN_AUDIENCE, TOKEN_SCOPE, TokenError,
};
use strait_federation::workload::{WORKLOAD_AUDIENCE, WorkloadClaims};

use super::allocation::{assert_bounded, peak_during};
use super::link_key::{NOW, cluster, jws_parts, key, trust_domain};

/// The header and claims of a token as JSON, read without the verifier.
fn read(token: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    let [header, claims, _] = jws_parts(token)?;
    Some((
        serde_json::from_slice(&header).ok()?,
        serde_json::from_slice(&claims).ok()?,
    ))
}

fn assert_es256(token: &str) -> serde_json::Value {
    let (header, claims) = read(token).expect("an accepted token is a compact JWS of JSON");
    assert_eq!(header["alg"], "ES256", "accepted with header {header}");
    claims
}

/// Checks a join token against the key's cluster, then against the ledger.
pub fn check_join(token: &str) {
    let key = key();
    let (cluster, trust_domain) = (cluster(), trust_domain());
    let (verified, peak) = peak_during(|| key.verify(token, &cluster, &trust_domain));
    assert_bounded("verifying a join token", token.len(), peak, 64, 64 << 10);
    let east = ClusterName::new("east").expect("a cluster name");
    let north = ClusterName::new("north").expect("a cluster name");
    let mut ledger = Redemptions::default();
    let admitted = ledger.admit(key, &cluster, &trust_domain, &east, token, NOW);
    match &verified {
        Ok(claims) => {
            let json = assert_es256(token);
            let read: JoinClaims =
                serde_json::from_value(json).expect("accepted claims read as join claims");
            assert_eq!(
                &read, claims,
                "the verifier returned other claims than the token's"
            );
            assert_eq!(claims.aud, TOKEN_AUDIENCE);
            assert_eq!(claims.scope, TOKEN_SCOPE);
            assert_eq!(claims.td, trust_domain.as_str());
            assert_eq!(claims.iss, cluster.as_str());
            // A bootstrap token's audience differs: no token is both.
            assert!(
                key.verify_workload(token, &cluster, &trust_domain, NOW)
                    .is_err()
            );
            if NOW < claims.exp {
                assert_eq!(admitted, Ok(Admission::First));
                // The same cluster may come back; no other may use it.
                assert_eq!(
                    ledger.admit(key, &cluster, &trust_domain, &east, token, NOW + 1),
                    Ok(Admission::Returning)
                );
                assert!(matches!(
                    ledger.admit(key, &cluster, &trust_domain, &north, token, NOW + 1),
                    Err(TokenError::Replayed { .. })
                ));
            } else {
                assert!(matches!(admitted, Err(TokenError::Expired { .. })));
            }
        }
        Err(e) => {
            assert_eq!(
                admitted.as_ref(),
                Err(e),
                "the ledger disagrees with the key"
            );
            if let TokenError::WrongCluster {
                issued_by,
                expected,
            } = e
            {
                assert_eq!(expected, cluster.as_str());
                assert_ne!(issued_by, cluster.as_str());
            }
        }
    }
}

/// Checks a bootstrap token: accepted, it grants exactly the identity its claims name, in this
/// cluster and trust domain, before its expiry.
pub fn check_workload(token: &str) {
    let key = key();
    let (cluster, trust_domain) = (cluster(), trust_domain());
    let (verified, peak) = peak_during(|| key.verify_workload(token, &cluster, &trust_domain, NOW));
    assert_bounded(
        "verifying a bootstrap token",
        token.len(),
        peak,
        64,
        64 << 10,
    );
    match verified {
        Ok(identity) => {
            let json = assert_es256(token);
            let claims: WorkloadClaims =
                serde_json::from_value(json).expect("accepted claims read as workload claims");
            assert_eq!(claims.aud, WORKLOAD_AUDIENCE);
            assert_eq!(claims.iss, cluster.as_str());
            assert_eq!(claims.td, trust_domain.as_str());
            assert!(claims.exp > NOW, "accepted after its expiry");
            let SpiffeId::Workload {
                trust_domain: granted_domain,
                cluster: granted_cluster,
                namespace,
                service_account,
            } = &identity
            else {
                panic!("a bootstrap token granted {identity}");
            };
            assert_eq!(granted_domain, &trust_domain);
            assert_eq!(granted_cluster, &cluster);
            assert_eq!(namespace.as_str(), claims.ns);
            assert_eq!(service_account.as_str(), claims.sa);
            let text = identity.to_string();
            assert_eq!(text.parse::<SpiffeId>().ok(), Some(identity), "{text}");
            assert!(key.verify(token, &cluster, &trust_domain).is_err());
        }
        Err(TokenError::WrongCluster {
            issued_by,
            expected,
        }) => {
            assert_eq!(expected, cluster.as_str());
            assert_ne!(issued_by, cluster.as_str());
        }
        Err(TokenError::Invalid(_) | TokenError::Expired { .. }) => {}
        Err(other) => panic!("a bootstrap token refused with {other}"),
    }
}

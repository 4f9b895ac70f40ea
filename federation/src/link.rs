//! Linking clusters: the Link document one cluster hands another, the signed, scoped, expiring
//! join token inside it, and the ledger with which the issuing gateway admits the token once and
//! refuses replays.

use std::collections::BTreeMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::{ClusterName, TrustDomain};
use crate::pki::PkiError;
use crate::proto::peer::RefusalCode;

/// The `aud` of every join token.
pub const TOKEN_AUDIENCE: &str = "strait-link";
/// The only scope a join token grants.
pub const TOKEN_SCOPE: &str = "link";
/// How long a join token may wait for its first use unless told otherwise.
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 24 * 3600;

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The cluster whose gateway issued the token (and will admit it).
    pub iss: String,
    pub aud: String,
    /// The trust domain both clusters must share.
    pub td: String,
    /// What the token allows: linking, nothing else.
    pub scope: String,
    /// Unique id: a token is redeemed by one cluster only.
    pub jti: String,
    pub iat: u64,
    /// Latest time of first use (unix seconds).
    pub exp: u64,
}

/// Why a join token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token is invalid ({0}): it was tampered with or not issued by this cluster's gateway"
    )]
    Invalid(String),
    #[error("the token was issued by cluster {issued_by}, not by {expected}")]
    WrongCluster { issued_by: String, expected: String },
    #[error(
        "the token expired at {at}; mint a new one (`strait link` for a Link document, `strait sidecar token` for a sidecar)"
    )]
    Expired { at: String },
    #[error("the join token {jti} was already redeemed by cluster {by}")]
    Replayed { jti: String, by: String },
    #[error(
        "the join token {jti} was revoked when cluster {by} was unlinked; mint a new Link document with `strait link`"
    )]
    Revoked { jti: String, by: String },
    #[error("a cluster cannot link to itself")]
    SelfLink,
}

impl TokenError {
    /// The refusal code sent to the peer.
    pub fn code(&self) -> RefusalCode {
        match self {
            TokenError::Invalid(_) => RefusalCode::RefusalTokenInvalid,
            TokenError::WrongCluster { .. } | TokenError::SelfLink => {
                RefusalCode::RefusalWrongCluster
            }
            TokenError::Expired { .. } => RefusalCode::RefusalTokenExpired,
            TokenError::Replayed { .. } => RefusalCode::RefusalTokenReplayed,
            TokenError::Revoked { .. } => RefusalCode::RefusalUnlinked,
        }
    }
}

/// Formats unix seconds as RFC 3339.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// A token id as text: 32 hex digits.
pub fn token_id_text(token_id: u128) -> String {
    format!("{token_id:032x}")
}

/// The key with which a gateway signs its join tokens and its sidecars' bootstrap tokens
/// (ES256). It never leaves the gateway.
pub struct LinkKey {
    pem: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

impl LinkKey {
    /// A new key.
    pub fn generate() -> Result<Self, PkiError> {
        let pair = rcgen::KeyPair::generate()?;
        Self::from_pem(&pair.serialize_pem(), Path::new("<generated>"))
    }

    /// Loads a key from PKCS#8 PEM text.
    pub fn from_pem(pem: &str, path: &Path) -> Result<Self, PkiError> {
        let bad = |what: String| PkiError::Pem {
            path: path.to_owned(),
            what,
        };
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| bad(format!("bad link key: {e}")))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| bad(format!("bad link key: {e}")))?;
        let decoding = DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes())
            .map_err(|e| bad(format!("bad link key: {e}")))?;
        Ok(Self {
            pem: pem.to_owned(),
            encoding,
            decoding,
        })
    }

    /// The key as PEM (to save it, owner-only).
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// Mints a join token for linking to `cluster`, issued at `now` (unix seconds) with a
    /// unique `token_id` (the caller draws it at random).
    pub fn issue(
        &self,
        cluster: &ClusterName,
        trust_domain: &TrustDomain,
        now: u64,
        ttl_seconds: u64,
        token_id: u128,
    ) -> Result<(String, JoinClaims), TokenError> {
        let claims = JoinClaims {
            iss: cluster.to_string(),
            aud: TOKEN_AUDIENCE.into(),
            td: trust_domain.to_string(),
            scope: TOKEN_SCOPE.into(),
            jti: token_id_text(token_id),
            iat: now,
            exp: now + ttl_seconds,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((token, claims))
    }

    /// Checks the signature, audience, scope and issuer of a token; expiry is the ledger's
    /// business (it only matters at first use).
    pub fn verify(
        &self,
        token: &str,
        local: &ClusterName,
        trust_domain: &TrustDomain,
    ) -> Result<JoinClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.set_audience(&[TOKEN_AUDIENCE]);
        let data = jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.scope != TOKEN_SCOPE {
            return Err(TokenError::Invalid(format!(
                "scope {:?} is not link",
                claims.scope
            )));
        }
        if claims.td != trust_domain.as_str() {
            return Err(TokenError::Invalid(format!(
                "issued for trust domain {:?}, not {trust_domain}",
                claims.td
            )));
        }
        if claims.iss != local.as_str() {
            return Err(TokenError::WrongCluster {
                issued_by: claims.iss,
                expected: local.to_string(),
            });
        }
        Ok(claims)
    }
}

/// How a peer was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The token's first use: a new peering.
    First,
    /// A peer coming back with the token it redeemed before.
    Returning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Redemption {
    cluster: ClusterName,
    at: u64,
    active: bool,
}

/// The tokens a gateway has admitted, persisted: a token is redeemed by one cluster once;
/// that cluster may come back with it until it is unlinked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemptions {
    entries: BTreeMap<String, Redemption>,
}

impl Redemptions {
    /// Decides whether `peer`, presenting `token`, may link to `local` at `now` (unix seconds).
    pub fn admit(
        &mut self,
        key: &LinkKey,
        local: &ClusterName,
        trust_domain: &TrustDomain,
        peer: &ClusterName,
        token: &str,
        now: u64,
    ) -> Result<Admission, TokenError> {
        if peer == local {
            return Err(TokenError::SelfLink);
        }
        let claims = key.verify(token, local, trust_domain)?;
        if let Some(previous) = self.entries.get(&claims.jti) {
            if &previous.cluster != peer {
                return Err(TokenError::Replayed {
                    jti: claims.jti,
                    by: previous.cluster.to_string(),
                });
            }
            if !previous.active {
                return Err(TokenError::Revoked {
                    jti: claims.jti,
                    by: peer.to_string(),
                });
            }
            return Ok(Admission::Returning);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired {
                at: rfc3339(claims.exp),
            });
        }
        self.entries.insert(
            claims.jti,
            Redemption {
                cluster: peer.clone(),
                at: now,
                active: true,
            },
        );
        Ok(Admission::First)
    }

    /// Whether a cluster holds an admitted, unrevoked token (it is a peer that dials us).
    pub fn is_active(&self, peer: &ClusterName) -> bool {
        self.entries
            .values()
            .any(|r| r.active && &r.cluster == peer)
    }

    /// The clusters that hold an admitted, unrevoked token.
    pub fn active_clusters(&self) -> Vec<ClusterName> {
        let mut clusters: Vec<_> = self
            .entries
            .values()
            .filter(|r| r.active)
            .map(|r| r.cluster.clone())
            .collect();
        clusters.sort();
        clusters.dedup();
        clusters
    }

    /// Revokes every token a cluster redeemed (it was unlinked).
    pub fn revoke(&mut self, peer: &ClusterName) -> bool {
        let mut any = false;
        for r in self.entries.values_mut().filter(|r| &r.cluster == peer) {
            any |= r.active;
            r.active = false;
        }
        any
    }
}

/// The body of a Link document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkSpec {
    /// The cluster to link to.
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// Its gateway's QUIC address (`host:port`).
    pub gateway_address: String,
    /// The fingerprint of the root that cluster's certificates chain to.
    pub root_fingerprint: String,
    /// The join token.
    pub token: String,
    /// When the token stops being accepted for a first use (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// A Link document as printed by `strait link`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkDocument {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: LinkMetadata,
    pub spec: LinkSpec,
}

/// The metadata of a Link document.
#[derive(Debug, Clone, Serialize)]
pub struct LinkMetadata {
    pub name: String,
}

impl LinkDocument {
    /// A document for a spec.
    pub fn new(spec: LinkSpec) -> Self {
        Self {
            api_version: crate::document::API_VERSION,
            kind: "Link",
            metadata: LinkMetadata {
                name: spec.cluster.to_string(),
            },
            spec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn setup() -> (LinkKey, TrustDomain) {
        (
            LinkKey::generate().unwrap(),
            TrustDomain::new("example.mesh").unwrap(),
        )
    }

    #[test]
    fn a_token_is_admitted_once_and_its_cluster_may_return() {
        let (key, td) = setup();
        let (token, _) = key.issue(&cluster("west"), &td, 1000, 60, 1).unwrap();
        let mut ledger = Redemptions::default();
        let west = cluster("west");
        assert_eq!(
            ledger.admit(&key, &west, &td, &cluster("east"), &token, 1001),
            Ok(Admission::First)
        );
        // Coming back after the expiry is fine: expiry only bounds the first use.
        assert_eq!(
            ledger.admit(&key, &west, &td, &cluster("east"), &token, 5000),
            Ok(Admission::Returning)
        );
    }

    #[test]
    fn a_replayed_token_names_who_redeemed_it() {
        let (key, td) = setup();
        let (token, _) = key.issue(&cluster("west"), &td, 1000, 60, 2).unwrap();
        let mut ledger = Redemptions::default();
        let west = cluster("west");
        ledger
            .admit(&key, &west, &td, &cluster("east"), &token, 1001)
            .unwrap();
        let err = ledger
            .admit(&key, &west, &td, &cluster("north"), &token, 1002)
            .unwrap_err();
        assert!(
            matches!(err, TokenError::Replayed { ref by, .. } if by == "east"),
            "{err}"
        );
        assert_eq!(err.code(), RefusalCode::RefusalTokenReplayed);
    }

    #[test]
    fn an_expired_token_is_refused_at_first_use() {
        let (key, td) = setup();
        let (token, _) = key.issue(&cluster("west"), &td, 1000, 60, 3).unwrap();
        let err = Redemptions::default()
            .admit(&key, &cluster("west"), &td, &cluster("east"), &token, 1060)
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("1970-01-01T00:17:40Z"), "{err}");
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let (key, td) = setup();
        let (token, _) = key.issue(&cluster("west"), &td, 1000, 60, 4).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        // Re-encode the claims with a later expiry, keeping the old signature.
        let claims = JoinClaims {
            exp: 9_999_999_999,
            ..key.verify(&token, &cluster("west"), &td).unwrap()
        };
        parts[1] = base64_url_encode(&serde_json::to_vec(&claims).unwrap());
        let tampered = parts.join(".");
        let err = Redemptions::default()
            .admit(
                &key,
                &cluster("west"),
                &td,
                &cluster("east"),
                &tampered,
                1001,
            )
            .unwrap_err();
        assert!(matches!(err, TokenError::Invalid(_)), "{err}");
    }

    #[test]
    fn another_gateways_token_is_refused() {
        let (key, td) = setup();
        let (other, _) = setup();
        let (token, _) = other.issue(&cluster("west"), &td, 1000, 60, 5).unwrap();
        assert!(matches!(
            Redemptions::default().admit(
                &key,
                &cluster("west"),
                &td,
                &cluster("east"),
                &token,
                1001
            ),
            Err(TokenError::Invalid(_))
        ));
        let (token, _) = key.issue(&cluster("north"), &td, 1000, 60, 6).unwrap();
        assert!(matches!(
            Redemptions::default().admit(
                &key,
                &cluster("west"),
                &td,
                &cluster("east"),
                &token,
                1001
            ),
            Err(TokenError::WrongCluster { .. })
        ));
    }

    #[test]
    fn unlinking_revokes_the_token() {
        let (key, td) = setup();
        let (token, _) = key.issue(&cluster("west"), &td, 1000, 60, 7).unwrap();
        let mut ledger = Redemptions::default();
        let (west, east) = (cluster("west"), cluster("east"));
        ledger.admit(&key, &west, &td, &east, &token, 1001).unwrap();
        assert!(ledger.revoke(&east));
        assert!(matches!(
            ledger.admit(&key, &west, &td, &east, &token, 1002),
            Err(TokenError::Revoked { .. })
        ));
    }

    fn base64_url_encode(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

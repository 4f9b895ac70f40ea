//! RequestAuthentication: which JSON Web Tokens a service accepts (issuer, audiences, the
//! issuer's public keys as a JWKS), and the check of one token. As in Istio: a request with a
//! token that fails the check is refused (401); one without a token goes on without a request
//! principal, and AuthorizationPolicy rules (`requestPrincipals`, `claims`) decide whether
//! that is enough. Keys travel with the policy to every gateway and sidecar, so only public
//! keys are taken (RSA, EC, EdDSA), never shared secrets.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::authorization::{PolicyMetadata, TargetRef};
use crate::identity::{Namespace, ServiceName};
use crate::resource::{DocumentError, DocumentPlace, field, typed};

/// One accepted issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtRule {
    pub issuer: String,
    /// The token must name one of these in `aud`; empty: any audience.
    pub audiences: Vec<String>,
    /// The issuer's public keys.
    pub keys: JwkSet,
}

impl PartialEq for JwtRule {
    fn eq(&self, other: &Self) -> bool {
        self.issuer == other.issuer
            && self.audiences == other.audiences
            && serde_json::to_value(&self.keys).ok() == serde_json::to_value(&other.keys).ok()
    }
}

impl Eq for JwtRule {}

/// A checked RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentication {
    pub namespace: Namespace,
    pub name: String,
    /// The service it applies to; `None`: every service of the namespace.
    pub target: Option<ServiceName>,
    pub rules: Vec<JwtRule>,
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPrincipal {
    /// `<iss>/<sub>`, as Istio writes request principals.
    pub principal: String,
    /// Every claim of the token.
    pub claims: serde_json::Value,
}

/// How long a token may have expired and still pass (clock skew between issuer and mesh).
const LEEWAY_SECONDS: u64 = 30;

/// Checks a token against the rules of every policy given; the principal it proves, or why it
/// proves nothing.
pub fn verify<'p>(
    policies: impl IntoIterator<Item = &'p Authentication>,
    token: &str,
) -> Result<RequestPrincipal, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
    let mut tried = 0;
    let mut last = String::new();
    for rule in policies.into_iter().flat_map(|p| &p.rules) {
        // The key the token names; keys without an id are tried too, as Envoy does. A key that
        // says its algorithm is only used with that one.
        let keys = rule.keys.keys.iter().filter(|k| {
            let id_fits = match (&header.kid, &k.common.key_id) {
                (Some(kid), Some(id)) => kid == id,
                _ => true,
            };
            let alg_fits = k
                .common
                .key_algorithm
                .is_none_or(|a| Algorithm::try_from(a).is_ok_and(|a| a == header.alg));
            id_fits && alg_fits
        });
        for key in keys {
            let Ok(decoding) = DecodingKey::from_jwk(key) else {
                continue;
            };
            tried += 1;
            let mut validation = Validation::new(header.alg);
            validation.set_issuer(&[&rule.issuer]);
            validation.leeway = LEEWAY_SECONDS;
            validation.validate_nbf = true;
            if rule.audiences.is_empty() {
                validation.set_required_spec_claims(&["exp", "iss", "sub"]);
                validation.validate_aud = false;
            } else {
                validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
                validation.set_audience(&rule.audiences);
            }
            match jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation) {
                Ok(data) => {
                    let Some(subject) = data.claims["sub"].as_str().filter(|s| !s.is_empty())
                    else {
                        last = "the token has no subject".into();
                        continue;
                    };
                    return Ok(RequestPrincipal {
                        principal: format!("{}/{subject}", rule.issuer),
                        claims: data.claims,
                    });
                }
                Err(e) => last = format!("{} ({})", e, rule.issuer),
            }
        }
    }
    if tried == 0 {
        return Err(match header.kid {
            Some(kid) => format!("no accepted key has the id {kid:?} for {:?}", header.alg),
            None => format!("no accepted key is for {:?}", header.alg),
        });
    }
    Err(last)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthenticationDocument {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: PolicyMetadata,
    spec: AuthenticationSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthenticationSpec {
    #[serde(default)]
    target_ref: Option<TargetRef>,
    jwt_rules: Vec<JwtRuleDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRuleDocument {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    /// The JWKS, as an object or as its JSON text.
    jwks: serde_json::Value,
}

/// The most issuers, audiences or keys of one policy.
const MAX_LIST: usize = 16;

/// Parses and checks a RequestAuthentication document.
pub fn authentication(
    document: serde_json::Value,
    place: &DocumentPlace,
) -> Result<Authentication, DocumentError> {
    let document: AuthenticationDocument = typed(document, place)?;
    super::check_api_version(&document.api_version, place)?;
    let (namespace, name) = document.metadata.checked(place)?;
    let target = match document.spec.target_ref {
        None => None,
        Some(target) => target.service(place)?,
    };
    if document.spec.jwt_rules.is_empty() || document.spec.jwt_rules.len() > MAX_LIST {
        return Err(field(
            place,
            "spec.jwtRules",
            format!("expected 1 to {MAX_LIST} rules"),
        ));
    }
    let mut rules = Vec::new();
    for (i, rule) in document.spec.jwt_rules.into_iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() || rule.issuer.len() > 1024 {
            return Err(field(
                place,
                format!("{at}.issuer"),
                "expected the issuer's name",
            ));
        }
        if rule.audiences.len() > MAX_LIST || rule.audiences.iter().any(String::is_empty) {
            return Err(field(
                place,
                format!("{at}.audiences"),
                format!("expected at most {MAX_LIST} non-empty audiences"),
            ));
        }
        let jwks = match &rule.jwks {
            serde_json::Value::String(text) => serde_json::from_str(text),
            value => serde_json::from_value::<JwkSet>(value.clone()),
        };
        let keys: JwkSet =
            jwks.map_err(|e| field(place, format!("{at}.jwks"), format!("not a JWKS: {e}")))?;
        if keys.keys.is_empty() || keys.keys.len() > MAX_LIST {
            return Err(field(
                place,
                format!("{at}.jwks"),
                format!("expected 1 to {MAX_LIST} keys"),
            ));
        }
        let raw_keys = match &rule.jwks {
            serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
            value => value.clone(),
        };
        for (j, raw) in raw_keys["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if ["d", "p", "q", "dp", "dq", "qi"]
                .iter()
                .any(|f| raw.get(f).is_some())
            {
                return Err(field(
                    place,
                    format!("{at}.jwks.keys[{j}]"),
                    "holds a private key, which would travel to every cluster: give the public part only",
                ));
            }
        }
        for (j, key) in keys.keys.iter().enumerate() {
            if matches!(key.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(field(
                    place,
                    format!("{at}.jwks.keys[{j}]"),
                    "a shared secret (kty oct) would travel to every cluster: use a public key (RSA, EC or OKP)",
                ));
            }
            if let Some(alg) = key.common.key_algorithm
                && Algorithm::try_from(alg).is_err()
            {
                return Err(field(
                    place,
                    format!("{at}.jwks.keys[{j}].alg"),
                    "not a signature algorithm",
                ));
            }
            DecodingKey::from_jwk(key).map_err(|e| {
                field(
                    place,
                    format!("{at}.jwks.keys[{j}]"),
                    format!("not a usable key: {e}"),
                )
            })?;
        }
        rules.push(JwtRule {
            issuer: rule.issuer,
            audiences: rule.audiences,
            keys,
        });
    }
    Ok(Authentication {
        namespace,
        name,
        target,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};

    struct Issuer {
        key: EncodingKey,
        jwks: serde_json::Value,
    }

    fn issuer(kid: &str) -> Issuer {
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        Issuer {
            key,
            jwks: serde_json::json!({ "keys": [jwk] }),
        }
    }

    fn token(issuer: &Issuer, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn policy(jwks: &serde_json::Value) -> Authentication {
        let document = serde_json::json!({
            "apiVersion": "policy.strait.dev/v1alpha1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "api-jwt", "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "api"},
                "jwtRules": [{"issuer": "https://id.test", "audiences": ["api"], "jwks": jwks}],
            },
        });
        let place = DocumentPlace {
            source: "jwt.yaml".into(),
            index: 1,
            kind: None,
            name: None,
        };
        authentication(document, &place).unwrap()
    }

    #[test]
    fn a_token_is_checked_for_signature_issuer_audience_and_expiry() {
        let good = issuer("k1");
        let forger = issuer("k1");
        let policies = [policy(&good.jwks)];
        let claims = |iss: &str, aud: &str, exp: u64| serde_json::json!({"iss": iss, "sub": "alice", "aud": aud, "exp": exp, "groups": ["admin"]});
        let valid = token(&good, "k1", claims("https://id.test", "api", now() + 60));
        let principal = verify(&policies, &valid).unwrap();
        assert_eq!(principal.principal, "https://id.test/alice");
        assert_eq!(principal.claims["groups"][0], "admin");
        for (what, bad) in [
            (
                "another key",
                token(&forger, "k1", claims("https://id.test", "api", now() + 60)),
            ),
            (
                "another issuer",
                token(&good, "k1", claims("https://evil.test", "api", now() + 60)),
            ),
            (
                "another audience",
                token(&good, "k1", claims("https://id.test", "web", now() + 60)),
            ),
            (
                "expired",
                token(&good, "k1", claims("https://id.test", "api", now() - 600)),
            ),
            ("garbage", "not.a.token".to_owned()),
            (
                "no audience",
                token(
                    &good,
                    "k1",
                    serde_json::json!({"iss": "https://id.test", "sub": "alice", "exp": now() + 60}),
                ),
            ),
            (
                "no subject",
                token(
                    &good,
                    "k1",
                    serde_json::json!({"iss": "https://id.test", "aud": "api", "exp": now() + 60}),
                ),
            ),
            (
                "not valid yet",
                token(
                    &good,
                    "k1",
                    serde_json::json!({"iss": "https://id.test", "sub": "a", "aud": "api", "exp": now() + 600, "nbf": now() + 300}),
                ),
            ),
        ] {
            assert!(verify(&policies, &bad).is_err(), "{what} passed");
        }
    }

    #[test]
    fn shared_secrets_and_broken_key_sets_are_refused() {
        let place = DocumentPlace {
            source: "jwt.yaml".into(),
            index: 1,
            kind: None,
            name: None,
        };
        let with = |jwks: serde_json::Value| {
            authentication(
                serde_json::json!({
                    "apiVersion": "policy.strait.dev/v1alpha1",
                    "kind": "RequestAuthentication",
                    "metadata": {"name": "api-jwt", "namespace": "shop"},
                    "spec": {"jwtRules": [{"issuer": "https://id.test", "jwks": jwks}]},
                }),
                &place,
            )
            .unwrap_err()
            .to_string()
        };
        // A key with an unknown id is named in the refusal (what a rotation looks like).
        let good = issuer("k1");
        let rotated = token(
            &good,
            "k2",
            serde_json::json!({"iss": "https://id.test", "sub": "a", "aud": "api", "exp": now() + 60}),
        );
        let reason = verify(&[policy(&good.jwks)], &rotated).unwrap_err();
        assert!(reason.contains("\"k2\""), "{reason}");
        // A private key is refused: the document travels to every cluster.
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut private = good.jwks.clone();
        private["keys"][0]["d"] = serde_json::json!(hex::encode(&pair.serialize_der()[..8]));
        let refused = with(private);
        assert!(refused.contains("private key"), "{refused}");
        let secret = with(serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}));
        assert!(secret.contains("spec.jwtRules[0].jwks.keys[0]"), "{secret}");
        let broken = with(serde_json::json!("{not json"));
        assert!(broken.contains("spec.jwtRules[0].jwks"), "{broken}");
        // A JWKS given as its JSON text is taken like the object.
        let text = issuer("k1").jwks.to_string();
        let document = serde_json::json!({
            "apiVersion": "policy.strait.dev/v1alpha1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "api-jwt", "namespace": "shop"},
            "spec": {"jwtRules": [{"issuer": "https://id.test", "jwks": text}]},
        });
        assert!(authentication(document, &place).is_ok());
    }
}

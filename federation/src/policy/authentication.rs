//! RequestAuthentication: which JSON Web Tokens a service accepts (issuer, audiences, the
//! issuer's public keys as a JWKS), and the check of one token. As in Istio: a request with a
//! token that fails the check is refused (401); one without a token goes on without a request
//! principal, and AuthorizationPolicy rules (`requestPrincipals`, `claims`) decide whether
//! that is enough. An issuer's public keys (RSA, EC, EdDSA; never shared secrets) either
//! travel with the policy to every gateway and sidecar (`jwks`), or are fetched by each sidecar
//! from a URL served inside the mesh (`jwksUri`).

use jsonwebtoken::jwk::AlgorithmParameters;
/// An issuer's key set (JWKS), as fetched or given inline.
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::common::{PolicyMetadata, RequestPrincipal, TargetRef, check_api_version};
use crate::document::{DocumentError, DocumentPlace, field, typed};
use crate::identity::{Namespace, ServiceName};

/// Where an issuer's public keys come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeySource {
    /// Given in the policy.
    Inline(JwkSet),
    /// Fetched by each sidecar from this `http://` URL of a mesh service.
    Uri(String),
}

/// One accepted issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtRule {
    pub issuer: String,
    /// The token must name one of these in `aud`; empty: any audience.
    pub audiences: Vec<String>,
    /// The issuer's public keys.
    pub keys: KeySource,
}

impl PartialEq for JwtRule {
    fn eq(&self, other: &Self) -> bool {
        let keys_equal = match (&self.keys, &other.keys) {
            (KeySource::Inline(a), KeySource::Inline(b)) => {
                serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
            }
            (KeySource::Uri(a), KeySource::Uri(b)) => a == b,
            _ => false,
        };
        self.issuer == other.issuer && self.audiences == other.audiences && keys_equal
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

/// How long a token may have expired and still pass (clock skew between issuer and mesh).
const LEEWAY_SECONDS: u64 = 30;

/// The URLs the rules of `policies` fetch their keys from.
pub fn key_uris<'p>(
    policies: impl IntoIterator<Item = &'p Authentication>,
) -> impl Iterator<Item = &'p str> {
    policies
        .into_iter()
        .flat_map(|p| &p.rules)
        .filter_map(|rule| match &rule.keys {
            KeySource::Uri(uri) => Some(uri.as_str()),
            KeySource::Inline(_) => None,
        })
}

/// The key id a token's header names, if it is a JWT at all.
pub fn key_id(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// Why a token proves no principal.
#[derive(Debug, thiserror::Error)]
pub enum TokenRejected {
    #[error("not a JWT: {0}")]
    NotJwt(#[source] jsonwebtoken::errors::Error),
    #[error("the keys of {0} could not be fetched yet")]
    KeysNotFetched(String),
    #[error("no accepted key has the id {kid:?} for {alg:?}")]
    NoKeyWithId { kid: String, alg: Algorithm },
    #[error("no accepted key is for {0:?}")]
    NoKeyFor(Algorithm),
    #[error("the token has no subject")]
    NoSubject,
    #[error("{source} ({issuer})")]
    Invalid {
        issuer: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// Checks a token against the rules of every policy given; the principal it proves, or why it
/// proves nothing. `fetched` gives the key set last fetched from a `jwksUri` (`None`: none yet).
pub fn verify<'p, 'k>(
    policies: impl IntoIterator<Item = &'p Authentication>,
    token: &str,
    fetched: impl Fn(&str) -> Option<&'k JwkSet>,
) -> Result<RequestPrincipal, TokenRejected> {
    let header = jsonwebtoken::decode_header(token).map_err(TokenRejected::NotJwt)?;
    // Why the last key tried refused the token (set once a key was tried).
    let mut last = None;
    let mut unfetched = Vec::new();
    for rule in policies.into_iter().flat_map(|p| &p.rules) {
        let set = match &rule.keys {
            KeySource::Inline(set) => set,
            KeySource::Uri(uri) => match fetched(uri) {
                Some(set) => set,
                None => {
                    unfetched.push(uri.as_str());
                    continue;
                }
            },
        };
        // The key the token names; keys without an id are tried too, as Envoy does. A key that
        // says its algorithm is only used with that one.
        let keys = set.keys.iter().filter(|k| {
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
                        last = Some(TokenRejected::NoSubject);
                        continue;
                    };
                    return Ok(RequestPrincipal {
                        principal: format!("{}/{subject}", rule.issuer),
                        claims: data.claims,
                    });
                }
                Err(source) => {
                    last = Some(TokenRejected::Invalid {
                        issuer: rule.issuer.clone(),
                        source,
                    })
                }
            }
        }
    }
    if let Some(last) = last {
        return Err(last);
    }
    if let Some(uri) = unfetched.first() {
        return Err(TokenRejected::KeysNotFetched((*uri).to_owned()));
    }
    Err(match header.kid {
        Some(kid) => TokenRejected::NoKeyWithId {
            kid,
            alg: header.alg,
        },
        None => TokenRejected::NoKeyFor(header.alg),
    })
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
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JwtRuleDocument {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    /// The JWKS, as an object or as its JSON text.
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    /// Or where to fetch it.
    #[serde(default)]
    jwks_uri: Option<String>,
}

/// The most issuers, audiences or keys of one policy.
const MAX_LIST: usize = 16;

/// Parses and checks a RequestAuthentication document.
pub fn authentication(
    document: serde_json::Value,
    place: &DocumentPlace,
) -> Result<Authentication, DocumentError> {
    let document: AuthenticationDocument = typed(document, place)?;
    check_api_version(&document.api_version, place)?;
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
        let keys = match (rule.jwks, rule.jwks_uri) {
            (Some(jwks), None) => KeySource::Inline(
                public_keys(&jwks)
                    .map_err(|(at_key, e)| field(place, format!("{at}.jwks{at_key}"), e))?,
            ),
            (None, Some(uri)) => KeySource::Uri(
                mesh_url(&uri).map_err(|e| field(place, format!("{at}.jwksUri"), e.to_string()))?,
            ),
            _ => {
                return Err(field(
                    place,
                    at,
                    "expected exactly one of jwks (the key set) and jwksUri (where to fetch it)",
                ));
            }
        };
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

/// The most bytes of a fetched key set, and of a `jwksUri`.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Checks a JWKS (an object, or its JSON text): 1 to 16 public keys, each usable, with a
/// signature algorithm if it names one. An error says where (`""`, `.keys[1]`, `.keys[1].alg`)
/// and what is wrong. Used for inline key sets and for fetched ones alike.
pub fn public_keys(jwks: &serde_json::Value) -> Result<JwkSet, (String, String)> {
    let raw = match jwks {
        serde_json::Value::String(text) => {
            serde_json::from_str(text).map_err(|e| (String::new(), format!("not a JWKS: {e}")))?
        }
        value => value.clone(),
    };
    // Private parts are looked for in the raw JSON: the typed key drops fields it does not know.
    for (j, key) in raw["keys"].as_array().into_iter().flatten().enumerate() {
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|f| key.get(f).is_some())
        {
            return Err((
                format!(".keys[{j}]"),
                "holds a private key, which would travel to every cluster: give the public part only"
                    .into(),
            ));
        }
    }
    let keys: JwkSet =
        serde_json::from_value(raw).map_err(|e| (String::new(), format!("not a JWKS: {e}")))?;
    if keys.keys.is_empty() || keys.keys.len() > MAX_LIST {
        return Err((String::new(), format!("expected 1 to {MAX_LIST} keys")));
    }
    for (j, key) in keys.keys.iter().enumerate() {
        if matches!(key.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err((
                format!(".keys[{j}]"),
                "a shared secret (kty oct) would travel to every cluster: use a public key (RSA, EC or OKP)"
                    .into(),
            ));
        }
        if let Some(alg) = key.common.key_algorithm
            && Algorithm::try_from(alg).is_err()
        {
            return Err((
                format!(".keys[{j}].alg"),
                "not a signature algorithm".into(),
            ));
        }
        DecodingKey::from_jwk(key)
            .map_err(|e| (format!(".keys[{j}]"), format!("not a usable key: {e}")))?;
    }
    Ok(keys)
}

/// Why a `jwksUri` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyUrlError {
    #[error("at most 2048 characters, not {0}")]
    TooLong(usize),
    #[error(
        "{0:?}: expected a URL served inside the mesh, such as http://keys.auth.svc.clusterset.local/jwks.json"
    )]
    NotInMesh(String),
}

/// Checks a `jwksUri`: `http://` and a name of a mesh service (`…svc.clusterset.local` or
/// `…svc.cluster.local`, with a port if it is not 80), then a path. The sidecar fetches it over
/// the mesh's mutual TLS, so the scheme is plain `http`.
fn mesh_url(uri: &str) -> Result<String, KeyUrlError> {
    let expected = || KeyUrlError::NotInMesh(uri.to_owned());
    if uri.len() > 2048 {
        return Err(KeyUrlError::TooLong(uri.len()));
    }
    let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|_| expected())?;
    let host = parsed.host().unwrap_or_default().trim_end_matches('.');
    let in_mesh = [".svc.clusterset.local", ".svc.cluster.local"]
        .iter()
        .any(|zone| host.ends_with(zone));
    if parsed.scheme_str() != Some("http") || !in_mesh || parsed.path().is_empty() {
        return Err(expected());
    }
    Ok(uri.to_owned())
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
        let principal = verify(&policies, &valid, |_| None).unwrap();
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
            assert!(verify(&policies, &bad, |_| None).is_err(), "{what} passed");
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
        let reason = verify(&[policy(&good.jwks)], &rotated, |_| None)
            .unwrap_err()
            .to_string();
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

    /// A rule may name where to fetch its keys instead: a URL of a mesh service. Tokens are
    /// then checked against the set the sidecar fetched, and refused, saying why, before it has
    /// one.
    #[test]
    fn keys_can_be_fetched_from_a_url_of_the_mesh() {
        let place = DocumentPlace {
            source: "jwt.yaml".into(),
            index: 1,
            kind: None,
            name: None,
        };
        let with = |rule: serde_json::Value| {
            authentication(
                serde_json::json!({
                    "apiVersion": "policy.strait.dev/v1alpha1",
                    "kind": "RequestAuthentication",
                    "metadata": {"name": "api-jwt", "namespace": "shop"},
                    "spec": {"jwtRules": [rule]},
                }),
                &place,
            )
        };
        const URI: &str = "http://keys.auth.svc.clusterset.local:8080/jwks.json";
        let policy =
            with(serde_json::json!({"issuer": "https://id.test", "jwksUri": URI})).unwrap();
        assert_eq!(
            key_uris(std::slice::from_ref(&policy)).collect::<Vec<_>>(),
            [URI]
        );
        let good = issuer("k1");
        let valid = token(
            &good,
            "k1",
            serde_json::json!({"iss": "https://id.test", "sub": "alice", "exp": now() + 60}),
        );
        assert_eq!(key_id(&valid).as_deref(), Some("k1"));
        let reason = verify(std::slice::from_ref(&policy), &valid, |_| None)
            .unwrap_err()
            .to_string();
        assert!(reason.contains("could not be fetched yet"), "{reason}");
        let fetched = public_keys(&good.jwks).unwrap();
        let principal = verify(std::slice::from_ref(&policy), &valid, |uri| {
            (uri == URI).then_some(&fetched)
        })
        .unwrap();
        assert_eq!(principal.principal, "https://id.test/alice");
        for (rule, wrong) in [
            (
                serde_json::json!({"issuer": "i", "jwksUri": "https://keys.auth.svc.clusterset.local/k"}),
                "jwksUri",
            ),
            (
                serde_json::json!({"issuer": "i", "jwksUri": "http://id.example.com/jwks.json"}),
                "served inside the mesh",
            ),
            (serde_json::json!({"issuer": "i"}), "exactly one of jwks"),
            (
                serde_json::json!({"issuer": "i", "jwksUri": URI, "jwks": good.jwks}),
                "exactly one of jwks",
            ),
        ] {
            let refused = with(rule).unwrap_err().to_string();
            assert!(
                refused.contains(wrong) && refused.contains("spec.jwtRules[0]"),
                "{refused}"
            );
        }
    }
}

//! Workload identity from Kubernetes: a sidecar proves who it is with its pod's projected
//! service-account token (audience `strait`), which the gateway checks with a TokenReview
//! (`authentication.k8s.io/v1`). The identity comes from the review (the pod's namespace and
//! service account), never from the sidecar's own word.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use strait_federation::identity::{AccountName, NameError, Namespace};

/// The audience a sidecar's token must be projected for.
pub const AUDIENCE: &str = "strait";
/// The longest wait for the API server's review.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// A token longer than this is refused before anything reads it.
const MAX_TOKEN: usize = 16 << 10;

/// Why a service-account token gives no identity.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the token is not a service-account token (a JWT)")]
    NotAToken,
    #[error(
        "the token's audience is {found:?}, not \"{AUDIENCE}\": project the pod's token with audience {AUDIENCE}"
    )]
    Audience { found: Vec<String> },
    #[error("the token expired at {at}")]
    Expired { at: String },
    #[error("the API server refused the token: {0}")]
    Refused(String),
    #[error("the token is {0:?}'s, not a service account's")]
    NotServiceAccount(String),
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("cannot ask the API server: {0}")]
    Api(String),
}

/// The claims read before the review, only to say precisely why a token is refused; the review
/// alone decides whether it is accepted.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Audiences,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audiences {
    fn list(self) -> Vec<String> {
        match self {
            Audiences::One(one) => vec![one],
            Audiences::Many(many) => many,
            Audiences::None => Vec::new(),
        }
    }
}

/// Checks what can be checked without the API: the token's shape, audience and expiry.
pub fn precheck(token: &str, now: u64) -> Result<(), ReviewError> {
    if token.len() > MAX_TOKEN {
        return Err(ReviewError::NotAToken);
    }
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| ReviewError::NotAToken)?;
    let audiences = claims.aud.list();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ReviewError::Audience { found: audiences });
    }
    if let Some(exp) = claims.exp.filter(|exp| *exp <= now) {
        return Err(ReviewError::Expired {
            at: strait_federation::link::rfc3339(exp),
        });
    }
    Ok(())
}

/// The service account a review's username names (`system:serviceaccount:NS:NAME`).
pub fn account_of(username: &str) -> Result<(Namespace, AccountName), ReviewError> {
    let not = || ReviewError::NotServiceAccount(username.to_owned());
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(not)?;
    let (namespace, name) = rest.split_once(':').ok_or_else(not)?;
    Ok((Namespace::new(namespace)?, AccountName::new(name)?))
}

/// Reviews a token with the API server: the service account it proves.
pub async fn review(
    client: &kube::Client,
    token: &str,
    now: u64,
) -> Result<(Namespace, AccountName), ReviewError> {
    precheck(token, now)?;
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![AUDIENCE.to_owned()]),
        },
        ..Default::default()
    };
    let reviews = Api::<TokenReview>::all(client.clone());
    let reviewed = tokio::time::timeout(
        REVIEW_TIMEOUT,
        reviews.create(&PostParams::default(), &request),
    )
    .await
    .map_err(|_| ReviewError::Api(format!("no answer within {REVIEW_TIMEOUT:?}")))?
    .map_err(|e| ReviewError::Api(super::describe(&e)))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ReviewError::Refused(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == AUDIENCE)
    {
        return Err(ReviewError::Audience { found: Vec::new() });
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    account_of(&username)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"not checked here"),
        )
        .unwrap()
    }

    #[test]
    fn a_token_for_another_audience_is_refused_naming_it() {
        let other = token(serde_json::json!({"aud": ["vault"], "exp": 2_000_000_000u64}));
        let error = precheck(&other, 1_000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the token's audience is [\"vault\"], not \"strait\": project the pod's token with audience strait"
        );
    }

    #[test]
    fn an_expired_token_is_refused_with_its_expiry() {
        let old = token(serde_json::json!({"aud": "strait", "exp": 1_000u64}));
        let error = precheck(&old, 2_000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the token expired at 1970-01-01T00:16:40Z"
        );
        assert!(precheck(&old, 999).is_ok());
    }

    #[test]
    fn garbage_is_not_a_token() {
        assert!(matches!(
            precheck("garbage", 0),
            Err(ReviewError::NotAToken)
        ));
        assert!(matches!(
            precheck(&"x".repeat(MAX_TOKEN + 1), 0),
            Err(ReviewError::NotAToken)
        ));
    }

    #[test]
    fn only_a_service_account_username_gives_an_identity() {
        let (namespace, account) = account_of("system:serviceaccount:shop:web").unwrap();
        assert_eq!((namespace.as_str(), account.as_str()), ("shop", "web"));
        assert!(matches!(
            account_of("admin"),
            Err(ReviewError::NotServiceAccount(_))
        ));
        assert!(account_of("system:serviceaccount:Shop:web").is_err());
    }
}

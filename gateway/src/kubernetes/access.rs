//! Whether the gateway holds the rights its roles grant ([`rbac::rights`]), asked of its API as
//! the gateway itself (a SelfSubjectAccessReview per right, which every authenticated account
//! may make): what `strait check` reports, whatever the service account is called and however
//! its roles were bound. Reviewed when asked, at most every [`FRESH_FOR`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use super::describe;
use super::rbac::{self, Right};
use crate::lock;

/// How long a review's answer is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(3);
/// How long the whole review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Reviews in flight at once.
const CONCURRENT: usize = 8;

/// What a review found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// How many rights were asked about.
    pub checked: u32,
    /// The rights the API said the gateway lacks, as kubectl names them.
    pub lacking: Vec<String>,
}

/// The last review, reused while fresh.
#[derive(Debug, Default)]
pub struct AccessCache {
    last: Mutex<Option<(Instant, Access)>>,
}

impl AccessCache {
    /// The gateway's rights in `namespace`, reviewed again when the last answer is stale.
    pub async fn get(&self, client: &Client, namespace: &str) -> Result<Access, String> {
        if let Some((at, access)) = lock(&self.last).as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(access.clone());
        }
        let access = tokio::time::timeout(REVIEW_TIMEOUT, review(client, namespace))
            .await
            .map_err(|_| format!("the API did not answer within {REVIEW_TIMEOUT:?}"))??;
        *lock(&self.last) = Some((Instant::now(), access.clone()));
        Ok(access)
    }
}

/// Asks the API about each right of the gateway's roles.
async fn review(client: &Client, namespace: &str) -> Result<Access, String> {
    let rights = rbac::rights();
    let checked = u32::try_from(rights.len()).unwrap_or(u32::MAX);
    let answers: Vec<(Right, Result<bool, String>)> = futures::stream::iter(rights)
        .map(|right| async move {
            let allowed = may(client, &right, namespace).await;
            (right, allowed)
        })
        .buffered(CONCURRENT)
        .collect()
        .await;
    let mut lacking = Vec::new();
    for (right, allowed) in answers {
        match allowed {
            Ok(true) => {}
            Ok(false) => lacking.push(right.to_string()),
            Err(e) => return Err(format!("asking whether it may {right}: {e}")),
        }
    }
    Ok(Access { checked, lacking })
}

/// Whether the account `client` speaks as may do `right` (in `namespace` when it is namespaced).
pub async fn may(client: &Client, right: &Right, namespace: &str) -> Result<bool, String> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(right.group.clone()),
                resource: Some(
                    right
                        .resource
                        .split_once('/')
                        .map_or(right.resource.as_str(), |(r, _)| r)
                        .to_owned(),
                ),
                subresource: right.resource.split_once('/').map(|(_, s)| s.to_owned()),
                verb: Some(right.verb.clone()),
                namespace: right.namespaced.then(|| namespace.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| describe(&e))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

//! The pluggable policy layer: asking the operator's external authorizer (a gRPC service named
//! by an `action: external` AuthorizationPolicy) about one request or connection, within the
//! policy's timeout, failing open or closed as the policy says. One lazily connected channel
//! per authorizer address, shared by every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use strait_federation::policy::authorization::Authorization;
use strait_federation::proto::authorizer::CheckRequest;
use strait_federation::proto::authorizer::authorizer_client::AuthorizerClient;
use tonic::transport::{Channel, Endpoint};

/// The most request headers sent to an authorizer.
const MAX_HEADERS: usize = 100;
/// The largest header value sent to an authorizer; longer ones are cut.
const MAX_HEADER_VALUE: usize = 8 << 10;

/// What an authorizer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
    /// No answer in time, or an error: the policy's failOpen decides.
    Unavailable(String),
}

/// An authorizer address that makes no gRPC endpoint.
#[derive(Debug, thiserror::Error)]
#[error("authorizer address {address}: {error}")]
pub struct AddressError {
    address: String,
    #[source]
    error: tonic::transport::Error,
}

/// Clients of the authorizers this sidecar has asked.
#[derive(Default)]
pub struct Authorizers {
    clients: Mutex<HashMap<String, AuthorizerClient<Channel>>>,
}

impl Authorizers {
    fn client(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<AuthorizerClient<Channel>, AddressError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| AddressError {
                address: address.to_owned(),
                error,
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = AuthorizerClient::new(channel);
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Asks the authorizer of an external `policy`, within its timeout.
    pub async fn check(&self, policy: &Authorization, mut request: CheckRequest) -> Verdict {
        let Some(external) = &policy.external else {
            return Verdict::Allow;
        };
        request.policy = format!("{}/{}", policy.namespace, policy.name);
        let mut client = match self.client(&external.address, external.timeout) {
            Ok(client) => client,
            Err(e) => return Verdict::Unavailable(e.to_string()),
        };
        let mut call = tonic::Request::new(request);
        call.set_timeout(external.timeout);
        match tokio::time::timeout(external.timeout, client.check(call)).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if response.allow {
                    Verdict::Allow
                } else {
                    Verdict::Deny(response.reason)
                }
            }
            Ok(Err(status)) => Verdict::Unavailable(format!(
                "the authorizer at {} failed: {}",
                external.address,
                status.message()
            )),
            Err(_) => Verdict::Unavailable(format!(
                "the authorizer at {} gave no answer within {:?}",
                external.address, external.timeout
            )),
        }
    }
}

/// A request's headers as an authorizer gets them: lower-case names, repeated values joined,
/// bounded in count and size.
pub fn headers(map: &hyper::HeaderMap) -> HashMap<String, String> {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in map {
        if headers.len() >= MAX_HEADERS && !headers.contains_key(name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        let value: String = value.chars().take(MAX_HEADER_VALUE).collect();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

//! One try of an HTTP request on the outbound path: to the best target the balancer offers,
//! over the pooled connection to it, and on to the next target while the request could not be
//! sent at all. Retries after a response (or after a request was sent) are the caller's.

use std::sync::Arc;

use hyper::{Request, Response, StatusCode};
use strait_federation::identity::{ClusterName, Namespace};

use crate::http::names;

use crate::Shared;
use crate::balance::InFlight;
use crate::connect::{Body, DialError, Target};
use crate::plan::{Tiers, choose};
use crate::retry;
use crate::telemetry::RequestTrace;

/// Targets tried per request or connection before giving up.
pub(crate) const MAX_ATTEMPTS: usize = 3;
/// Gateways a request to another cluster crosses: this cluster's, then the other's.
const GATEWAY_HOPS: usize = 2;

/// Why a try got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No target was usable.
    #[error("no endpoint is ready")]
    NoEndpoint,
    /// The last target tried could not be reached.
    #[error(transparent)]
    Unreachable(#[from] DialError),
    /// The last target tried refused the request before reading it.
    #[error(transparent)]
    Refused(hyper::Error),
    /// The request was sent, and its connection failed before a response came.
    #[error("{error}")]
    Broken {
        cluster: ClusterName,
        #[source]
        error: hyper::Error,
    },
}

impl SendError {
    /// The status to answer with: a request that may have reached the app is a bad gateway's;
    /// one that reached nothing, an unavailable service's.
    pub fn status(&self) -> StatusCode {
        match self {
            SendError::Broken { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The cluster whose target failed the request, when one was reached.
    pub fn cluster(&self) -> Option<&ClusterName> {
        match self {
            SendError::Broken { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
}

/// A request's one try: sent to the best target (other than those in `avoid`, which already
/// failed this request, while another is usable), and to the next ones while it could not be
/// sent at all (no connection, or refused before the server read it).
pub(crate) async fn send(
    shared: &Arc<Shared>,
    tiers: &Tiers,
    avoid: &[Target],
    namespace: &Namespace,
    request: Request<Body>,
    trace: Option<&RequestTrace>,
) -> Result<(Target, Response<hyper::body::Incoming>), SendError> {
    let mut request = Some(request);
    let mut last_error = SendError::NoEndpoint;
    for _ in 0..MAX_ATTEMPTS {
        let Some(target) = choose(shared, tiers, avoid) else {
            break;
        };
        let Some(mut outgoing) = request.take() else {
            break;
        };
        // A recorded request to another cluster travels alone, so the gateways can record
        // their hops; any other goes on the pooled connection.
        let alone = trace
            .filter(|t| t.recorded && matches!(target, Target::Remote(_)))
            .map(|t| {
                let (flow, header) = t.through_gateways(GATEWAY_HOPS);
                outgoing.headers_mut().insert(&names::TRACEPARENT, header);
                flow
            });
        if alone.is_none()
            && let Some(trace) = trace
        {
            outgoing
                .headers_mut()
                .insert(&names::TRACEPARENT, trace.header());
        }
        // Dropped with the request (timeout, caller gone), it leaves no load behind.
        let mut in_flight = InFlight::start(&shared.balancer, target.clone());
        let pooled = alone.is_none();
        let dialled = match alone {
            Some(flow) => crate::connect::alone(shared, &target, namespace, flow).await,
            None => shared.pool.get(shared, &target, namespace).await,
        };
        let mut sender = match dialled {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!(target = ?target, error = %e, "cannot reach target");
                in_flight.fail();
                last_error = SendError::Unreachable(e);
                request = Some(outgoing);
                continue;
            }
        };
        in_flight.sending();
        match sender.try_send_request(outgoing).await {
            Ok(response) => {
                if retry::retryable(response.status()) {
                    in_flight.end_with_error();
                } else {
                    in_flight.end();
                }
                return Ok((target, response));
            }
            Err(mut e) => {
                if pooled {
                    shared.pool.evict(&target);
                }
                match e.take_message() {
                    // Never sent: safe to send elsewhere.
                    Some(unsent) => {
                        in_flight.fail();
                        last_error = SendError::Refused(e.into_error());
                        request = Some(unsent);
                    }
                    None => {
                        let cluster = target.cluster(&shared.cluster).clone();
                        return Err(SendError::Broken {
                            cluster,
                            error: e.into_error(),
                        });
                    }
                }
            }
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_try_that_reached_no_target_is_unavailable_and_names_no_cluster() {
        let error = SendError::NoEndpoint;
        assert_eq!(error.to_string(), "no endpoint is ready");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.cluster(), None);
        let unreachable = SendError::from(DialError::Refused(
            crate::connect::RelayError::Refused(strait_federation::flow::FlowRefused::Refused(
                "no such service".into(),
            ))
            .into(),
        ));
        assert_eq!(
            unreachable.to_string(),
            "through the gateway: no such service"
        );
        assert_eq!(unreachable.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

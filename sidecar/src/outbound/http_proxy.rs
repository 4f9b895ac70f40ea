//! The outbound HTTP path, one request at a time, in stages that read top to bottom in
//! [`proxy_http`]: plan (the destination and targets its name has in the catalog), route (a
//! rule of an HTTPRoute that may send it elsewhere), rewrite (the headers and URI it leaves
//! with), terms (the rule's retries, timeouts and mirror), keep (a copy to send again), send
//! (tries and retries, within the timeouts and the retry budget), respond (the answer the app
//! gets) and record (the request's metrics). Each stage is a function of its inputs; only
//! [`proxy_http`] touches the sidecar's shared state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use strait_federation::catalog::ServiceKey;
use strait_federation::identity::ClusterName;
use strait_federation::policy::route::{Mirror, RouteRule};
use tokio::net::{TcpListener, TcpStream};

use crate::attempt::{self, SendError};
use crate::connect::{self, Body, Target};
use crate::directory::Directory;
use crate::http::{error_response, names, strip_hop_by_hop};
use crate::metrics::{Direction, Metrics, Route};
use crate::mirror;
use crate::plan::{Plan, PlanError, Plans, plan_destination};
use crate::retry::{self, BrokenBody, Budgets, Kept};
use crate::routing::{self, Routed};
use crate::{Shared, accept_each, telemetry};

use super::connection::{self, Buffers};

/// Serves the HTTP proxy port until the sidecar stops.
pub async fn serve_http_proxy(shared: Arc<Shared>, listener: TcpListener) {
    let each = shared.clone();
    let limit = shared.limits.outbound.clone();
    accept_each(shared, listener, &limit, move |tcp, _| {
        serve_http_connection(each.clone(), tcp, None)
    })
    .await;
}

/// Serves the app's HTTP requests on one connection (HTTP/1.1 or HTTP/2 cleartext). A request
/// whose host is not a mesh name goes to `fallback` (the service a redirected connection was
/// addressed to), when there is one.
pub(super) async fn serve_http_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    fallback: Option<String>,
) {
    let fallback = Arc::new(fallback);
    let buffers = Buffers {
        header_buffer: shared.limits.header_buffer(),
        header_list: shared.limits.header_list(),
        park_after: connection::PARK_AFTER,
    };
    let handle = move |request: Request<Body>| {
        let (shared, fallback) = (shared.clone(), fallback.clone());
        async move { proxy_http(shared, request, fallback.as_deref()).await }
    };
    connection::serve(tcp, handle, buffers).await;
}

/// One request from the app (or from the sidecar itself, fetching keys), to wherever its name
/// points.
pub async fn proxy_http(
    shared: Arc<Shared>,
    request: Request<Body>,
    fallback: Option<&str>,
) -> Response<Body> {
    let started = Instant::now();
    if let Some(refusal) = shared.limits.refuse_large_headers(&request) {
        return refusal;
    }
    let directory = shared.directory.borrow().clone();
    let settings = &directory.telemetry;
    let trace = shared.telemetry.begin(request.headers(), settings);
    // What the span and the access log say of the request, taken only when either is wanted.
    let described = shared.telemetry.wanted(&trace, settings).then(|| {
        (
            request.method().to_string(),
            request.uri().path().to_owned(),
        )
    });
    // A request refused before it is sent is answered at once, and not counted.
    let prepared = async {
        let planned = plan_request(&shared.plans, &directory, authority_of(&request), fallback)?;
        let way = route_request(&directory, planned, &request, crate::balance::random())?;
        let request = rewrite_request(request, &way, shared.is_ready(), &trace)?;
        let terms = Terms::of(
            way.routed.as_ref(),
            request.method(),
            shared.config.request_timeout,
            crate::balance::random,
        );
        let kept = keep(request, &terms, &shared.limits.replay_body).await?;
        Ok::<_, Refusal>((way, terms, kept))
    };
    let (way, terms, kept) = match prepared.await {
        Ok(prepared) => prepared,
        Err(refusal) => return refusal.response(),
    };
    if let Some(mirror) = terms.mirror {
        let dest = &way.plan.dest;
        mirror::send_copy(
            &shared,
            &directory,
            &dest.service.namespace,
            dest.port,
            mirror,
            &kept,
            terms.overall,
        );
    }
    let labels = labels(&shared.cluster, &way.plan.dest.service);
    let count_retry = |outcome: &str| shared.metrics.retry(&labels, outcome);
    let try_once = |request, avoid: Vec<Target>| {
        let (shared, tiers, namespace) =
            (&shared, &way.plan.tiers, &way.plan.dest.service.namespace);
        let trace = &trace;
        async move {
            let (target, response) =
                attempt::send(shared, tiers, &avoid, namespace, request, Some(trace)).await?;
            Ok::<_, SendError>((target, response.map(connect::boxed)))
        }
    };
    let outcome = send_request(kept, &terms, &shared.budgets, count_retry, try_once).await;
    let failure = outcome.as_ref().err().map(ToString::to_string);
    let (response, answered_by) =
        respond(outcome, &way.plan.dest.service, way.rule(), &shared.cluster);
    let status = response.status();
    let elapsed = started.elapsed();
    record(&shared.metrics, &labels, &answered_by, status, elapsed);
    if let Some((method, path)) = &described {
        let caller = shared.identity.to_string();
        shared.telemetry.finish(
            Some(&trace),
            &telemetry::Record {
                direction: "outbound",
                protocol: "http",
                caller: &caller,
                namespace: way.plan.dest.service.namespace.as_str(),
                service: way.plan.dest.service.name.as_str(),
                source_cluster: shared.cluster.as_str(),
                destination_cluster: answered_by.as_str(),
                route: way.routed.as_ref().map(|r| r.route.name.as_str()),
                method: Some(method),
                path: Some(path),
                status: Some(status.as_u16()),
                duration: elapsed,
                bytes_sent: None,
                bytes_received: None,
                error: failure.as_deref(),
            },
            settings,
        );
    }
    response
}

/// The authority a request is for: the proxy-form URI's, else the Host header.
fn authority_of<B>(request: &Request<B>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Why the sidecar answers a request itself, before sending it anywhere.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The name's service lacks the port the name gives (or one to default to).
    #[error(transparent)]
    Plan(PlanError),
    /// What the directory says of a name it lacks ([`Directory::lacks`]).
    #[error("{0}")]
    NotInMesh(String),
    #[error("the request names no host (absolute URI or Host header)")]
    NoHost,
    /// The backend the request's route rule chose cannot be planned.
    #[error("route {route}: {error}")]
    Route {
        route: String,
        #[source]
        error: PlanError,
    },
    #[error("bad request target: {0}")]
    Target(#[source] hyper::http::Error),
    #[error(transparent)]
    Body(#[from] BrokenBody),
}

impl Refusal {
    /// The status to answer with: whose fault it is, and whether trying again may help.
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Plan(_) | Refusal::NotInMesh(_) => StatusCode::NOT_FOUND,
            Refusal::Route { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NoHost | Refusal::Target(_) | Refusal::Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The sidecar's answer.
    fn response(&self) -> Response<Body> {
        error_response(self.status(), self.to_string())
    }
}

/// Where a request goes before any route: the name it was addressed by, and that name's plan.
struct Planned {
    authority: String,
    plan: Arc<Plan>,
}

/// Plans a request by the name it carries (`named`), or, when that is no mesh name, by the
/// service a redirected connection was addressed to (`fallback`): with the plans remembered
/// for `directory`, the one in use.
fn plan_request(
    plans: &Plans,
    directory: &Arc<Directory>,
    named: Option<&str>,
    fallback: Option<&str>,
) -> Result<Planned, Refusal> {
    let found = [named, fallback]
        .into_iter()
        .flatten()
        .find_map(|name| Some((name, plans.plan(directory, name)?)));
    match (found, named) {
        (Some((authority, Ok(plan))), _) => Ok(Planned {
            authority: authority.to_owned(),
            plan,
        }),
        (Some((_, Err(error))), _) => Err(Refusal::Plan(error)),
        (None, Some(named)) => Err(Refusal::NotInMesh(directory.lacks(named))),
        (None, None) => Err(Refusal::NoHost),
    }
}

/// Where a request goes: the name it was addressed by, its destination and their targets, and
/// the route rule it matched, if any.
struct Way<'d> {
    authority: String,
    plan: Arc<Plan>,
    routed: Option<Routed<'d>>,
}

impl Way<'_> {
    /// The route rule the request matched, if any.
    fn rule(&self) -> Option<&RouteRule> {
        self.routed.as_ref().map(|routed| routed.rule)
    }
}

/// Routes a planned request: a rule of one of its service's routes may send it to another
/// backend (another service of the namespace, or one cluster of a service). `random` picks
/// among a rule's weighted backends.
fn route_request<'d, B>(
    directory: &'d Directory,
    planned: Planned,
    request: &Request<B>,
    random: u64,
) -> Result<Way<'d>, Refusal> {
    let Planned { authority, plan } = planned;
    let routed = routing::select(
        directory,
        &plan.dest,
        request.method().as_str(),
        request.uri().path(),
        request.headers(),
        random,
    );
    let plan = match &routed {
        Some(routed) => match plan_destination(directory, routed.destination(&plan.dest)) {
            Ok(backend) => Arc::new(backend),
            Err(error) => {
                let route = routed.route.name.clone();
                return Err(Refusal::Route { route, error });
            }
        },
        None => plan,
    };
    Ok(Way {
        authority,
        plan,
        routed,
    })
}

/// The request as it leaves: without hop-by-hop headers or the caller's own word on who it is
/// and whether it is ready (`ready`: this sidecar's), with its rule's header edits, and with an
/// absolute URI to the name it was addressed by, for HTTP/2.
fn rewrite_request<B>(
    request: Request<B>,
    way: &Way<'_>,
    ready: bool,
    trace: &telemetry::RequestTrace,
) -> Result<Request<B>, Refusal> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The next hop's parent is this sidecar's span (a try through the gateways names the last
    // gateway's instead).
    parts.headers.insert(&names::TRACEPARENT, trace.header());
    // Only the destination's sidecar says who the caller is, and only this one whether it
    // is ready.
    parts.headers.remove(&names::CLIENT_ID);
    parts.headers.insert(
        &names::CALLER_READY,
        HeaderValue::from_static(if ready { "true" } else { "false" }),
    );
    parts.headers.remove(header::HOST);
    if let Some(rule) = way.rule() {
        routing::edit(&mut parts.headers, &rule.request_headers);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(way.authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(Refusal::Target)?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// How a request is sent, by its route rule: its retries, its timeouts and its mirror.
struct Terms<'d> {
    retries: Option<Retrying>,
    /// The limit of each try.
    per_try: Option<Duration>,
    /// The limit of every try together.
    overall: Duration,
    /// The mirror that gets a copy of this request.
    mirror: Option<&'d Mirror>,
}

/// A rule's retries of one request: the budget they draw on, how many, and the budget's share.
struct Retrying {
    budget: String,
    attempts: u32,
    percent: u32,
}

impl<'d> Terms<'d> {
    /// The terms of a request with `method` that matched `routed`: retries only when its rule
    /// asks for them and the request may be sent twice; the rule's timeouts, or the sidecar's
    /// `request_timeout`; the rule's mirror when this request is one of the share it copies
    /// (`random` draws it).
    fn of(
        routed: Option<&Routed<'d>>,
        method: &Method,
        request_timeout: Duration,
        random: impl FnOnce() -> u64,
    ) -> Self {
        let rule = routed.map(|routed| routed.rule);
        let retries = routed.and_then(|routed| {
            let retries = routed.rule.retries.as_ref()?;
            (retries.non_idempotent || retry::idempotent(method)).then(|| Retrying {
                budget: routed.budget_key(),
                attempts: retries.attempts,
                percent: retries.budget_percent,
            })
        });
        Terms {
            retries,
            per_try: rule.and_then(|r| r.per_try_timeout),
            overall: rule.and_then(|r| r.timeout).unwrap_or(request_timeout),
            mirror: rule
                .and_then(|r| r.mirror.as_ref())
                .filter(|m| mirror::chosen(m, random())),
        }
    }
}

/// Keeps a copy of the request when it may be sent more than once (retried or mirrored), and
/// its body is small enough.
async fn keep(
    request: Request<Body>,
    terms: &Terms<'_>,
    replay_body: &strait_io::limit::Limit,
) -> Result<Kept, Refusal> {
    if terms.retries.is_none() && terms.mirror.is_none() {
        return Ok(Kept::Once(request));
    }
    let kept = retry::Replay::keep(request, replay_body.max()).await?;
    // Counted when the body is known to be over the limit; one of unknown length (chunked) is
    // sent once too, but nothing says it was large.
    if let Kept::Once(request) = &kept
        && let Some(bytes) = hyper::body::Body::size_hint(request.body()).upper()
    {
        replay_body.refuse(&format!(
            "a request body of {bytes} bytes, not kept to retry or mirror"
        ));
    }
    Ok(kept)
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("no response within the per-try timeout of {0:?}")]
    PerTryTimeout(Duration),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

impl Failure {
    /// The status to answer with.
    fn status(&self) -> StatusCode {
        match self {
            Failure::Send(error) => error.status(),
            Failure::PerTryTimeout(_) | Failure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The cluster whose target failed the request, when one was reached.
    fn cluster(&self) -> Option<&ClusterName> {
        match self {
            Failure::Send(error) => error.cluster(),
            Failure::PerTryTimeout(_) | Failure::Timeout(_) => None,
        }
    }
}

/// What one try came to: the target that answered and its response, or why there is none.
type Outcome = Result<(Target, Response<Body>), Failure>;

/// Sends a request with `try_once` (given the request and the targets that already failed it,
/// to be avoided), again while it fails and the terms' retries and their budget allow: each try
/// within the per-try timeout, every one within the overall timeout. `count_retry` counts each
/// retry by outcome: `sent`, or refused by the budget (`budget_exhausted`).
async fn send_request<Try, Sent>(
    kept: Kept,
    terms: &Terms<'_>,
    budgets: &Budgets,
    count_retry: impl Fn(&str),
    mut try_once: Try,
) -> Outcome
where
    Try: FnMut(Request<Body>, Vec<Target>) -> Sent,
    Sent: Future<Output = Result<(Target, Response<Body>), SendError>>,
{
    if let Some(retrying) = &terms.retries {
        budgets.record_request(&retrying.budget, retrying.percent, Instant::now());
    }
    let tries = async {
        let (mut outgoing, replay) = match kept {
            Kept::Replay(replay) => (replay.request(), Some(replay)),
            Kept::Once(request) => (request, None),
        };
        let mut retried = 0;
        let mut failed_targets = Vec::new();
        loop {
            let sent = try_once(outgoing, failed_targets.clone());
            let result = match terms.per_try {
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(sent) => sent.map_err(Failure::Send),
                    Err(_) => Err(Failure::PerTryTimeout(limit)),
                },
                None => sent.await.map_err(Failure::Send),
            };
            let failed = match &result {
                Ok((target, response)) => {
                    let failed = retry::retryable(response.status());
                    if failed {
                        failed_targets.push(target.clone());
                    }
                    failed
                }
                Err(_) => true,
            };
            let Some(retrying) = terms.retries.as_ref().filter(|_| failed) else {
                return result;
            };
            // Only a kept request can be sent again.
            let Some(replay) = replay.as_ref().filter(|_| retried < retrying.attempts) else {
                return result;
            };
            if !budgets.try_retry(&retrying.budget, retrying.percent, Instant::now()) {
                count_retry("budget_exhausted");
                return result;
            }
            count_retry("sent");
            retried += 1;
            outgoing = replay.request();
        }
    };
    match tokio::time::timeout(terms.overall, tries).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::Timeout(terms.overall)),
    }
}

/// The answer the app gets: the response, without hop-by-hop headers and with the rule's
/// edits; or the sidecar's own, naming the `service` and saying why there is none. With it, the
/// cluster that answered or failed the request (this one, `local`, when none was reached).
fn respond(
    outcome: Outcome,
    service: &ServiceKey,
    rule: Option<&RouteRule>,
    local: &ClusterName,
) -> (Response<Body>, ClusterName) {
    match outcome {
        Ok((target, response)) => {
            let cluster = target.cluster(local).clone();
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(rule) = rule {
                routing::edit(&mut parts.headers, &rule.response_headers);
            }
            (Response::from_parts(parts, body), cluster)
        }
        Err(failure) => {
            let cluster = failure.cluster().unwrap_or(local).clone();
            let response = error_response(failure.status(), format!("{service}: {failure}"));
            (response, cluster)
        }
    }
}

/// The labels of a request from this cluster (`local`) to `service`: retries are counted
/// under them as they are, a request under the cluster that answered it.
fn labels<'a>(local: &'a ClusterName, service: &'a ServiceKey) -> Route<'a> {
    Route {
        direction: Direction::Outbound,
        source_cluster: local.as_str(),
        destination_cluster: local.as_str(),
        namespace: service.namespace.as_str(),
        service: service.name.as_str(),
    }
}

/// Counts a request, under the cluster that answered it, with its status and latency.
fn record(
    metrics: &Metrics,
    labels: &Route<'_>,
    answered_by: &ClusterName,
    status: StatusCode,
    latency: Duration,
) {
    let route = Route {
        destination_cluster: answered_by.as_str(),
        ..labels.clone()
    };
    metrics.request(&route, status.as_u16(), latency);
}

#[cfg(test)]
mod tests;

//! The inbound path: mutual TLS from other sidecars (directly or relayed by gateways), the
//! caller's SPIFFE identity taken from its certificate, then HTTP requests forwarded to the app
//! on localhost (HTTP/1.1 or, for http2 and grpc ports, HTTP/2 cleartext) with the identity in
//! `strait-client-id`, or opaque TCP copied to the app's port.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use strait_federation::catalog::{Protocol, ServiceKey};
use strait_federation::certificate;
use strait_federation::identity::SpiffeId;
use strait_federation::policy::authentication::{self, TokenRejected};
use strait_federation::policy::authorization::{Decision, Request};
use strait_federation::policy::common::RequestPrincipal;
use strait_federation::policy::path;
use strait_federation::proto::authorizer::CheckRequest;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::authorizer::{self, Verdict};
use crate::connect::{self, Body, HTTP_ALPN, TCP_ALPN};
use crate::directory::Directory;
use crate::executor::Executor;
use crate::http::{error_response, names, strip_hop_by_hop};
use crate::metrics::{Direction, Route};
use crate::ratelimit::Limited;
use crate::{Shared, accept_each, telemetry};

/// How long a TLS handshake, or the port of a TCP connection, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one caller may have open on one connection.
const MAX_STREAMS: u32 = 4096;

/// Accepts mutual-TLS connections until the sidecar stops.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.inbound_tls.clone());
    let each = shared.clone();
    let limit = shared.limits.inbound.clone();
    accept_each(shared, listener, &limit, move |tcp, remote| {
        accept(each.clone(), acceptor.clone(), tcp, remote)
    })
    .await;
}

/// One connection from another sidecar: TLS, then HTTP/2 or TCP by its ALPN.
async fn accept(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    // Where the caller sent the connection: a pod's address and app port when iptables
    // redirected it here, else this port. Only asked without a configured service (Kubernetes
    // mode): the service the connection is for is then the one whose endpoint that is.
    let addressed = if shared.own_service.is_some() {
        None
    } else {
        crate::outbound::original_destination(&tcp)
            .or_else(|_| tcp.local_addr())
            .ok()
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(remote = %remote, error = %e, "inbound TLS refused");
            return;
        }
        Err(_) => {
            tracing::info!(remote = %remote, "inbound TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let caller = session
        .peer_certificates()
        .and_then(|chain| certificate::peer_identity(chain).ok());
    let Some(caller) = caller else {
        return;
    };
    match session.alpn_protocol() {
        Some(HTTP_ALPN) => serve_http(shared, tls, caller, addressed).await,
        Some(TCP_ALPN) => serve_tcp(shared, tls, caller, addressed).await,
        _ => tracing::info!(remote = %remote, "inbound connection without a known ALPN"),
    }
}

type InboundTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Who called, as the labels and the header to the app need it: worked out once per connection.
struct CallerInfo {
    identity: SpiffeId,
    cluster: String,
    header: Option<HeaderValue>,
    /// Where the caller sent the connection.
    addressed: Option<SocketAddr>,
}

/// The service a connection is for: the one this sidecar fronts (universal mode), else the
/// one whose endpoint the connection was addressed to (Kubernetes mode, by the view).
fn own_service<'a>(
    shared: &'a Shared,
    directory: &Directory,
    addressed: Option<SocketAddr>,
) -> Option<Cow<'a, ServiceKey>> {
    shared.own_service.as_ref().map(Cow::Borrowed).or_else(|| {
        addressed
            .and_then(|a| directory.service_at(&a))
            .map(|entry| Cow::Owned(entry.key.clone()))
    })
}

/// The namespace and service a connection's metrics are labelled with: the service it is for,
/// else the sidecar's namespace alone.
fn route_labels<'a>(shared: &'a Shared, own: Option<&'a ServiceKey>) -> (&'a str, &'a str) {
    match own {
        Some(key) => (key.namespace.as_str(), key.name.as_str()),
        None => (
            shared.service_labels.0.as_str(),
            shared.service_labels.1.as_str(),
        ),
    }
}

/// What an external authorizer is told about an HTTP request.
struct HttpFacts<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a hyper::HeaderMap,
    /// Who the request's valid JWT says the caller is.
    principal: Option<&'a RequestPrincipal>,
}

/// What a caller's sidecar says of it, request by request (HTTP) or once (TCP).
#[derive(Debug, Clone, Copy)]
struct CallerState {
    /// The calling workload is ready, as registered with its gateway.
    ready: bool,
}

/// A refusal: the policy that refused (a metric label), and what the caller is told.
struct Refusal {
    policy: String,
    message: String,
}

/// Asks the external authorizers of the policies a request (or, without `http`, a TCP
/// connection) matches, in order; the refusal, if one refuses or fails closed.
async fn ask_externals(
    shared: &Shared,
    directory: &Directory,
    own: Option<&ServiceKey>,
    caller: &SpiffeId,
    state: CallerState,
    route: &Route<'_>,
    http: Option<HttpFacts<'_>>,
) -> Option<Refusal> {
    let own = own?;
    let request = Request {
        caller: Some(caller),
        http: http.as_ref().map(|h| (h.method, h.path)),
        principal: http.as_ref().and_then(|h| h.principal),
        caller_location: directory.location_of(caller.cluster()),
        caller_healthy: state.ready,
    };
    for policy in directory
        .policies
        .externals(&own.namespace, &own.name, &request)
    {
        let label = format!("{}/{}", policy.namespace, policy.name);
        let check = CheckRequest {
            caller: caller.to_string(),
            source_cluster: caller.cluster().to_string(),
            namespace: own.namespace.to_string(),
            service: own.name.to_string(),
            destination_cluster: shared.cluster.to_string(),
            protocol: if http.is_some() { "http" } else { "tcp" }.into(),
            method: http
                .as_ref()
                .map(|h| h.method.to_owned())
                .unwrap_or_default(),
            path: http.as_ref().map(|h| h.path.to_owned()).unwrap_or_default(),
            query: http
                .as_ref()
                .map(|h| h.query.to_owned())
                .unwrap_or_default(),
            headers: http
                .as_ref()
                .map(|h| authorizer::headers(h.headers))
                .unwrap_or_default(),
            policy: String::new(),
            caller_ready: state.ready,
        };
        let fail_open = policy.external.as_ref().is_some_and(|e| e.fail_open);
        match shared.authorizers.check(policy, check).await {
            Verdict::Allow => shared.metrics.external_check(route, &label, "allow"),
            Verdict::Deny(reason) => {
                shared.metrics.external_check(route, &label, "deny");
                return Some(Refusal {
                    message: format!("denied by the authorizer of {label}: {reason}"),
                    policy: label,
                });
            }
            Verdict::Unavailable(why) if fail_open => {
                shared
                    .metrics
                    .external_check(route, &label, "error_allowed");
                tracing::warn!(policy = %label, error = %why, "external authorizer unavailable: failing open");
            }
            Verdict::Unavailable(why) => {
                shared.metrics.external_check(route, &label, "error_denied");
                tracing::warn!(policy = %label, error = %why, "external authorizer unavailable: failing closed");
                return Some(Refusal {
                    message: format!("{label} failed closed: {why}"),
                    policy: label,
                });
            }
        }
    }
    None
}

/// The answer to a request that may not reach the app: its path is too ambiguous to
/// authorize (400), the sidecar has no policy from its gateway yet (503), an external
/// authorizer or a policy denies the caller (403, counted). A path that merely needs
/// normalizing is rewritten, so the app is sent the path that was authorized.
async fn gate(
    shared: &Arc<Shared>,
    directory: &Directory,
    own: Option<&ServiceKey>,
    caller: &CallerInfo,
    route: &Route<'_>,
    request: &mut hyper::Request<hyper::body::Incoming>,
) -> Option<Response<Body>> {
    let rewritten = match path::normalize(request.uri().path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(normal)) => Some(normal),
        Err(e) => return Some(error_response(StatusCode::BAD_REQUEST, e.to_string())),
    };
    if let Some(normal) = rewritten {
        let mut parts = request.uri().clone().into_parts();
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.path_and_query = format!("{normal}{query}").parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => return Some(error_response(StatusCode::BAD_REQUEST, e.to_string())),
        }
    }
    if directory.version == 0 {
        // Retryable: the first view comes within moments of the sidecar starting.
        return Some(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar has no policy from its gateway yet".into(),
        ));
    }
    let normal = request.uri().path();
    let principal = match authenticate(shared, directory, own, request.headers()).await {
        Ok(principal) => principal,
        Err(reason) => {
            shared.metrics.denied(route, "http", "(invalid JWT)");
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                format!("the request's JWT is not valid: {reason}"),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return Some(response);
        }
    };
    let state = CallerState {
        ready: request
            .headers()
            .get(&names::CALLER_READY)
            .is_some_and(|v| v.as_bytes() == b"true"),
    };
    let facts = HttpFacts {
        method: request.method().as_str(),
        path: normal,
        query: request.uri().query().unwrap_or_default(),
        headers: request.headers(),
        principal: principal.as_ref(),
    };
    let refusal = match ask_externals(
        shared,
        directory,
        own,
        &caller.identity,
        state,
        route,
        Some(facts),
    )
    .await
    {
        Some(refusal) => refusal,
        None => match refused_by(
            directory,
            own,
            &caller.identity,
            state,
            Some((request.method().as_str(), normal)),
            principal.as_ref(),
        ) {
            Some(refusal) => refusal,
            None => {
                let limited = over_limit(shared, directory, own, &caller.identity)?;
                shared.metrics.rate_limited(route, "http", &limited.policy);
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("over the limit of {}", limited.policy),
                );
                let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                return Some(response);
            }
        },
    };
    shared.metrics.denied(route, "http", &refusal.policy);
    tracing::debug!(caller = %caller.identity, policy = %refusal.policy, "request denied");
    Some(error_response(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not call {}/{}: {}",
            caller.identity, route.namespace, route.service, refusal.message
        ),
    ))
}

/// Why a request's bearer token is not accepted.
#[derive(Debug, thiserror::Error)]
enum TokenError {
    #[error("more than one Authorization header")]
    TwoHeaders,
    /// The token fails its RequestAuthentication's check.
    #[error("{0}")]
    Invalid(#[from] TokenRejected),
}

/// The request principal of a request's bearer token, when a RequestAuthentication applies to
/// this service: `Ok(None)` without a token (authorization decides whether that is enough),
/// an error for a token that fails its check. Keys named by `jwksUri` are fetched first when
/// this sidecar has none yet, or none with the token's key id.
async fn authenticate(
    shared: &Arc<Shared>,
    directory: &Directory,
    own: Option<&ServiceKey>,
    headers: &hyper::HeaderMap,
) -> Result<Option<RequestPrincipal>, TokenError> {
    let Some(own) = own else {
        return Ok(None);
    };
    let policies = directory
        .policies
        .authentications(&own.namespace, &own.name);
    if policies.is_empty() {
        return Ok(None);
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(TokenError::TwoHeaders),
    };
    // The scheme is case-insensitive; another scheme (Basic) is no bearer token at all.
    let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    let mut fetched = HashMap::new();
    // Collected first: an opaque iterator held across an await would make the future not Send.
    let uris: Vec<&str> = authentication::key_uris(policies.iter().copied()).collect();
    // Read only when a key set may need fetching: verifying reads the header again anyway.
    let kid = if uris.is_empty() {
        None
    } else {
        authentication::key_id(token)
    };
    for uri in uris {
        if !fetched.contains_key(uri)
            && let Some(keys) = shared.key_sets.keys(shared, uri, kid.as_deref()).await
        {
            fetched.insert(uri, keys);
        }
    }
    authentication::verify(policies, token, |uri| fetched.get(uri).map(|k| &**k))
        .map(Some)
        .map_err(TokenError::from)
}

/// The rate limit or mesh-wide quota a request or connection of `caller` is over, if any
/// (otherwise it is counted against every one).
fn over_limit(
    shared: &Shared,
    directory: &Directory,
    own: Option<&ServiceKey>,
    caller: &SpiffeId,
) -> Option<Limited> {
    let own = own?;
    let taken =
        match shared
            .limiter
            .admit(directory.policies.rate_limits(own), caller, Instant::now())
        {
            Ok(taken) => taken,
            Err(limited) => return Some(limited),
        };
    match shared
        .quota
        .admit(directory.policies.quotas(own), caller, crate::unix_ms())
    {
        Ok(()) => None,
        Err(exhausted) => {
            // Refused by the quota: the rate limits' tokens go back.
            shared.limiter.give_back(taken);
            Some(Limited {
                policy: exhausted.quota,
                retry_after: exhausted.retry_after,
            })
        }
    }
}

/// The policy that refuses a request (HTTP: method and a normalized path) or a connection
/// (TCP) of `caller` to this sidecar's service, if one does. A sidecar that has no view from
/// its gateway yet refuses everything: it cannot know the policies.
fn refused_by(
    directory: &Directory,
    own: Option<&ServiceKey>,
    caller: &SpiffeId,
    state: CallerState,
    http: Option<(&str, &str)>,
    principal: Option<&RequestPrincipal>,
) -> Option<Refusal> {
    if directory.version == 0 {
        return Some(Refusal {
            policy: "(none yet)".into(),
            message: "this sidecar has no policy from its gateway yet".into(),
        });
    }
    let own = own?;
    let request = Request {
        caller: Some(caller),
        http,
        principal,
        caller_location: directory.location_of(caller.cluster()),
        caller_healthy: state.ready,
    };
    match directory
        .policies
        .authorize(&own.namespace, &own.name, &request)
    {
        Decision::Allow => None,
        Decision::Deny { by } => Some(Refusal {
            message: format!("denied by {by}"),
            policy: by,
        }),
    }
}

async fn serve_http(
    shared: Arc<Shared>,
    tls: InboundTls,
    caller: SpiffeId,
    addressed: Option<SocketAddr>,
) {
    let caller = Arc::new(CallerInfo {
        cluster: caller.cluster().to_string(),
        header: HeaderValue::from_str(&caller.to_string()).ok(),
        identity: caller,
        addressed,
    });
    let header_list = shared.limits.header_list();
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(to_app(shared, request, &caller).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(Executor)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(header_list)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// The port written in an authority, if any.
fn port_of(authority: Option<&hyper::http::uri::Authority>) -> Option<u16> {
    authority.and_then(|a| a.port_u16())
}

/// One request from another sidecar: checked at the gate, then forwarded to the app.
async fn to_app(
    shared: Arc<Shared>,
    mut request: hyper::Request<hyper::body::Incoming>,
    caller: &CallerInfo,
) -> Response<Body> {
    let started = Instant::now();
    if let Some(refusal) = shared.limits.refuse_large_headers(&request) {
        return refusal;
    }
    // One view decides the whole request, however many checks it takes.
    let directory = shared.directory.borrow().clone();
    let own = own_service(&shared, &directory, caller.addressed);
    let (namespace, service) = route_labels(&shared, own.as_deref());
    let route = Route {
        direction: Direction::Inbound,
        source_cluster: &caller.cluster,
        destination_cluster: shared.cluster.as_str(),
        namespace,
        service,
    };
    // The trace goes on to the app with this sidecar's span as its parent.
    let settings = &directory.telemetry;
    let trace = shared.telemetry.begin(request.headers(), settings);
    request
        .headers_mut()
        .insert(&names::TRACEPARENT, trace.header());
    let described = shared.telemetry.wanted(&trace, settings).then(|| {
        (
            request.method().to_string(),
            request.uri().path().to_owned(),
        )
    });
    let response = match gate(
        &shared,
        &directory,
        own.as_deref(),
        caller,
        &route,
        &mut request,
    )
    .await
    {
        Some(refusal) => refusal,
        None => forward(&shared, request, caller).await,
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    shared.metrics.request(&route, status, elapsed);
    if let Some((method, path)) = &described {
        shared.telemetry.finish(
            Some(&trace),
            &telemetry::Record {
                direction: "inbound",
                protocol: "http",
                caller: &caller.identity.to_string(),
                namespace,
                service,
                source_cluster: &caller.cluster,
                destination_cluster: shared.cluster.as_str(),
                route: None,
                method: Some(method),
                path: Some(path),
                status: Some(status),
                duration: elapsed,
                bytes_sent: None,
                bytes_received: None,
                error: None,
            },
            settings,
        );
    }
    response
}

/// Sends a request to the app's port it names, with the caller's identity in its header.
async fn forward(
    shared: &Shared,
    request: hyper::Request<hyper::body::Incoming>,
    caller: &CallerInfo,
) -> Response<Body> {
    let Some(client) = shared
        .app_clients
        .for_port(port_of(request.uri().authority()))
    else {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("this endpoint serves no HTTP port for {}", request.uri()),
        );
    };
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Said to this sidecar, not to the app.
    parts.headers.remove(&names::CALLER_READY);
    match &caller.header {
        Some(id) => parts.headers.insert(&names::CLIENT_ID, id.clone()),
        None => parts.headers.remove(&names::CLIENT_ID),
    };
    if client.port.port.protocol == Protocol::Http {
        parts.version = hyper::Version::HTTP_11;
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        // HTTP/1.1 to an origin server names the path alone.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()));
    }
    let request = hyper::Request::from_parts(parts, connect::boxed(body));
    match client.send(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, connect::boxed(body))
        }
        Err(e) => error_response(
            StatusCode::BAD_GATEWAY,
            format!("the app at {} failed: {e}", client.port.target),
        ),
    }
}

async fn serve_tcp(
    shared: Arc<Shared>,
    mut tls: InboundTls,
    caller: SpiffeId,
    addressed: Option<SocketAddr>,
) {
    let mut preamble = [0u8; 3];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.read_exact(&mut preamble)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let [high, low, flags] = preamble;
    let port = u16::from_be_bytes([high, low]);
    let state = CallerState {
        ready: flags & connect::READY_FLAG != 0,
    };
    let Some(target) = shared
        .config
        .served_ports()
        .find(|p| p.port.port == port)
        .map(|p| p.target)
    else {
        tracing::info!(caller = %caller, port, "inbound TCP for a port this endpoint does not serve");
        return;
    };
    let directory = shared.directory.borrow().clone();
    let own = own_service(&shared, &directory, addressed);
    let (namespace, service) = route_labels(&shared, own.as_deref());
    let route = Route {
        direction: Direction::Inbound,
        source_cluster: caller.cluster().as_str(),
        destination_cluster: shared.cluster.as_str(),
        namespace,
        service,
    };
    let own = own.as_deref();
    let refused = match ask_externals(&shared, &directory, own, &caller, state, &route, None).await
    {
        Some(refusal) => Some(refusal),
        None => refused_by(&directory, own, &caller, state, None, None),
    };
    if refused.is_none()
        && let Some(limited) = over_limit(&shared, &directory, own, &caller)
    {
        shared.metrics.rate_limited(&route, "tcp", &limited.policy);
        tracing::debug!(caller = %caller, policy = %limited.policy, "connection over the rate limit");
        return;
    }
    if let Some(refusal) = refused {
        shared.metrics.denied(&route, "tcp", &refusal.policy);
        tracing::info!(caller = %caller, policy = %refusal.policy, reason = %refusal.message, "connection denied");
        // Closed before the app is dialled: the caller sees a refused connection.
        return;
    }
    let Ok(Ok(mut app)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target)).await
    else {
        tracing::info!(caller = %caller, app = %target, "the app refused a TCP connection");
        return;
    };
    let _ = app.set_nodelay(true);
    shared.metrics.tcp_opened(&route);
    let started = Instant::now();
    let copied = tokio::io::copy_bidirectional(&mut tls, &mut app).await;
    let error = copied.as_ref().err().map(ToString::to_string);
    let (received, sent) = copied.unwrap_or_default();
    shared.metrics.tcp_closed(&route, sent, received);
    shared.telemetry.finish_flow(
        &telemetry::Flow {
            route: &route,
            caller: &caller.to_string(),
            duration: started.elapsed(),
            sent,
            received,
            error: error.as_deref(),
        },
        &directory.telemetry,
    );
}

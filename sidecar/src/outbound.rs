//! The outbound path, top to bottom: the app's request arrives (HTTP proxy port, a per-upstream
//! TCP listener, or a transparently redirected connection); the name is resolved in the
//! catalog; a target is chosen (this cluster's endpoints first, by latency; other clusters
//! through the gateway when none is usable); the request goes over the pooled mutual-TLS HTTP/2
//! connection, or the bytes over a TLS connection of their own; failures to connect are retried
//! on another target; the outcome is measured.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::attempt::{MAX_ATTEMPTS, send};
use crate::balance::InFlight;
use crate::connect::{self, Body, TCP_ALPN};
use crate::http::{error_response, strip_hop_by_hop};
use crate::metrics::{Direction, Route};
use crate::mirror;
use crate::plan::{Plan, choose, plan, plan_destination};
use crate::retry::{self, Kept};
use crate::routing;
use crate::{CALLER_READY_HEADER, CLIENT_ID_HEADER, Shared, accept_each};

/// Serves the HTTP proxy port until the sidecar stops.
pub async fn serve_http_proxy(shared: Arc<Shared>, listener: TcpListener) {
    let each = shared.clone();
    accept_each(shared, listener, move |tcp, _| {
        serve_http_connection(each.clone(), tcp, None)
    })
    .await;
}

/// Serves the app's HTTP requests on one connection (HTTP/1.1 or HTTP/2 cleartext). A request
/// whose host is not a mesh name goes to `fallback` (the service a redirected connection was
/// addressed to), when there is one.
async fn serve_http_connection(shared: Arc<Shared>, tcp: TcpStream, fallback: Option<String>) {
    let fallback = Arc::new(fallback);
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let fallback = fallback.clone();
        async move {
            let request = request.map(connect::boxed);
            Ok::<_, Infallible>(proxy_http(shared, request, fallback.as_deref()).await)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// The authority a request is for: the proxy-form URI's, else the Host header.
fn authority_of<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// One request from the app (or from the sidecar itself, fetching keys), to wherever its name
/// points.
pub async fn proxy_http(
    shared: Arc<Shared>,
    request: Request<Body>,
    fallback: Option<&str>,
) -> Response<Body> {
    let started = Instant::now();
    let directory = shared.directory.borrow().clone();
    // The name the request carries, when it is a mesh name; else the redirected connection's
    // service. Resolved once.
    let named = authority_of(&request);
    let found = named
        .as_deref()
        .and_then(|name| Some((name.to_owned(), plan(&directory, name)?)))
        .or_else(|| fallback.and_then(|name| Some((name.to_owned(), plan(&directory, name)?))));
    let (authority, Plan { dest, tiers, .. }) = match (found, named) {
        (Some((authority, Ok(plan))), _) => (authority, plan),
        (Some((_, Err(error))), _) => {
            return error_response(StatusCode::NOT_FOUND, error.to_string());
        }
        (None, Some(named)) => {
            return error_response(
                StatusCode::NOT_FOUND,
                format!("{named} is not a service in the mesh catalog"),
            );
        }
        (None, None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "the request names no host (absolute URI or Host header)".into(),
            );
        }
    };
    // A route of the service may send the request elsewhere, edit it, and retry it.
    let routed = routing::select(
        &directory,
        &dest,
        request.method().as_str(),
        request.uri().path(),
        request.headers(),
        crate::balance::random(),
    );
    let (dest, tiers) = match &routed {
        Some(routed) => {
            let to = routed.destination(&dest);
            match plan_destination(&directory, to) {
                Ok(Plan { dest, tiers, .. }) => (dest, tiers),
                Err(error) => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("route {}: {error}", routed.route.name),
                    );
                }
            }
        }
        None => (dest, tiers),
    };
    let rule = routed.as_ref().map(|r| r.rule);

    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only the destination's sidecar says who the caller is, and only this one whether it
    // is ready.
    parts.headers.remove(CLIENT_ID_HEADER);
    parts.headers.insert(
        CALLER_READY_HEADER,
        HeaderValue::from_static(if shared.is_ready() { "true" } else { "false" }),
    );
    parts.headers.remove(header::HOST);
    if let Some(rule) = rule {
        routing::edit(&mut parts.headers, &rule.request_headers);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, format!("bad request target: {e}"));
        }
    };
    parts.version = Version::HTTP_2;
    // Retries: only with a route that asks for them, for a request that may be sent twice and
    // is small enough to keep.
    let retries = routed.as_ref().and_then(|routed| {
        let retries = routed.rule.retries.as_ref()?;
        (retries.non_idempotent || retry::idempotent(&parts.method)).then(|| {
            (
                routed.budget_key(),
                retries.attempts,
                retries.budget_percent,
            )
        })
    });
    // The rule's mirror, when this request is one of the share it copies.
    let mirror = rule
        .and_then(|r| r.mirror.as_ref())
        .filter(|m| mirror::chosen(m, crate::balance::random()));
    let request = hyper::Request::from_parts(parts, body);
    let kept = match (&retries, mirror) {
        (None, None) => Ok(Kept::Once(request)),
        _ => retry::Replay::keep(request).await,
    };
    let mut kept = match kept {
        Ok(kept) => kept,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let per_try = rule.and_then(|r| r.per_try_timeout);
    let overall = rule
        .and_then(|r| r.timeout)
        .unwrap_or(shared.config.request_timeout);
    if let Some(mirror) = mirror {
        mirror::send_copy(
            &shared,
            &directory,
            &dest.service.namespace,
            dest.port,
            mirror,
            &kept,
            overall,
        );
    }

    let local_cluster = shared.cluster.clone();
    let namespace = &dest.service.namespace;
    let labels = Route {
        direction: Direction::Outbound,
        source_cluster: local_cluster.as_str(),
        destination_cluster: local_cluster.as_str(),
        namespace: dest.service.namespace.as_str(),
        service: dest.service.name.as_str(),
    };
    if let Some((key, _, percent)) = &retries {
        shared.budgets.record_request(key, *percent, Instant::now());
    }
    let attempt = async {
        let mut retried = 0;
        let mut failed_targets = Vec::new();
        loop {
            let outgoing = match &mut kept {
                Kept::Replay(replay) => replay.request(),
                Kept::Once(_) => {
                    let taken = std::mem::replace(
                        &mut kept,
                        Kept::Once(Request::new(connect::full(Bytes::new()))),
                    );
                    let Kept::Once(request) = taken else {
                        unreachable!("matched as Once just above")
                    };
                    request
                }
            };
            let sent = async {
                send(&shared, &tiers, &failed_targets, namespace, outgoing)
                    .await
                    .map_err(|e| (e.status(), e.cluster().cloned(), e.to_string()))
            };
            let result = match per_try {
                Some(limit) => tokio::time::timeout(limit, sent).await.unwrap_or_else(|_| {
                    Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        None,
                        format!("no response within the per-try timeout of {limit:?}"),
                    ))
                }),
                None => sent.await,
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
            let Some((key, attempts, percent)) = retries.as_ref().filter(|_| failed) else {
                return result;
            };
            if retried >= *attempts || !matches!(kept, Kept::Replay(_)) {
                return result;
            }
            if !shared.budgets.try_retry(key, *percent, Instant::now()) {
                shared.metrics.retry(&labels, "budget_exhausted");
                return result;
            }
            shared.metrics.retry(&labels, "sent");
            retried += 1;
        }
    };
    let outcome = match tokio::time::timeout(overall, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err((
            StatusCode::GATEWAY_TIMEOUT,
            None,
            format!("no response within {overall:?}"),
        )),
    };
    let (response, destination_cluster) = match outcome {
        Ok((target, response)) => {
            let cluster = target.cluster(&local_cluster).clone();
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(rule) = rule {
                routing::edit(&mut parts.headers, &rule.response_headers);
            }
            (Response::from_parts(parts, connect::boxed(body)), cluster)
        }
        Err((status, target, message)) => {
            let cluster = target.unwrap_or_else(|| local_cluster.clone());
            (
                error_response(status, format!("{}: {message}", dest.service)),
                cluster,
            )
        }
    };
    shared.metrics.request(
        &Route {
            destination_cluster: destination_cluster.as_str(),
            ..labels
        },
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Serves one per-upstream TCP listener until the sidecar stops.
pub async fn serve_upstream(shared: Arc<Shared>, listener: TcpListener, name: String) {
    let each = shared.clone();
    accept_each(shared, listener, move |tcp, _| {
        let shared = each.clone();
        let name = name.clone();
        async move {
            if let Err(e) = proxy_tcp(&shared, tcp, &name).await {
                tracing::info!(upstream = %name, error = %e, "TCP connection refused");
            }
        }
    })
    .await;
}

/// Carries one TCP connection of the app to the service `name` (`host:port`) points to.
pub async fn proxy_tcp(shared: &Arc<Shared>, mut app: TcpStream, name: &str) -> Result<(), String> {
    let directory = shared.directory.borrow().clone();
    let Plan { dest, port, tiers } = plan(&directory, name)
        .ok_or_else(|| format!("{name} is not a service in the mesh catalog"))?
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no endpoint is ready");
    for _ in 0..MAX_ATTEMPTS {
        let Some(target) = choose(shared, &tiers, &[]) else {
            break;
        };
        // The connection time is this target's latency sample.
        let in_flight = InFlight::start(&shared.balancer, target.clone());
        let namespace = &dest.service.namespace;
        let mut tls = match connect::dial(shared, &target, namespace, TCP_ALPN).await {
            Ok(tls) => tls,
            Err(e) => {
                in_flight.fail();
                last = e.to_string();
                continue;
            }
        };
        in_flight.end();
        let [high, low] = port.port.to_be_bytes();
        let flags = if shared.is_ready() {
            connect::READY_FLAG
        } else {
            0
        };
        if let Err(e) = tls.write_all(&[high, low, flags]).await {
            last = e.to_string();
            continue;
        }
        let cluster = target.cluster(&shared.cluster).clone();
        let route = Route {
            direction: Direction::Outbound,
            source_cluster: shared.cluster.as_str(),
            destination_cluster: cluster.as_str(),
            namespace: dest.service.namespace.as_str(),
            service: dest.service.name.as_str(),
        };
        shared.metrics.tcp_opened(&route);
        let copied = tokio::io::copy_bidirectional(&mut app, &mut tls).await;
        let (sent, received) = copied.unwrap_or_default();
        shared.metrics.tcp_closed(&route, sent, received);
        return Ok(());
    }
    Err(format!("{}: {last}", dest.service))
}

/// Serves the transparent listener (iptables REDIRECT): each connection goes to the mesh
/// service whose endpoint it was addressed to, or straight to its original destination when
/// that is not in the mesh.
pub async fn serve_transparent(shared: Arc<Shared>, listener: TcpListener) {
    let each = shared.clone();
    accept_each(shared, listener, move |tcp, _| {
        transparent(each.clone(), tcp)
    })
    .await;
}

/// One redirected connection.
async fn transparent(shared: Arc<Shared>, tcp: TcpStream) {
    let original = match original_destination(&tcp) {
        Ok(address) => address,
        Err(e) => {
            tracing::info!(error = %e, "no original destination: not a redirected connection");
            return;
        }
    };
    let service = {
        let directory = shared.directory.borrow();
        if directory.is_stale_virtual(&original.ip()) {
            tracing::info!(destination = %original, "a virtual address that names nothing now (a stale DNS answer?): refused");
            return;
        }
        if directory.is_virtual(&original.ip()) {
            // A name the gateway's DNS answered: the address stands for it, port and all.
            Some(original.to_string())
        } else {
            directory.service_at(&original).and_then(|entry| {
                let port = entry.ports.first()?.port;
                Some(format!("{}.{}:{port}", entry.key.name, entry.key.namespace))
            })
        }
    };
    let result = match service {
        Some(name) => {
            if speaks_http(&tcp).await {
                serve_http_connection(shared, tcp, Some(name)).await;
                Ok(())
            } else {
                proxy_tcp(&shared, tcp, &name).await
            }
        }
        _ => passthrough(tcp, original).await,
    };
    if let Err(e) = result {
        tracing::info!(destination = %original, error = %e, "redirected connection failed");
    }
}

/// How long a redirected connection may stay silent before it is taken for a protocol where
/// the server speaks first (and proxied as TCP).
const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether the app's first bytes are HTTP/1 (a method and a space) or the HTTP/2 preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"PRI * HTTP/2",
    ];
    METHODS
        .iter()
        .any(|m| first.len() >= m.len().min(8) && first.starts_with(&m[..m.len().min(first.len())]))
}

/// Peeks at a redirected connection's first bytes, without consuming them.
async fn speaks_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 16];
    match tokio::time::timeout(DETECT_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) => looks_like_http(&first[..n]),
        _ => false,
    }
}

/// The destination a redirected connection was addressed to (SO_ORIGINAL_DST).
fn original_destination(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(tcp);
    let address = match tcp.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    address
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Connects a redirected connection to its original destination, outside the mesh.
async fn passthrough(mut app: TcpStream, original: SocketAddr) -> Result<(), String> {
    let mut upstream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(original))
        .await
        .map_err(|_| format!("{original}: connect timed out"))?
        .map_err(|e| format!("{original}: {e}"))?;
    tokio::io::copy_bidirectional(&mut app, &mut upstream)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols_by_its_first_bytes() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"DELETE /a HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM",
        ] {
            assert!(looks_like_http(http), "{:?}", String::from_utf8_lossy(http));
        }
        for other in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"GE",
            b"",
            b"GETX / HTTP/1.1",
        ] {
            assert!(
                !looks_like_http(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}

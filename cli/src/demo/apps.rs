//! The demo's sample apps, also run by tests and benchmarks (`strait demo-app`): an HTTP
//! service (HTTP/1.1 and HTTP/2 cleartext) that says which cluster served a request and who
//! called, streams bodies back and makes large ones; a gRPC service; a TCP echo service. Each
//! trusts the caller identity only from its sidecar's `strait-client-id` header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Result;
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use strait_sidecar::CLIENT_ID_HEADER;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The generated gRPC types of the demo's service.
pub mod proto {
    tonic::include_proto!("strait.demo.v1");
}

use proto::orders_server::{Orders, OrdersServer};
use proto::{OrderReply, OrderRequest};

/// The kinds of sample app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppKind {
    Http,
    Grpc,
    Tcp,
}

/// Who a sample app says it is.
#[derive(Debug, Clone)]
pub struct AppIdentity {
    /// The service, as `namespace/name`.
    pub service: String,
    pub cluster: String,
    pub pod: String,
    /// Answer every HTTP request with this status (a broken app, for failure tests).
    pub broken: Option<StatusCode>,
}

/// The largest body `/bytes/N` makes (1 GiB).
const MAX_GENERATED: u64 = 1 << 30;

type AppBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(text: String) -> AppBody {
    Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn caller_of<B>(request: &Request<B>) -> Option<String> {
    request
        .headers()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Zeros, `size` bytes of them, in 64 KiB frames.
fn zeros(size: u64) -> AppBody {
    let chunk = Bytes::from(vec![0u8; 64 << 10]);
    let frames = futures::stream::unfold(size, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                    chunk.slice(..n as usize),
                )),
                left - n,
            ))
        }
    });
    StreamBody::new(frames).boxed()
}

async fn http_app(
    identity: &AppIdentity,
    request: Request<hyper::body::Incoming>,
) -> Response<AppBody> {
    let path = request.uri().path().to_owned();
    if path == "/echo" {
        // Streams the request body back as it arrives: bounded memory whatever its size.
        return Response::new(
            request
                .into_body()
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed(),
        );
    }
    if let Some(size) = path.strip_prefix("/bytes/") {
        return match size.parse::<u64>() {
            Ok(size) if size <= MAX_GENERATED => Response::new(zeros(size)),
            _ => {
                let mut response = Response::new(full(format!("bad size {size}\n")));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
            }
        };
    }
    if let Some(delay) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        // A slow answer, for timeouts (at most a minute).
        tokio::time::sleep(std::time::Duration::from_millis(delay.min(60_000))).await;
    }
    let status = identity.broken.unwrap_or_else(|| {
        path.strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    });
    let body = json!({
        "service": identity.service,
        "cluster": identity.cluster,
        "pod": identity.pod,
        "caller": caller_of(&request),
        "path": path,
        "protocol": format!("{:?}", request.version()),
        // The request's own headers (x-*), to show what the mesh changed on the way.
        "headers": request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or_default())))
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut response = Response::new(full(format!("{body}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn serve_http(listener: TcpListener, identity: AppIdentity, stop: CancellationToken) {
    let identity = std::sync::Arc::new(identity);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let identity = identity.clone();
                async move { Ok::<_, Infallible>(http_app(&identity, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

struct OrdersApp {
    identity: AppIdentity,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<OrderReply, Status>> + Send>>;

impl OrdersApp {
    fn reply<T>(&self, request: &tonic::Request<T>, status: &str, sequence: u64) -> OrderReply {
        OrderReply {
            cluster: self.identity.cluster.clone(),
            caller: request
                .metadata()
                .get(CLIENT_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            status: status.to_owned(),
            sequence,
        }
    }
}

#[tonic::async_trait]
impl Orders for OrdersApp {
    async fn place(
        &self,
        request: tonic::Request<OrderRequest>,
    ) -> Result<tonic::Response<OrderReply>, Status> {
        if request.get_ref().item.is_empty() {
            return Err(Status::invalid_argument("item is empty"));
        }
        Ok(tonic::Response::new(self.reply(&request, "placed", 0)))
    }

    type TrackStream = ReplyStream;

    async fn track(
        &self,
        request: tonic::Request<OrderRequest>,
    ) -> Result<tonic::Response<Self::TrackStream>, Status> {
        let count = u64::from(request.get_ref().quantity.min(10_000));
        let template = self.reply(&request, "shipped", 0);
        let replies = futures::stream::iter((1..=count).map(move |sequence| {
            Ok(OrderReply {
                sequence,
                ..template.clone()
            })
        }));
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

async fn serve_grpc(listener: TcpListener, identity: AppIdentity, stop: CancellationToken) {
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(tcp, _)| {
            let _ = tcp.set_nodelay(true);
            tcp
        });
        Some((accepted, listener))
    });
    let result = tonic::transport::Server::builder()
        .add_service(OrdersServer::new(OrdersApp { identity }))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "sample gRPC app stopped");
    }
}

async fn serve_tcp(listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        tokio::spawn(async move {
            let (mut read, mut write) = tcp.into_split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

/// Starts a sample app on `listen`; it runs until `stop`. Returns the bound address.
pub async fn start(
    kind: AppKind,
    listen: SocketAddr,
    identity: AppIdentity,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    match kind {
        AppKind::Http => {
            tokio::spawn(serve_http(listener, identity, stop));
        }
        AppKind::Grpc => {
            tokio::spawn(serve_grpc(listener, identity, stop));
        }
        AppKind::Tcp => {
            tokio::spawn(serve_tcp(listener, stop));
        }
    }
    Ok(address)
}

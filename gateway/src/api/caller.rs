//! Who calls the gateway's API: the TLS stream that carries the caller's identity into each
//! request, and the rule that the operator API serves operators only.

use std::pin::Pin;
use std::task::{Context, Poll};

use strait_federation::identity::{Role, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

/// A TLS connection of the API, with the caller's identity when it presented a certificate.
pub(super) struct ApiStream(
    pub(super) tokio_rustls::server::TlsStream<TcpStream>,
    pub(super) Caller,
);

/// Who called the API: the identity of the client certificate, if any.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<SpiffeId>);

impl Caller {
    /// The caller of a request (every request comes through [`ApiStream`]).
    pub fn of<T>(request: &Request<T>) -> Option<&SpiffeId> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.0.as_ref())
    }
}

impl Connected for ApiStream {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.1.clone()
    }
}

/// Serves operator calls to operators only: a workload's certificate, or none, is refused.
pub(super) fn operators_only(request: Request<()>) -> Result<Request<()>, Status> {
    match Caller::of(&request) {
        Some(id) if id.role() == Role::Operator => Ok(request),
        Some(id) => Err(Status::permission_denied(format!(
            "{id} is not an operator identity"
        ))),
        None => Err(Status::unauthenticated(
            "the operator API needs an operator certificate",
        )),
    }
}

impl AsyncRead for ApiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

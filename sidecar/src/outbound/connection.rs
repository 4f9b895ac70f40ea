//! One connection from the app to the outbound proxy. HTTP/1.1 keep-alive connections hold only
//! their socket while they are idle: hyper's connection (an 8 KiB read buffer, an 8 KiB write
//! buffer and its state) is taken apart once its exchanges are over and no other came for a
//! while ([`Buffers::park_after`]), so that an idle connection costs its socket and a small
//! task, as in HAProxy, not ~20 KiB. A busy connection keeps hyper's between its requests:
//! building it again for each one cost a tenth of the sidecar's instructions per request. A
//! connection that starts with HTTP/2's preface (prior knowledge) is served by hyper for its
//! whole life: one such connection carries many requests.
//!
//! An exchange is over when the request's body has been read to its end, the response has been
//! written, and nothing is left unflushed. A connection whose request body was dropped unread
//! is never parked again (hyper drains or closes it); one whose peer asked to close is closed.

use std::convert::Infallible;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::connect::{self, Body, BoxError};
use crate::executor::Executor;

/// The HTTP/2 connection preface's first bytes: a connection starting with them (or with a
/// part of them) is HTTP/2 with prior knowledge, or too short yet to tell.
const PREFACE_START: &[u8] = b"PRI ";

/// What hyper may buffer for one connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Buffers {
    /// The largest HTTP/1 read buffer (request line and headers).
    pub header_buffer: usize,
    /// The largest HTTP/2 header list.
    pub header_list: u32,
    /// How long an HTTP/1.1 connection with no exchange open keeps hyper's buffers before it
    /// is parked: between this and twice this, as the timer is armed once per idle spell, not
    /// once per request. Zero parks after every exchange.
    pub park_after: Duration,
}

/// [`Buffers::park_after`] of the proxy: a connection that carries a request every few
/// milliseconds keeps hyper's buffers, and ten thousand held ones each hold them for a moment.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(50);

/// Serves the app's requests on `tcp` with `handle`, until the app closes it or an error ends
/// it. Returns how many times the connection was parked (held with only its socket).
pub(super) async fn serve<H, F>(tcp: TcpStream, handle: H, buffers: Buffers) -> u64
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let exchanges = Arc::new(Exchanges::default());
    let service = {
        let exchanges = exchanges.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let (handle, exchanges) = (handle.clone(), exchanges.clone());
            // Not boxed: hyper keeps the request's future in a place of its own, which a
            // parked connection gives back. The handler's future is made where it is polled,
            // as it is large and every move copies it.
            async move {
                let response = handle(exchanges.begin(request)).await;
                Ok::<_, Infallible>(response.map(|body| Answer {
                    body,
                    exchanges: Some(exchanges),
                }))
            }
        })
    };
    let mut first = [0u8; PREFACE_START.len()];
    let seen = match tcp.peek(&mut first).await {
        Ok(0) | Err(_) => return 0,
        Ok(seen) => seen,
    };
    if PREFACE_START.starts_with(&first[..seen]) {
        let mut builder = hyper_util::server::conn::auto::Builder::new(Executor);
        builder.http1().max_buf_size(buffers.header_buffer);
        builder.http2().max_header_list_size(buffers.header_list);
        let socket = Socket::new(tcp, Bytes::new(), exchanges);
        // Boxed, so that the task of every connection does not keep room for HTTP/2's.
        let _ = Box::pin(builder.serve_connection(TokioIo::new(socket), service)).await;
        return 0;
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(buffers.header_buffer);
    let (mut tcp, mut unread, mut parked) = (tcp, Bytes::new(), 0);
    loop {
        if unread.is_empty() && tcp.readable().await.is_err() {
            return parked;
        }
        let answered_before = exchanges.answered.load(Ordering::Acquire);
        let socket = Socket::new(tcp, unread, exchanges.clone());
        // Boxed, so that a parked connection's task does not keep room for it.
        let mut connection =
            Box::new(builder.serve_connection(TokioIo::new(socket), service.clone()));
        let mut idle = Idle::new(buffers.park_after);
        let over = std::future::poll_fn(|context| match Pin::new(&mut *connection).poll(context) {
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending if exchanges.may_park(answered_before) => {
                let answered = exchanges.answered.load(Ordering::Acquire);
                idle.poll_over(context, answered).map(|()| true)
            }
            Poll::Pending => Poll::Pending,
        })
        .await;
        if !over {
            return parked;
        }
        let parts = connection.into_parts();
        let socket = parts.io.into_inner();
        (tcp, unread) = (socket.tcp, join(parts.read_buf, socket.unread));
        parked += 1;
    }
}

/// The wait of a connection with no exchange open before it is parked.
struct Idle {
    after: Duration,
    /// Armed at the first idle moment; fires `after` later.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Responses answered when the timer was armed: another one since means the connection
    /// was busy meanwhile, and the wait starts again.
    answered_at_arming: u64,
}

impl Idle {
    fn new(after: Duration) -> Self {
        Self {
            after,
            timer: None,
            answered_at_arming: 0,
        }
    }

    /// Ready once the connection has been idle for `after`, with `answered` responses so far.
    fn poll_over(&mut self, context: &mut Context<'_>, answered: u64) -> Poll<()> {
        if self.after.is_zero() {
            return Poll::Ready(());
        }
        let Some(timer) = &mut self.timer else {
            self.answered_at_arming = answered;
            let timer = self.timer.insert(Box::pin(tokio::time::sleep(self.after)));
            // Registers the wake-up.
            return timer.as_mut().poll(context);
        };
        ready!(timer.as_mut().poll(context));
        if answered == self.answered_at_arming {
            return Poll::Ready(());
        }
        self.answered_at_arming = answered;
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.after);
        timer.as_mut().poll(context)
    }
}

/// What a connection's exchanges have left open, shared by the connection, its requests'
/// bodies and its responses' bodies (which other tasks may hold).
#[derive(Debug, Default)]
struct Exchanges {
    /// Requests not yet answered in full, and request bodies not yet read to their end.
    open: AtomicUsize,
    /// Responses written in full (or given up), ever.
    answered: AtomicU64,
    /// Whether the socket refused the last write: hyper still holds bytes to send.
    write_blocked: AtomicBool,
    /// Whether a request body was dropped before its end: hyper, not the proxy, must finish
    /// reading it, so the connection stays hyper's.
    unsettled: AtomicBool,
}

impl Exchanges {
    /// Counts a request (and its body, unless it has none) as open.
    fn begin(self: &Arc<Self>, request: Request<Incoming>) -> Request<Body> {
        let reading = !request.body().is_end_stream();
        self.open
            .fetch_add(1 + usize::from(reading), Ordering::AcqRel);
        let exchanges = reading.then(|| self.clone());
        request.map(|body| connect::boxed(Question { body, exchanges }))
    }

    /// Closes one open part of an exchange.
    fn end(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the connection may give hyper's state back: every exchange since
    /// `answered_before` is over, at least one was, and nothing waits to be written.
    fn may_park(&self, answered_before: u64) -> bool {
        self.open.load(Ordering::Acquire) == 0
            && self.answered.load(Ordering::Acquire) > answered_before
            && !self.write_blocked.load(Ordering::Acquire)
            && !self.unsettled.load(Ordering::Acquire)
    }
}

/// A request's body, which closes its part of the exchange when read to its end.
struct Question {
    body: Incoming,
    exchanges: Option<Arc<Exchanges>>,
}

impl HttpBody for Question {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(context));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => self.body.is_end_stream(),
            Some(Err(_)) => false,
        };
        if ended && let Some(exchanges) = self.exchanges.take() {
            exchanges.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Question {
    fn drop(&mut self) {
        if let Some(exchanges) = self.exchanges.take() {
            exchanges.unsettled.store(true, Ordering::Release);
            exchanges.end();
        }
    }
}

/// A response's body, which closes its part of the exchange when hyper is done with it.
struct Answer {
    body: Body,
    exchanges: Option<Arc<Exchanges>>,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(exchanges) = self.exchanges.take() {
            exchanges.answered.fetch_add(1, Ordering::AcqRel);
            exchanges.end();
        }
    }
}

/// The app's socket as hyper sees it: bytes read before the connection was last parked come
/// first, and a write the socket refused is noted.
struct Socket {
    tcp: TcpStream,
    unread: Bytes,
    exchanges: Arc<Exchanges>,
}

impl Socket {
    fn new(tcp: TcpStream, unread: Bytes, exchanges: Arc<Exchanges>) -> Self {
        Self {
            tcp,
            unread,
            exchanges,
        }
    }

    fn note<T>(&self, poll: Poll<T>) -> Poll<T> {
        self.exchanges
            .write_blocked
            .store(poll.is_pending(), Ordering::Release);
        poll
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(context, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(context, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write_vectored(context, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_flush(context);
        self.note(poll)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(context)
    }
}

/// The bytes a parked connection has read and not used, in the order they came: those left in
/// hyper's read buffer, then those the socket still held from an earlier park (hyper read
/// from those first). Copied: an empty or small remainder of hyper's read buffer would
/// otherwise keep all of its 8 KiB.
fn join(first: Bytes, then: Bytes) -> Bytes {
    if first.is_empty() && then.is_empty() {
        return Bytes::new();
    }
    [first, then].concat().into()
}

#[cfg(test)]
mod tests;

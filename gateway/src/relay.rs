//! The relay: flows between this cluster's sidecars and other clusters. A sidecar opens a TCP
//! connection to the relay and names the service and cluster it wants (a flow header); the
//! gateway opens one QUIC stream on the connection with that cluster's gateway, which picks a
//! ready endpoint and connects to it. Each side answers whether the flow found an endpoint;
//! then bytes are copied both ways. The bytes are the sidecars' own mutual TLS: gateways route
//! and count flows but cannot read them, and the destination sees the real caller.

use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_federation::trace::{Span, SpanId, SpanKind, TraceId, Value};

use bytes::{Bytes, BytesMut};
use strait_federation::catalog::ServiceKey;
use strait_federation::flow::{self, FlowRefused, FlowTarget};
use strait_federation::identity::ClusterName;
use strait_federation::proto::peer::FlowReply;
use strait_io::flow::{read_open, read_reply, write_frame};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Shared, lock};

/// How long a flow header may take to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a stream, connecting to an endpoint, or the far end's answer may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints tried per flow before it is refused.
const ENDPOINT_ATTEMPTS: usize = 3;
/// How much is read from TCP at a time: large enough for bulk transfers to keep QUIC busy.
const READ_BUFFER: usize = 256 << 10;
/// The least room a read from TCP is given before a fresh [`READ_BUFFER`] is taken.
const READ_ROOM: usize = READ_BUFFER / 2;
/// How many QUIC chunks (a packet's worth of stream data each) go into one TCP write.
const READ_CHUNKS: usize = 64;

/// Which way a flow goes through this gateway.
#[derive(Clone, Copy)]
enum Direction {
    /// From this cluster's sidecars to a peer.
    Outbound,
    /// From a peer to this cluster's endpoints.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Counts a flow while it is open and records its outcome, bytes and duration (and its span,
/// when it carries a sampled request).
struct FlowRecord {
    shared: Arc<Shared>,
    direction: Direction,
    peer: String,
    namespace: String,
    service: String,
    started: Instant,
    open: bool,
    /// This hop's span: the trace, the span's id and its parent's, and when it began.
    span: Option<(TraceId, SpanId, SpanId, u64)>,
}

impl FlowRecord {
    fn new(shared: &Arc<Shared>, direction: Direction, peer: &ClusterName) -> Self {
        Self {
            shared: shared.clone(),
            direction,
            peer: peer.to_string(),
            namespace: String::new(),
            service: String::new(),
            started: Instant::now(),
            open: false,
            span: None,
        }
    }

    /// Takes note of the flow's target; a flow that carries a sampled request gives this
    /// gateway its span, and keeps the spans of the hops after it.
    fn target(&mut self, target: &mut FlowTarget) {
        self.namespace = target.service.namespace.to_string();
        self.service = target.service.name.to_string();
        let hop = target.trace.as_ref().and_then(|t| t.take_hop());
        if let (Some(trace), Some((mine, rest))) = (target.trace.as_ref(), hop) {
            self.span = Some((
                trace.trace_id,
                mine,
                trace.parent_id,
                strait_io::clock::unix_now_nanos(),
            ));
            target.trace = Some(rest);
        }
    }

    /// Records this hop's span, if the flow carries a sampled request.
    fn record_span(&mut self, outcome: &str, tx: u64, rx: u64) {
        let Some((trace_id, span_id, parent, started)) = self.span.take() else {
            return;
        };
        let local = self.shared.config.cluster.as_str();
        let (from, to) = match self.direction {
            Direction::Outbound => (local, self.peer.as_str()),
            Direction::Inbound => (self.peer.as_str(), local),
        };
        self.shared.spans.record(Span {
            trace_id,
            span_id,
            parent_id: Some(parent),
            name: format!("gateway {from} -> {to}"),
            kind: SpanKind::Internal,
            start_unix_nanos: started,
            end_unix_nanos: strait_io::clock::unix_now_nanos(),
            attributes: vec![
                (
                    "strait.direction",
                    Value::Text(self.direction.as_str().into()),
                ),
                ("strait.peer", Value::Text(self.peer.clone())),
                (
                    "strait.service",
                    Value::Text(format!("{}/{}", self.namespace, self.service)),
                ),
                ("strait.outcome", Value::Text(outcome.into())),
                ("strait.bytes_tx", Value::Int(tx as i64)),
                ("strait.bytes_rx", Value::Int(rx as i64)),
            ],
            error: (outcome != "ok").then(|| format!("flow {outcome}")),
        });
    }

    fn opened(&mut self) {
        self.open = true;
        self.shared
            .metrics
            .open_flows
            .with_label_values(&[self.direction.as_str(), &self.peer])
            .inc();
    }

    fn finish(&mut self, outcome: &str, tx: u64, rx: u64) {
        self.record_span(outcome, tx, rx);
        let m = &self.shared.metrics;
        let labels = [
            self.direction.as_str(),
            self.peer.as_str(),
            self.namespace.as_str(),
            self.service.as_str(),
        ];
        m.flows
            .with_label_values(&[labels[0], labels[1], labels[2], labels[3], outcome])
            .inc();
        if self.open {
            self.open = false;
            m.open_flows
                .with_label_values(&[labels[0], labels[1]])
                .dec();
            for (way, bytes) in [("tx", tx), ("rx", rx)] {
                m.flow_bytes
                    .with_label_values(&[labels[0], labels[1], labels[2], labels[3], way])
                    .inc_by(bytes);
            }
            m.flow_duration
                .with_label_values(&labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for FlowRecord {
    fn drop(&mut self) {
        if self.open {
            self.finish("error", 0, 0);
        }
    }
}

/// Accepts flows from this cluster's sidecars until the gateway stops.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (mut tcp, _, place) = tokio::select! {
            accepted = shared.limits.relay.accept(&listener) => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let Some(place) = place else {
            // The sidecar reads the reason as the flow's answer, then the close.
            let reason = shared.limits.relay.limit().reason();
            tokio::spawn(async move {
                answer(&mut tcp, &strait_federation::flow::refusal(reason)).await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            outbound_flow(shared, tcp).await;
            drop(place);
        });
    }
}

/// Why a flow could not be opened; the text is the refusal the sidecar (or peer) reads.
#[derive(Debug, thiserror::Error)]
enum FlowError {
    #[error("{0} is this cluster: sidecars reach its endpoints directly")]
    ThisCluster(ClusterName),
    #[error("cluster {0} is not connected")]
    NotConnected(ClusterName),
    #[error("{0} timed out")]
    TimedOut(&'static str),
    #[error("the relay of another replica at {sibling}: {source}")]
    Sibling {
        sibling: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a stream to {cluster}: {source}")]
    Stream {
        cluster: ClusterName,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("sending the flow header to {cluster}: {source}")]
    Header {
        cluster: ClusterName,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster {cluster}: {source}")]
    Refused {
        cluster: ClusterName,
        #[source]
        source: FlowRefused,
    },
    #[error("this is cluster {local}, not {wanted}")]
    OtherCluster {
        local: ClusterName,
        wanted: ClusterName,
    },
    #[error("{service} is not exported by cluster {cluster}")]
    NotExported {
        service: ServiceKey,
        cluster: ClusterName,
    },
    #[error("{service} has no port {port}")]
    NoPort { service: ServiceKey, port: u16 },
    #[error("no ready endpoint of {service} in cluster {cluster}")]
    NoEndpoint {
        service: ServiceKey,
        cluster: ClusterName,
    },
    /// `last` is the last endpoint tried and why it failed.
    #[error("no endpoint of {service} in cluster {cluster} accepted the flow (last: {last})")]
    Unreachable {
        service: ServiceKey,
        cluster: ClusterName,
        last: String,
    },
}

async fn timed<T>(what: &'static str, future: impl Future<Output = T>) -> Result<T, FlowError> {
    tokio::time::timeout(OPEN_TIMEOUT, future)
        .await
        .map_err(|_| FlowError::TimedOut(what))
}

async fn answer(writer: &mut (impl AsyncWrite + Unpin), reply: &FlowReply) {
    let _ = tokio::time::timeout(OPEN_TIMEOUT, write_frame(writer, reply)).await;
}

/// A flow from one of this cluster's sidecars to another cluster.
async fn outbound_flow(shared: Arc<Shared>, mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut target = match tokio::time::timeout(HEADER_TIMEOUT, read_open(&mut tcp)).await {
        Ok(Ok(target)) => target,
        Ok(Err(e)) => {
            answer(&mut tcp, &flow::refusal(e.to_string())).await;
            return;
        }
        Err(_) => return,
    };
    let mut record = FlowRecord::new(&shared, Direction::Outbound, &target.cluster);
    record.target(&mut target);
    let local = shared.config.cluster.clone();
    let opened = if target.cluster == local {
        Err(FlowError::ThisCluster(target.cluster.clone()))
    } else {
        // The current session's connection first, then other replicas' of the peer's gateway:
        // one that cannot carry a stream (its replica just died) is passed over.
        let connections: Vec<quinn::Connection> = lock(&shared.peers)
            .get(&target.cluster)
            .map(|status| status.flow_connections().cloned().collect())
            .unwrap_or_default();
        let mut opened = Err(FlowError::NotConnected(target.cluster.clone()));
        for connection in &connections {
            opened = open_stream(connection, &target, &local, &shared.limits.peer_streams).await;
            if !matches!(
                opened,
                Err(FlowError::Stream { .. } | FlowError::Header { .. } | FlowError::TimedOut(_))
            ) {
                break;
            }
        }
        opened
    };
    if let Err(FlowError::NotConnected(_)) = &opened
        && !target.forwarded
    {
        // Another replica of this cluster's gateway may peer with that cluster (a peer that
        // dials this cluster reaches one replica only).
        let siblings = lock(&shared.siblings).clone();
        if !siblings.is_empty() {
            forward_to_sibling(&mut record, tcp, &target, &siblings).await;
            return;
        }
    }
    match opened {
        Ok((send, recv)) => {
            answer(&mut tcp, &flow::accepted()).await;
            record.opened();
            relay(&mut record, tcp, send, recv).await;
        }
        Err(reason) => {
            tracing::debug!(peer = %target.cluster, service = %target.service, reason = %reason, "flow refused");
            answer(&mut tcp, &flow::refusal(reason.to_string())).await;
            record.finish("refused", 0, 0);
        }
    }
}

/// Opens a flow's stream on a connection with the target cluster's gateway: the header, then
/// that gateway's answer.
async fn open_stream(
    connection: &quinn::Connection,
    target: &FlowTarget,
    local: &ClusterName,
    streams: &strait_io::limit::Limit,
) -> Result<(quinn::SendStream, quinn::RecvStream), FlowError> {
    let mut opening = std::pin::pin!(connection.open_bi());
    let opened = match futures::FutureExt::now_or_never(opening.as_mut()) {
        Some(opened) => opened,
        // The peer's stream credit is used up (its `limits.peerStreams` flows are open): wait
        // for a flow to end, and count a refusal only when none ends in time.
        None => match timed("opening a stream (waiting for stream credit)", opening).await {
            Ok(opened) => opened,
            Err(timed_out) => {
                streams.refuse(&format!(
                    "a flow to {}: the peer's limits.peerStreams flows stayed open",
                    target.cluster
                ));
                return Err(timed_out);
            }
        },
    };
    let (mut send, mut recv) = opened.map_err(|source| FlowError::Stream {
        cluster: target.cluster.clone(),
        source,
    })?;
    let mut open = target.to_wire();
    open.source_cluster = local.to_string();
    open.forwarded = false;
    timed("sending the flow header", write_frame(&mut send, &open))
        .await?
        .map_err(|source| FlowError::Header {
            cluster: target.cluster.clone(),
            source,
        })?;
    timed("the answer of the peer gateway", read_reply(&mut recv))
        .await?
        .map_err(|source| FlowError::Refused {
            cluster: target.cluster.clone(),
            source,
        })?;
    Ok((send, recv))
}

/// A flow for a cluster this replica has no connection with (Kubernetes mode): handed to the
/// other replicas of the cluster's gateway in turn, marked so that none hands it on again,
/// until one accepts it; its answer is passed back, then the bytes copied both ways.
async fn forward_to_sibling(
    record: &mut FlowRecord,
    mut tcp: TcpStream,
    target: &FlowTarget,
    siblings: &[std::net::SocketAddr],
) {
    let mut open = target.to_wire();
    open.forwarded = true;
    let mut last = None;
    for &sibling in siblings {
        let opened = async {
            let mut upstream = timed("connecting to another replica", TcpStream::connect(sibling))
                .await?
                .map_err(|source| FlowError::Sibling { sibling, source })?;
            let _ = upstream.set_nodelay(true);
            timed("sending the flow header", write_frame(&mut upstream, &open))
                .await?
                .map_err(|source| FlowError::Sibling { sibling, source })?;
            timed("the answer of another replica", read_reply(&mut upstream))
                .await?
                .map_err(|source| FlowError::Refused {
                    cluster: target.cluster.clone(),
                    source,
                })?;
            Ok::<_, FlowError>(upstream)
        };
        match opened.await {
            Ok(mut upstream) => {
                answer(&mut tcp, &flow::accepted()).await;
                record.opened();
                match tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await {
                    Ok((tx, rx)) => record.finish("ok", tx, rx),
                    Err(e) => {
                        tracing::debug!(error = %e, "forwarded flow ended with an error");
                        record.finish("error", 0, 0);
                    }
                }
                return;
            }
            Err(reason) => {
                tracing::debug!(sibling = %sibling, reason = %reason, "flow not forwarded");
                last = Some(reason);
            }
        }
    }
    let reason = last.map_or_else(String::new, |r| r.to_string());
    answer(&mut tcp, &flow::refusal(reason)).await;
    record.finish("refused", 0, 0);
}

/// Copies a flow both ways and records how it ended (with the bytes moved, even when it
/// ended with an error). Bytes from the TCP side become QUIC stream chunks without another
/// copy; bytes from QUIC are gathered into large TCP writes.
async fn relay(
    record: &mut FlowRecord,
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let mut tx = 0u64;
    let mut rx = 0u64;
    let to_peer = async {
        let mut buffer = BytesMut::new();
        loop {
            make_room(&mut buffer);
            if tcp_read.read_buf(&mut buffer).await? == 0 {
                let _ = send.finish();
                return Ok::<_, std::io::Error>(());
            }
            tx += buffer.len() as u64;
            send.write_chunk(buffer.split().freeze())
                .await
                .map_err(std::io::Error::other)?;
        }
    };
    let from_peer = async {
        // QUIC hands out packet-sized chunks: all that have arrived go out in one vectored
        // write, without being copied together first.
        let mut chunks: [Bytes; READ_CHUNKS] = std::array::from_fn(|_| Bytes::new());
        while let Some(n) = recv
            .read_chunks(&mut chunks)
            .await
            .map_err(std::io::Error::other)?
        {
            rx += chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
            write_all_chunks(&mut tcp_write, &mut chunks[..n]).await?;
        }
        tcp_write.shutdown().await
    };
    let outcome = tokio::try_join!(to_peer, from_peer);
    match outcome {
        Ok(_) => record.finish("ok", tx, rx),
        Err(e) => {
            tracing::debug!(error = %e, "flow ended with an error");
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            record.finish("error", tx, rx);
        }
    }
}

/// Makes room in `buffer` for the next read from TCP. What was read before went to QUIC as
/// chunks that share the buffer's allocation until the peer acknowledges them, so asking for
/// [`READ_BUFFER`] each time took a fresh 256 KiB for every read, however short (a request is
/// a few hundred bytes): the rest of the buffer is read into first, down to [`READ_ROOM`].
fn make_room(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < READ_ROOM {
        buffer.reserve(READ_BUFFER);
    }
}

/// Writes every byte of `chunks`, in order, with as few writes as the socket allows; the
/// chunks are left empty.
async fn write_all_chunks(
    writer: &mut (impl AsyncWrite + Unpin),
    chunks: &mut [Bytes],
) -> std::io::Result<()> {
    writer.write_all_buf(&mut Chunks(chunks)).await
}

/// QUIC's chunks read as one buffer: `write_all_buf` hands a socket up to 64 of them in one
/// vectored write, and none is copied.
struct Chunks<'a>(&'a mut [Bytes]);

impl bytes::Buf for Chunks<'_> {
    fn remaining(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.0.iter().find(|c| !c.is_empty()).map_or(&[], |c| c)
    }

    fn chunks_vectored<'b>(&'b self, slices: &mut [std::io::IoSlice<'b>]) -> usize {
        let filled = self
            .0
            .iter()
            .filter(|c| !c.is_empty())
            .zip(slices.iter_mut());
        filled
            .map(|(chunk, slice)| *slice = std::io::IoSlice::new(chunk))
            .count()
    }

    fn advance(&mut self, mut count: usize) {
        for chunk in self.0.iter_mut() {
            let take = count.min(chunk.len());
            chunk.advance(take);
            count -= take;
        }
    }
}

/// Accepts the flows a peer opens on its connection, until the connection closes.
pub fn accept_flows(shared: Arc<Shared>, peer: ClusterName, connection: quinn::Connection) {
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = connection.accept_bi() => accepted,
                () = shared.shutdown.cancelled() => return,
            };
            let Ok((send, recv)) = accepted else {
                return;
            };
            tokio::spawn(inbound_flow(shared.clone(), peer.clone(), send, recv));
        }
    });
}

/// A flow from a peer to one of this cluster's endpoints.
async fn inbound_flow(
    shared: Arc<Shared>,
    peer: ClusterName,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut record = FlowRecord::new(&shared, Direction::Inbound, &peer);
    let mut target = match tokio::time::timeout(HEADER_TIMEOUT, read_open(&mut recv)).await {
        Ok(Ok(target)) => target,
        Ok(Err(e)) => {
            answer(&mut send, &flow::refusal(e.to_string())).await;
            record.finish("refused", 0, 0);
            return;
        }
        Err(_) => {
            record.finish("refused", 0, 0);
            return;
        }
    };
    record.target(&mut target);
    match connect_endpoint(&shared, &target).await {
        Ok(tcp) => {
            answer(&mut send, &flow::accepted()).await;
            record.opened();
            relay(&mut record, tcp, send, recv).await;
        }
        Err(reason) => {
            tracing::debug!(peer = %peer, service = %target.service, reason = %reason, "flow refused");
            answer(&mut send, &flow::refusal(reason.to_string())).await;
            record.finish("refused", 0, 0);
        }
    }
}

/// Connects to a ready endpoint of an exported service of this cluster, trying up to
/// [`ENDPOINT_ATTEMPTS`] of them from a random start.
async fn connect_endpoint(shared: &Shared, target: &FlowTarget) -> Result<TcpStream, FlowError> {
    if target.cluster != shared.config.cluster {
        return Err(FlowError::OtherCluster {
            local: shared.config.cluster.clone(),
            wanted: target.cluster.clone(),
        });
    }
    let candidates: Vec<_> = {
        let state = lock(&shared.state);
        let spec = state
            .effective(&target.service)
            .filter(|spec| spec.export)
            .ok_or_else(|| FlowError::NotExported {
                service: target.service.clone(),
                cluster: target.cluster.clone(),
            })?;
        if !spec.ports.iter().any(|p| p.port == target.port) {
            return Err(FlowError::NoPort {
                service: target.service.clone(),
                port: target.port,
            });
        }
        spec.endpoints
            .iter()
            .filter(|e| e.ready)
            .filter(|e| {
                target
                    .hostname
                    .as_ref()
                    .is_none_or(|h| e.hostname.as_ref() == Some(h))
            })
            .map(|e| e.address)
            .collect()
    };
    if candidates.is_empty() {
        return Err(FlowError::NoEndpoint {
            service: target.service.clone(),
            cluster: target.cluster.clone(),
        });
    }
    let start = strait_io::random::random_u64() as usize % candidates.len();
    let mut last = String::new();
    for i in 0..candidates.len().min(ENDPOINT_ATTEMPTS) {
        let address = candidates[(start + i) % candidates.len()];
        match tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = format!("{address}: {e}"),
            Err(_) => last = format!("{address}: connect timed out"),
        }
    }
    Err(FlowError::Unreachable {
        service: target.service.clone(),
        cluster: target.cluster.clone(),
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `most` bytes per write, as a socket with a full buffer does.
    struct Trickle {
        most: usize,
        written: Vec<u8>,
        writes: usize,
    }

    impl Trickle {
        fn take(&mut self, slices: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
            let mut room = self.most;
            for slice in slices {
                let take = room.min(slice.len());
                self.written.extend_from_slice(&slice[..take]);
                room -= take;
            }
            self.writes += 1;
            Poll::Ready(Ok(self.most - room))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.take(&[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.take(slices)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn short_reads_share_one_buffer_until_its_room_runs_low() {
        let mut buffer = BytesMut::new();
        make_room(&mut buffer);
        assert!(buffer.capacity() >= READ_BUFFER);
        // Reads of a request's size, each sent on as a chunk that stays alive (unacknowledged):
        // each next one lands right after the last, until less than READ_ROOM is left.
        let mut sent = Vec::new();
        loop {
            let next = buffer.as_ptr().wrapping_add(300);
            buffer.extend_from_slice(&[7; 300]);
            sent.push(buffer.split().freeze());
            let room = buffer.capacity();
            make_room(&mut buffer);
            if buffer.as_ptr() != next {
                assert!(
                    room < READ_ROOM,
                    "a fresh buffer with {room} bytes of room left"
                );
                break;
            }
            assert!(sent.len() < READ_BUFFER / 300, "the room never ran low");
        }
        assert!(
            sent.len() > 400,
            "{} reads shared the first buffer",
            sent.len()
        );
        // The next read gets a whole buffer of its own.
        assert!(buffer.capacity() >= READ_BUFFER);
        assert!(sent.iter().all(|chunk| chunk[..] == [7; 300]));
    }

    #[tokio::test]
    async fn chunks_are_written_whole_and_in_order_across_short_writes() {
        for most in [1, 3, 5, 7, 64] {
            let mut writer = Trickle {
                most,
                written: Vec::new(),
                writes: 0,
            };
            let mut chunks =
                ["", "hello", "", " wor", "ld", ""].map(|s| Bytes::from_static(s.as_bytes()));
            write_all_chunks(&mut writer, &mut chunks).await.unwrap();
            assert_eq!(writer.written, b"hello world", "at most {most} a write");
            assert!(chunks.iter().all(Bytes::is_empty));
            assert_eq!(
                writer.writes,
                11_usize.div_ceil(most),
                "at most {most} a write"
            );
        }
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_spin() {
        let mut writer = Trickle {
            most: 0,
            written: Vec::new(),
            writes: 0,
        };
        let mut chunks = [Bytes::from_static(b"x")];
        let err = write_all_chunks(&mut writer, &mut chunks)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
        assert_eq!(writer.writes, 1);
    }
}

//! The QUIC endpoint of a gateway and the control stream's frames: transport settings, the
//! server and client TLS of the peer protocol, whole frames read through the bounded decoder,
//! frames written with a deadline, and a refusal sent before a connection closes.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use strait_federation::identity::{ClusterName, Role};
use strait_federation::proto::peer::{PeerFrame, RefusalCode};
use strait_federation::session;
use strait_federation::tls::{self, CertStore, PEER_ALPN, PeerRule};
use strait_federation::wire::{self, FrameDecoder};

use super::error::{PeerError, deadline};
use crate::config::{CongestionControl, GatewayConfig};
use crate::{GatewayError, Shared};

/// The longest wait for a QUIC handshake, a stream, or the first frame of a peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads whole frames from a stream, never buffering more than the frame being read.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Wraps the receiving half of a control stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::default(),
            buffer: vec![0; 64 << 10],
        }
    }

    /// The next frame. Cancel-safe: bytes read are kept in the decoder.
    pub async fn next(&mut self) -> Result<PeerFrame, PeerError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let wanted = self.decoder.wanted()?.min(self.buffer.len());
            match self.recv.read(&mut self.buffer[..wanted]).await? {
                Some(n) => self.decoder.extend(&self.buffer[..n]),
                None => return Err(PeerError::Closed),
            }
        }
    }
}

pub(super) async fn send_frame(
    send: &mut quinn::SendStream,
    frame: &PeerFrame,
    limit: Duration,
) -> Result<(), PeerError> {
    deadline(
        limit,
        "writing a frame",
        send.write_all(&wire::encode(frame)),
    )
    .await
}

/// How far a peer may send on one flow ahead of this gateway's reading it.
const STREAM_WINDOW: u32 = 16 << 20;
/// How many bytes this gateway keeps sent and not yet acknowledged, over all flows of a peer.
const SEND_WINDOW: u64 = 64 << 20;

fn transport(config: &GatewayConfig) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.peering.idle_timeout())
        .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000)));
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(config.peering.keepalive()));
    // One stream per relayed flow, plus the control stream.
    transport.max_concurrent_bidi_streams(config.limits.peer_streams.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Fewer, larger packets where the path carries them: the cost of a bulk flow is mostly
    // per packet (sealing, acknowledging, one pass through the kernel).
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(config.peering.max_udp_payload);
    transport.mtu_discovery_config(Some(discovery));
    // Windows for the distance between clouds, not for loopback: a flow moves at most its
    // stream window per round trip. quinn's 1.25 MB allows 62 MB/s at 20 ms (30-39 measured
    // through bench/delay.py); 16 MiB allows 800 MB/s there and 160 MB/s at 100 ms. The cost
    // is what a stalled flow's reader leaves buffered: up to one window per flow, as a TCP
    // socket's receive buffer holds.
    transport.stream_receive_window(STREAM_WINDOW.into());
    // Unacknowledged bytes of all flows together, on the sending side.
    transport.send_window(SEND_WINDOW);
    // quinn's default is Cubic; CongestionControl says why the peering's is BBR.
    if config.peering.congestion_control == CongestionControl::Bbr {
        transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    Arc::new(transport)
}

/// The QUIC endpoint of a gateway: accepts peer gateways of any cluster under the trust root
/// (the join token decides who may peer) and dials with the same socket.
pub fn endpoint(
    config: &GatewayConfig,
    trust: &tls::TrustStore,
    certs: &CertStore,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, GatewayError> {
    let tls = tls::server_config(trust, certs, PeerRule::role(Role::Gateway), &[PEER_ALPN])?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(config));
    let mut endpoint = quinn::EndpointConfig::default();
    // Checked against QUIC's bounds when the configuration was loaded.
    let _ = endpoint.max_udp_payload_size(config.peering.max_udp_payload);
    let bind = |error| GatewayError::Bind {
        what: "quicAddr",
        addr: config.quic_addr,
        error,
    };
    quinn::Endpoint::new_with_abstract_socket(
        endpoint,
        Some(server),
        super::socket::BatchedSocket::wrap(socket).map_err(bind)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)
}

pub(super) fn client_config(
    shared: &Shared,
    peer: &ClusterName,
) -> Result<quinn::ClientConfig, GatewayError> {
    let tls = tls::client_config(
        shared.trust.store(),
        &shared.certs,
        PeerRule::role_in(Role::Gateway, peer.clone()),
        &[PEER_ALPN],
    )?;
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport(&shared.config));
    Ok(client)
}

pub(super) async fn refuse(
    send: &mut quinn::SendStream,
    connection: &quinn::Connection,
    code: RefusalCode,
    reason: &str,
) {
    let _ = send_frame(
        send,
        &session::refusal(code, reason),
        Duration::from_secs(2),
    )
    .await;
    let _ = send.finish();
    // Give the refusal a moment to leave before the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    connection.close(1u32.into(), reason.as_bytes());
}

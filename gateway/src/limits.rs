//! The gateway's limits (`limits:` in gateway.yaml) as its listeners and its peer endpoint
//! apply them, each named by its key when counted or logged.

use strait_io::limit::{Cap, Limit, Refusals};

use crate::config::LimitsConfig;

/// The limits of a running gateway.
pub struct Limits {
    /// Connections on the API port.
    pub api: Cap,
    /// Connections on the API port without a client certificate, past their TLS handshake.
    pub api_anonymous: Cap,
    /// Flows from this cluster's sidecars on the relay port.
    pub relay: Cap,
    /// Connections on the admin port.
    pub admin: Cap,
    /// Connections on the DNS server's TCP port.
    pub dns_tcp: Cap,
    /// Peer connections in their handshake.
    pub peer_handshakes: Cap,
    /// Flows open at once on one peer connection (counted when this gateway waits for room).
    pub peer_streams: Limit,
    /// The bytes of one file given to `strait apply` or `delete`: fixed, not configured,
    /// because every gateway must take what any other takes.
    pub file_bytes: Limit,
}

impl Limits {
    /// The limits of `config`, counted in `refusals`.
    pub fn new(config: &LimitsConfig, refusals: &Refusals) -> Self {
        let cap = |key, value: u32| Cap::new(refusals.limit(key, u64::from(value)));
        Self {
            api: cap("limits.apiConnections", config.api_connections),
            api_anonymous: cap(
                "limits.apiAnonymousConnections",
                config.api_anonymous_connections,
            ),
            relay: cap("limits.relayConnections", config.relay_connections),
            admin: cap("limits.adminConnections", config.admin_connections),
            dns_tcp: cap("limits.dnsTcpConnections", config.dns_tcp_connections),
            peer_handshakes: cap("limits.peerHandshakes", config.peer_handshakes),
            peer_streams: refusals.limit("limits.peerStreams", u64::from(config.peer_streams)),
            file_bytes: refusals.limit(
                "apply.fileBytes",
                strait_federation::resource::MAX_FILE_BYTES as u64,
            ),
        }
    }
}

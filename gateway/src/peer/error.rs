//! Why a peer connection or session failed, and the deadline every wait on a peer gets.

use std::time::Duration;

use strait_federation::certificate::CertificateError;
use strait_federation::handshake::HandshakeError;
use strait_federation::session::SessionError;
use strait_federation::wire::FrameError;

use crate::GatewayError;

/// Why a peer connection or session failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("reading from the peer: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("no answer from the peer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("the peer closed the control stream")]
    Closed,
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {0}")]
    NoAddress(String),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The gateway that answered is not of the Link's cluster.
    #[error(transparent)]
    WrongPeer(HandshakeError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl From<HandshakeError> for PeerError {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::Session(e) => PeerError::Session(e),
            other => PeerError::WrongPeer(other),
        }
    }
}

impl PeerError {
    fn connection_error(&self) -> Option<&quinn::ConnectionError> {
        match self {
            PeerError::Connection(e)
            | PeerError::Read(quinn::ReadError::ConnectionLost(e))
            | PeerError::Write(quinn::WriteError::ConnectionLost(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether the TLS handshake failed (a certificate refused by either side): QUIC carries
    /// TLS alerts as error codes 0x100 to 0x1ff.
    pub fn is_tls_failure(&self) -> bool {
        let code = match self.connection_error() {
            Some(quinn::ConnectionError::TransportError(e)) => e.code,
            Some(quinn::ConnectionError::ConnectionClosed(c)) => c.error_code,
            _ => return false,
        };
        (0x100..0x200).contains(&u64::from(code))
    }

    /// A short label for metrics.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            PeerError::Session(SessionError::Refused { .. }) => "refused",
            PeerError::Session(SessionError::Idle(_)) | PeerError::Timeout(..) => "timeout",
            PeerError::Session(_) | PeerError::Frame(_) => "protocol",
            PeerError::Closed
            | PeerError::Connection(_)
            | PeerError::Read(_)
            | PeerError::Write(_) => "connection",
            _ => "other",
        }
    }
}

pub(super) async fn deadline<T, E: Into<PeerError>>(
    limit: Duration,
    what: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(PeerError::Timeout(limit, what)),
    }
}

#[cfg(test)]
mod tests {
    use strait_federation::handshake::Refusal;
    use strait_federation::identity::ClusterName;
    use strait_federation::proto::peer::RefusalCode;

    use super::*;

    /// The dialer's loop decides on `PeerError::Session(Refused)`: a refusal read during the
    /// handshake must arrive as that, not as some other error.
    #[test]
    fn a_refusal_in_the_handshake_is_a_session_refusal_to_the_dialer() {
        let west = ClusterName::new("west").unwrap();
        let refusal = Refusal::unlinked(&west);
        let error = PeerError::from(HandshakeError::Session(refusal.clone().into_error()));
        assert!(matches!(
            error,
            PeerError::Session(SessionError::Refused {
                code: RefusalCode::RefusalUnlinked,
                ..
            })
        ));
        assert_eq!(error.reason(), "refused");
        assert!(!error.is_tls_failure());
    }

    #[test]
    fn a_gateway_of_another_cluster_keeps_the_message_operators_know() {
        let error = PeerError::from(HandshakeError::WrongPeer {
            address: "west.example:4433".into(),
            said: ClusterName::new("north").unwrap(),
            expected: ClusterName::new("west").unwrap(),
        });
        assert_eq!(
            error.to_string(),
            "the gateway at west.example:4433 says it is cluster north, not west"
        );
        assert_eq!(error.reason(), "other");
    }
}

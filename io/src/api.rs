//! Reaching a gateway's API (gRPC over TLS, ALPN `h2`): the one way both operators (the CLI)
//! and sidecars dial it, with the gateway's identity checked by the mesh's verifier.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::InvalidDnsNameError;
use rustls_pki_types::ServerName;
use strait_federation::certificate;
use strait_federation::identity::{ClusterName, Role, SpiffeId};
use strait_federation::pki::TrustBundle;
use strait_federation::tls::{self, API_ALPN, CertStore, PeerRule, TlsError};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// How a channel is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// Connect now and report a failure at once (a command the operator is waiting on).
    Now,
    /// Connect at the first call, and again after a lost connection (long-lived clients).
    Lazily,
}

/// Why a channel to a gateway's API could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    ServerName(#[from] InvalidDnsNameError),
    #[error("bad API address {address}: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot tell which gateway answers at {address}: {reason}")]
    Identify { address: String, reason: String },
    /// `causes` is the error and its sources as one line, as operators read it.
    #[error("cannot reach the API of cluster {cluster} at {address}: {causes}")]
    Unreachable {
        cluster: ClusterName,
        address: String,
        causes: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A TLS connection a server accepted (with its idle time and its places under connection
/// caps, if any), with what tonic hands each request about it (`info`: the caller's identity,
/// or nothing): the gateway's API and the Terraform provider serve gRPC over these.
pub struct Accepted<I>(
    pub crate::limit::IdleDeadline<tokio_rustls::server::TlsStream<TcpStream>>,
    pub I,
);

impl<I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Accepted<I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.1.clone()
    }
}

impl<I: Unpin> tokio::io::AsyncRead for Accepted<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<I: Unpin> tokio::io::AsyncWrite for Accepted<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The identity of the gateway that answers at `address`, any gateway under the bundle's root
/// (a sidecar started with only an address learns its cluster so).
pub async fn gateway_identity(address: &str, bundle: &TrustBundle) -> Result<SpiffeId, ApiError> {
    let trust = tls::TrustStore::new(bundle.clone())?;
    let config = tls::anonymous_client_config(&trust, PeerRule::role(Role::Gateway), &[API_ALPN])?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // The mesh's verifier checks the SPIFFE identity, not this name.
    let name = ServerName::try_from("gateway.strait")?;
    let handshake = async {
        let tcp = TcpStream::connect(address).await?;
        connector.connect(name, tcp).await
    };
    let stream = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| ApiError::Identify {
            address: address.to_owned(),
            reason: "no TLS handshake within 10 s".into(),
        })?
        .map_err(|e| ApiError::Identify {
            address: address.to_owned(),
            reason: causes(&e),
        })?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    certificate::peer_identity(chain).map_err(|e| ApiError::Identify {
        address: address.to_owned(),
        reason: e.to_string(),
    })
}

/// An error and its sources, joined by `: `, as operators read it. A cause whose text is
/// already said (an I/O error wrapped as its own source, as hyper's connector does; an error
/// that prints its source) is not said again.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = inner.source();
    }
    text
}

/// A gRPC channel to the API of `cluster`'s gateway at `address`, presenting `certs` (none: a
/// sidecar asking for its first certificate), verifying it with `trust` as it is at each
/// connection. `timeout` bounds each call.
pub async fn channel(
    address: &str,
    cluster: &ClusterName,
    trust: &tls::TrustStore,
    certs: Option<&CertStore>,
    timeout: Duration,
    dial: Dial,
) -> Result<Channel, ApiError> {
    let rule = PeerRule::role_in(Role::Gateway, cluster.clone());
    let config = match certs {
        Some(certs) => tls::client_config(trust, certs, rule, &[API_ALPN]),
        None => tls::anonymous_client_config(trust, rule, &[API_ALPN]),
    }?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(cluster.to_string())?;
    let target = address.to_owned();
    let connect = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            // Small gRPC frames: without this, Nagle and delayed ACKs hold each call ~40 ms.
            tcp.set_nodelay(true)?;
            let stream = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|source| ApiError::Address {
            address: address.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    match dial {
        Dial::Lazily => Ok(endpoint.connect_with_connector_lazy(connect)),
        Dial::Now => endpoint
            .connect_with_connector(connect)
            .await
            .map_err(|source| ApiError::Unreachable {
                cluster: cluster.clone(),
                address: address.to_owned(),
                causes: causes(&source),
                source,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose source is an error of the same text, as a connector's I/O error is.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transport error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_that_repeats_the_one_before_is_said_once() {
        let error = Wrapped(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            causes(&error),
            "transport error: Connection refused (os error 111)"
        );
    }
}

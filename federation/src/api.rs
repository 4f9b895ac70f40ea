//! Reaching a gateway's API (gRPC over TLS, ALPN `h2`): the one way both operators (the CLI)
//! and sidecars dial it, with the gateway's identity checked by the mesh's verifier.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{ClusterName, Role};
use crate::pki::TrustBundle;
use crate::tls::{self, CertStore, PeerRule, TlsError};

/// ALPN of a gateway's API.
pub const API_ALPN: &[u8] = b"h2";

/// How a channel is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// Connect now and report a failure at once (a command the operator is waiting on).
    Now,
    /// Connect at the first call, and again after a lost connection (long-lived clients).
    Lazily,
}

/// A gRPC channel to the API of `cluster`'s gateway at `address`, presenting `certs` (none: a
/// sidecar asking for its first certificate). `timeout` bounds each call.
pub async fn channel(
    address: &str,
    cluster: &ClusterName,
    bundle: &TrustBundle,
    certs: Option<&CertStore>,
    timeout: Duration,
    dial: Dial,
) -> Result<Channel, String> {
    let rule = PeerRule::role_in(Role::Gateway, cluster.clone());
    let config = match certs {
        Some(certs) => tls::client_config(bundle, certs, rule, &[API_ALPN]),
        None => tls::anonymous_client_config(bundle, rule, &[API_ALPN]),
    }
    .map_err(|e: TlsError| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(cluster.to_string()).map_err(|e| e.to_string())?;
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
        .map_err(|e| format!("bad API address {address}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    match dial {
        Dial::Lazily => Ok(endpoint.connect_with_connector_lazy(connect)),
        Dial::Now => endpoint.connect_with_connector(connect).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            format!("cannot reach the API of cluster {cluster} at {address}: {text}")
        }),
    }
}

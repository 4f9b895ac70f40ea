//! The gateway's API (tonic, HTTP/2 over TLS): the operator API ([`operator`]), served to
//! operator identities of this gateway's own cluster, and the workload API ([`workload`]) for
//! its sidecars, on one listener. Also the client the CLI uses to reach it.

mod caller;
pub mod contexts;
pub mod operator;
pub(crate) mod rotation;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use strait_federation::certificate;
use strait_federation::identity::{ClusterName, Role};
use strait_federation::pki::{Credential, TrustBundle};
use strait_federation::proto::operator::operator_client::OperatorClient;
use strait_federation::proto::operator::operator_server::OperatorServer;
use strait_federation::tls::{self, API_ALPN, CertStore, PeerRule};
use strait_io::api::{ApiError, Dial};
use strait_io::limit::IdleDeadline;
use tokio::net::TcpListener;

pub use caller::Caller;
use caller::{ApiStream, operators_only};
use operator::OperatorApi;

use crate::Shared;
use crate::peer::HANDSHAKE_TIMEOUT;

/// How long a connection without a client certificate may read nothing before it is closed:
/// it is there to ask for a first certificate, one call.
const ANONYMOUS_IDLE: Duration = Duration::from_secs(10);

/// Serves the operator API on a bound listener until the gateway stops.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    // A client certificate is optional so that a new sidecar can ask for its first one with a
    // bootstrap token; every operator call requires an operator certificate (`operators_only`).
    let rule = PeerRule {
        roles: vec![Role::Operator, Role::Workload],
        cluster: Some(shared.config.cluster.clone()),
        namespace: None,
    };
    let config = match tls::server_config_optional_client(
        shared.trust.store(),
        &shared.certs,
        rule,
        &[API_ALPN],
    ) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "operator API cannot start");
            shared.shutdown.cancel();
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel::<ApiStream>(64);
    let accept_shutdown = shared.shutdown.clone();
    let limit = shared.limits.api.clone();
    let anonymous_limit = shared.limits.api_anonymous.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, remote, permit) = tokio::select! {
                accepted = limit.accept(&listener) => accepted,
                () = accept_shutdown.cancelled() => return,
            };
            let Some(permit) = permit else {
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let anonymous = anonymous_limit.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
                        let caller = Caller {
                            identity: certificate::peer_identity(chain).ok(),
                            issuer: chain.get(1).map(strait_federation::pki::fingerprint),
                            certificate: chain.first().map(strait_federation::pki::fingerprint),
                        };
                        // Without a certificate, a caller may only ask for its first one: a
                        // place of its own, for as long as it keeps talking.
                        let stream = if caller.identity.is_none() {
                            let Some(anonymous) = anonymous.admit(remote) else {
                                return;
                            };
                            IdleDeadline::new(stream, Some(ANONYMOUS_IDLE)).holding(anonymous)
                        } else {
                            IdleDeadline::new(stream, None)
                        };
                        let stream = stream.holding(permit);
                        let _ = tx.send(strait_io::api::Accepted(stream, caller)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = %remote, error = %e, "operator API: TLS refused")
                    }
                    Err(_) => {
                        tracing::info!(remote = %remote, "operator API: TLS handshake timed out")
                    }
                }
            });
        }
    });
    let incoming = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
    });
    let shutdown = shared.shutdown.clone();
    let result = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            // Room for the largest file and its name: a larger one is refused with a message
            // that names it, by the API itself, not by the transport.
            OperatorServer::new(OperatorApi::new(shared.clone())).max_decoding_message_size(
                strait_federation::resource::MAX_FILE_BYTES + (64 << 10),
            ),
            {
                let shared = shared.clone();
                move |request| operators_only(&shared, request)
            },
        ))
        .add_service(workload::server(shared))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "operator API stopped");
    }
}

/// Connects to a gateway's operator API as an operator.
pub async fn connect(
    address: &str,
    cluster: &ClusterName,
    bundle: &TrustBundle,
    credential: &Credential,
) -> Result<OperatorClient<tonic::transport::Channel>, ApiError> {
    strait_federation::tls::install_default_provider();
    let certs = CertStore::new(credential)?;
    let channel = strait_io::api::channel(
        address,
        cluster,
        &strait_federation::tls::TrustStore::new(bundle.clone())?,
        Some(&certs),
        Duration::from_secs(30),
        Dial::Now,
    )
    .await?;
    Ok(OperatorClient::new(channel))
}

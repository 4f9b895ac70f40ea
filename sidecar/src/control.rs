//! The sidecar's side of the workload API: its first certificate (with the bootstrap token),
//! renewal at 70 % of the certificate's life, registration of its endpoint (a lease refreshed
//! with the app's readiness) and the catalog stream that keeps its [`Directory`] current.

use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_federation::view::ViewGap;

use strait_federation::identity::SpiffeId;
use strait_federation::pki::{Credential, TrustBundle, new_csr};
use strait_federation::proto::workload::workload_client::WorkloadClient;
use strait_federation::proto::workload::{
    CertifyRequest, DeregisterRequest, PolicyDocument, PortSpec, RegisterRequest, ServiceRef,
    WatchRequest,
};
use strait_federation::tls::CertStore;
use strait_io::api::Dial;
use strait_io::clock::unix_now;
use tokio::net::TcpStream;
use tonic::transport::Channel;

use crate::config::{Bootstrap, ServiceConfig, TokenKind, Watched};
use crate::connect::Target;
use crate::directory::Directory;
use crate::{Shared, SidecarError};

/// Longest wait between two attempts to reach the gateway.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between two tries of the catalog stream.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(1);

/// A channel to the gateway's API: anonymous (for the first certificate) or presenting the
/// workload certificate. Lazy: it dials at the first call, and again after a lost connection.
pub async fn channel(
    bootstrap: &Bootstrap,
    trust: &strait_federation::tls::TrustStore,
    certs: Option<&CertStore>,
) -> Result<Channel, SidecarError> {
    strait_io::api::channel(
        &bootstrap.gateway,
        &bootstrap.cluster,
        trust,
        certs,
        Duration::from_secs(15),
        Dial::Lazily,
    )
    .await
    .map_err(SidecarError::from)
}

/// A credential signed by the gateway, and when to renew it.
pub struct Certified {
    pub credential: Credential,
    pub identity: SpiffeId,
    pub renew_at: Instant,
}

/// Asks the gateway to sign a fresh key: with the bootstrap token on an anonymous channel, or
/// (renewal) on a channel presenting the current certificate.
pub async fn certify(
    channel: Channel,
    token: &str,
    kind: TokenKind,
) -> Result<Certified, SidecarError> {
    let (key_pem, csr) = new_csr()?;
    let (token, service_account_token) = match kind {
        TokenKind::Bootstrap => (token.to_owned(), String::new()),
        TokenKind::ServiceAccount => (String::new(), token.to_owned()),
    };
    let response = WorkloadClient::new(channel)
        .certify(CertifyRequest {
            token,
            csr,
            service_account_token,
        })
        .await
        .map_err(|status| {
            let message = format!("certify: {}", status.message());
            match status.code() {
                // The token or the request is wrong: asking again will not help.
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument => SidecarError::Refused(message),
                _ => SidecarError::Gateway(message),
            }
        })?
        .into_inner();
    let identity = response.identity.parse::<SpiffeId>().map_err(|e| {
        SidecarError::Gateway(format!("certify: identity {}: {e}", response.identity))
    })?;
    let life = response.expires_unix.saturating_sub(unix_now());
    Ok(Certified {
        credential: Credential {
            chain_pem: response.chain_pem,
            key_pem,
        },
        identity,
        renew_at: Instant::now() + Duration::from_secs(life).mul_f64(0.7),
    })
}

/// Takes the trust bundle and the issuer a view names: a new bundle verifies peers from the
/// next handshake, and a certificate another issuer signed is renewed at once.
fn follow_trust(shared: &Shared, bundle_pem: &str, issuer: &str) {
    if !bundle_pem.is_empty() && shared.trust.bundle().to_pem() != bundle_pem {
        let bundle = TrustBundle::from_pem(
            shared.trust.bundle().trust_domain.clone(),
            bundle_pem,
            std::path::Path::new("the gateway's view"),
        );
        match bundle.map_err(|e| e.to_string()).and_then(|b| {
            let roots = b.fingerprints();
            shared
                .trust
                .replace(b)
                .map(|()| roots)
                .map_err(|e| e.to_string())
        }) {
            Ok(roots) => tracing::info!(roots = ?roots, "trust bundle replaced"),
            Err(e) => {
                tracing::warn!(error = %e, "the gateway's trust bundle is unusable; keeping the one held")
            }
        }
    }
    let held = shared
        .certs
        .chain()
        .get(1)
        .map(strait_federation::pki::fingerprint);
    if !issuer.is_empty() && held.as_deref() != Some(issuer) {
        shared.renew_now.notify_one();
    }
}

/// Renews the workload certificate before it expires, for as long as the sidecar runs.
pub async fn renew(shared: Arc<Shared>, channel: Channel, mut renew_at: Instant) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(renew_at.into()) => {}
            // The gateway's issuer changed: a certificate of the new one, before the old root
            // is retired.
            () = shared.renew_now.notified() => {}
            () = shared.shutdown.cancelled() => return,
        }
        match certify(channel.clone(), "", TokenKind::Bootstrap).await {
            Ok(certified) => match shared.certs.replace(&certified.credential) {
                Ok(()) => {
                    tracing::info!(identity = %certified.identity, "workload certificate renewed");
                    shared.metrics.renewals.inc();
                    shared.record_certificate_expiry();
                    renew_at = certified.renew_at;
                    backoff = Duration::from_millis(200);
                }
                Err(e) => tracing::error!(error = %e, "cannot use the renewed certificate"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "certificate renewal failed; retrying");
                renew_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether every app port accepts connections (the endpoint's readiness).
async fn app_ready(service: &ServiceConfig) -> bool {
    for port in &service.ports {
        let probe =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(port.target)).await;
        if !matches!(probe, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

/// Keeps this endpoint registered with its readiness, refreshing the lease at a third of its
/// length; deregisters when the sidecar stops.
pub async fn register(shared: Arc<Shared>, channel: Channel, service: ServiceConfig) {
    let mut client = WorkloadClient::new(channel);
    let instance = format!(
        "{}-{}",
        shared.inbound_addr,
        strait_io::random::random_u64()
    );
    let ports: Vec<PortSpec> = service
        .ports
        .iter()
        .map(|p| PortSpec {
            name: p.port.name.clone(),
            port: u32::from(p.port.port),
            protocol: p.port.protocol.as_str().into(),
        })
        .collect();
    let mut every;
    let mut was_ready = None;
    loop {
        let ready = app_ready(&service).await;
        let request = RegisterRequest {
            service: service.name.to_string(),
            ports: ports.clone(),
            address: shared.advertise_addr.to_string(),
            hostname: service.hostname.clone().unwrap_or_default(),
            ready,
            export: service.export,
            instance: instance.clone(),
        };
        match client.register(request).await {
            Ok(response) => {
                if was_ready != Some(ready) {
                    tracing::info!(service = %service.name, ready, "endpoint registered");
                    was_ready = Some(ready);
                }
                // Ready once the mesh knows this endpoint as ready.
                shared
                    .registered
                    .store(ready, std::sync::atomic::Ordering::SeqCst);
                let lease = Duration::from_secs(response.into_inner().lease_seconds.max(2));
                // An app not ready yet is probed every second, so it joins as soon as it is.
                every = if ready {
                    (lease / 3).min(Duration::from_secs(5))
                } else {
                    Duration::from_secs(1)
                };
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "registration failed; retrying");
                every = Duration::from_secs(1);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.shutdown.cancelled() => break,
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.deregister(DeregisterRequest {
            service: service.name.to_string(),
            instance,
        }),
    )
    .await;
}

/// The largest catalog view a sidecar takes.
const MAX_VIEW_BYTES: usize = 256 << 20;

/// Why the catalog stream was lost.
#[derive(Debug, thiserror::Error)]
enum StreamLost {
    #[error("the gateway ended the catalog stream")]
    Ended,
    #[error("{0}: asking for the whole view again")]
    Gap(#[source] strait_federation::view::ViewGap),
    #[error("{}", .0.message())]
    Failed(#[source] Box<tonic::Status>),
}

/// What the sidecar asks the gateway for: deltas, and the services declared with `--watch`
/// (none: every service).
fn watch_request(watched: &[Watched]) -> WatchRequest {
    let mut request = WatchRequest {
        deltas: true,
        ..WatchRequest::default()
    };
    for part in watched {
        match part {
            Watched::Namespace(namespace) => request.namespaces.push(namespace.to_string()),
            Watched::Service(key) => request.services.push(ServiceRef {
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
            }),
        }
    }
    request
}

/// Follows the catalog stream, reconnecting with backoff, and publishes each view.
pub async fn watch(shared: Arc<Shared>, channel: Channel) {
    // A view holds the whole catalog and the namespace's policies (up to 64 KiB each): far
    // beyond the default limit of 4 MiB in a large mesh.
    let mut client = WorkloadClient::new(channel).max_decoding_message_size(MAX_VIEW_BYTES);
    let mut backoff = Duration::from_millis(100);
    // Set after the stream was lost: the first view after it means the gateway is back.
    let mut lost = false;
    loop {
        let streamed = async {
            let mut stream = client
                .watch(watch_request(&shared.config.watch))
                .await
                .map_err(|status| StreamLost::Failed(Box::new(status)))?
                .into_inner();
            let watching = (!shared.config.watch.is_empty()).then(|| {
                shared
                    .config
                    .watch
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            // The version of the stream's last message: a delta must change that one.
            let mut held: Option<u64> = None;
            // A view whose parts are still coming, and the settings one of them carried: the
            // parts are taken together, once the last one came.
            let mut building: Option<Directory> = None;
            let mut settings: Option<(Vec<PolicyDocument>, String, String)> = None;
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        let delta = message.delta_from != 0;
                        shared
                            .metrics
                            .view_updates
                            .with_label_values(&[if delta { "delta" } else { "whole" }])
                            .inc();
                        shared
                            .metrics
                            .view_bytes
                            .inc_by(prost::Message::encoded_len(&message) as u64);
                        ViewGap::check(held, &message).map_err(StreamLost::Gap)?;
                        held = Some(message.version);
                        if !(delta && message.settings_kept) {
                            settings = Some((
                                message.policies.clone(),
                                message.trust_bundle_pem.clone(),
                                message.issuer_fingerprint.clone(),
                            ));
                        }
                        let published = shared.directory.borrow().clone();
                        let base = building.as_ref().unwrap_or(&published);
                        let mut directory = if delta {
                            base.with_delta(&message)
                        } else {
                            Directory::from_view(&message, Some(base))
                        };
                        if message.continued {
                            building = Some(directory);
                            continue;
                        }
                        building = None;
                        directory.watching = watching.clone();
                        // A relay bound to a wildcard address is reached at the gateway's
                        // host, as the sidecar dials it.
                        if let Some(relay) = directory.relay.as_mut()
                            && relay.ip().is_unspecified()
                            && let Some(host) = shared.gateway_ip
                        {
                            relay.set_ip(host);
                        }
                        shared.metrics.view_services.set(directory.len() as i64);
                        if let Some((policies, bundle, issuer)) = settings.take() {
                            shared
                                .metrics
                                .policies_held(&policies, directory.policies.refused);
                            shared.telemetry.configure(&directory.telemetry);
                            follow_trust(&shared, &bundle, &issuer);
                        }
                        shared.directory.send_replace(Arc::new(directory));
                        backoff = Duration::from_millis(100);
                        if std::mem::take(&mut lost) {
                            // Other clusters are reached through the gateway: whatever set
                            // them aside while it was away is over.
                            shared
                                .balancer()
                                .forgive(|target| matches!(target, Target::Remote(_)));
                        }
                    }
                    Ok(None) => return Err(StreamLost::Ended),
                    Err(status) => return Err(StreamLost::Failed(Box::new(status))),
                }
            }
        };
        let error: Result<(), StreamLost> = tokio::select! {
            result = streamed => result,
            () = shared.shutdown.cancelled() => return,
        };
        if let Err(e) = error {
            tracing::warn!(error = %e, "catalog stream lost; reconnecting (the last catalog stays in use)");
        }
        lost = true;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shared.shutdown.cancelled() => return,
        }
        // At most a second: the gateway is this cluster's own, and traffic to other clusters
        // waits on this stream's return.
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_catalog_stream_says_what_the_gateway_said() {
        assert_eq!(
            StreamLost::Ended.to_string(),
            "the gateway ended the catalog stream"
        );
        let status = tonic::Status::unavailable("the gateway is shutting down");
        assert_eq!(
            StreamLost::Failed(Box::new(status)).to_string(),
            "the gateway is shutting down"
        );
    }
}

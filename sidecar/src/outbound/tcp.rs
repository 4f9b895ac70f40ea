//! Opaque TCP on the outbound path: a per-upstream listener (or a redirected connection that
//! does not speak HTTP) carried to the service its name points to, over a mutual-TLS
//! connection of its own, to the first target that takes it.

use std::sync::Arc;

use strait_federation::catalog::ServiceKey;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::attempt::MAX_ATTEMPTS;
use crate::balance::InFlight;
use crate::connect::{self, DialError, TCP_ALPN};
use crate::metrics::{Direction, Route};
use crate::plan::{Plan, PlanError, choose, plan};
use crate::{Shared, accept_each};

/// Why an app's TCP connection was not carried.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// What the directory says of a name it lacks ([`Directory::lacks`]).
    #[error("{0}")]
    NotInMesh(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// No target took the connection; why the last one tried did not.
    #[error("{service}: {last}")]
    Untaken {
        service: ServiceKey,
        #[source]
        last: Untaken,
    },
}

/// Why the last target tried did not take a connection.
#[derive(Debug, thiserror::Error)]
pub enum Untaken {
    #[error("no endpoint is ready")]
    NoEndpoint,
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection's preamble (the port and flags) could not be written.
    #[error(transparent)]
    Preamble(#[from] std::io::Error),
}

/// Serves one per-upstream TCP listener until the sidecar stops.
pub async fn serve_upstream(shared: Arc<Shared>, listener: TcpListener, name: String) {
    let each = shared.clone();
    let limit = shared.limits.outbound.clone();
    accept_each(shared, listener, &limit, move |tcp, _| {
        let shared = each.clone();
        let name = name.clone();
        async move {
            if let Err(e) = proxy_tcp(&shared, tcp, &name).await {
                tracing::info!(upstream = %name, error = %e, "TCP connection refused");
            }
        }
    })
    .await;
}

/// Carries one TCP connection of the app to the service `name` (`host:port`) points to.
pub async fn proxy_tcp(
    shared: &Arc<Shared>,
    mut app: TcpStream,
    name: &str,
) -> Result<(), TcpError> {
    let directory = shared.directory.borrow().clone();
    let Plan { dest, port, tiers } =
        plan(&directory, name).ok_or_else(|| TcpError::NotInMesh(directory.lacks(name)))??;
    let mut last = Untaken::NoEndpoint;
    for _ in 0..MAX_ATTEMPTS {
        let Some(target) = choose(shared, &tiers, &[]) else {
            break;
        };
        // The connection time is this target's latency sample.
        let in_flight = InFlight::start(&shared.balancer, target.clone());
        let namespace = &dest.service.namespace;
        let mut tls = match connect::dial(shared, &target, namespace, TCP_ALPN, None).await {
            Ok(tls) => tls,
            Err(e) => {
                in_flight.fail();
                last = e.into();
                continue;
            }
        };
        in_flight.end();
        let [high, low] = port.port.to_be_bytes();
        let flags = if shared.is_ready() {
            connect::READY_FLAG
        } else {
            0
        };
        if let Err(e) = tls.write_all(&[high, low, flags]).await {
            last = e.into();
            continue;
        }
        let cluster = target.cluster(&shared.cluster).clone();
        let route = Route {
            direction: Direction::Outbound,
            source_cluster: shared.cluster.as_str(),
            destination_cluster: cluster.as_str(),
            namespace: dest.service.namespace.as_str(),
            service: dest.service.name.as_str(),
        };
        shared.metrics.tcp_opened(&route);
        let started = std::time::Instant::now();
        let copied = tokio::io::copy_bidirectional(&mut app, &mut tls).await;
        let error = copied.as_ref().err().map(ToString::to_string);
        let (sent, received) = copied.unwrap_or_default();
        shared.metrics.tcp_closed(&route, sent, received);
        shared.telemetry.finish_flow(
            &crate::telemetry::Flow {
                route: &route,
                caller: &shared.identity.to_string(),
                duration: started.elapsed(),
                sent,
                received,
                error: error.as_deref(),
            },
            &directory.telemetry,
        );
        return Ok(());
    }
    Err(TcpError::Untaken {
        service: dest.service,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::shop;

    #[test]
    fn a_refused_connection_says_why_as_it_always_has() {
        assert_eq!(
            TcpError::NotInMesh(crate::directory::Directory::default().lacks("db.other:5432"))
                .to_string(),
            "db.other:5432 is not a service in the mesh catalog"
        );
        assert_eq!(
            TcpError::Untaken {
                service: shop("db"),
                last: Untaken::NoEndpoint,
            }
            .to_string(),
            "shop/db: no endpoint is ready"
        );
        let refused = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert_eq!(
            TcpError::Untaken {
                service: shop("db"),
                last: refused.into(),
            }
            .to_string(),
            "shop/db: broken pipe"
        );
    }
}

//! The admin HTTP server every strait process runs: `/healthz` (the process answers),
//! `/readyz` (what "ready" means is the process's own), `/metrics` (Prometheus text), and for a
//! sidecar in a pod `/app-health/<container>/<kind>`: the app's own probe, which the injector
//! moved here so that the kubelet's plain connections never meet the inbound redirect.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long the app's own probe may take (the kubelet's default timeout).
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a process tells its admin server.
pub trait Probes: Send + Sync + 'static {
    /// Whether the process is ready for traffic; why not when it is not.
    fn ready(&self) -> Result<(), String>;
    /// The process's metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// The app's probe served at `/app-health/<key>` (`container/kind`), if there is one.
    fn app_probe(&self, _key: &str) -> Option<AppProbe> {
        None
    }
}

/// An app's probe as the pod declared it, run by the sidecar on the pod's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProbe {
    /// `GET path` on the port: healthy on 200-399.
    Http { port: u16, path: String },
    /// A TCP connection to the port: healthy when it opens.
    Tcp { port: u16 },
}

impl AppProbe {
    /// `http:PORT/PATH` or `tcp:PORT`.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(rest) = text.strip_prefix("http:") {
            let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
            Some(Self::Http {
                port: port.parse().ok()?,
                path: format!("/{path}"),
            })
        } else {
            Some(Self::Tcp {
                port: text.strip_prefix("tcp:")?.parse().ok()?,
            })
        }
    }

    /// Runs the probe against the app on this host's loopback; why it failed.
    pub async fn run(&self) -> Result<(), String> {
        let port = match self {
            Self::Http { port, .. } | Self::Tcp { port } => *port,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let attempt = async {
            let mut tcp = TcpStream::connect(address)
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            let Self::Http { path, .. } = self else {
                return Ok(());
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\nuser-agent: strait-probe\r\n\r\n"
            );
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            let mut head = [0u8; 12];
            tcp.read_exact(&mut head)
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            let status: u16 = std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{address}{path}: not an HTTP answer"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("{address}{path} answered {status}"))
            }
        };
        tokio::time::timeout(APP_PROBE_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("{address}: no answer within {APP_PROBE_TIMEOUT:?}")))
    }
}

/// How long an admin connection may read nothing before it is closed: longer than any
/// scraper's or prober's interval between two requests on one connection.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves the admin endpoints, and the process's own `routes` beside them, on a bound
/// listener (at most `cap`'s connections at once, each closed after 60 s without a request)
/// until `shutdown` is cancelled; `process` names it in the log (`gateway`, `sidecar`).
pub async fn serve(
    probes: Arc<dyn Probes>,
    listener: TcpListener,
    cap: crate::limit::Cap,
    shutdown: CancellationToken,
    process: &'static str,
    routes: Router,
) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/app-health/{container}/{kind}", get(app_health))
        .with_state(probes)
        .merge(routes);
    let listener = crate::limit::CappedListener::new(listener, cap, IDLE);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(process, error = %e, "admin server stopped");
    }
}

async fn ready(State(probes): State<Arc<dyn Probes>>) -> impl IntoResponse {
    match probes.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn app_health(
    State(probes): State<Arc<dyn Probes>>,
    Path((container, kind)): Path<(String, String)>,
) -> impl IntoResponse {
    let key = format!("{container}/{kind}");
    let Some(probe) = probes.app_probe(&key) else {
        return (StatusCode::NOT_FOUND, format!("no app probe {key}\n"));
    };
    match probe.run().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{key}: {reason}\n"),
        ),
    }
}

async fn metrics(State(probes): State<Arc<dyn Probes>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        probes.metrics(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Switch(AtomicBool, u16);

    impl Probes for Switch {
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("switched off".into())
            }
        }
        fn metrics(&self) -> String {
            "strait_up 1\n".into()
        }
        fn app_probe(&self, key: &str) -> Option<AppProbe> {
            let port = self.1;
            match key {
                "app/readiness" => Some(AppProbe::Http {
                    port,
                    path: "/ok".into(),
                }),
                "app/liveness" => Some(AppProbe::Http {
                    port,
                    path: "/broken".into(),
                }),
                "app/startup" => Some(AppProbe::Tcp { port }),
                _ => None,
            }
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        // A connection closed at accept may fail either way: its answer is then empty.
        let _ = tcp.write_all(request.as_bytes()).await;
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        answer
    }

    fn cap(max: u64) -> crate::limit::Cap {
        let registry = prometheus::Registry::new();
        let refusals = crate::limit::Refusals::register(&registry);
        crate::limit::Cap::new(refusals.limit("limits.adminConnections", max))
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_unanswered_and_one_closed_makes_room() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let switch = Arc::new(Switch(AtomicBool::new(true), 0));
        tokio::spawn(serve(
            switch,
            listener,
            cap(1),
            shutdown.clone(),
            "test",
            Router::new(),
        ));
        let held = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The held connection is accepted before the next one is.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(get(addr, "/healthz").await, "");
        drop(held);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let answer = get(addr, "/healthz").await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no room made: {answer:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn readiness_follows_the_process_and_metrics_are_prometheus_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let switch = Arc::new(Switch(AtomicBool::new(false), 0));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            switch.clone(),
            listener,
            cap(16),
            shutdown.clone(),
            "test",
            Router::new(),
        ));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not ready: switched off\n"),
            "{not_ready}"
        );
        switch.0.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(metrics.ends_with("strait_up 1\n"), "{metrics}");

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server stops when told")
            .unwrap();
    }

    #[tokio::test]
    async fn the_apps_probes_are_run_on_its_loopback_and_answered_as_the_kubelet_reads_them() {
        // The app: /ok answers 200, anything else 500.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_port = app.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = app.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    let status = if buf[..n].starts_with(b"GET /ok ") {
                        "200 OK"
                    } else {
                        "500 Oops"
                    };
                    let _ = tcp
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let probes = Arc::new(Switch(AtomicBool::new(true), app_port));
        tokio::spawn(serve(
            probes,
            listener,
            cap(16),
            shutdown.clone(),
            "test",
            Router::new(),
        ));
        assert!(
            get(addr, "/app-health/app/readiness")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let broken = get(addr, "/app-health/app/liveness").await;
        assert!(
            broken.starts_with("HTTP/1.1 503") && broken.contains("answered 500"),
            "{broken}"
        );
        assert!(
            get(addr, "/app-health/app/startup")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, "/app-health/other/readiness")
                .await
                .starts_with("HTTP/1.1 404")
        );
        shutdown.cancel();
        assert_eq!(
            AppProbe::parse("http:8080/healthz/deep"),
            Some(AppProbe::Http {
                port: 8080,
                path: "/healthz/deep".into()
            })
        );
        assert_eq!(
            AppProbe::parse("http:8080"),
            Some(AppProbe::Http {
                port: 8080,
                path: "/".into()
            })
        );
        assert_eq!(AppProbe::parse("tcp:53"), Some(AppProbe::Tcp { port: 53 }));
        assert_eq!(AppProbe::parse("udp:53"), None);
    }
}

//! The admin HTTP server every strait process runs: `/healthz` (the process answers),
//! `/readyz` (what "ready" means is the process's own), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a process tells its admin server.
pub trait Probes: Send + Sync + 'static {
    /// Whether the process is ready for traffic; why not when it is not.
    fn ready(&self) -> Result<(), String>;
    /// The process's metrics in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// Serves the admin endpoints on a bound listener until `shutdown` is cancelled; `process`
/// names it in the log (`gateway`, `sidecar`).
pub async fn serve(
    probes: Arc<dyn Probes>,
    listener: TcpListener,
    shutdown: CancellationToken,
    process: &'static str,
) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(probes);
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

    struct Switch(AtomicBool);

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
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn readiness_follows_the_process_and_metrics_are_prometheus_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let switch = Arc::new(Switch(AtomicBool::new(false)));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(switch.clone(), listener, shutdown.clone(), "test"));

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
}

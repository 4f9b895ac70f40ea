//! Sends finished spans to an OpenTelemetry collector over OTLP/gRPC, in batches, from a
//! bounded queue: when the collector is slow or away, spans are dropped (and counted) rather
//! than held in memory or allowed to slow the traffic they describe.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strait_federation::proto::otlp::trace_service_client::TraceServiceClient;
use strait_federation::trace::{Span, Value, export_request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans waiting to be sent, at most.
const QUEUE: usize = 4_096;
/// Spans sent in one export, at most.
const BATCH: usize = 512;
/// How long spans wait for more to fill a batch.
const LINGER: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter of one process: its collector may change (a sidecar hears it from its
/// gateway); spans recorded while there is none are not kept.
pub struct SpanExporter {
    service_name: &'static str,
    resource: Vec<(&'static str, Value)>,
    current: Mutex<Option<(String, mpsc::Sender<Span>)>>,
    /// Whether a collector is set: read for every request, so not behind the lock.
    enabled: AtomicBool,
    shutdown: CancellationToken,
    /// Spans sent to the collector.
    pub exported: Arc<AtomicU64>,
    /// Spans dropped: the queue was full, or the collector refused or did not answer.
    pub dropped: Arc<AtomicU64>,
}

impl SpanExporter {
    /// An exporter for `service_name` (`strait-sidecar`, `strait-gateway`) whose spans carry
    /// the resource's attributes; its task ends with `shutdown`.
    pub fn new(
        service_name: &'static str,
        resource: Vec<(&'static str, Value)>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            service_name,
            resource,
            current: Mutex::new(None),
            enabled: AtomicBool::new(false),
            shutdown,
            exported: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends spans to `collector` (`http://host:4317`) from now on; an empty one stops
    /// exporting. Must be called within a tokio runtime.
    pub fn configure(&self, collector: &str) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|(c, _)| c.as_str()) == Some(collector)
            || (current.is_none() && collector.is_empty())
        {
            return;
        }
        *current = None;
        self.enabled.store(false, Ordering::Relaxed);
        if collector.is_empty() {
            return;
        }
        let endpoint = match tonic::transport::Endpoint::from_shared(collector.to_owned()) {
            Ok(endpoint) => endpoint
                .connect_timeout(Duration::from_secs(3))
                .timeout(EXPORT_TIMEOUT),
            Err(e) => {
                tracing::warn!(collector, error = %e, "not a collector address: spans are not exported");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(
            rx,
            TraceServiceClient::new(endpoint.connect_lazy()),
            self.service_name,
            self.resource.clone(),
            self.shutdown.clone(),
            self.exported.clone(),
            self.dropped.clone(),
        ));
        tracing::info!(collector, "exporting spans");
        *current = Some((collector.to_owned(), tx));
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether spans are exported now (so worth recording).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Queues a finished span; dropped when the queue is full or no collector is set.
    pub fn record(&self, span: Span) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tx)) = current.as_ref()
            && tx.try_send(span).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn export(
    mut rx: mpsc::Receiver<Span>,
    mut client: TraceServiceClient<tonic::transport::Channel>,
    service_name: &'static str,
    resource: Vec<(&'static str, Value)>,
    shutdown: CancellationToken,
    exported: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then up to LINGER for more.
        let first = tokio::select! {
            span = rx.recv() => span,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let request = export_request(service_name, &resource, &batch);
        let count = batch.len() as u64;
        batch.clear();
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(_)) => {
                exported.fetch_add(count, Ordering::Relaxed);
            }
            Ok(Err(status)) => {
                dropped.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(error = %status.message(), spans = count, "the collector refused spans");
            }
            Err(_) => {
                dropped.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(spans = count, "the collector did not answer in time");
            }
        }
    }
}

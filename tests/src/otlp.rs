//! An OTLP/gRPC trace collector on loopback for tests and benchmarks, built on OpenTelemetry's
//! own types (not strait's), so that what strait exports is read by an independent decoder.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use opentelemetry_proto::tonic as otel;
use otel::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use otel::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
pub use otel::trace::v1::Span;

/// Spans received, with the `service.name` and `strait.cluster` of their resource.
pub type Received = Arc<Mutex<Vec<(String, String, Span)>>>;

struct Service(Received);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let attribute = |key: &str| {
                resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == key))
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(otel::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let (service, cluster) = (attribute("service.name"), attribute("strait.cluster"));
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    held.push((service.clone(), cluster.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector; it stops when dropped.
pub struct Collector {
    pub address: SocketAddr,
    pub received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts a collector on a loopback port of its own, served by `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Result<Self> {
        let received: Received = Arc::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let address = listener.local_addr()?;
        let service = TraceServiceServer::new(Service(received.clone()));
        let server = runtime.spawn(async move {
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                Some((accepted, listener))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self {
            address,
            received,
            server,
        })
    }

    /// How many spans came so far.
    pub fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

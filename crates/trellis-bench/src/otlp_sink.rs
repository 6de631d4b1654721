//! A live OTLP trace receiver for the `invoke` bench's tracing rows: it accepts
//! `TraceService/Export` on a loopback port and counts the spans, so the sidecars under
//! test export to a collector that answers, as in production, without one installed.
//!
//! It runs on a thread and runtime of its own, as a collector would run in a process of its
//! own: decoding a batch of a few thousand spans takes milliseconds, and on the load
//! generator's thread that would delay the very requests whose latency is measured, charging
//! the tracing rows for the receiver's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;

/// The running receiver; it stops when dropped.
pub struct Sink {
    pub port: u16,
    spans: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves on `port` until stdin reaches EOF (the parent has gone), as the echo app does.
pub async fn serve(port: u16) -> Result<()> {
    let sink = Sink::bind(port)?;
    crate::echo::parent_gone().await;
    drop(sink);
    Ok(())
}

impl Sink {
    pub async fn start() -> Result<Self> {
        Self::bind(0)
    }

    fn bind(port: u16) -> Result<Self> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).context("binding the OTLP sink")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let spans = Arc::new(AtomicU64::new(0));
        let service = TraceServiceServer::new(Counter(spans.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the OTLP sink's runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tonic::transport::server::TcpIncoming::from(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .context("starting the OTLP sink's thread")?;
        Ok(Sink {
            port,
            spans,
            stop: Some(stop),
        })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

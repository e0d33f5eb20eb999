//! The binary's logs and traces: log lines on stderr (text or JSON), and, when an OTLP
//! endpoint is given (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), the
//! spans of XDR batches exported through tracing-opentelemetry over OTLP/HTTP (protobuf).
//!
//! Log lines and spans are filtered apart: the logs keep `FERRY_LOG` (default `info`), while
//! the exporter takes Ferry's debug-level spans (a batch's read, send, ack and apply) — so
//! without an endpoint those spans are never even created.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::cmd::LogFormat;

/// How long spans wait before they are exported together.
const EXPORT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Which spans the exporter takes.
const SPANS: &str = "info,ferry=debug,ferry_xdr=debug,ferry_node=debug";

/// Flushes and stops the span exporter when dropped.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Spans still queued are exported now; a collector that is gone only costs the
            // export timeout.
            let _ = provider.shutdown();
        }
    }
}

/// The OTLP/HTTP traces URL of a base endpoint (`http://host:4318` → `…/v1/traces`), the way
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// Installs the global subscriber. `instance` names this process in the exported resource
/// (`service.instance.id`: the node id for `ferry node run`).
pub(crate) fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    instance: Option<&str>,
) -> Result<Telemetry, String> {
    let log_filter = EnvFilter::try_from_env("FERRY_LOG")
        // openraft reports every unanswered RPC to a dead peer twice a second, as an error:
        // the membership's own log lines say what matters (who was removed, and when).
        .unwrap_or_else(|_| {
            EnvFilter::new("info,aerospike_core=warn,aerospike=warn,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off")
        });
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A failed log write (a full disk) must not take the node down: the fallback report
        // of it is an `eprintln!`, which panics when stderr cannot be written either.
        .log_internal_errors(false);
    let logs = match format {
        LogFormat::Text => logs.with_filter(log_filter).boxed(),
        LogFormat::Json => logs.json().with_filter(log_filter).boxed(),
    };
    let (spans, provider) = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint))
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build(),
                )
                .build();
            let mut resource = opentelemetry_sdk::Resource::builder().with_service_name("ferry");
            if let Some(instance) = instance {
                resource = resource
                    .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
            }
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource.build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("ferry"))
                .with_filter(EnvFilter::new(SPANS));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_endpoints_get_the_traces_path_once() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}

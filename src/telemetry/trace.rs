//! Traces: `tracing` spans exported over OTLP by the application's subscriber.
//!
//! The engine emits `tracing` spans (target `seqlease`, level INFO) named `seqlease.grant`,
//! `seqlease.commit`, `seqlease.claim` and `seqlease.recover`, with `space` and `seq` as
//! fields. A library must not install a global subscriber, so the application adds the
//! OpenTelemetry layer to its own:
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let export = seqlease::telemetry::OtlpExport::grpc("http://127.0.0.1:4317");
//! let (layer, provider) = seqlease::telemetry::tracing_layer(&export)?;
//! tracing_subscriber::registry().with(layer).init();
//! // … run the application …
//! tokio::task::spawn_blocking(move || provider.shutdown()).await??;
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use seqlease_core::InvalidInput;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

use super::export::{OtlpExport, OtlpProtocol};

/// A `tracing` layer that exports spans over OTLP to `export`'s traces endpoint, and the
/// tracer provider behind it (shut it down from a blocking thread when the application
/// stops, so the last spans are sent). Must run inside a tokio runtime for gRPC.
pub fn tracing_layer<S>(
    export: &OtlpExport,
) -> Result<(OpenTelemetryLayer<S, Tracer>, SdkTracerProvider), InvalidInput>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let url = export.traces_url();
    let built = match export.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .build(),
    };
    let exporter = built.map_err(|e| InvalidInput::Setting {
        setting: "telemetry",
        reason: format!("cannot build the OTLP span exporter for {url}: {e}"),
    })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(export.resource())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("seqlease"));
    Ok((layer, provider))
}

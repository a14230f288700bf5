//! Where metrics go: OTLP over gRPC or HTTP, an application's own provider, or nowhere.
//!
//! An engine owns its `SdkMeterProvider` (nothing global: two engines in one process export
//! independently). By default ([`Telemetry::FromEnv`]) it follows the standard
//! OpenTelemetry variables and exports **only when an endpoint is configured**:
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | metrics endpoint, used verbatim (HTTP: the full `/v1/metrics` URL) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base endpoint (HTTP: `/v1/metrics` is appended) |
//! | `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` or `http/protobuf` (the default) |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | export interval in milliseconds (default 60000) |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION` | read by the OTLP exporter itself |
//! | `OTEL_SERVICE_NAME` | `service.name` of the resource (default `seqlease`) |
//!
//! With no endpoint the instruments still exist on a provider without readers, which makes
//! every recording a no-op; nothing leaves the process.

use std::time::Duration;

use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use seqlease_core::InvalidInput;

/// How an engine records and exports its metrics; see [`EngineBuilder::telemetry`](crate::EngineBuilder::telemetry).
#[derive(Clone, Debug, Default)]
pub enum Telemetry {
    /// Follow the `OTEL_*` environment variables: export over OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set,
    /// otherwise create no instruments, as [`Telemetry::Off`] (nothing could read them).
    #[default]
    FromEnv,
    /// Export over OTLP with these settings.
    Otlp(OtlpExport),
    /// Record into the application's own provider (it owns the readers and the shutdown).
    Provider(SdkMeterProvider),
    /// Create the instruments on a provider with no exporter.
    NoExport,
    /// Create no instruments at all. [`Engine::health`](crate::Engine::health) still works:
    /// the alert evaluator keeps its own counts.
    Off,
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention; the OpenTelemetry default).
    #[default]
    HttpProtobuf,
}

/// OTLP export settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpExport {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The base endpoint (`http://collector:4318`); for HTTP the signal path is appended.
    pub endpoint: String,
    /// A metrics endpoint used verbatim, overriding `endpoint` for metrics.
    pub metrics_endpoint: Option<String>,
    /// A traces endpoint used verbatim, overriding `endpoint` for traces
    /// (see [`tracing_layer`](super::tracing_layer)).
    pub traces_endpoint: Option<String>,
    /// How often metrics are exported (`None`: the SDK default of 60 s).
    pub interval: Option<Duration>,
    /// `service.name` on the exported resource.
    pub service_name: String,
}

impl OtlpExport {
    /// Export over OTLP/gRPC to `endpoint` (`http://127.0.0.1:4317`).
    pub fn grpc(endpoint: impl Into<String>) -> Self {
        Self::new(OtlpProtocol::Grpc, endpoint.into())
    }

    /// Export over OTLP/HTTP (protobuf) to the base `endpoint` (`http://127.0.0.1:4318`);
    /// `/v1/metrics` is appended.
    pub fn http(endpoint: impl Into<String>) -> Self {
        Self::new(OtlpProtocol::HttpProtobuf, endpoint.into())
    }

    fn new(protocol: OtlpProtocol, endpoint: String) -> Self {
        OtlpExport {
            protocol,
            endpoint,
            metrics_endpoint: None,
            traces_endpoint: None,
            interval: None,
            service_name: "seqlease".into(),
        }
    }

    /// Export every `interval` instead of the default 60 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Set `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Read the standard variables from the process environment; `None` when no endpoint
    /// is configured.
    pub fn from_env() -> Result<Option<Self>, InvalidInput> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`OtlpExport::from_env`], with the variables looked up by `get` (for tests and
    /// for configuration systems that are not the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, InvalidInput> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let metrics_endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if metrics_endpoint.is_none() && base.is_none() {
            return Ok(None);
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(InvalidInput::Setting {
                    setting: "OTEL_EXPORTER_OTLP_PROTOCOL",
                    reason: format!("unsupported protocol {other:?}; use grpc or http/protobuf"),
                });
            }
        };
        let interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => None,
            Some(ms) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => {
                    return Err(InvalidInput::Setting {
                        setting: "OTEL_METRIC_EXPORT_INTERVAL",
                        reason: format!(
                            "{ms:?} is not a positive number of milliseconds; set it like 15000 or unset it for 60 s"
                        ),
                    });
                }
            },
        };
        let default_base = match protocol {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::HttpProtobuf => "http://localhost:4318",
        };
        Ok(Some(OtlpExport {
            protocol,
            endpoint: base.unwrap_or_else(|| default_base.into()),
            metrics_endpoint,
            traces_endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            interval,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "seqlease".into()),
        }))
    }

    /// The URL metrics are sent to.
    pub fn metrics_url(&self) -> String {
        self.signal_url(self.metrics_endpoint.as_deref(), "metrics")
    }

    /// The URL traces are sent to.
    pub fn traces_url(&self) -> String {
        self.signal_url(self.traces_endpoint.as_deref(), "traces")
    }

    fn signal_url(&self, verbatim: Option<&str>, signal: &str) -> String {
        if let Some(url) = verbatim {
            return url.to_string();
        }
        match self.protocol {
            OtlpProtocol::Grpc => self.endpoint.clone(),
            OtlpProtocol::HttpProtobuf => {
                format!("{}/v1/{signal}", self.endpoint.trim_end_matches('/'))
            }
        }
    }

    pub(crate) fn resource(&self) -> Resource {
        Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .build()
    }

    /// Build a meter provider exporting to this endpoint (must run inside a tokio runtime:
    /// the gRPC client's connection lives on it).
    pub fn meter_provider(&self) -> Result<SdkMeterProvider, InvalidInput> {
        let url = self.metrics_url();
        let built = match self.protocol {
            OtlpProtocol::Grpc => MetricExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .build(),
            OtlpProtocol::HttpProtobuf => MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .build(),
        };
        let exporter = built.map_err(|e| InvalidInput::Setting {
            setting: "telemetry",
            reason: format!("cannot build the OTLP metrics exporter for {url}: {e}"),
        })?;
        let mut reader = PeriodicReader::builder(exporter);
        if let Some(interval) = self.interval {
            reader = reader.with_interval(interval);
        }
        Ok(SdkMeterProvider::builder()
            .with_reader(reader.build())
            .with_resource(self.resource())
            .build())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        assert_eq!(OtlpExport::from_lookup(lookup(&[])).unwrap(), None);
        let only_interval = lookup(&[("OTEL_METRIC_EXPORT_INTERVAL", "1000")]);
        assert_eq!(OtlpExport::from_lookup(only_interval).unwrap(), None);
    }

    #[test]
    fn http_appends_the_signal_path_to_the_base_endpoint() {
        let e = OtlpExport::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(e.metrics_url(), "http://collector:4318/v1/metrics");
        assert_eq!(e.traces_url(), "http://collector:4318/v1/traces");
        assert_eq!(e.interval, Some(Duration::from_millis(1500)));
        assert_eq!(e.service_name, "seqlease");
    }

    #[test]
    fn signal_endpoint_is_verbatim_and_grpc_is_selected_by_protocol() {
        let e = OtlpExport::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "orders"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(e.protocol, OtlpProtocol::Grpc);
        assert_eq!(e.metrics_url(), "http://m:4317");
        assert_eq!(e.service_name, "orders");
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let bad = OtlpExport::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("grpc or http/protobuf")
        );
        let bad = OtlpExport::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ]));
        assert!(bad.unwrap_err().to_string().contains("milliseconds"));
    }
}

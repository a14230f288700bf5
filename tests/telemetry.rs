//! Telemetry end to end: a real workload's metrics arrive at an in-process OTLP receiver
//! (gRPC and HTTP) with the documented names, attributes and values; every metric the docs,
//! alert rules and dashboard name exists in the code; and the alert evaluator fires and
//! clears on crafted workloads driven by a manual clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use parking_lot::Mutex;
use prost::Message;
use seqlease::cleanup::{CleanupConfig, PartialWorkResolver};
use seqlease::core::ExpiredSlot;
use seqlease::telemetry::{
    AlertKind, AlertThresholds, INSTRUMENTS, InstrumentKind, MAX_PROJECTION_TYPES,
    OTHER_PROJECTION_TYPES, OtlpExport, Telemetry,
};
use seqlease::{Acquire, Engine, Grant, ManualClock, OperationBody, TimeControl};

// ---------------------------------------------------------------- the OTLP receiver

/// Every export request received, gRPC or HTTP.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serve OTLP/gRPC on 127.0.0.1:0; returns the endpoint.
async fn grpc_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(received))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

/// Serve OTLP/HTTP (protobuf) at POST /v1/metrics on 127.0.0.1:0; returns the base endpoint.
async fn http_receiver(received: Received) -> String {
    use axum::body::Bytes;
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |body: Bytes| {
            let received = received.clone();
            async move {
                match ExportMetricsServiceRequest::decode(body) {
                    Ok(request) => {
                        received.0.lock().push(request);
                        let reply = ExportMetricsServiceResponse::default().encode_to_vec();
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            reply,
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportMetricsServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// One data point as received: metric name, unit, attributes, and its value (sum or
/// gauge value; for histograms the count, with the sum kept separately).
#[derive(Clone, Debug)]
struct Point {
    unit: String,
    attrs: BTreeMap<String, String>,
    value: f64,
    histogram_sum: Option<f64>,
}

/// The points of the last export (cumulative temporality: it holds everything so far).
fn last_export(received: &Received) -> BTreeMap<String, Vec<Point>> {
    let requests = received.0.lock();
    let last = requests.last().expect("the receiver got an export");
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let attrs = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let number = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    };
    for rm in &last.resource_metrics {
        for sm in &rm.scope_metrics {
            let scope = sm.scope.as_ref().map(|s| s.name.as_str());
            assert_eq!(scope, Some("seqlease"), "meter name");
            for m in &sm.metrics {
                let points = out.entry(m.name.clone()).or_default();
                match &m.data {
                    Some(metric::Data::Sum(s)) => {
                        assert!(s.is_monotonic, "{} is a counter", m.name);
                        for p in &s.data_points {
                            points.push(Point {
                                unit: m.unit.clone(),
                                attrs: attrs(&p.attributes),
                                value: number(&p.value),
                                histogram_sum: None,
                            });
                        }
                    }
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            points.push(Point {
                                unit: m.unit.clone(),
                                attrs: attrs(&p.attributes),
                                value: number(&p.value),
                                histogram_sum: None,
                            });
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            points.push(Point {
                                unit: m.unit.clone(),
                                attrs: attrs(&p.attributes),
                                value: p.count as f64,
                                histogram_sum: p.sum,
                            });
                        }
                    }
                    other => panic!("unexpected data for {}: {other:?}", m.name),
                }
            }
        }
    }
    out
}

/// The value of `name` at exactly these attributes.
fn value(points: &BTreeMap<String, Vec<Point>>, name: &str, attrs: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Some(series) = points.get(name) else {
        panic!(
            "{name} was not exported; got {:?}",
            points.keys().collect::<Vec<_>>()
        );
    };
    series
        .iter()
        .find(|p| p.attrs == want)
        .unwrap_or_else(|| {
            panic!(
                "{name} has no point at {want:?}; points: {:?}",
                series.iter().map(|p| &p.attrs).collect::<Vec<_>>()
            )
        })
        .value
}

// ---------------------------------------------------------------- the workload

/// Grant and commit a no-op operation for each (operation id, projection type).
async fn commit_noops(space: &seqlease::Space, leases: impl IntoIterator<Item = (String, String)>) {
    for (id, projection_type) in leases {
        let mut lease = space.grant(Grant::new(id, projection_type)).await.unwrap();
        lease
            .commit(OperationBody::new("noop", Vec::new()))
            .await
            .unwrap();
    }
}

/// Grants, commits, a release, a renewal, two abandoned leases (one with a recorded result
/// that recovery commits, one that becomes a gap), a resource conflict and a stale fenced
/// write; then the clock moves past the TTL and one cleanup cycle runs.
async fn workload(engine: &Engine, clock: &ManualClock) {
    let orders = engine.space("orders").await.unwrap();
    let ttl = Duration::from_secs(5);
    for i in 0..10 {
        let mut lease = orders
            .grant(Grant::new(format!("op-{i}"), "order-status").ttl(ttl))
            .await
            .unwrap();
        match i {
            0 => {
                lease.renew(Some(ttl)).await.unwrap();
                lease
                    .commit(OperationBody::new("update", b"{}".to_vec()))
                    .await
                    .unwrap();
            }
            8 => {
                lease.release(Some("not needed".into())).await.unwrap();
            }
            9 => {
                let body = OperationBody::new("update", b"{\"ids\":[9]}".to_vec());
                lease.record_result(body).await.unwrap();
                lease.abandon();
            }
            _ => {
                lease
                    .commit(OperationBody::new("update", b"{}".to_vec()))
                    .await
                    .unwrap();
            }
        }
    }
    let mut invoice = orders
        .grant(Grant::new("inv-1", "invoice").ttl(ttl))
        .await
        .unwrap();
    invoice
        .commit(OperationBody::new("create", b"{}".to_vec()))
        .await
        .unwrap();
    orders
        .grant(Grant::new("inv-2", "invoice").ttl(ttl))
        .await
        .unwrap()
        .abandon();

    // Resources: a holds partition-0; b collides, later takes over, and a's fenced write is
    // rejected as stale.
    let a = engine.lease_keeper("agent-a").await.unwrap();
    let b = engine.lease_keeper("agent-b").await.unwrap();
    // A long TTL: the keepers' background renewals stay out of the counts.
    let long = Duration::from_secs(600);
    let held = a
        .acquire(Acquire::new("partition-0").ttl(long))
        .await
        .unwrap();
    assert_eq!(a.renew_now().await.unwrap(), 1);
    assert!(
        b.acquire(Acquire::new("partition-0").ttl(long))
            .await
            .is_err()
    );
    let fenced_space = engine.space("fenced").await.unwrap();
    let mut fenced = fenced_space
        .grant(Grant::new("f-1", "shard").fence("partition-0", held.epoch))
        .await
        .unwrap();
    a.release("partition-0").await.unwrap();
    b.acquire(Acquire::new("partition-0").ttl(long))
        .await
        .unwrap();
    let stale = fenced
        .commit(OperationBody::new("update", b"{}".to_vec()))
        .await;
    assert!(stale.is_err(), "a stale epoch must be rejected");

    clock.advance(ttl + Duration::from_secs(2));
    let cleanup = engine.cleanup().build().await.unwrap();
    let report = cleanup.run_once().await.unwrap();
    assert_eq!(report.recovered_total(), 1, "{report:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The values the workload must produce, checked on the received export.
fn check_workload_metrics(points: &BTreeMap<String, Vec<Point>>, group_commit: bool) {
    let status = [("space", "orders"), ("projection_type", "order-status")];
    let invoice = [("space", "orders"), ("projection_type", "invoice")];
    assert_eq!(value(points, "seqlease.lease.granted", &status), 10.0);
    assert_eq!(value(points, "seqlease.lease.granted", &invoice), 2.0);
    assert_eq!(value(points, "seqlease.lease.committed", &status), 8.0);
    assert_eq!(value(points, "seqlease.lease.committed", &invoice), 1.0);
    assert_eq!(value(points, "seqlease.lease.released", &status), 1.0);
    assert_eq!(value(points, "seqlease.lease.expired", &status), 1.0);
    assert_eq!(value(points, "seqlease.lease.expired", &invoice), 1.0);
    assert_eq!(
        value(
            points,
            "seqlease.lease.renewals",
            &[("space", "orders"), ("result", "renewed")]
        ),
        1.0
    );
    // Two expired slots, each overran by at least the 2 s the clock moved past the TTL.
    let overrun = &points["seqlease.lease.overrun"];
    assert_eq!(overrun.iter().map(|p| p.value).sum::<f64>(), 2.0);
    assert!(overrun.iter().all(|p| p.histogram_sum.unwrap() >= 2.0));
    assert_eq!(overrun[0].unit, "s");
    assert_eq!(
        value(points, "seqlease.grant.duration", &[("space", "orders")]),
        12.0
    );
    assert_eq!(
        value(points, "seqlease.commit.duration", &[("space", "orders")]),
        9.0
    );
    assert_eq!(points["seqlease.commit.duration"][0].unit, "s");
    assert_eq!(
        value(
            points,
            "seqlease.recovery.outcomes",
            &[
                ("step", "retry"),
                ("outcome", "success"),
                ("projection_type", "order-status")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.recovery.outcomes",
            &[
                ("step", "gap"),
                ("outcome", "success"),
                ("projection_type", "invoice")
            ]
        ),
        1.0
    );
    let gap = |reason| {
        value(
            points,
            "seqlease.gaps.created",
            &[("space", "orders"), ("reason", reason)],
        )
    };
    assert_eq!(gap("released"), 1.0);
    assert_eq!(gap("expired"), 1.0);
    let orders = [("space", "orders")];
    assert_eq!(value(points, "seqlease.watermark", &orders), 12.0);
    assert_eq!(value(points, "seqlease.watermark.lag", &orders), 0.0);
    assert_eq!(value(points, "seqlease.lease.in_flight", &orders), 0.0);
    assert_eq!(
        value(points, "seqlease.lease.expired_backlog", &orders),
        2.0
    );
    assert_eq!(value(points, "seqlease.cleanup.load_level", &[]), 0.0);
    assert_eq!(value(points, "seqlease.cleanup.recovery_mode", &[]), 0.0);
    assert_eq!(
        value(points, "seqlease.cleanup.cycles", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.recovery.queue.size",
            &[("state", "parked")]
        ),
        0.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.resource.acquisitions",
            &[("result", "acquired")]
        ),
        2.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.resource.acquisitions",
            &[("result", "conflict")]
        ),
        1.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.resource.renewals",
            &[("result", "renewed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            points,
            "seqlease.epoch.conflicts",
            &[("resource", "partition-0")]
        ),
        1.0
    );
    if group_commit {
        let batches = &points["seqlease.group_commit.batch.size"];
        assert!(batches.iter().map(|p| p.value).sum::<f64>() > 0.0);
        assert_eq!(batches[0].attrs["store"], "sqlite");
    }
    // Every exported name is in the table, with the table's unit.
    for (name, series) in points {
        let spec = INSTRUMENTS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is exported but not in INSTRUMENTS"));
        for p in series {
            assert_eq!(p.unit, spec.unit, "{name}");
            let keys: BTreeSet<&str> = p.attrs.keys().map(String::as_str).collect();
            let documented: BTreeSet<&str> = spec.attributes.iter().copied().collect();
            assert_eq!(keys, documented, "{name} attributes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_on_memory_reaches_an_otlp_grpc_receiver() {
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    let clock = Arc::new(ManualClock::new());
    let engine = Engine::builder()
        .url("memory")
        .clock(clock.clone())
        .telemetry(Telemetry::Otlp(
            // Long interval: the test decides when to export.
            OtlpExport::grpc(endpoint).interval(Duration::from_secs(3600)),
        ))
        .build()
        .await
        .unwrap();
    workload(&engine, &clock).await;
    engine.flush_telemetry().await.unwrap();
    check_workload_metrics(&last_export(&received), false);
    let service = {
        // Scoped: the receiver takes this lock for every export, the final one included.
        let requests = received.0.lock();
        let resource = requests[0].resource_metrics[0].resource.clone().unwrap();
        resource
            .attributes
            .into_iter()
            .find(|kv| kv.key == "service.name")
    };
    assert!(format!("{service:?}").contains("seqlease"));
    engine.shutdown_telemetry().await.unwrap();
}

/// An application that puts ids where projection-type names belong gets its first
/// `MAX_PROJECTION_TYPES` types counted apart and the rest under `(other)`: the lease
/// counters of a space export a bounded number of series, and nothing goes uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_types_beyond_the_cap_are_counted_together() {
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    let engine = Engine::builder()
        .url("memory")
        .telemetry(Telemetry::Otlp(
            OtlpExport::grpc(endpoint).interval(Duration::from_secs(3600)),
        ))
        .build()
        .await
        .unwrap();
    let space = engine.space("ids").await.unwrap();
    let beyond = 40;
    let types = MAX_PROJECTION_TYPES + beyond;
    commit_noops(
        &space,
        (0..types).map(|i| (format!("op-{i}"), format!("type-{i}"))),
    )
    .await;
    engine.flush_telemetry().await.unwrap();
    let points = last_export(&received);
    let granted = &points["seqlease.lease.granted"];
    assert_eq!(
        granted.len(),
        MAX_PROJECTION_TYPES + 1,
        "one series per counted type, one for the rest"
    );
    let total: f64 = granted.iter().map(|p| p.value).sum();
    assert_eq!(total, types as f64, "every grant counted");
    let other = [
        ("space", "ids"),
        ("projection_type", OTHER_PROJECTION_TYPES),
    ];
    assert_eq!(
        value(&points, "seqlease.lease.granted", &other),
        beyond as f64
    );
    assert_eq!(
        value(&points, "seqlease.lease.committed", &other),
        beyond as f64
    );
    let first = [("space", "ids"), ("projection_type", "type-0")];
    assert_eq!(value(&points, "seqlease.lease.committed", &first), 1.0);
    engine.shutdown_telemetry().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_on_sqlite_reaches_an_otlp_http_receiver() {
    let received = Received::default();
    let endpoint = http_receiver(received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new());
    let engine = Engine::builder()
        .url(format!("sqlite://{}", dir.path().join("t.db").display()))
        .clock(clock.clone())
        .telemetry(Telemetry::Otlp(
            OtlpExport::http(endpoint).interval(Duration::from_secs(3600)),
        ))
        .build()
        .await
        .unwrap();
    workload(&engine, &clock).await;
    engine.flush_telemetry().await.unwrap();
    check_workload_metrics(&last_export(&received), true);
    engine.shutdown_telemetry().await.unwrap();
}

/// PostgreSQL reports the write path of its batches (`seqlease.store.batches`): plain grants
/// and commits are written as one statement. Stores with one path export no such series
/// (the memory and SQLite workloads above check every exported name and attribute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_the_write_path_of_its_batches() {
    use seqlease_conformance::postgres::{database_url, unique_name};
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    let opts = seqlease::PgOptions {
        schema: Some(unique_name("telemetry")),
        ..seqlease::PgOptions::default()
    };
    let store = seqlease::PgStore::connect(&database_url(), opts)
        .await
        .expect("connect to the test PostgreSQL");
    let engine = Engine::builder()
        .store(Arc::new(store))
        .telemetry(Telemetry::Otlp(
            OtlpExport::grpc(endpoint).interval(Duration::from_secs(3600)),
        ))
        .build()
        .await
        .unwrap();
    let space = engine.space("paths").await.unwrap();
    commit_noops(&space, (0..10).map(|i| (format!("op-{i}"), "t".to_owned()))).await;
    engine.flush_telemetry().await.unwrap();
    let points = last_export(&received);
    let at = |path| [("store", "postgres"), ("path", path)];
    let one = value(&points, "seqlease.store.batches", &at("one_statement"));
    let refused = value(
        &points,
        "seqlease.store.batches",
        &at("one_statement_refused"),
    );
    // All but the space's first batch, which runs as a general transaction and leaves the
    // store the space's row the one-statement path starts from.
    assert!(
        one >= 19.0,
        "10 grants and 10 commits went as one statement: {one}"
    );
    assert_eq!(refused, 0.0, "nothing raced them for the space's row");
    engine.shutdown_telemetry().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_exporter_is_reported_not_hidden_and_off_records_nothing() {
    // Nothing listens on port 9 of loopback: flushing must fail with a message.
    let engine = Engine::builder()
        .url("memory")
        .telemetry(Telemetry::Otlp(OtlpExport::http("http://127.0.0.1:9")))
        .build()
        .await
        .unwrap();
    let orders = engine.space("orders").await.unwrap();
    let mut lease = orders.grant(Grant::new("op", "t")).await.unwrap();
    lease
        .commit(OperationBody::new("k", b"{}".to_vec()))
        .await
        .unwrap();
    let err = engine.flush_telemetry().await.unwrap_err();
    assert!(err.to_string().contains("OTLP endpoint"), "{err}");

    let off = Engine::builder()
        .url("memory")
        .telemetry(Telemetry::Off)
        .build()
        .await
        .unwrap();
    assert!(off.meter_provider().is_none());
    off.flush_telemetry().await.unwrap();
    assert!(off.health().await.unwrap().is_healthy());
}

// ---------------------------------------------------------------- docs name real metrics

fn doc_files() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files = vec![root.join("telemetry.md")];
    for entry in std::fs::read_dir(root.join("telemetry")).unwrap() {
        files.push(entry.unwrap().path());
    }
    files
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// Every `seqlease_…` token in `text`.
fn prometheus_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("seqlease_") {
        let start = i + found;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_metric_in_the_docs_rules_and_dashboard_exists_in_the_code() {
    let known: BTreeSet<String> = INSTRUMENTS
        .iter()
        .flat_map(|s| {
            let mut names = s.prometheus_series();
            names.push(s.prometheus_name());
            names
        })
        .collect();
    let files = doc_files();
    assert!(
        files.len() >= 4,
        "telemetry.md and the three files of docs/telemetry/"
    );
    let mut mentioned = BTreeSet::new();
    for (path, text) in &files {
        for token in prometheus_tokens(text) {
            assert!(
                known.contains(&token),
                "{path} names {token}, which no instrument produces"
            );
            mentioned.insert(token);
        }
        if path.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
        }
    }
    // And the other way round: the reference documents every instrument.
    let reference = &files[0].1;
    for spec in INSTRUMENTS {
        assert!(
            reference.contains(&format!("`{}`", spec.name)),
            "docs/telemetry.md lacks {}",
            spec.name
        );
        assert!(
            reference.contains(&format!("`{}`", spec.prometheus_name())),
            "docs/telemetry.md lacks the Prometheus name of {}",
            spec.name
        );
        let kind = match spec.kind {
            InstrumentKind::Counter => "counter",
            InstrumentKind::Histogram => "histogram",
            InstrumentKind::Gauge => "gauge",
        };
        let row = reference
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{}`", spec.name)))
            .unwrap_or_else(|| panic!("no table row for {}", spec.name));
        assert!(row.contains(kind) && row.contains(spec.unit), "{row}");
    }
    // The alert rules cover exactly the evaluator's conditions, under the same names.
    let rules = files
        .iter()
        .find(|(p, _)| p.ends_with("prometheus-alerts.yaml"))
        .map(|(_, t)| t)
        .expect("docs/telemetry/prometheus-alerts.yaml");
    let alert_names: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    let kinds: BTreeSet<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(alert_names, kinds);
    for kind in AlertKind::ALL {
        assert!(
            reference.contains(&format!("### {}", kind.as_str())),
            "runbook for {kind}"
        );
    }
}

// ---------------------------------------------------------------- alerts

async fn alert_engine(thresholds: AlertThresholds) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let engine = Engine::builder()
        .url("memory")
        .clock(clock.clone())
        .telemetry(Telemetry::NoExport)
        .alert_thresholds(thresholds)
        .build()
        .await
        .unwrap();
    (engine, clock)
}

const TTL: Duration = Duration::from_secs(1);

#[tokio::test]
async fn expirations_fire_the_rate_and_at_once_alerts_and_clear_after_the_window() {
    let (engine, clock) = alert_engine(AlertThresholds::default()).await;
    let space = engine.space("s").await.unwrap();
    let cleanup = engine.cleanup().build().await.unwrap();
    for i in 0..20 {
        let mut lease = space
            .grant(Grant::new(format!("op-{i}"), "t").ttl(TTL))
            .await
            .unwrap();
        if i < 12 {
            lease.abandon();
        } else {
            lease
                .commit(OperationBody::new("k", b"{}".to_vec()))
                .await
                .unwrap();
        }
    }
    assert!(engine.health().await.unwrap().is_healthy());
    clock.advance(TTL * 2);
    cleanup.run_once().await.unwrap();
    let report = engine.health().await.unwrap();
    let rate = report
        .alert(AlertKind::ExpirationRateHigh)
        .expect("expiration rate");
    assert!((rate.value - 0.6).abs() < 1e-9, "{rate:?}");
    let at_once = report
        .alert(AlertKind::ExpiredAtOnce)
        .expect("expired at once");
    assert_eq!(at_once.value, 12.0);
    assert!(
        !report.is_firing(AlertKind::GapsHigh),
        "12 gaps is under 100"
    );

    // The next cycle finds nothing expired; once the window has passed, everything clears.
    cleanup.run_once().await.unwrap();
    let report = engine.health().await.unwrap();
    assert!(!report.is_firing(AlertKind::ExpiredAtOnce));
    assert!(
        report.is_firing(AlertKind::ExpirationRateHigh),
        "still inside the window"
    );
    clock.advance(Duration::from_secs(301));
    cleanup.run_once().await.unwrap();
    let report = engine.health().await.unwrap();
    assert!(report.is_healthy(), "{:?}", report.alerts);
}

struct Failing;

#[async_trait::async_trait]
impl PartialWorkResolver for Failing {
    async fn resolve(&self, _: &ExpiredSlot, _: &[u8]) -> Result<OperationBody, String> {
        Err("the read model is unreachable".into())
    }
}

#[tokio::test]
async fn failing_recovery_fires_and_clears() {
    let (engine, clock) = alert_engine(AlertThresholds {
        window: Duration::from_secs(60),
        ..AlertThresholds::default()
    })
    .await;
    let space = engine.space("s").await.unwrap();
    let cleanup = engine
        .cleanup()
        .resolver("t", Failing)
        .build()
        .await
        .unwrap();
    let mut lease = space.grant(Grant::new("op", "t").ttl(TTL)).await.unwrap();
    lease
        .record_partial(b"where-clause result".to_vec())
        .await
        .unwrap();
    lease.abandon();
    clock.advance(TTL * 2);
    let cycle = cleanup.run_once().await.unwrap();
    assert_eq!(cycle.parked, 1, "the work is parked, not lost");
    let report = engine.health().await.unwrap();
    let failed = report
        .alert(AlertKind::RecoveryFailureRateHigh)
        .expect("recovery failure");
    assert!(
        failed.value > 0.01 && failed.message.contains("parked"),
        "{failed:?}"
    );

    clock.advance(Duration::from_secs(61));
    // A healthy cycle re-tries the parked work (failing again) — so check with the cleanup
    // idle: only health samples now.
    let report = engine.health().await.unwrap();
    assert!(
        !report.is_firing(AlertKind::RecoveryFailureRateHigh),
        "{:?}",
        report.alerts
    );
}

#[tokio::test]
async fn many_gaps_fire_and_clear() {
    let (engine, clock) = alert_engine(AlertThresholds::default()).await;
    let space = engine.space("s").await.unwrap();
    for i in 0..101 {
        let lease = space
            .grant(Grant::new(format!("op-{i}"), "t"))
            .await
            .unwrap();
        lease.release(None).await.unwrap();
    }
    let report = engine.health().await.unwrap();
    assert_eq!(
        report.alert(AlertKind::GapsHigh).expect("gaps").value,
        101.0
    );
    clock.advance(Duration::from_secs(301));
    assert!(engine.health().await.unwrap().is_healthy());
}

#[tokio::test]
async fn resource_conflicts_and_failed_renewals_fire_and_clear() {
    let (engine, clock) = alert_engine(AlertThresholds {
        window: Duration::from_secs(100),
        conflicts_per_second: 0.01,
        ..AlertThresholds::default()
    })
    .await;
    let a = engine.lease_keeper("a").await.unwrap();
    let b = engine.lease_keeper("b").await.unwrap();
    a.acquire(Acquire::new("r")).await.unwrap();
    assert!(b.acquire(Acquire::new("r")).await.is_err());
    let report = engine.health().await.unwrap();
    assert!(
        !report.is_firing(AlertKind::LeaseConflictRateHigh),
        "1 in 100 s is 0.01/s, not above"
    );
    assert!(b.acquire(Acquire::new("r")).await.is_err());
    let report = engine.health().await.unwrap();
    assert_eq!(
        report
            .alert(AlertKind::LeaseConflictRateHigh)
            .expect("conflicts")
            .value,
        0.02
    );

    // A renewal after the lease expired fails.
    let space = engine.space("s").await.unwrap();
    let mut lease = space.grant(Grant::new("op", "t").ttl(TTL)).await.unwrap();
    clock.advance(TTL * 2);
    assert!(lease.renew(Some(TTL)).await.is_err());
    let report = engine.health().await.unwrap();
    assert_eq!(
        report
            .alert(AlertKind::RenewalFailureRateHigh)
            .expect("renewals")
            .value,
        1.0
    );

    // Resolve the slot, let the window pass: all clear.
    engine
        .cleanup()
        .build()
        .await
        .unwrap()
        .run_once()
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    clock.advance(Duration::from_secs(101));
    let report = engine.health().await.unwrap();
    assert!(report.is_healthy(), "{:?}", report.alerts);
}

#[tokio::test]
async fn a_stalled_watermark_fires_per_space_and_clears_when_it_moves() {
    let (engine, clock) = alert_engine(AlertThresholds::default()).await;
    let space = engine.space("orders").await.unwrap();
    let ttl = Duration::from_secs(3600);
    let mut first = space.grant(Grant::new("a", "t").ttl(ttl)).await.unwrap();
    let mut second = space.grant(Grant::new("b", "t").ttl(ttl)).await.unwrap();
    second
        .commit(OperationBody::new("k", b"{}".to_vec()))
        .await
        .unwrap();
    assert!(engine.health().await.unwrap().is_healthy());
    clock.advance(Duration::from_secs(121));
    let report = engine.health().await.unwrap();
    let stalled = report.alert(AlertKind::WatermarkStalled).expect("stalled");
    assert_eq!(stalled.space.as_ref().map(|s| s.as_str()), Some("orders"));
    assert!(stalled.message.contains("slot 1"), "{}", stalled.message);
    first
        .commit(OperationBody::new("k", b"{}".to_vec()))
        .await
        .unwrap();
    assert!(engine.health().await.unwrap().is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_service_that_stops_cycling_fires_the_heartbeat_alert() {
    let (engine, clock) = alert_engine(AlertThresholds::default()).await;
    let cleanup = engine
        .cleanup()
        .config(CleanupConfig {
            interval: Duration::from_secs(3600),
            ..CleanupConfig::default()
        })
        .build()
        .await
        .unwrap();
    assert!(!engine.health().await.unwrap().cleanup_running);
    let handle = cleanup.start();
    // Wait for the service's first cycle (an event, bounded), then stop the clock-time world.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let report = engine.health().await.unwrap();
            if report.cleanup_running && report.last_cleanup_cycle.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first cleanup cycle ran");
    assert!(engine.health().await.unwrap().is_healthy());
    // The next cycle is an hour of real time away: by the engine's clock it is overdue.
    clock.advance(Duration::from_secs(61));
    let report = engine.health().await.unwrap();
    assert!(
        report
            .alert(AlertKind::CleanupStopped)
            .expect("heartbeat")
            .value
            >= 61.0
    );
    cleanup.run_once().await.unwrap();
    assert!(engine.health().await.unwrap().is_healthy());
    handle.stop().await;
    clock.advance(Duration::from_secs(600));
    let report = engine.health().await.unwrap();
    assert!(
        !report.cleanup_running && report.is_healthy(),
        "stopped on purpose: {report:?}"
    );
}

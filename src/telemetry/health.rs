//! `Engine::health()`: the alert evaluator's answer for this process, on demand.
//!
//! A health check re-reads every space's counters from the store (so the watermark and
//! in-flight figures are the store's, whoever moved them), samples the engine's counts at
//! the store's clock, and returns the alerts active now. Call it from a readiness endpoint
//! or a periodic job; the cleanup service also samples at every cycle, so the alert windows
//! fill in even when nobody asks.

use std::time::Duration;

use seqlease_core::Timestamp;

use super::alerts::{Alert, AlertKind};
use crate::engine::Engine;
use crate::error::Result;

/// The answer of [`Engine::health`].
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    /// When it was evaluated (the store's clock).
    pub at: Timestamp,
    /// The window rates and counts were taken over.
    pub window: Duration,
    /// The alerts active now; empty when healthy.
    pub alerts: Vec<Alert>,
    /// Whether a cleanup service runs in this engine (the heartbeat alert applies only then).
    pub cleanup_running: bool,
    /// When a cleanup cycle of this engine last succeeded (store clock).
    pub last_cleanup_cycle: Option<Timestamp>,
}

impl HealthReport {
    /// No alert is active.
    pub fn is_healthy(&self) -> bool {
        self.alerts.is_empty()
    }

    /// The active alert of `kind`, if any (the first, for per-space kinds).
    pub fn alert(&self, kind: AlertKind) -> Option<&Alert> {
        self.alerts.iter().find(|a| a.kind == kind)
    }

    /// Whether an alert of `kind` is active.
    pub fn is_firing(&self, kind: AlertKind) -> bool {
        self.alert(kind).is_some()
    }
}

impl Engine {
    /// Evaluate the alert conditions now: see [`AlertKind`] for what is checked and
    /// [`AlertThresholds`](super::AlertThresholds) for the thresholds (set with
    /// [`EngineBuilder::alert_thresholds`](crate::EngineBuilder::alert_thresholds)).
    /// Costs two store round trips (the clock and the list of spaces).
    pub async fn health(&self) -> Result<HealthReport> {
        let telemetry = &self.inner.telemetry;
        let now = self.now().await.inspect_err(|e| telemetry.store_error(e))?;
        let spaces = self
            .spaces()
            .await
            .inspect_err(|e| telemetry.store_error(e))?;
        for info in &spaces {
            telemetry.refresh(info);
        }
        Ok(telemetry.health(now))
    }

    /// The meter provider this engine records into (`None` with `Telemetry::Off`).
    pub fn meter_provider(&self) -> Option<&opentelemetry_sdk::metrics::SdkMeterProvider> {
        self.inner.telemetry.provider()
    }

    /// Export everything recorded so far now (waits for the exporter). Runs on a blocking
    /// thread, so it is safe on any runtime.
    pub async fn flush_telemetry(&self) -> Result<()> {
        self.with_provider(|p| p.force_flush()).await
    }

    /// Flush and stop the exporter of a provider the engine built (a provider given with
    /// `Telemetry::Provider` is the application's to shut down). Recording after this is a
    /// no-op. Without it, the provider is shut down when the last engine handle is dropped,
    /// which blocks that thread for the final export.
    pub async fn shutdown_telemetry(&self) -> Result<()> {
        if !self.inner.telemetry.owns_provider() {
            return Ok(());
        }
        self.with_provider(|p| p.shutdown()).await
    }

    async fn with_provider(
        &self,
        f: impl FnOnce(
            &opentelemetry_sdk::metrics::SdkMeterProvider,
        ) -> opentelemetry_sdk::error::OTelSdkResult
        + Send
        + 'static,
    ) -> Result<()> {
        let Some(provider) = self.inner.telemetry.provider().cloned() else {
            return Ok(());
        };
        let outcome = tokio::task::spawn_blocking(move || f(&provider))
            .await
            .map_err(|_| crate::Error::Closed)?;
        outcome.map_err(|e| {
            crate::Error::Invalid(seqlease_core::InvalidInput::Setting {
                setting: "telemetry",
                reason: format!("the metrics exporter failed: {e}; check the OTLP endpoint"),
            })
        })
    }
}

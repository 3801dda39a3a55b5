//! The operator's own metrics, in a registry it owns.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Reconcile counts, errors and durations, and whether this replica leads.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by `result` (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by `reason` ([`crate::Error::metric_label`]).
    pub errors: IntCounterVec,
    /// Reconcile duration by `result`.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Registers every metric under the `weir_operator_` prefix.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("weir_operator".into()), None)?;
        let reconciles = IntCounterVec::new(Opts::new("reconciles_total", "StreamJob reconciles"), &["result"])?;
        let errors = IntCounterVec::new(Opts::new("reconcile_errors_total", "Failed reconciles"), &["reason"])?;
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["result"],
        )?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self { registry, reconciles, errors, duration, leader })
    }

    /// Records one reconcile's outcome and duration.
    pub fn observe(&self, result: &str, seconds: f64) {
        self.reconciles.with_label_values(&[result]).inc();
        self.duration.with_label_values(&[result]).observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

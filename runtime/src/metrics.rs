//! The runtime's Prometheus metrics (prefix `weir_`, every series labelled `streamjob`).
//! The registry belongs to the runtime, not to a global.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};

/// Every metric the runtime exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records consumed from the source.
    pub records_in: IntCounter,
    /// Records produced to the sink.
    pub records_out: IntCounter,
    /// Records that arrived after their window closed.
    pub records_late: IntCounter,
    /// Records sent to the dead-letter topic.
    pub records_dead_lettered: IntCounter,
    /// Records that could not be decoded.
    pub decode_errors: IntCounter,
    /// High watermark minus committed offset, per source partition.
    pub consumer_lag: IntGaugeVec,
    /// Wall clock minus the slowest owned partition's watermark.
    pub watermark_lag_seconds: prometheus::Gauge,
    /// Time to take a checkpoint.
    pub checkpoint_duration: Histogram,
    /// When the last checkpoint completed, epoch seconds.
    pub last_checkpoint_timestamp: prometheus::Gauge,
    /// Checkpoints that failed.
    pub checkpoints_failed: IntCounter,
    /// Source partitions this pod owns.
    pub assigned_partitions: IntGauge,
}

/// A metric could not be registered (a programming error: names clash).
#[derive(Debug, thiserror::Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Metrics for the StreamJob named `job`.
    pub fn new(job: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("weir".into()), None)?;
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("streamjob", job);
        let counter = |name: &str, help: &str| IntCounter::with_opts(opts(name, help));
        let metrics = Self {
            records_in: counter("records_in_total", "Records consumed from the source topic.")?,
            records_out: counter("records_out_total", "Records produced to the sink topic.")?,
            records_late: counter("records_late_total", "Records that arrived after their window closed.")?,
            records_dead_lettered: counter("records_dead_lettered_total", "Records sent to the dead-letter topic.")?,
            decode_errors: counter("decode_errors_total", "Records whose payload could not be decoded.")?,
            consumer_lag: IntGaugeVec::new(
                opts("consumer_lag", "High watermark minus committed offset of an owned source partition."),
                &["topic", "partition"],
            )?,
            watermark_lag_seconds: prometheus::Gauge::with_opts(opts(
                "watermark_lag_seconds",
                "Wall clock minus the event-time watermark of the slowest owned partition.",
            ))?,
            checkpoint_duration: Histogram::with_opts(
                HistogramOpts::new("checkpoint_duration_seconds", "Time to write a checkpoint.")
                    .const_label("streamjob", job),
            )?,
            last_checkpoint_timestamp: prometheus::Gauge::with_opts(opts(
                "last_checkpoint_timestamp_seconds",
                "When the last checkpoint became durable, epoch seconds.",
            ))?,
            checkpoints_failed: counter("checkpoints_failed_total", "Checkpoints that failed.")?,
            assigned_partitions: IntGauge::with_opts(opts("assigned_partitions", "Source partitions this pod owns."))?,
            registry,
        };
        let collectors: [Box<dyn Collector>; 11] = [
            Box::new(metrics.records_in.clone()),
            Box::new(metrics.records_out.clone()),
            Box::new(metrics.records_late.clone()),
            Box::new(metrics.records_dead_lettered.clone()),
            Box::new(metrics.decode_errors.clone()),
            Box::new(metrics.consumer_lag.clone()),
            Box::new(metrics.watermark_lag_seconds.clone()),
            Box::new(metrics.checkpoint_duration.clone()),
            Box::new(metrics.last_checkpoint_timestamp.clone()),
            Box::new(metrics.checkpoints_failed.clone()),
            Box::new(metrics.assigned_partitions.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_streamjob_label_and_the_weir_prefix() {
        let metrics = Metrics::new("spend").unwrap();
        metrics.records_in.inc_by(3);
        metrics.consumer_lag.with_label_values(&["payments", "0"]).set(42);
        let text = metrics.render();
        assert!(text.contains("weir_records_in_total{streamjob=\"spend\"} 3"), "{text}");
        assert!(
            text.contains("weir_consumer_lag{partition=\"0\",streamjob=\"spend\",topic=\"payments\"} 42"),
            "{text}"
        );
        assert!(!text.contains("{job=") && !text.contains(",job="), "never a label called job");
    }
}

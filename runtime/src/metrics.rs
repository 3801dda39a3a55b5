//! The runtime's Prometheus metrics (prefix `weir_`, every series labelled `streamjob`).
//! The registry belongs to the runtime, not to a global.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};

/// Every metric the runtime exports. Counters and histograms are atomics: cheap on the hot
/// path; rates are left to PromQL.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records consumed from the source.
    pub records_in: IntCounter,
    /// Records produced to the sink.
    pub records_out: IntCounter,
    /// Records that arrived after their window closed.
    pub records_late: IntCounter,
    /// Records a `dedupe` step dropped as repeats.
    pub records_deduplicated: IntCounter,
    /// Records sent to the dead-letter topic.
    pub records_dead_lettered: IntCounter,
    /// Records that could not be decoded.
    pub decode_errors: IntCounter,
    /// Records, or window results, a pipeline step could not evaluate.
    pub pipeline_errors: IntCounter,
    /// Results larger than the sink takes, dead-lettered instead.
    pub records_oversize: IntCounter,
    /// High watermark minus committed offset, per source partition.
    pub consumer_lag: IntGaugeVec,
    /// Bytes of window state, per owned partition.
    pub state_bytes: IntGaugeVec,
    /// (key, window) aggregates held, per owned partition.
    pub state_aggregates: IntGaugeVec,
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
    /// Key and payload bytes consumed.
    pub source_bytes: IntCounter,
    /// Batch polls of the source.
    pub source_polls: IntCounter,
    /// Batch polls that returned no record.
    pub source_empty_polls: IntCounter,
    /// Offset commits (or transactional offset sends).
    pub source_commits: IntCounter,
    /// Offset commits that failed.
    pub source_commit_failures: IntCounter,
    /// Partition assignments and revocations this pod went through.
    pub source_rebalances: IntCounter,
    /// Records per polled batch.
    pub source_batch_records: Histogram,
    /// Key and payload bytes produced to the sink.
    pub sink_bytes: IntCounter,
    /// Records handed to the sink producer.
    pub sink_sends: IntCounter,
    /// Sink producer flushes.
    pub sink_flushes: IntCounter,
    /// Sink records whose delivery failed.
    pub sink_errors: IntCounter,
    /// Records per produced batch of results.
    pub sink_batch_records: Histogram,
    /// Time from handing a record to the producer to its acknowledgement.
    pub sink_delivery_latency: Histogram,
    /// Retries of transient errors, by component (`source`, `sink`, `dead_letter`).
    pub retries: IntCounterVec,
}

/// A metric could not be registered (a programming error: names clash).
#[derive(Debug, thiserror::Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Buckets for batch sizes in records.
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 4096.0, 10000.0, 50000.0];
/// Buckets for delivery latency in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    /// Metrics for the StreamJob named `job`.
    pub fn new(job: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("weir".into()), None)?;
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("streamjob", job);
        let register = |collector: Box<dyn Collector>| registry.register(collector);
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::with_opts(opts(name, help))?;
            register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let by_component = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let counter = IntCounterVec::new(opts(name, help), &["component"])?;
            register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| -> Result<Histogram, prometheus::Error> {
            let histogram = Histogram::with_opts(
                HistogramOpts::new(name, help).const_label("streamjob", job).buckets(buckets.to_vec()),
            )?;
            register(Box::new(histogram.clone()))?;
            Ok(histogram)
        };
        let consumer_lag = IntGaugeVec::new(
            opts("consumer_lag", "High watermark minus committed offset of an owned source partition."),
            &["topic", "partition"],
        )?;
        register(Box::new(consumer_lag.clone()))?;
        let state_bytes =
            IntGaugeVec::new(opts("state_bytes", "Bytes of window state of an owned partition."), &["partition"])?;
        register(Box::new(state_bytes.clone()))?;
        let state_aggregates = IntGaugeVec::new(
            opts("state_aggregates", "(key, window) aggregates held for an owned partition."),
            &["partition"],
        )?;
        register(Box::new(state_aggregates.clone()))?;
        let watermark_lag_seconds = prometheus::Gauge::with_opts(opts(
            "watermark_lag_seconds",
            "Wall clock minus the event-time watermark of the slowest owned partition.",
        ))?;
        register(Box::new(watermark_lag_seconds.clone()))?;
        let last_checkpoint_timestamp = prometheus::Gauge::with_opts(opts(
            "last_checkpoint_timestamp_seconds",
            "When the last checkpoint became durable, epoch seconds.",
        ))?;
        register(Box::new(last_checkpoint_timestamp.clone()))?;
        let assigned_partitions = IntGauge::with_opts(opts("assigned_partitions", "Source partitions this pod owns."))?;
        register(Box::new(assigned_partitions.clone()))?;
        let metrics = Self {
            records_in: counter("records_in_total", "Records consumed from the source topic.")?,
            records_out: counter("records_out_total", "Records produced to the sink topic.")?,
            records_late: counter("records_late_total", "Records that arrived after their window closed.")?,
            records_deduplicated: counter("records_deduplicated_total", "Records a dedupe step dropped as repeats.")?,
            records_dead_lettered: counter("records_dead_lettered_total", "Records sent to the dead-letter topic.")?,
            decode_errors: counter("decode_errors_total", "Records whose payload could not be decoded.")?,
            pipeline_errors: counter(
                "pipeline_errors_total",
                "Records, or window results, a pipeline step could not evaluate (each dead-lettered alone).",
            )?,
            records_oversize: counter(
                "records_oversize_total",
                "Results larger than the sink topic takes, dead-lettered instead of produced.",
            )?,
            consumer_lag,
            state_bytes,
            state_aggregates,
            watermark_lag_seconds,
            checkpoint_duration: histogram(
                "checkpoint_duration_seconds",
                "Time to write a checkpoint.",
                prometheus::DEFAULT_BUCKETS,
            )?,
            last_checkpoint_timestamp,
            checkpoints_failed: counter("checkpoints_failed_total", "Checkpoints that failed.")?,
            assigned_partitions,
            source_bytes: counter("source_bytes_total", "Key and payload bytes consumed from the source topic.")?,
            source_polls: counter("source_polls_total", "Batch polls of the source topic.")?,
            source_empty_polls: counter("source_empty_polls_total", "Batch polls that returned no record.")?,
            source_commits: counter("source_commits_total", "Offset commits of the source consumer group.")?,
            source_commit_failures: counter("source_commit_failures_total", "Offset commits that failed.")?,
            source_rebalances: counter("source_rebalances_total", "Partition assignments and revocations.")?,
            source_batch_records: histogram("source_batch_records", "Records per polled batch.", BATCH_BUCKETS)?,
            sink_bytes: counter("sink_bytes_total", "Key and payload bytes produced to the sink topic.")?,
            sink_sends: counter("sink_sends_total", "Records handed to the sink producer.")?,
            sink_flushes: counter("sink_flushes_total", "Flushes of the sink producer.")?,
            sink_errors: counter("sink_errors_total", "Sink records whose delivery failed.")?,
            sink_batch_records: histogram(
                "sink_batch_records",
                "Records per produced batch of results.",
                BATCH_BUCKETS,
            )?,
            sink_delivery_latency: histogram(
                "sink_delivery_latency_seconds",
                "Time from handing a record to the sink producer to its acknowledgement.",
                LATENCY_BUCKETS,
            )?,
            retries: by_component("retries_total", "Retries of transient Kafka errors.")?,
            registry: registry.clone(),
        };
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

    #[test]
    fn connector_metrics_are_exported() {
        let metrics = Metrics::new("spend").unwrap();
        metrics.retries.with_label_values(&["source"]).inc();
        metrics.sink_delivery_latency.observe(0.003);
        metrics.source_batch_records.observe(100.0);
        let text = metrics.render();
        assert!(text.contains("weir_retries_total{component=\"source\",streamjob=\"spend\"} 1"), "{text}");
        assert!(
            text.contains("weir_sink_delivery_latency_seconds_bucket{streamjob=\"spend\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("weir_source_batch_records_count{streamjob=\"spend\"} 1"), "{text}");
        for name in ["source_bytes_total", "source_empty_polls_total", "sink_flushes_total", "sink_errors_total"] {
            assert!(text.contains(&format!("weir_{name}{{streamjob=\"spend\"}} 0")), "{name} in {text}");
        }
    }
}

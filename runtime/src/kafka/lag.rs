//! Consumer lag, `weir_consumer_lag`, from librdkafka's statistics: what KEDA scales on.

use rdkafka::Statistics;

use crate::metrics::Metrics;

/// Sets `weir_consumer_lag` of the owned partitions of `topic` from `statistics` (when
/// `fetching`), and drops the series of partitions not owned: statistics may be older than
/// the last assignment. `owned` answers a partition's committed offset if it is owned.
pub fn export_lag(
    metrics: &Metrics,
    topic: &str,
    statistics: &Statistics,
    fetching: bool,
    owned: impl Fn(i32) -> Option<Option<i64>>,
) {
    let Some(stats) = statistics.topics.get(topic) else { return };
    for (&id, partition) in &stats.partitions {
        if id < 0 {
            continue;
        }
        let label = id.to_string();
        match owned(id).filter(|_| partition.desired) {
            None => {
                let _ = metrics.consumer_lag.remove_label_values(&[topic, &label]);
            }
            Some(committed) if fetching => {
                if let Some(lag) = lag_of(committed, partition) {
                    metrics.consumer_lag.with_label_values(&[topic, &label]).set(lag);
                }
            }
            Some(_) => {}
        }
    }
}

/// High watermark − committed offset (`committed` when the runtime knows better than the
/// statistics, e.g. after transactional commits); from the low watermark when nothing was
/// committed. `None` before the partition's offsets are known.
fn lag_of(committed: Option<i64>, partition: &rdkafka::statistics::Partition) -> Option<i64> {
    let committed = committed.unwrap_or(partition.committed_offset);
    let lag = if committed >= 0 && partition.hi_offset >= 0 {
        partition.hi_offset - committed
    } else if partition.hi_offset >= 0 {
        partition.hi_offset - partition.lo_offset.max(0)
    } else {
        return None;
    };
    Some(lag.max(0))
}

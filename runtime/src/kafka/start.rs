//! Where newly assigned partitions start reading.
//!
//! The committed offsets are read by Weir, with retries, and handed to `assign` as
//! explicit offsets, rather than left to librdkafka (`Offset::Stored`): when librdkafka's
//! own read fails as a whole — NOT_COORDINATOR while the group's coordinator is loading or
//! moving — the partition stays waiting for it, is never fetched and never retried
//! (librdkafka issue 5586), while the pod looks healthy.

use std::time::Duration;

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
};
use weir_crds::{Retry, StartOffset};

use super::retry::retrying;

/// How long one read of the committed offsets may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a partition the group has no committed offset for starts, as `auto.offset.reset`
/// would have it. A timestamp start seeks later, once the partition is fetched.
pub fn reset_offset(start: StartOffset) -> Offset {
    match start {
        StartOffset::Earliest | StartOffset::Timestamp => Offset::Beginning,
        StartOffset::Latest => Offset::End,
    }
}

/// `partitions` of `topic`, each at its offset in `committed`, else at `reset`.
pub fn starting_list(
    committed: &TopicPartitionList,
    topic: &str,
    partitions: &[i32],
    reset: Offset,
) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        let offset = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => Offset::Offset(offset),
            _ => reset,
        };
        list.add_partition_offset(topic, partition, offset)?;
    }
    Ok(list)
}

/// Reads the group's committed offsets of `partitions` (retrying transient errors) and
/// lists each partition at the offset it starts from.
pub fn starting_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    reset: Offset,
    retry: (&Retry, &prometheus::IntCounter),
) -> Result<TopicPartitionList, KafkaError> {
    let mut wanted = TopicPartitionList::new();
    for &partition in partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = retrying(retry.0, retry.1, "reading committed offsets", || {
        consumer.committed_offsets(wanted.clone(), TIMEOUT)
    })?;
    starting_list(&committed, topic, partitions, reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_starts_at_its_committed_offset_or_at_the_reset() {
        let mut committed = TopicPartitionList::new();
        committed.add_partition_offset("in", 0, Offset::Offset(42)).unwrap();
        committed.add_partition_offset("in", 1, Offset::Invalid).unwrap();
        let list = starting_list(&committed, "in", &[0, 1, 2], Offset::Beginning).unwrap();
        let offsets: Vec<(i32, Offset)> = list.elements().iter().map(|e| (e.partition(), e.offset())).collect();
        assert_eq!(offsets, [(0, Offset::Offset(42)), (1, Offset::Beginning), (2, Offset::Beginning)]);
    }

    #[test]
    fn the_reset_follows_the_start_offset() {
        assert_eq!(reset_offset(StartOffset::Earliest), Offset::Beginning);
        assert_eq!(reset_offset(StartOffset::Timestamp), Offset::Beginning);
        assert_eq!(reset_offset(StartOffset::Latest), Offset::End);
    }
}

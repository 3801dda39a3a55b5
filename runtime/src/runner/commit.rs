//! Making progress durable. With `checkpoint.storage` every owned partition's state is
//! written first and its offset committed after (in the sink transaction for exactly-once).
//! Without it, each partition commits the oldest offset its open windows still need, with
//! its event-time progress in the commit metadata, and replays from there after a restart.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext},
    error::KafkaError,
    producer::Producer,
};
use tracing::{info, warn};
use weir_crds::Retry;

use super::{
    RunError, Sink, Table, kafka,
    shared::{CheckpointStatus, PartitionStatus, Shared, lock, now_rfc3339},
};
use crate::{
    checkpoint::{Checkpointer, CommittedCheckpoint, FORMAT_VERSION, PartitionSnapshot, SnapshotHeader},
    kafka::retry::retrying,
    metrics::Metrics,
};

/// How long broker calls of a commit may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Commits progress for the job loop and for the rebalance callbacks.
pub(super) struct Committer {
    pub topic: String,
    pub shared: Arc<Shared>,
    pub checkpointer: Option<Arc<Checkpointer>>,
    /// The sink; transactional when `exactly_once`.
    pub sink: Arc<Sink>,
    pub dead_letters: Option<Arc<Sink>>,
    pub exactly_once: bool,
    /// When the open transaction began (exactly-once), to give up before the broker aborts it.
    pub transaction_started: Mutex<Instant>,
    pub transaction_timeout: Duration,
    /// The source's retry policy, for offset commits.
    pub retry: Retry,
}

impl Committer {
    /// Waits for everything produced; a failed delivery stops the job before any commit.
    pub fn flush(&self) -> Result<(), RunError> {
        for producer in std::iter::once(&self.sink).chain(self.dead_letters.iter()) {
            self.shared.metrics.sink_flushes.inc();
            producer.flush(TIMEOUT).map_err(kafka("flushing produced records"))?;
            if let Some(failure) = lock(&producer.context().failed).clone() {
                return Err(RunError::Delivery(failure));
            }
        }
        Ok(())
    }

    /// Makes every owned partition's progress durable: a checkpoint when storage is set, else
    /// an offset commit. A failed checkpoint is counted and retried at the next interval; the
    /// job goes on (exactly-once: until its transaction would time out).
    pub fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, table: &mut Table) -> Result<(), RunError> {
        self.make_durable(consumer, table, false)
    }

    /// [`Self::commit`]; `handing_over` partitions in exactly-once, a failed checkpoint is
    /// an error, not a retry at the next interval: the open transaction holds the leaving
    /// partitions' results, and committing it later, once their next owner replays them,
    /// would commit them twice. The job stops instead, and its transaction is aborted.
    fn make_durable<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        table: &mut Table,
        handing_over: bool,
    ) -> Result<(), RunError> {
        self.flush()?;
        let Some(checkpointer) = &self.checkpointer else {
            return self.commit_offsets(consumer, table);
        };
        if table.partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let snapshots = snapshots(&self.topic, table, checkpointer.next_id())?;
        if let Err(e) = checkpointer.write(&snapshots) {
            self.shared.metrics.checkpoints_failed.inc();
            let health = checkpointer.record(Err(e.to_string()));
            warn!(error = %e, failures = health.consecutive_failures, "checkpoint failed; retrying at the next interval");
            *lock(&self.shared.degraded) = checkpointer.readiness().err();
            if self.exactly_once && handing_over {
                return Err(RunError::Checkpoint(format!(
                    "the checkpoint of a partition hand-over failed; stopping so that the open transaction is \
                     aborted and the partitions' next owner replays their results once: {e}"
                )));
            }
            let open_for = lock(&self.transaction_started).elapsed();
            if self.exactly_once && open_for + self.transaction_timeout / 4 >= self.transaction_timeout {
                return Err(RunError::Checkpoint(format!(
                    "no checkpoint for {open_for:?}, and the transaction would time out: {e}"
                )));
            }
            return Ok(());
        }
        self.commit_snapshots(consumer, table, &snapshots)?;
        checkpointer.record(Ok(()));
        *lock(&self.shared.degraded) = None;
        let elapsed = started.elapsed();
        self.shared.metrics.checkpoint_duration.observe(elapsed.as_secs_f64());
        self.shared.metrics.last_checkpoint_timestamp.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        lock(&self.shared.status).last_checkpoint = Some(CheckpointStatus {
            id: snapshots[0].header.checkpoint,
            completed_at: now_rfc3339(),
            partitions: snapshots.len(),
        });
        checkpointer.collect_garbage(&self.topic);
        Ok(())
    }

    /// Commits the offsets of durable snapshots: in the transaction (exactly-once, which
    /// then opens the next one) or directly.
    pub fn commit_snapshots<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        table: &mut Table,
        snapshots: &[PartitionSnapshot],
    ) -> Result<(), RunError> {
        let mut offsets = TopicPartitionList::new();
        for snapshot in snapshots {
            let header = &snapshot.header;
            offsets
                .add_partition_offset(&self.topic, header.partition, Offset::Offset(header.position))
                .map_err(kafka("listing offsets"))?;
            if self.exactly_once
                && let Some(mut element) = offsets.find_partition(&self.topic, header.partition)
            {
                let named = CommittedCheckpoint { checkpoint: header.checkpoint };
                element.set_metadata(named.to_metadata());
            }
        }
        if self.exactly_once {
            let group =
                consumer.group_metadata().ok_or_else(|| RunError::Checkpoint("no consumer group metadata".into()))?;
            self.sink
                .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
                .map_err(kafka("adding offsets to the transaction"))?;
            self.sink.commit_transaction(TIMEOUT).map_err(kafka("committing the transaction"))?;
            self.shared.metrics.source_commits.inc();
            self.sink.begin_transaction().map_err(kafka("beginning a transaction"))?;
            *lock(&self.transaction_started) = Instant::now();
        } else if !self.commit_sync(consumer, &offsets)? {
            return Ok(());
        }
        for snapshot in snapshots {
            if let Some(run) = table.partitions.get_mut(&snapshot.header.partition) {
                run.committed = Some(snapshot.header.position);
            }
        }
        lock(&self.shared.status).last_commit = Some(now_rfc3339());
        Ok(())
    }

    /// Commits `offsets` (see [`commit_unless_rebalancing`]).
    fn commit_sync<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
    ) -> Result<bool, RunError> {
        commit_unless_rebalancing(consumer, offsets, &self.retry, &self.shared.metrics)
            .map_err(kafka("committing offsets"))
    }

    /// Without checkpoints: each partition's replay point, with its progress as metadata.
    fn commit_offsets<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        table: &mut Table,
    ) -> Result<(), RunError> {
        let mut offsets = TopicPartitionList::new();
        for (&partition, run) in &table.partitions {
            let progress = run.commit_point();
            offsets
                .add_partition_offset(&self.topic, partition, Offset::Offset(progress.committed))
                .map_err(kafka("listing offsets"))?;
            if let Some(mut element) = offsets.find_partition(&self.topic, partition) {
                element.set_metadata(serde_json::to_string(&progress).unwrap_or_default());
            }
        }
        if offsets.count() == 0 {
            return Ok(());
        }
        if !self.commit_sync(consumer, &offsets)? {
            return Ok(());
        }
        for element in offsets.elements() {
            if let (Some(run), Offset::Offset(o)) = (table.partitions.get_mut(&element.partition()), element.offset()) {
                run.committed = Some(o);
            }
        }
        lock(&self.shared.status).last_commit = Some(now_rfc3339());
        Ok(())
    }

    /// Hands revoked partitions over with their progress durable. Exactly-once commits
    /// every owned partition, since the open transaction holds results of all of them.
    pub fn hand_over<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        table: &mut Table,
        revoked: &[i32],
    ) -> Result<(), RunError> {
        if !self.exactly_once && self.checkpointer.is_some() {
            // Only the revoked partitions need to be durable now.
            let mut leaving = Table::default();
            for partition in revoked {
                if let Some(run) = table.partitions.remove(partition) {
                    leaving.partitions.insert(*partition, run);
                }
            }
            let result = self.commit(consumer, &mut leaving);
            self.release(&mut leaving, revoked);
            return result;
        }
        self.make_durable(consumer, table, true)?;
        self.release(table, revoked);
        Ok(())
    }

    fn release(&self, table: &mut Table, revoked: &[i32]) {
        for partition in revoked {
            table.partitions.remove(partition);
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.forget(*partition);
            }
        }
        info!(partitions = ?revoked, "partitions handed over");
    }

    /// Refreshes the partitions shown by `/status` and the assigned-partitions gauge.
    pub fn refresh_status(&self, table: &Table) {
        let partitions = table
            .partitions
            .iter()
            .map(|(&partition, run)| PartitionStatus {
                partition,
                position: run.position,
                committed: run.committed,
                watermark: run.pipeline.watermark().max_event_time().map(|_| run.pipeline.watermark().current()),
                open_aggregates: run.pipeline.open_aggregates(),
            })
            .collect();
        self.shared.metrics.assigned_partitions.set(table.partitions.len() as i64);
        lock(&self.shared.status).partitions = partitions;
    }
}

/// A snapshot of every owned partition, as checkpoint `id`.
pub(super) fn snapshots(topic: &str, table: &Table, id: u64) -> Result<Vec<PartitionSnapshot>, RunError> {
    let offsets: BTreeMap<i32, i64> = table.partitions.iter().map(|(&p, run)| (p, run.position)).collect();
    let created_at = now_rfc3339();
    table
        .partitions
        .iter()
        .map(|(&partition, run)| {
            Ok(PartitionSnapshot {
                header: SnapshotHeader {
                    version: FORMAT_VERSION,
                    checkpoint: id,
                    topic: topic.to_owned(),
                    partition,
                    position: run.position,
                    max_event_time: run.pipeline.watermark().max_event_time(),
                    offsets: offsets.clone(),
                    created_at: created_at.clone(),
                    upstream: run.upstream.clone(),
                    marks: run.marks.clone(),
                },
                state: run.pipeline.state()?,
            })
        })
        .collect()
}

/// Commits `offsets`, retrying transient errors (a coordinator moving, a broker
/// restarting). Answers `false`, committing nothing, when the consumer group is
/// rebalancing or has moved on without this member: the loop must poll for the rebalance
/// to go on (a blocking retry holds the whole group up), and what was not committed is
/// replayed by the partitions' next owner, or committed next time.
pub(super) fn commit_unless_rebalancing<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    retry: &Retry,
    metrics: &Metrics,
) -> Result<bool, KafkaError> {
    let committed = retrying(retry, &metrics.retries.with_label_values(&["source"]), "committing offsets", || {
        match consumer.commit(offsets, CommitMode::Sync) {
            Ok(()) => Ok(true),
            Err(error) if group_moved_on(&error) => {
                metrics.source_commit_failures.inc();
                warn!(%error, "offsets not committed: the consumer group is rebalancing");
                Ok(false)
            }
            Err(error) => {
                metrics.source_commit_failures.inc();
                Err(error)
            }
        }
    })?;
    if committed {
        metrics.source_commits.inc();
    }
    Ok(committed)
}

/// Whether a commit failed because the consumer group is rebalancing or has a newer
/// generation (or member epoch) than this member's: not a failure of the job.
fn group_moved_on(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::RebalanceInProgress
                | Code::IllegalGeneration
                | Code::UnknownMemberId
                | Code::StaleMemberEpoch
                | Code::FencedMemberEpoch
                | Code::AssignmentLost
        )
    )
}

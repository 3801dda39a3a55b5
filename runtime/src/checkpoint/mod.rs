//! Checkpoints and savepoints: each owned partition's window state and the source offset it
//! reflects, written to `checkpoint.storage` before the offsets are committed, and read back
//! when a partition is assigned, so state moves with partitions between pods.
//!
//! Which snapshot a partition restores:
//! - at-least-once and idempotent delivery: the newest. Results before it were delivered
//!   before it was written, so resuming at its position loses nothing and repeats little.
//! - exactly-once: the newest whose recorded offsets are the committed ones. A snapshot is
//!   written before its transaction commits; if the process dies between the two, the
//!   transaction is aborted and the committed offsets still match the previous snapshot.
//!   The transaction also commits the checkpoint id as offset metadata ([`CommittedCheckpoint`]):
//!   where the broker returns it, it tells apart snapshots whose offsets are equal.

pub mod format;
pub mod store;

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::future::try_join_all;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::sync::lock;

pub use self::{
    format::{FORMAT_VERSION, PartitionSnapshot, SnapshotHeader},
    store::{CheckpointStore, StoreError},
};

/// The offset metadata an exactly-once checkpoint commits: which checkpoint the offsets
/// belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommittedCheckpoint {
    /// The checkpoint id.
    pub checkpoint: u64,
}

impl CommittedCheckpoint {
    /// The metadata text.
    pub fn to_metadata(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }

    /// Reads metadata written by [`Self::to_metadata`]; `None` for anything else (other
    /// commit metadata, or a broker that does not return it).
    pub fn from_metadata(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// The lineage of checkpoints a start without `--restore-from` continues.
pub const DEFAULT_RUN: &str = "default";

/// Writes checkpoints and savepoints of one runtime instance and picks what to restore.
#[derive(Debug)]
pub struct Checkpointer {
    store: CheckpointStore,
    runtime: Handle,
    run: String,
    restore_from: Option<Savepoint>,
    retained: usize,
    tolerable_failures: u32,
    next_id: AtomicU64,
    /// Checkpoint ids written or found per partition, oldest first, for retention.
    kept: Mutex<BTreeMap<i32, Vec<u64>>>,
    health: Mutex<Health>,
}

/// Consecutive checkpoint failures and the last error.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
}

/// The savepoint an instance starts from: an id in the job's own store, or any savepoint's
/// folder by URL (another job's: a fork or a migration).
#[derive(Debug)]
struct Savepoint {
    /// The store holding it.
    store: Option<CheckpointStore>,
    /// Its id.
    id: String,
}

/// How a checkpointer is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Savepoint to start from, if any: its id, or its folder's URL.
    pub restore_from: Option<String>,
    /// Checkpoints kept per partition.
    pub retained: usize,
    /// Consecutive failures after which the instance reports not ready.
    pub tolerable_failures: u32,
}

impl Checkpointer {
    /// A checkpointer over `store`; async storage calls run on `runtime`. Fails when the
    /// savepoint to restore is a URL no store can be opened for.
    pub fn new(store: CheckpointStore, runtime: Handle, options: Options) -> Result<Self, StoreError> {
        let restore_from = match options.restore_from {
            Some(url) if url.contains("://") => {
                let (store, id) = CheckpointStore::of_savepoint(&url)?;
                Some(Savepoint { store: Some(store), id })
            }
            Some(id) => Some(Savepoint { store: None, id }),
            None => None,
        };
        // The savepoint's id names the lineage its checkpoints continue.
        let run = restore_from.as_ref().map_or_else(|| DEFAULT_RUN.to_owned(), |s| s.id.clone());
        // Ids start at the clock (in µs) so a restarted instance's ids follow its predecessor's.
        let start = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        Ok(Self {
            store,
            runtime,
            run,
            restore_from,
            retained: options.retained.max(1),
            tolerable_failures: options.tolerable_failures.max(1),
            next_id: AtomicU64::new(start),
            kept: Mutex::default(),
            health: Mutex::default(),
        })
    }

    /// A new checkpoint id, larger than every one written or restored before.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// The store, for savepoint paths.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Writes the snapshots of one checkpoint, all partitions concurrently.
    pub fn write(&self, snapshots: &[PartitionSnapshot]) -> Result<(), StoreError> {
        self.runtime.block_on(try_join_all(snapshots.iter().map(|s| self.store.put_checkpoint(&self.run, s))))?;
        let mut kept = lock(&self.kept);
        for snapshot in snapshots {
            kept.entry(snapshot.header.partition).or_default().push(snapshot.header.checkpoint);
        }
        Ok(())
    }

    /// Deletes the oldest checkpoints of `topic` beyond retention. Call after the newest are
    /// committed; failures only leave files behind.
    pub fn collect_garbage(&self, topic: &str) {
        let doomed: Vec<(i32, u64)> = {
            let mut kept = lock(&self.kept);
            kept.iter_mut()
                .flat_map(|(&partition, ids)| {
                    let excess = ids.len().saturating_sub(self.retained);
                    ids.drain(..excess).map(move |id| (partition, id)).collect::<Vec<_>>()
                })
                .collect()
        };
        let deletes = doomed.iter().map(|&(p, id)| self.store.delete_checkpoint(&self.run, topic, p, id));
        if let Err(e) = self.runtime.block_on(try_join_all(deletes)) {
            warn!(error = %e, "deleting old checkpoints failed; they stay until the next try");
        }
    }

    /// Forgets a partition given up to another instance (its new owner collects its garbage).
    pub fn forget(&self, partition: i32) {
        lock(&self.kept).remove(&partition);
    }

    /// The snapshot partition `partition` resumes from, if any: see the module doc.
    /// `committed` holds the group's committed offsets of the topic's partitions.
    pub fn restore(
        &self,
        topic: &str,
        partition: i32,
        committed: &BTreeMap<i32, i64>,
        committed_checkpoint: Option<u64>,
        exactly_once: bool,
    ) -> Result<Option<PartitionSnapshot>, StoreError> {
        self.runtime.block_on(async {
            let ids = self.store.checkpoint_ids(&self.run, topic, partition).await?;
            lock(&self.kept).insert(partition, ids.clone());
            // Retention keeps a few per partition: read them all, newest first.
            let reads = ids.iter().rev().map(|&id| self.store.get_checkpoint(&self.run, topic, partition, id));
            let mut snapshots = try_join_all(reads).await?;
            if let Some(newest) = snapshots.first() {
                self.next_id.fetch_max(newest.header.checkpoint + 1, Ordering::SeqCst);
            }
            let headers: Vec<SnapshotHeader> = snapshots.iter().map(|s| s.header.clone()).collect();
            if let Some(index) = choose(&headers, committed, committed_checkpoint, exactly_once) {
                debug!(
                    partition,
                    checkpoint = headers[index].checkpoint,
                    position = headers[index].position,
                    "restoring"
                );
                return Ok(Some(snapshots.swap_remove(index)));
            }
            if !headers.is_empty() {
                warn!(partition, "no checkpoint matches the committed offsets; starting from the committed offset");
            }
            let Some(Savepoint { store, id }) = &self.restore_from else { return Ok(None) };
            let snapshot = store.as_ref().unwrap_or(&self.store).get_savepoint(id, topic, partition).await?;
            match &snapshot {
                Some(s) => {
                    self.next_id.fetch_max(s.header.checkpoint + 1, Ordering::SeqCst);
                }
                None => warn!(partition, savepoint = id, "the savepoint has no state for this partition"),
            }
            Ok(snapshot)
        })
    }

    /// Records a checkpoint's outcome; returns the health after it.
    pub fn record(&self, outcome: Result<(), String>) -> Health {
        let mut health = lock(&self.health);
        match outcome {
            Ok(()) => *health = Health::default(),
            Err(e) => {
                health.consecutive_failures += 1;
                health.last_error = Some(e);
            }
        }
        health.clone()
    }

    /// `Err(reason)` once `tolerableFailures` checkpoints in a row have failed.
    pub fn readiness(&self) -> Result<(), String> {
        let health = lock(&self.health);
        if health.consecutive_failures >= self.tolerable_failures {
            return Err(format!(
                "{} checkpoints in a row failed, the last with: {}",
                health.consecutive_failures,
                health.last_error.as_deref().unwrap_or("unknown")
            ));
        }
        Ok(())
    }

    /// Writes savepoint `id`: every snapshot, then this instance's manifest.
    pub fn savepoint(&self, id: &str, instance: &str, snapshots: &[PartitionSnapshot]) -> Result<String, StoreError> {
        let manifest = serde_json::json!({
            "id": id,
            "instance": instance,
            "formatVersion": FORMAT_VERSION,
            "createdAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "partitions": snapshots.iter().map(|s| serde_json::json!({
                "topic": s.header.topic, "partition": s.header.partition, "position": s.header.position,
            })).collect::<Vec<_>>(),
        });
        self.runtime.block_on(async {
            try_join_all(snapshots.iter().map(|s| self.store.put_savepoint(id, s))).await?;
            self.store.put_manifest(id, instance, manifest.to_string().as_bytes()).await
        })?;
        Ok(self.store.savepoint_url(id))
    }
}

/// Index into `headers` (newest first) of the snapshot to restore, if one fits. Exactly-once
/// needs every recorded offset to equal the committed one. Among equals (a checkpoint that
/// moved no offset, e.g. idle windows closing) the one `committed_checkpoint` names is
/// taken; without it (a broker that drops commit metadata) the older, as its transaction
/// is known to have committed.
pub fn choose(
    headers: &[SnapshotHeader],
    committed: &BTreeMap<i32, i64>,
    committed_checkpoint: Option<u64>,
    exactly_once: bool,
) -> Option<usize> {
    if !exactly_once {
        return (!headers.is_empty()).then_some(0);
    }
    let matches = |h: &SnapshotHeader| {
        committed.get(&h.partition) == Some(&h.position)
            && h.offsets.iter().all(|(p, o)| committed.get(p).is_none_or(|c| c == o))
    };
    let named = committed_checkpoint.and_then(|id| headers.iter().position(|h| h.checkpoint == id));
    if let Some(named) = named.filter(|&i| matches(&headers[i])) {
        return Some(named);
    }
    let first = headers.iter().position(matches)?;
    let mut chosen = first;
    while headers.get(chosen + 1).is_some_and(|older| matches(older) && older.offsets == headers[first].offsets) {
        chosen += 1;
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(checkpoint: u64, partition: i32, offsets: &[(i32, i64)]) -> SnapshotHeader {
        let offsets: BTreeMap<i32, i64> = offsets.iter().copied().collect();
        SnapshotHeader {
            version: FORMAT_VERSION,
            checkpoint,
            topic: "t".into(),
            partition,
            position: offsets[&partition],
            max_event_time: None,
            offsets,
            created_at: String::new(),
            upstream: BTreeMap::new(),
            marks: BTreeMap::new(),
        }
    }

    #[test]
    fn at_least_once_restores_the_newest() {
        let headers = [header(3, 0, &[(0, 30)]), header(2, 0, &[(0, 20)])];
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20)]), None, false), Some(0));
        assert_eq!(choose(&[], &BTreeMap::new(), None, false), None);
    }

    #[test]
    fn exactly_once_restores_the_snapshot_of_the_committed_offsets() {
        // Checkpoint 3 was written but its transaction never committed.
        let headers = [header(3, 0, &[(0, 30), (1, 12)]), header(2, 0, &[(0, 20), (1, 10)])];
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20), (1, 10)]), None, true), Some(1));
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 30), (1, 12)]), None, true), Some(0));
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 25)]), None, true), None, "no snapshot of offset 25");
    }

    #[test]
    fn exactly_once_tells_equal_positions_apart_by_the_other_partitions() {
        // Partition 0 did not move between checkpoints 2 and 3; partition 1 did.
        let headers = [header(3, 0, &[(0, 20), (1, 15)]), header(2, 0, &[(0, 20), (1, 10)])];
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20), (1, 15)]), None, true), Some(0));
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20), (1, 10)]), None, true), Some(1));
    }

    #[test]
    fn exactly_once_takes_the_older_of_indistinguishable_snapshots() {
        let headers = [header(3, 0, &[(0, 20)]), header(2, 0, &[(0, 20)]), header(1, 0, &[(0, 5)])];
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20)]), None, true), Some(1));
    }

    #[test]
    fn exactly_once_takes_the_snapshot_the_commit_names_when_offsets_are_equal() {
        let headers = [header(3, 0, &[(0, 20)]), header(2, 0, &[(0, 20)]), header(1, 0, &[(0, 5)])];
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20)]), Some(3), true), Some(0), "its transaction committed");
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20)]), Some(2), true), Some(1));
        // A name that does not fit the offsets (metadata of another lineage) is not trusted.
        assert_eq!(choose(&headers, &BTreeMap::from([(0, 20)]), Some(1), true), Some(1));
        let metadata = CommittedCheckpoint { checkpoint: 3 }.to_metadata();
        assert_eq!(CommittedCheckpoint::from_metadata(&metadata), Some(CommittedCheckpoint { checkpoint: 3 }));
        assert_eq!(CommittedCheckpoint::from_metadata(r#"{"v":1,"position":3}"#), None);
    }
}

//! What the admin server and the job loop share: metrics, the stop flag, the `/status`
//! document, readiness and savepoint requests.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicI64, Ordering},
};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// State shared by the admin server and the job loop.
#[derive(Debug)]
pub struct Shared {
    /// The runtime's metrics.
    pub metrics: Metrics,
    /// Set to stop the loop: it drains, checkpoints or commits, and returns.
    pub shutdown: AtomicBool,
    pub(super) last_poll_ms: AtomicI64,
    pub(super) status: Mutex<Status>,
    /// Why the instance is not ready beyond the basics (checkpoints failing), if it is not.
    pub(super) degraded: Mutex<Option<String>>,
    pub(super) savepoints: Mutex<Vec<SavepointRequest>>,
}

/// The `/status` document.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Source topic.
    pub topic: String,
    /// Owned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// When offsets were last committed, RFC 3339.
    pub last_commit: Option<String>,
    /// The last durable checkpoint.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// The last savepoint this instance took.
    pub last_savepoint: Option<Savepoint>,
    /// Consuming stopped after a stop-with-savepoint.
    pub stopped: bool,
}

/// One owned partition in `/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: i32,
    /// Next offset to process.
    pub position: i64,
    /// Offset last committed.
    pub committed: Option<i64>,
    /// The watermark, epoch ms.
    pub watermark: Option<i64>,
    /// (key, window) aggregates held.
    pub open_aggregates: usize,
}

/// A durable checkpoint in `/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Checkpoint id.
    pub id: u64,
    /// When it became durable, RFC 3339.
    pub completed_at: String,
    /// Partitions it covered.
    pub partitions: usize,
}

/// A savepoint: what `POST /savepoint` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Savepoint {
    /// Savepoint id, for `--restore-from`.
    pub id: String,
    /// Its folder in the checkpoint storage.
    pub path: String,
    /// When it became durable, RFC 3339.
    pub completed_at: String,
    /// Whether consuming stopped after it.
    pub stopped: bool,
}

/// A savepoint asked for over HTTP, answered by the job loop.
#[derive(Debug)]
pub struct SavepointRequest {
    /// The id to use (instances of one job share it); generated when absent.
    pub id: Option<String>,
    /// Stop consuming after it.
    pub stop: bool,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Savepoint, String>>,
}

impl Shared {
    /// State for a job whose metrics are `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            shutdown: AtomicBool::new(false),
            last_poll_ms: AtomicI64::new(0),
            status: Mutex::default(),
            degraded: Mutex::default(),
            savepoints: Mutex::default(),
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// `Ok` when ready: owns at least one partition, polled within the last 10 s and
    /// checkpoints are not failing beyond tolerance; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = lock(&self.degraded).clone() {
            return Err(reason);
        }
        if now_ms() - self.last_poll_ms.load(Ordering::Relaxed) >= 10_000 {
            return Err("not consuming: the job loop has not polled for 10 s".into());
        }
        if lock(&self.status).partitions.is_empty() {
            return Err("no partitions assigned yet".into());
        }
        Ok(())
    }

    /// Queues a savepoint request for the job loop.
    pub fn request_savepoint(&self, request: SavepointRequest) {
        lock(&self.savepoints).push(request);
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

//! What the admin server and the job loop share: metrics, the stop flag, the `/status`
//! document, readiness, and the savepoint and resume requests the loop answers.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicI64, Ordering},
};

use tokio::sync::oneshot;
pub use weir_admin_api::{Assigned, CheckpointStatus, PartitionStatus, Resumed, Savepoint, Status};

use crate::{
    assignment::{AssignmentMode, Slot},
    metrics::Metrics,
};

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
    /// Admin requests in arrival order: a `/resume` sent after a `/savepoint?stop=true` must
    /// not be answered before it.
    pub(super) requests: Mutex<Vec<AdminRequest>>,
}

/// A request from the admin server, answered by the job loop (which owns the consumer).
#[derive(Debug)]
pub(crate) enum AdminRequest {
    /// `POST /savepoint`.
    Savepoint(SavepointRequest),
    /// `POST /resume`.
    Resume(ResumeRequest),
    /// `POST /assign` or `POST /release`.
    Assign(AssignRequest),
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

/// A `POST /resume`: undo a stop-with-savepoint (a rollout was aborted).
#[derive(Debug)]
pub struct ResumeRequest {
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Resumed, String>>,
}

/// An assignment from the operator: own slot `slot`'s partitions, or (`None`) none.
#[derive(Debug)]
pub struct AssignRequest {
    /// The slot to hold.
    pub slot: Option<Slot>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Assigned, String>>,
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
            requests: Mutex::default(),
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// `Ok` when ready: owns at least one partition, polled within the last 10 s and
    /// checkpoints are not failing beyond tolerance; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(error) = lock(&self.status).error.clone() {
            return Err(format!("stopping on a fatal error: {error}"));
        }
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

    /// Records the fatal error the instance stops on, for `/readyz` and `/status`.
    pub fn fail(&self, error: &str) {
        lock(&self.status).error = Some(error.to_owned());
    }

    /// Queues a savepoint request for the job loop.
    pub fn request_savepoint(&self, request: SavepointRequest) {
        lock(&self.requests).push(AdminRequest::Savepoint(request));
    }

    /// Records who assigns partitions; before the admin server starts, so that it refuses
    /// assignments in group mode from the first request.
    pub fn set_assignment_mode(&self, mode: AssignmentMode) {
        lock(&self.status).assignment_mode = mode;
    }

    /// Queues an assignment for the job loop.
    pub fn request_assign(&self, request: AssignRequest) {
        lock(&self.requests).push(AdminRequest::Assign(request));
    }

    /// Queues a resume request for the job loop.
    pub fn request_resume(&self, request: ResumeRequest) {
        lock(&self.requests).push(AdminRequest::Resume(request));
    }

    /// The queued requests, oldest first, leaving the queue empty.
    pub(crate) fn take_requests(&self) -> Vec<AdminRequest> {
        std::mem::take(&mut *lock(&self.requests))
    }
}

pub(super) use crate::sync::lock;

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn savepoint_answer_tells_which_partitions_it_covers() {
        let savepoint = Savepoint {
            id: "sp-1".into(),
            path: "file:///c/g/savepoints/sp-1".into(),
            completed_at: "2024-01-01T00:00:00.000Z".into(),
            stopped: true,
            topic: "payments".into(),
            partitions: vec![0, 2],
            partition_count: 3,
        };
        assert_eq!(
            serde_json::to_value(&savepoint).unwrap(),
            json!({
                "id": "sp-1",
                "path": "file:///c/g/savepoints/sp-1",
                "completedAt": "2024-01-01T00:00:00.000Z",
                "stopped": true,
                "topic": "payments",
                "partitions": [0, 2],
                "partitionCount": 3,
            })
        );
    }

    #[test]
    fn status_tells_the_partition_count() {
        let status = Status { topic: "payments".into(), partition_count: 4, ..Status::default() };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value["partitionCount"], 4);
        assert_eq!(value["stopped"], false);
        assert_eq!(serde_json::to_value(Resumed { stopped: false }).unwrap(), json!({"stopped": false}));
    }

    #[test]
    fn requests_are_served_in_arrival_order() {
        let shared = Shared::new(Metrics::new("t").unwrap());
        let (savepoint_reply, _a) = oneshot::channel();
        let (resume_reply, _b) = oneshot::channel();
        shared.request_savepoint(SavepointRequest { id: None, stop: true, reply: savepoint_reply });
        shared.request_resume(ResumeRequest { reply: resume_reply });
        let requests = shared.take_requests();
        assert!(matches!(requests.as_slice(), [AdminRequest::Savepoint(s), AdminRequest::Resume(_)] if s.stop));
        assert!(shared.take_requests().is_empty());
    }
}

//! A partition's event-time progress, kept in the Kafka commit metadata when a job runs
//! without `checkpoint.storage`, so a restarted or reassigned partition drops the replayed
//! records of windows it already emitted. (Apache Kafka returns commit metadata; some
//! Kafka-protocol brokers drop it, and then such a job may repeat part of a window.)

use serde::{Deserialize, Serialize};

/// A partition's progress at a commit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Format version.
    pub v: u32,
    /// Newest event time seen.
    pub max_event_time: Option<i64>,
    /// Next offset to process.
    pub position: i64,
    /// The offset committed with it.
    pub committed: i64,
}

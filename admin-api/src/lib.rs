//! The admin protocol of a Weir runtime pod, written once for both sides: the runtime
//! serves these routes and answers with these types; the operator (and any tool) calls them
//! through [`client::AdminClient`] and reads the same types back.
//!
//! Answers are read leniently: a field a runtime of another release does not send takes its
//! default, so an operator can talk to the pods it is about to upgrade.

pub mod client;

use serde::{Deserialize, Serialize};

/// The routes. Every one but `/metrics`, `/healthz` and `/readyz` needs the job's token
/// (`Authorization: Bearer <token>`) when the runtime was given one.
pub mod routes {
    /// `GET`: Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// `GET`: the process is alive.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: the instance consumes and its checkpoints succeed.
    pub const READYZ: &str = "/readyz";
    /// `GET`: the [`super::Status`] document.
    pub const STATUS: &str = "/status";
    /// `POST ?id=ID&stop=true`: a [`super::Savepoint`].
    pub const SAVEPOINT: &str = "/savepoint";
    /// `POST`: consume again after a stop-with-savepoint; answers [`super::Resumed`].
    pub const RESUME: &str = "/resume";
    /// `POST ?slot=I&slots=N`: own slot I of N; answers [`super::Assigned`].
    pub const ASSIGN: &str = "/assign";
    /// `POST`: own nothing; answers [`super::Assigned`].
    pub const RELEASE: &str = "/release";
}

/// Who assigns partitions to an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentMode {
    /// The Kafka consumer group: instances join and rebalance among themselves.
    #[default]
    Group,
    /// The operator, over `POST /assign` and `POST /release`.
    Operator,
}

/// Slot `slot` of `slots`: the instance owns every partition `p` with `p % slots == slot`,
/// of the source topic and, in a repartitioned job, of the internal topic too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot {
    /// This instance's slot.
    pub slot: u32,
    /// How many slots the job has (its pods).
    pub slots: u32,
}

/// A slot that owns nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("slot {slot} of {slots} does not exist: slots are numbered from 0 to slots - 1")]
pub struct InvalidSlot {
    slot: u32,
    slots: u32,
}

impl Slot {
    /// A slot, when `slot < slots`.
    pub fn new(slot: u32, slots: u32) -> Result<Self, InvalidSlot> {
        if slot < slots { Ok(Self { slot, slots }) } else { Err(InvalidSlot { slot, slots }) }
    }

    /// Whether the slot owns `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.slots == self.slot)
    }

    /// The partitions the slot owns of a topic with `count` partitions, ascending.
    pub fn partitions(&self, count: usize) -> Vec<i32> {
        (0..i32::try_from(count).unwrap_or(i32::MAX)).filter(|&p| self.owns(p)).collect()
    }

    /// The `POST /assign` path that gives this slot.
    pub fn assign_path(&self) -> String {
        format!("{}?slot={}&slots={}", routes::ASSIGN, self.slot, self.slots)
    }
}

/// The `/status` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    /// Source topic.
    pub topic: String,
    /// The source topic's partition count when the job started: more pods than this idle.
    pub partition_count: usize,
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
    /// Who assigns partitions (runtimes from before operator assignment consume in a group).
    pub assignment_mode: AssignmentMode,
    /// The slot the operator gave (operator mode), if any.
    pub assignment: Option<Slot>,
    /// The fatal error the instance is stopping on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One owned partition in `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CheckpointStatus {
    /// Checkpoint id.
    pub id: u64,
    /// When it became durable, RFC 3339.
    pub completed_at: String,
    /// Partitions it covered.
    pub partitions: usize,
}

/// A savepoint: what `POST /savepoint` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Savepoint {
    /// Savepoint id, for `--restore-from`.
    pub id: String,
    /// Its folder in the checkpoint storage.
    pub path: String,
    /// When it became durable, RFC 3339.
    pub completed_at: String,
    /// Whether consuming stopped after it.
    pub stopped: bool,
    /// Source topic.
    pub topic: String,
    /// The partitions whose state it holds, sorted: the savepoints of all instances of a job
    /// must together cover `0..partition_count` before new pods restore from them.
    pub partitions: Vec<i32>,
    /// The source topic's partition count as the instance knows it (from its start); 0 from
    /// a runtime that does not report it.
    pub partition_count: usize,
}

/// A `POST /savepoint` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavepointQuery {
    /// The id to use (instances of one job share it); the runtime makes one up when absent.
    pub id: Option<String>,
    /// Stop consuming after it.
    pub stop: bool,
}

impl SavepointQuery {
    /// The request's path.
    pub fn path(&self) -> String {
        let id = self.id.as_deref().map(|id| format!("&id={id}")).unwrap_or_default();
        format!("{}?stop={}{id}", routes::SAVEPOINT, self.stop)
    }

    /// Why the id cannot name a savepoint (it becomes a folder name), if it cannot.
    pub fn invalid_id(&self) -> Option<&'static str> {
        let id = self.id.as_deref()?;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        (id.is_empty() || !id.chars().all(allowed)).then_some("id: letters, digits, '-', '_' and '.' only")
    }
}

/// What `POST /resume` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resumed {
    /// Always false once answered: the instance consumes.
    pub stopped: bool,
}

/// What `POST /assign` and `POST /release` answer: the slot now held (both `null` after a
/// release).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Assigned {
    /// The slot.
    pub slot: Option<u32>,
    /// Of how many.
    pub slots: Option<u32>,
}

impl From<Option<Slot>> for Assigned {
    fn from(slot: Option<Slot>) -> Self {
        Self { slot: slot.map(|s| s.slot), slots: slot.map(|s| s.slots) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_round_trips_and_an_older_runtimes_reads_with_defaults() {
        let status = Status {
            topic: "payments".into(),
            partition_count: 3,
            partitions: vec![PartitionStatus { partition: 1, position: 7, committed: Some(5), ..Default::default() }],
            assignment_mode: AssignmentMode::Operator,
            assignment: Some(Slot { slot: 1, slots: 3 }),
            ..Default::default()
        };
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""assignmentMode":"operator""#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), status);
        let older: Status = serde_json::from_str(r#"{"topic":"payments","stopped":true}"#).unwrap();
        assert_eq!(older.assignment_mode, AssignmentMode::Group, "no mode: a consumer group");
        assert!(older.stopped);
    }

    #[test]
    fn request_paths_are_what_the_runtime_parses() {
        assert_eq!(Slot { slot: 2, slots: 3 }.assign_path(), "/assign?slot=2&slots=3");
        let query = SavepointQuery { id: Some("sp-1".into()), stop: true };
        assert_eq!(query.path(), "/savepoint?stop=true&id=sp-1");
        assert_eq!(SavepointQuery::default().path(), "/savepoint?stop=false");
        assert!(query.invalid_id().is_none());
        assert!(SavepointQuery { id: Some("../x".into()), stop: false }.invalid_id().is_some());
        assert!(SavepointQuery { id: Some(String::new()), stop: false }.invalid_id().is_some());
    }

    #[test]
    fn slots_split_partitions_round_robin_and_cover_them_once() {
        let slots: Vec<Slot> = (0..3).map(|s| Slot::new(s, 3).unwrap()).collect();
        assert_eq!(slots[0].partitions(7), vec![0, 3, 6]);
        assert_eq!(slots[1].partitions(7), vec![1, 4]);
        assert_eq!(slots[2].partitions(7), vec![2, 5]);
        for partition in 0..7 {
            assert_eq!(slots.iter().filter(|s| s.owns(partition)).count(), 1, "partition {partition}");
        }
        assert!(!slots[0].owns(-1));
    }

    #[test]
    fn a_slot_past_the_count_is_refused() {
        assert_eq!(Slot::new(2, 2), Err(InvalidSlot { slot: 2, slots: 2 }));
        assert!(Slot::new(0, 0).is_err());
        assert!(Slot::new(1, 2).is_ok());
    }
}

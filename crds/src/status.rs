//! What the operator reports about a StreamJob.

/// The condition and time types of the status: metav1's, as every controller's are.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The observed state of a StreamJob, written only by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// Where the job is in its life: `Pending`, `Deploying`, `Running`, `Checkpointing`,
    /// `Upgrading`, `Rescaling`, `Suspended` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Runtime pods that exist (read by the `/scale` subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Runtime pods that are ready: assigned partitions and consuming.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the runtime pods (read by the `/scale` subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`, and kstatus's `Reconciling` and `Stalled`
    /// (for Flux, Argo CD and `kubectl wait`), each with `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The most recent completed savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointInfo>,
    /// Recent savepoints, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoint_history: Vec<SavepointInfo>,
    /// Total consumer lag of the job's group (records), summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,
}

/// The phase of a StreamJob.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing deployed yet.
    Pending,
    /// Pods are starting.
    Deploying,
    /// All pods are consuming.
    Running,
    /// A savepoint is being taken.
    Checkpointing,
    /// Pods are being replaced with a new spec.
    Upgrading,
    /// Parallelism is changing.
    Rescaling,
    /// Stopped on request, state kept in a savepoint.
    Suspended,
    /// Cannot run; the `Ready` condition says why.
    Failed,
}

/// A savepoint: a named checkpoint kept until deleted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    /// Savepoint id, as passed to `weir-runtime --restore-from`.
    pub id: String,
    /// Where the savepoint's manifest is stored.
    pub path: String,
    /// When the savepoint became durable.
    pub completed_at: Time,
    /// Why it was taken: `upgrade`, `rescale`, `suspend`, `delete` or `manual`.
    pub reason: String,
}

/// Conditions are a map keyed by `type`, so server-side apply merges them per type.
fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

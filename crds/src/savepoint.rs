//! The `StreamJobSavepoint` custom resource: one savepoint of a StreamJob, as its own object.
//! A user creates one to take a savepoint now; the operator creates one for every savepoint
//! it takes itself, so `kubectl get sjsp` is a job's history.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Time;

/// A savepoint of a StreamJob: the state and offsets of all its pods at one moment, kept in
/// the job's checkpoint storage until deleted. Create one to take a savepoint now (or name
/// an existing one with `path` to adopt it); a job starts from one with
/// `spec.restoreFrom.savepoint`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJobSavepoint",
    plural = "streamjobsavepoints",
    shortname = "sjsp",
    category = "weir",
    namespaced,
    status = "StreamJobSavepointStatus",
    printcolumn = r#"{"name": "Job", "type": "string", "jsonPath": ".spec.jobRef.name"}"#,
    printcolumn = r#"{"name": "State", "type": "string", "jsonPath": ".status.state"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Path", "type": "string", "jsonPath": ".status.path", "priority": 1}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.jobRef == oldSelf.jobRef")
    .message("jobRef cannot change: create another savepoint").field_path(".jobRef"))]
#[x_kube(validation = Rule::new("has(self.path) == has(oldSelf.path) && (!has(self.path) || self.path == oldSelf.path)")
    .message("path cannot change: create another savepoint").field_path(".path"))]
pub struct StreamJobSavepointSpec {
    /// The StreamJob (in this namespace) the savepoint is of.
    pub job_ref: JobReference,
    /// The URL of an existing savepoint to adopt (its directory under the job's
    /// `checkpoint.storage`, as `status.path` shows it) instead of taking one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub path: Option<String>,
    /// Remove the savepoint's files from storage when this resource is deleted.
    #[serde(default)]
    pub dispose_on_delete: bool,
}

/// A StreamJob, by name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct JobReference {
    /// The StreamJob's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a savepoint is, written only by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSavepointStatus {
    /// `Pending` (waiting for the job), `InProgress`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SavepointState>,
    /// Why it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SavepointReason>,
    /// Where it is stored: what `restoreFrom.path` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When it became durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Partitions of the source topic it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Why it failed, or why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `metadata.generation` of the StreamJob it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_generation: Option<i64>,
}

/// Where a savepoint is in its life.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavepointState {
    /// Waiting for the job to run (or for a rollout in flight to settle).
    Pending,
    /// The pods are taking it.
    InProgress,
    /// Durable: a job can restore it.
    Completed,
    /// Could not be taken: `error` says why.
    Failed,
}

/// Why a savepoint was taken.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SavepointReason {
    /// A user asked for it.
    Manual,
    /// Before an upgrade (or the rollback of one).
    Upgrade,
    /// Before a rescale.
    Rescale,
    /// Before the job was suspended.
    Suspend,
    /// Before the job was deleted.
    Delete,
    /// On `savepoints.interval`.
    Periodic,
}

impl SavepointReason {
    /// The name used in savepoint ids and `status.savepointHistory`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Upgrade => "upgrade",
            Self::Rescale => "rescale",
            Self::Suspend => "suspend",
            Self::Delete => "delete",
            Self::Periodic => "periodic",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Manual, Self::Upgrade, Self::Rescale, Self::Suspend, Self::Delete, Self::Periodic]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

impl StreamJobSavepoint {
    /// Whether the operator still has to take (or adopt) it.
    pub fn is_open(&self) -> bool {
        matches!(
            self.status.as_ref().and_then(|s| s.state),
            None | Some(SavepointState::Pending | SavepointState::InProgress)
        )
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn the_resource_is_namespaced_with_a_short_name_and_a_status() {
        let crd = StreamJobSavepoint::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sjsp".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Job", "State", "Reason", "Age", "Path"]);
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in [SavepointReason::Manual, SavepointReason::Upgrade, SavepointReason::Periodic] {
            assert_eq!(SavepointReason::from_name(reason.name()), Some(reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.name());
        }
        assert_eq!(SavepointReason::from_name("whim"), None);
    }

    #[test]
    fn a_savepoint_without_status_or_in_flight_is_open() {
        let mut savepoint = StreamJobSavepoint::new(
            "sp",
            StreamJobSavepointSpec { job_ref: JobReference { name: "j".into() }, path: None, dispose_on_delete: false },
        );
        assert!(savepoint.is_open());
        savepoint.status =
            Some(StreamJobSavepointStatus { state: Some(SavepointState::InProgress), ..Default::default() });
        assert!(savepoint.is_open());
        savepoint.status =
            Some(StreamJobSavepointStatus { state: Some(SavepointState::Completed), ..Default::default() });
        assert!(!savepoint.is_open());
    }
}

//! The `StreamJob` custom resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DeadLetter, Duration, Sink, Source, StreamJobStatus, pipeline::Step};

/// A Kafka stream-processing job: read a topic, run a pipeline of filters, projections and
/// windowed aggregates on event time, and write the results to a topic. Weir runs it on
/// `parallelism` pods, checkpoints its state, and upgrades and rescales it through savepoints.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    category = "weir",
    namespaced,
    status = "StreamJobStatus",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Parallelism", "type": "integer", "jsonPath": ".spec.parallelism"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Lag", "type": "integer", "jsonPath": ".status.consumerLag"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sink.kafka.delivery != 'exactlyOnce' || has(self.checkpoint)")
    .message("exactlyOnce delivery needs checkpoint.storage: transactions commit with checkpoints")
    .field_path(".checkpoint"))]
#[x_kube(validation = Rule::new("!has(self.upgradeMode) || self.upgradeMode == 'stateless' || has(self.checkpoint)")
    .message("upgradeMode savepoint and lastState need checkpoint.storage")
    .field_path(".checkpoint"))]
#[x_kube(validation = Rule::new("!has(self.savepoints) || has(self.checkpoint)")
    .message("savepoints need checkpoint.storage")
    .field_path(".savepoints"))]
#[x_kube(validation = Rule::new("!has(self.restoreFrom) || has(self.checkpoint)")
    .message("restoreFrom needs checkpoint.storage: the job's checkpoints continue the savepoint")
    .field_path(".restoreFrom"))]
#[x_kube(validation = Rule::new(
    "has(self.restoreFrom) == has(oldSelf.restoreFrom) && (!has(self.restoreFrom) || self.restoreFrom == oldSelf.restoreFrom)"
).message("restoreFrom is read when the job is first deployed and cannot change afterwards: create a new job to start from another savepoint")
    .field_path(".restoreFrom"))]
pub struct StreamJobSpec {
    /// Runtime container image. Defaults to the runtime image the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Number of runtime pods. Each pod owns some of the source topic's partitions, so more
    /// pods than partitions leaves pods idle. The `/scale` subresource (`kubectl scale`, KEDA)
    /// writes this field; with `autoscaling` set, leave it out of GitOps manifests.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1024))]
    pub parallelism: i32,
    /// Where records come from.
    pub source: Source,
    /// Steps applied in order to each record: `filter`, `select`, `dedupe`, `keyBy`, `window`, `aggregate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub pipeline: Vec<Step>,
    /// Where results go.
    pub sink: Sink,
    /// Where undecodable (and optionally late) records go. Without it they are only counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// Periodic durable snapshots of state and offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// How state crosses an upgrade or rescale: `savepoint` (stop with a savepoint, restore it),
    /// `lastState` (restore the latest checkpoint) or `stateless` (start fresh from committed
    /// offsets). Defaults to `savepoint` when `checkpoint` is set, `stateless` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_mode: Option<UpgradeMode>,
    /// Time the new pods of an upgrade or rescale have to become ready. Past it, the job is
    /// rolled back to the previous spec, restoring the savepoint taken before the change.
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: Duration,
    /// Scale `parallelism` on consumer lag with KEDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Take a savepoint and stop all pods; setting it back to false restores the savepoint.
    #[serde(default)]
    pub suspend: bool,
    /// CPU and memory of each runtime pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides of the runtime pods' template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
    /// Most window state one pod may hold, as a quantity (`256Mi`, `2Gi`). Past it the pod
    /// stops with an error naming the budget, shown on the job, rather than being killed
    /// for memory with nothing said. Defaults to half the memory limit in `resources`;
    /// without either, state is not bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,15}(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub state_budget: Option<String>,
    /// A savepoint the job starts from when it is first deployed: a StreamJobSavepoint of
    /// this namespace, or any savepoint's `path` (another job's, in another namespace or
    /// cluster, with access to its storage). Read once, so it cannot change afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFrom>,
    /// Savepoints the operator takes on its own (periodic ones) and how many of its
    /// savepoints are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoints: Option<SavepointPolicy>,
}

/// Periodic savepoints and the retention of the operator's savepoints (periodic and those of
/// rollouts; a user's own StreamJobSavepoints are left alone). Retention deletes the
/// StreamJobSavepoints, never the one the job's pods restore from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointPolicy {
    /// Take a savepoint this often while the job runs steadily, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Keep at most this many of the operator's savepoints of the job, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_count: Option<i32>,
    /// Delete the operator's savepoints older than this, e.g. `168h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Remove a savepoint's files when its StreamJobSavepoint is deleted (by retention or by
    /// hand): `disposeOnDelete` on the ones the operator records.
    #[serde(default)]
    pub dispose_on_delete: bool,
}

/// Where a job's first pods take their state and offsets from.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.savepoint) != has(self.path)")
    .message("name either a savepoint or a path"))]
pub struct RestoreFrom {
    /// A completed StreamJobSavepoint in the job's namespace, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub savepoint: Option<String>,
    /// A savepoint's folder, as a StreamJobSavepoint's `status.path` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub path: Option<String>,
}

impl StreamJobSpec {
    /// The state budget in bytes: `stateBudget`, else half the memory limit.
    pub fn state_budget_bytes(&self) -> Option<u64> {
        if let Some(budget) = &self.state_budget {
            return quantity_bytes(budget);
        }
        let limit = self.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        quantity_bytes(&limit.0).map(|bytes| bytes / 2)
    }
}

/// Bytes of a Kubernetes quantity written as digits and an optional binary or decimal
/// suffix (`512Mi`, `1G`); `None` for other forms (exponents, fractions, milli).
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}

fn one() -> i32 {
    1
}

/// Durable snapshots of the job's state and the source offsets they reflect.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Time between checkpoints, e.g. `30s`.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,
    /// Object-store URL of the checkpoint folder: `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// or `file:///path` on a mounted volume.
    #[schemars(regex(pattern = r"^(file|s3|gs|az|abfs|abfss)://.+"))]
    pub storage: String,
    /// Completed checkpoints kept per partition; older ones are deleted. Savepoints are kept
    /// until deleted by hand.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1, max = 100))]
    pub retained: i32,
    /// Consecutive failed checkpoints after which a pod reports not ready.
    #[serde(default = "default_tolerable_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub tolerable_failures: i32,
}

fn default_checkpoint_interval() -> Duration {
    std::time::Duration::from_secs(30).into()
}

fn default_rollout_timeout() -> Duration {
    std::time::Duration::from_secs(300).into()
}

fn default_retained() -> i32 {
    3
}

fn default_tolerable_failures() -> i32 {
    3
}

/// How state crosses an upgrade or rescale.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeMode {
    /// New pods start without state, from the committed offsets.
    Stateless,
    /// Old pods stop with a savepoint; new pods restore it. Nothing lost, nothing repeated.
    Savepoint,
    /// New pods restore the latest checkpoint; the old pods are not asked for a savepoint.
    LastState,
}

/// KEDA autoscaling of `parallelism` on the job's consumer lag.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("minReplicas must not exceed maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.minReplicas > 0 || (has(self.trigger) && self.trigger == 'kafka')")
        .message(MIN_ZERO_NEEDS_KAFKA).field_path(".minReplicas"),
    validation = Rule::new("!has(self.scaleDownStabilization) || duration(self.scaleDownStabilization) <= duration('1h')")
        .message(STABILIZATION_TOO_LONG).field_path(".scaleDownStabilization"),
)]
pub struct Autoscaling {
    /// Fewest pods; `0` lets KEDA stop the job when there is no lag (with `trigger: kafka`:
    /// a job with no pods has no `weir_consumer_lag` for Prometheus to read).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1024))]
    pub min_replicas: i32,
    /// Most pods. More pods than source partitions is clamped to the partition count.
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,
    /// Consumer lag (records) each pod is expected to handle; KEDA asks for
    /// `ceil(total lag / lagThreshold)` pods.
    #[schemars(range(min = 1, max = 1_000_000_000_000_i64))]
    pub lag_threshold: i64,
    /// Lag above which a job scaled to zero is started again.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000_000_000_i64))]
    pub activation_lag_threshold: i64,
    /// Where KEDA reads the lag: `prometheus` (the pods' `weir_consumer_lag`, through a
    /// Prometheus server) or `kafka` (KEDA's Kafka scaler asks the brokers for the consumer
    /// group's lag; no Prometheus needed, but not for sources with `security`).
    #[serde(default)]
    pub trigger: LagTrigger,
    /// Prometheus server KEDA queries, e.g. `http://prometheus.monitoring:9090`. Defaults to
    /// the operator's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub prometheus_address: Option<String>,
    /// How long the lag must ask for fewer pods before the job gets them (the HPA's
    /// scale-down stabilization window, and KEDA's cooldown before stopping a job with
    /// `minReplicas: 0`). Scale-ups are not delayed. At most 1h.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,
}

/// Why `minReplicas: 0` needs the Kafka trigger.
pub const MIN_ZERO_NEEDS_KAFKA: &str = "minReplicas 0 needs trigger kafka: a job with no pods reports no \
                                        weir_consumer_lag, so the prometheus trigger could never start it again";

/// Why a longer `scaleDownStabilization` is refused.
pub const STABILIZATION_TOO_LONG: &str = "must be at most 1h, the HPA's limit";

/// The HPA's own default scale-down stabilization window.
fn default_scale_down_stabilization() -> Duration {
    std::time::Duration::from_secs(300).into()
}

/// The KEDA scaler that reads a job's lag.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LagTrigger {
    /// KEDA's Prometheus scaler on `sum(weir_consumer_lag)`.
    #[default]
    Prometheus,
    /// KEDA's Kafka scaler on the consumer group's lag.
    Kafka,
}

/// The parts of the runtime pods' template a StreamJob may set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra environment variables of the runtime container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Service account of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra labels of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl StreamJobSpec {
    /// The consumer group of job `name` in `namespace`: `source.kafka.groupId`, or
    /// `<groupIdPrefix><namespace>.<name>`. The runtime consumes in it; KEDA's Kafka scaler
    /// reads its lag.
    pub fn group_id(&self, namespace: &str, name: &str) -> String {
        let kafka = &self.source.kafka;
        kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("{}{namespace}.{name}", kafka.group_id_prefix.as_deref().unwrap_or_default()))
    }

    /// The upgrade mode in effect: the one set, or the default for the checkpoint setting.
    pub fn effective_upgrade_mode(&self) -> UpgradeMode {
        self.upgrade_mode.unwrap_or(if self.checkpoint.is_some() {
            UpgradeMode::Savepoint
        } else {
            UpgradeMode::Stateless
        })
    }
}

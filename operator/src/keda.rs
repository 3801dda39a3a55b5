//! The part of KEDA's `ScaledObject` (`keda.sh/v1alpha1`) the operator renders, typed after
//! KEDA's own CRD schema so a mistake is a compile error rather than a rejected apply.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What KEDA scales, on which triggers, and between which bounds.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(group = "keda.sh", version = "v1alpha1", kind = "ScaledObject", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    /// The object whose `/scale` subresource KEDA writes.
    pub scale_target_ref: ScaleTargetRef,
    /// Seconds between trigger queries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    /// Seconds after the last active trigger before scaling to `minReplicaCount` (when 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    /// Fewest replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    /// Most replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    /// Metrics that drive the replica count.
    pub triggers: Vec<ScaleTrigger>,
    /// Settings of the HPA KEDA creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advanced: Option<Advanced>,
}

/// KEDA's `advanced` block: the part that shapes the HPA.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    /// Passed to the HPA as is.
    pub horizontal_pod_autoscaler_config: HorizontalPodAutoscalerConfig,
}

/// The HPA's settings KEDA copies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerConfig {
    /// How fast the HPA moves the replica count up and down.
    pub behavior: HorizontalPodAutoscalerBehavior,
}

/// A reference to a scalable object (anything with a `/scale` subresource).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the target, e.g. `weir.dev/v1alpha1`.
    pub api_version: String,
    /// Kind of the target, e.g. `StreamJob`.
    pub kind: String,
    /// Name of the target, in the ScaledObject's namespace.
    pub name: String,
}

/// One KEDA scaler.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTrigger {
    /// Scaler type, e.g. `prometheus`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Name of the trigger, unique within the ScaledObject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `AverageValue` (default) or `Value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
    /// Scaler settings; KEDA takes them all as strings.
    pub metadata: BTreeMap<String, String>,
}

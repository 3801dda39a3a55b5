//! The PodDisruptionBudget: a drain moves one runtime pod at a time, so the consumer group
//! rebalances once per pod instead of losing every member at once.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::labels::JobRef;

/// PodDisruptionBudget `<name>` allowing one unavailable pod.
pub fn pod_disruption_budget(job_ref: &JobRef) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: job_ref.child_meta(job_ref.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(job_ref.selector_labels()), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

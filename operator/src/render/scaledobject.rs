//! The KEDA ScaledObject: scales the StreamJob itself (through its `/scale` subresource) on
//! the job's total consumer lag, so the operator, not KEDA, moves the pods.

use std::collections::BTreeMap;

use kube::Resource;
use weir_crds::{Autoscaling, StreamJob};

use crate::{
    config::OperatorConfig,
    keda::{ScaleTargetRef, ScaleTrigger, ScaledObject, ScaledObjectSpec},
    labels::JobRef,
};

/// Seconds between KEDA's lag queries.
const POLLING_INTERVAL: i32 = 15;
/// Seconds without lag before a job with `minReplicas: 0` is stopped.
const COOLDOWN_PERIOD: i32 = 300;

/// The PromQL query of a job's total lag. `namespace` is the target label Prometheus adds
/// to pod metrics, so jobs of the same name in two namespaces are told apart.
pub fn lag_query(job_ref: &JobRef) -> String {
    format!("sum(weir_consumer_lag{{streamjob=\"{}\",namespace=\"{}\"}})", job_ref.name, job_ref.namespace)
}

/// ScaledObject `<name>` targeting the StreamJob with a Prometheus trigger on its lag.
pub fn scaled_object(job_ref: &JobRef, autoscaling: &Autoscaling, config: &OperatorConfig) -> ScaledObject {
    let server = autoscaling.prometheus_address.clone().unwrap_or_else(|| config.prometheus_address.clone());
    let metadata = BTreeMap::from([
        ("serverAddress".to_owned(), server),
        ("query".to_owned(), lag_query(job_ref)),
        ("threshold".to_owned(), autoscaling.lag_threshold.to_string()),
        ("activationThreshold".to_owned(), autoscaling.activation_lag_threshold.to_string()),
    ]);
    let mut object = ScaledObject::new(
        &job_ref.name,
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: StreamJob::api_version(&()).into_owned(),
                kind: StreamJob::kind(&()).into_owned(),
                name: job_ref.name.clone(),
            },
            polling_interval: Some(POLLING_INTERVAL),
            cooldown_period: Some(COOLDOWN_PERIOD),
            min_replica_count: Some(autoscaling.min_replicas),
            max_replica_count: Some(autoscaling.max_replicas),
            triggers: vec![ScaleTrigger {
                type_: "prometheus".into(),
                name: Some("consumer-lag".into()),
                metric_type: Some("AverageValue".into()),
                metadata,
            }],
        },
    );
    object.metadata = job_ref.child_meta(job_ref.name.clone());
    object
}

//! The KEDA ScaledObject: scales the StreamJob itself (through its `/scale` subresource) on
//! the job's total consumer lag, so the operator, not KEDA, moves the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior};
use kube::Resource;
use weir_crds::{Autoscaling, LagTrigger, StartOffset, StreamJob};

use crate::{
    config::OperatorConfig,
    keda::{Advanced, HorizontalPodAutoscalerConfig, ScaleTargetRef, ScaleTrigger, ScaledObject, ScaledObjectSpec},
    labels::JobRef,
};

/// Seconds between KEDA's lag queries (KEDA's default). They decide how soon a job at zero
/// pods starts; the HPA asks for the lag on its own sync period (15 s by default).
const POLLING_INTERVAL: i32 = 15;
/// Seconds the HPA's scaling policies look back over (the HPA's own period).
const POLICY_PERIOD: i32 = 15;

/// The PromQL query of a job's total lag. `namespace` is the target label Prometheus adds
/// to pod metrics, so jobs of the same name in two namespaces are told apart.
pub fn lag_query(job_ref: &JobRef) -> String {
    format!("sum(weir_consumer_lag{{streamjob=\"{}\",namespace=\"{}\"}})", job_ref.name, job_ref.namespace)
}

/// ScaledObject `<name>` targeting the StreamJob, with a trigger on its lag.
pub fn scaled_object(
    job: &StreamJob,
    job_ref: &JobRef,
    autoscaling: &Autoscaling,
    config: &OperatorConfig,
) -> ScaledObject {
    let trigger = match autoscaling.trigger {
        LagTrigger::Prometheus => prometheus_trigger(job_ref, autoscaling, config),
        LagTrigger::Kafka => kafka_trigger(job, job_ref, autoscaling),
    };
    let mut object = ScaledObject::new(
        &job_ref.name,
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: StreamJob::api_version(&()).into_owned(),
                kind: StreamJob::kind(&()).into_owned(),
                name: job_ref.name.clone(),
            },
            polling_interval: Some(POLLING_INTERVAL),
            cooldown_period: Some(stabilization_seconds(autoscaling)),
            min_replica_count: Some(autoscaling.min_replicas),
            max_replica_count: Some(autoscaling.max_replicas),
            triggers: vec![trigger],
            advanced: Some(Advanced {
                horizontal_pod_autoscaler_config: HorizontalPodAutoscalerConfig { behavior: behavior(autoscaling) },
            }),
        },
    );
    object.metadata = job_ref.child_meta(job_ref.name.clone());
    object
}

/// The scale-down window in whole seconds, as the HPA and KEDA take it.
fn stabilization_seconds(autoscaling: &Autoscaling) -> i32 {
    i32::try_from(autoscaling.scale_down_stabilization.get().as_secs()).unwrap_or(i32::MAX)
}

/// Every rescale costs a savepoint and a restart, so the HPA goes to the replica count the
/// lag asks for in one step (not the default doubling), at once; it goes down only after
/// the lag has asked for fewer pods for the whole stabilization window, also in one step.
fn behavior(autoscaling: &Autoscaling) -> HorizontalPodAutoscalerBehavior {
    let rules = |stabilization: i32, policy: HPAScalingPolicy| HPAScalingRules {
        stabilization_window_seconds: Some(stabilization),
        select_policy: Some("Max".into()),
        policies: Some(vec![policy]),
        ..HPAScalingRules::default()
    };
    let pods =
        HPAScalingPolicy { type_: "Pods".into(), value: autoscaling.max_replicas, period_seconds: POLICY_PERIOD };
    let percent = HPAScalingPolicy { type_: "Percent".into(), value: 100, period_seconds: POLICY_PERIOD };
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules(0, pods)),
        scale_down: Some(rules(stabilization_seconds(autoscaling), percent)),
    }
}

/// KEDA's Prometheus scaler on the pods' summed `weir_consumer_lag`.
fn prometheus_trigger(job_ref: &JobRef, autoscaling: &Autoscaling, config: &OperatorConfig) -> ScaleTrigger {
    let server = autoscaling.prometheus_address.clone().unwrap_or_else(|| config.prometheus_address.clone());
    let metadata = BTreeMap::from([
        ("serverAddress".to_owned(), server),
        ("query".to_owned(), lag_query(job_ref)),
        ("threshold".to_owned(), autoscaling.lag_threshold.to_string()),
        ("activationThreshold".to_owned(), autoscaling.activation_lag_threshold.to_string()),
    ]);
    ScaleTrigger {
        type_: "prometheus".into(),
        name: Some("consumer-lag".into()),
        metric_type: Some("AverageValue".into()),
        metadata,
    }
}

/// KEDA's Kafka scaler on the job's consumer group. It caps the pods at the partition count
/// itself; `allowIdleConsumers` stays off to agree with the operator's own clamp.
fn kafka_trigger(job: &StreamJob, job_ref: &JobRef, autoscaling: &Autoscaling) -> ScaleTrigger {
    let source = &job.spec.source.kafka;
    let reset = match source.start_offset {
        // Before its first commit, a job starting from a timestamp has at most the whole
        // topic to read: counting that scales up rather than leaving a backlog unseen.
        StartOffset::Earliest | StartOffset::Timestamp => "earliest",
        StartOffset::Latest => "latest",
    };
    let metadata = BTreeMap::from([
        ("bootstrapServers".to_owned(), source.bootstrap_servers.clone()),
        ("consumerGroup".to_owned(), job.spec.group_id(&job_ref.namespace, &job_ref.name)),
        ("topic".to_owned(), source.topic.clone()),
        ("lagThreshold".to_owned(), autoscaling.lag_threshold.to_string()),
        ("activationLagThreshold".to_owned(), autoscaling.activation_lag_threshold.to_string()),
        ("offsetResetPolicy".to_owned(), reset.to_owned()),
    ]);
    ScaleTrigger {
        type_: "kafka".into(),
        name: Some("consumer-lag".into()),
        metric_type: Some("AverageValue".into()),
        metadata,
    }
}

//! Render: pure functions from a StreamJob to the typed objects that run it. No client, no
//! I/O, so every object is unit-tested against fixtures.

mod configmap;
mod deployment;
mod pdb;
mod scaledobject;
mod service;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, core::v1::Service, policy::v1::PodDisruptionBudget};
use weir_crds::StreamJob;

pub use configmap::{CHECKSUM_ANNOTATION, JOB_FILE, config_map, job_file};
pub use deployment::{
    ADMIN_PORT_NAME, ADMIN_TOKEN_KEY, CONTAINER_NAME, DESCRIPTOR_SET_FILE, JOB_MOUNT, PROTOBUF_MOUNT, RESTORE_FROM_ENV,
    SECRETS_MOUNT, TEMPLATE_HASH_ANNOTATION, TERMINATION_LOG_ENV, TERMINATION_LOG_PATH, deployment, restore_from,
};
pub use pdb::pod_disruption_budget;
pub use scaledobject::{lag_query, scaled_object};
pub use service::service;

use crate::{Error, config::OperatorConfig, keda::ScaledObject, labels::JobRef};

/// Everything the operator keeps in the cluster for one StreamJob.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The job file the runtime pods read.
    pub config_map: ConfigMap,
    /// The runtime pods.
    pub deployment: Deployment,
    /// Headless Service listing the pods' admin ports, for metrics scrapes.
    pub service: Service,
    /// Keeps voluntary disruptions to one pod at a time.
    pub pod_disruption_budget: PodDisruptionBudget,
    /// KEDA autoscaling on consumer lag, when `autoscaling` is set.
    pub scaled_object: Option<ScaledObject>,
}

/// Renders every child of `job`.
pub fn render(job: &StreamJob, config: &OperatorConfig) -> Result<Rendered, Error> {
    let job_ref = JobRef::new(job)?;
    let file = job_file(job, &job_ref)?;
    Ok(Rendered {
        deployment: deployment(job, &job_ref, config, &file),
        config_map: config_map(&job_ref, file),
        service: service(&job_ref, config),
        pod_disruption_budget: pod_disruption_budget(&job_ref),
        scaled_object: job.spec.autoscaling.as_ref().map(|a| scaled_object(job, &job_ref, a, config)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: serde_json::Value) -> StreamJob {
        let mut spec = serde_json::json!({
            "parallelism": 2,
            "source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in"}},
            "pipeline": [{"filter": "a > 1"}],
            "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out"}},
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let mut job = StreamJob::new("j", serde_json::from_value(spec).unwrap());
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some("u".into());
        job
    }

    fn template_hash(job: &StreamJob) -> String {
        let rendered = render(job, &OperatorConfig::default()).unwrap();
        rendered.deployment.metadata.annotations.unwrap()[TEMPLATE_HASH_ANNOTATION].clone()
    }

    #[test]
    fn scaling_or_suspending_does_not_change_the_pod_template() {
        let base = template_hash(&job(serde_json::json!({})));
        assert_eq!(base, template_hash(&job(serde_json::json!({"parallelism": 5}))));
        assert_eq!(base, template_hash(&job(serde_json::json!({"suspend": true}))));
    }

    #[test]
    fn a_pipeline_or_image_change_changes_the_pod_template() {
        let base = template_hash(&job(serde_json::json!({})));
        assert_ne!(base, template_hash(&job(serde_json::json!({"pipeline": [{"filter": "a > 2"}]}))));
        assert_ne!(base, template_hash(&job(serde_json::json!({"image": "other:1"}))));
    }

    #[test]
    fn the_restore_point_is_an_env_var_outside_the_template_hash() {
        let mut rendered = render(&job(serde_json::json!({})), &OperatorConfig::default()).unwrap().deployment;
        let hash = rendered.metadata.annotations.clone().unwrap()[TEMPLATE_HASH_ANNOTATION].clone();
        let env = |d: &Deployment| d.spec.clone().unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        restore_from(&mut rendered, Some("sp-1"));
        restore_from(&mut rendered, Some("sp-2"));
        let restore: Vec<_> = env(&rendered).into_iter().filter(|e| e.name == RESTORE_FROM_ENV).collect();
        assert_eq!(restore.len(), 1);
        assert_eq!(restore[0].value.as_deref(), Some("sp-2"));
        assert_eq!(rendered.metadata.annotations.clone().unwrap()[TEMPLATE_HASH_ANNOTATION], hash);
        restore_from(&mut rendered, None);
        assert!(env(&rendered).iter().all(|e| e.name != RESTORE_FROM_ENV));
    }

    #[test]
    fn the_kafka_trigger_reads_the_lag_of_the_jobs_consumer_group() {
        let job = job(serde_json::json!({"autoscaling": {"maxReplicas": 4, "lagThreshold": 500, "trigger": "kafka"}}));
        let scaled = render(&job, &OperatorConfig::default()).unwrap().scaled_object.unwrap();
        let trigger = &scaled.spec.triggers[0];
        assert_eq!(trigger.type_, "kafka");
        assert_eq!(trigger.metadata["consumerGroup"], "ns.j", "the runtime's default group");
        assert_eq!(trigger.metadata["topic"], "in");
        assert_eq!(trigger.metadata["bootstrapServers"], "k:9092");
        assert_eq!(trigger.metadata["lagThreshold"], "500");
        assert_eq!(scaled.spec.max_replica_count, Some(4));
    }

    #[test]
    fn credentials_are_mounted_never_copied() {
        let job = job(serde_json::json!({"source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in",
            "security": {"protocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-256", "credentialsSecret": "creds"}}}}));
        let rendered = render(&job, &OperatorConfig::default()).unwrap();
        let file = &rendered.config_map.data.unwrap()[JOB_FILE];
        assert!(file.contains("credentialsSecret: creds"), "only the Secret's name travels: {file}");
        let pod = rendered.deployment.spec.unwrap().template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "source-credentials").unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("creds"));
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == format!("{SECRETS_MOUNT}/source-credentials")));
    }

    #[test]
    fn registry_credentials_and_the_descriptor_set_are_mounted_where_the_runtime_reads_them() {
        let job = job(serde_json::json!({
            "source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in", "format": "protobuf",
                "protobuf": {"descriptorSet": {"name": "payments-proto", "key": "payment.pb"},
                             "messageType": "shop.v1.Payment"}}},
            "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out", "format": "avro",
                "schemaRegistry": {"url": "http://registry:8081", "credentialsSecret": "registry-creds"}}}}));
        let pod = render(&job, &OperatorConfig::default()).unwrap().deployment.spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        let registry = volumes.iter().find(|v| v.name == "sink-registry").unwrap();
        assert_eq!(registry.secret.as_ref().unwrap().secret_name.as_deref(), Some("registry-creds"));
        let descriptor = volumes.iter().find_map(|v| v.config_map.as_ref().filter(|c| c.name == "payments-proto"));
        let items = descriptor.unwrap().items.clone().unwrap();
        assert_eq!((items[0].key.as_str(), items[0].path.as_str()), ("payment.pb", DESCRIPTOR_SET_FILE));
        let container = &pod.containers[0];
        let mounts: Vec<&str> = container.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert!(mounts.contains(&format!("{SECRETS_MOUNT}/sink-registry").as_str()), "{mounts:?}");
        assert!(mounts.contains(&PROTOBUF_MOUNT), "{mounts:?}");
        let args = container.args.clone().unwrap();
        assert!(args.contains(&format!("--descriptor-set={PROTOBUF_MOUNT}/{DESCRIPTOR_SET_FILE}")), "{args:?}");
    }

    #[test]
    fn json_topics_mount_no_registry_secret_and_no_descriptor_set() {
        let job = job(serde_json::json!({
            "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out",
                "schemaRegistry": {"url": "http://registry:8081", "credentialsSecret": "registry-creds"}}}}));
        let pod = render(&job, &OperatorConfig::default()).unwrap().deployment.spec.unwrap().template.spec.unwrap();
        let names: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["job", "tmp", "admin-token"]);
        assert!(pod.containers[0].args.iter().flatten().all(|a| !a.starts_with("--descriptor-set")));
    }

    #[test]
    fn the_job_file_reads_back_as_the_same_job() {
        let job = job(serde_json::json!({"parallelism": 7}));
        let rendered = render(&job, &OperatorConfig::default()).unwrap();
        let file = &rendered.config_map.data.unwrap()[JOB_FILE];
        let document = weir_crds::JobDocument::parse(file).unwrap();
        assert_eq!(document.name.as_deref(), Some("j"));
        assert_eq!(document.namespace.as_deref(), Some("ns"));
        assert_eq!(document.spec.pipeline, job.spec.pipeline);
        assert!(!file.contains("parallelism"), "{file}");
    }
}

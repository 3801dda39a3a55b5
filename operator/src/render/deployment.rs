//! The Deployment of runtime pods: one container running `weir-runtime` on the job file,
//! hardened (non-root, read-only root filesystem, no capabilities), with Kafka and schema
//! registry credentials mounted from the Secrets the spec names, and a Protobuf source's
//! descriptor set from its ConfigMap key.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use weir_crds::{Format, KafkaSecurity, StreamJob, kafka::ConfigMapKey};

use super::configmap::{CHECKSUM_ANNOTATION, JOB_FILE, checksum};
use crate::{config::OperatorConfig, labels::JobRef};

/// Name of the runtime container.
pub const CONTAINER_NAME: &str = "runtime";
/// Name of the admin port (metrics, probes, savepoints).
pub const ADMIN_PORT_NAME: &str = "admin";
/// Where the job file's ConfigMap is mounted.
pub const JOB_MOUNT: &str = "/etc/weir";
/// Where Kafka and schema registry credentials are mounted (`weir-runtime --secrets-dir`).
pub const SECRETS_MOUNT: &str = "/var/run/secrets/weir";
/// Where the admin token Secret is mounted; the token is its [`ADMIN_TOKEN_KEY`].
pub const ADMIN_TOKEN_MOUNT: &str = "/var/run/secrets/weir-admin";
/// The admin token's key in its Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Name of the admin token's volume.
const ADMIN_TOKEN_VOLUME: &str = "admin-token";
/// Where a Protobuf source's descriptor set is mounted, as [`DESCRIPTOR_SET_FILE`].
pub const PROTOBUF_MOUNT: &str = "/etc/weir-protobuf";
/// The descriptor set's file name (`weir-runtime --descriptor-set`), whatever its ConfigMap key.
pub const DESCRIPTOR_SET_FILE: &str = "descriptor-set.pb";
/// Name of the descriptor set's volume.
const PROTOBUF_VOLUME: &str = "protobuf-descriptor-set";
/// Deployment annotation with the hash of its pod template: when it changes, the pods are
/// replaced (an upgrade); when only `replicas` changes, it is a rescale.
pub const TEMPLATE_HASH_ANNOTATION: &str = "weir.dev/template-hash";
/// Environment variable the runtime reads its savepoint to restore from (`--restore-from`).
pub const RESTORE_FROM_ENV: &str = "WEIR_RESTORE_FROM";
/// Environment variable naming the file the runtime writes its fatal error to before it
/// exits; the kubelet reports that file's content as the container's termination message.
pub const TERMINATION_LOG_ENV: &str = "WEIR_TERMINATION_LOG";
/// The kubelet's default `terminationMessagePath`.
pub const TERMINATION_LOG_PATH: &str = "/dev/termination-log";
/// The distroless `nonroot` user.
const RUN_AS: i64 = 65532;
/// Time a pod gets after SIGTERM to drain, flush the sink and commit.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// Deployment `<name>` of `parallelism` runtime pods (none when suspended).
pub fn deployment(job: &StreamJob, job_ref: &JobRef, config: &OperatorConfig, job_file: &str) -> Deployment {
    let spec = &job.spec;
    let replicas = if spec.suspend { 0 } else { spec.parallelism };
    let template = pod_template(job, job_ref, config, job_file);
    let mut metadata = job_ref.child_meta(job_ref.name.clone());
    metadata.annotations = Some(BTreeMap::from([(TEMPLATE_HASH_ANNOTATION.to_owned(), template_hash(&template))]));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(job_ref.selector_labels()), ..LabelSelector::default() },
            // Old and new pods must not share the consumer group: a new spec replaces all
            // pods at once, after the old ones stopped (with a savepoint when configured).
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), ..DeploymentStrategy::default() }),
            revision_history_limit: Some(3),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn pod_template(job: &StreamJob, job_ref: &JobRef, config: &OperatorConfig, job_file: &str) -> PodTemplateSpec {
    let overrides = job.spec.pod_template.clone().unwrap_or_default();
    let mut labels = overrides.labels;
    labels.extend(job_ref.labels());
    let mut annotations = overrides.annotations;
    annotations.extend([
        (CHECKSUM_ANNOTATION.to_owned(), checksum(job_file)),
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), config.admin_port.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    let secrets = secret_mounts(job);
    let mut volumes = vec![
        Volume {
            name: "job".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: job_ref.config_map_name(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        Volume {
            name: ADMIN_TOKEN_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(job_ref.admin_token_name()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(secrets.iter().map(|(name, secret)| Volume {
        name: name.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.clone()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }));
    let mut mounts = vec![
        VolumeMount {
            name: "job".into(),
            mount_path: JOB_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
        VolumeMount {
            name: ADMIN_TOKEN_VOLUME.into(),
            mount_path: ADMIN_TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    mounts.extend(secrets.keys().map(|name| VolumeMount {
        name: name.clone(),
        mount_path: format!("{SECRETS_MOUNT}/{name}"),
        read_only: Some(true),
        ..VolumeMount::default()
    }));
    if let Some(descriptor_set) = descriptor_set(job) {
        volumes.push(Volume {
            name: PROTOBUF_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: descriptor_set.name.clone(),
                items: Some(vec![KeyToPath {
                    key: descriptor_set.key.clone(),
                    path: DESCRIPTOR_SET_FILE.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: PROTOBUF_VOLUME.into(),
            mount_path: PROTOBUF_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), annotations: Some(annotations), ..ObjectMeta::default() }),
        spec: Some(PodSpec {
            containers: vec![container(job, job_ref, config, mounts, overrides.env)],
            volumes: Some(volumes),
            service_account_name: overrides.service_account_name,
            // The runtime never calls the Kubernetes API.
            automount_service_account_token: Some(false),
            node_selector: Some(overrides.node_selector).filter(|n| !n.is_empty()),
            tolerations: Some(overrides.tolerations).filter(|t| !t.is_empty()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

fn container(
    job: &StreamJob,
    job_ref: &JobRef,
    config: &OperatorConfig,
    volume_mounts: Vec<VolumeMount>,
    extra_env: Vec<EnvVar>,
) -> Container {
    let mut env = vec![
        field_env("POD_IP", "status.podIP"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar { name: "WEIR_LOG_FORMAT".into(), value: Some("json".into()), ..EnvVar::default() },
        EnvVar { name: TERMINATION_LOG_ENV.into(), value: Some(TERMINATION_LOG_PATH.into()), ..EnvVar::default() },
    ];
    env.extend(extra_env);
    let mut args = vec![
        format!("--job={JOB_MOUNT}/{JOB_FILE}"),
        format!("--admin-addr=$(POD_IP):{}", config.admin_port),
        format!("--name={}", job_ref.name),
        format!("--namespace={}", job_ref.namespace),
        format!("--secrets-dir={SECRETS_MOUNT}"),
        format!("--admin-token-file={ADMIN_TOKEN_MOUNT}/{ADMIN_TOKEN_KEY}"),
        // The operator gives each pod its partitions (`crate::assignment`): no consumer group
        // rebalances on a rescale.
        "--assignment=operator".to_owned(),
    ];
    if descriptor_set(job).is_some() {
        args.push(format!("--descriptor-set={PROTOBUF_MOUNT}/{DESCRIPTOR_SET_FILE}"));
    }
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(job.spec.image.clone().unwrap_or_else(|| config.runtime_image.clone())),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: config.admin_port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 5, 3, 0)),
        liveness_probe: Some(http_probe("/healthz", 10, 3, 10)),
        resources: job.spec.resources.clone(),
        // The runtime's fatal error, or the end of its log when it died without writing one:
        // the operator reports it on the StreamJob (`Degraded`, reason `RuntimeFailed`).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(volume_mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Points the pods of a rendered Deployment at savepoint `id`, or at none: the pods restore
/// it, and their checkpoints continue its lineage. The restore point stays out of
/// [`TEMPLATE_HASH_ANNOTATION`], which tells changes of spec apart.
pub fn restore_from(deployment: &mut Deployment, id: Option<&str>) {
    let containers =
        deployment.spec.iter_mut().filter_map(|s| s.template.spec.as_mut()).flat_map(|p| &mut p.containers);
    for container in containers.filter(|c| c.name == CONTAINER_NAME) {
        let env = container.env.get_or_insert_default();
        env.retain(|e| e.name != RESTORE_FROM_ENV);
        if let Some(id) = id {
            env.push(EnvVar { name: RESTORE_FROM_ENV.into(), value: Some(id.into()), ..EnvVar::default() });
        }
    }
}

/// Secret volumes by mount folder name, in the layout the runtime reads:
/// `<side>-credentials/{username,password}`, `<side>-tls/{ca.crt,tls.crt,tls.key}` and, for
/// an Avro source or sink whose registry needs a login, `<side>-registry/{username,password}`.
fn secret_mounts(job: &StreamJob) -> BTreeMap<String, String> {
    let mut mounts = BTreeMap::new();
    let (source, sink) = (&job.spec.source.kafka, &job.spec.sink.kafka);
    for (side, security) in [("source", source.security.as_ref()), ("sink", sink.security.as_ref())] {
        let Some(KafkaSecurity { credentials_secret, tls_secret, .. }) = security else { continue };
        if let Some(secret) = credentials_secret {
            mounts.insert(format!("{side}-credentials"), secret.clone());
        }
        if let Some(secret) = tls_secret {
            mounts.insert(format!("{side}-tls"), secret.clone());
        }
    }
    let registries = [("source", source.format, &source.schema_registry), ("sink", sink.format, &sink.schema_registry)];
    for (side, format, registry) in registries {
        if let (Format::Avro, Some(secret)) = (format, registry.as_ref().and_then(|r| r.credentials_secret.as_ref())) {
            mounts.insert(format!("{side}-registry"), secret.clone());
        }
    }
    mounts
}

/// The ConfigMap key holding a Protobuf source's descriptor set.
fn descriptor_set(job: &StreamJob) -> Option<&ConfigMapKey> {
    let source = &job.spec.source.kafka;
    (source.format == Format::Protobuf).then_some(source.protobuf.as_ref()).flatten().map(|p| &p.descriptor_set)
}

/// Hash of a pod template, as stable as its serialization.
fn template_hash(template: &PodTemplateSpec) -> String {
    checksum(&serde_json::to_string(template).unwrap_or_default())
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        initial_delay_seconds: Some(initial_delay).filter(|d| *d > 0),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

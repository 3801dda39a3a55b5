//! The ConfigMap with the job file the runtime reads (`weir-runtime --job`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use weir_crds::StreamJob;

use crate::{Error, labels::JobRef};

/// Key of the job file in the ConfigMap, and its file name in the pod.
pub const JOB_FILE: &str = "job.yaml";

/// Pod-template annotation carrying the job file's hash, so any change of it rolls the pods.
pub const CHECKSUM_ANNOTATION: &str = "weir.dev/job-checksum";

/// Spec fields the runtime does not read. They stay out of the job file so that scaling or
/// suspending a job does not change its checksum and roll the pods.
const OPERATOR_ONLY_FIELDS: &[&str] =
    &["parallelism", "suspend", "autoscaling", "resources", "podTemplate", "image", "upgradeMode", "rolloutTimeout"];

/// The job file: the StreamJob's name, namespace and the spec fields the runtime uses.
pub fn job_file(job: &StreamJob, job_ref: &JobRef) -> Result<String, Error> {
    let mut document = StreamJob::new(&job_ref.name, job.spec.clone());
    document.metadata.namespace = Some(job_ref.namespace.clone());
    let mut value = serde_json::to_value(&document).map_err(Error::Serialize)?;
    if let Some(spec) = value.get_mut("spec").and_then(serde_json::Value::as_object_mut) {
        for field in OPERATOR_ONLY_FIELDS {
            spec.remove(*field);
        }
    }
    serde_yaml::to_string(&value).map_err(|e| Error::Render(format!("job file: {e}")))
}

/// Hex SHA-256 of the job file.
pub fn checksum(file: &str) -> String {
    Sha256::digest(file.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The ConfigMap `<name>-job` holding `file` under [`JOB_FILE`].
pub fn config_map(job_ref: &JobRef, file: String) -> ConfigMap {
    ConfigMap {
        metadata: job_ref.child_meta(job_ref.config_map_name()),
        data: Some(BTreeMap::from([(JOB_FILE.to_owned(), file)])),
        ..ConfigMap::default()
    }
}

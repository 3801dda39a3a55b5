//! Names, labels and owner references shared by everything rendered for a StreamJob.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use weir_crds::{JOB_LABEL, StreamJob};

use crate::Error;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "weir-operator";

/// Identity of a StreamJob needed to render its children.
#[derive(Clone, Debug)]
pub struct JobRef {
    /// The StreamJob's name.
    pub name: String,
    /// The StreamJob's namespace.
    pub namespace: String,
    owner: OwnerReference,
}

impl JobRef {
    /// Reads the name, namespace and UID that children refer to.
    pub fn new(job: &StreamJob) -> Result<Self, Error> {
        let name = job.name_any();
        let namespace = job.namespace().ok_or_else(|| Error::MissingField("metadata.namespace"))?;
        let owner = job.controller_owner_ref(&()).ok_or_else(|| Error::MissingField("metadata.uid"))?;
        Ok(Self { name, namespace, owner })
    }

    /// Labels that select this job's pods: also the `/scale` selector.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(JOB_LABEL.to_owned(), self.name.clone())])
    }

    /// The selector in the string form `/scale` and `kubectl` use.
    pub fn selector(&self) -> String {
        format!("{JOB_LABEL}={}", self.name)
    }

    /// Labels of every rendered object: the selector plus the recommended app labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert("app.kubernetes.io/name".into(), "weir-runtime".into());
        labels.insert("app.kubernetes.io/instance".into(), self.name.clone());
        labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        labels
    }

    /// Metadata of a child called `name`: namespace, labels and the controller owner reference.
    pub fn child_meta(&self, name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Name of the ConfigMap holding the job file.
    pub fn config_map_name(&self) -> String {
        format!("{}-job", self.name)
    }

    /// The job's uid: a job deleted and created again under its name is another job.
    pub fn uid(&self) -> &str {
        &self.owner.uid
    }

    /// Name of the Secret holding the token of the pods' admin API.
    pub fn admin_token_name(&self) -> String {
        format!("{}-admin-token", self.name)
    }
}

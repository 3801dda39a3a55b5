//! The runtime pods, watched into a store that reconciles read instead of listing them, and
//! their changes that matter to their StreamJob: a pod starting, getting its IP, becoming
//! Ready, restarting or going away. Partition slots are given as soon as a pod can take one,
//! and a lost pod's slot moves at once, so these trigger a reconcile of the job the pod runs
//! (its `weir.dev/streamjob` label); other pod updates do not.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use weir_crds::{JOB_LABEL, StreamJob};

use crate::cache::{self, Fingerprint, Writes};

impl Fingerprint for Pod {
    /// Phase, IP, readiness, deletion and container restarts: nothing else a reconcile reads
    /// of a pod changes what it does.
    fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.metadata.deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut hasher);
        if let Some(status) = &self.status {
            status.phase.hash(&mut hasher);
            status.pod_ip.hash(&mut hasher);
            let ready = status.conditions.iter().flatten().find(|c| c.type_ == "Ready").map(|c| c.status.as_str());
            ready.hash(&mut hasher);
            for container in status.container_statuses.iter().flatten() {
                (&container.name, container.restart_count, container.ready).hash(&mut hasher);
            }
        }
        hasher.finish()
    }
}

/// The job a runtime pod belongs to.
pub fn job_of(pod: &Pod) -> Option<ObjectRef<StreamJob>> {
    let name = pod.metadata.labels.as_ref()?.get(JOB_LABEL)?;
    let namespace = pod.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// A store of the runtime pods in `namespace` (all when `None`), [`slim`]med, and those whose
/// [`Fingerprint`] changed or that were deleted.
pub fn watch(
    client: &Client,
    namespace: Option<&str>,
    writes: &std::sync::Arc<Writes>,
) -> (Store<Pod>, impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static) {
    let pods: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let events =
        watcher(pods, watcher::Config::default().labels(JOB_LABEL)).default_backoff().modify(slim).reflect(writer);
    (reader, cache::changes(events, writes.clone()))
}

/// Drops what no reconcile reads of a pod: its spec (the Deployment's template, most of a
/// pod's size) and managed fields. Its metadata and status stay.
pub fn slim(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
}

/// The pods of the job `name` in `namespace`, from `store`; `None` until the store has
/// listed the pods once.
pub fn pods_of(store: &Store<Pod>, namespace: &str, name: &str) -> Option<Vec<Pod>> {
    futures::FutureExt::now_or_never(store.wait_until_ready())?.ok()?;
    let of_job = |pod: &Pod| {
        pod.metadata.namespace.as_deref() == Some(namespace)
            && pod.metadata.labels.as_ref().and_then(|l| l.get(JOB_LABEL)).map(String::as_str) == Some(name)
    };
    Some(store.state().iter().filter(|pod| of_job(pod)).map(|pod| (**pod).clone()).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{ContainerStatus, PodCondition, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("clicks-7d9f-abcde".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.labels = Some(BTreeMap::from([(JOB_LABEL.to_owned(), "clicks".to_owned())]));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.7".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                ..PodCondition::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "runtime".into(),
                restart_count: 0,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    fn status(pod: &mut Pod) -> &mut PodStatus {
        pod.status.get_or_insert_default()
    }

    #[test]
    fn a_slim_pod_keeps_what_reconciles_read() {
        let mut full = pod();
        full.spec = Some(k8s_openapi::api::core::v1::PodSpec::default());
        full.metadata.managed_fields = Some(Vec::new());
        let mut slimmed = full.clone();
        slim(&mut slimmed);
        assert!(slimmed.spec.is_none() && slimmed.metadata.managed_fields.is_none());
        assert_eq!(slimmed.status, full.status);
        assert_eq!(slimmed.metadata.labels, full.metadata.labels);
        assert_eq!(slimmed.fingerprint(), full.fingerprint());
    }

    #[test]
    fn a_pod_maps_to_the_job_of_its_label() {
        assert_eq!(job_of(&pod()), Some(ObjectRef::new("clicks").within("shop")));
        let mut other = pod();
        other.metadata.labels = None;
        assert_eq!(job_of(&other), None);
    }

    #[test]
    fn what_assignment_reads_changes_the_fingerprint() {
        let changes: [fn(&mut Pod); 5] = [
            |p| status(p).phase = Some("Succeeded".into()),
            |p| status(p).pod_ip = None,
            |p| status(p).conditions.get_or_insert_default()[0].status = "True".into(),
            |p| status(p).container_statuses.get_or_insert_default()[0].restart_count = 1,
            |p| p.metadata.deletion_timestamp = Some(Time("2026-11-22T10:00:00Z".parse().unwrap())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = pod();
            change(&mut changed);
            assert_ne!(changed.fingerprint(), pod().fingerprint(), "change {i}");
        }
    }

    #[test]
    fn other_pod_updates_leave_the_fingerprint() {
        let mut changed = pod();
        changed.metadata.resource_version = Some("43".into());
        changed.metadata.annotations = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
        status(&mut changed).conditions.get_or_insert_default()[0].last_probe_time =
            Some(Time("2026-11-22T10:00:00Z".parse().unwrap()));
        assert_eq!(changed.fingerprint(), pod().fingerprint());
    }
}

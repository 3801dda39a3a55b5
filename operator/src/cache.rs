//! What the operator knows of a job's children without asking the API server.
//!
//! Each child kind is watched into a reflector store. A reconcile reads the children from the
//! stores and applies only what differs, so an unchanged job costs no API call. A store lags
//! the server a little; the operator remembers the resource version of each of its own writes
//! ([`Writes`]) and trusts a cached object only once the store has caught up with that write
//! (otherwise it asks the server, as it would without a store). Watch events are reduced to
//! the ones that change something a reconcile reads ([`changes`]); the echoes of the
//! operator's own writes are left out, since the reconcile that wrote them already acted.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Resource,
    runtime::{reflector::Store, watcher},
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_crds::{StreamJob, StreamJobSavepoint, StreamJobStatus};

use crate::{
    children::{Child, Stores},
    keda::ScaledObject,
    observe,
    plan::status::Pods,
};

/// Hash of the object as the operator rendered it: a child carrying the hash of the object
/// about to be applied, with every rendered field still in place, needs no apply.
pub const RENDERED_HASH_ANNOTATION: &str = "weir.dev/rendered-hash";

/// The stores reconciles read: the children by kind, the runtime pods and the StreamJobs.
#[derive(Clone, Debug)]
pub struct Children {
    /// The children, one store per watched kind.
    pub stores: Stores,
    /// The runtime pods (not children themselves: their ReplicaSets own them).
    pub pods: Store<Pod>,
    /// The StreamJobs themselves.
    pub jobs: Store<StreamJob>,
    /// The savepoints (not children either: a job's history outlives it).
    pub savepoints: Store<StreamJobSavepoint>,
}

type Key = (String, String, String);

/// One write of a child: the resource version and generation it got.
#[derive(Clone, Copy, Debug)]
struct Written {
    version: u64,
    generation: Option<i64>,
}

fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Key {
    (K::kind(&()).into_owned(), namespace.to_owned(), name.to_owned())
}

/// The operator's own latest writes: resource versions of the children it applied, and the
/// statuses it wrote with the version they got.
#[derive(Default)]
pub struct Writes {
    children: Mutex<HashMap<Key, Written>>,
    statuses: Mutex<HashMap<(String, String), (u64, StreamJobStatus)>>,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes").finish_non_exhaustive()
    }
}

impl Writes {
    /// Remembers that the operator wrote `object` (as the server returned it).
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let meta = object.meta();
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return };
        let key = key::<K>(namespace, name);
        if let Ok(mut children) = self.children.lock() {
            match version(meta) {
                Some(version) => children.insert(key, Written { version, generation: meta.generation }),
                None => children.remove(&key),
            };
        }
    }

    /// Forgets the write of a child the operator deleted.
    pub fn deleted<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        if let Ok(mut children) = self.children.lock() {
            children.remove(&key::<K>(namespace, name));
        }
    }

    fn latest<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> Option<u64> {
        self.children.lock().ok()?.get(&key::<K>(namespace, name)).map(|w| w.version)
    }

    /// The generation the operator's last write of `namespace/name` left, if it wrote it.
    pub fn generation<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> Option<i64> {
        self.children.lock().ok()?.get(&key::<K>(namespace, name)).and_then(|w| w.generation)
    }

    /// Whether `object` is the operator's own latest write of it, coming back from a watch.
    fn is_echo<K: Resource<DynamicType = ()>>(&self, object: &K) -> bool {
        let meta = object.meta();
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return false };
        version(meta).is_some_and(|v| self.latest::<K>(namespace, name) == Some(v))
    }

    /// Remembers a status written to `job` (the object the server returned).
    pub fn wrote_status(&self, job: &StreamJob) {
        let (Some(namespace), Some(name)) = (job.metadata.namespace.clone(), job.metadata.name.clone()) else {
            return;
        };
        if let (Some(version), Some(status), Ok(mut statuses)) =
            (version(&job.metadata), job.status.clone(), self.statuses.lock())
        {
            statuses.insert((namespace, name), (version, status));
        }
    }

    /// Forgets a job that is going away.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    /// The status the operator last wrote to `job`, if the cached `job` predates that write.
    /// Once the cache has caught up, the written status is forgotten.
    pub fn newer_status(&self, job: &StreamJob) -> Option<StreamJobStatus> {
        let key = (job.metadata.namespace.clone()?, job.metadata.name.clone()?);
        let mut statuses = self.statuses.lock().ok()?;
        let (written, status) = statuses.get(&key)?;
        if caught_up(job.metadata.resource_version.as_deref(), Some(*written)) {
            statuses.remove(&key);
            return None;
        }
        Some(status.clone())
    }
}

/// What a store says of one object.
#[derive(Clone, Debug)]
pub enum Lookup<K> {
    /// The store is ready and has seen the operator's latest write: the object, or `None`
    /// when it does not exist.
    Known(Option<Arc<K>>),
    /// The store cannot answer (not listed yet, behind a write, no store for the kind).
    Unknown,
}

/// Looks `namespace/name` up in the store of its kind.
pub fn lookup<K: Child>(children: Option<&Children>, writes: &Writes, namespace: &str, name: &str) -> Lookup<K> {
    let Some(store) = children.and_then(|c| c.stores.get::<K>()) else { return Lookup::Unknown };
    if futures::FutureExt::now_or_never(store.wait_until_ready()).is_none_or(|ready| ready.is_err()) {
        return Lookup::Unknown;
    }
    let cached = store.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace));
    let version = cached.as_ref().and_then(|c| c.meta().resource_version.clone());
    if caught_up(version.as_deref(), writes.latest::<K>(namespace, name)) {
        Lookup::Known(cached)
    } else {
        Lookup::Unknown
    }
}

/// Whether a cached object of version `cached` reflects the operator's write of version
/// `written` (or a later one). Resource versions are etcd revisions, so they compare as
/// numbers; one that is not a number is never taken as caught up.
pub fn caught_up(cached: Option<&str>, written: Option<u64>) -> bool {
    match written {
        None => true,
        Some(written) => cached.and_then(|c| c.parse::<u64>().ok()).is_some_and(|c| c >= written),
    }
}

fn version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// Puts the [`RENDERED_HASH_ANNOTATION`] of `object` on it.
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> Result<(), serde_json::Error> {
    let annotations = &mut object.meta_mut().annotations;
    if let Some(map) = annotations.as_mut() {
        map.remove(RENDERED_HASH_ANNOTATION);
        if map.is_empty() {
            *annotations = None;
        }
    }
    let hash = Sha256::digest(serde_json::to_vec(object)?);
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    object.meta_mut().annotations.get_or_insert_default().insert(RENDERED_HASH_ANNOTATION.to_owned(), hex);
    Ok(())
}

/// Whether applying `desired` (stamped) over `live` (as the store keeps it) would change
/// nothing: `live` carries the same rendered hash, so the operator rendered nothing new or
/// removed since, and every field `desired` sets still has its value in `live`, so nobody
/// changed a field the operator manages. Fields the server or others added are not the
/// operator's concern. For a kind the store slims, the part left out is vouched for by
/// `live` still having the generation of the operator's last write (`written_generation`).
pub fn up_to_date<K: Child>(desired: &K, live: &K, written_generation: Option<i64>) -> bool {
    let vouched = K::WHOLE || (written_generation.is_some() && live.meta().generation == written_generation);
    let mut desired = desired.clone();
    desired.slim();
    match (serde_json::to_value(&desired), serde_json::to_value(live)) {
        (Ok(desired), Ok(live)) => vouched && covers(&live, &desired),
        _ => false,
    }
}

/// Whether `live` holds every value of `desired`; absent and empty count the same, as the
/// server drops empty fields.
fn covers(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Null, Value::Array(items)) => items.is_empty(),
        (Value::Null, Value::Object(fields)) => fields.values().all(|v| covers(&Value::Null, v)),
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(name, want)| covers(live.get(name).unwrap_or(&Value::Null), want))
        }
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| covers(l, d))
        }
        (live, desired) => live == desired,
    }
}

/// The part of an object a reconcile reads, hashed: everything but bookkeeping and status.
/// A Deployment's pod counts are read, so they are kept.
pub trait Fingerprint: Serialize {
    /// The hash.
    fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        if let Ok(mut value) = serde_json::to_value(self) {
            if let Some(object) = value.as_object_mut() {
                object.remove("status");
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                    meta.remove("managedFields");
                }
            }
            value.to_string().hash(&mut hasher);
        }
        self.read_status().hash(&mut hasher);
        hasher.finish()
    }

    /// The status fields a reconcile reads.
    fn read_status(&self) -> Option<Pods> {
        None
    }
}

impl Fingerprint for Deployment {
    fn read_status(&self) -> Option<Pods> {
        Some(observe::pods(self))
    }
}
impl Fingerprint for ConfigMap {}
impl Fingerprint for Service {}
impl Fingerprint for PodDisruptionBudget {}
impl Fingerprint for ScaledObject {}

/// The objects of a (reflected) watch stream worth a reconcile of their owner: deletions,
/// and objects whose [`Fingerprint`] changed, except the operator's own writes.
pub fn changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    writes: Arc<Writes>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Fingerprint + Send + 'static,
{
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    events.filter_map(move |event| {
        let passed = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let meta = object.meta();
                let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
                let fingerprint = object.fingerprint();
                let changed = seen.insert(id, fingerprint) != Some(fingerprint);
                (changed && !writes.is_echo(&object)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                let meta = object.meta();
                seen.remove(&(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default()));
                Some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        std::future::ready(passed)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use serde_json::json;

    use super::*;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some("j-job".into());
        map.metadata.namespace = Some("ns".into());
        map.metadata.labels = Some(BTreeMap::from([("weir.dev/streamjob".to_owned(), "j".to_owned())]));
        map.data = Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        map
    }

    /// `desired` as the server would hold it: stamped, with bookkeeping and defaults added.
    fn served(desired: &ConfigMap) -> ConfigMap {
        let mut live = desired.clone();
        live.metadata.resource_version = Some("42".into());
        live.metadata.uid = Some("u".into());
        live.metadata.labels.get_or_insert_default().insert("added-by".into(), "someone".into());
        live
    }

    fn stamped(mut object: ConfigMap) -> ConfigMap {
        stamp(&mut object).unwrap();
        object
    }

    #[test]
    fn an_object_as_applied_needs_no_apply_whatever_the_server_added() {
        let desired = stamped(config_map(&[("job.yaml", "a")]));
        assert!(up_to_date(&desired, &served(&desired), None));
    }

    #[test]
    fn a_rendered_change_needs_an_apply() {
        let live = served(&stamped(config_map(&[("job.yaml", "a")])));
        assert!(!up_to_date(&stamped(config_map(&[("job.yaml", "b")])), &live, None));
    }

    #[test]
    fn a_field_no_longer_rendered_needs_an_apply_to_be_removed() {
        let old = config_map(&[("job.yaml", "a"), ("old", "x")]);
        let new = config_map(&[("job.yaml", "a")]);
        let value = |m: &ConfigMap| serde_json::to_value(m).unwrap();
        assert!(covers(&value(&served(&old)), &value(&new)), "every field of the new rendering is there");
        assert!(!up_to_date(&stamped(new), &served(&stamped(old)), None), "only the hash tells that `old` must go");
    }

    #[test]
    fn a_managed_field_changed_by_someone_else_is_applied_back() {
        let desired = stamped(config_map(&[("job.yaml", "a")]));
        let mut live = served(&desired);
        live.data.as_mut().unwrap().insert("job.yaml".into(), "edited".into());
        assert!(!up_to_date(&desired, &live, None));
    }

    #[test]
    fn an_unstamped_object_is_applied() {
        let desired = stamped(config_map(&[("job.yaml", "a")]));
        let mut live = served(&desired);
        live.metadata.annotations = None;
        assert!(!up_to_date(&desired, &live, None));
    }

    /// A stamped Deployment with a pod template, and how the store keeps it once applied at
    /// generation 3.
    fn deployment_applied() -> (Deployment, Deployment) {
        let mut desired = Deployment::default();
        desired.metadata.name = Some("j".into());
        desired.metadata.namespace = Some("ns".into());
        let labels = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        let template = k8s_openapi::api::core::v1::PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
            spec: None,
        };
        desired.spec = Some(DeploymentSpec { replicas: Some(2), template, ..DeploymentSpec::default() });
        stamp(&mut desired).unwrap();
        let mut live = desired.clone();
        live.metadata.generation = Some(3);
        live.slim();
        (desired, live)
    }

    #[test]
    fn a_slimmed_deployment_is_up_to_date_while_its_generation_is_the_operators() {
        let (desired, live) = deployment_applied();
        assert!(up_to_date(&desired, &live, Some(3)));
        assert!(!up_to_date(&desired, &live, Some(2)), "someone changed the spec since");
        assert!(!up_to_date(&desired, &live, None), "no write to vouch for the template: apply once");
        let mut scaled = desired.clone();
        scaled.spec.as_mut().unwrap().replicas = Some(3);
        stamp(&mut scaled).unwrap();
        assert!(!up_to_date(&scaled, &live, Some(3)));
    }

    #[test]
    fn the_stamp_does_not_depend_on_a_previous_stamp() {
        let once = stamped(config_map(&[("job.yaml", "a")]));
        assert_eq!(stamped(once.clone()).metadata.annotations, once.metadata.annotations);
    }

    #[test]
    fn empty_fields_match_absent_ones() {
        assert!(covers(&json!({"a": 1}), &json!({"a": 1, "b": [], "c": {}, "d": null, "e": {"f": []}})));
        assert!(!covers(&json!({"a": 1}), &json!({"b": [1]})));
        assert!(!covers(&json!({"a": [1, 2]}), &json!({"a": [1]})), "lists compare whole");
        assert!(covers(&json!({"a": [{"x": 1, "y": 2}]}), &json!({"a": [{"x": 1}]})), "defaults inside items");
    }

    #[test]
    fn a_store_is_trusted_once_it_has_the_operators_write() {
        assert!(caught_up(Some("10"), None), "nothing written");
        assert!(caught_up(None, None), "absent and nothing written");
        assert!(caught_up(Some("10"), Some(10)));
        assert!(caught_up(Some("11"), Some(10)), "a later change by someone else");
        assert!(!caught_up(Some("9"), Some(10)), "the store is behind");
        assert!(!caught_up(None, Some(10)), "the created object is not in the store yet");
        assert!(!caught_up(Some("opaque"), Some(10)));
    }

    #[test]
    fn a_deployments_fingerprint_follows_its_spec_and_pod_counts_only() {
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some("j".into());
        deployment.spec = Some(DeploymentSpec { replicas: Some(2), ..DeploymentSpec::default() });
        let base = deployment.fingerprint();
        let mut bookkeeping = deployment.clone();
        bookkeeping.metadata.resource_version = Some("7".into());
        bookkeeping.status = Some(DeploymentStatus { conditions: Some(vec![]), ..DeploymentStatus::default() });
        assert_eq!(bookkeeping.fingerprint(), base);
        let mut ready = deployment.clone();
        ready.status = Some(DeploymentStatus { ready_replicas: Some(1), ..DeploymentStatus::default() });
        assert_ne!(ready.fingerprint(), base);
        let mut scaled = deployment.clone();
        scaled.spec.as_mut().unwrap().replicas = Some(3);
        assert_ne!(scaled.fingerprint(), base);
    }

    #[test]
    fn a_services_status_does_not_change_its_fingerprint() {
        let mut service = Service::default();
        service.metadata.name = Some("j".into());
        let base = service.fingerprint();
        service.status = Some(Default::default());
        service.metadata.resource_version = Some("8".into());
        assert_eq!(service.fingerprint(), base);
    }

    #[test]
    fn the_operators_own_write_is_an_echo_and_a_later_one_is_not() {
        let writes = Writes::default();
        let mut map = config_map(&[]);
        map.metadata.resource_version = Some("5".into());
        writes.wrote(&map);
        assert!(writes.is_echo(&map));
        map.metadata.resource_version = Some("6".into());
        assert!(!writes.is_echo(&map));
        writes.deleted::<ConfigMap>("ns", "j-job");
        map.metadata.resource_version = Some("5".into());
        assert!(!writes.is_echo(&map));
    }

    #[test]
    fn a_written_status_stands_in_for_a_cached_job_that_predates_it() {
        let writes = Writes::default();
        let mut job: StreamJob = serde_json::from_value(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "j", "namespace": "ns", "resourceVersion": "20"},
            "spec": {"parallelism": 1, "source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in"}},
                     "pipeline": [], "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out"}}},
            "status": {"replicas": 3}
        }))
        .unwrap();
        writes.wrote_status(&job);
        job.metadata.resource_version = Some("19".into());
        assert_eq!(writes.newer_status(&job).map(|s| s.replicas), Some(3));
        job.metadata.resource_version = Some("21".into());
        assert_eq!(writes.newer_status(&job), None);
    }
}

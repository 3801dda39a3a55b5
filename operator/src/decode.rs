//! StreamJobs decoded one at a time. The API server can hold a StreamJob the operator's
//! types refuse: one stored under an older, looser schema, or a value the schema lets
//! through. Watched as typed objects, one such object fails every list and stalls the
//! controller for all jobs; here it is reported on itself (a condition naming the field and
//! a Warning Event) and left out, while the others go on.

use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        events::{Event, EventType},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};
use weir_crds::{InvalidSpec, Problem, StreamJob, StreamJobStatus};

use crate::{
    labels::FIELD_MANAGER,
    plan::status,
    reconcile::{Context, FINALIZER, StatusPatch},
};

/// Undecodable objects waiting to be reported; past this, reports wait for the next event.
const QUEUE: usize = 256;

/// A StreamJob the operator cannot read, and why.
#[derive(Debug)]
pub struct Undecodable {
    /// The object as the API server holds it.
    pub object: DynamicObject,
    /// The field that failed and what is wrong with it.
    pub problem: Problem,
}

/// The StreamJob in `object`, or the first field that does not decode.
pub fn decode(object: &DynamicObject) -> Result<StreamJob, Problem> {
    let value = serde_json::to_value(object)
        .map_err(|e| Problem { path: "(object)".into(), message: format!("cannot be encoded: {e}") })?;
    serde_path_to_error::deserialize(&value).map_err(|e| Problem {
        path: e.path().to_string(),
        message: format!("cannot be read by this operator: {}", e.inner()),
    })
}

/// The type-erased resource the StreamJob watch lists.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<StreamJob>(&())
}

/// Typed watch events from raw ones: each object decoded on its own. An undecodable object
/// goes to `undecodable` and leaves the store (`jobs`, the store this stream will feed), so
/// no reconcile acts on a spec it has replaced; it comes back once it decodes again.
pub fn decoded<S>(
    events: S,
    jobs: Store<StreamJob>,
    undecodable: mpsc::Sender<Undecodable>,
) -> impl Stream<Item = Result<watcher::Event<StreamJob>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>>,
{
    events.filter_map(move |event| {
        let typed = event.map(|event| typed(event, &jobs, &undecodable)).transpose();
        future::ready(typed)
    })
}

fn typed(
    event: watcher::Event<DynamicObject>,
    jobs: &Store<StreamJob>,
    undecodable: &mpsc::Sender<Undecodable>,
) -> Option<watcher::Event<StreamJob>> {
    use watcher::Event as E;
    let report = |object: DynamicObject, problem: Problem| {
        warn!(streamjob = %object.name_any(), namespace = object.namespace(), %problem, "undecodable StreamJob");
        if undecodable.try_send(Undecodable { object, problem }).is_err() {
            warn!("undecodable StreamJob reports are queued up: this one is reported at its next change");
        }
    };
    // The last decodable version, which must leave the store with its replacement.
    let stored = |object: &DynamicObject| {
        let reference = ObjectRef::<StreamJob>::new(&object.name_any()).within(&object.namespace()?);
        jobs.get(&reference).map(|job| (*job).clone())
    };
    match event {
        E::Init => Some(E::Init),
        E::InitDone => Some(E::InitDone),
        E::InitApply(object) => match decode(&object) {
            Ok(job) => Some(E::InitApply(job)),
            Err(problem) => {
                report(object, problem);
                None
            }
        },
        E::Apply(object) => match decode(&object) {
            Ok(job) => Some(E::Apply(job)),
            Err(problem) => {
                let previous = stored(&object);
                report(object, problem);
                previous.map(E::Delete)
            }
        },
        E::Delete(object) => match decode(&object) {
            Ok(job) => Some(E::Delete(job)),
            Err(_) => stored(&object).map(E::Delete),
        },
    }
}

/// Reports undecodable StreamJobs until the sender goes: the problem in status and a
/// Warning Event, once per generation; one being deleted loses its Deployment and the
/// finalizer, since the cleanup that would take a final savepoint cannot read its spec.
pub async fn report(mut undecodable: mpsc::Receiver<Undecodable>, ctx: Arc<Context>) {
    while let Some(Undecodable { object, problem }) = undecodable.recv().await {
        let name = object.name_any();
        let outcome = if object.metadata.deletion_timestamp.is_some() {
            release(&object, &ctx).await
        } else {
            mark(&object, problem, &ctx).await
        };
        ctx.metrics.errors.with_label_values(&["undecodable"]).inc();
        if let Err(e) = outcome {
            warn!(streamjob = %name, "reporting an undecodable StreamJob: {e}");
        }
    }
}

/// Metadata of the object only, for a merge patch.
#[derive(Serialize, Debug)]
struct MetadataPatch {
    metadata: ObjectMeta,
}

async fn mark(object: &DynamicObject, problem: Problem, ctx: &Context) -> Result<(), kube::Error> {
    let Some(namespace) = object.namespace() else { return Ok(()) };
    let previous: StreamJobStatus =
        object.data.get("status").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
    let invalid = InvalidSpec(vec![problem]);
    let message = status::invalid_message(&invalid);
    let generation = object.metadata.generation;
    if status::reports_invalid(&previous, &message, generation) {
        return Ok(());
    }
    let resource = api_resource();
    let event = Event {
        type_: EventType::Warning,
        reason: status::INVALID_SPEC.into(),
        note: Some(message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.announcer.announce(event, object.object_ref(&resource));
    let next = status::invalid_status_from(previous, &invalid, generation, &status::now());
    let patch = StatusPatch { api_version: &resource.api_version, kind: &resource.kind, status: &next };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    api.patch_status(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

async fn release(object: &DynamicObject, ctx: &Context) -> Result<(), kube::Error> {
    let (Some(namespace), name) = (object.namespace(), object.name_any()) else { return Ok(()) };
    if !object.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    match deployments.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    let kept: Vec<String> = object.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    // The resource version makes this fail if the object changed since it was read; the
    // change comes back as an event and is handled then.
    let patch = MetadataPatch {
        metadata: ObjectMeta {
            finalizers: Some(kept),
            resource_version: object.resource_version(),
            ..Default::default()
        },
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &api_resource());
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    info!(streamjob = %name, %namespace, "undecodable StreamJob deleted: pods stopped without a final savepoint");
    Ok(())
}

/// A bounded queue for [`decoded`] and [`report`].
pub fn queue() -> (mpsc::Sender<Undecodable>, mpsc::Receiver<Undecodable>) {
    mpsc::channel(QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> DynamicObject {
        let mut object = DynamicObject::new("orders", &api_resource()).within("default");
        object.data = serde_json::json!({ "spec": spec });
        object
    }

    fn spec(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in"}},
            "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}},
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    #[test]
    fn a_decodable_object_is_the_stream_job() {
        let job = decode(&object(spec(serde_json::json!({"rolloutTimeout": "5m"})))).unwrap();
        assert_eq!(job.spec.rollout_timeout.as_str(), "5m");
        assert_eq!(job.name_any(), "orders");
    }

    #[test]
    fn the_problem_names_the_field_that_does_not_decode() {
        let problem = decode(&object(spec(serde_json::json!({"rolloutTimeout": "9000h"})))).unwrap_err();
        assert_eq!(problem.path, "spec.rolloutTimeout");
        assert!(problem.message.contains("8760h"), "{problem}");
        let bad_number = spec(serde_json::json!({"source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in",
            "maxRecordsPerSecond": 5_000_000_000_u64}}}));
        let problem = decode(&object(bad_number)).unwrap_err();
        assert_eq!(problem.path, "spec.source.kafka.maxRecordsPerSecond");
    }
}

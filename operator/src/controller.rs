//! Wiring: the kube-runtime `Controller` over StreamJobs, the children it owns and their pods.

use std::{future::Future, sync::Arc};

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use kube::{
    Api, Client, Resource,
    api::DynamicObject,
    runtime::{
        Controller, Predicate, PredicateConfig, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};
use weir_crds::{JOB_LABEL, StreamJob, StreamJobSavepoint};

use crate::{
    cache::{self, Children, Writes},
    children::{Child, EachKind, Stores, each_kind},
    config::OperatorConfig,
    decode,
    keda::ScaledObject,
    pod_watch,
    reconcile::{Context, error_policy, reconcile},
    savepoint_lifecycle,
};

/// Quiet time a StreamJob's triggers must leave before it is reconciled.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where and how hard the controller works.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// StreamJobs reconciled at once.
    pub concurrency: u16,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Whether the API server serves KEDA's ScaledObject, asked in the watched `namespace`
/// (all when `None`): an operator given a Role in one namespace may not list cluster-wide.
pub async fn keda_installed(client: &Client, namespace: Option<&str>) -> bool {
    let api: Api<ScaledObject> = api(client, namespace);
    api.list(&kube::api::ListParams::default().limit(1)).await.is_ok()
}

/// A store of the children of kind `K` and the watch events worth a reconcile of their owner
/// (see [`cache::changes`]). Managed fields are dropped (nothing reads them, and they are a
/// large part of an object), and what [`Child::slim`] leaves out.
fn children<K: Child>(
    client: &Client,
    namespace: Option<&str>,
    writes: &Arc<Writes>,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let events = watcher(api::<K>(client, namespace), watcher::Config::default().labels(JOB_LABEL))
        .default_backoff()
        .modify(|object: &mut K| {
            object.meta_mut().managed_fields = None;
            object.slim();
        })
        .reflect(writer);
    (reader, cache::changes(events, writes.clone()))
}

/// A store of the StreamJobSavepoints, and those still to be taken or adopted.
fn savepoint_requests(
    client: &Client,
    namespace: Option<&str>,
) -> (Store<StreamJobSavepoint>, impl Stream<Item = Result<StreamJobSavepoint, watcher::Error>> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let events = watcher(api::<StreamJobSavepoint>(client, namespace), watcher::Config::default())
        .default_backoff()
        .modify(|savepoint: &mut StreamJobSavepoint| savepoint.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .try_filter(|savepoint| std::future::ready(savepoint.is_open()));
    (reader, events)
}

/// The job a savepoint is of.
fn savepoint_job(savepoint: &StreamJobSavepoint) -> Option<ObjectRef<StreamJob>> {
    Some(ObjectRef::new(&savepoint.spec.job_ref.name).within(savepoint.metadata.namespace.as_deref()?))
}

/// Watches every child kind the cluster serves: into a store, and as triggers of their owner.
struct WatchChildren<'a> {
    client: &'a Client,
    namespace: Option<&'a str>,
    writes: &'a Arc<Writes>,
    config: &'a OperatorConfig,
    controller: Option<Controller<StreamJob>>,
    stores: Stores,
}

impl EachKind for WatchChildren<'_> {
    fn kind<K: Child>(&mut self) {
        if !K::served(self.config) {
            return;
        }
        let (store, changes) = children::<K>(self.client, self.namespace, self.writes);
        self.stores.insert(store);
        self.controller = self.controller.take().map(|controller| controller.owns_stream(changes));
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    settings: ControllerSettings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = settings.namespace.as_deref();
    let (reader, writer) = reflector::store();
    let resource = decode::api_resource();
    let raw: Api<DynamicObject> = match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let (undecodable, reports) = decode::queue();
    tokio::spawn(decode::report(reports, ctx.clone()));
    let raw_events = watcher(raw, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|job| job.metadata.managed_fields = None);
    // Status writes do not change the generation, so they do not come back as work; the
    // finalizer's own patch and deletion marking do.
    let jobs = decode::decoded(raw_events, reader.clone(), undecodable)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), PredicateConfig::default());
    let (pods, pod_changes) = pod_watch::watch(&client, namespace, &ctx.writes);
    let (savepoints, requested) = savepoint_requests(&client, namespace);
    let controller = Controller::for_stream(jobs, reader.clone())
        // Changes to several children of a job (someone else's) come in bursts: a short
        // debounce folds such a burst into one reconcile.
        .with_config(controller::Config::default().concurrency(settings.concurrency).debounce(DEBOUNCE))
        // Pods belong to the Deployment's ReplicaSets, not to the job: mapped by their label.
        .watches_stream(pod_changes, |pod| pod_watch::job_of(&pod))
        // A savepoint a user asks for is taken by its job's reconcile.
        .watches_stream(requested, |savepoint| savepoint_job(&savepoint));
    let mut watch = WatchChildren {
        client: &client,
        namespace,
        writes: &ctx.writes,
        config: &ctx.config,
        controller: Some(controller),
        stores: Stores::default(),
    };
    each_kind(&mut watch);
    let WatchChildren { controller: Some(controller), stores, .. } = watch else { return };
    let ctx = Arc::new(ctx.with_children(Children { stores, pods, jobs: reader, savepoints }));
    let shutdown = shutdown.shared();
    let lifecycle = Arc::new(savepoint_lifecycle::Context::new(client.clone(), ctx.announcer.clone()));
    let savepoints = tokio::spawn(savepoint_lifecycle::run(lifecycle, settings.namespace.clone(), shutdown.clone()));
    info!(namespace = namespace.unwrap_or("all"), "controller started");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!("controller: {e}");
            }
        })
        .await;
    let _ = savepoints.await;
    info!("controller stopped");
}

//! Wiring: the kube-runtime `Controller` over StreamJobs, the children it owns and their pods.

use std::{future::Future, sync::Arc};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource,
    api::DynamicObject,
    runtime::{
        Controller, Predicate, PredicateConfig, WatchStreamExt, controller, predicates,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use weir_crds::JOB_LABEL;

use crate::{
    cache::{self, Cached, Children, Fingerprint, Writes},
    decode,
    keda::ScaledObject,
    pod_watch,
    reconcile::{Context, error_policy, reconcile},
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
/// large part of an object), and what [`Cached::slim`] leaves out.
fn children<K>(
    client: &Client,
    namespace: Option<&str>,
    writes: &Arc<Writes>,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Fingerprint
        + Cached
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
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
    let writes = &ctx.writes;
    let (deployments, deployment_changes) = children::<Deployment>(&client, namespace, writes);
    let (config_maps, config_map_changes) = children::<ConfigMap>(&client, namespace, writes);
    let (services, service_changes) = children::<Service>(&client, namespace, writes);
    let (budgets, budget_changes) = children::<PodDisruptionBudget>(&client, namespace, writes);
    let (pods, pod_changes) = pod_watch::watch(&client, namespace, writes);
    let mut controller = Controller::for_stream(jobs, reader.clone())
        // Changes to several children of a job (someone else's) come in bursts: a short
        // debounce folds such a burst into one reconcile.
        .with_config(controller::Config::default().concurrency(settings.concurrency).debounce(DEBOUNCE))
        .owns_stream(deployment_changes)
        .owns_stream(config_map_changes)
        .owns_stream(service_changes)
        .owns_stream(budget_changes)
        // Pods belong to the Deployment's ReplicaSets, not to the job: mapped by their label.
        .watches_stream(pod_changes, |pod| pod_watch::job_of(&pod));
    let mut scaled_objects = None;
    if ctx.config.keda_available {
        let (store, changes) = children::<ScaledObject>(&client, namespace, writes);
        controller = controller.owns_stream(changes);
        scaled_objects = Some(store);
    }
    let ctx = Arc::new(ctx.with_children(Children {
        deployments,
        config_maps,
        services,
        pod_disruption_budgets: budgets,
        scaled_objects,
        pods,
        jobs: reader,
    }));
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
    info!("controller stopped");
}

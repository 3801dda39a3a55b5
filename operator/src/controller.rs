//! Wiring: the kube-runtime `Controller` over StreamJobs and the children it owns.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource,
    runtime::{Controller, Predicate, PredicateConfig, WatchStreamExt, controller, predicates, reflector, watcher},
};
use tracing::{info, warn};
use weir_crds::{JOB_LABEL, StreamJob};

use crate::{
    keda::ScaledObject,
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

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    settings: ControllerSettings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = settings.namespace.as_deref();
    let (reader, writer) = reflector::store();
    // Status writes do not change the generation, so they do not come back as work; the
    // finalizer's own patch and deletion marking do.
    let jobs = watcher(api::<StreamJob>(&client, namespace), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), PredicateConfig::default());
    let children = || watcher::Config::default().labels(JOB_LABEL);
    let mut controller = Controller::for_stream(jobs, reader)
        // Creating a job's children triggers it once per child: a short debounce folds such
        // a burst into one reconcile.
        .with_config(controller::Config::default().concurrency(settings.concurrency).debounce(DEBOUNCE))
        .owns(api::<Deployment>(&client, namespace), children())
        .owns(api::<ConfigMap>(&client, namespace), children())
        .owns(api::<Service>(&client, namespace), children())
        .owns(api::<PodDisruptionBudget>(&client, namespace), children());
    if ctx.config.keda_available {
        controller = controller.owns(api::<ScaledObject>(&client, namespace), children());
    }
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

//! The reconcile pipeline for one StreamJob: validate → render → apply → status.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{self, finalizer},
    },
};
use rand::Rng;
use serde::{Serialize, de::DeserializeOwned};
use tracing::{info, instrument, warn};
use weir_crds::{InvalidSpec, Phase, StreamJob, StreamJobStatus};

use crate::{
    Error,
    config::OperatorConfig,
    keda::ScaledObject,
    labels::{FIELD_MANAGER, JobRef},
    lag,
    metrics::Metrics,
    render::{ROLLOUT_ANNOTATION, Rendered, render},
    status::{self, Change, Observation, Pods},
};

/// Finalizer that lets the operator stop a job's pods (and, with savepoints, take a final
/// one) before the StreamJob disappears.
pub const FINALIZER: &str = "weir.dev/cleanup";

/// Requeue while pods are changing, to follow the rollout.
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(5);
/// Longest back-off after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile needs: the client, events, metrics and the operator's settings.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Operator-wide settings.
    pub config: OperatorConfig,
    /// Consecutive failures per StreamJob, for back-off.
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Context {
    /// A context for reconciles made with `client`.
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>, config: OperatorConfig) -> Self {
        Self { client, recorder, metrics, config, failures: Arc::default() }
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn publish(&self, job: &StreamJob, type_: EventType, reason: &str, note: String) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &job.object_ref(&())).await {
            warn!("publishing event {reason}: {e}");
        }
    }
}

/// Reconciles one StreamJob, through the finalizer so deletion runs [`cleanup`].
#[instrument(skip_all, fields(streamjob = %job.name_any(), namespace = job.namespace().unwrap_or_default()))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = job.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let key = format!("{namespace}/{}", job.name_any());
    let jobs: Api<StreamJob> = ctx.api(&namespace);
    let result = finalizer(&jobs, FINALIZER, job, |event| async {
        match event {
            finalizer::Event::Apply(job) => apply(&job, &ctx).await,
            finalizer::Event::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.observe(outcome, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().map(|mut f| f.remove(&key)).ok();
    }
    result
}

/// Requeues a failed reconcile with exponential back-off and jitter.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let attempt = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = backoff(attempt, rand::rng().random_range(0.5..1.5));
    warn!(streamjob = %job.name_any(), error = %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `2^(attempt-1)` seconds, capped, times a jitter factor so failing jobs do not retry in step.
fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    base.mul_f64(jitter)
}

async fn apply(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    if let Err(invalid) = weir_crds::validate(&job.spec) {
        return report_invalid(job, &invalid, ctx).await;
    }
    let job_ref = JobRef::new(job)?;
    let mut rendered = render(job, &ctx.config)?;
    let deployments: Api<Deployment> = ctx.api(&job_ref.namespace);
    let before = deployments.get_opt(&job_ref.name).await.map_err(Error::api("reading the Deployment"))?;
    let suspended = job.spec.suspend;
    let change = status::detect_change(before.as_ref(), &rendered.deployment, suspended);
    let rollout = status::rollout(before.as_ref(), &rendered.deployment, suspended);
    if let Some(rollout) = rollout {
        let annotations = rendered.deployment.metadata.annotations.get_or_insert_default();
        annotations.insert(ROLLOUT_ANNOTATION.to_owned(), rollout.reason().to_owned());
    }
    let applied = apply_children(ctx, &job_ref, rendered).await?;
    if let Some(change) = change {
        let note = describe(change, before.as_ref(), &applied);
        info!(?change, "{note}");
        ctx.publish(job, EventType::Normal, change.reason(), note).await;
    }
    let pods = Pods::of(&applied);
    let consumer_lag = if pods.existing > 0 { scrape_lag(ctx, &job_ref).await? } else { None };
    let observation =
        Observation { rollout, pods, consumer_lag, selector: job_ref.selector(), suspended: job.spec.suspend };
    let next = status::next_status(job, &observation, &now());
    announce_phase(job, &next, ctx).await;
    let progressing = status::find(&next, status::PROGRESSING).is_some_and(|c| c.status == "True");
    write_status(job, &next, ctx).await?;
    Ok(Action::requeue(if progressing { REQUEUE_PROGRESSING } else { ctx.config.resync_interval }))
}

/// The job's total consumer lag from its pods' metrics.
async fn scrape_lag(ctx: &Context, job_ref: &JobRef) -> Result<Option<i64>, Error> {
    let pods: Api<Pod> = ctx.api(&job_ref.namespace);
    let listed =
        pods.list(&ListParams::default().labels(&job_ref.selector())).await.map_err(Error::api("listing the pods"))?;
    Ok(lag::consumer_lag(&listed.items, ctx.config.admin_port).await)
}

/// Server-side applies every child; returns the Deployment as the server has it. The job
/// file goes first so that new pods never start on an old one.
async fn apply_children(ctx: &Context, job_ref: &JobRef, rendered: Rendered) -> Result<Deployment, Error> {
    let namespace = &job_ref.namespace;
    apply_object(ctx, namespace, &rendered.config_map).await?;
    let (deployment, _, _) = futures::try_join!(
        apply_object(ctx, namespace, &rendered.deployment),
        apply_object(ctx, namespace, &rendered.service),
        apply_object(ctx, namespace, &rendered.pod_disruption_budget),
    )?;
    if ctx.config.keda_available {
        match &rendered.scaled_object {
            Some(scaled_object) => {
                apply_object(ctx, namespace, scaled_object).await?;
            }
            None => {
                let scaled_objects: Api<ScaledObject> = ctx.api(namespace);
                match scaled_objects.delete(&job_ref.name, &DeleteParams::default()).await {
                    Ok(_) => info!("autoscaling removed: deleted the ScaledObject"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::Api { what: "deleting the ScaledObject".into(), source }),
                }
            }
        }
    }
    Ok(deployment)
}

/// Server-side apply with the operator's field manager, taking ownership of conflicting fields.
async fn apply_object<K>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = ctx.api(namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await.map_err(|source| {
        Error::Apply { kind: K::kind(&K::DynamicType::default()).into_owned(), name: name.clone(), source }
    })
}

/// Marks an invalid spec in status and with a Warning Event, and waits for a new spec.
async fn report_invalid(job: &StreamJob, invalid: &InvalidSpec, ctx: &Context) -> Result<Action, Error> {
    let next = status::invalid_status(job, invalid, &now());
    let message = status::invalid_message(invalid);
    let already_reported = job.status.as_ref().and_then(|s| status::find(s, status::READY)).is_some_and(|c| {
        c.reason == status::INVALID_SPEC && c.message == message && c.observed_generation == job.metadata.generation
    });
    if !already_reported {
        warn!(%message, "invalid spec");
        ctx.publish(job, EventType::Warning, status::INVALID_SPEC, message).await;
    }
    write_status(job, &next, ctx).await?;
    Ok(Action::await_change())
}

/// Stops the job's pods before the StreamJob goes. Owner references would remove the
/// children too, but only once the StreamJob is gone; the pods should stop first.
async fn cleanup(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let Some(namespace) = job.namespace() else { return Ok(Action::await_change()) };
    let deployments: Api<Deployment> = ctx.api(&namespace);
    match deployments.delete(&job.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Api { what: "deleting the Deployment".into(), source }),
    }
    ctx.publish(job, EventType::Normal, "Deleted", "runtime pods stopped; the StreamJob can go".into()).await;
    Ok(Action::await_change())
}

/// The StreamJob with only a status, for server-side apply of the status subresource.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusPatch<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a StreamJobStatus,
}

async fn write_status(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) -> Result<(), Error> {
    if job.status.as_ref() == Some(next) {
        return Ok(());
    }
    let namespace = job.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let jobs: Api<StreamJob> = ctx.api(&namespace);
    let patch = StatusPatch { api_version: &StreamJob::api_version(&()), kind: &StreamJob::kind(&()), status: next };
    jobs.patch_status(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::api("writing the status"))?;
    Ok(())
}

/// Publishes an Event when the job reaches a resting phase.
async fn announce_phase(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) {
    let previous = job.status.as_ref().and_then(|s| s.phase);
    if next.phase == previous {
        return;
    }
    let ready = status::find(next, status::READY).map(|c| c.message.clone()).unwrap_or_default();
    match next.phase {
        Some(Phase::Running) if status::find(next, status::READY).is_some_and(|c| c.status == "True") => {
            ctx.publish(job, EventType::Normal, "Running", ready).await;
        }
        Some(Phase::Suspended) if next.replicas == 0 => {
            ctx.publish(job, EventType::Normal, "Suspended", "no pods run".into()).await;
        }
        _ => {}
    }
}

fn describe(change: Change, before: Option<&Deployment>, after: &Deployment) -> String {
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let was = before.map_or(0, replicas);
    let now = replicas(after);
    match change {
        Change::Deploy => format!("starting {now} runtime pods"),
        Change::Upgrade => format!("spec changed: replacing {was} pods with {now} new ones"),
        Change::Rescale => format!("parallelism {was} → {now}"),
        Change::Suspend => format!("suspended: stopping {was} pods"),
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(40, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(2, 0.5), Duration::from_secs(1));
    }
}

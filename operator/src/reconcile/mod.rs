//! The reconcile pipeline for one StreamJob: validate → render → apply → status.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use k8s_openapi::{NamespaceResourceScope, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{self, finalizer},
        reflector::ObjectRef,
    },
};
use rand::Rng;
use tracing::{instrument, warn};
use weir_crds::StreamJob;

use crate::{
    Error,
    admin_token::{AdminToken, Tokens},
    assignment::{self, Admin},
    cache::{self, Children, Lookup, Writes},
    children::Child,
    config::OperatorConfig,
    events::Announcer,
    labels::JobRef,
    metrics::Metrics,
    plan::rollout::{Hold, Step},
    plan::status::Pods,
    throttle::Throttle,
};

mod apply;
mod cleanup;
mod report;
mod savepoints;
mod steps;

pub(crate) use report::StatusPatch;

/// Finalizer that lets the operator stop a job's pods (and, with savepoints, take a final
/// one) before the StreamJob disappears.
pub const FINALIZER: &str = "weir.dev/cleanup";

/// Requeue while pods are changing, to follow the rollout.
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(5);
/// Requeue while pods wait for a partition slot, or an order to a pod failed: a pod's admin
/// server coming up is no event the controller sees, and pods are not Ready until assigned.
const REQUEUE_ASSIGNING: Duration = Duration::from_millis(500);
/// Soonest requeue, so a plan that waits for nothing does not spin.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Reason of `Degraded` when the API server refused or failed an apply of a child.
pub const APPLY_FAILED: &str = "ApplyFailed";
/// Longest back-off after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile needs: the client, events, metrics and the operator's settings.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Sends Kubernetes Events in the background.
    pub announcer: Announcer,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Operator-wide settings.
    pub config: OperatorConfig,
    /// Consecutive failures per StreamJob, for back-off.
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// Stores of the children, once the controller watches them; without them every read
    /// asks the API server.
    children: Option<Children>,
    /// The operator's own latest writes, to know when a store has caught up with them.
    pub writes: Arc<Writes>,
    /// Jobs whose pods are known to hold one partition slot each.
    assignments: Arc<assignment::Settled>,
    /// The runtime processes sent a slot.
    slots_given: Arc<assignment::Given>,
    /// The jobs' admin tokens.
    tokens: Arc<Tokens>,
    /// Slots for reconciles, as many as the API server keeps up with.
    throttle: Arc<Throttle>,
    /// Per StreamJob (by uid, as the tokens), the replica count it asks for and since when
    /// this operator has seen it ask: a scale-down waits until the ask has held (see [`crate::plan::rollout`]).
    asked: Arc<Mutex<HashMap<String, (i32, Timestamp)>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Context {
    /// A context for reconciles made with `client`.
    pub fn new(
        client: Client,
        announcer: Announcer,
        throttle: Arc<Throttle>,
        metrics: Arc<Metrics>,
        config: OperatorConfig,
    ) -> Self {
        Self {
            client,
            announcer,
            throttle,
            metrics,
            config,
            failures: Arc::default(),
            children: None,
            writes: Arc::default(),
            assignments: Arc::default(),
            slots_given: Arc::default(),
            tokens: Arc::default(),
            asked: Arc::default(),
        }
    }

    /// Since when `job` has asked for `replicas` pods, as far as this operator has seen;
    /// `now` when the ask is new.
    fn asked_since(&self, job: &JobRef, replicas: i32, now: Timestamp) -> Timestamp {
        let Ok(mut asked) = self.asked.lock() else { return now };
        let entry = asked.entry(job.uid().to_owned()).or_insert((replicas, now));
        if entry.0 != replicas {
            *entry = (replicas, now);
        }
        entry.1
    }

    /// This context reading children from `children`.
    pub fn with_children(&self, children: Children) -> Self {
        Self { children: Some(children), ..self.clone() }
    }

    /// The store of the StreamJobSavepoints, once the controller watches them.
    fn savepoint_store(&self) -> Option<&kube::runtime::reflector::Store<weir_crds::StreamJobSavepoint>> {
        self.children.as_ref().map(|c| &c.savepoints)
    }

    /// What the store of `K` says of `namespace/name`.
    fn cached<K: Child>(&self, namespace: &str, name: &str) -> Lookup<K> {
        cache::lookup(self.children.as_ref(), &self.writes, namespace, name)
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The job's admin token, written into its Secret on first use.
    async fn admin_token(&self, job_ref: &JobRef) -> Result<AdminToken, Error> {
        self.tokens.get(&self.client, job_ref).await
    }

    /// How to reach the job's pods' admin API.
    fn admin<'a>(&self, token: &'a AdminToken) -> Admin<'a> {
        Admin { port: self.config.admin_port, token }
    }

    /// Sends an Event about `job` without waiting for it.
    fn publish(&self, job: &StreamJob, type_: EventType, reason: &str, note: String) {
        self.publish_for("Reconcile", job, type_, reason, note);
    }

    /// An Event of `action`: what the finalizer does (the final savepoint) is `Delete`, not
    /// `Reconcile`.
    fn publish_for(&self, action: &str, job: &StreamJob, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        self.announcer.announce(event, job.object_ref(&()));
    }
}

/// Reconciles one StreamJob, through the finalizer so deletion runs `cleanup`.
#[instrument(skip_all, fields(streamjob = %job.name_any(), namespace = job.namespace().unwrap_or_default()))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let waiting = std::time::Instant::now();
    let _slot = ctx.throttle.slot().await;
    ctx.metrics.reconcile_wait.observe(waiting.elapsed().as_secs_f64());
    ctx.metrics.reconcile_limit.set(i64::try_from(ctx.throttle.limit()).unwrap_or(i64::MAX));
    let started = std::time::Instant::now();
    // The job may have changed while this reconcile waited for its slot.
    let job = ctx.children.as_ref().and_then(|c| c.jobs.get(&ObjectRef::from_obj(&*job))).unwrap_or(job);
    let namespace = job.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    // The cached job may not show the status this operator last wrote yet: build on that one.
    let job = match ctx.writes.newer_status(&job) {
        Some(status) => Arc::new(StreamJob { status: Some(status), ..(*job).clone() }),
        None => job,
    };
    let key = format!("{namespace}/{}", job.name_any());
    let jobs: Api<StreamJob> = ctx.api(&namespace);
    let result = finalizer(&jobs, FINALIZER, job, |event| async {
        match event {
            finalizer::Event::Apply(job) => steps::apply(&job, &ctx).await,
            finalizer::Event::Cleanup(job) => cleanup::cleanup(&job, &ctx).await,
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

/// When to look at the job again. While pods come or go, their progress (and a crash loop,
/// which the Deployment does not show) is polled; a rollout with no pod either way settles
/// on the Deployment's status, which the controller watches, so it waits for that like a
/// steady job.
fn requeue(step: Step, progressing: bool, pods: Pods, resync: Duration) -> Duration {
    let pods_moving = pods.desired > 0 || pods.existing > 0;
    let recheck = match step {
        Step::Hold { hold: Hold::InFlight(_), .. } if !pods_moving => resync,
        Step::Hold { recheck, .. } => recheck.min(REQUEUE_PROGRESSING),
        _ if progressing && pods_moving => REQUEUE_PROGRESSING,
        _ => resync,
    };
    recheck.max(MIN_REQUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::status::Change;

    const RESYNC: Duration = Duration::from_secs(30);

    fn pods(desired: i32, existing: i32) -> Pods {
        Pods { desired, existing, updated: 0, ready: 0, observed: true }
    }

    #[test]
    fn a_rollout_of_pods_is_polled() {
        let apply = Step::Apply { change: Some(Change::Deploy) };
        assert_eq!(requeue(apply, true, pods(2, 0), RESYNC), REQUEUE_PROGRESSING);
        assert_eq!(requeue(apply, true, pods(0, 2), RESYNC), REQUEUE_PROGRESSING, "pods stopping");
        let held = Step::Hold { hold: Hold::InFlight(Change::Upgrade), recheck: Duration::from_secs(2) };
        assert_eq!(requeue(held, true, pods(2, 2), RESYNC), Duration::from_secs(2));
    }

    #[test]
    fn a_rollout_without_pods_waits_for_the_deployments_status() {
        let apply = Step::Apply { change: Some(Change::Deploy) };
        assert_eq!(requeue(apply, true, pods(0, 0), RESYNC), RESYNC);
        let held = Step::Hold { hold: Hold::InFlight(Change::Deploy), recheck: Duration::from_secs(2) };
        assert_eq!(requeue(held, true, pods(0, 0), RESYNC), RESYNC);
    }

    #[test]
    fn a_pending_rescale_is_looked_at_when_its_window_ends() {
        let held = Step::Hold {
            hold: Hold::Stabilizing { remaining: Duration::from_secs(3) },
            recheck: Duration::from_secs(3),
        };
        assert_eq!(requeue(held, true, pods(0, 0), RESYNC), Duration::from_secs(3));
        assert_eq!(requeue(Step::Apply { change: None }, false, pods(2, 2), RESYNC), RESYNC);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(40, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(2, 0.5), Duration::from_secs(1));
    }
}

//! The reconcile pipeline for one StreamJob: validate → render → apply → status.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{self, finalizer},
        reflector::ObjectRef,
    },
};
use rand::Rng;
use serde::{Serialize, de::DeserializeOwned};
use tracing::{info, instrument, warn};
use weir_crds::{InvalidSpec, Phase, SavepointInfo, StreamJob, StreamJobStatus, UpgradeMode};

use crate::{
    Error,
    admin_token::{AdminToken, Expect, Tokens},
    assignment::{self, Admin},
    cache::{self, Cached, Children, Lookup, Writes},
    config::OperatorConfig,
    events::Announcer,
    failure,
    keda::ScaledObject,
    labels::{FIELD_MANAGER, JobRef},
    lag,
    metrics::Metrics,
    pod_watch,
    render::{self, Rendered, render},
    rollout::{self, Current, Hold, Inputs, Marks, Run, Step, Target},
    savepoint,
    status::{self, Change, Observation, Pods},
    throttle::Throttle,
};

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
/// The Event action of what the finalizer does.
const DELETE: &str = "Delete";
/// Savepoints kept in `status.savepointHistory`.
const SAVEPOINT_HISTORY: usize = 10;
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
    /// this operator has seen it ask: a scale-down waits until the ask has held (see [`rollout`]).
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

    /// What the store of `K` says of `namespace/name`.
    fn cached<K: Cached>(&self, namespace: &str, name: &str) -> Lookup<K> {
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

/// Reconciles one StreamJob, through the finalizer so deletion runs [`cleanup`].
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
    let before = read_deployment(ctx, &job_ref).await?;
    let current = before.as_ref().map(Current::of);
    let marks = current.as_ref().map(|c| c.marks.clone()).unwrap_or_default();
    let desired = render_clamped(job, &ctx.config, marks.source_partitions)?;
    let stable_job = marks.stable_spec.as_deref().and_then(|spec| with_spec(job, spec));
    let stable = stable_job.as_ref().map(|j| render_clamped(j, &ctx.config, marks.source_partitions)).transpose()?;
    let generation = job.metadata.generation.unwrap_or_default();
    let desired_spec = serde_json::to_string(&job.spec).map_err(Error::Serialize)?;
    let now = Timestamp::now();
    let desired_target = Target::of(&desired.deployment);
    let plan = rollout::plan(&Inputs {
        generation,
        asked_since: ctx.asked_since(&job_ref, desired_target.replicas, now),
        desired: desired_target,
        desired_spec: &desired_spec,
        stable: stable.as_ref().map(|r| Target::of(&r.deployment)),
        current: current.as_ref(),
        suspended: job.spec.suspend,
        mode: job.spec.effective_upgrade_mode(),
        rollout_timeout: job.spec.rollout_timeout.get(),
        stabilization: ctx.config.rescale_stabilization,
        now,
    });
    let mut marks = plan.marks;
    let run = match plan.run {
        Run::Stable => stable.unwrap_or_else(|| desired.clone()),
        Run::Desired => desired,
    };
    let mut report = Report {
        rollout: marks.rollout,
        rolled_back: marks.rolled_back == Some(generation),
        pods: before.as_ref().map(Pods::of).unwrap_or_default(),
        pending: None,
        taken: None,
    };
    let reported = match plan.step {
        Step::Hold { hold, .. } => {
            let replicas = Target::of(&run.deployment).replicas;
            let waiting = match hold {
                Hold::Stabilizing { remaining } => Some(format!(
                    "waiting {}s for the stabilization window after the last rollout",
                    remaining.as_secs()
                )),
                Hold::ScalingDownSoon { remaining } => {
                    Some(format!("scaling down in {}s if that many are still asked for", remaining.as_secs()))
                }
                Hold::InFlight(_) => None,
            };
            if let Some(waiting) = waiting {
                report.pending = Some((Change::Rescale, format!("{replicas} pods asked for: {waiting}")));
            }
            if let Err(error) = apply_held(ctx, &job_ref, &run).await {
                return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await);
            }
            observe_and_report(job, &job_ref, ctx, &report).await?
        }
        Step::Apply { change } => {
            // What the status reports does not depend on the server's answer to the applies:
            // the Deployment reports the counts it had until its controller acts on the
            // apply. So both go at once, saving a round trip.
            report.pods = Pods::expected(before.as_ref(), &run.deployment, change.is_some());
            let rolled = roll(ctx, job, &job_ref, before.as_ref(), run, &marks, change);
            // After a failed apply, the status waits for the retry's outcome, so a retry that
            // fails again does not clear the failure for a moment.
            let retrying = apply_failure(job).is_some();
            if retrying {
                if let Err(error) = rolled.await {
                    return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await);
                }
                observe_and_report(job, &job_ref, ctx, &report).await?
            } else {
                let (rolled, reported) = futures::join!(rolled, observe_and_report(job, &job_ref, ctx, &report));
                if let Err(error) = rolled {
                    return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await);
                }
                reported?
            }
        }
        Step::RollBack { failed } => {
            let note = format!(
                "the new pods were not ready within {}: rolling back the {} to the previous spec, restoring savepoint {}",
                job.spec.rollout_timeout.as_str(),
                failed.reason().to_lowercase(),
                marks.restore_from.as_deref().unwrap_or("none")
            );
            warn!("{note}");
            ctx.publish(job, EventType::Warning, "RolledBack", note);
            match roll(ctx, job, &job_ref, before.as_ref(), run, &marks, None).await {
                Ok(deployment) => report.pods = Pods::of(&deployment),
                Err(error) => return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await),
            }
            observe_and_report(job, &job_ref, ctx, &report).await?
        }
        Step::Savepoint { change } => {
            let pods: Api<Pod> = ctx.api(&job_ref.namespace);
            let listed = pods
                .list(&ListParams::default().labels(&job_ref.selector()))
                .await
                .map_err(Error::api("listing the pods"))?;
            let running = savepoint::running(&listed.items);
            if running.is_empty() {
                let note = "no pod is running to take a savepoint from: the new pods restore the latest checkpoints";
                ctx.publish(job, EventType::Normal, "NoSavepoint", note.into());
            } else {
                let reason = rollout::savepoint_reason(change);
                let id = savepoint::savepoint_id(&job_ref.name, generation, reason, Timestamp::now());
                announce_savepoint(job, ctx, &id, running.len()).await?;
                let token = ctx.admin_token(&job_ref).await?;
                match ctx
                    .throttle
                    .aside(savepoint::stop_with_savepoint(
                        &running,
                        ctx.admin(&token),
                        &id,
                        savepoint::SAVEPOINT_TIMEOUT,
                    ))
                    .await
                {
                    Ok(savepoint) => {
                        let note = format!("savepoint {id} of {} pods at {}", running.len(), savepoint.path);
                        info!("{note}");
                        ctx.publish(job, EventType::Normal, "SavepointTaken", note);
                        marks.restore_from = Some(id.clone());
                        marks.started = Some(Timestamp::now());
                        marks.source_partitions = savepoint.partition_count.or(marks.source_partitions);
                        report.taken = Some(SavepointInfo {
                            id,
                            path: savepoint.path,
                            completed_at: Time(savepoint.completed_at),
                            reason: reason.to_owned(),
                        });
                    }
                    Err(failed) => return give_up(job, &job_ref, ctx, before.as_ref(), failed).await,
                }
            }
            let mut run = run;
            clamp(&mut run, marks.source_partitions);
            match roll(ctx, job, &job_ref, before.as_ref(), run, &marks, Some(change)).await {
                Ok(deployment) => report.pods = Pods::of(&deployment),
                Err(error) => return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await),
            }
            observe_and_report(job, &job_ref, ctx, &report).await?
        }
    };
    // Only once the step went through: the Events tell what happened, and the slots follow
    // the pod count the server took.
    announce_phase(job, &reported.status, ctx);
    announce_failure(job, &reported.status, ctx);
    let assigned = ctx.throttle.aside(assign_slots(ctx, &job_ref, report.pods.desired, &reported.listed)).await;
    let mut after = requeue(plan.step, reported.progressing, report.pods, ctx.config.resync_interval);
    if assigned.is_some_and(|outcome| outcome.in_progress()) {
        after = after.min(REQUEUE_ASSIGNING);
    }
    Ok(Action::requeue(after))
}

/// What a reconcile reports in status besides what it observes of the pods.
struct Report {
    /// The rollout under way.
    rollout: Option<Change>,
    /// Whether the job's generation was rolled back.
    rolled_back: bool,
    /// The Deployment's pod counts once this reconcile's step is applied.
    pods: Pods,
    /// A change waiting (a rescale in its stabilization window).
    pending: Option<(Change, String)>,
    /// The savepoint this reconcile took.
    taken: Option<SavepointInfo>,
}

/// What [`observe_and_report`] observed and wrote.
struct Reported {
    progressing: bool,
    /// The job's pods.
    listed: Vec<Pod>,
    /// The status written.
    status: StreamJobStatus,
}

/// Observes the pods (consumer lag, failures) and writes the status.
async fn observe_and_report(
    job: &StreamJob,
    job_ref: &JobRef,
    ctx: &Context,
    report: &Report,
) -> Result<Reported, Error> {
    let generation = job.metadata.generation.unwrap_or_default();
    let pods = report.pods;
    let listed = list_pods(ctx, job_ref).await?;
    let consumer_lag = if pods.existing > 0 {
        ctx.throttle.aside(lag::consumer_lag(&listed, ctx.config.admin_port)).await
    } else {
        None
    };
    let rolled_back = report.rolled_back.then(|| {
        let message = format!(
            "generation {generation} was rolled back: its pods were not ready within {}; the previous spec runs \
             until the spec changes again",
            job.spec.rollout_timeout.as_str()
        );
        ("RolledBack".to_owned(), message)
    });
    let problem = rolled_back.or_else(|| failure::runtime_failure(&listed, Timestamp::now()));
    let observation = Observation {
        rollout: report.rollout,
        consumer_lag,
        pending: report.pending.clone(),
        problem,
        ..Observation::of(pods, job_ref.selector(), job.spec.suspend)
    };
    let next = report_status(job, ctx, &observation, report.taken.clone()).await?;
    let progressing = status::find(&next, status::PROGRESSING).is_some_and(|c| c.status == "True");
    Ok(Reported { progressing, listed, status: next })
}

/// Gives the running job's pods their partition slots, one each of the Deployment's
/// `replicas`, unless every pod is Ready and known to hold one already.
async fn assign_slots(ctx: &Context, job_ref: &JobRef, replicas: i32, pods: &[Pod]) -> Option<assignment::Outcome> {
    let slots = u32::try_from(replicas).ok().filter(|s| *s > 0)?;
    let key = format!("{}/{}", job_ref.namespace, job_ref.name);
    if ctx.assignments.holds(&key, slots, pods) {
        return None;
    }
    let token = match ctx.admin_token(job_ref).await {
        Ok(token) => token,
        Err(e) => {
            warn!("no partition slots given: {e}");
            return None;
        }
    };
    let outcome = assignment::assign(&key, pods, slots, &ctx.admin(&token), &ctx.slots_given).await;
    ctx.assignments.record(&key, slots, pods, &outcome);
    Some(outcome)
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

/// Renders `job` with its parallelism clamped to the source topic's partition count: more
/// pods than partitions would sit idle.
fn render_clamped(job: &StreamJob, config: &OperatorConfig, partitions: Option<i32>) -> Result<Rendered, Error> {
    let mut rendered = render(job, config)?;
    clamp(&mut rendered, partitions);
    Ok(rendered)
}

fn clamp(rendered: &mut Rendered, partitions: Option<i32>) {
    let Some(partitions) = partitions.filter(|p| *p > 0) else { return };
    if let Some(replicas) = rendered.deployment.spec.as_mut().and_then(|s| s.replicas.as_mut()) {
        *replicas = (*replicas).min(partitions);
    }
}

/// `job` running `spec` (the stable spec, as JSON) instead of its own.
fn with_spec(job: &StreamJob, spec: &str) -> Option<StreamJob> {
    match serde_json::from_str(spec) {
        Ok(spec) => Some(StreamJob { spec, ..job.clone() }),
        Err(e) => {
            warn!("the stable spec on the Deployment does not parse, so no rollback is possible: {e}");
            None
        }
    }
}

/// Applies the job file and the Deployment of `run` with `marks`, then the other children;
/// publishes the change. Returns the Deployment as the server has it.
async fn roll(
    ctx: &Context,
    job: &StreamJob,
    job_ref: &JobRef,
    before: Option<&Deployment>,
    mut run: Rendered,
    marks: &Marks,
    change: Option<Change>,
) -> Result<Deployment, Error> {
    render::restore_from(&mut run.deployment, marks.restore_from.as_deref());
    run.deployment.metadata.annotations.get_or_insert_default().extend(marks.annotations());
    let asked = job.spec.parallelism;
    let replicas = Target::of(&run.deployment).replicas;
    // A change of the job file goes before the Deployment whose new pods read it, so no new
    // pod reads the old file. When there is no file yet (a first deploy), pods wait for it
    // to appear, as the kubelet retries a volume, so both go at once. The other children
    // wait for neither.
    let no_file_yet = job_file_missing(ctx, job_ref, &run);
    let pods = async {
        // The pods mount their admin token: it exists before them. A first Deployment or a
        // change makes new pods, so the Secret is looked at then; a steady job's now and then.
        let expect = match (before, change) {
            (None, _) => Expect::Absent,
            (Some(_), Some(_)) => Expect::Needed,
            (Some(_), None) => Expect::Steady,
        };
        ctx.tokens.ensure(&ctx.client, job_ref, expect).await?;
        if !no_file_yet {
            apply_object(ctx, &job_ref.namespace, &run.config_map).await?;
            apply_object(ctx, &job_ref.namespace, &run.deployment).await
        } else {
            let config_map = apply_object(ctx, &job_ref.namespace, &run.config_map);
            let (_, deployment) =
                futures::try_join!(config_map, apply_object(ctx, &job_ref.namespace, &run.deployment))?;
            Ok(deployment)
        }
    };
    let (applied, ()) = futures::try_join!(pods, apply_auxiliary(ctx, job_ref, &run))?;
    if let Some(change) = change {
        let mut note = describe(change, before, &applied);
        if !job.spec.suspend && replicas < asked {
            note.push_str(&format!(" (parallelism {asked} is clamped to the source topic's {replicas} partitions)"));
        }
        info!(?change, "{note}");
        ctx.publish(job, EventType::Normal, change.reason(), note);
    }
    Ok(applied)
}

/// Shows the savepoint under way in status before the pods are asked for it.
async fn announce_savepoint(job: &StreamJob, ctx: &Context, id: &str, pods: usize) -> Result<(), Error> {
    let mut next = job.status.clone().unwrap_or_default();
    next.phase = Some(Phase::Checkpointing);
    let message = format!("stopping {pods} pods with savepoint {id}");
    status::set_progressing(&mut next, "Savepointing", &message, job.metadata.generation, &now());
    write_status(job, &next, ctx).await
}

/// A failed savepoint: the pods it stopped go on, and the rollout is given up until a retry.
async fn give_up(
    job: &StreamJob,
    job_ref: &JobRef,
    ctx: &Context,
    before: Option<&Deployment>,
    failed: savepoint::Failed,
) -> Result<Action, Error> {
    let token = ctx.admin_token(job_ref).await?;
    let unresumed = ctx.throttle.aside(savepoint::resume(&failed.stopped, &token)).await;
    let mut message = format!("savepoint failed, the old pods go on running: {}", failed.message);
    if !unresumed.is_empty() {
        message.push_str(&format!("; could not resume {}", unresumed.join(", ")));
    }
    warn!("{message}");
    ctx.publish(job, EventType::Warning, "SavepointFailed", message.clone());
    let observation = Observation {
        problem: Some(("SavepointFailed".into(), message.clone())),
        ..Observation::of(before.map(Pods::of).unwrap_or_default(), job_ref.selector(), false)
    };
    report_status(job, ctx, &observation, None).await?;
    Err(Error::Savepoint(message))
}

/// The message of the failed apply the job's status reports, if it reports one.
fn apply_failure(job: &StreamJob) -> Option<&str> {
    let degraded = status::find(job.status.as_ref()?, status::DEGRADED)?;
    (degraded.reason == APPLY_FAILED).then_some(degraded.message.as_str())
}

/// Reports an apply the API server refused or failed (an admission policy, a quota, an
/// outage) in status as `Degraded` with reason `ApplyFailed` (keeping a savepoint the step
/// took), and in a Warning Event when the message is new; returns the error, so the
/// reconcile is retried with back-off. Other errors pass through.
async fn report_failed_apply(
    job: &StreamJob,
    job_ref: &JobRef,
    ctx: &Context,
    report: &Report,
    failed: Error,
) -> Error {
    if !matches!(failed, Error::Apply { .. }) {
        return failed;
    }
    let message = failed.to_string();
    let observation = Observation {
        rollout: report.rollout,
        problem: Some((APPLY_FAILED.into(), message.clone())),
        ..Observation::of(report.pods, job_ref.selector(), job.spec.suspend)
    };
    if apply_failure(job) != Some(message.as_str()) {
        ctx.publish(job, EventType::Warning, APPLY_FAILED, message);
    }
    if let Err(e) = report_status(job, ctx, &observation, report.taken.clone()).await {
        warn!("reporting a failed apply in status: {e}");
    }
    failed
}

/// Writes the status that follows from `observation`, with the savepoint the reconcile took
/// (if it took one) in the history; returns it.
async fn report_status(
    job: &StreamJob,
    ctx: &Context,
    observation: &Observation,
    taken: Option<SavepointInfo>,
) -> Result<StreamJobStatus, Error> {
    let mut next = status::next_status(job, observation, &now());
    if let Some(savepoint) = taken {
        record_savepoint(&mut next, savepoint);
    }
    write_status(job, &next, ctx).await?;
    Ok(next)
}

/// Puts `savepoint` first in the history (kept to [`SAVEPOINT_HISTORY`]) and in `lastSavepoint`.
fn record_savepoint(status: &mut StreamJobStatus, savepoint: SavepointInfo) {
    status.savepoint_history.insert(0, savepoint.clone());
    status.savepoint_history.truncate(SAVEPOINT_HISTORY);
    status.last_savepoint = Some(savepoint);
}

/// The job's Deployment from the store when it has caught up with the operator's writes,
/// else from the API server: the rollout bookkeeping on it must not be older than the last
/// step taken.
async fn read_deployment(ctx: &Context, job_ref: &JobRef) -> Result<Option<Deployment>, Error> {
    if let Lookup::Known(cached) = ctx.cached::<Deployment>(&job_ref.namespace, &job_ref.name) {
        return Ok(cached.map(|d| (*d).clone()));
    }
    let deployments: Api<Deployment> = ctx.api(&job_ref.namespace);
    deployments.get_opt(&job_ref.name).await.map_err(Error::api("reading the Deployment"))
}

/// The job's pods, whatever their state, from the pod store (or, before it has listed them,
/// as the API server's watch cache has them): they feed the status (lag, failures) and
/// partition assignment, and a change of any of them brings another reconcile. The steps
/// that act on the pods themselves (savepoints) ask the server instead.
async fn list_pods(ctx: &Context, job_ref: &JobRef) -> Result<Vec<Pod>, Error> {
    let stored = ctx.children.as_ref().and_then(|c| pod_watch::pods_of(&c.pods, &job_ref.namespace, &job_ref.name));
    if let Some(pods) = stored {
        return Ok(pods);
    }
    let pods: Api<Pod> = ctx.api(&job_ref.namespace);
    let params = ListParams::default().labels(&job_ref.selector()).match_any();
    let listed = pods.list(&params).await.map_err(Error::api("listing the pods"))?;
    Ok(listed.items)
}

/// Whether the store knows the job file of `rendered` does not exist (yet).
fn job_file_missing(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> bool {
    let name = rendered.config_map.metadata.name.as_deref().unwrap_or_default();
    matches!(ctx.cached::<ConfigMap>(&job_ref.namespace, name), Lookup::Known(None))
}

/// The applies of a reconcile that holds the pods as they are: the children that do not
/// replace pods, and the job file if it is missing (a first deploy whose job file failed
/// while its Deployment went through: the pods wait for it).
async fn apply_held(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> Result<(), Error> {
    let file = async {
        if job_file_missing(ctx, job_ref, rendered) {
            apply_object(ctx, &job_ref.namespace, &rendered.config_map).await?;
        }
        Ok(())
    };
    futures::try_join!(file, apply_auxiliary(ctx, job_ref, rendered))?;
    Ok(())
}

/// Server-side applies the children that do not replace pods: the Service, the disruption
/// budget and the ScaledObject (or its removal).
async fn apply_auxiliary(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> Result<(), Error> {
    let namespace = &job_ref.namespace;
    futures::try_join!(
        apply_object(ctx, namespace, &rendered.service),
        apply_object(ctx, namespace, &rendered.pod_disruption_budget),
    )?;
    if ctx.config.keda_available {
        match &rendered.scaled_object {
            Some(scaled_object) => {
                apply_object(ctx, namespace, scaled_object).await?;
            }
            None if matches!(ctx.cached::<ScaledObject>(namespace, &job_ref.name), Lookup::Known(None)) => {}
            None => {
                let scaled_objects: Api<ScaledObject> = ctx.api(namespace);
                ctx.writes.deleted::<ScaledObject>(namespace, &job_ref.name);
                match scaled_objects.delete(&job_ref.name, &DeleteParams::default()).await {
                    Ok(_) => info!("autoscaling removed: deleted the ScaledObject"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::Api { what: "deleting the ScaledObject".into(), source }),
                }
            }
        }
    }
    Ok(())
}

/// Server-side apply with the operator's field manager, taking ownership of conflicting
/// fields; skipped when the cached object already is what the apply would make of it.
async fn apply_object<K>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Cached + Resource<Scope = NamespaceResourceScope> + DeserializeOwned + std::fmt::Debug,
{
    let mut object = object.clone();
    cache::stamp(&mut object).map_err(Error::Serialize)?;
    let name = object.meta().name.clone().unwrap_or_default();
    if let Lookup::Known(Some(live)) = ctx.cached::<K>(namespace, &name)
        && cache::up_to_date(&object, live.as_ref(), ctx.writes.generation::<K>(namespace, &name))
    {
        return Ok((*live).clone());
    }
    let api: Api<K> = ctx.api(namespace);
    let applied = api
        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .map_err(|source| Error::Apply { kind: K::kind(&()).into_owned(), name: name.clone(), source })?;
    ctx.writes.wrote(&applied);
    Ok(applied)
}

/// Marks an invalid spec in status and with a Warning Event, and waits for a new spec.
async fn report_invalid(job: &StreamJob, invalid: &InvalidSpec, ctx: &Context) -> Result<Action, Error> {
    let next = status::invalid_status(job, invalid, &now());
    let message = status::invalid_message(invalid);
    let already_reported =
        job.status.as_ref().is_some_and(|s| status::reports_invalid(s, &message, job.metadata.generation));
    if !already_reported {
        warn!(%message, "invalid spec");
        ctx.publish(job, EventType::Warning, status::INVALID_SPEC, message);
    }
    write_status(job, &next, ctx).await?;
    Ok(Action::await_change())
}

/// Stops the job's pods before the StreamJob goes, with a final savepoint when the job
/// upgrades through savepoints, so it can be recreated from it (`--restore-from`). Owner
/// references would remove the children too, but only once the StreamJob is gone; the pods
/// should stop first. A failed final savepoint is reported and does not block the deletion.
async fn cleanup(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let Some(namespace) = job.namespace() else { return Ok(Action::await_change()) };
    if job.spec.effective_upgrade_mode() == UpgradeMode::Savepoint {
        final_savepoint(job, ctx).await?;
    }
    let deployments: Api<Deployment> = ctx.api(&namespace);
    ctx.writes.deleted::<Deployment>(&namespace, &job.name_any());
    ctx.writes.forget_job(&namespace, &job.name_any());
    ctx.assignments.forget(&format!("{namespace}/{}", job.name_any()));
    ctx.slots_given.forget(&format!("{namespace}/{}", job.name_any()));
    if let Ok(job_ref) = JobRef::new(job) {
        ctx.tokens.forget(&job_ref);
        ctx.asked.lock().map(|mut asked| asked.remove(job_ref.uid())).ok();
    }
    match deployments.delete(&job.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Api { what: "deleting the Deployment".into(), source }),
    }
    ctx.publish_for(DELETE, job, EventType::Normal, "Deleted", "runtime pods stopped; the StreamJob can go".into());
    Ok(Action::await_change())
}

async fn final_savepoint(job: &StreamJob, ctx: &Context) -> Result<(), Error> {
    let job_ref = JobRef::new(job)?;
    let pods: Api<Pod> = ctx.api(&job_ref.namespace);
    let listed =
        pods.list(&ListParams::default().labels(&job_ref.selector())).await.map_err(Error::api("listing the pods"))?;
    let running = savepoint::running(&listed.items);
    if running.is_empty() {
        return Ok(());
    }
    let generation = job.metadata.generation.unwrap_or_default();
    let id = savepoint::savepoint_id(&job.name_any(), generation, "delete", Timestamp::now());
    let token = ctx.admin_token(&job_ref).await?;
    match ctx
        .throttle
        .aside(savepoint::stop_with_savepoint(&running, ctx.admin(&token), &id, savepoint::SAVEPOINT_TIMEOUT))
        .await
    {
        Ok(taken) => {
            let note = format!("final savepoint {id} at {}: recreate the job with it to resume", taken.path);
            info!("{note}");
            ctx.publish_for(DELETE, job, EventType::Normal, "SavepointTaken", note);
            let mut next = job.status.clone().unwrap_or_default();
            let info =
                SavepointInfo { id, path: taken.path, completed_at: Time(taken.completed_at), reason: "delete".into() };
            record_savepoint(&mut next, info);
            write_status(job, &next, ctx).await
        }
        Err(failed) => {
            let note = format!("final savepoint failed, deleting without it: {}", failed.message);
            warn!("{note}");
            ctx.publish_for(DELETE, job, EventType::Warning, "SavepointFailed", note);
            Ok(())
        }
    }
}

/// The StreamJob with only a status, for server-side apply of the status subresource.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusPatch<'a> {
    pub(crate) api_version: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) status: &'a StreamJobStatus,
}

async fn write_status(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) -> Result<(), Error> {
    if job.status.as_ref() == Some(next) {
        return Ok(());
    }
    let namespace = job.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let jobs: Api<StreamJob> = ctx.api(&namespace);
    let patch = StatusPatch { api_version: &StreamJob::api_version(&()), kind: &StreamJob::kind(&()), status: next };
    let written = jobs
        .patch_status(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::api("writing the status"))?;
    ctx.writes.wrote_status(&written);
    Ok(())
}

/// Publishes an Event when the job reaches a resting phase.
fn announce_phase(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) {
    let previous = job.status.as_ref().and_then(|s| s.phase);
    if next.phase == previous {
        return;
    }
    let ready = status::find(next, status::READY).map(|c| c.message.clone()).unwrap_or_default();
    match next.phase {
        Some(Phase::Running) if status::find(next, status::READY).is_some_and(|c| c.status == "True") => {
            ctx.publish(job, EventType::Normal, "Running", ready);
        }
        Some(Phase::Suspended) if next.replicas == 0 => {
            ctx.publish(job, EventType::Normal, "Suspended", "no pods run".into());
        }
        _ => {}
    }
}

/// Publishes a Warning Event when `Degraded` reports a runtime failure it did not report
/// before with the same message, so a pod failing again the same way adds no Event.
fn announce_failure(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) {
    let Some(degraded) = status::find(next, status::DEGRADED).filter(|c| c.reason == failure::RUNTIME_FAILED) else {
        return;
    };
    let before = job.status.as_ref().and_then(|s| status::find(s, status::DEGRADED));
    if before.is_some_and(|c| c.reason == degraded.reason && c.message == degraded.message) {
        return;
    }
    warn!(message = %degraded.message, "runtime failed");
    ctx.publish(job, EventType::Warning, failure::RUNTIME_FAILED, degraded.message.clone());
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
        Change::RollBack => format!("rolling back: replacing {was} pods with {now} on the previous spec"),
    }
}

use status::now;

#[cfg(test)]
mod tests {
    use super::*;

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

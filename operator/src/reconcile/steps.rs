//! The step executor: performs the step the rollout plan chose, savepoints included.

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::ListParams,
    runtime::{controller::Action, events::EventType},
};
use tracing::{info, warn};
use weir_crds::{SavepointInfo, StreamJob};

use super::{
    Context, MIN_REQUEUE, REQUEUE_ASSIGNING, REQUEUE_PROGRESSING,
    apply::{apply_held, read_deployment, roll},
    report::{
        Report, announce_failure, announce_phase, announce_savepoint, apply_failure, observe_and_report,
        record_savepoint, report_failed_apply, report_invalid, report_status, write_status,
    },
    requeue, savepoints,
};
use crate::{
    Error, assignment,
    config::OperatorConfig,
    labels::JobRef,
    observe,
    plan::rollout::{self, Hold, Inputs, Run, Step},
    plan::status::{Change, Observation, Pods},
    render::{Rendered, render},
    savepoint,
};

/// One reconcile of a job that is not being deleted: validate, render, plan the rollout
/// step and take it, report, give the pods their slots, take the savepoints asked for.
pub(super) async fn apply(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    if let Err(invalid) = weir_crds::validate(&job.spec) {
        return report_invalid(job, &invalid, ctx).await;
    }
    let job_ref = JobRef::new(job)?;
    let before = read_deployment(ctx, &job_ref).await?;
    let current = before.as_ref().map(observe::current);
    let marks = current.as_ref().map(|c| c.marks.clone()).unwrap_or_default();
    let desired = render_clamped(job, &ctx.config, marks.source_partitions)?;
    let stable_job = marks.stable_spec.as_deref().and_then(|spec| with_spec(job, spec));
    let stable = stable_job.as_ref().map(|j| render_clamped(j, &ctx.config, marks.source_partitions)).transpose()?;
    let generation = job.metadata.generation.unwrap_or_default();
    let desired_spec = serde_json::to_string(&job.spec).map_err(Error::Serialize)?;
    let now = Timestamp::now();
    let desired_target = observe::target(&desired.deployment);
    let plan = rollout::plan(&Inputs {
        generation,
        asked_since: ctx.asked_since(&job_ref, desired_target.replicas, now),
        desired: desired_target,
        desired_spec: &desired_spec,
        stable: stable.as_ref().map(|r| observe::target(&r.deployment)),
        current: current.as_ref(),
        suspended: job.spec.suspend,
        mode: job.spec.effective_upgrade_mode(),
        rollout_timeout: job.spec.rollout_timeout.get(),
        stabilization: ctx.config.rescale_stabilization,
        now,
    });
    let mut marks = plan.marks;
    // The first pods start from `restoreFrom`; later ones continue their own lineage.
    if let (None, Some(restore)) = (&before, &job.spec.restore_from) {
        match savepoints::restore_point(ctx, &job_ref, restore).await? {
            Ok(point) => marks.restore_from = Some(point),
            Err(why) => return restore_unavailable(job, &job_ref, ctx, why).await,
        }
    }
    let run = match plan.run {
        Run::Stable => stable.unwrap_or_else(|| desired.clone()),
        Run::Desired => desired,
    };
    let mut report = Report {
        rollout: marks.rollout,
        rolled_back: marks.rolled_back == Some(generation),
        pods: before.as_ref().map(observe::pods).unwrap_or_default(),
        pending: None,
        taken: None,
    };
    let reported = match plan.step {
        Step::Hold { hold, .. } => {
            let replicas = observe::target(&run.deployment).replicas;
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
            report.pods = observe::pods_after_apply(before.as_ref(), &run.deployment, change.is_some());
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
                Ok(deployment) => report.pods = observe::pods(&deployment),
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
                Ok(deployment) => report.pods = observe::pods(&deployment),
                Err(error) => return Err(report_failed_apply(job, &job_ref, ctx, &report, error).await),
            }
            // Recorded once the new pods are on their way, so it adds nothing to the downtime.
            if let Some(taken) = &report.taken {
                savepoints::record(ctx, job, &job_ref, taken, marks.source_partitions).await;
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
    let steady = match plan.step {
        _ if job.spec.suspend => Err("the job is suspended"),
        Step::Apply { change: None } if report.pods.settled() && !reported.progressing => Ok(()),
        _ => Err("a rollout is in flight"),
    };
    // Read once: what the steps below write shows in the next reconcile.
    let known = savepoints::of_job(ctx, &job_ref).await?;
    let taken = savepoints::take_requested(ctx, job, &job_ref, &known, steady, &reported.listed).await?;
    if steady.is_ok() {
        savepoints::retain(ctx, job, &job_ref, &known, marks.restore_from.as_deref()).await?;
        if let Some(due) = savepoints::periodic(ctx, job, &job_ref, &known).await? {
            after = after.min(due).max(MIN_REQUEUE);
        }
    }
    if !taken.is_empty() {
        let mut next = reported.status.clone();
        for info in taken {
            record_savepoint(&mut next, info);
        }
        write_status(job, &next, ctx).await?;
    }
    Ok(Action::requeue(after))
}

/// A first deploy waits for the savepoint it restores: `Degraded` says why, and the job is
/// looked at again shortly (the savepoint may be in progress).
async fn restore_unavailable(job: &StreamJob, job_ref: &JobRef, ctx: &Context, why: String) -> Result<Action, Error> {
    let observation = Observation {
        problem: Some((savepoints::RESTORE_UNAVAILABLE.into(), why)),
        ..Observation::of(Pods::default(), job_ref.selector(), job.spec.suspend)
    };
    report_status(job, ctx, &observation, None).await?;
    Ok(Action::requeue(REQUEUE_PROGRESSING))
}

/// Gives the running job's pods their partition slots, one each of the Deployment's
/// `replicas`, unless every pod is Ready and known to hold one already.
pub(super) async fn assign_slots(
    ctx: &Context,
    job_ref: &JobRef,
    replicas: i32,
    pods: &[Pod],
) -> Option<assignment::Outcome> {
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

/// Renders `job` with its parallelism clamped to the source topic's partition count: more
/// pods than partitions would sit idle.
pub(super) fn render_clamped(
    job: &StreamJob,
    config: &OperatorConfig,
    partitions: Option<i32>,
) -> Result<Rendered, Error> {
    let mut rendered = render(job, config)?;
    clamp(&mut rendered, partitions);
    Ok(rendered)
}

pub(super) fn clamp(rendered: &mut Rendered, partitions: Option<i32>) {
    let Some(partitions) = partitions.filter(|p| *p > 0) else { return };
    if let Some(replicas) = rendered.deployment.spec.as_mut().and_then(|s| s.replicas.as_mut()) {
        *replicas = (*replicas).min(partitions);
    }
}

/// `job` running `spec` (the stable spec, as JSON) instead of its own.
pub(super) fn with_spec(job: &StreamJob, spec: &str) -> Option<StreamJob> {
    match serde_json::from_str(spec) {
        Ok(spec) => Some(StreamJob { spec, ..job.clone() }),
        Err(e) => {
            warn!("the stable spec on the Deployment does not parse, so no rollback is possible: {e}");
            None
        }
    }
}

/// A failed savepoint: the pods it stopped go on, and the rollout is given up until a retry.
pub(super) async fn give_up(
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
        ..Observation::of(before.map(observe::pods).unwrap_or_default(), job_ref.selector(), false)
    };
    report_status(job, ctx, &observation, None).await?;
    Err(Error::Savepoint(message))
}

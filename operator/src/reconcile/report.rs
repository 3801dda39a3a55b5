//! What a reconcile tells: the observation of the pods, the one status writer, the Events.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde::Serialize;
use tracing::warn;
use weir_crds::{InvalidSpec, Phase, SavepointInfo, StreamJob, StreamJobStatus};

use super::{APPLY_FAILED, Context};
use crate::{
    Error,
    labels::{FIELD_MANAGER, JobRef},
    lag, observe,
    plan::failure,
    plan::status::{self, Change, Observation, Pods},
    pod_watch,
};

use crate::plan::status::now;

/// Savepoints kept in `status.savepointHistory`.
const SAVEPOINT_HISTORY: usize = 10;

/// What a reconcile reports in status besides what it observes of the pods.
pub(super) struct Report {
    /// The rollout under way.
    pub(super) rollout: Option<Change>,
    /// Whether the job's generation was rolled back.
    pub(super) rolled_back: bool,
    /// The Deployment's pod counts once this reconcile's step is applied.
    pub(super) pods: Pods,
    /// A change waiting (a rescale in its stabilization window).
    pub(super) pending: Option<(Change, String)>,
    /// The savepoint this reconcile took.
    pub(super) taken: Option<SavepointInfo>,
}

/// What [`observe_and_report`] observed and wrote.
pub(super) struct Reported {
    pub(super) progressing: bool,
    /// The job's pods.
    pub(super) listed: Vec<Pod>,
    /// The status written.
    pub(super) status: StreamJobStatus,
}

/// Observes the pods (consumer lag, failures) and writes the status.
pub(super) async fn observe_and_report(
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
    let problem =
        rolled_back.or_else(|| failure::runtime_failure(&observe::runtime_containers(&listed), Timestamp::now()));
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

/// Shows the savepoint under way in status before the pods are asked for it.
pub(super) async fn announce_savepoint(job: &StreamJob, ctx: &Context, id: &str, pods: usize) -> Result<(), Error> {
    let mut next = job.status.clone().unwrap_or_default();
    next.phase = Some(Phase::Checkpointing);
    let message = format!("stopping {pods} pods with savepoint {id}");
    status::set_progressing(&mut next, "Savepointing", &message, job.metadata.generation, &now());
    write_status(job, &next, ctx).await
}

/// The message of the failed apply the job's status reports, if it reports one.
pub(super) fn apply_failure(job: &StreamJob) -> Option<&str> {
    let degraded = status::find(job.status.as_ref()?, status::DEGRADED)?;
    (degraded.reason == APPLY_FAILED).then_some(degraded.message.as_str())
}

/// Reports an apply the API server refused or failed (an admission policy, a quota, an
/// outage) in status as `Degraded` with reason `ApplyFailed` (keeping a savepoint the step
/// took), and in a Warning Event when the message is new; returns the error, so the
/// reconcile is retried with back-off. Other errors pass through.
pub(super) async fn report_failed_apply(
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
pub(super) async fn report_status(
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
pub(super) fn record_savepoint(status: &mut StreamJobStatus, savepoint: SavepointInfo) {
    status.savepoint_history.insert(0, savepoint.clone());
    status.savepoint_history.truncate(SAVEPOINT_HISTORY);
    status.last_savepoint = Some(savepoint);
}

/// The job's pods, whatever their state, from the pod store (or, before it has listed them,
/// as the API server's watch cache has them): they feed the status (lag, failures) and
/// partition assignment, and a change of any of them brings another reconcile. The steps
/// that act on the pods themselves (savepoints) ask the server instead.
pub(super) async fn list_pods(ctx: &Context, job_ref: &JobRef) -> Result<Vec<Pod>, Error> {
    let stored = ctx.children.as_ref().and_then(|c| pod_watch::pods_of(&c.pods, &job_ref.namespace, &job_ref.name));
    if let Some(pods) = stored {
        return Ok(pods);
    }
    let pods: Api<Pod> = ctx.api(&job_ref.namespace);
    let params = ListParams::default().labels(&job_ref.selector()).match_any();
    let listed = pods.list(&params).await.map_err(Error::api("listing the pods"))?;
    Ok(listed.items)
}

/// Marks an invalid spec in status and with a Warning Event, and waits for a new spec.
pub(super) async fn report_invalid(job: &StreamJob, invalid: &InvalidSpec, ctx: &Context) -> Result<Action, Error> {
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

/// The StreamJob with only a status, for server-side apply of the status subresource.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusPatch<'a> {
    pub(crate) api_version: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) status: &'a StreamJobStatus,
}

pub(super) async fn write_status(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) -> Result<(), Error> {
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
pub(super) fn announce_phase(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) {
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
pub(super) fn announce_failure(job: &StreamJob, next: &StreamJobStatus, ctx: &Context) {
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

//! Savepoints as resources. Every savepoint the operator takes is recorded as a
//! `StreamJobSavepoint` named by its id, so `kubectl get sjsp` lists a job's history; the
//! ones a user creates are taken here, while the job's pods run steadily, or adopted when
//! they name an existing savepoint's `path`. The records carry the job's label and no owner
//! reference: a job's history outlives it, so a deleted job can be recreated from its
//! final savepoint.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::events::EventType,
};
use tracing::{info, warn};
use weir_crds::{
    JOB_LABEL, JobReference, RestoreFrom, SavepointInfo, SavepointReason, SavepointState, StreamJob,
    StreamJobSavepoint, StreamJobSavepointSpec, StreamJobSavepointStatus, Time,
};

use super::Context;
use crate::{
    Error,
    labels::{FIELD_MANAGER, JobRef},
    plan::savepoint as plan,
    savepoint::{self, Taken},
};

/// Marks a savepoint the operator asked for (periodic) with why, for when it is taken.
const REASON_ANNOTATION: &str = "weir.dev/savepoint-reason";

/// A StreamJobSavepoint of the job named `name`, labelled with the job, disposed of on
/// deletion as `spec.savepoints` says.
fn new_savepoint(job: &StreamJob, job_ref: &JobRef, name: &str) -> StreamJobSavepoint {
    StreamJobSavepoint {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(job_ref.namespace.clone()),
            labels: Some(job_ref.selector_labels()),
            ..ObjectMeta::default()
        },
        spec: StreamJobSavepointSpec {
            job_ref: JobReference { name: job_ref.name.clone() },
            path: None,
            dispose_on_delete: job.spec.savepoints.as_ref().is_some_and(|p| p.dispose_on_delete),
        },
        status: None,
    }
}

/// Reason of `Degraded` while the savepoint a new job restores cannot be used.
pub(super) const RESTORE_UNAVAILABLE: &str = "RestoreFromUnavailable";

/// What the first pods of a job restore (`WEIR_RESTORE_FROM`): the savepoint's folder, or why
/// it cannot be had yet.
pub(super) async fn restore_point(
    ctx: &Context,
    job_ref: &JobRef,
    restore: &RestoreFrom,
) -> Result<Result<String, String>, Error> {
    if let Some(path) = &restore.path {
        return Ok(Ok(path.clone()));
    }
    let Some(name) = &restore.savepoint else { return Ok(Err("restoreFrom names no savepoint".into())) };
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    let savepoint = api.get_opt(name).await.map_err(Error::api("reading the savepoint to restore"))?;
    let Some(savepoint) = savepoint else {
        return Ok(Err(format!("restoreFrom.savepoint: no StreamJobSavepoint {name} in {}", job_ref.namespace)));
    };
    let status = savepoint.status.unwrap_or_default();
    Ok(match (status.state, status.path) {
        (Some(SavepointState::Completed), Some(path)) => Ok(path),
        (Some(SavepointState::Failed), _) => Err(format!(
            "restoreFrom.savepoint: {name} failed: {}",
            status.error.as_deref().unwrap_or("no reason given")
        )),
        _ => Err(format!("restoreFrom.savepoint: {name} is not completed yet")),
    })
}

/// Records a savepoint the operator took for `reason` as a completed StreamJobSavepoint.
/// A failure to record is reported in an Event and does not undo the savepoint.
pub(super) async fn record(
    ctx: &Context,
    job: &StreamJob,
    job_ref: &JobRef,
    info: &SavepointInfo,
    partitions: Option<i32>,
) {
    let reason = SavepointReason::from_name(&info.reason).unwrap_or(SavepointReason::Manual);
    let savepoint = new_savepoint(job, job_ref, &info.id);
    let status = StreamJobSavepointStatus {
        state: Some(SavepointState::Completed),
        reason: Some(reason),
        path: Some(info.path.clone()),
        completed_at: Some(info.completed_at.clone()),
        partitions,
        error: None,
        job_generation: job.metadata.generation,
    };
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let written = match api.patch(&info.id, &params, &Patch::Apply(&savepoint)).await {
        Ok(_) => write_status(&api, &info.id, &status).await,
        Err(source) => Err(Error::Api { what: "recording the savepoint".into(), source }),
    };
    if let Err(e) = written {
        let note = format!("savepoint {} was taken, but recording it as a StreamJobSavepoint failed: {e}", info.id);
        warn!("{note}");
        ctx.publish(job, EventType::Warning, "SavepointNotRecorded", note);
    }
}

/// Takes or adopts the savepoints users asked for of `job`, oldest first, when its pods run
/// steadily (`steady`); otherwise marks them pending with why. Returns the savepoints now
/// completed, for the job's status history.
pub(super) async fn take_requested(
    ctx: &Context,
    job: &StreamJob,
    job_ref: &JobRef,
    savepoints: &[StreamJobSavepoint],
    steady: Result<(), &str>,
    pods: &[Pod],
) -> Result<Vec<SavepointInfo>, Error> {
    let mut open: Vec<&StreamJobSavepoint> = savepoints.iter().filter(|s| s.is_open()).collect();
    open.sort_by_key(|s| (s.creation_timestamp(), s.name_any()));
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    let mut completed = Vec::new();
    for requested in open {
        let name = requested.name_any();
        let reason = requested_reason(requested);
        if requested.labels().get(JOB_LABEL) != Some(&job_ref.name) {
            label(&api, &name, job_ref).await?;
        }
        if let Some(path) = requested.spec.path.clone() {
            let adopted = completed_status(job, reason, path.clone(), Time(Timestamp::now()), None);
            write_status(&api, &name, &adopted).await?;
            info!(savepoint = %name, %path, "adopted the savepoint");
            completed.push(SavepointInfo {
                id: name,
                path,
                completed_at: Time(Timestamp::now()),
                reason: reason.name().into(),
            });
            continue;
        }
        let running = savepoint::running(pods);
        let waiting = match steady {
            Err(why) => Some(why),
            Ok(()) if running.is_empty() => Some("the job runs no pods"),
            Ok(()) => None,
        };
        if let Some(why) = waiting {
            let pending = StreamJobSavepointStatus {
                state: Some(SavepointState::Pending),
                reason: Some(reason),
                error: Some(format!("waiting: {why}")),
                ..StreamJobSavepointStatus::default()
            };
            if requested.status.as_ref() != Some(&pending) {
                write_status(&api, &name, &pending).await?;
            }
            continue;
        }
        let in_progress = StreamJobSavepointStatus {
            state: Some(SavepointState::InProgress),
            reason: Some(reason),
            ..StreamJobSavepointStatus::default()
        };
        write_status(&api, &name, &in_progress).await?;
        let token = ctx.admin_token(job_ref).await?;
        let taken = ctx.throttle.aside(savepoint::take_savepoint(
            &running,
            ctx.admin(&token),
            &name,
            savepoint::SAVEPOINT_TIMEOUT,
        ));
        match taken.await {
            Ok(Taken { path, completed_at, partition_count }) => {
                let note = format!("savepoint {name} of {} pods at {path}", running.len());
                info!("{note}");
                ctx.publish(job, EventType::Normal, "SavepointTaken", note);
                let done = completed_status(job, reason, path.clone(), Time(completed_at), partition_count);
                write_status(&api, &name, &done).await?;
                completed.push(SavepointInfo {
                    id: name,
                    path,
                    completed_at: Time(completed_at),
                    reason: reason.name().into(),
                });
            }
            Err(failed) => {
                let note = format!("savepoint {name} failed: {}", failed.message);
                warn!("{note}");
                ctx.publish(job, EventType::Warning, "SavepointFailed", note);
                let failed = StreamJobSavepointStatus {
                    state: Some(SavepointState::Failed),
                    reason: Some(reason),
                    error: Some(failed.message),
                    job_generation: job.metadata.generation,
                    ..StreamJobSavepointStatus::default()
                };
                write_status(&api, &name, &failed).await?;
            }
        }
    }
    Ok(completed)
}

fn completed_status(
    job: &StreamJob,
    reason: SavepointReason,
    path: String,
    at: Time,
    partitions: Option<i32>,
) -> StreamJobSavepointStatus {
    StreamJobSavepointStatus {
        state: Some(SavepointState::Completed),
        reason: Some(reason),
        path: Some(path),
        completed_at: Some(at),
        partitions,
        error: None,
        job_generation: job.metadata.generation,
    }
}

/// Why a savepoint to take was asked for: the operator marks its periodic ones.
fn requested_reason(savepoint: &StreamJobSavepoint) -> SavepointReason {
    let marked = savepoint.annotations().get(REASON_ANNOTATION).and_then(|r| SavepointReason::from_name(r));
    marked.unwrap_or(SavepointReason::Manual)
}

/// The job's savepoints: from the store when the controller watches them, else from the
/// API server.
pub(super) async fn of_job(ctx: &Context, job_ref: &JobRef) -> Result<Vec<StreamJobSavepoint>, Error> {
    let of_job = |s: &StreamJobSavepoint| s.spec.job_ref.name == job_ref.name;
    if let Some(store) = ctx.savepoint_store() {
        let namespace = Some(job_ref.namespace.as_str());
        let stored = store.state().into_iter().filter(|s| s.namespace().as_deref() == namespace && of_job(s));
        return Ok(stored.map(|s| (*s).clone()).collect());
    }
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    let listed = api.list(&ListParams::default()).await.map_err(Error::api("listing the savepoints"))?;
    Ok(listed.items.into_iter().filter(of_job).collect())
}

/// Asks for a periodic savepoint when one is due (the job's reconcile takes it once the
/// watch brings it back); returns how long until the next is due, to look again then.
pub(super) async fn periodic(
    ctx: &Context,
    job: &StreamJob,
    job_ref: &JobRef,
    savepoints: &[StreamJobSavepoint],
) -> Result<Option<Duration>, Error> {
    let Some(interval) = job.spec.savepoints.as_ref().and_then(|p| p.interval.as_ref()).map(|i| i.get()) else {
        return Ok(None);
    };
    if savepoints.iter().any(StreamJobSavepoint::is_open) {
        return Ok(Some(interval));
    }
    let newest = savepoints.iter().filter_map(|s| s.status.as_ref()?.completed_at.as_ref().map(|t| t.0)).max();
    let created = job.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0);
    let now = Timestamp::now();
    let wait = plan::until_periodic(newest, created, interval, now);
    if !wait.is_zero() {
        return Ok(Some(wait));
    }
    let generation = job.metadata.generation.unwrap_or_default();
    let id = savepoint::savepoint_id(&job_ref.name, generation, SavepointReason::Periodic.name(), now);
    let mut asked = new_savepoint(job, job_ref, &id);
    asked.metadata.annotations =
        Some([(REASON_ANNOTATION.to_owned(), SavepointReason::Periodic.name().to_owned())].into());
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    api.patch(&id, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&asked))
        .await
        .map_err(Error::api("asking for a periodic savepoint"))?;
    info!(savepoint = %id, "a periodic savepoint is due");
    Ok(Some(interval))
}

/// Deletes the operator's completed savepoints of the job that `spec.savepoints` no longer
/// keeps (never the one its pods restore from, `restoring`; never a user's own).
pub(super) async fn retain(
    ctx: &Context,
    job: &StreamJob,
    job_ref: &JobRef,
    savepoints: &[StreamJobSavepoint],
    restoring: Option<&str>,
) -> Result<(), Error> {
    let Some(policy) = &job.spec.savepoints else { return Ok(()) };
    let max_count = policy.max_count.and_then(|c| usize::try_from(c).ok());
    let max_age = policy.max_age.as_ref().map(|a| a.get());
    if max_count.is_none() && max_age.is_none() {
        return Ok(());
    }
    let kept: Vec<plan::Kept> = savepoints
        .iter()
        .filter_map(|s| {
            let status = s.status.as_ref()?;
            let operators = status.reason.is_some_and(|r| r != SavepointReason::Manual);
            let completed_at = status.completed_at.as_ref()?.0;
            let name = s.name_any();
            let in_use = restoring.is_some_and(|r| r == name || Some(r) == status.path.as_deref());
            (operators && status.state == Some(SavepointState::Completed)).then_some(plan::Kept {
                name,
                completed_at,
                in_use,
            })
        })
        .collect();
    let api: Api<StreamJobSavepoint> = ctx.api(&job_ref.namespace);
    for name in plan::expired(&kept, max_count, max_age, Timestamp::now()) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(savepoint = %name, "retention: deleted the savepoint"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(Error::Api { what: format!("deleting savepoint {name}"), source }),
        }
    }
    Ok(())
}

/// Puts the job's label on a savepoint a user made, so a label selector lists the job's
/// history whole.
async fn label(api: &Api<StreamJobSavepoint>, name: &str, job_ref: &JobRef) -> Result<(), Error> {
    let metadata =
        ObjectMeta { name: Some(name.to_owned()), labels: Some(job_ref.selector_labels()), ..ObjectMeta::default() };
    let patch = Partial { metadata: Some(metadata), ..Partial::new() };
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::api("labelling the savepoint"))?;
    Ok(())
}

/// Part of a StreamJobSavepoint, for a server-side apply of just that part.
#[derive(serde::Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Partial<'a> {
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ObjectMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a StreamJobSavepointStatus>,
}

impl Partial<'_> {
    fn new() -> Self {
        Self {
            api_version: StreamJobSavepoint::api_version(&()).into_owned(),
            kind: StreamJobSavepoint::kind(&()).into_owned(),
            metadata: None,
            status: None,
        }
    }
}

async fn write_status(
    api: &Api<StreamJobSavepoint>,
    name: &str,
    status: &StreamJobSavepointStatus,
) -> Result<(), Error> {
    let patch = Partial { status: Some(status), ..Partial::new() };
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::api("writing the savepoint's status"))?;
    Ok(())
}

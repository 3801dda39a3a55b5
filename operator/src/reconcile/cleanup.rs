//! The finalizer: stops the pods (with a final savepoint) before the StreamJob goes.

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{controller::Action, events::EventType},
};
use tracing::{info, warn};
use weir_crds::{SavepointInfo, StreamJob, UpgradeMode};

use super::Context;
use super::{
    report::{record_savepoint, write_status},
    savepoints,
};
use crate::{Error, labels::JobRef, savepoint};

/// The Event action of what the finalizer does.
const DELETE: &str = "Delete";

/// Stops the job's pods before the StreamJob goes, with a final savepoint when the job
/// upgrades through savepoints, so it can be recreated from it (`--restore-from`). Owner
/// references would remove the children too, but only once the StreamJob is gone; the pods
/// should stop first. A failed final savepoint is reported and does not block the deletion.
pub(super) async fn cleanup(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
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

pub(super) async fn final_savepoint(job: &StreamJob, ctx: &Context) -> Result<(), Error> {
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
            savepoints::record(ctx, job, &job_ref, &info, taken.partition_count).await;
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

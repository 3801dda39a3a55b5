//! A controller over the StreamJobSavepoints themselves (the job's reconcile takes them):
//! with `disposeOnDelete`, a finalizer that removes the savepoint's files from storage before
//! the resource goes, kept with the error in status (and retried with back-off) while that
//! fails or while the job's pods restore from it; and a savepoint asked of a job that does
//! not exist is marked failed. The decisions are [`crate::plan::savepoint`]'s.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType},
        watcher,
    },
};
use serde::Serialize;
use tracing::{info, warn};
use weir_crds::{SavepointState, StreamJob, StreamJobSavepoint, StreamJobSavepointStatus};

use crate::{
    Error,
    events::Announcer,
    plan::{
        rollout::RESTORE_FROM_ANNOTATION,
        savepoint::{Next, SavepointView, next},
    },
};

/// The finalizer that disposes of a savepoint's files.
pub const DISPOSE_FINALIZER: &str = "weir.dev/dispose";
/// Field manager of the finalizer and of what this controller writes in status, apart from
/// the job's reconcile (which owns the rest of the status).
const FIELD_MANAGER: &str = "weir-operator-savepoints";
/// How soon a savepoint kept while its job restores from it is looked at again.
const IN_USE_RECHECK: Duration = Duration::from_secs(30);
/// Longest back-off between attempts at a failing disposal.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the savepoint controller needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Sends Events.
    pub announcer: Announcer,
    /// Failed attempts in a row per savepoint (`namespace/name`), for back-off.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for the savepoint controller.
    pub fn new(client: Client, announcer: Announcer) -> Self {
        Self { client, announcer, failures: Mutex::default() }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Runs the savepoint controller over `namespace` (all when `None`) until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<StreamJobSavepoint> = match &namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!("savepoint controller: {e}");
            }
        })
        .await;
}

async fn reconcile(savepoint: Arc<StreamJobSavepoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = step(&savepoint, &ctx).await;
    if result.is_ok() {
        ctx.failures.lock().map(|mut f| f.remove(&key(&savepoint))).ok();
    }
    result
}

fn key(savepoint: &StreamJobSavepoint) -> String {
    format!("{}/{}", savepoint.namespace().unwrap_or_default(), savepoint.name_any())
}

async fn step(savepoint: &StreamJobSavepoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = savepoint.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = savepoint.name_any();
    let api: Api<StreamJobSavepoint> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_name = &savepoint.spec.job_ref.name;
    let status = savepoint.status.clone().unwrap_or_default();
    let path = status.path.clone().filter(|_| status.state == Some(SavepointState::Completed));
    let deleting = savepoint.metadata.deletion_timestamp.is_some();
    let finalized = savepoint.finalizers().iter().any(|f| f == DISPOSE_FINALIZER);
    // Only what the plan reads is asked of the API server: the job, when the savepoint is
    // still open or its files may go; its Deployment, when they may go.
    let open = savepoint.is_open();
    let may_dispose = deleting && finalized && path.is_some();
    let job_exists = if open || may_dispose {
        let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
        jobs.get_opt(job_name).await.map_err(Error::api("reading the savepoint's job"))?.is_some()
    } else {
        true
    };
    let in_use =
        may_dispose && job_exists && restored_by_job(&ctx.client, &namespace, job_name, &name, path.as_deref()).await?;
    let view = SavepointView {
        deleting,
        finalized,
        dispose_on_delete: savepoint.spec.dispose_on_delete,
        open,
        in_use,
        job_exists,
        path,
    };
    match next(&view) {
        Next::AddFinalizer => set_finalizer(&api, &name, true).await?,
        Next::Release => set_finalizer(&api, &name, false).await?,
        Next::Dispose { path } => match weir_storage::delete_folder(&path).await {
            Ok(objects) => {
                info!(savepoint = %name, %path, objects, "disposed of the savepoint's files");
                announce(
                    ctx,
                    savepoint,
                    EventType::Normal,
                    "SavepointDisposed",
                    format!("deleted {path} ({objects} objects)"),
                );
                set_finalizer(&api, &name, false).await?;
            }
            Err(e) => {
                let message = format!("disposing of {path} failed, retrying: {e}");
                warn!(savepoint = %name, "{message}");
                write_error(&api, &name, &message, None).await?;
                announce(ctx, savepoint, EventType::Warning, "DisposalFailed", message.clone());
                return Err(Error::Savepoint(message));
            }
        },
        Next::KeepWhileInUse => {
            let message = format!("kept: the pods of StreamJob {job_name} restore from it");
            if status.error.as_deref() != Some(message.as_str()) {
                write_error(&api, &name, &message, None).await?;
            }
            return Ok(Action::requeue(IN_USE_RECHECK));
        }
        Next::FailWithoutJob => {
            let message = format!("no StreamJob {job_name} in {namespace}");
            write_error(&api, &name, &message, Some(SavepointState::Failed)).await?;
            announce(ctx, savepoint, EventType::Warning, "SavepointFailed", message);
        }
        Next::Nothing => {}
    }
    Ok(Action::await_change())
}

/// Retries with exponential back-off per savepoint, as a disposal that failed may take a
/// while to succeed (storage down, credentials missing).
fn error_policy(savepoint: Arc<StreamJobSavepoint>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key(&savepoint)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = Duration::from_secs(1u64 << attempts.min(16)).min(MAX_BACKOFF);
    warn!(savepoint = %savepoint.name_any(), %error, retry_in = ?delay, "savepoint reconcile failed");
    Action::requeue(delay)
}

/// Whether the job's Deployment restores `name` (by id or by its `path`).
async fn restored_by_job(
    client: &Client,
    namespace: &str,
    job: &str,
    name: &str,
    path: Option<&str>,
) -> Result<bool, Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get_opt(job).await.map_err(Error::api("reading the job's Deployment"))?;
    let restored = deployment.and_then(|d| d.metadata.annotations?.get(RESTORE_FROM_ANNOTATION).cloned());
    Ok(restored.is_some_and(|r| r == name || Some(r.as_str()) == path))
}

/// A StreamJobSavepoint's metadata or status alone, for a server-side apply of just that.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Partial {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StreamJobSavepointStatus>,
}

impl Partial {
    fn of(name: &str) -> Self {
        Self {
            api_version: StreamJobSavepoint::api_version(&()).into_owned(),
            kind: StreamJobSavepoint::kind(&()).into_owned(),
            metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
            status: None,
        }
    }
}

/// Puts the disposal finalizer on (or takes it off): this field manager owns only that entry.
async fn set_finalizer(api: &Api<StreamJobSavepoint>, name: &str, on: bool) -> Result<(), Error> {
    let mut patch = Partial::of(name);
    patch.metadata.finalizers = Some(if on { vec![DISPOSE_FINALIZER.to_owned()] } else { Vec::new() });
    match api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(_) => Ok(()),
        // Gone once the last finalizer went: nothing left to do.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Finalizer(format!("savepoint {name}: {source}"))),
    }
}

/// Writes `error` (and `state`, when given) in the savepoint's status.
async fn write_error(
    api: &Api<StreamJobSavepoint>,
    name: &str,
    error: &str,
    state: Option<SavepointState>,
) -> Result<(), Error> {
    let mut patch = Partial::of(name);
    patch.status = Some(StreamJobSavepointStatus { error: Some(error.to_owned()), state, ..Default::default() });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::api("writing the savepoint's status"))?;
    Ok(())
}

fn announce(ctx: &Context, savepoint: &StreamJobSavepoint, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Dispose".into(), secondary: None };
    ctx.announcer.announce(event, savepoint.object_ref(&()));
}

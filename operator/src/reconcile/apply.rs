//! Applies a job's children: the ones a rollout replaces pods with, in order, and the rest
//! from the registry of child kinds (deleting one the job no longer renders).

use futures::{FutureExt, future::BoxFuture};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
    runtime::events::EventType,
};
use tracing::info;
use weir_crds::StreamJob;

use super::Context;
use crate::{
    Error,
    admin_token::Expect,
    cache::{self, Lookup},
    children::{Child, EachKind, each_kind},
    labels::{FIELD_MANAGER, JobRef},
    observe,
    plan::rollout::Marks,
    plan::status::Change,
    render::{self, Rendered},
};

/// Applies the job file and the Deployment of `run` with `marks`, then the other children;
/// publishes the change. Returns the Deployment as the server has it.
pub(super) async fn roll(
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
    let replicas = observe::target(&run.deployment).replicas;
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

/// The job's Deployment from the store when it has caught up with the operator's writes,
/// else from the API server: the rollout bookkeeping on it must not be older than the last
/// step taken.
pub(super) async fn read_deployment(ctx: &Context, job_ref: &JobRef) -> Result<Option<Deployment>, Error> {
    if let Lookup::Known(cached) = ctx.cached::<Deployment>(&job_ref.namespace, &job_ref.name) {
        return Ok(cached.map(|d| (*d).clone()));
    }
    let deployments: Api<Deployment> = ctx.api(&job_ref.namespace);
    deployments.get_opt(&job_ref.name).await.map_err(Error::api("reading the Deployment"))
}

/// Whether the store knows the job file of `rendered` does not exist (yet).
pub(super) fn job_file_missing(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> bool {
    let name = rendered.config_map.metadata.name.as_deref().unwrap_or_default();
    matches!(ctx.cached::<ConfigMap>(&job_ref.namespace, name), Lookup::Known(None))
}

/// The applies of a reconcile that holds the pods as they are: the children that do not
/// replace pods, and the job file if it is missing (a first deploy whose job file failed
/// while its Deployment went through: the pods wait for it).
pub(super) async fn apply_held(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> Result<(), Error> {
    let file = async {
        if job_file_missing(ctx, job_ref, rendered) {
            apply_object(ctx, &job_ref.namespace, &rendered.config_map).await?;
        }
        Ok(())
    };
    futures::try_join!(file, apply_auxiliary(ctx, job_ref, rendered))?;
    Ok(())
}

/// Server-side applies the children that do not replace pods (every registered kind but
/// the rolled ones), and deletes those of a kind the job no longer renders (a ScaledObject
/// once `autoscaling` is removed).
pub(super) async fn apply_auxiliary(ctx: &Context, job_ref: &JobRef, rendered: &Rendered) -> Result<(), Error> {
    let mut auxiliary = Auxiliary { ctx, job_ref, rendered, writes: Vec::new() };
    each_kind(&mut auxiliary);
    futures::future::try_join_all(auxiliary.writes).await?;
    Ok(())
}

/// The writes of the kinds a rollout does not order, gathered to run at once.
struct Auxiliary<'a> {
    ctx: &'a Context,
    job_ref: &'a JobRef,
    rendered: &'a Rendered,
    writes: Vec<BoxFuture<'a, Result<(), Error>>>,
}

impl<'a> EachKind for Auxiliary<'a> {
    fn kind<K: Child>(&mut self) {
        if K::ROLLED || !K::served(&self.ctx.config) {
            return;
        }
        let (ctx, namespace) = (self.ctx, self.job_ref.namespace.as_str());
        let write = match K::rendered(self.rendered) {
            Some(object) => async move { apply_object(ctx, namespace, object).await.map(drop) }.boxed(),
            None => delete_orphan::<K>(ctx, namespace, &self.job_ref.name).boxed(),
        };
        self.writes.push(write);
    }
}

/// Deletes the job's child of kind `K` (named after the job), unless the store knows there is none.
async fn delete_orphan<K: Child>(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    if matches!(ctx.cached::<K>(namespace, name), Lookup::Known(None)) {
        return Ok(());
    }
    let kind = K::kind(&());
    ctx.writes.deleted::<K>(namespace, name);
    match ctx.api::<K>(namespace).delete(name, &DeleteParams::default()).await {
        Ok(_) => info!("no longer rendered: deleted the {kind}"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Api { what: format!("deleting the {kind}"), source }),
    }
    Ok(())
}

/// Server-side apply with the operator's field manager, taking ownership of conflicting
/// fields; skipped when the cached object already is what the apply would make of it.
pub(super) async fn apply_object<K: Child>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error> {
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

pub(super) fn describe(change: Change, before: Option<&Deployment>, after: &Deployment) -> String {
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

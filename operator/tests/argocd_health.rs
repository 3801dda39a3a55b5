//! The Argo CD health check shipped in `examples/gitops/argocd-cm.yaml`, run with Lua 5.1
//! (as Argo CD runs it) on statuses made by the operator's own status function: each phase
//! of a job's life shows as the health a user expects.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::{Value, json};
use weir_crds::{InvalidSpec, Problem, StreamJob, StreamJobSpec, StreamJobStatus};
use weir_e2e::gitops::{Health, argocd_health};
use weir_operator::plan::status::{Change, Observation, Pods, invalid_status, next_status};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn job(generation: i64, status: Option<StreamJobStatus>) -> StreamJob {
    let spec: StreamJobSpec = must(
        serde_json::from_value(json!({
            "source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in"}},
            "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out"}},
        })),
        "the spec",
    );
    let mut job = StreamJob::new("clicks", spec);
    job.metadata.namespace = Some("jobs".into());
    job.metadata.generation = Some(generation);
    job.status = status;
    job
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn observed(rollout: Option<Change>, desired: i32, ready: i32, suspended: bool) -> Observation {
    Observation {
        rollout,
        pods: Pods { desired, existing: desired, updated: desired, ready, observed: true },
        consumer_lag: Some(0),
        selector: "weir.dev/streamjob=clicks".into(),
        suspended,
        pending: None,
        problem: None,
    }
}

/// Argo CD's view of the job at `generation` with `status`.
fn health(generation: i64, status: StreamJobStatus) -> Health {
    let object: Value = must(serde_json::to_value(job(generation, Some(status))), "the job as JSON");
    must(argocd_health(&object), "running the health check")
}

fn status_after(observation: &Observation) -> StreamJobStatus {
    next_status(&job(1, None), observation, &now())
}

#[test]
fn a_running_job_is_healthy() {
    let health = health(1, status_after(&observed(None, 2, 2, false)));
    assert_eq!(health.status, "Healthy", "{health:?}");
    assert!(health.message.contains("2 of 2 pods consuming"), "{health:?}");
}

#[test]
fn a_deploying_upgrading_or_rescaling_job_is_progressing() {
    for change in [Change::Deploy, Change::Upgrade, Change::Rescale] {
        let health = health(1, status_after(&observed(Some(change), 2, 1, false)));
        assert_eq!(health.status, "Progressing", "{change:?}: {health:?}");
        assert!(health.message.starts_with(change.reason()), "{change:?}: {health:?}");
    }
}

#[test]
fn a_status_behind_the_spec_is_progressing_whatever_it_says() {
    let health = health(2, status_after(&observed(None, 2, 2, false)));
    assert_eq!(health.status, "Progressing", "{health:?}");
    assert!(health.message.contains("generation 2"), "{health:?}");
}

#[test]
fn an_invalid_spec_is_degraded_with_the_field_named() {
    let invalid = InvalidSpec(vec![Problem { path: "spec.pipeline[0].filter".into(), message: "bad SQL".into() }]);
    let health = health(1, invalid_status(&job(1, None), &invalid, &now()));
    assert_eq!(health.status, "Degraded", "{health:?}");
    assert!(health.message.contains("InvalidSpec") && health.message.contains("spec.pipeline[0].filter"), "{health:?}");
}

#[test]
fn pods_that_stop_being_ready_make_the_job_degraded() {
    let health = health(1, status_after(&observed(None, 2, 1, false)));
    assert_eq!(health.status, "Degraded", "{health:?}");
    assert!(health.message.contains("1 of 2 pods ready"), "{health:?}");
}

#[test]
fn a_suspended_job_is_suspended_once_its_pods_stopped() {
    let mut stopping = observed(Some(Change::Suspend), 0, 2, true);
    stopping.pods.existing = 2;
    let suspending = health(1, status_after(&stopping));
    assert_eq!(suspending.status, "Progressing", "{suspending:?}");
    let suspended = health(1, status_after(&observed(None, 0, 0, true)));
    assert_eq!(suspended.status, "Suspended", "{suspended:?}");
}

#[test]
fn a_job_without_status_is_progressing() {
    let object: Value = must(serde_json::to_value(job(1, None)), "the job as JSON");
    let health = must(argocd_health(&object), "running the health check");
    assert_eq!(health.status, "Progressing", "{health:?}");
}

#[test]
fn the_gitops_guide_shows_the_shipped_health_check() {
    let root = weir_e2e::repo_root();
    let shipped = must(std::fs::read_to_string(root.join(weir_e2e::gitops::ARGOCD_CM)), "reading argocd-cm.yaml");
    let guide = must(std::fs::read_to_string(root.join("docs/gitops.md")), "reading docs/gitops.md");
    assert!(guide.contains(&shipped), "docs/gitops.md must show {} as it is", weir_e2e::gitops::ARGOCD_CM);
}

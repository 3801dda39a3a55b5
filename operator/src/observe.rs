//! Reads cluster objects into the planners' views ([`crate::plan`]): the only place a
//! Deployment or a Pod is looked into for what a plan needs.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::ResourceExt;

use crate::{
    plan::{
        failure::{RuntimeContainer, Termination},
        rollout::{Current, Marks, Target},
        status::Pods,
    },
    render::{CONTAINER_NAME, TEMPLATE_HASH_ANNOTATION},
};

/// The pod counts of a Deployment as its controller reports them.
pub fn pods(deployment: &Deployment) -> Pods {
    let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.is_some_and(|g| Some(g) >= deployment.metadata.generation);
    Pods {
        desired,
        existing: status.replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        observed,
    }
}

/// The counts the Deployment reports right after `applying` is applied over `before`.
pub fn pods_after_apply(before: Option<&Deployment>, applying: &Deployment, spec_changes: bool) -> Pods {
    before.map(pods).unwrap_or_default().after_apply(pods(applying).desired, spec_changes)
}

/// What a rendered or observed Deployment runs.
pub fn target(deployment: &Deployment) -> Target {
    let annotations = deployment.metadata.annotations.as_ref();
    Target {
        template_hash: annotations.and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION)).cloned().unwrap_or_default(),
        replicas: deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
    }
}

/// The Deployment observed at the start of a reconcile: what it runs, its pods, the marks on it.
pub fn current(deployment: &Deployment) -> Current {
    let marks = deployment.metadata.annotations.as_ref().map(Marks::read).unwrap_or_default();
    Current { target: target(deployment), pods: pods(deployment), marks }
}

/// The runtime container of each pod that runs one.
pub fn runtime_containers(pods: &[Pod]) -> Vec<RuntimeContainer> {
    pods.iter().filter_map(runtime_container).collect()
}

fn runtime_container(pod: &Pod) -> Option<RuntimeContainer> {
    let status = pod.status.as_ref()?;
    let container = status.container_statuses.as_ref()?.iter().find(|c| c.name == CONTAINER_NAME)?;
    let terminated = container
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| container.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
    Some(RuntimeContainer {
        pod: pod.name_any(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        pod_done: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
        ready: container.ready,
        termination: terminated.map(|t| Termination {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone(),
            finished_at: t.finished_at.as_ref().map(|at| at.0),
        }),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{DeploymentSpec, DeploymentStatus},
            core::v1::{
                ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
                ContainerStatus, PodStatus,
            },
        },
        apimachinery::pkg::apis::meta::v1::Time,
        jiff::Timestamp,
    };

    use super::*;

    /// A Deployment asking for `replicas` at `generation`, whose controller saw
    /// `observed_generation` and reports `ready` pods of `replicas`.
    fn deployment(replicas: i32, generation: i64, observed_generation: i64, ready: i32) -> Deployment {
        let mut deployment = Deployment {
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed_generation),
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        deployment.metadata.generation = Some(generation);
        deployment
    }

    #[test]
    fn a_deployments_counts_and_whether_its_controller_saw_its_spec() {
        assert_eq!(
            pods(&deployment(2, 4, 4, 1)),
            Pods { desired: 2, existing: 2, updated: 2, ready: 1, observed: true }
        );
        assert!(!pods(&deployment(2, 5, 4, 2)).observed, "the controller is behind");
        let mut applying = deployment(3, 0, 0, 0);
        applying.status = None;
        assert_eq!(
            pods_after_apply(Some(&deployment(2, 4, 4, 2)), &applying, true),
            Pods { desired: 3, existing: 2, updated: 2, ready: 2, observed: false }
        );
        assert_eq!(pods_after_apply(None, &applying, true), Pods { desired: 3, ..Pods::default() });
    }

    #[test]
    fn the_marks_and_template_are_read_from_the_annotations() {
        let marks = Marks { restore_from: Some("sp-1".into()), source_partitions: Some(6), ..Marks::default() };
        let mut observed = deployment(2, 1, 1, 2);
        let mut annotations = marks.annotations();
        annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), "abc".into());
        observed.metadata.annotations = Some(annotations);
        let current = current(&observed);
        assert_eq!(current.marks, marks);
        assert_eq!(current.target, Target { template_hash: "abc".into(), replicas: 2 });
        assert_eq!(super::current(&deployment(1, 1, 1, 1)).marks, Marks::default(), "no annotations, no marks");
    }

    fn terminated(exit_code: i32, finished: i64) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                message: Some("boom".into()),
                reason: Some("Error".into()),
                finished_at: Some(Time(Timestamp::from_second(finished).unwrap())),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn pod(name: &str, container: &str, state: ContainerState, last: Option<ContainerState>) -> Pod {
        let status = ContainerStatus {
            name: container.into(),
            state: Some(state),
            last_state: last,
            ..ContainerStatus::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.status = Some(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![status]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn the_latest_termination_of_the_runtime_container_is_read() {
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), ..Default::default() }),
            ..ContainerState::default()
        };
        let running = ContainerState { running: Some(ContainerStateRunning::default()), ..ContainerState::default() };
        let mut deleting = pod("c", CONTAINER_NAME, terminated(143, 3), None);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(4).unwrap()));
        let pods = [
            pod("a", CONTAINER_NAME, waiting, Some(terminated(1, 1))),
            pod("b", CONTAINER_NAME, terminated(137, 2), Some(terminated(1, 1))),
            deleting,
            pod("sidecar-only", "proxy", terminated(1, 1), None),
            pod("fresh", CONTAINER_NAME, running, None),
        ];
        let containers = runtime_containers(&pods);
        let summary: Vec<_> = containers
            .iter()
            .map(|c| (c.pod.as_str(), c.termination.as_ref().map(|t| t.exit_code), c.deleting, c.pod_done))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", Some(1), false, true),
                ("b", Some(137), false, true),
                ("c", Some(143), true, true),
                ("fresh", None, false, true)
            ]
        );
        let last = containers[0].termination.as_ref().unwrap();
        assert_eq!((last.message.as_deref(), last.reason.as_deref()), (Some("boom"), Some("Error")));
        assert_eq!(last.finished_at, Some(Timestamp::from_second(1).unwrap()));
    }
}

//! Pod and Deployment status as the kubelet and the Deployment controller would write
//! them, computed from local state. Pure: transition times carry over from the previous
//! status so unchanged conditions do not churn.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus},
        core::v1::{
            ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
            ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
        },
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use super::{
    container::{ContainerState, Termination},
    pods::{Strategy, desired_replicas},
};

/// A Kubernetes timestamp (second precision, as the API stores it).
pub fn time(at: SystemTime) -> Time {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Time(Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The status of a pod from its containers' states; a terminating pod is never ready.
pub fn pod_status(
    ip: Ipv4Addr,
    started: SystemTime,
    containers: &[ContainerState],
    terminating: bool,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodStatus {
    let ready = !terminating && !containers.is_empty() && containers.iter().all(|c| c.ready);
    let any_ran = containers.iter().any(|c| c.running.is_some() || c.last_termination.is_some());
    let condition = |type_: &str, status: bool| PodCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        last_transition_time: Some(time(now)),
        ..PodCondition::default()
    };
    let mut conditions = vec![
        condition("PodScheduled", true),
        condition("Initialized", true),
        condition("ContainersReady", ready),
        condition("Ready", ready),
    ];
    for c in &mut conditions {
        let before = previous.and_then(|p| p.conditions.as_ref()).and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
        if let Some(before) = before.filter(|b| b.status == c.status) {
            c.last_transition_time.clone_from(&before.last_transition_time);
        }
    }
    PodStatus {
        phase: Some(if any_ran { "Running" } else { "Pending" }.into()),
        conditions: Some(conditions),
        host_ip: Some("127.0.0.1".into()),
        host_ips: Some(vec![HostIP { ip: "127.0.0.1".into() }]),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(time(started)),
        qos_class: Some("BestEffort".into()),
        container_statuses: Some(containers.iter().map(|c| container_status(c, terminating)).collect()),
        ..PodStatus::default()
    }
}

fn container_status(c: &ContainerState, terminating: bool) -> ContainerStatus {
    let state = match (&c.running, &c.waiting) {
        (Some((_, since)), _) => {
            K8sState { running: Some(ContainerStateRunning { started_at: Some(time(*since)) }), ..K8sState::default() }
        }
        (None, Some((reason, message))) => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..K8sState::default()
        },
        (None, None) => K8sState {
            waiting: Some(ContainerStateWaiting { reason: Some("ContainerCreating".into()), message: None }),
            ..K8sState::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: c.running.map(|(pid, _)| format!("local://{pid}")),
        ready: c.ready && !terminating,
        started: Some(c.started && c.running.is_some()),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c
            .last_termination
            .as_ref()
            .map(|t| K8sState { terminated: Some(terminated(t)), ..K8sState::default() }),
        ..ContainerStatus::default()
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        started_at: Some(time(t.started_at)),
        finished_at: Some(time(t.finished_at)),
        message: t.message.clone(),
        ..ContainerStateTerminated::default()
    }
}

/// Pod counts of one Deployment (terminating pods are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// All pods.
    pub replicas: u32,
    /// Pods of the current template.
    pub updated: u32,
    /// Ready pods.
    pub ready: u32,
    /// Available pods (ready for at least `minReadySeconds`).
    pub available: u32,
}

/// When a Deployment last made progress, to report `ProgressDeadlineExceeded`.
#[derive(Debug, Clone)]
pub struct Progress {
    seen: (String, Counts),
    since: Instant,
}

impl Progress {
    /// Starts tracking at `now`.
    pub fn new(hash: &str, counts: Counts, now: Instant) -> Self {
        Self { seen: (hash.to_owned(), counts), since: now }
    }

    /// Records the current state; any change counts as progress.
    pub fn observe(&mut self, hash: &str, counts: Counts, now: Instant) {
        if self.seen.0 != hash || self.seen.1 != counts {
            self.seen = (hash.to_owned(), counts);
            self.since = now;
        }
    }

    /// Whether nothing changed for longer than `deadline`.
    pub fn stalled(&self, deadline: Duration, now: Instant) -> bool {
        now.duration_since(self.since) > deadline
    }
}

/// The Deployment controller's status: counts, and the Available and Progressing conditions.
pub fn deployment_status(
    deployment: &Deployment,
    hash: &str,
    counts: Counts,
    stalled: bool,
    now: SystemTime,
) -> DeploymentStatus {
    let desired = desired_replicas(deployment);
    let strategy = Strategy::of(deployment);
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let available = counts.available >= desired.saturating_sub(strategy.max_unavailable());
    let complete = counts.updated == desired && counts.replicas == desired && counts.available == desired;
    let (progressing, reason, message) = if complete {
        (true, "NewReplicaSetAvailable", format!("ReplicaSet \"{name}-{hash}\" has successfully progressed."))
    } else if stalled {
        (false, "ProgressDeadlineExceeded", format!("ReplicaSet \"{name}-{hash}\" has timed out progressing."))
    } else {
        (true, "ReplicaSetUpdated", format!("ReplicaSet \"{name}-{hash}\" is progressing."))
    };
    let condition = |type_: &str, status: bool, reason: &str, message: String| DeploymentCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(time(now)),
        last_update_time: Some(time(now)),
    };
    let mut conditions = vec![
        if available {
            condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        condition("Progressing", progressing, reason, message),
    ];
    let previous = deployment.status.as_ref().and_then(|s| s.conditions.as_ref());
    for c in &mut conditions {
        let Some(before) = previous.and_then(|cs| cs.iter().find(|p| p.type_ == c.type_)) else { continue };
        if before.status == c.status {
            c.last_transition_time.clone_from(&before.last_transition_time);
            if before.reason == c.reason && before.message == c.message {
                c.last_update_time.clone_from(&before.last_update_time);
            }
        }
    }
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(int(counts.replicas)),
        updated_replicas: Some(int(counts.updated)),
        ready_replicas: Some(int(counts.ready)),
        available_replicas: Some(int(counts.available)),
        unavailable_replicas: Some(int(desired.saturating_sub(counts.available))),
        conditions: Some(conditions),
        ..DeploymentStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn deployment(replicas: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta { name: Some("d".into()), generation: Some(4), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() }),
            status: None,
        }
    }

    fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> &'a DeploymentCondition {
        status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_complete_deployment_is_available_and_progressed() {
        let counts = Counts { replicas: 2, updated: 2, ready: 2, available: 2 };
        let s = deployment_status(&deployment(2), "h", counts, false, SystemTime::now());
        assert_eq!((s.observed_generation, s.ready_replicas, s.unavailable_replicas), (Some(4), Some(2), Some(0)));
        assert_eq!(condition(&s, "Available").status, "True");
        assert_eq!(condition(&s, "Progressing").reason.as_deref(), Some("NewReplicaSetAvailable"));
    }

    #[test]
    fn a_stalled_rollout_reports_the_deadline() {
        let counts = Counts { replicas: 3, updated: 1, ready: 2, available: 2 };
        let s = deployment_status(&deployment(2), "h", counts, true, SystemTime::now());
        assert_eq!(condition(&s, "Progressing").status, "False");
        assert_eq!(condition(&s, "Progressing").reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(
            condition(&s, "Available").status,
            "True",
            "25% of 2 rounds down to 0 unavailable: 2 ready is enough"
        );
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let mut d = deployment(1);
        let counts = Counts { replicas: 1, updated: 1, ready: 1, available: 1 };
        let first = deployment_status(&d, "h", counts, false, UNIX_EPOCH + Duration::from_secs(100));
        d.status = Some(first.clone());
        let second = deployment_status(&d, "h", counts, false, UNIX_EPOCH + Duration::from_secs(200));
        assert_eq!(first, second);
        let down = Counts { ready: 0, available: 0, ..counts };
        let third = deployment_status(&d, "h", down, false, UNIX_EPOCH + Duration::from_secs(300));
        assert_ne!(
            condition(&third, "Available").last_transition_time,
            condition(&first, "Available").last_transition_time
        );
    }

    #[test]
    fn progress_stalls_only_without_change() {
        let t0 = Instant::now();
        let counts = Counts::default();
        let mut p = Progress::new("h", counts, t0);
        let later = t0 + Duration::from_secs(10);
        assert!(p.stalled(Duration::from_secs(5), later));
        p.observe("h", Counts { ready: 1, ..counts }, later);
        assert!(!p.stalled(Duration::from_secs(5), later + Duration::from_secs(1)));
    }

    #[test]
    fn pods_are_ready_when_all_containers_are() {
        let mut c = ContainerState {
            name: "c".into(),
            image: "i".into(),
            running: Some((42, UNIX_EPOCH)),
            started: true,
            ready: true,
            restart_count: 1,
            last_termination: None,
            waiting: None,
        };
        let ip = Ipv4Addr::new(127, 0, 0, 2);
        let s = pod_status(ip, UNIX_EPOCH, std::slice::from_ref(&c), false, None, UNIX_EPOCH);
        let ready = |s: &PodStatus| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap().clone();
        assert_eq!((s.phase.as_deref(), s.pod_ip.as_deref()), (Some("Running"), Some("127.0.0.2")));
        assert_eq!(ready(&s).status, "True");
        let stopping = pod_status(ip, UNIX_EPOCH, std::slice::from_ref(&c), true, Some(&s), UNIX_EPOCH);
        assert_eq!(ready(&stopping).status, "False", "a terminating pod is not ready");
        c.ready = false;
        let t = pod_status(ip, UNIX_EPOCH, &[c], false, Some(&s), UNIX_EPOCH + Duration::from_secs(9));
        assert_eq!(ready(&t).status, "False");
        assert_eq!(t.container_statuses.as_ref().unwrap()[0].restart_count, 1);
    }
}

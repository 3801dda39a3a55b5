//! Pod status as the kubelet writes it, computed from local state. Pure: transition times carry over from the previous
//! status so unchanged conditions do not churn.

use std::{
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::core::v1::{
        ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use super::container::{ContainerState, Termination};

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
        condition("PodReadyToStartContainers", true),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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

//! A runtime pod's fatal error, made visible on its StreamJob. On a fatal error
//! (authentication failure, missing topic, …) the runtime writes the error to its
//! termination log (`WEIR_TERMINATION_LOG`) and exits non-zero; the kubelet keeps that text
//! in the container's status as its termination message (with `FallbackToLogsOnError`, the
//! end of its log when it wrote none). [`runtime_failure`] finds it in the pods a reconcile
//! lists and words it as the `Degraded` condition's reason and message.

use std::{cmp::Reverse, time::Duration};

use k8s_openapi::{
    api::core::v1::{ContainerStateTerminated, Pod},
    jiff::Timestamp,
};
use kube::ResourceExt;

use crate::render::CONTAINER_NAME;

/// Reason of the `Degraded` condition, and of the Warning Event, for a failed runtime pod.
pub const RUNTIME_FAILED: &str = "RuntimeFailed";
/// How long a failure stays reported once its container is ready again: the kubelet's
/// longest crash-loop back-off, so a pod that fails after becoming ready, restarts and fails
/// again stays reported in between.
pub const RECENT: Duration = Duration::from_secs(300);
/// Longest part of a termination message quoted, in characters.
const MAX_MESSAGE_CHARS: usize = 1000;

/// The `Degraded` problem (reason, message) of runtime pods that failed, if any.
///
/// The runtime container of a pod has failed when the latest termination it reports
/// (`state.terminated`, else `lastState.terminated`) has a non-zero exit code, and either
/// - the container is not ready and the pod still runs it (it is crash-looping, restarting,
///   or has just stopped), or
/// - that termination finished less than [`RECENT`] before `now` (a pod that restarted and
///   is ready again, or a failed pod that is not restarted).
///
/// So the condition clears once every failed container has been ready for [`RECENT`], or
/// its pod is gone. A container whose latest run ended with exit code 0 has not failed, and
/// pods being deleted are left out: their end is a rollout's doing.
///
/// The message quotes the termination message of the latest failure by `finishedAt`, and
/// says how many pods failed when several did.
pub fn runtime_failure(pods: &[Pod], now: Timestamp) -> Option<(String, String)> {
    let mut failures: Vec<(String, &ContainerStateTerminated)> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| failed_runtime(pod, now).map(|terminated| (pod.name_any(), terminated)))
        .collect();
    failures.sort_by_key(|(pod, terminated)| (Reverse(terminated.finished_at.as_ref().map(|t| t.0)), pod.clone()));
    let (pod, terminated) = failures.first()?;
    let text = termination_text(terminated);
    let message = match failures.len() {
        1 => format!("pod {pod}: {text}"),
        n => format!("{n} pods failed; the latest, pod {pod}: {text}"),
    };
    Some((RUNTIME_FAILED.to_owned(), message))
}

/// The latest termination of `pod`'s runtime container, when it is a failure to report.
fn failed_runtime(pod: &Pod, now: Timestamp) -> Option<&ContainerStateTerminated> {
    let status = pod.status.as_ref()?;
    let container = status.container_statuses.as_ref()?.iter().find(|c| c.name == CONTAINER_NAME)?;
    let terminated = container
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| container.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
        .filter(|t| t.exit_code != 0)?;
    let pod_done = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let recent = terminated.finished_at.as_ref().is_some_and(|t| elapsed(t.0, now) < RECENT);
    ((!container.ready && !pod_done) || recent).then_some(terminated)
}

/// The termination message, trimmed and cut to its last [`MAX_MESSAGE_CHARS`] characters
/// (a log tail ends with the error), or the exit code when there is none.
fn termination_text(terminated: &ContainerStateTerminated) -> String {
    let message = terminated.message.as_deref().unwrap_or_default().trim();
    if message.is_empty() {
        let reason = terminated.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        return format!("the runtime exited with code {}{reason} and no message", terminated.exit_code);
    }
    let chars = message.chars().count();
    if chars <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    let tail: String = message.chars().skip(chars - MAX_MESSAGE_CHARS).collect();
    format!("…{}", tail.trim_start())
}

/// Time from `since` to `now`, zero if `since` is ahead of the clock.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    const AUTH: &str = "kafka: consuming: SASL authentication failed";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn terminated(exit_code: i32, message: &str, finished: i64) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                message: Some(message.to_owned()).filter(|m| !m.is_empty()),
                finished_at: Some(Time(at(finished))),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn waiting() -> ContainerState {
        let waiting = ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), ..Default::default() };
        ContainerState { waiting: Some(waiting), ..ContainerState::default() }
    }

    fn running() -> ContainerState {
        ContainerState { running: Some(ContainerStateRunning::default()), ..ContainerState::default() }
    }

    /// Pod `name` whose runtime container is in `state` after `last`.
    fn pod(name: &str, state: ContainerState, last: Option<ContainerState>, ready: bool) -> Pod {
        let container = ContainerStatus {
            name: CONTAINER_NAME.into(),
            state: Some(state),
            last_state: last,
            ready,
            ..ContainerStatus::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![container]),
            ..PodStatus::default()
        });
        pod
    }

    fn message(pods: &[Pod], now: i64) -> Option<String> {
        runtime_failure(pods, at(now)).map(|(reason, message)| {
            assert_eq!(reason, RUNTIME_FAILED);
            message
        })
    }

    #[test]
    fn a_terminated_runtime_is_reported_with_its_pod_and_message() {
        let pods = [pod("orders-1", terminated(1, &format!("  {AUTH}\n"), 0), None, false)];
        assert_eq!(message(&pods, 10).as_deref(), Some(format!("pod orders-1: {AUTH}").as_str()));
    }

    #[test]
    fn a_crash_looping_runtime_is_reported_from_its_last_state() {
        let pods = [pod("orders-1", waiting(), Some(terminated(1, AUTH, 0)), false)];
        assert_eq!(message(&pods, 3600).as_deref(), Some(format!("pod orders-1: {AUTH}").as_str()));
    }

    #[test]
    fn healthy_and_cleanly_stopped_runtimes_are_not_failures() {
        let pods = [
            pod("fresh", running(), None, true),
            pod("starting", running(), None, false),
            pod("stopped", terminated(0, "", 0), Some(terminated(1, AUTH, -60)), false),
        ];
        assert_eq!(message(&pods, 10), None);
    }

    #[test]
    fn a_restarted_runtime_is_reported_while_not_ready() {
        let pods = [pod("orders-1", running(), Some(terminated(1, AUTH, 0)), false)];
        assert!(message(&pods, 3600).is_some(), "not ready: it may fail again");
    }

    #[test]
    fn a_ready_runtime_clears_its_failure_after_the_recent_window() {
        let pods = [pod("orders-1", running(), Some(terminated(1, AUTH, 0)), true)];
        assert!(message(&pods, 299).is_some(), "restarted within the window");
        assert_eq!(message(&pods, 300), None);
    }

    #[test]
    fn a_failed_pod_that_is_not_restarted_is_reported_only_recently() {
        let mut failed = pod("evicted", terminated(137, "", 0), None, false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [failed];
        assert!(message(&pods, 10).is_some_and(|m| m.contains("code 137")), "{:?}", message(&pods, 10));
        assert_eq!(message(&pods, 600), None);
    }

    #[test]
    fn a_deleted_pod_and_other_containers_are_left_out() {
        let mut deleted = pod("going", terminated(143, "terminated", 0), None, false);
        deleted.metadata.deletion_timestamp = Some(Time(at(0)));
        let mut sidecar = pod("sidecar", terminated(1, "boom", 0), None, false);
        sidecar.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].name = "proxy".into();
        assert_eq!(message(&[deleted, sidecar], 10), None);
    }

    #[test]
    fn several_failures_are_counted_and_the_latest_is_quoted() {
        let pods = [
            pod("orders-1", waiting(), Some(terminated(1, "kafka: topic in: unknown topic", 20)), false),
            pod("orders-2", terminated(1, AUTH, 30), None, false),
            pod("orders-3", running(), None, true),
        ];
        assert_eq!(
            message(&pods, 40).as_deref(),
            Some(format!("2 pods failed; the latest, pod orders-2: {AUTH}").as_str())
        );
    }

    #[test]
    fn a_missing_message_gives_the_exit_code_and_reason() {
        let mut state = terminated(137, "", 0);
        state.terminated.as_mut().unwrap().reason = Some("OOMKilled".into());
        let pods = [pod("orders-1", state, None, false)];
        assert_eq!(
            message(&pods, 10).as_deref(),
            Some("pod orders-1: the runtime exited with code 137 (OOMKilled) and no message")
        );
    }

    #[test]
    fn a_long_message_keeps_its_end() {
        let long = format!("{}{AUTH}", "é".repeat(3000));
        let pods = [pod("orders-1", terminated(1, &long, 0), None, false)];
        let message = message(&pods, 10).unwrap();
        assert!(message.ends_with(AUTH), "{message}");
        assert!(message.starts_with("pod orders-1: …"), "{message}");
        assert_eq!(message.chars().count(), "pod orders-1: …".chars().count() + MAX_MESSAGE_CHARS);
    }
}

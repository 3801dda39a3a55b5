//! A runtime pod's fatal error, made visible on its StreamJob. On a fatal error
//! (authentication failure, missing topic, …) the runtime writes the error to its
//! termination log (`WEIR_TERMINATION_LOG`) and exits non-zero; the kubelet keeps that text
//! in the container's status as its termination message (with `FallbackToLogsOnError`, the
//! end of its log when it wrote none). [`runtime_failure`] finds it in the runtime containers
//! of the pods a reconcile lists and words it as the `Degraded` condition's reason and message.

use std::{cmp::Reverse, time::Duration};

use jiff::Timestamp;

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
pub fn runtime_failure(containers: &[RuntimeContainer], now: Timestamp) -> Option<(String, String)> {
    let mut failures: Vec<(&str, &Termination)> = containers
        .iter()
        .filter(|container| !container.deleting)
        .filter_map(|container| failed(container, now).map(|termination| (container.pod.as_str(), termination)))
        .collect();
    failures.sort_by_key(|(pod, termination)| (Reverse(termination.finished_at), *pod));
    let (pod, termination) = failures.first()?;
    let text = termination_text(termination);
    let message = match failures.len() {
        1 => format!("pod {pod}: {text}"),
        n => format!("{n} pods failed; the latest, pod {pod}: {text}"),
    };
    Some((RUNTIME_FAILED.to_owned(), message))
}

/// The runtime container of one pod, as far as failures go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeContainer {
    /// The pod's name.
    pub pod: String,
    /// The pod's deletion has started.
    pub deleting: bool,
    /// The pod has finished (`Succeeded` or `Failed`): the container is not restarted.
    pub pod_done: bool,
    /// The container is ready.
    pub ready: bool,
    /// Its latest termination: `state.terminated`, else `lastState.terminated`.
    pub termination: Option<Termination>,
}

/// How a container's run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Termination {
    /// The exit code.
    pub exit_code: i32,
    /// The kubelet's reason (`OOMKilled`, `Error`).
    pub reason: Option<String>,
    /// The termination message.
    pub message: Option<String>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

/// The latest termination of `container`, when it is a failure to report.
fn failed(container: &RuntimeContainer, now: Timestamp) -> Option<&Termination> {
    let termination = container.termination.as_ref().filter(|t| t.exit_code != 0)?;
    let recent = termination.finished_at.is_some_and(|t| elapsed(t, now) < RECENT);
    ((!container.ready && !container.pod_done) || recent).then_some(termination)
}

/// The termination message, trimmed and cut to its last [`MAX_MESSAGE_CHARS`] characters
/// (a log tail ends with the error), or the exit code when there is none.
fn termination_text(termination: &Termination) -> String {
    let message = termination.message.as_deref().unwrap_or_default().trim();
    if message.is_empty() {
        let reason = termination.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        return format!("the runtime exited with code {}{reason} and no message", termination.exit_code);
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
    use super::*;

    const AUTH: &str = "kafka: consuming: SASL authentication failed";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn ended(exit_code: i32, message: &str, finished: i64) -> Option<Termination> {
        Some(Termination {
            exit_code,
            message: Some(message.to_owned()).filter(|m| !m.is_empty()),
            finished_at: Some(at(finished)),
            reason: None,
        })
    }

    /// The runtime container of pod `name`, running or waiting, after `termination`.
    fn container(name: &str, termination: Option<Termination>, ready: bool) -> RuntimeContainer {
        RuntimeContainer { pod: name.into(), ready, termination, ..RuntimeContainer::default() }
    }

    fn message(containers: &[RuntimeContainer], now: i64) -> Option<String> {
        runtime_failure(containers, at(now)).map(|(reason, message)| {
            assert_eq!(reason, RUNTIME_FAILED);
            message
        })
    }

    #[test]
    fn a_terminated_runtime_is_reported_with_its_pod_and_message() {
        let containers = [container("orders-1", ended(1, &format!("  {AUTH}\n"), 0), false)];
        assert_eq!(message(&containers, 10).as_deref(), Some(format!("pod orders-1: {AUTH}").as_str()));
        assert_eq!(
            message(&containers, 3600).as_deref(),
            Some(format!("pod orders-1: {AUTH}").as_str()),
            "crash-looping"
        );
    }

    #[test]
    fn healthy_and_cleanly_stopped_runtimes_are_not_failures() {
        let containers = [
            container("fresh", None, true),
            container("starting", None, false),
            container("stopped", ended(0, "", 0), false),
        ];
        assert_eq!(message(&containers, 10), None);
    }

    #[test]
    fn a_ready_runtime_clears_its_failure_after_the_recent_window() {
        let containers = [container("orders-1", ended(1, AUTH, 0), true)];
        assert!(message(&containers, 299).is_some(), "restarted within the window");
        assert_eq!(message(&containers, 300), None);
    }

    #[test]
    fn a_failed_pod_that_is_not_restarted_is_reported_only_recently() {
        let failed = RuntimeContainer { pod_done: true, ..container("evicted", ended(137, "", 0), false) };
        let containers = [failed];
        assert!(message(&containers, 10).is_some_and(|m| m.contains("code 137")), "{:?}", message(&containers, 10));
        assert_eq!(message(&containers, 600), None);
    }

    #[test]
    fn a_deleted_pod_is_left_out() {
        let deleted = RuntimeContainer { deleting: true, ..container("going", ended(143, "terminated", 0), false) };
        assert_eq!(message(&[deleted], 10), None);
    }

    #[test]
    fn several_failures_are_counted_and_the_latest_is_quoted() {
        let containers = [
            container("orders-1", ended(1, "kafka: topic in: unknown topic", 20), false),
            container("orders-2", ended(1, AUTH, 30), false),
            container("orders-3", None, true),
        ];
        assert_eq!(
            message(&containers, 40).as_deref(),
            Some(format!("2 pods failed; the latest, pod orders-2: {AUTH}").as_str())
        );
    }

    #[test]
    fn a_missing_message_gives_the_exit_code_and_reason() {
        let mut termination = ended(137, "", 0);
        termination.as_mut().unwrap().reason = Some("OOMKilled".into());
        let containers = [container("orders-1", termination, false)];
        assert_eq!(
            message(&containers, 10).as_deref(),
            Some("pod orders-1: the runtime exited with code 137 (OOMKilled) and no message")
        );
    }

    #[test]
    fn a_long_message_keeps_its_end() {
        let long = format!("{}{AUTH}", "é".repeat(3000));
        let containers = [container("orders-1", ended(1, &long, 0), false)];
        let message = message(&containers, 10).unwrap();
        assert!(message.ends_with(AUTH), "{message}");
        assert!(message.starts_with("pod orders-1: …"), "{message}");
        assert_eq!(message.chars().count(), "pod orders-1: …".chars().count() + MAX_MESSAGE_CHARS);
    }
}

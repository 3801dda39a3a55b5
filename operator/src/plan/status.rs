//! Status: a pure function from what was observed to the StreamJob's next status, so every
//! phase and condition transition is unit-tested without a cluster.

use weir_crds::{Condition, InvalidSpec, Phase, StreamJob, StreamJobStatus, Time};

/// Condition: all desired pods run the current spec and are consuming.
pub const READY: &str = "Ready";
/// Condition: a deployment, upgrade, rescale or suspension is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the job runs, but not as asked (pods not ready, a runtime pod failed, spec
/// invalid).
pub const DEGRADED: &str = "Degraded";
/// kstatus condition (read by Flux, `kubectl wait` and kstatus-based tools): True while a
/// change is under way; it follows `Progressing`.
pub const RECONCILING: &str = "Reconciling";
/// kstatus condition: True when the job cannot progress without a change of spec (an
/// invalid spec, a failed job); it follows the `Failed` phase.
pub const STALLED: &str = "Stalled";
/// Reason of an invalid spec.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// What a change of spec asks of the pods, found by comparing the applied Deployment with
/// the one observed before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// There were no pods yet.
    Deploy,
    /// The pod template changed: the pods are replaced.
    Upgrade,
    /// Only the number of pods changed.
    Rescale,
    /// The job is being stopped.
    Suspend,
    /// A rollout missed its deadline: the previous spec is coming back.
    RollBack,
}

impl Change {
    /// The condition reason and Event reason of this change.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Deploy => "Deploying",
            Self::Upgrade => "Upgrading",
            Self::Rescale => "Rescaling",
            Self::Suspend => "Suspending",
            Self::RollBack => "RollingBack",
        }
    }

    /// The change whose [`Self::reason`] is `reason`.
    pub fn from_reason(reason: &str) -> Option<Self> {
        [Self::Deploy, Self::Upgrade, Self::Rescale, Self::Suspend, Self::RollBack]
            .into_iter()
            .find(|c| c.reason() == reason)
    }

    fn phase(self) -> Phase {
        match self {
            Self::Deploy => Phase::Deploying,
            Self::Upgrade | Self::RollBack => Phase::Upgrading,
            Self::Rescale => Phase::Rescaling,
            Self::Suspend => Phase::Suspended,
        }
    }
}

/// The runtime pods as their Deployment reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pods {
    /// Pods asked for.
    pub desired: i32,
    /// Pods that exist.
    pub existing: i32,
    /// Pods running the current template.
    pub updated: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Whether the Deployment's controller has seen its latest spec.
    pub observed: bool,
}

impl Pods {
    /// The counts a Deployment reporting `self` reports right after an apply that asks for
    /// `desired` pods: the other counts stay until its controller acts, and a changed spec
    /// (`spec_changes`) is not observed yet.
    pub fn after_apply(self, desired: i32, spec_changes: bool) -> Self {
        Self { desired, observed: self.observed && !spec_changes, ..self }
    }

    /// Every desired pod runs the current template and is ready, and no other pod is left.
    pub fn settled(self) -> bool {
        self.observed && self.existing == self.desired && self.updated >= self.desired && self.ready >= self.desired
    }
}

/// Everything one reconcile observed.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The rollout under way, if any (see [`super::rollout`]).
    pub rollout: Option<Change>,
    /// The pods after the apply.
    pub pods: Pods,
    /// Total consumer lag scraped from the pods, when any answered.
    pub consumer_lag: Option<i64>,
    /// The `/scale` selector.
    pub selector: String,
    /// Whether the job is suspended.
    pub suspended: bool,
    /// A change that waits (for the stabilization window), with why.
    pub pending: Option<(Change, String)>,
    /// Something that went wrong (a rollback, a failed savepoint, a runtime pod's fatal
    /// error, see [`super::failure`]): reason and message of the `Degraded` condition.
    pub problem: Option<(String, String)>,
}

impl Observation {
    /// What a reconcile saw: the job's pods and its `/scale` selector; the rest is filled
    /// in as far as the reconcile got.
    pub fn of(pods: Pods, selector: String, suspended: bool) -> Self {
        Self { rollout: None, pods, consumer_lag: None, selector, suspended, pending: None, problem: None }
    }
}

/// The status after a reconcile that applied the job's children.
pub fn next_status(job: &StreamJob, seen: &Observation, now: &Time) -> StreamJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let pods = seen.pods;
    let progressing = match seen.rollout.filter(|_| !pods.settled()) {
        Some(change) => {
            let ready = pods.ready.min(pods.updated);
            Some((change, format!("{ready} of {} pods ready on the current spec", pods.desired)))
        }
        None => seen.pending.clone(),
    };
    let mut status = StreamJobStatus {
        observed_generation: generation,
        replicas: pods.existing,
        ready_replicas: pods.ready,
        selector: Some(seen.selector.clone()),
        consumer_lag: seen.consumer_lag.or(previous.consumer_lag).filter(|_| pods.existing > 0),
        conditions: previous.conditions.clone(),
        ..previous
    };
    let (phase, ready, degraded) = match progressing {
        Some((change, message)) => {
            set(&mut status.conditions, condition(PROGRESSING, true, change.reason(), &message, generation, now));
            (change.phase(), (false, change.reason(), message), None)
        }
        None => {
            let done = if seen.suspended { "Suspended" } else { "RolloutComplete" };
            set(&mut status.conditions, condition(PROGRESSING, false, done, "no change under way", generation, now));
            if seen.suspended {
                (Phase::Suspended, (false, "Suspended", "suspended on request: no pods run".to_owned()), None)
            } else if pods.desired == 0 {
                (Phase::Running, (true, "ScaledToZero", "parallelism is 0: no pods run".to_owned()), Some(false))
            } else if pods.ready >= pods.desired {
                let message = format!("{} of {} pods consuming", pods.ready, pods.desired);
                (Phase::Running, (true, "Running", message), Some(false))
            } else {
                let message = format!("{} of {} pods ready", pods.ready, pods.desired);
                (Phase::Running, (false, "PodsNotReady", message), Some(true))
            }
        }
    };
    status.phase = Some(phase);
    let (ready, reason, message) = ready;
    set(&mut status.conditions, condition(READY, ready, reason, &message, generation, now));
    let degraded = match (&seen.problem, degraded) {
        (Some((reason, problem)), _) => condition(DEGRADED, true, reason, problem, generation, now),
        (None, Some(true)) => condition(DEGRADED, true, "PodsNotReady", &message, generation, now),
        _ => condition(DEGRADED, false, "AsExpected", "no problem found", generation, now),
    };
    set(&mut status.conditions, degraded);
    set_kstatus(&mut status, generation, now);
    status
}

/// The status of a job whose spec is invalid: children are left as they are.
pub fn invalid_status(job: &StreamJob, invalid: &InvalidSpec, now: &Time) -> StreamJobStatus {
    invalid_status_from(job.status.clone().unwrap_or_default(), invalid, job.metadata.generation, now)
}

/// [`invalid_status`] from a status and generation alone: for a job whose spec the operator
/// cannot even decode.
pub fn invalid_status_from(
    previous: StreamJobStatus,
    invalid: &InvalidSpec,
    generation: Option<i64>,
    now: &Time,
) -> StreamJobStatus {
    let message = invalid_message(invalid);
    let mut conditions = previous.conditions.clone();
    set(&mut conditions, condition(READY, false, INVALID_SPEC, &message, generation, now));
    set(&mut conditions, condition(PROGRESSING, false, INVALID_SPEC, "waiting for a valid spec", generation, now));
    set(&mut conditions, condition(DEGRADED, true, INVALID_SPEC, &message, generation, now));
    let mut status =
        StreamJobStatus { phase: Some(Phase::Failed), observed_generation: generation, conditions, ..previous };
    set_kstatus(&mut status, generation, now);
    status
}

/// Sets the kstatus conditions from the others, so they never disagree: `Reconciling` is
/// `Progressing` under kstatus's name, and `Stalled` is True in the `Failed` phase with
/// `Ready`'s reason and message.
fn set_kstatus(status: &mut StreamJobStatus, generation: Option<i64>, now: &Time) {
    if let Some(progressing) = find(status, PROGRESSING).cloned() {
        let reconciling = progressing.status == "True";
        let reconciling =
            condition(RECONCILING, reconciling, &progressing.reason, &progressing.message, generation, now);
        set(&mut status.conditions, reconciling);
    }
    let stalled = match find(status, READY) {
        Some(ready) if status.phase == Some(Phase::Failed) => {
            condition(STALLED, true, &ready.reason, &ready.message, generation, now)
        }
        _ => condition(STALLED, false, "AsExpected", "nothing stops progress", generation, now),
    };
    set(&mut status.conditions, stalled);
}

/// Marks a change under way (e.g. a savepoint being taken) in `Progressing` and `Reconciling`.
pub fn set_progressing(status: &mut StreamJobStatus, reason: &str, message: &str, generation: Option<i64>, now: &Time) {
    set(&mut status.conditions, condition(PROGRESSING, true, reason, message, generation, now));
    set_kstatus(status, generation, now);
}

/// Whether `status` already reports this invalid spec of this generation.
pub fn reports_invalid(status: &StreamJobStatus, message: &str, generation: Option<i64>) -> bool {
    find(status, READY)
        .is_some_and(|c| c.reason == INVALID_SPEC && c.message == message && c.observed_generation == generation)
}

/// The current time as the API's `Time`.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Every problem of an invalid spec, each with its field path under `spec`.
pub fn invalid_message(invalid: &InvalidSpec) -> String {
    invalid.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Puts `new` in place of the condition of its type, keeping `lastTransitionTime` unless
/// the status flips.
fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(status: &'a StreamJobStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use weir_crds::{Problem, StreamJobSpec};

    use super::*;

    fn job(status: Option<StreamJobStatus>) -> StreamJob {
        let spec: StreamJobSpec = serde_json::from_value(serde_json::json!({
            "source": {"kafka": {"bootstrapServers": "k:9092", "topic": "in"}},
            "sink": {"kafka": {"bootstrapServers": "k:9092", "topic": "out"}},
        }))
        .unwrap();
        let mut job = StreamJob::new("j", spec);
        job.metadata.generation = Some(3);
        job.status = status;
        job
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn seen(rollout: Option<Change>, pods: Pods) -> Observation {
        Observation {
            rollout,
            pods,
            consumer_lag: Some(7),
            selector: "weir.dev/streamjob=j".into(),
            suspended: false,
            pending: None,
            problem: None,
        }
    }

    fn pods(desired: i32, existing: i32, updated: i32, ready: i32) -> Pods {
        Pods { desired, existing, updated, ready, observed: true }
    }

    fn condition_of<'a>(status: &'a StreamJobStatus, type_: &str) -> &'a Condition {
        find(status, type_).unwrap()
    }

    #[test]
    fn pods_right_after_an_apply_are_the_old_counts_asking_for_the_new() {
        assert_eq!(
            Pods::default().after_apply(3, true),
            Pods { desired: 3, existing: 0, updated: 0, ready: 0, observed: false },
            "a first deploy: nothing yet, and not observed"
        );
        let running = pods(2, 2, 2, 2);
        assert_eq!(running.after_apply(2, false), running, "no spec change: as the Deployment reports now");
        assert_eq!(
            running.after_apply(3, true),
            Pods { desired: 3, existing: 2, updated: 2, ready: 2, observed: false },
            "a rescale: the new count asked for, the old pods counted, the change not observed"
        );
        assert!(!running.after_apply(2, true).settled(), "a changed spec never looks settled");
        let behind = Pods { observed: false, ..running };
        assert!(!behind.after_apply(2, false).observed, "not observed stays not observed");
    }

    #[test]
    fn a_new_job_is_deploying_until_its_pods_are_ready() {
        let status = next_status(&job(None), &seen(Some(Change::Deploy), pods(2, 2, 2, 1)), &at(10));
        assert_eq!(status.phase, Some(Phase::Deploying));
        assert_eq!(condition_of(&status, PROGRESSING).status, "True");
        assert_eq!(condition_of(&status, READY).status, "False");
        assert_eq!(condition_of(&status, READY).observed_generation, Some(3));
        assert_eq!((status.replicas, status.ready_replicas), (2, 1));
        assert_eq!(status.selector.as_deref(), Some("weir.dev/streamjob=j"));

        let later = next_status(&job(Some(status)), &seen(None, pods(2, 2, 2, 2)), &at(20));
        assert_eq!(later.phase, Some(Phase::Running));
        assert_eq!(condition_of(&later, READY).status, "True");
        assert_eq!(condition_of(&later, PROGRESSING).status, "False");
        assert_eq!(later.consumer_lag, Some(7));
    }

    #[test]
    fn reconciling_is_true_exactly_while_a_change_is_under_way() {
        let deploying = next_status(&job(None), &seen(Some(Change::Deploy), pods(2, 2, 2, 1)), &at(10));
        let reconciling = condition_of(&deploying, RECONCILING);
        assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", "Deploying"));
        assert_eq!(reconciling.observed_generation, Some(3));
        assert_eq!(condition_of(&deploying, STALLED).status, "False");

        let running = next_status(&job(Some(deploying)), &seen(None, pods(2, 2, 2, 2)), &at(20));
        let reconciling = condition_of(&running, RECONCILING);
        assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("False", "RolloutComplete"));
        assert_eq!(reconciling.last_transition_time, at(20));
        assert_eq!(condition_of(&running, STALLED).status, "False");
        assert_eq!(condition_of(&running, STALLED).last_transition_time, at(10), "Stalled did not flip");

        let unready = next_status(&job(Some(running)), &seen(None, pods(2, 2, 2, 1)), &at(30));
        assert_eq!(condition_of(&unready, RECONCILING).status, "False", "pods failing is not a change under way");
        assert_eq!(condition_of(&unready, DEGRADED).status, "True");
    }

    #[test]
    fn an_upgrade_reports_upgrading_until_the_new_pods_are_ready() {
        let status = next_status(&job(None), &seen(Some(Change::Upgrade), pods(2, 2, 2, 1)), &at(20));
        assert_eq!(status.phase, Some(Phase::Upgrading));
        assert_eq!(condition_of(&status, PROGRESSING).reason, "Upgrading");
        let done = next_status(&job(Some(status)), &seen(Some(Change::Upgrade), pods(2, 2, 2, 2)), &at(30));
        assert_eq!(done.phase, Some(Phase::Running));
    }

    #[test]
    fn a_pending_rescale_and_a_rollback_are_reported() {
        let mut observation = seen(None, pods(2, 2, 2, 2));
        observation.pending = Some((Change::Rescale, "waiting 20s".into()));
        let pending = next_status(&job(None), &observation, &at(10));
        assert_eq!(pending.phase, Some(Phase::Rescaling));
        assert_eq!(condition_of(&pending, PROGRESSING).message, "waiting 20s");

        let mut observation = seen(Some(Change::RollBack), pods(2, 2, 2, 0));
        observation.problem = Some(("RolledBack".into(), "new pods not ready in 5m".into()));
        let rolling_back = next_status(&job(None), &observation, &at(20));
        assert_eq!(rolling_back.phase, Some(Phase::Upgrading));
        assert_eq!(condition_of(&rolling_back, PROGRESSING).reason, "RollingBack");
        let degraded = condition_of(&rolling_back, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "RolledBack"));
    }

    #[test]
    fn a_runtime_failure_degrades_the_job_until_it_is_gone() {
        let mut observation = seen(None, pods(2, 2, 2, 1));
        observation.problem = Some(("RuntimeFailed".into(), "pod j-1: kafka: authentication failed".into()));
        let failed = next_status(&job(None), &observation, &at(10));
        let degraded = condition_of(&failed, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "RuntimeFailed"));
        assert_eq!(degraded.message, "pod j-1: kafka: authentication failed");
        assert_eq!(condition_of(&failed, READY).reason, "PodsNotReady");

        let recovered = next_status(&job(Some(failed)), &seen(None, pods(2, 2, 2, 2)), &at(20));
        let degraded = condition_of(&recovered, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("False", "AsExpected"));
        assert_eq!(degraded.last_transition_time, at(20));
    }

    #[test]
    fn a_rescale_reports_rescaling() {
        let status = next_status(&job(None), &seen(Some(Change::Rescale), pods(3, 2, 2, 2)), &at(10));
        assert_eq!(status.phase, Some(Phase::Rescaling));
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_flips() {
        let first = next_status(&job(None), &seen(None, pods(2, 2, 2, 2)), &at(10));
        assert_eq!(condition_of(&first, READY).last_transition_time, at(10));
        let same = next_status(&job(Some(first)), &seen(None, pods(2, 2, 2, 2)), &at(20));
        assert_eq!(condition_of(&same, READY).last_transition_time, at(10));
        let flipped = next_status(&job(Some(same)), &seen(None, pods(2, 2, 2, 1)), &at(30));
        assert_eq!(condition_of(&flipped, READY).status, "False");
        assert_eq!(condition_of(&flipped, READY).last_transition_time, at(30));
        assert_eq!(condition_of(&flipped, DEGRADED).status, "True");
        assert_eq!(condition_of(&flipped, DEGRADED).reason, "PodsNotReady");
    }

    #[test]
    fn an_unchanged_observation_gives_an_equal_status() {
        let first = next_status(&job(None), &seen(None, pods(2, 2, 2, 2)), &at(10));
        let again = next_status(&job(Some(first.clone())), &seen(None, pods(2, 2, 2, 2)), &at(20));
        assert_eq!(first, again, "an equal status is not written again");
    }

    #[test]
    fn a_suspended_job_is_suspended_with_no_pods() {
        let mut observation = seen(Some(Change::Suspend), pods(0, 2, 2, 2));
        observation.suspended = true;
        let suspending = next_status(&job(None), &observation, &at(10));
        assert_eq!(suspending.phase, Some(Phase::Suspended));
        assert_eq!(condition_of(&suspending, PROGRESSING).reason, "Suspending");
        observation.rollout = None;
        observation.pods = pods(0, 0, 0, 0);
        let suspended = next_status(&job(Some(suspending)), &observation, &at(20));
        assert_eq!(suspended.phase, Some(Phase::Suspended));
        assert_eq!(condition_of(&suspended, READY).reason, "Suspended");
        assert_eq!(condition_of(&suspended, PROGRESSING).status, "False");
        assert_eq!(condition_of(&suspended, RECONCILING).reason, "Suspended");
        assert_eq!(condition_of(&suspended, RECONCILING).status, "False");
        assert_eq!(suspended.consumer_lag, None);
    }

    #[test]
    fn an_invalid_spec_fails_with_the_field_named() {
        let invalid = InvalidSpec(vec![Problem { path: "spec.pipeline[0].filter".into(), message: "bad".into() }]);
        let status = invalid_status(&job(None), &invalid, &at(10));
        assert_eq!(status.phase, Some(Phase::Failed));
        let ready = condition_of(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", INVALID_SPEC));
        assert!(ready.message.contains("spec.pipeline[0].filter"), "{}", ready.message);
        assert_eq!(ready.observed_generation, Some(3));
    }

    #[test]
    fn an_invalid_spec_stalls_until_a_valid_one_deploys() {
        let invalid = InvalidSpec(vec![Problem { path: "spec.pipeline[0].filter".into(), message: "bad".into() }]);
        let failed = invalid_status(&job(None), &invalid, &at(10));
        let stalled = condition_of(&failed, STALLED);
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", INVALID_SPEC));
        assert!(stalled.message.contains("spec.pipeline[0].filter"), "{}", stalled.message);
        assert_eq!(stalled.observed_generation, Some(3));
        assert_eq!(condition_of(&failed, RECONCILING).status, "False");

        let fixed = next_status(&job(Some(failed)), &seen(Some(Change::Deploy), pods(1, 0, 0, 0)), &at(20));
        assert_eq!(condition_of(&fixed, STALLED).status, "False");
        assert_eq!(condition_of(&fixed, STALLED).last_transition_time, at(20));
        assert_eq!(condition_of(&fixed, RECONCILING).status, "True");
    }
}

//! Rollouts: a pure plan from what the job asks for, the Deployment that runs now and the
//! operator's bookkeeping on it, to the next step. The reconciler performs the step.
//!
//! With `upgradeMode: savepoint`, every change that replaces running pods (an upgrade, a
//! rescale, a suspension, a scale to zero) stops them with a savepoint first, and the new
//! pods restore it. A rollout whose pods are not ready within `rolloutTimeout` is rolled
//! back to the last spec that ran, restoring the savepoint taken before the change. No
//! change starts while another is in flight, and a rescale waits for the stabilization
//! window after the last rollout, so bursts of `/scale` writes become one rollout. A
//! scale-down also waits until the parallelism asked for has held for that window: an
//! autoscaler that walks down step by step (4, 3, 2, 1 as the lag drains) costs one
//! rollout, not one per step.
//!
//! The bookkeeping ([`Marks`]) lives in the Deployment's annotations, not in the StreamJob's
//! status: the Deployment is read fresh each reconcile, while the StreamJob comes from a
//! cache that may not hold the last status written yet, and a step taken twice would take
//! two savepoints.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use weir_crds::UpgradeMode;

use super::status::{Change, Pods};

/// The rollout under way (`Deploying`, `Upgrading`, …) until the pods settle.
pub const ROLLOUT_ANNOTATION: &str = "weir.dev/rollout";
/// When the rollout in [`ROLLOUT_ANNOTATION`] started its new pods.
pub const STARTED_ANNOTATION: &str = "weir.dev/rollout-started";
/// The savepoint the pods restore (`WEIR_RESTORE_FROM`); their checkpoints continue its lineage.
pub const RESTORE_FROM_ANNOTATION: &str = "weir.dev/restore-from";
/// The last spec whose pods all became ready (JSON): what a failed rollout returns to.
pub const STABLE_SPEC_ANNOTATION: &str = "weir.dev/stable-spec";
/// The generation whose rollout was rolled back: its spec is not tried again.
pub const ROLLED_BACK_ANNOTATION: &str = "weir.dev/rolled-back-generation";
/// The source topic's partition count, as the pods last reported it: parallelism is clamped to it.
pub const PARTITIONS_ANNOTATION: &str = "weir.dev/source-partitions";
/// When the last rollout settled: a rescale waits for the stabilization window after it.
pub const SETTLED_ANNOTATION: &str = "weir.dev/settled-at";

/// How often a reconcile looks again at a rollout in flight.
const RECHECK: Duration = Duration::from_secs(2);

/// The operator's bookkeeping of a job's rollouts, kept on its Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The rollout in flight, until its pods settle.
    pub rollout: Option<Change>,
    /// When the rollout's new pods were applied.
    pub started: Option<Timestamp>,
    /// The savepoint the pods restore.
    pub restore_from: Option<String>,
    /// The last spec that ran with all pods ready, as JSON.
    pub stable_spec: Option<String>,
    /// The generation rolled back.
    pub rolled_back: Option<i64>,
    /// Partitions of the source topic.
    pub source_partitions: Option<i32>,
    /// When the last rollout settled.
    pub settled_at: Option<Timestamp>,
}

impl Marks {
    /// Reads the marks from a Deployment's annotations; unreadable ones are left out.
    pub fn read(annotations: &BTreeMap<String, String>) -> Self {
        let text = |key: &str| annotations.get(key).cloned();
        let time = |key: &str| annotations.get(key).and_then(|t| t.parse::<Timestamp>().ok());
        Self {
            rollout: annotations.get(ROLLOUT_ANNOTATION).and_then(|r| Change::from_reason(r)),
            started: time(STARTED_ANNOTATION),
            restore_from: text(RESTORE_FROM_ANNOTATION),
            stable_spec: text(STABLE_SPEC_ANNOTATION),
            rolled_back: annotations.get(ROLLED_BACK_ANNOTATION).and_then(|g| g.parse().ok()),
            source_partitions: annotations.get(PARTITIONS_ANNOTATION).and_then(|p| p.parse().ok()),
            settled_at: time(SETTLED_ANNOTATION),
        }
    }

    /// The marks as Deployment annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let entries = [
            (ROLLOUT_ANNOTATION, self.rollout.map(|c| c.reason().to_owned())),
            (STARTED_ANNOTATION, self.started.map(|t| t.to_string())),
            (RESTORE_FROM_ANNOTATION, self.restore_from.clone()),
            (STABLE_SPEC_ANNOTATION, self.stable_spec.clone()),
            (ROLLED_BACK_ANNOTATION, self.rolled_back.map(|g| g.to_string())),
            (PARTITIONS_ANNOTATION, self.source_partitions.map(|p| p.to_string())),
            (SETTLED_ANNOTATION, self.settled_at.map(|t| t.to_string())),
        ];
        entries.into_iter().filter_map(|(key, value)| Some((key.to_owned(), value?))).collect()
    }
}

/// What a rendered Deployment runs: its pod template (by hash) and how many pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The hash of the pod template without the restore point (`weir.dev/template-hash`).
    pub template_hash: String,
    /// Pods.
    pub replicas: i32,
}

/// The Deployment observed at the start of a reconcile.
#[derive(Clone, Debug)]
pub struct Current {
    /// What it runs.
    pub target: Target,
    /// Its pods.
    pub pods: Pods,
    /// The bookkeeping on it.
    pub marks: Marks,
}

/// Everything a plan is made from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The StreamJob's `metadata.generation`.
    pub generation: i64,
    /// What the job's spec asks for (parallelism clamped, zero when suspended).
    pub desired: Target,
    /// The job's spec as JSON, recorded as the stable one once its pods are ready.
    pub desired_spec: &'a str,
    /// What the stable spec in [`Marks::stable_spec`] renders to, if there is one.
    pub stable: Option<Target>,
    /// The Deployment now, if any.
    pub current: Option<&'a Current>,
    /// Whether `spec.suspend` is set.
    pub suspended: bool,
    /// How state crosses the change.
    pub mode: UpgradeMode,
    /// Time the new pods have to become ready.
    pub rollout_timeout: Duration,
    /// Quiet time after a rollout before a rescale, and how long a smaller parallelism
    /// must have been asked for before the job scales down to it.
    pub stabilization: Duration,
    /// Since when the job has asked for `desired`'s replica count.
    pub asked_since: Timestamp,
    /// The time now.
    pub now: Timestamp,
}

/// Which spec the Deployment is rendered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// The StreamJob's spec.
    Desired,
    /// The last spec that ran with all pods ready (after a rollback).
    Stable,
}

/// Why nothing is applied now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// A rollout is in flight: the next change waits for it to settle or roll back.
    InFlight(Change),
    /// A rescale waits out the stabilization window after the last rollout.
    Stabilizing {
        /// Time left.
        remaining: Duration,
    },
    /// A scale-down waits until the smaller parallelism has been asked for that long.
    ScalingDownSoon {
        /// Time left.
        remaining: Duration,
    },
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply the Deployment (and its job file), restoring from [`Marks::restore_from`].
    /// `change` is the rollout it starts, if any.
    Apply {
        /// The rollout started.
        change: Option<Change>,
    },
    /// Stop the running pods with a savepoint, then apply, restoring from it.
    Savepoint {
        /// The rollout started after the savepoint.
        change: Change,
    },
    /// The rollout missed its deadline: apply the stable spec again, restoring the savepoint
    /// taken before the change.
    RollBack {
        /// The rollout given up.
        failed: Change,
    },
    /// Leave the Deployment and job file as they are and look again after `recheck`.
    Hold {
        /// Why.
        hold: Hold,
        /// When to look again.
        recheck: Duration,
    },
}

/// A step, which spec it runs, and the marks the applied Deployment carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub step: Step,
    /// The spec applied.
    pub run: Run,
    /// The marks after the step (a savepoint step fills in `restore_from` and `started`).
    pub marks: Marks,
}

/// The savepoint reason recorded in status for a change.
pub fn savepoint_reason(change: Change) -> &'static str {
    match change {
        Change::Upgrade | Change::Deploy | Change::RollBack => "upgrade",
        Change::Rescale => "rescale",
        Change::Suspend => "suspend",
    }
}

/// The next step for a job: see the module documentation.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let now = inputs.now;
    let Some(current) = inputs.current else {
        let marks = Marks { rollout: Some(Change::Deploy), started: Some(now), ..Marks::default() };
        return Plan { step: Step::Apply { change: Some(Change::Deploy) }, run: Run::Desired, marks };
    };
    let mut marks = current.marks.clone();
    let rolled_back = marks.rolled_back == Some(inputs.generation);
    let (run, target) = match (&inputs.stable, rolled_back) {
        (Some(stable), true) => (Run::Stable, stable),
        _ => (Run::Desired, &inputs.desired),
    };
    let settled = current.pods.settled();

    if let Some(change) = marks.rollout
        && !settled
    {
        let overdue = marks.started.is_some_and(|started| elapsed(started, now) >= inputs.rollout_timeout);
        let returnable = inputs.stable.as_ref().filter(|stable| **stable != current.target && stable.replicas > 0);
        if overdue && run == Run::Desired && change != Change::RollBack && returnable.is_some() {
            marks.rollout = Some(Change::RollBack);
            marks.started = Some(now);
            marks.rolled_back = Some(inputs.generation);
            return Plan { step: Step::RollBack { failed: change }, run: Run::Stable, marks };
        }
        if *target != current.target
            && current.pods.ready == 0
            && let Some(next) = classify(&current.target, target, inputs.suspended)
        {
            // No pod of the rollout runs yet (a bad image, a first deploy that fails): the new
            // spec replaces them at once and restores what they were to restore.
            marks.rollout = Some(next);
            marks.started = Some(now);
            return Plan { step: Step::Apply { change: Some(next) }, run, marks };
        }
        let step = Step::Hold { hold: Hold::InFlight(change), recheck: RECHECK };
        return Plan { step, run, marks };
    }

    if marks.rollout.take().is_some() {
        marks.started = None;
        marks.settled_at = Some(now);
    }
    if settled && run == Run::Desired && current.target == inputs.desired && inputs.desired.replicas > 0 {
        marks.stable_spec = Some(inputs.desired_spec.to_owned());
    }
    let Some(change) = classify(&current.target, target, inputs.suspended) else {
        return Plan { step: Step::Apply { change: None }, run, marks };
    };
    if change == Change::Rescale
        && let Some(settled_at) = marks.settled_at
    {
        let quiet = elapsed(settled_at, now);
        if quiet < inputs.stabilization {
            let remaining = inputs.stabilization - quiet;
            return Plan { step: Step::Hold { hold: Hold::Stabilizing { remaining }, recheck: remaining }, run, marks };
        }
    }
    let asked_for = elapsed(inputs.asked_since, now);
    if change == Change::Rescale && target.replicas < current.target.replicas && asked_for < inputs.stabilization {
        let remaining = inputs.stabilization - asked_for;
        return Plan { step: Step::Hold { hold: Hold::ScalingDownSoon { remaining }, recheck: remaining }, run, marks };
    }
    marks.rollout = Some(change);
    marks.started = Some(now);
    let running = current.target.replicas > 0 && current.pods.existing > 0;
    let step = if running && inputs.mode == UpgradeMode::Savepoint {
        Step::Savepoint { change }
    } else {
        Step::Apply { change: Some(change) }
    };
    Plan { step, run, marks }
}

/// The change from `current` to `target`; `None` when no pod is replaced.
fn classify(current: &Target, target: &Target, suspended: bool) -> Option<Change> {
    if target == current || (target.replicas == 0 && current.replicas == 0) {
        None
    } else if current.replicas == 0 {
        Some(Change::Deploy)
    } else if target.replicas == 0 && suspended {
        Some(Change::Suspend)
    } else if target.template_hash != current.template_hash {
        Some(Change::Upgrade)
    } else {
        Some(Change::Rescale)
    }
}

/// Time from `since` to `now`, zero if the clock went back.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"parallelism":2}"#;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn target(hash: &str, replicas: i32) -> Target {
        Target { template_hash: hash.into(), replicas }
    }

    fn settled(replicas: i32) -> Pods {
        Pods { desired: replicas, existing: replicas, updated: replicas, ready: replicas, observed: true }
    }

    fn starting(replicas: i32) -> Pods {
        Pods { desired: replicas, existing: replicas, updated: replicas, ready: 0, observed: true }
    }

    fn current(target: Target, pods: Pods, marks: Marks) -> Current {
        Current { target, pods, marks }
    }

    fn inputs<'a>(desired: Target, current: Option<&'a Current>, now: i64) -> Inputs<'a> {
        Inputs {
            generation: 5,
            desired,
            desired_spec: SPEC,
            stable: None,
            current,
            suspended: false,
            mode: UpgradeMode::Savepoint,
            rollout_timeout: Duration::from_secs(300),
            stabilization: Duration::from_secs(30),
            asked_since: at(0),
            now: at(now),
        }
    }

    #[test]
    fn a_new_job_deploys_without_a_savepoint() {
        let plan = plan(&inputs(target("a", 2), None, 0));
        assert_eq!(plan.step, Step::Apply { change: Some(Change::Deploy) });
        assert_eq!(plan.marks.rollout, Some(Change::Deploy));
        assert_eq!(plan.marks.started, Some(at(0)));
        assert_eq!(plan.marks.restore_from, None);
    }

    #[test]
    fn a_settled_rollout_records_the_stable_spec_and_when_it_settled() {
        let marks = Marks { rollout: Some(Change::Deploy), started: Some(at(0)), ..Marks::default() };
        let now = current(target("a", 2), settled(2), marks);
        let plan = plan(&inputs(target("a", 2), Some(&now), 40));
        assert_eq!(plan.step, Step::Apply { change: None });
        assert_eq!(plan.marks.rollout, None);
        assert_eq!(plan.marks.started, None);
        assert_eq!(plan.marks.settled_at, Some(at(40)));
        assert_eq!(plan.marks.stable_spec.as_deref(), Some(SPEC));
    }

    #[test]
    fn a_steady_job_keeps_its_marks() {
        let marks = Marks {
            restore_from: Some("sp-1".into()),
            stable_spec: Some(SPEC.into()),
            settled_at: Some(at(1)),
            ..Marks::default()
        };
        let now = current(target("a", 2), settled(2), marks.clone());
        let plan = plan(&inputs(target("a", 2), Some(&now), 500));
        assert_eq!(plan, Plan { step: Step::Apply { change: None }, run: Run::Desired, marks });
    }

    #[test]
    fn an_upgrade_of_running_pods_takes_a_savepoint_first() {
        let marks = Marks { restore_from: Some("sp-1".into()), ..Marks::default() };
        let now = current(target("a", 2), settled(2), marks);
        let plan = plan(&inputs(target("b", 2), Some(&now), 100));
        assert_eq!(plan.step, Step::Savepoint { change: Change::Upgrade });
        assert_eq!(plan.marks.rollout, Some(Change::Upgrade));
        assert_eq!(savepoint_reason(Change::Upgrade), "upgrade");
    }

    #[test]
    fn last_state_and_stateless_roll_without_a_savepoint_and_keep_the_lineage() {
        let marks = Marks { restore_from: Some("sp-1".into()), ..Marks::default() };
        let now = current(target("a", 2), settled(2), marks);
        for mode in [UpgradeMode::LastState, UpgradeMode::Stateless] {
            let plan = plan(&Inputs { mode, ..inputs(target("b", 2), Some(&now), 100) });
            assert_eq!(plan.step, Step::Apply { change: Some(Change::Upgrade) }, "{mode:?}");
            assert_eq!(plan.marks.restore_from.as_deref(), Some("sp-1"), "{mode:?}");
        }
    }

    #[test]
    fn a_rescale_takes_a_savepoint_after_the_stabilization_window() {
        let marks = Marks { settled_at: Some(at(0)), ..Marks::default() };
        let now = current(target("a", 2), settled(2), marks);
        let early = plan(&inputs(target("a", 3), Some(&now), 10));
        let remaining = Duration::from_secs(20);
        assert_eq!(early.step, Step::Hold { hold: Hold::Stabilizing { remaining }, recheck: remaining });
        assert_eq!(early.marks.rollout, None, "nothing started");
        let later = plan(&inputs(target("a", 3), Some(&now), 30));
        assert_eq!(later.step, Step::Savepoint { change: Change::Rescale });
    }

    #[test]
    fn a_scale_down_waits_until_the_smaller_parallelism_held_for_the_window() {
        let marks = Marks { settled_at: Some(at(0)), ..Marks::default() };
        let now = current(target("a", 4), settled(4), marks);
        let asked = |replicas, since, at_s| {
            plan(&Inputs { asked_since: at(since), ..inputs(target("a", replicas), Some(&now), at_s) })
        };
        // Asked for 3 at 100 s, then for 1 at 115 s: no rollout until 1 has held for 30 s.
        let remaining = Duration::from_secs(25);
        assert_eq!(
            asked(3, 100, 105).step,
            Step::Hold { hold: Hold::ScalingDownSoon { remaining }, recheck: remaining }
        );
        let remaining = Duration::from_secs(20);
        assert_eq!(
            asked(1, 115, 125).step,
            Step::Hold { hold: Hold::ScalingDownSoon { remaining }, recheck: remaining }
        );
        assert_eq!(asked(1, 115, 145).step, Step::Savepoint { change: Change::Rescale });
        // A scale-up does not wait for its ask to hold.
        assert_eq!(asked(6, 140, 141).step, Step::Savepoint { change: Change::Rescale });
    }

    #[test]
    fn an_upgrade_does_not_wait_for_the_stabilization_window() {
        let marks = Marks { settled_at: Some(at(0)), ..Marks::default() };
        let now = current(target("a", 2), settled(2), marks);
        assert_eq!(plan(&inputs(target("b", 3), Some(&now), 1)).step, Step::Savepoint { change: Change::Upgrade });
    }

    #[test]
    fn suspending_and_scaling_to_zero_take_a_savepoint() {
        let now = current(target("a", 2), settled(2), Marks::default());
        let suspend = plan(&Inputs { suspended: true, ..inputs(target("a", 0), Some(&now), 100) });
        assert_eq!(suspend.step, Step::Savepoint { change: Change::Suspend });
        assert_eq!(savepoint_reason(Change::Suspend), "suspend");
        let to_zero = plan(&inputs(target("a", 0), Some(&now), 100));
        assert_eq!(to_zero.step, Step::Savepoint { change: Change::Rescale });
    }

    #[test]
    fn resuming_restores_the_suspend_savepoint_without_another() {
        let marks = Marks { restore_from: Some("sp-suspend".into()), settled_at: Some(at(99)), ..Marks::default() };
        let now = current(target("a", 0), settled(0), marks);
        let plan = plan(&inputs(target("a", 2), Some(&now), 100));
        assert_eq!(plan.step, Step::Apply { change: Some(Change::Deploy) });
        assert_eq!(plan.marks.restore_from.as_deref(), Some("sp-suspend"));
    }

    #[test]
    fn a_change_while_suspended_waits_for_the_resume() {
        let now = current(target("a", 0), settled(0), Marks::default());
        let plan = plan(&Inputs { suspended: true, ..inputs(target("b", 0), Some(&now), 100) });
        assert_eq!(plan.step, Step::Apply { change: None }, "no pods to replace");
    }

    #[test]
    fn a_new_spec_replaces_a_rollout_whose_pods_never_became_ready() {
        let marks = Marks {
            rollout: Some(Change::Upgrade),
            started: Some(at(0)),
            restore_from: Some("sp-before".into()),
            ..Marks::default()
        };
        let now = current(target("b", 2), starting(2), marks);
        let plan = plan(&inputs(target("c", 2), Some(&now), 60));
        assert_eq!(plan.step, Step::Apply { change: Some(Change::Upgrade) }, "no savepoint of pods that never ran");
        assert_eq!(plan.marks.restore_from.as_deref(), Some("sp-before"));
        assert_eq!(plan.marks.started, Some(at(60)));
    }

    #[test]
    fn nothing_starts_while_a_rollout_is_in_flight() {
        let marks = Marks { rollout: Some(Change::Upgrade), started: Some(at(0)), ..Marks::default() };
        let mut pods = starting(2);
        pods.ready = 1;
        let now = current(target("b", 2), pods, marks.clone());
        let plan = plan(&inputs(target("b", 3), Some(&now), 60));
        assert_eq!(plan.step, Step::Hold { hold: Hold::InFlight(Change::Upgrade), recheck: RECHECK });
        assert_eq!(plan.marks, marks);
    }

    #[test]
    fn an_overdue_rollout_rolls_back_to_the_stable_spec_and_its_savepoint() {
        let marks = Marks {
            rollout: Some(Change::Upgrade),
            started: Some(at(0)),
            restore_from: Some("sp-before".into()),
            stable_spec: Some(SPEC.into()),
            ..Marks::default()
        };
        let now = current(target("b", 2), starting(2), marks);
        let stable = Some(target("a", 2));
        let waiting = plan(&Inputs { stable: stable.clone(), ..inputs(target("b", 2), Some(&now), 299) });
        assert!(matches!(waiting.step, Step::Hold { .. }), "{waiting:?}");

        let back = plan(&Inputs { stable: stable.clone(), ..inputs(target("b", 2), Some(&now), 300) });
        assert_eq!(back.step, Step::RollBack { failed: Change::Upgrade });
        assert_eq!(back.run, Run::Stable);
        assert_eq!(back.marks.restore_from.as_deref(), Some("sp-before"), "the pre-upgrade savepoint");
        assert_eq!(back.marks.rolled_back, Some(5));
        assert_eq!(back.marks.rollout, Some(Change::RollBack));
        assert_eq!(back.marks.started, Some(at(300)));

        let rolling_back = current(target("a", 2), starting(2), back.marks.clone());
        let again = plan(&Inputs { stable: stable.clone(), ..inputs(target("b", 2), Some(&rolling_back), 900) });
        assert_eq!(again.step, Step::Hold { hold: Hold::InFlight(Change::RollBack), recheck: RECHECK });

        let rolled_back = current(target("a", 2), settled(2), back.marks);
        let after = plan(&Inputs { stable: stable.clone(), ..inputs(target("b", 2), Some(&rolled_back), 950) });
        assert_eq!(after.step, Step::Apply { change: None }, "the failed generation is not retried");
        assert_eq!(after.run, Run::Stable);
        assert_eq!(after.marks.stable_spec.as_deref(), Some(SPEC), "the stable spec stays");

        let fixed = plan(&Inputs { generation: 6, stable, ..inputs(target("c", 2), Some(&rolled_back), 960) });
        assert_eq!(fixed.step, Step::Savepoint { change: Change::Upgrade }, "a new generation is tried");
        assert_eq!(fixed.run, Run::Desired);
    }

    #[test]
    fn without_a_stable_spec_an_overdue_rollout_keeps_waiting() {
        let marks = Marks { rollout: Some(Change::Deploy), started: Some(at(0)), ..Marks::default() };
        let now = current(target("a", 2), starting(2), marks);
        let plan = plan(&inputs(target("a", 2), Some(&now), 1000));
        assert_eq!(plan.step, Step::Hold { hold: Hold::InFlight(Change::Deploy), recheck: RECHECK });
    }

    #[test]
    fn marks_round_trip_through_annotations() {
        let marks = Marks {
            rollout: Some(Change::Rescale),
            started: Some(at(3)),
            restore_from: Some("sp-1".into()),
            stable_spec: Some(SPEC.into()),
            rolled_back: Some(4),
            source_partitions: Some(6),
            settled_at: Some(at(1)),
        };
        assert_eq!(Marks::read(&marks.annotations()), marks);
        assert_eq!(Marks::default().annotations(), BTreeMap::new());
    }
}

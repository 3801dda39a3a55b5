//! What becomes of a StreamJobSavepoint itself: the finalizer that disposes of its files
//! when `disposeOnDelete` is set, and one asked of a job that does not exist; when periodic
//! savepoints are due, and which of the operator's savepoints retention deletes.

use std::time::Duration;

use jiff::Timestamp;

/// A savepoint as the plan sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavepointView {
    /// Its deletion has started.
    pub deleting: bool,
    /// It carries the operator's disposal finalizer.
    pub finalized: bool,
    /// `spec.disposeOnDelete`.
    pub dispose_on_delete: bool,
    /// It is still to be taken (no state yet, `Pending` or `InProgress`).
    pub open: bool,
    /// Where its files are, once completed.
    pub path: Option<String>,
    /// Its job exists.
    pub job_exists: bool,
    /// Its job's pods restore from it: its files must stay.
    pub in_use: bool,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Put the disposal finalizer on it.
    AddFinalizer,
    /// Delete the files at `path`, then the finalizer.
    Dispose {
        /// The savepoint's folder.
        path: String,
    },
    /// Keep it (and its files) while its job's pods restore from it.
    KeepWhileInUse,
    /// Take the finalizer off: nothing to dispose of.
    Release,
    /// Mark it failed: its job does not exist.
    FailWithoutJob,
    /// Nothing.
    Nothing,
}

/// The next step for a savepoint.
pub fn next(savepoint: &SavepointView) -> Next {
    match savepoint {
        SavepointView { deleting: true, finalized: false, .. } => Next::Nothing,
        SavepointView { deleting: true, dispose_on_delete: false, .. } => Next::Release,
        SavepointView { deleting: true, path: None, .. } => Next::Release,
        SavepointView { deleting: true, in_use: true, .. } => Next::KeepWhileInUse,
        SavepointView { deleting: true, path: Some(path), .. } => Next::Dispose { path: path.clone() },
        SavepointView { dispose_on_delete: true, finalized: false, .. } => Next::AddFinalizer,
        SavepointView { dispose_on_delete: false, finalized: true, .. } => Next::Release,
        SavepointView { open: true, job_exists: false, .. } => Next::FailWithoutJob,
        _ => Next::Nothing,
    }
}

/// One of the operator's completed savepoints of a job, for retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// Its name.
    pub name: String,
    /// When it completed.
    pub completed_at: Timestamp,
    /// The job's pods restore from it.
    pub in_use: bool,
}

/// The savepoints retention deletes: past the newest `max_count`, or older than `max_age`;
/// never one in use.
pub fn expired(kept: &[Kept], max_count: Option<usize>, max_age: Option<Duration>, now: Timestamp) -> Vec<String> {
    let mut newest_first: Vec<&Kept> = kept.iter().collect();
    newest_first.sort_by_key(|k| std::cmp::Reverse(k.completed_at));
    let too_old = |k: &Kept| max_age.is_some_and(|age| age_of(k.completed_at, now) > age);
    newest_first
        .iter()
        .enumerate()
        .filter(|(i, k)| !k.in_use && (max_count.is_some_and(|count| *i >= count) || too_old(k)))
        .map(|(_, k)| k.name.clone())
        .collect()
}

/// How long until the next periodic savepoint is due (zero: now), `interval` after the
/// newest savepoint of the job, or after `since` (the job's creation) when it has none.
pub fn until_periodic(newest: Option<Timestamp>, since: Timestamp, interval: Duration, now: Timestamp) -> Duration {
    interval.saturating_sub(age_of(newest.unwrap_or(since), now))
}

fn age_of(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(at)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn kept(name: &str, completed: i64, in_use: bool) -> Kept {
        Kept { name: name.into(), completed_at: at(completed), in_use }
    }

    #[test]
    fn retention_keeps_the_newest_and_the_young_and_always_the_one_in_use() {
        let all = [kept("a", 10, false), kept("b", 30, false), kept("c", 20, true), kept("d", 40, false)];
        assert_eq!(expired(&all, Some(2), None, at(50)), ["a"], "c is in use");
        assert_eq!(expired(&all, None, Some(Duration::from_secs(25)), at(50)), ["a"], "older than 25 s, c in use");
        assert_eq!(expired(&all, Some(1), Some(Duration::from_secs(15)), at(50)), ["b", "a"]);
        assert!(expired(&all, None, None, at(50)).is_empty(), "no retention: everything stays");
    }

    #[test]
    fn a_periodic_savepoint_is_due_an_interval_after_the_newest() {
        let hour = Duration::from_secs(3600);
        assert_eq!(until_periodic(Some(at(0)), at(-100), hour, at(600)), Duration::from_secs(3000));
        assert_eq!(until_periodic(Some(at(0)), at(-100), hour, at(4000)), Duration::ZERO);
        assert_eq!(until_periodic(None, at(0), hour, at(60)), Duration::from_secs(3540), "from the job's creation");
    }

    fn completed() -> SavepointView {
        SavepointView { path: Some("s3://b/g/savepoints/sp".into()), job_exists: true, ..SavepointView::default() }
    }

    #[test]
    fn a_savepoint_to_dispose_of_gets_the_finalizer_and_loses_it_when_that_is_unset() {
        let disposed = SavepointView { dispose_on_delete: true, ..completed() };
        assert_eq!(next(&disposed), Next::AddFinalizer);
        assert_eq!(next(&SavepointView { finalized: true, ..disposed.clone() }), Next::Nothing);
        assert_eq!(next(&SavepointView { finalized: true, ..completed() }), Next::Release, "disposeOnDelete unset");
        assert_eq!(next(&completed()), Next::Nothing);
    }

    #[test]
    fn a_deleted_savepoint_has_its_files_removed_unless_its_job_restores_it() {
        let deleting = SavepointView { deleting: true, finalized: true, dispose_on_delete: true, ..completed() };
        assert_eq!(next(&deleting), Next::Dispose { path: "s3://b/g/savepoints/sp".into() });
        assert_eq!(next(&SavepointView { in_use: true, ..deleting.clone() }), Next::KeepWhileInUse);
        assert_eq!(next(&SavepointView { path: None, ..deleting.clone() }), Next::Release, "never taken: no files");
        assert_eq!(next(&SavepointView { dispose_on_delete: false, ..deleting.clone() }), Next::Release);
        assert_eq!(next(&SavepointView { finalized: false, ..deleting }), Next::Nothing, "not ours to hold");
    }

    #[test]
    fn a_savepoint_asked_of_a_job_that_does_not_exist_fails() {
        let orphan = SavepointView { open: true, job_exists: false, path: None, ..SavepointView::default() };
        assert_eq!(next(&orphan), Next::FailWithoutJob);
        assert_eq!(next(&SavepointView { job_exists: true, ..orphan.clone() }), Next::Nothing, "its job takes it");
        assert_eq!(next(&SavepointView { open: false, ..orphan }), Next::Nothing, "a record outlives its job");
    }
}

//! What becomes of a StreamJobSavepoint itself: the finalizer that disposes of its files
//! when `disposeOnDelete` is set, and one asked of a job that does not exist.

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

#[cfg(test)]
mod tests {
    use super::*;

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

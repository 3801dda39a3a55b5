//! The one shape every pipeline step has: batches in, batches out, told when event time
//! moves, and (when it keeps state) able to snapshot and restore that state.
//!
//! A partition's pipeline is a list of operators. A batch goes through them in order; when
//! the watermark moves, each operator in turn learns it and what it then emits (closed
//! windows) goes through the operators after it, which have not yet seen the new watermark
//! (so a window's results are never late for the next step).

use std::fmt;

use arrow::{
    array::{AsArray, Int64Array},
    datatypes::Int64Type,
    error::ArrowError,
    record_batch::RecordBatch,
};

use super::EngineError;

/// One step of a partition's pipeline.
///
/// `process` must change nothing when it fails: a failing batch is split and tried again in
/// parts to find the rows at fault (see [`super::isolate`]).
pub trait Operator: fmt::Debug + Send + Sync {
    /// Where in the pipeline it was declared, e.g. `pipeline[2].filter`; its errors say so.
    fn step(&self) -> &str;

    /// A copy with empty state: the plan holds one of each operator, every partition its own.
    fn fresh(&self) -> Box<dyn Operator>;

    /// Takes in a batch. `watermark` is the newest this operator has been told of.
    fn process(&mut self, batch: RecordBatch, watermark: i64) -> Result<Output, EngineError>;

    /// Event time moved to `watermark`: what that completes, for the operators after it.
    fn on_watermark(&mut self, _watermark: i64) -> Result<Option<RecordBatch>, EngineError> {
        Ok(None)
    }

    /// Whether it keeps state that a restart must not lose (checkpoints or replay).
    fn is_stateful(&self) -> bool {
        false
    }

    /// Its state for a checkpoint, `None` while it holds none.
    fn snapshot(&self) -> Result<Option<RecordBatch>, EngineError> {
        Ok(None)
    }

    /// Takes back the state a [`Self::snapshot`] returned.
    fn restore(&mut self, _state: &RecordBatch) -> Result<(), EngineError> {
        Ok(())
    }

    /// The oldest source offset whose record its state still needs: without checkpoints, a
    /// restart replays from there to rebuild the state.
    fn oldest_needed_offset(&self) -> Option<i64> {
        None
    }

    /// Bytes its state holds, what the state budget is measured against.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Number of (key, window) aggregates it holds.
    fn open_aggregates(&self) -> usize {
        0
    }
}

/// What an operator made of a batch.
#[derive(Debug, Default)]
pub struct Output {
    /// The rows for the operators after it (`None` when none are left).
    pub rows: Option<RecordBatch>,
    /// Rows that came after the state they belong to was given up (closed windows).
    pub late: Option<RecordBatch>,
    /// Rows dropped as repeats of rows already passed on.
    pub duplicates: usize,
}

impl Output {
    /// Every row passes on (or those of `rows`).
    pub fn rows(rows: RecordBatch) -> Self {
        Self { rows: Some(rows), ..Self::default() }
    }
}

/// Why a stateful operator could not take in a batch or its snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A hidden column the source adds (or a snapshot column) is missing: a bug, not bad input.
    #[error("no column `{0}` in the batch")]
    MissingColumn(String),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The Int64 column `name` of `batch`.
pub fn int_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, StateError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| StateError::MissingColumn(name.to_owned()))
}

//! `keyBy` + `window` + `aggregate`: each key's rows folded per event-time window, one
//! result row per key and window when the watermark passes the window's end.

use arrow::{array::UInt32Array, compute::take_record_batch, record_batch::RecordBatch};
use weir_crds::Aggregation;

use super::{
    EngineError,
    operator::{Operator, Output, StateError},
    window::WindowKind,
    windows::KeyedWindows,
};

/// The windowed aggregate of a pipeline.
#[derive(Debug)]
pub struct WindowedAggregate {
    step: String,
    kind: WindowKind,
    keys: Vec<String>,
    aggregations: Vec<Aggregation>,
    windows: KeyedWindows,
}

impl WindowedAggregate {
    /// The aggregate declared at `step`, over windows of `kind` of each key of `keys`.
    pub fn new(step: String, kind: WindowKind, keys: Vec<String>, aggregations: Vec<Aggregation>) -> Self {
        let windows = KeyedWindows::new(kind, keys.clone(), &aggregations);
        Self { step, kind, keys, aggregations, windows }
    }

    fn fail(&self, source: impl Into<StateError>) -> EngineError {
        EngineError::State { step: self.step.clone(), source: source.into() }
    }
}

impl Operator for WindowedAggregate {
    fn step(&self) -> &str {
        &self.step
    }

    fn fresh(&self) -> Box<dyn Operator> {
        Box::new(Self::new(self.step.clone(), self.kind, self.keys.clone(), self.aggregations.clone()))
    }

    fn process(&mut self, batch: RecordBatch, watermark: i64) -> Result<Output, EngineError> {
        let applied = self.windows.apply(&batch, watermark).map_err(|e| self.fail(e))?;
        let late = match applied.late_rows.is_empty() {
            true => None,
            false => Some(take_record_batch(&batch, &UInt32Array::from(applied.late_rows))?),
        };
        Ok(Output { rows: None, late, duplicates: 0 })
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Option<RecordBatch>, EngineError> {
        self.windows.close_until(watermark).map_err(|e| self.fail(e))
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&self) -> Result<Option<RecordBatch>, EngineError> {
        self.windows.snapshot().map_err(|e| self.fail(e))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<(), EngineError> {
        self.windows =
            KeyedWindows::restore(self.kind, self.keys.clone(), &self.aggregations, state).map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn oldest_needed_offset(&self) -> Option<i64> {
        self.windows.min_open_offset()
    }

    fn state_bytes(&self) -> usize {
        self.windows.state_bytes()
    }

    fn open_aggregates(&self) -> usize {
        self.windows.open_aggregates()
    }
}

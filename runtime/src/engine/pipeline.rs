//! The pipeline of one partition: its own copy of the plan's operators, their state, and the
//! partition's watermark.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use arrow::{
    array::{AsArray, BooleanArray},
    compute::{concat_batches, filter_record_batch},
    datatypes::Int64Type,
    error::ArrowError,
    record_batch::RecordBatch,
};
use tracing::warn;

use super::{
    EngineError, OFFSET, Plan, Rejected, isolate::isolate, newest_event_time_except, operator::Operator,
    watermark::Watermark,
};

/// The state of a partition's stateful operators, by operator id (see [`Plan`]): what a
/// checkpoint holds for the partition.
pub type OperatorStates = BTreeMap<String, RecordBatch>;

/// Where a partition resumes without checkpointed state: its event-time progress and the
/// offset before which records were already processed once (their results were emitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// The newest event time seen before the restart.
    pub max_event_time: Option<i64>,
    /// Records before this offset are a replay: rebuilding state, they emit nothing again,
    /// and late ones are dropped without being counted.
    pub replay_until: i64,
}

/// What processing a batch produced.
#[derive(Debug, Default)]
pub struct Processed {
    /// Result records for the sink.
    pub output: Vec<RecordBatch>,
    /// Records that arrived after the state they belong to was given up (not replays).
    pub late: Option<RecordBatch>,
    /// Records dropped as repeats by a `dedupe` step.
    pub duplicates: usize,
    /// Input rows a step could not evaluate: they changed no state and are not in the results.
    pub rejected: Vec<Rejected>,
    /// Result rows the steps after the window could not evaluate.
    pub rejected_results: Vec<Rejected>,
}

/// What closing windows produced.
#[derive(Debug, Default)]
pub struct Closed {
    /// Result records for the sink.
    pub output: Vec<RecordBatch>,
    /// Result rows the steps after the window could not evaluate.
    pub rejected: Vec<Rejected>,
}

/// The pipeline state of one source partition.
#[derive(Debug)]
pub struct PartitionPipeline {
    plan: Arc<Plan>,
    operators: Vec<Box<dyn Operator>>,
    /// The watermark each operator was last told of.
    marks: Vec<i64>,
    watermark: Watermark,
    replay_until: i64,
}

impl PartitionPipeline {
    /// A partition starting fresh, or resuming where `resume` says.
    pub fn new(plan: Arc<Plan>, resume: Resume, now: Instant) -> Self {
        let operators: Vec<Box<dyn Operator>> = plan.operators.iter().map(|p| p.operator.fresh()).collect();
        let watermark = Watermark::new(&plan, resume.max_event_time, now);
        let marks = vec![watermark.current(); operators.len()];
        Self { plan, operators, marks, watermark, replay_until: resume.replay_until }
    }

    /// A partition resuming from checkpointed state: what [`Self::state`] returned and the
    /// newest event time seen. State of an operator the plan no longer has is left behind.
    pub fn restore(
        plan: Arc<Plan>,
        max_event_time: Option<i64>,
        states: &OperatorStates,
        now: Instant,
    ) -> Result<Self, EngineError> {
        let mut pipeline = Self::new(plan.clone(), Resume { max_event_time, replay_until: 0 }, now);
        for (planned, operator) in plan.operators.iter().zip(&mut pipeline.operators) {
            if let Some(state) = states.get(&planned.id) {
                operator.restore(state)?;
            }
        }
        for id in states.keys().filter(|id| !plan.operators.iter().any(|p| &p.id == *id)) {
            warn!(operator = %id, "the checkpoint holds state of a step the pipeline no longer has: left behind");
        }
        Ok(pipeline)
    }

    /// The state of every stateful operator that holds some, for a checkpoint.
    pub fn state(&self) -> Result<OperatorStates, EngineError> {
        let mut states = OperatorStates::new();
        for (planned, operator) in self.plan.operators.iter().zip(&self.operators) {
            if let Some(state) = operator.snapshot()? {
                states.insert(planned.id.clone(), state);
            }
        }
        Ok(states)
    }

    /// The partition's event-time progress.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// The first offset whose record the state still needs, if it needs any.
    pub fn oldest_needed_offset(&self) -> Option<i64> {
        self.operators.iter().filter_map(|o| o.oldest_needed_offset()).min()
    }

    /// Bytes the operators' state holds.
    pub fn state_bytes(&self) -> usize {
        self.operators.iter().map(|o| o.state_bytes()).sum()
    }

    /// Number of (key, window) aggregates held.
    pub fn open_aggregates(&self) -> usize {
        self.operators.iter().map(|o| o.open_aggregates()).sum()
    }

    /// Runs a decoded batch (with hidden columns) through the pipeline. Rows a step cannot
    /// evaluate are rejected one by one (see [`isolate`]); the rest go on.
    pub fn process(&mut self, batch: RecordBatch, now: Instant) -> Result<Processed, EngineError> {
        let mut sink = Sink::default();
        let rows = run_operators(&mut self.operators, &self.marks, batch.clone(), &mut sink)?;
        let fresh = |batches: Vec<RecordBatch>| -> Result<Vec<RecordBatch>, ArrowError> {
            let kept = batches.into_iter().map(|b| after(b, self.replay_until));
            Ok(kept.collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect())
        };
        let mut processed = Processed {
            output: fresh(rows.into_iter().collect())?,
            late: concat(fresh(sink.late)?)?,
            duplicates: sink.duplicates,
            rejected: sink.rejected,
            rejected_results: Vec::new(),
        };
        self.observe_newest(&batch, &processed.rejected, now);
        let closed = self.tell_watermark()?;
        processed.output.extend(closed.output);
        processed.rejected_results = closed.rejected;
        Ok(processed)
    }

    /// Moves the watermark with the newest event time of `batch`, less its rejected rows.
    fn observe_newest(&mut self, batch: &RecordBatch, rejected: &[Rejected], now: Instant) {
        if self.plan.external_watermark {
            return;
        }
        if let Some(newest) = newest_event_time_except(batch, rejected) {
            self.watermark.observe(newest, now);
        }
    }

    /// Moves an idle partition's watermark with the clock and emits what that closes.
    pub fn tick(&mut self, now: Instant) -> Result<Closed, EngineError> {
        if !self.plan.is_stateful() || self.plan.external_watermark || !self.watermark.advance_if_idle(now) {
            return Ok(Closed::default());
        }
        self.tell_watermark()
    }

    /// Moves an externally driven watermark (see [`Plan::split_at_key`]) forward and emits
    /// what that closes.
    pub fn advance_watermark(&mut self, watermark: i64) -> Result<Closed, EngineError> {
        if !self.watermark.advance_to(watermark) {
            return Ok(Closed::default());
        }
        self.tell_watermark()
    }

    /// Tells each operator in turn of the current watermark; what one emits goes through
    /// the operators after it before they are told.
    fn tell_watermark(&mut self) -> Result<Closed, EngineError> {
        let watermark = self.watermark.current();
        let mut closed = Closed::default();
        for i in 0..self.operators.len() {
            self.marks[i] = watermark;
            let Some(emitted) = self.operators[i].on_watermark(watermark)? else { continue };
            let mut sink = Sink::default();
            let rows = run_operators(&mut self.operators[i + 1..], &self.marks[i + 1..], emitted, &mut sink)?;
            if let Some(late) = concat(sink.late)? {
                // Validation keeps stateful steps off results: this would be a bug.
                warn!(rows = late.num_rows(), "results late for a later step were dropped");
            }
            closed.output.extend(rows);
            closed.rejected.extend(sink.rejected);
        }
        Ok(closed)
    }
}

/// What running operators set aside besides the rows that come out at the end.
#[derive(Debug, Default)]
pub(super) struct Sink {
    pub rejected: Vec<Rejected>,
    pub late: Vec<RecordBatch>,
    pub duplicates: usize,
}

/// Runs `batch` through `operators` (each told of the watermark in `marks`), isolating the
/// rows each one fails on: the rows that come out at the end, in one batch (`None` when an
/// operator kept them all, or every row was rejected).
pub(super) fn run_operators(
    operators: &mut [Box<dyn Operator>],
    marks: &[i64],
    batch: RecordBatch,
    sink: &mut Sink,
) -> Result<Option<RecordBatch>, EngineError> {
    let mut rows = batch;
    for (operator, &mark) in operators.iter_mut().zip(marks) {
        let isolated = isolate(rows, |part| operator.process(part, mark));
        sink.rejected.extend(isolated.rejected);
        let mut passed = Vec::with_capacity(isolated.done.len());
        for output in isolated.done {
            sink.late.extend(output.late);
            sink.duplicates += output.duplicates;
            passed.extend(output.rows);
        }
        match concat(passed)? {
            Some(next) => rows = next,
            None => return Ok(None),
        }
    }
    Ok(Some(rows))
}

/// The rows of `batch` at or after source offset `from` (all when it has no offsets).
fn after(batch: RecordBatch, from: i64) -> Result<Option<RecordBatch>, ArrowError> {
    let Some(offsets) = batch.column_by_name(OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>()) else {
        return Ok(Some(batch));
    };
    if from <= 0 || offsets.values().iter().all(|&o| o >= from) {
        return Ok(Some(batch));
    }
    let keep: BooleanArray = offsets.values().iter().map(|&o| Some(o >= from)).collect();
    Ok(Some(filter_record_batch(&batch, &keep)?).filter(|b| b.num_rows() > 0))
}

/// The batches as one, `None` when there are none.
pub(super) fn concat(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>, ArrowError> {
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.into_iter().next()),
        _ => Ok(Some(concat_batches(&batches[0].schema(), &batches)?)),
    }
}

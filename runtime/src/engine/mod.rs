//! The dataflow engine: a StreamJob's pipeline applied to Arrow record batches, one
//! partition at a time. No Kafka here: connectors hand batches in and take results out.
//!
//! Every batch entering the engine carries two hidden columns the source adds: the record's
//! event time ([`EVENT_TIME`], epoch ms) and its source offset ([`OFFSET`]). Selects keep
//! them; the sink drops them.

pub mod accumulate;
pub mod expr;
pub mod isolate;
pub mod keyed;
pub mod window;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use arrow::{
    array::{Array, ArrayRef, AsArray, UInt32Array},
    compute::{concat_batches, filter_record_batch, take_record_batch},
    datatypes::{Field, Int64Type, Schema},
    error::ArrowError,
    record_batch::RecordBatch,
};
use weir_crds::{Step, StreamJobSpec, expr::SelectItem};

pub use self::isolate::Rejected;
use self::{
    expr::{ExprError, PhysicalExpr},
    isolate::isolate,
    keyed::{KeyedError, KeyedWindows},
    window::WindowKind,
};

/// Hidden column: the record's event time, epoch milliseconds.
pub const EVENT_TIME: &str = "__weir_event_time";
/// Hidden column: the record's offset in its source partition.
pub const OFFSET: &str = "__weir_offset";
/// Hidden column: the consumed headers that travel to the sink with the record's rows.
pub const HEADERS: &str = "__weir_headers";
/// Hidden column of a repartitioned job's keyed stage: the row's offset in its *source*
/// partition (its [`OFFSET`] is then the offset in the internal topic).
pub const UPSTREAM_OFFSET: &str = "__weir_upstream_offset";

/// Whether a column is one of the engine's own.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with("__weir_")
}

/// Why the engine could not process a batch or build a plan.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A filter or select expression failed.
    #[error("{step}: {source}")]
    Expr {
        /// Where in the pipeline, e.g. `pipeline[0].filter`.
        step: String,
        /// The cause.
        source: ExprError,
    },
    /// The windowed aggregate failed.
    #[error("{step}: {source}")]
    Keyed {
        /// Where in the pipeline.
        step: String,
        /// The cause.
        source: KeyedError,
    },
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// A stateless step.
#[derive(Debug, Clone)]
enum Stateless {
    Filter { step: String, predicate: PhysicalExpr },
    Select { step: String, items: Vec<Projection> },
}

#[derive(Debug, Clone)]
enum Projection {
    All,
    Named(PhysicalExpr, String),
}

impl Stateless {
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch, EngineError> {
        match self {
            Self::Filter { step, predicate } => {
                let keep = predicate
                    .evaluate_predicate(&batch)
                    .map_err(|source| EngineError::Expr { step: step.clone(), source })?;
                Ok(filter_record_batch(&batch, &keep)?)
            }
            Self::Select { step, items } => {
                let mut fields: Vec<Field> = Vec::new();
                let mut columns: Vec<ArrayRef> = Vec::new();
                for item in items {
                    match item {
                        Projection::All => {
                            for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                                if !is_hidden(field.name()) {
                                    fields.push(field.as_ref().clone());
                                    columns.push(column.clone());
                                }
                            }
                        }
                        Projection::Named(expr, name) => {
                            let column = expr
                                .evaluate(&batch)
                                .map_err(|source| EngineError::Expr { step: step.clone(), source })?;
                            fields.push(Field::new(name, column.data_type().clone(), true));
                            columns.push(column);
                        }
                    }
                }
                for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                    if is_hidden(field.name()) {
                        fields.push(field.as_ref().clone());
                        columns.push(column.clone());
                    }
                }
                Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
            }
        }
    }
}

/// The windowed aggregate of a plan.
#[derive(Debug, Clone)]
struct WindowPlan {
    step: String,
    kind: WindowKind,
    keys: Vec<String>,
    aggregations: Vec<weir_crds::Aggregation>,
}

/// A StreamJob's pipeline, compiled once and shared by all partitions.
#[derive(Debug, Clone)]
pub struct Plan {
    before_window: Vec<Stateless>,
    window: Option<WindowPlan>,
    after_window: Vec<Stateless>,
    out_of_orderness: i64,
    idle_timeout: Duration,
    /// The watermark is set from outside ([`PartitionPipeline::advance_watermark`]) rather
    /// than from the event times of the rows: the keyed stage of a repartitioned job, whose
    /// partitions mix rows of every source partition.
    external_watermark: bool,
}

impl Plan {
    /// Compiles the pipeline of a validated spec.
    pub fn new(spec: &StreamJobSpec) -> Result<Self, EngineError> {
        let mut before_window = Vec::new();
        let mut after_window = Vec::new();
        let mut window = None;
        let mut keys = Vec::new();
        let mut pending_window = None;
        for (i, step) in spec.pipeline.iter().enumerate() {
            let name = format!("pipeline[{i}].{}", step.kind());
            let stateless = match step {
                Step::Filter(text) => Some(Stateless::Filter {
                    predicate: PhysicalExpr::parse(text)
                        .map_err(|source| EngineError::Expr { step: name.clone(), source })?,
                    step: name,
                }),
                Step::Select(items) => Some(Stateless::Select { items: compile_select(items, &name)?, step: name }),
                Step::KeyBy(fields) => {
                    keys = fields.clone();
                    None
                }
                Step::Window(w) => {
                    pending_window = Some(WindowKind::from(w));
                    None
                }
                Step::Aggregate(aggregations) => {
                    window = Some(WindowPlan {
                        step: name,
                        kind: pending_window.take().unwrap_or(WindowKind::Tumbling { size: i64::MAX / 4 }),
                        keys: keys.clone(),
                        aggregations: aggregations.clone(),
                    });
                    None
                }
            };
            if let Some(stateless) = stateless {
                if window.is_some() { after_window.push(stateless) } else { before_window.push(stateless) }
            }
        }
        let event_time = spec.source.kafka.event_time.as_ref();
        Ok(Self {
            before_window,
            window,
            after_window,
            out_of_orderness: event_time
                .map_or(0, |e| i64::try_from(e.max_out_of_orderness.get().as_millis()).unwrap_or(0)),
            idle_timeout: event_time.map_or(Duration::from_secs(30), |e| e.idle_timeout.get()),
            external_watermark: false,
        })
    }

    /// The fields of the `keyBy` its windowed aggregate groups by (none without one).
    pub fn key_fields(&self) -> &[String] {
        self.window.as_ref().map_or(&[], |w| &w.keys)
    }

    /// Splits the plan for repartitioning: the stateless steps before the window run where
    /// records are consumed; the window and what follows it run on the internal topic's
    /// partitions, with the watermark the source partitions report.
    pub fn split_at_key(&self) -> (Self, Self) {
        let front = Self { window: None, after_window: Vec::new(), ..self.clone() };
        let keyed = Self { before_window: Vec::new(), external_watermark: true, ..self.clone() };
        (front, keyed)
    }

    /// The stateless steps before the window, applied to one batch: the rows that pass (in
    /// one batch, `None` when none did) and the rows the steps fail on, rejected alone.
    pub fn apply_front(&self, batch: RecordBatch) -> Result<(Option<RecordBatch>, Vec<Rejected>), EngineError> {
        run_stateless(&self.before_window, batch)
    }

    /// A fresh event-time tracker for one source partition of this plan.
    pub fn watermark(&self, now: Instant) -> Watermark {
        Watermark::new(self, None, now)
    }

    /// Whether the pipeline keeps state (has a windowed aggregate).
    pub fn is_stateful(&self) -> bool {
        self.window.is_some()
    }
}

fn compile_select(items: &[String], step: &str) -> Result<Vec<Projection>, EngineError> {
    items
        .iter()
        .enumerate()
        .map(|(j, text)| {
            let at = || format!("{step}[{j}]");
            match weir_crds::expr::parse_select_item(text) {
                Ok(SelectItem::Wildcard) => Ok(Projection::All),
                Ok(SelectItem::Named { expr, name }) => PhysicalExpr::compile(&expr)
                    .map(|e| Projection::Named(e, name))
                    .map_err(|source| EngineError::Expr { step: at(), source }),
                Err(e) => Err(EngineError::Expr { step: at(), source: ExprError::Unsupported(e.to_string()) }),
            }
        })
        .collect()
}

/// The event-time progress of one partition.
#[derive(Debug, Clone)]
pub struct Watermark {
    max_event_time: Option<i64>,
    out_of_orderness: i64,
    idle_timeout: Duration,
    last_activity: Instant,
}

impl Watermark {
    fn new(plan: &Plan, max_event_time: Option<i64>, now: Instant) -> Self {
        Self {
            max_event_time,
            out_of_orderness: plan.out_of_orderness,
            idle_timeout: plan.idle_timeout,
            last_activity: now,
        }
    }

    /// Records with event time before this are late; windows ending at or before it close.
    pub fn current(&self) -> i64 {
        self.max_event_time.map_or(i64::MIN, |t| t.saturating_sub(self.out_of_orderness))
    }

    /// The newest event time seen (or assumed while idle).
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    /// Takes in the newest event time of a batch of the partition's records.
    pub fn observe(&mut self, newest: i64, now: Instant) {
        self.max_event_time = Some(self.max_event_time.map_or(newest, |t| t.max(newest)));
        self.last_activity = now;
    }

    /// After `idle_timeout` without records, event time is assumed to move with the clock,
    /// so the partition's last windows close. Returns whether the watermark moved.
    pub fn advance_if_idle(&mut self, now: Instant) -> bool {
        let idle_for = now.saturating_duration_since(self.last_activity);
        let Some(max) = self.max_event_time else { return false };
        if idle_for < self.idle_timeout {
            return false;
        }
        let elapsed = i64::try_from(idle_for.as_millis()).unwrap_or(i64::MAX);
        self.max_event_time = Some(max.saturating_add(elapsed));
        self.last_activity = now;
        true
    }

    /// Whether nothing has been seen for `idle_timeout`: a source partition without
    /// records must not hold back the watermark of what it feeds.
    pub fn is_idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_activity) >= self.idle_timeout
    }

    /// Moves the watermark forward to `watermark` (never back).
    fn advance_to(&mut self, watermark: i64) -> bool {
        if watermark <= self.current() {
            return false;
        }
        self.max_event_time = Some(watermark.saturating_add(self.out_of_orderness));
        true
    }
}

/// Where a partition resumes: its event-time progress and the offset before which records
/// were already processed once (their closed windows were emitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// The newest event time seen before the restart.
    pub max_event_time: Option<i64>,
    /// Records before this offset are a replay: late ones are dropped without being counted.
    pub replay_until: i64,
}

/// What processing a batch produced.
#[derive(Debug, Default)]
pub struct Processed {
    /// Result records for the sink.
    pub output: Vec<RecordBatch>,
    /// Records that arrived after their windows closed (not replays).
    pub late: Option<RecordBatch>,
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
    windows: Option<KeyedWindows>,
    watermark: Watermark,
    replay_until: i64,
}

impl PartitionPipeline {
    /// A partition starting fresh, or resuming where `resume` says.
    pub fn new(plan: Arc<Plan>, resume: Resume, now: Instant) -> Self {
        let windows = plan.window.as_ref().map(|w| KeyedWindows::new(w.kind, w.keys.clone(), &w.aggregations));
        let watermark = Watermark::new(&plan, resume.max_event_time, now);
        Self { plan, windows, watermark, replay_until: resume.replay_until }
    }

    /// A partition resuming from checkpointed state: open windows as [`Self::window_state`]
    /// returned them (none for a stateless plan) and the newest event time seen. Records
    /// before `replay_until` were processed before the checkpoint.
    pub fn restore(
        plan: Arc<Plan>,
        max_event_time: Option<i64>,
        window_state: Option<&RecordBatch>,
        now: Instant,
    ) -> Result<Self, EngineError> {
        let mut pipeline = Self::new(plan.clone(), Resume { max_event_time, replay_until: 0 }, now);
        if let (Some(batch), Some(window)) = (window_state, plan.window.as_ref()) {
            let restored = KeyedWindows::restore(window.kind, window.keys.clone(), &window.aggregations, batch)
                .map_err(|source| EngineError::Keyed { step: window.step.clone(), source })?;
            pipeline.windows = Some(restored);
        }
        Ok(pipeline)
    }

    /// The open windows' state, for a checkpoint (`None` when nothing is open).
    pub fn window_state(&self) -> Result<Option<RecordBatch>, EngineError> {
        let (Some(windows), Some(plan)) = (self.windows.as_ref(), self.plan.window.as_ref()) else { return Ok(None) };
        windows.snapshot().map_err(|source| EngineError::Keyed { step: plan.step.clone(), source })
    }

    /// The partition's event-time progress.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// The first offset whose record is still needed by open windows, if any are open.
    pub fn min_open_offset(&self) -> Option<i64> {
        self.windows.as_ref().and_then(KeyedWindows::min_open_offset)
    }

    /// Bytes the window state holds (see [`KeyedWindows::state_bytes`]).
    pub fn state_bytes(&self) -> usize {
        self.windows.as_ref().map_or(0, KeyedWindows::state_bytes)
    }

    /// Number of (key, window) aggregates held.
    pub fn open_aggregates(&self) -> usize {
        self.windows.as_ref().map_or(0, KeyedWindows::open_aggregates)
    }

    /// Runs a decoded batch (with hidden columns) through the pipeline. Rows a step cannot
    /// evaluate are rejected one by one (see [`isolate`]); the rest go on.
    pub fn process(&mut self, batch: RecordBatch, now: Instant) -> Result<Processed, EngineError> {
        let mut processed = Processed::default();
        let (rows, rejected) = run_stateless(&self.plan.before_window, batch.clone())?;
        processed.rejected = rejected;
        let (Some(windows), Some(plan), Some(rows)) = (self.windows.as_mut(), self.plan.window.as_ref(), rows.clone())
        else {
            self.observe_newest(&batch, &processed.rejected, now);
            processed.output.extend(rows);
            return Ok(processed);
        };
        let watermark = self.watermark.current();
        let applied = isolate(rows, |part| {
            let applied = windows.apply(&part, watermark);
            applied.map(|a| (part, a)).map_err(|source| EngineError::Keyed { step: plan.step.clone(), source })
        });
        processed.rejected.extend(applied.rejected);
        let mut late = Vec::new();
        for (part, applied) in &applied.done {
            if !applied.late_rows.is_empty() {
                late.extend(self.late_records(part, &applied.late_rows)?);
            }
        }
        processed.late = concat(late)?;
        self.observe_newest(&batch, &processed.rejected, now);
        let closed = self.close_windows()?;
        processed.output = closed.output;
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
        if self.windows.is_none() || self.plan.external_watermark || !self.watermark.advance_if_idle(now) {
            return Ok(Closed::default());
        }
        self.close_windows()
    }

    /// Moves an externally driven watermark (see [`Plan::split_at_key`]) forward and emits
    /// what that closes.
    pub fn advance_watermark(&mut self, watermark: i64) -> Result<Closed, EngineError> {
        if !self.watermark.advance_to(watermark) {
            return Ok(Closed::default());
        }
        self.close_windows()
    }

    fn close_windows(&mut self) -> Result<Closed, EngineError> {
        let (Some(windows), Some(plan)) = (self.windows.as_mut(), self.plan.window.as_ref()) else {
            return Ok(Closed::default());
        };
        let closed = windows
            .close_until(self.watermark.current())
            .map_err(|source| EngineError::Keyed { step: plan.step.clone(), source })?;
        let Some(results) = closed else { return Ok(Closed::default()) };
        let (output, rejected) = run_stateless(&self.plan.after_window, results)?;
        Ok(Closed { output: output.into_iter().collect(), rejected })
    }

    /// Late rows, less the replayed ones (already counted before the restart).
    fn late_records(&self, batch: &RecordBatch, rows: &[u32]) -> Result<Option<RecordBatch>, EngineError> {
        let offsets = batch.column_by_name(OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>());
        let fresh: Vec<u32> = match offsets {
            Some(offsets) => rows.iter().copied().filter(|&r| offsets.value(r as usize) >= self.replay_until).collect(),
            None => rows.to_vec(),
        };
        if fresh.is_empty() {
            return Ok(None);
        }
        Ok(Some(take_record_batch(batch, &UInt32Array::from(fresh))?))
    }
}

/// Runs stateless `steps` on `batch`: the rows that pass, in one batch (`None` when every
/// row was rejected), and the rows the steps fail on, each rejected alone.
fn run_stateless(steps: &[Stateless], batch: RecordBatch) -> Result<(Option<RecordBatch>, Vec<Rejected>), EngineError> {
    let isolated = isolate(batch, |mut part| {
        for step in steps {
            part = step.apply(part)?;
        }
        Ok::<_, EngineError>(part)
    });
    Ok((concat(isolated.done)?, isolated.rejected))
}

/// The batches as one, `None` when there are none.
fn concat(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>, ArrowError> {
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.into_iter().next()),
        _ => Ok(Some(concat_batches(&batches[0].schema(), &batches)?)),
    }
}

/// The newest event time in `batch` among the rows not `rejected` (found by source offset).
pub fn newest_event_time_except(batch: &RecordBatch, rejected: &[Rejected]) -> Option<i64> {
    if rejected.is_empty() {
        return newest_event_time(batch);
    }
    let offsets_of = |b: &RecordBatch| {
        b.column_by_name(OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>()).map(|o| o.values().to_vec())
    };
    let gone: std::collections::HashSet<i64> = rejected.iter().filter_map(|r| offsets_of(&r.rows)).flatten().collect();
    let (Some(offsets), Some(times)) =
        (offsets_of(batch), batch.column_by_name(EVENT_TIME).and_then(|c| c.as_primitive_opt::<Int64Type>()))
    else {
        return newest_event_time(batch);
    };
    (0..batch.num_rows()).filter(|&i| times.is_valid(i) && !gone.contains(&offsets[i])).map(|i| times.value(i)).max()
}

/// The newest event time in a decoded batch.
pub fn newest_event_time(batch: &RecordBatch) -> Option<i64> {
    let times = batch.column_by_name(EVENT_TIME)?.as_primitive_opt::<Int64Type>()?;
    arrow::compute::max(times).filter(|_| times.len() > times.null_count())
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

//! A StreamJob's pipeline compiled into operators, once, and shared by all partitions.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use arrow::record_batch::RecordBatch;
use weir_crds::{
    PipelinePlan, StreamJobSpec,
    plan::{Stage, StageKind},
};

use super::{
    EngineError, Rejected,
    aggregate::WindowedAggregate,
    dedupe::Dedupe,
    filter::Filter,
    operator::Operator,
    pipeline::{Sink, run_operators},
    select::Select,
    watermark::Watermark,
    window::WindowKind,
};

/// One operator of a plan, with empty state.
#[derive(Debug)]
pub(super) struct Planned {
    /// Names its state in checkpoints: the step's kind, numbered from the second of a kind
    /// on (`dedupe`, `dedupe-2`), so inserting a stateless step keeps a restore working.
    pub id: String,
    pub operator: Box<dyn Operator>,
}

impl Clone for Planned {
    fn clone(&self) -> Self {
        Self { id: self.id.clone(), operator: self.operator.fresh() }
    }
}

/// A StreamJob's pipeline, compiled once and shared by all partitions.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(super) operators: Vec<Planned>,
    /// The fields of the `keyBy`, and where its aggregate is in `operators`.
    key: Option<(Vec<String>, usize)>,
    referenced_fields: BTreeSet<String>,
    pub(super) out_of_orderness: i64,
    pub(super) idle_timeout: Duration,
    /// The watermark is set from outside ([`super::PartitionPipeline::advance_watermark`])
    /// rather than from the event times of the rows: the keyed stage of a repartitioned job,
    /// whose partitions mix rows of every source partition.
    pub(super) external_watermark: bool,
}

impl Plan {
    /// Compiles the pipeline of a validated spec.
    pub fn new(spec: &StreamJobSpec) -> Result<Self, EngineError> {
        let compiled = PipelinePlan::compile(&spec.pipeline)?;
        let mut operators = Vec::new();
        let mut key = None;
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for Stage { at, kind } in &compiled.stages {
            let (name, operator): (&str, Box<dyn Operator>) = match kind {
                StageKind::Filter(predicate) => ("filter", Box::new(Filter::new(at.clone(), predicate)?)),
                StageKind::Select(items) => ("select", Box::new(Select::new(at.clone(), items)?)),
                StageKind::Dedupe(dedupe) => {
                    let within = millis(dedupe.within.get());
                    ("dedupe", Box::new(Dedupe::new(at.clone(), dedupe.key.clone(), within)))
                }
                StageKind::Aggregate { keys, window, aggregations } => {
                    key = Some((keys.clone(), operators.len()));
                    let kind = window.as_ref().map_or(WindowKind::Tumbling { size: i64::MAX / 4 }, WindowKind::from);
                    (
                        "aggregate",
                        Box::new(WindowedAggregate::new(at.clone(), kind, keys.clone(), aggregations.clone())),
                    )
                }
            };
            let seen = kinds.entry(name).or_default();
            *seen += 1;
            let id = match *seen {
                1 => name.to_owned(),
                n => format!("{name}-{n}"),
            };
            operators.push(Planned { id, operator });
        }
        let event_time = spec.source.kafka.event_time.as_ref();
        Ok(Self {
            operators,
            key,
            referenced_fields: compiled.referenced_fields(),
            out_of_orderness: event_time.map_or(0, |e| millis(e.max_out_of_orderness.get())),
            idle_timeout: event_time.map_or(Duration::from_secs(30), |e| e.idle_timeout.get()),
            external_watermark: false,
        })
    }

    /// Every field a step reads: the decoder adds the record metadata they name.
    pub fn referenced_fields(&self) -> &BTreeSet<String> {
        &self.referenced_fields
    }

    /// The fields of the `keyBy` its windowed aggregate groups by (none without one).
    pub fn key_fields(&self) -> &[String] {
        self.key.as_ref().map_or(&[], |(fields, _)| fields)
    }

    /// Splits the plan for repartitioning: the stateless steps before the first stateful one
    /// (a dedupe or the aggregate) run where records are consumed; that step and what
    /// follows run on the internal topic's partitions, with the watermark the source
    /// partitions report. The rows reach the internal topic by the `keyBy` fields, so the
    /// steps between the cut and the `keyBy` must leave those fields as they are (validation
    /// sees to it).
    pub fn split_at_key(&self) -> (Self, Self) {
        let stateful = self.operators.iter().position(|p| p.operator.is_stateful());
        let at = stateful.unwrap_or(self.operators.len());
        let front = Self { operators: self.operators[..at].to_vec(), key: None, ..self.clone() };
        let keyed = Self {
            operators: self.operators[at..].to_vec(),
            key: self.key.as_ref().map(|(fields, aggregate)| (fields.clone(), aggregate - at)),
            external_watermark: true,
            ..self.clone()
        };
        (front, keyed)
    }

    /// The front's steps (see [`Self::split_at_key`]) applied to one batch: the rows that pass
    /// (in one batch, `None` when none did) and the rows the steps fail on, rejected alone.
    pub fn apply_front(&self, batch: RecordBatch) -> Result<(Option<RecordBatch>, Vec<Rejected>), EngineError> {
        // Stateless operators: a fresh copy costs a clone of their compiled expressions.
        let mut operators: Vec<Box<dyn Operator>> = self.operators.iter().map(|p| p.operator.fresh()).collect();
        let marks = vec![i64::MIN; operators.len()];
        let mut sink = Sink::default();
        let rows = run_operators(&mut operators, &marks, batch, &mut sink)?;
        Ok((rows, sink.rejected))
    }

    /// A fresh event-time tracker for one source partition of this plan.
    pub fn watermark(&self, now: std::time::Instant) -> Watermark {
        Watermark::new(self, None, now)
    }

    /// Whether the pipeline keeps state (a windowed aggregate or a dedupe).
    pub fn is_stateful(&self) -> bool {
        self.operators.iter().any(|p| p.operator.is_stateful())
    }
}

/// Whole milliseconds of `duration`, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

//! The dataflow engine: a StreamJob's pipeline applied to Arrow record batches, one
//! partition at a time. No Kafka here: connectors hand batches in and take results out.
//!
//! Every batch entering the engine carries two hidden columns the source adds: the record's
//! event time ([`EVENT_TIME`], epoch ms) and its source offset ([`OFFSET`]). Selects keep
//! them; the sink drops them.

pub mod accumulate;
mod aggregate;
mod dedupe;
pub mod expr;
mod filter;
pub mod isolate;
mod keys;
pub mod operator;
mod pipeline;
mod plan;
mod select;
mod watermark;
pub mod window;
pub mod windows;

use arrow::{
    array::{Array, AsArray},
    datatypes::Int64Type,
    error::ArrowError,
    record_batch::RecordBatch,
};

use self::{expr::ExprError, operator::StateError};
pub use self::{
    isolate::Rejected,
    pipeline::{Closed, OperatorStates, PartitionPipeline, Processed, Resume},
    plan::Plan,
    watermark::Watermark,
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
    /// A stateful step (aggregate, dedupe) could not take in a batch or its state.
    #[error("{step}: {source}")]
    State {
        /// Where in the pipeline.
        step: String,
        /// The cause.
        source: StateError,
    },
    /// A step's SQL does not parse (a spec that passed validation always does).
    #[error(transparent)]
    Compile(#[from] weir_crds::plan::CompileError),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
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

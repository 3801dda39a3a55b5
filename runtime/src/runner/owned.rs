//! A partition this instance owns: its pipeline and how far it got.

use std::collections::BTreeMap;

use arrow::{
    array::{AsArray, BooleanArray},
    compute::filter_record_batch,
    datatypes::Int64Type,
    record_batch::RecordBatch,
};

use crate::{
    engine::{PartitionPipeline, UPSTREAM_OFFSET},
    progress::Progress,
    repartition::Marks,
};

/// The pipeline state of an owned partition.
#[derive(Debug)]
pub(super) struct OwnedPartition {
    pub pipeline: PartitionPipeline,
    /// The next offset to process.
    pub position: i64,
    /// The offset last committed.
    pub committed: Option<i64>,
    /// Keyed stage of a repartitioned job: the newest source offset applied per source
    /// partition, to drop rows a restarted front sends again.
    pub upstream: BTreeMap<i32, i64>,
    /// Keyed stage: the source partitions' watermarks as the front reported them.
    pub marks: Marks,
}

impl OwnedPartition {
    pub fn new(pipeline: PartitionPipeline, position: i64, committed: Option<i64>) -> Self {
        Self { pipeline, position, committed, upstream: BTreeMap::new(), marks: Marks::new() }
    }

    /// Without checkpoints: the offset to commit (the oldest one open windows still need) and
    /// the progress to keep.
    pub fn commit_point(&self) -> Progress {
        Progress {
            v: 1,
            max_event_time: self.pipeline.watermark().max_event_time(),
            position: self.position,
            committed: self.pipeline.oldest_needed_offset().map_or(self.position, |o| o.min(self.position)),
        }
    }

    /// The rows of `batch` from `upstream` not applied before, noting them as applied.
    pub fn unseen(&mut self, upstream: i32, batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
        let Some(offsets) = batch.column_by_name(UPSTREAM_OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>())
        else {
            return Ok(batch);
        };
        let seen = self.upstream.get(&upstream).copied().unwrap_or(i64::MIN);
        let newest = offsets.values().iter().copied().max().unwrap_or(seen);
        if newest <= seen {
            return Ok(batch.slice(0, 0));
        }
        self.upstream.insert(upstream, newest);
        if offsets.values().first().is_some_and(|&first| first > seen) {
            return Ok(batch);
        }
        let keep: BooleanArray = offsets.values().iter().map(|&o| Some(o > seen)).collect();
        filter_record_batch(&batch, &keep)
    }
}

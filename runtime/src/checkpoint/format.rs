//! The snapshot file: an Arrow IPC file whose schema metadata carries a versioned header
//! (which partition, which offset the state reflects, which checkpoint) and whose one batch
//! holds the state of each stateful operator: a row per operator, its id and its state as
//! an Arrow IPC stream (operators' states have schemas of their own).
//!
//! Version 1 files held the window state itself as the one batch; they are read as the
//! state of the `aggregate` operator.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    sync::Arc,
};

use arrow::{
    array::{Array, ArrayRef, AsArray, BinaryArray, StringArray},
    datatypes::{DataType, Field, Schema},
    error::ArrowError,
    ipc::{
        reader::{FileReader, StreamDecoder},
        writer::{FileWriter, StreamWriter},
    },
    record_batch::RecordBatch,
};
use serde::{Deserialize, Serialize};

use crate::engine::OperatorStates;

/// Format version written in every header; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 2;
/// The version whose one batch was the window state.
const WINDOWS_ONLY: u32 = 1;
/// The operator id version 1 state belongs to.
const WINDOWS_OPERATOR: &str = "aggregate";
/// Columns of the state batch.
const OPERATOR: &str = "operator";
const STATE: &str = "state";
/// Schema metadata key of the header.
const HEADER_KEY: &str = "weir.snapshot";

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// The checkpoint (or savepoint) that wrote it; checkpoint ids grow over time.
    pub checkpoint: u64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Next offset to process: the state reflects every record before it.
    pub position: i64,
    /// Newest event time seen, epoch ms.
    pub max_event_time: Option<i64>,
    /// Offsets the checkpoint committed for every partition its pod owned. Exactly-once
    /// restore picks the snapshot whose offsets are the committed ones.
    pub offsets: BTreeMap<i32, i64>,
    /// When it was written, RFC 3339.
    pub created_at: String,
    /// Keyed stage of a repartitioned job: the newest source offset applied per source
    /// partition (rows a restarted front sends again are dropped).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<i32, i64>,
    /// Keyed stage: the source partitions' watermarks as last reported, so a restored
    /// partition need not wait for every source partition to report again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub marks: crate::repartition::Marks,
}

/// One partition's state at a checkpoint.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    /// What it is of.
    pub header: SnapshotHeader,
    /// The state of each stateful operator that held some, by operator id.
    pub state: OperatorStates,
}

/// A snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Arrow IPC failed.
    #[error("arrow ipc: {0}")]
    Arrow(#[from] ArrowError),
    /// The header is missing or unreadable.
    #[error("snapshot header: {0}")]
    Header(String),
    /// Written by a newer runtime.
    #[error("snapshot format version {0} is newer than this runtime's {FORMAT_VERSION}")]
    Version(u32),
    /// The state batch is not what this version holds.
    #[error("snapshot state: {0}")]
    State(String),
}

impl PartitionSnapshot {
    /// The snapshot as an Arrow IPC file.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let header = serde_json::to_string(&self.header).map_err(|e| FormatError::Header(e.to_string()))?;
        let metadata = HashMap::from([(HEADER_KEY.to_owned(), header)]);
        let schema = Arc::new(state_schema().with_metadata(metadata));
        let mut ids = Vec::with_capacity(self.state.len());
        let mut states = Vec::with_capacity(self.state.len());
        for (id, batch) in &self.state {
            let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
            writer.write(batch)?;
            writer.finish()?;
            ids.push(id.as_str());
            states.push(writer.into_inner()?);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(BinaryArray::from_iter_values(states.iter().map(Vec::as_slice))),
        ];
        let mut writer = FileWriter::try_new(Vec::new(), &schema)?;
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        writer.finish()?;
        Ok(writer.into_inner()?)
    }

    /// Reads a snapshot written by [`Self::encode`], or by a runtime of format version 1.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let reader = FileReader::try_new(Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let text = schema.metadata().get(HEADER_KEY).ok_or_else(|| FormatError::Header("missing".into()))?;
        let header: SnapshotHeader = serde_json::from_str(text).map_err(|e| FormatError::Header(e.to_string()))?;
        if header.version > FORMAT_VERSION {
            return Err(FormatError::Version(header.version));
        }
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        let state = match header.version {
            WINDOWS_ONLY => match concat(&batches)? {
                Some(windows) => OperatorStates::from([(WINDOWS_OPERATOR.to_owned(), windows)]),
                None => OperatorStates::new(),
            },
            _ => operator_states(&batches)?,
        };
        Ok(Self { header, state })
    }
}

fn state_schema() -> Schema {
    Schema::new(vec![Field::new(OPERATOR, DataType::Utf8, false), Field::new(STATE, DataType::Binary, false)])
}

/// The operator states of version 2 batches.
fn operator_states(batches: &[RecordBatch]) -> Result<OperatorStates, FormatError> {
    let mut states = OperatorStates::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| FormatError::State(format!("no {name}")));
        let ids = column(OPERATOR)?.as_string_opt::<i32>().ok_or_else(|| FormatError::State("ids".into()))?;
        let blobs = column(STATE)?.as_binary_opt::<i32>().ok_or_else(|| FormatError::State("states".into()))?;
        let offsets = blobs.value_offsets();
        for (row, id) in ids.iter().enumerate() {
            let Some(id) = id.filter(|_| blobs.is_valid(row)) else {
                return Err(FormatError::State("a null entry".into()));
            };
            // Decoded in place from the file's buffer: the state is not copied again.
            let at = |i: usize| usize::try_from(offsets[i]).map_err(|e| FormatError::State(e.to_string()));
            let (start, end) = (at(row)?, at(row + 1)?);
            let mut blob = blobs.values().slice_with_length(start, end.saturating_sub(start));
            let mut decoder = StreamDecoder::new();
            let mut parts = Vec::new();
            while !blob.is_empty() {
                parts.extend(decoder.decode(&mut blob)?);
            }
            decoder.finish()?;
            if let Some(state) = concat(&parts)? {
                states.insert(id.to_owned(), state);
            }
        }
    }
    Ok(states)
}

fn concat(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, ArrowError> {
    match batches {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        [first, ..] => Ok(Some(arrow::compute::concat_batches(&first.schema(), batches)?)),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            version: FORMAT_VERSION,
            checkpoint: 17,
            topic: "payments".into(),
            partition: 2,
            position: 1234,
            max_event_time: Some(99),
            offsets: BTreeMap::from([(2, 1234), (3, 77)]),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            upstream: BTreeMap::from([(0, 41)]),
            marks: BTreeMap::from([(0, crate::repartition::Mark::At(7)), (1, crate::repartition::Mark::IDLE)]),
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_the_state_of_each_operator() {
        let windows = batch(vec![
            ("user", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("__weir_agg0", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef),
        ]);
        let seen = batch(vec![("payment_id", Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef)]);
        let state =
            OperatorStates::from([("aggregate".to_owned(), windows.clone()), ("dedupe".to_owned(), seen.clone())]);
        let snapshot = PartitionSnapshot { header: header(), state };
        let decoded = PartitionSnapshot::decode(&snapshot.encode().unwrap()).unwrap();
        assert_eq!(decoded.header, header());
        assert_eq!(decoded.state["aggregate"], windows);
        assert_eq!(decoded.state["dedupe"], seen);
        assert_eq!(decoded.state.len(), 2);
    }

    #[test]
    fn a_snapshot_without_state_round_trips() {
        let snapshot = PartitionSnapshot { header: header(), state: OperatorStates::new() };
        let decoded = PartitionSnapshot::decode(&snapshot.encode().unwrap()).unwrap();
        assert_eq!(decoded.header, header());
        assert!(decoded.state.is_empty());
    }

    #[test]
    fn newer_formats_and_foreign_files_are_refused() {
        let mut newer = PartitionSnapshot { header: header(), state: OperatorStates::new() };
        newer.header.version = FORMAT_VERSION + 1;
        assert!(matches!(PartitionSnapshot::decode(&newer.encode().unwrap()), Err(FormatError::Version(_))));
        assert!(PartitionSnapshot::decode(b"not arrow").is_err());
    }
}

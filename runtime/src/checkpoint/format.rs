//! The snapshot file: an Arrow IPC file whose schema metadata carries a versioned header
//! (which partition, which offset the state reflects, which checkpoint) and whose one batch,
//! when windows are open, holds the window state as the engine exports it.

use std::{collections::BTreeMap, io::Cursor, sync::Arc};

use arrow::{
    datatypes::Schema,
    error::ArrowError,
    ipc::{reader::FileReader, writer::FileWriter},
    record_batch::RecordBatch,
};
use serde::{Deserialize, Serialize};

/// Format version written in every header; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;
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
    /// The open windows, when any are open.
    pub windows: Option<RecordBatch>,
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
}

impl PartitionSnapshot {
    /// The snapshot as an Arrow IPC file.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let header = serde_json::to_string(&self.header).map_err(|e| FormatError::Header(e.to_string()))?;
        let metadata = std::collections::HashMap::from([(HEADER_KEY.to_owned(), header)]);
        let schema = match &self.windows {
            Some(batch) => batch.schema().as_ref().clone().with_metadata(metadata),
            None => Schema::empty().with_metadata(metadata),
        };
        let mut writer = FileWriter::try_new(Vec::new(), &schema)?;
        if let Some(batch) = &self.windows {
            writer.write(&batch.clone().with_schema(Arc::new(schema.clone()))?)?;
        }
        writer.finish()?;
        Ok(writer.into_inner()?)
    }

    /// Reads a snapshot written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let reader = FileReader::try_new(Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let text = schema.metadata().get(HEADER_KEY).ok_or_else(|| FormatError::Header("missing".into()))?;
        let header: SnapshotHeader = serde_json::from_str(text).map_err(|e| FormatError::Header(e.to_string()))?;
        if header.version > FORMAT_VERSION {
            return Err(FormatError::Version(header.version));
        }
        let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
        let windows = match batches.len() {
            0 => None,
            1 => batches.pop(),
            _ => Some(arrow::compute::concat_batches(&batches[0].schema(), &batches)?),
        };
        Ok(Self { header, windows })
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

    #[test]
    fn a_snapshot_with_windows_round_trips() {
        let windows = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("__weir_agg0", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef),
        ])
        .unwrap();
        let snapshot = PartitionSnapshot { header: header(), windows: Some(windows.clone()) };
        let decoded = PartitionSnapshot::decode(&snapshot.encode().unwrap()).unwrap();
        assert_eq!(decoded.header, header());
        assert_eq!(decoded.windows.unwrap().columns(), windows.columns());
    }

    #[test]
    fn a_snapshot_without_windows_round_trips() {
        let snapshot = PartitionSnapshot { header: header(), windows: None };
        let decoded = PartitionSnapshot::decode(&snapshot.encode().unwrap()).unwrap();
        assert_eq!(decoded.header, header());
        assert!(decoded.windows.is_none());
    }

    #[test]
    fn newer_formats_and_foreign_files_are_refused() {
        let mut newer = PartitionSnapshot { header: header(), windows: None };
        newer.header.version = FORMAT_VERSION + 1;
        assert!(matches!(PartitionSnapshot::decode(&newer.encode().unwrap()), Err(FormatError::Version(_))));
        assert!(PartitionSnapshot::decode(b"not arrow").is_err());
    }
}

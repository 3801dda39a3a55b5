//! What travels on a repartitioned job's internal topic, and which partition it goes to.
//!
//! Rows are sent as Arrow IPC streams, one Kafka record per (source batch, internal
//! partition), with the source partition they came from in a header. Watermark records
//! tell every internal partition how far each source partition's event time has come.

use std::{collections::BTreeMap, io::Cursor, sync::Arc};

use arrow::{
    array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array},
    compute::{cast, take_record_batch},
    datatypes::{DataType, Field, Schema},
    error::ArrowError,
    ipc::{reader::StreamReader, writer::StreamWriter},
    record_batch::RecordBatch,
};
use serde::{Deserialize, Serialize};

use crate::engine::{OFFSET, UPSTREAM_OFFSET};

/// Header naming what an internal record holds: [`ROWS`] or [`WATERMARKS`].
pub const KIND_HEADER: &str = "weir.internal";
/// Header of a rows record: the source partition its rows came from.
pub const UPSTREAM_HEADER: &str = "weir.upstream.partition";
/// Kind of a record of rows.
pub const ROWS: &str = "rows";
/// Kind of a record of source-partition watermarks.
pub const WATERMARKS: &str = "watermarks";

/// Rows of one record stay well under the broker's default 1 MB record limit.
const MAX_RECORD_BYTES: usize = 512 * 1024;

/// How far one source partition's event time has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mark {
    /// Its watermark, epoch ms.
    At(i64),
    /// No records for the idle timeout and none before: it holds nothing back.
    Idle(IdleTag),
}

/// The text `idle`, so a mark reads `{"3": "idle"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleTag {
    /// Idle.
    Idle,
}

impl Mark {
    /// The mark of an idle source partition.
    pub const IDLE: Self = Self::Idle(IdleTag::Idle);
}

/// Source partition → its mark, as one watermark record carries them.
pub type Marks = BTreeMap<i32, Mark>;

/// A record of the internal topic that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The rows did not decode.
    #[error("rows: {0}")]
    Rows(#[from] ArrowError),
    /// The watermarks did not decode.
    #[error("watermarks: {0}")]
    Marks(#[from] serde_json::Error),
    /// Neither rows nor watermarks.
    #[error("not a record of the internal topic (header {KIND_HEADER} is {0:?})")]
    Kind(Option<String>),
}

/// Kafka's murmur2 (as its default partitioner), so the spread is stable across versions:
/// a key's state lives in the partition this picks.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let seed: u32 = 0x9747_b28c;
    let mut h = seed ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(&first) = rest.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The internal partition of each row: murmur2 of its key fields' text (joined by the
/// unit separator; null as nothing), as Kafka's partitioner would place that key.
pub fn partitions_of(batch: &RecordBatch, keys: &[String], partitions: u32) -> Result<Vec<u32>, ArrowError> {
    let columns = keys
        .iter()
        .map(|k| {
            let column = batch
                .column_by_name(k)
                .ok_or_else(|| ArrowError::SchemaError(format!("keyBy field {k} is not in the records")))?;
            cast(column, &DataType::Utf8)
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    let mut key = Vec::with_capacity(64);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        key.clear();
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                key.push(0x1f);
            }
            let text = column.as_string::<i32>();
            if text.is_valid(row) {
                key.extend_from_slice(text.value(row).as_bytes());
            }
        }
        out.push((murmur2(&key) & 0x7fff_ffff) % partitions.max(1));
    }
    Ok(out)
}

/// The rows of `batch` grouped by their internal partition, in row order within each.
pub fn split(batch: &RecordBatch, partitions: &[u32]) -> Result<Vec<(u32, RecordBatch)>, ArrowError> {
    let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (row, &partition) in partitions.iter().enumerate() {
        rows.entry(partition).or_default().push(row as u32);
    }
    rows.into_iter()
        .map(|(partition, rows)| Ok((partition, take_record_batch(batch, &UInt32Array::from(rows))?)))
        .collect()
}

/// Renames the source offset column so the keyed stage can put its own offsets in
/// [`OFFSET`] and still tell replayed source records apart.
pub fn with_upstream_offsets(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| if f.name() == OFFSET { f.as_ref().clone().with_name(UPSTREAM_OFFSET) } else { f.as_ref().clone() })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
}

/// Rows as the payloads of one or more records (split when large).
pub fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ArrowError> {
    let mut out = Vec::new();
    let mut pending = vec![batch.clone()];
    while let Some(batch) = pending.pop() {
        let bytes = ipc_stream(&batch)?;
        if bytes.len() > MAX_RECORD_BYTES && batch.num_rows() > 1 {
            let half = batch.num_rows() / 2;
            // Later half first: the stack pops the first half next, keeping row order.
            pending.push(batch.slice(half, batch.num_rows() - half));
            pending.push(batch.slice(0, half));
        } else {
            out.push(bytes);
        }
    }
    Ok(out)
}

fn ipc_stream(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    writer.into_inner()
}

/// Rows of a record written by [`encode_rows`], with [`OFFSET`] set to the record's own
/// offset in the internal topic.
pub fn decode_rows(payload: &[u8], offset: i64) -> Result<RecordBatch, WireError> {
    let reader = StreamReader::try_new(Cursor::new(payload), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    fields.push(Field::new(OFFSET, DataType::Int64, false));
    columns.push(Arc::new(Int64Array::from(vec![offset; batch.num_rows()])));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// The payload of a watermark record.
pub fn encode_marks(marks: &Marks) -> Result<Vec<u8>, WireError> {
    Ok(serde_json::to_vec(marks)?)
}

/// Marks of a record written by [`encode_marks`].
pub fn decode_marks(payload: &[u8]) -> Result<Marks, WireError> {
    Ok(serde_json::from_slice(payload)?)
}

/// The watermark of a keyed-stage partition: the lowest over every source partition not
/// idle; `None` while a source partition has not reported yet, or all are idle.
pub fn combined(marks: &Marks, source_partitions: usize) -> Option<i64> {
    let mut lowest: Option<i64> = None;
    for partition in 0..source_partitions {
        match marks.get(&i32::try_from(partition).ok()?)? {
            Mark::At(watermark) => lowest = Some(lowest.map_or(*watermark, |l| l.min(*watermark))),
            Mark::Idle(_) => {}
        }
    }
    lowest
}

/// Keeps the newer of two marks: a watermark never goes back, and a source partition that
/// reported a watermark is not idle again until it reports so (an idle one that becomes
/// active reports a watermark).
pub fn merge(into: &mut Marks, update: &Marks) {
    for (&partition, &mark) in update {
        let entry = into.entry(partition).or_insert(mark);
        *entry = match (*entry, mark) {
            (Mark::At(old), Mark::At(new)) => Mark::At(old.max(new)),
            (_, new) => new,
        };
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;

    use super::*;

    #[test]
    fn murmur2_matches_kafkas_partitioner() {
        // Values from Kafka's own UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] =
            [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536)];
        for (data, want) in cases {
            assert_eq!(murmur2(data) as i32, want, "{}", String::from_utf8_lossy(data));
        }
    }

    fn rows() -> RecordBatch {
        RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("a"), None])) as ArrayRef),
            (OFFSET, Arc::new(Int64Array::from(vec![10, 11, 12, 13])) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn a_key_always_goes_to_the_same_partition_and_rows_keep_their_order() {
        let batch = rows();
        let parts = partitions_of(&batch, &["user".into()], 8).unwrap();
        assert_eq!(parts[0], parts[2], "the same key, the same partition");
        assert!(parts.iter().all(|&p| p < 8));
        let groups = split(&batch, &parts).unwrap();
        assert_eq!(groups.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 4);
        let of_a = groups.iter().find(|(p, _)| *p == parts[0]).unwrap();
        let offsets = of_a.1.column_by_name(OFFSET).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert!(offsets.values().windows(2).all(|w| w[0] < w[1]), "row order is kept");
        assert!(partitions_of(&batch, &["missing".into()], 8).is_err());
    }

    #[test]
    fn rows_round_trip_with_the_internal_offset() {
        let batch = with_upstream_offsets(rows()).unwrap();
        let payloads = encode_rows(&batch).unwrap();
        assert_eq!(payloads.len(), 1);
        let decoded = decode_rows(&payloads[0], 77).unwrap();
        let upstream = decoded.column_by_name(UPSTREAM_OFFSET).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(upstream.values().to_vec(), vec![10, 11, 12, 13]);
        let own = decoded.column_by_name(OFFSET).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert!(own.values().iter().all(|&o| o == 77));
        assert!(decode_rows(b"garbage", 0).is_err());
    }

    #[test]
    fn large_rows_are_split_over_records_in_order() {
        let text: Vec<String> = (0..4000).map(|i| format!("{i:0>300}")).collect();
        let offsets: Vec<i64> = (0..4000).collect();
        let batch = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(text)) as ArrayRef),
            (UPSTREAM_OFFSET, Arc::new(Int64Array::from(offsets)) as ArrayRef),
        ])
        .unwrap();
        let payloads = encode_rows(&batch).unwrap();
        assert!(payloads.len() > 1, "1.2 MB of rows takes several records");
        assert!(payloads.iter().all(|p| p.len() <= MAX_RECORD_BYTES));
        let mut next = 0;
        for payload in payloads {
            let rows = decode_rows(&payload, 0).unwrap();
            for &o in
                rows.column_by_name(UPSTREAM_OFFSET).unwrap().as_primitive::<arrow::datatypes::Int64Type>().values()
            {
                assert_eq!(o, next);
                next += 1;
            }
        }
        assert_eq!(next, 4000);
    }

    #[test]
    fn the_combined_watermark_waits_for_every_source_partition_and_skips_idle_ones() {
        let mut marks = Marks::new();
        merge(&mut marks, &Marks::from([(0, Mark::At(100))]));
        assert_eq!(combined(&marks, 2), None, "partition 1 has not reported");
        merge(&mut marks, &Marks::from([(1, Mark::At(50))]));
        assert_eq!(combined(&marks, 2), Some(50));
        merge(&mut marks, &Marks::from([(1, Mark::At(20))]));
        assert_eq!(combined(&marks, 2), Some(50), "a watermark never goes back");
        merge(&mut marks, &Marks::from([(1, Mark::IDLE)]));
        assert_eq!(combined(&marks, 2), Some(100), "an idle partition holds nothing back");
        merge(&mut marks, &Marks::from([(0, Mark::IDLE)]));
        assert_eq!(combined(&marks, 2), None, "all idle: nothing to go by");
        let text = encode_marks(&Marks::from([(0, Mark::At(5)), (1, Mark::IDLE)])).unwrap();
        assert_eq!(String::from_utf8(text.clone()).unwrap(), r#"{"0":5,"1":"idle"}"#);
        assert_eq!(decode_marks(&text).unwrap()[&1], Mark::IDLE);
    }
}

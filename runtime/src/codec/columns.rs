//! What every decoder adds to the fields it decoded: the Kafka metadata fields the pipeline
//! names (`_key`, `_topic`, …), the headers carried to the sink, event time and offset; and
//! the conversion of decoded columns to a declared schema.

use std::{collections::BTreeSet, sync::Arc};

use arrow::{
    array::{
        Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, MapBuilder, RecordBatch, StringArray,
        StringBuilder, TimestampMillisecondArray, new_null_array,
    },
    compute::{CastOptions, cast_with_options, concat_batches, kernels::cast::cast},
    datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
};
use rdkafka::message::Headers;
use weir_crds::{FieldDecl, FieldType, KafkaSource, validation::METADATA_FIELDS};

use super::{Decoded, HeaderCarry, RawRecord, TRACEPARENT};
use crate::engine::{EVENT_TIME, HEADERS, OFFSET};

/// Where event time comes from.
#[derive(Debug, Clone)]
enum EventTimeSource {
    KafkaTimestamp,
    Field(String),
}

/// The columns added to every decoded batch, whatever the payload format.
#[derive(Debug, Clone)]
pub(super) struct Extras {
    topic: String,
    event_time: EventTimeSource,
    /// How far ahead of the wall clock an event time may be, ms, and as the job wrote it.
    max_ahead: (i64, String),
    metadata: BTreeSet<&'static str>,
    carry: HeaderCarry,
}

impl Extras {
    /// The extras of `source`, with the metadata fields named in `referenced`.
    pub(super) fn new(source: &KafkaSource, referenced: &BTreeSet<String>) -> Self {
        let event_time = match source.event_time.as_ref().and_then(|e| e.field.clone()) {
            Some(field) => EventTimeSource::Field(field),
            None => EventTimeSource::KafkaTimestamp,
        };
        let metadata = METADATA_FIELDS.iter().copied().filter(|f| referenced.contains(*f)).collect();
        let max_ahead = source.event_time.clone().unwrap_or_default().max_ahead;
        Self {
            topic: source.topic.clone(),
            event_time,
            max_ahead: (i64::try_from(max_ahead.get().as_millis()).unwrap_or(i64::MAX), max_ahead.to_string()),
            metadata,
            carry: HeaderCarry::Nothing,
        }
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub(super) fn carrying(mut self, carry: HeaderCarry) -> Self {
        self.carry = carry;
        self
    }

    /// Completes a decode: `decoded` holds the rows of `records[good]`, in that order.
    pub(super) fn finish(
        &self,
        decoded: Result<Option<RecordBatch>, ArrowError>,
        records: &[RawRecord<'_>],
        good: &[usize],
        mut errors: Vec<(usize, String)>,
    ) -> Decoded {
        let batch = match decoded {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                errors.sort_by_key(|(i, _)| *i);
                return Decoded { batch: None, errors };
            }
            Err(e) => {
                // A whole-batch failure after per-record checks: report every record.
                errors.extend(good.iter().map(|&i| (i, e.to_string())));
                errors.sort_by_key(|(i, _)| *i);
                return Decoded { batch: None, errors };
            }
        };
        match self.append(batch, records, good, wall_clock_ms()) {
            Ok((batch, bad_times)) => {
                errors.extend(bad_times.into_iter().map(|(row, reason)| (good[row], reason)));
                errors.sort_by_key(|(i, _)| *i);
                Decoded { batch: Some(batch), errors }
            }
            Err(e) => {
                errors.extend(good.iter().map(|&i| (i, e.to_string())));
                errors.sort_by_key(|(i, _)| *i);
                Decoded { batch: None, errors }
            }
        }
    }

    /// Appends event time, offset and metadata columns. Returns the rows whose event time
    /// is missing or more than `max_ahead` past `now` (epoch ms), with why; they are removed.
    fn append(
        &self,
        batch: RecordBatch,
        records: &[RawRecord<'_>],
        good: &[usize],
        now: i64,
    ) -> Result<(RecordBatch, Vec<(usize, String)>), ArrowError> {
        let picked = || good.iter().map(|&i| &records[i]);
        let event_time: Int64Array = match &self.event_time {
            EventTimeSource::KafkaTimestamp => picked().map(|r| r.timestamp).collect(),
            EventTimeSource::Field(name) => match batch.column_by_name(name) {
                Some(column) => event_time_millis(column)?,
                None => Int64Array::new_null(batch.num_rows()),
            },
        };
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut add = |name: &str, column: ArrayRef| {
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column);
        };
        for name in &self.metadata {
            let column: ArrayRef = match *name {
                "_key" => Arc::new(picked().map(|r| r.key.map(String::from_utf8_lossy)).collect::<StringArray>()),
                "_topic" => Arc::new(StringArray::from(vec![self.topic.as_str(); good.len()])),
                "_partition" => Arc::new(picked().map(|r| r.partition).collect::<Int32Array>()),
                "_offset" => Arc::new(picked().map(|r| r.offset).collect::<Int64Array>()),
                "_headers" => headers_column(picked(), |_| true)?,
                _ => Arc::new(
                    picked().map(|r| r.timestamp).collect::<TimestampMillisecondArray>().with_timezone("+00:00"),
                ),
            };
            add(name, column);
        }
        match self.carry {
            HeaderCarry::Nothing => {}
            HeaderCarry::TraceParent => add(HEADERS, headers_column(picked(), |key| key == TRACEPARENT)?),
            HeaderCarry::All => add(HEADERS, headers_column(picked(), |_| true)?),
        }
        let limit = now.saturating_add(self.max_ahead.0);
        let unusable: Vec<(usize, String)> = (0..event_time.len())
            .filter_map(|i| {
                if event_time.is_null(i) {
                    return Some((i, "missing or invalid event time".to_owned()));
                }
                let ts = event_time.value(i);
                if ts < MIN_EVENT_TIME {
                    return Some((i, format!("event time {ts} ms is before the year 1")));
                }
                (ts > limit).then(|| (i, too_far_ahead(ts, &self.max_ahead.1)))
            })
            .collect();
        let usable: BooleanArray = (0..event_time.len())
            .map(|i| Some(event_time.is_valid(i) && (MIN_EVENT_TIME..=limit).contains(&event_time.value(i))))
            .collect();
        add(EVENT_TIME, Arc::new(event_time));
        add(OFFSET, Arc::new(picked().map(|r| r.offset).collect::<Int64Array>()));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        if unusable.is_empty() {
            return Ok((batch, unusable));
        }
        Ok((arrow::compute::filter_record_batch(&batch, &usable)?, unusable))
    }
}

/// The earliest event time taken, 0001-01-01T00:00:00Z: window arithmetic on times near
/// `i64::MIN` would overflow.
const MIN_EVENT_TIME: i64 = -62_135_596_800_000;

/// Epoch milliseconds now.
fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Why an event time `ts` (epoch ms) more than `max_ahead` ahead of the clock is refused.
fn too_far_ahead(ts: i64, max_ahead: &str) -> String {
    let at = chrono::DateTime::from_timestamp_millis(ts).map_or_else(|| format!("{ts} ms"), |t| t.to_rfc3339());
    format!("event time {at} is more than {max_ahead} ahead of the clock (source.kafka.eventTime.maxAhead)")
}

/// The headers of each record, those `keep` accepts, as a map from name to value (text).
fn headers_column<'r, 'a: 'r>(
    records: impl Iterator<Item = &'r RawRecord<'a>>,
    keep: impl Fn(&str) -> bool,
) -> Result<ArrayRef, ArrowError> {
    let mut builder = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for record in records {
        for header in record.headers.into_iter().flat_map(|h| h.iter()) {
            if keep(header.key) {
                builder.keys().append_value(header.key);
                builder.values().append_option(header.value.map(String::from_utf8_lossy));
            }
        }
        builder.append(true)?;
    }
    Ok(Arc::new(builder.finish()))
}

/// Event times as epoch ms: integers are taken as ms, text as RFC 3339.
pub(super) fn event_time_millis(column: &ArrayRef) -> Result<Int64Array, ArrowError> {
    let as_ms = match column.data_type() {
        t if t.is_integer() => cast(column, &DataType::Int64)?,
        DataType::Timestamp(..) => {
            cast(&cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?, &DataType::Int64)?
        }
        t if t.is_floating() => cast(column, &DataType::Int64)?,
        _ => {
            let text = cast(column, &DataType::Utf8)?;
            let ts = cast(&text, &DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())))?;
            cast(&ts, &DataType::Int64)?
        }
    };
    Ok(as_ms.as_primitive::<Int64Type>().clone())
}

fn arrow_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::String => DataType::Utf8,
        FieldType::Long => DataType::Int64,
        FieldType::Double => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
    }
}

/// The Arrow schema of a declared record schema.
pub fn declared_schema(fields: &[FieldDecl]) -> Option<SchemaRef> {
    if fields.is_empty() {
        return None;
    }
    let fields: Vec<Field> = fields.iter().map(|f| Field::new(&f.name, arrow_type(f.field_type), f.nullable)).collect();
    Some(Arc::new(Schema::new(fields)))
}

/// The declared fields of `batch`, cast to their declared types: a self-describing format
/// (Avro, Protobuf) is read through the declared schema as JSON is. A declared field the
/// records lack is null, or an error when it is not nullable.
fn conform(batch: &RecordBatch, declared: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let strict = CastOptions { safe: false, ..CastOptions::default() };
    let columns = declared
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => cast_with_options(column, field.data_type(), &strict)
                .map_err(|e| ArrowError::CastError(format!("field {}: {e}", field.name()))),
            None if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            None => Err(ArrowError::InvalidArgumentError(format!("missing required field {}", field.name()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(declared.clone(), columns)
}

/// [`conform`] for the rows of `records[good]`; when the batch fails as a whole, row by
/// row, and the rows that do not fit become errors (and leave `good`).
pub(super) fn conform_rows(
    batch: RecordBatch,
    declared: Option<&SchemaRef>,
    good: &mut Vec<usize>,
    errors: &mut Vec<(usize, String)>,
) -> Result<RecordBatch, ArrowError> {
    let Some(declared) = declared else { return Ok(batch) };
    if let Ok(conformed) = conform(&batch, declared) {
        return Ok(conformed);
    }
    let mut kept = Vec::with_capacity(batch.num_rows());
    let mut still_good = Vec::with_capacity(good.len());
    for (row, &index) in good.iter().enumerate() {
        match conform(&batch.slice(row, 1), declared) {
            Ok(one) => {
                kept.push(one);
                still_good.push(index);
            }
            Err(e) => errors.push((index, e.to_string())),
        }
    }
    *good = still_good;
    concat_batches(declared, &kept)
}

#[cfg(test)]
mod tests {
    use arrow::array::Float64Array;

    use super::*;

    fn declared(json: &str) -> SchemaRef {
        let fields: Vec<FieldDecl> = serde_json::from_str(json).unwrap();
        declared_schema(&fields).unwrap()
    }

    #[test]
    fn declared_fields_are_selected_cast_and_filled_with_nulls() {
        let batch = RecordBatch::try_from_iter([
            ("amount", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("extra", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ])
        .unwrap();
        let schema = declared(r#"[{"name":"amount","type":"double"},{"name":"note","type":"string","nullable":true}]"#);
        let (mut good, mut errors) = (vec![0, 1], Vec::new());
        let out = conform_rows(batch, Some(&schema), &mut good, &mut errors).unwrap();
        assert_eq!(out.schema(), schema);
        assert_eq!(out.column(0).as_any().downcast_ref::<Float64Array>().unwrap().values(), &[1.0, 2.0]);
        assert_eq!(out.column(1).null_count(), 2);
        assert!(errors.is_empty());
    }

    #[test]
    fn rows_that_do_not_cast_become_errors_and_the_rest_stay() {
        let batch = RecordBatch::try_from_iter([(
            "amount",
            Arc::new(StringArray::from(vec![Some("1.5"), Some("lots"), Some("3")])) as ArrayRef,
        )])
        .unwrap();
        let schema = declared(r#"[{"name":"amount","type":"double"}]"#);
        let (mut good, mut errors) = (vec![4, 5, 6], Vec::new());
        let out = conform_rows(batch, Some(&schema), &mut good, &mut errors).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(good, [4, 6]);
        assert_eq!(errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5]);
    }
}

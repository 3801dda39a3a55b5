//! Kafka payloads to Arrow batches and back. JSON today.
//!
//! Decoding adds the engine's hidden columns (event time, offset, and the headers that travel
//! to the sink) and the Kafka metadata fields the pipeline uses (`_key`, `_topic`,
//! `_partition`, `_offset`, `_timestamp`, `_headers`). A record that cannot be decoded is
//! reported with its error, never fatal.

use std::{collections::BTreeSet, sync::Arc};

use arrow::json::{
    ReaderBuilder,
    writer::{EncoderOptions, make_encoder},
};
use arrow::{
    array::{
        Array, ArrayRef, AsArray, Int32Array, Int64Array, MapArray, MapBuilder, StringArray, StringBuilder,
        StructArray, TimestampMillisecondArray,
    },
    compute::kernels::cast::cast,
    datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
    record_batch::RecordBatch,
};
use rdkafka::message::{BorrowedHeaders, Headers};
use weir_crds::{FieldDecl, FieldType, KafkaSource, validation::METADATA_FIELDS};

use crate::engine::{EVENT_TIME, HEADERS, OFFSET, is_hidden};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// One consumed Kafka record, borrowed from the consumer.
#[derive(Clone, Copy)]
pub struct RawRecord<'a> {
    /// The payload; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// The record key.
    pub key: Option<&'a [u8]>,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The Kafka timestamp, epoch ms.
    pub timestamp: Option<i64>,
    /// The record headers.
    pub headers: Option<&'a BorrowedHeaders>,
}

impl std::fmt::Debug for RawRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecord")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("payload_len", &self.payload.map(<[u8]>::len))
            .field("headers", &self.headers.map(Headers::count))
            .finish_non_exhaustive()
    }
}

/// Which consumed headers travel with a record's rows to the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeaderCarry {
    /// None.
    #[default]
    Nothing,
    /// Only `traceparent`, for trace propagation.
    TraceParent,
    /// Every header (`sink.kafka.forwardHeaders`).
    All,
}

/// A batch of decoded records and the ones that failed.
#[derive(Debug)]
pub struct Decoded {
    /// The records that decoded, with hidden and metadata columns; `None` when none did.
    pub batch: Option<RecordBatch>,
    /// Index (into the input) and reason of each record that did not decode.
    pub errors: Vec<(usize, String)>,
}

/// Where event time comes from.
#[derive(Debug, Clone)]
enum EventTimeSource {
    KafkaTimestamp,
    Field(String),
}

/// Decodes JSON payloads of one source topic.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    topic: String,
    declared: Option<SchemaRef>,
    event_time: EventTimeSource,
    metadata: BTreeSet<&'static str>,
    carry: HeaderCarry,
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

impl JsonDecoder {
    /// A decoder for `source`, adding the metadata fields named in `referenced`.
    pub fn new(source: &KafkaSource, referenced: &BTreeSet<String>) -> Self {
        let event_time = match source.event_time.as_ref().and_then(|e| e.field.clone()) {
            Some(field) => EventTimeSource::Field(field),
            None => EventTimeSource::KafkaTimestamp,
        };
        let metadata = METADATA_FIELDS.iter().copied().filter(|f| referenced.contains(*f)).collect();
        Self {
            topic: source.topic.clone(),
            declared: declared_schema(&source.schema),
            event_time,
            metadata,
            carry: HeaderCarry::Nothing,
        }
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub fn carrying(mut self, carry: HeaderCarry) -> Self {
        self.carry = carry;
        self
    }

    /// Decodes `records` into one batch.
    pub fn decode(&self, records: &[RawRecord<'_>]) -> Decoded {
        let mut errors = Vec::new();
        let mut good: Vec<usize> = Vec::with_capacity(records.len());
        let decoded = match &self.declared {
            Some(schema) => self.decode_declared(schema, records, &mut good, &mut errors),
            None => {
                let mut parsed: Vec<(usize, serde_json::Value)> = Vec::new();
                for (i, record) in records.iter().enumerate() {
                    match parse_object(record.payload) {
                        Ok(value) => parsed.push((i, value)),
                        Err(e) => errors.push((i, e)),
                    }
                }
                decode_inferred(&parsed, &mut good, &mut errors)
            }
        };
        let batch = match decoded {
            Ok(Some(batch)) => batch,
            Ok(None) => return Decoded { batch: None, errors },
            Err(e) => {
                // A whole-batch failure after per-record checks: report every record.
                errors.extend(good.iter().map(|&i| (i, e.to_string())));
                return Decoded { batch: None, errors };
            }
        };
        match self.with_extra_columns(batch, records, &good) {
            Ok((batch, bad_times)) => {
                errors.extend(bad_times.into_iter().map(|row| (good[row], "missing or invalid event time".to_owned())));
                errors.sort_by_key(|(i, _)| *i);
                Decoded { batch: Some(batch), errors }
            }
            Err(e) => {
                errors.extend(good.iter().map(|&i| (i, e.to_string())));
                Decoded { batch: None, errors }
            }
        }
    }

    /// The fast path: the whole batch through arrow-json's decoder; on any error, record
    /// by record to find the bad ones.
    fn decode_declared(
        &self,
        schema: &SchemaRef,
        records: &[RawRecord<'_>],
        good: &mut Vec<usize>,
        errors: &mut Vec<(usize, String)>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let whole = || -> Result<Option<RecordBatch>, ArrowError> {
            let mut decoder =
                ReaderBuilder::new(schema.clone()).with_batch_size(records.len().max(1)).build_decoder()?;
            for record in records {
                let payload = record.payload.ok_or_else(|| ArrowError::JsonError("empty payload".into()))?;
                decode_one_object(&mut decoder, payload)?;
            }
            decoder.flush()
        };
        if let Ok(batch) = whole() {
            good.extend(0..records.len());
            return Ok(batch);
        }
        let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(records.len().max(1)).build_decoder()?;
        for (i, record) in records.iter().enumerate() {
            let single = || -> Result<(), ArrowError> {
                let payload = record.payload.ok_or_else(|| ArrowError::JsonError("empty payload".into()))?;
                let mut probe = ReaderBuilder::new(schema.clone()).build_decoder()?;
                decode_one_object(&mut probe, payload)?;
                probe.flush()?;
                Ok(())
            };
            match single() {
                Ok(()) => {
                    // Known good: cannot fail in the shared decoder.
                    if let Some(payload) = record.payload {
                        decode_one_object(&mut decoder, payload)?;
                    }
                    good.push(i);
                }
                Err(e) => errors.push((i, e.to_string())),
            }
        }
        decoder.flush()
    }

    /// Appends event time, offset and metadata columns. Returns the rows whose event time
    /// is missing, which are removed.
    fn with_extra_columns(
        &self,
        batch: RecordBatch,
        records: &[RawRecord<'_>],
        good: &[usize],
    ) -> Result<(RecordBatch, Vec<usize>), ArrowError> {
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
        let missing: Vec<usize> = (0..event_time.len()).filter(|&i| event_time.is_null(i)).collect();
        let has_time = arrow::compute::is_not_null(&event_time)?;
        add(EVENT_TIME, Arc::new(event_time));
        add(OFFSET, Arc::new(picked().map(|r| r.offset).collect::<Int64Array>()));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        if missing.is_empty() {
            return Ok((batch, missing));
        }
        Ok((arrow::compute::filter_record_batch(&batch, &has_time)?, missing))
    }
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

/// Decodes parsed objects with a schema inferred from all of them; when their types
/// disagree, with the first one's schema, and the records that do not fit it fail alone.
fn decode_inferred(
    parsed: &[(usize, serde_json::Value)],
    good: &mut Vec<usize>,
    errors: &mut Vec<(usize, String)>,
) -> Result<Option<RecordBatch>, ArrowError> {
    let Some((_, first)) = parsed.first() else { return Ok(None) };
    let values = || parsed.iter().map(|(_, v)| v);
    if let Ok(schema) = arrow::json::reader::infer_json_schema_from_iterator(values().map(Ok)) {
        let mut decoder = ReaderBuilder::new(Arc::new(schema)).with_batch_size(parsed.len()).build_decoder()?;
        if decoder.serialize(&values().collect::<Vec<_>>()).is_ok()
            && let Ok(batch) = decoder.flush()
        {
            good.extend(parsed.iter().map(|(i, _)| *i));
            return Ok(batch);
        }
    }
    let schema = Arc::new(arrow::json::reader::infer_json_schema_from_iterator(std::iter::once(Ok(first)))?);
    let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(parsed.len()).build_decoder()?;
    for (i, value) in parsed {
        let mut probe = ReaderBuilder::new(schema.clone()).build_decoder()?;
        let fits = probe.serialize(std::slice::from_ref(value)).and_then(|()| probe.flush());
        match fits {
            Ok(_) => {
                decoder.serialize(std::slice::from_ref(value))?;
                good.push(*i);
            }
            Err(e) => errors.push((*i, format!("does not match the other records' types: {e}"))),
        }
    }
    decoder.flush()
}

fn decode_one_object(decoder: &mut arrow::json::reader::Decoder, payload: &[u8]) -> Result<(), ArrowError> {
    let trimmed = payload.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return Err(ArrowError::JsonError("payload is not a JSON object".into()));
    }
    let read = decoder.decode(trimmed)?;
    if read != trimmed.len() {
        return Err(ArrowError::JsonError("trailing data after the JSON object".into()));
    }
    Ok(())
}

fn parse_object(payload: Option<&[u8]>) -> Result<serde_json::Value, String> {
    let payload = payload.ok_or_else(|| "empty payload".to_owned())?;
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// Event times as epoch ms: integers are taken as ms, text as RFC 3339.
fn event_time_millis(column: &ArrayRef) -> Result<Int64Array, ArrowError> {
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

/// A record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The record key, from the sink's `keyField`.
    pub key: Option<Vec<u8>>,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// The Kafka timestamp, epoch ms: the `timestampField`, or the record's event time.
    pub timestamp: Option<i64>,
    /// Headers carried from the consumed record (see [`HeaderCarry`]).
    pub headers: Vec<(String, Option<String>)>,
}

/// Which output fields become the Kafka key and timestamp.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layout<'a> {
    /// Field whose value is the key.
    pub key_field: Option<&'a str>,
    /// Field whose value is the timestamp (epoch ms, RFC 3339 or a timestamp).
    pub timestamp_field: Option<&'a str>,
}

/// Encodes result rows as JSON objects, one record each, without the hidden columns.
pub fn encode_json(batch: &RecordBatch, layout: Layout<'_>) -> Result<Vec<Encoded>, ArrowError> {
    let key_field = layout.key_field;
    let visible: Vec<usize> =
        (0..batch.num_columns()).filter(|&i| !is_hidden(batch.schema().field(i).name())).collect();
    let projected = batch.project(&visible)?;
    let rows = StructArray::from(projected.clone());
    let field = Arc::new(Field::new("record", rows.data_type().clone(), false));
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(&field, &rows, &options)?;
    let keys = match key_field.and_then(|k| projected.column_by_name(k)) {
        Some(column) => Some(cast(column, &DataType::Utf8)?),
        None => None,
    };
    let times = match layout.timestamp_field.and_then(|f| projected.column_by_name(f)) {
        Some(column) => Some(event_time_millis(column)?),
        None => batch.column_by_name(EVENT_TIME).and_then(|c| c.as_primitive_opt::<Int64Type>()).cloned(),
    };
    let carried = batch.column_by_name(HEADERS).and_then(|c| c.as_map_opt());
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut payload = Vec::with_capacity(64);
        encoder.encode(row, &mut payload);
        let key = keys.as_ref().and_then(|k| {
            let k = k.as_string::<i32>();
            k.is_valid(row).then(|| k.value(row).as_bytes().to_vec())
        });
        let timestamp = times.as_ref().and_then(|t| t.is_valid(row).then(|| t.value(row)));
        let headers = carried.map(|map| map_entries(map, row)).unwrap_or_default();
        out.push(Encoded { key, payload, timestamp, headers });
    }
    Ok(out)
}

/// The entries of row `row` of a map of text to text.
fn map_entries(map: &MapArray, row: usize) -> Vec<(String, Option<String>)> {
    if map.is_null(row) {
        return Vec::new();
    }
    let entries = map.value(row);
    let (Some(keys), Some(values)) =
        (entries.column(0).as_string_opt::<i32>(), entries.column(1).as_string_opt::<i32>())
    else {
        return Vec::new();
    };
    (0..entries.len())
        .map(|i| (keys.value(i).to_owned(), values.is_valid(i).then(|| values.value(i).to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use weir_crds::JobDocument;

    use super::*;

    fn source(extra: &str) -> KafkaSource {
        let spec = format!(
            "source: {{kafka: {{bootstrapServers: k:9092, topic: in{extra}}}}}\nsink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}"
        );
        JobDocument::parse(&spec).unwrap().spec.source.kafka
    }

    fn raw(payloads: &[&'static str]) -> Vec<RawRecord<'static>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord {
                payload: Some(p.as_bytes()),
                key: Some(b"k"),
                partition: 3,
                offset: 100 + i as i64,
                headers: None,
                timestamp: Some(1_000 + i as i64),
            })
            .collect()
    }

    fn referenced(fields: &[&str]) -> BTreeSet<String> {
        fields.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn inferred_json_decodes_with_hidden_columns() {
        let decoder = JsonDecoder::new(&source(""), &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[r#"{"user":"a","amount":1.5}"#, r#"{"user":"b","amount":2}"#]));
        let batch = decoded.batch.unwrap();
        assert!(decoded.errors.is_empty());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column_by_name(OFFSET).unwrap().as_primitive::<Int64Type>().values(), &[100, 101]);
        assert_eq!(batch.column_by_name(EVENT_TIME).unwrap().as_primitive::<Int64Type>().values(), &[1_000, 1_001]);
    }

    #[test]
    fn malformed_records_are_reported_and_the_rest_decode() {
        let decoder = JsonDecoder::new(&source(""), &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[r#"{"user":"a"}"#, "not json", "[1,2]", r#"{"user":"c"}"#]));
        assert_eq!(decoded.batch.unwrap().num_rows(), 2);
        let bad: Vec<usize> = decoded.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, [1, 2]);
    }

    #[test]
    fn a_declared_schema_types_the_columns_and_rejects_wrong_types() {
        let src = source(", schema: [{name: user, type: string}, {name: amount, type: double}]");
        let decoder = JsonDecoder::new(&src, &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[r#"{"user":"a","amount":1}"#, r#"{"user":"b","amount":"lots"}"#, "{oops"]));
        let batch = decoded.batch.unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column_by_name("amount").unwrap().data_type(), &DataType::Float64);
        assert_eq!(decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
    }

    fn event_times(decoded: &Decoded) -> Vec<i64> {
        let batch = decoded.batch.as_ref().unwrap();
        batch.column_by_name(EVENT_TIME).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn event_time_comes_from_a_field_as_millis_or_rfc3339() {
        let decoder = JsonDecoder::new(&source(", eventTime: {field: ts}"), &BTreeSet::new());
        let millis = decoder.decode(&raw(&[r#"{"ts":5000}"#, r#"{"x":1}"#]));
        assert_eq!(event_times(&millis), [5_000]);
        assert_eq!(millis.errors, [(1, "missing or invalid event time".to_owned())]);
        let text =
            decoder.decode(&raw(&[r#"{"ts":"1970-01-01T00:00:07Z"}"#, r#"{"ts":"1970-01-01T00:00:08.5+00:00"}"#]));
        assert_eq!(event_times(&text), [7_000, 8_500]);
    }

    #[test]
    fn a_record_whose_types_disagree_with_the_batch_fails_alone() {
        let decoder = JsonDecoder::new(&source(""), &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[r#"{"n":1}"#, r#"{"n":{"nested":true}}"#, r#"{"n":3}"#]));
        assert_eq!(decoded.batch.unwrap().num_rows(), 2);
        assert_eq!(decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn referenced_metadata_fields_are_added() {
        let decoder = JsonDecoder::new(&source(""), &referenced(&["_partition", "_key"]));
        let batch = decoder.decode(&raw(&[r#"{"a":1}"#])).batch.unwrap();
        assert_eq!(
            batch.column_by_name("_partition").unwrap().as_primitive::<arrow::datatypes::Int32Type>().value(0),
            3
        );
        assert_eq!(batch.column_by_name("_key").unwrap().as_string::<i32>().value(0), "k");
        assert!(batch.column_by_name("_topic").is_none());
    }

    #[test]
    fn results_encode_as_one_json_object_per_record_with_the_key_field() {
        let batch = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("total", Arc::new(arrow::array::Float64Array::from(vec![1.5, 2.0])) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from(vec![60_000, 60_000])) as ArrayRef),
        ])
        .unwrap();
        let encoded = encode_json(&batch, Layout { key_field: Some("user"), ..Layout::default() }).unwrap();
        assert_eq!(String::from_utf8(encoded[0].payload.clone()).unwrap(), r#"{"user":"a","total":1.5}"#);
        assert_eq!(encoded[1].key.as_deref(), Some(&b"b"[..]));
        assert_eq!(encoded[1].timestamp, Some(60_000));
    }

    #[test]
    fn headers_are_a_map_column_and_travel_hidden_to_the_sink() {
        use rdkafka::message::{Header, OwnedHeaders};
        let headers = OwnedHeaders::new().insert(Header { key: "tenant", value: Some("acme") }).insert(Header {
            key: TRACEPARENT,
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        });
        let mut records = raw(&[r#"{"a":1}"#, r#"{"a":2}"#]);
        records[0].headers = Some(headers.as_borrowed());
        let decoder = JsonDecoder::new(&source(""), &referenced(&["_headers"])).carrying(HeaderCarry::TraceParent);
        let batch = decoder.decode(&records).batch.unwrap();
        let visible = map_entries(batch.column_by_name("_headers").unwrap().as_map(), 0);
        assert_eq!(visible.len(), 2);
        assert_eq!(visible[0], ("tenant".to_owned(), Some("acme".to_owned())));
        let encoded = encode_json(&batch, Layout::default()).unwrap();
        assert_eq!(encoded[0].headers.len(), 1, "only traceparent is carried");
        assert_eq!(encoded[0].headers[0].0, TRACEPARENT);
        assert!(encoded[1].headers.is_empty());
        let payload: serde_json::Value = serde_json::from_slice(&encoded[0].payload).unwrap();
        assert_eq!(payload["_headers"]["tenant"], "acme", "the map encodes as a JSON object: {payload}");
        assert!(payload.get(HEADERS).is_none());
    }

    #[test]
    fn the_timestamp_field_sets_the_record_timestamp() {
        let batch = RecordBatch::try_from_iter([
            ("at", Arc::new(StringArray::from(vec!["2026-11-01T00:00:01Z", "1970-01-01T00:00:00.5Z"])) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from(vec![60_000, 60_000])) as ArrayRef),
        ])
        .unwrap();
        let by_field = encode_json(&batch, Layout { timestamp_field: Some("at"), ..Layout::default() }).unwrap();
        assert_eq!(by_field.iter().map(|e| e.timestamp).collect::<Vec<_>>(), [Some(1_793_491_201_000), Some(500)]);
        let by_event_time = encode_json(&batch, Layout::default()).unwrap();
        assert_eq!(by_event_time[0].timestamp, Some(60_000));
    }
}

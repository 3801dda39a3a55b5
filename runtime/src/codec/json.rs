//! JSON payloads: one object per record, read with arrow-json, against the declared schema
//! or a schema inferred from the batch.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use arrow::{
    array::{Array, RecordBatch, StructArray},
    datatypes::{Field, SchemaRef},
    error::ArrowError,
    json::{
        ReaderBuilder,
        writer::{EncoderOptions, make_encoder},
    },
};
use weir_crds::KafkaSource;

use super::{
    Decoded, Encoded, HeaderCarry, Layout, RawRecord,
    columns::{Extras, declared_schema},
    envelope, visible,
};

/// Decodes JSON payloads of one source topic.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    declared: Option<SchemaRef>,
    extras: Extras,
}

impl JsonDecoder {
    /// A decoder for `source`, adding the metadata fields named in `referenced`.
    pub fn new(source: &KafkaSource, referenced: &BTreeSet<String>) -> Self {
        Self { declared: declared_schema(&source.schema), extras: Extras::new(source, referenced) }
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub fn carrying(mut self, carry: HeaderCarry) -> Self {
        self.extras = self.extras.carrying(carry);
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
                let decoded = decode_inferred(&parsed, &mut good, &mut errors);
                errors.sort_by_key(|(i, _)| *i);
                decoded
            }
        };
        self.extras.finish(decoded, records, &good, errors)
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
}

/// Decodes parsed objects with a schema inferred from all of them. When their types
/// disagree, each top-level field takes the kind (number, string, boolean, object or array)
/// most records give it: a record that gives a field another kind fails alone, naming the
/// field, and the schema is inferred from the rest. One odd record, first or not, never
/// types the batch.
fn decode_inferred(
    parsed: &[(usize, serde_json::Value)],
    good: &mut Vec<usize>,
    errors: &mut Vec<(usize, String)>,
) -> Result<Option<RecordBatch>, ArrowError> {
    if parsed.is_empty() {
        return Ok(None);
    }
    let values = || parsed.iter().map(|(_, v)| v);
    let majority = majority_kinds(values());
    let mut fitting: Vec<&(usize, serde_json::Value)> = Vec::with_capacity(parsed.len());
    for entry in parsed {
        match odd_field(&entry.1, &majority) {
            None => fitting.push(entry),
            Some((field, kind, usual)) => errors
                .push((entry.0, format!("field `{field}` is {kind} where the batch's other records have {usual}"))),
        }
    }
    let Some((_, first)) = fitting.first() else { return Ok(None) };
    let fitting_values = || fitting.iter().map(|(_, v)| v);
    if let Ok(schema) = arrow::json::reader::infer_json_schema_from_iterator(fitting_values().map(Ok)) {
        let mut decoder = ReaderBuilder::new(Arc::new(schema)).with_batch_size(fitting.len()).build_decoder()?;
        if decoder.serialize(&fitting_values().collect::<Vec<_>>()).is_ok()
            && let Ok(batch) = decoder.flush()
        {
            good.extend(fitting.iter().map(|(i, _)| *i));
            return Ok(batch);
        }
    }
    // Nested fields disagree: the first fitting record's schema, and records that do not
    // fit it fail alone.
    let schema = Arc::new(arrow::json::reader::infer_json_schema_from_iterator(std::iter::once(Ok(first)))?);
    let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(fitting.len()).build_decoder()?;
    for (i, value) in fitting {
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

/// The kind of a JSON value, as far as the type inferred for its field is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Boolean,
    Number,
    String,
    Object,
    Array,
}

impl Kind {
    /// `None` for NULL, which fits any kind.
    fn of(value: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Self::Boolean),
            Value::Number(_) => Some(Self::Number),
            Value::String(_) => Some(Self::String),
            Value::Object(_) => Some(Self::Object),
            Value::Array(_) => Some(Self::Array),
        }
    }

    fn described(self) -> &'static str {
        match self {
            Self::Boolean => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Object => "an object",
            Self::Array => "an array",
        }
    }
}

/// For each top-level field, the kind most of `values` give it (the first seen on a tie).
fn majority_kinds<'a>(values: impl Iterator<Item = &'a serde_json::Value>) -> HashMap<&'a str, Kind> {
    let mut counts: HashMap<&str, Vec<(Kind, usize)>> = HashMap::new();
    for object in values.filter_map(serde_json::Value::as_object) {
        for (field, value) in object {
            let Some(kind) = Kind::of(value) else { continue };
            let seen = counts.entry(field.as_str()).or_default();
            match seen.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => seen.push((kind, 1)),
            }
        }
    }
    counts
        .into_iter()
        .filter_map(|(field, kinds)| {
            let best = kinds.iter().map(|(_, n)| *n).max()?;
            kinds.into_iter().find(|(_, n)| *n == best).map(|(kind, _)| (field, kind))
        })
        .collect()
}

/// The first field of `value` whose kind is not the batch's, with both kinds described.
fn odd_field<'a>(
    value: &'a serde_json::Value,
    majority: &HashMap<&str, Kind>,
) -> Option<(&'a str, &'static str, &'static str)> {
    value.as_object()?.iter().find_map(|(field, v)| {
        let (kind, usual) = (Kind::of(v)?, majority.get(field.as_str())?);
        (kind != *usual).then(|| (field.as_str(), kind.described(), usual.described()))
    })
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

/// Encodes result rows as JSON objects, one record each, without the hidden columns.
pub fn encode_json(batch: &RecordBatch, layout: Layout<'_>) -> Result<Vec<Encoded>, ArrowError> {
    let projected = visible(batch)?;
    let rows = StructArray::from(projected.clone());
    let field = Arc::new(Field::new("record", rows.data_type().clone(), false));
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(&field, &rows, &options)?;
    envelope(batch, &projected, layout, |row| {
        let mut payload = Vec::with_capacity(64);
        encoder.encode(row, &mut payload);
        payload
    })
}

#[cfg(test)]
mod tests {
    use arrow::{
        array::{ArrayRef, AsArray, Int64Array, StringArray},
        datatypes::{DataType, Int64Type},
    };
    use weir_crds::JobDocument;

    use super::*;
    use crate::{
        codec::{TRACEPARENT, map_entries},
        engine::{EVENT_TIME, HEADERS, OFFSET},
    };

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
    fn an_event_time_too_far_ahead_of_the_clock_is_refused_with_the_bound() {
        let now = chrono::Utc::now().timestamp_millis();
        let decoder = JsonDecoder::new(&source(", eventTime: {field: ts, maxAhead: 10m}"), &BTreeSet::new());
        let near = format!(r#"{{"ts":{}}}"#, now + 60_000);
        let far = format!(r#"{{"ts":{}}}"#, now + 3_700_000);
        let payloads = [near.as_str(), far.as_str(), r#"{"ts":4102444800000}"#];
        let records: Vec<RawRecord<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord { payload: Some(p.as_bytes()), offset: i as i64, ..raw(&["{}"])[0] })
            .collect();
        let decoded = decoder.decode(&records);
        assert_eq!(event_times(&decoded), [now + 60_000], "a minute ahead is within 10m");
        assert_eq!(decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            decoded.errors[1].1,
            "event time 2100-01-01T00:00:00+00:00 is more than 10m ahead of the clock (source.kafka.eventTime.maxAhead)"
        );
        let default = JsonDecoder::new(&source(", eventTime: {field: ts}"), &BTreeSet::new());
        let errors = default.decode(&records).errors;
        assert_eq!(errors.len(), 2, "the default bound is an hour: {errors:?}");
        assert!(errors[0].1.contains("more than 1h ahead"), "{errors:?}");
        let ancient = [RawRecord { payload: Some(br#"{"ts":-9223372036854775808}"#), ..records[0] }];
        let errors = decoder.decode(&ancient).errors;
        assert_eq!(errors, [(0, "event time -9223372036854775808 ms is before the year 1".to_owned())]);
        let kafka_time = JsonDecoder::new(&source(""), &BTreeSet::new());
        let stamped: Vec<RawRecord<'_>> =
            records.iter().map(|r| RawRecord { timestamp: Some(now + 7_200_000), ..*r }).collect();
        assert_eq!(kafka_time.decode(&stamped).errors.len(), 3, "Kafka timestamps are bounded too");
    }

    #[test]
    fn a_record_whose_types_disagree_with_the_batch_fails_alone() {
        let decoder = JsonDecoder::new(&source(""), &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[r#"{"n":1}"#, r#"{"n":{"nested":true}}"#, r#"{"n":3}"#]));
        assert_eq!(decoded.batch.unwrap().num_rows(), 2);
        assert_eq!(decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_record_of_other_types_fails_alone_even_when_it_comes_first() {
        let decoder = JsonDecoder::new(&source(""), &BTreeSet::new());
        let decoded = decoder.decode(&raw(&[
            r#"{"user":"a","amount":{"nested":true}}"#,
            r#"{"user":"b","amount":2}"#,
            r#"{"user":"c","amount":"lots"}"#,
            r#"{"user":"d","amount":4.5}"#,
            r#"{"user":"e","amount":null}"#,
        ]));
        let batch = decoded.batch.unwrap();
        assert_eq!(batch.num_rows(), 3, "b, d and e decode");
        assert_eq!(batch.column_by_name("amount").unwrap().data_type(), &DataType::Float64, "numbers, not text");
        assert_eq!(
            decoded.errors,
            [
                (0, "field `amount` is an object where the batch's other records have a number".to_owned()),
                (2, "field `amount` is a string where the batch's other records have a number".to_owned()),
            ]
        );
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

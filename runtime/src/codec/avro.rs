//! Avro in the Confluent Schema Registry wire format: a magic byte 0, the writer schema's
//! id (4 bytes, big-endian), then the Avro binary body.
//!
//! Decoding: the records of a batch are grouped by writer schema id; each group is decoded
//! with arrow-avro, resolved to one reader schema — the newest schema (highest id) seen of
//! the same record type, so records written with older versions read as the new version
//! does, with its defaults — and the groups are put back in offset order. Declared source fields then select
//! and cast columns as they do for JSON. A bad frame, an id the registry does not know, or a
//! body that does not decode fails that record alone.
//!
//! Encoding: the writer schema is derived from the result's Arrow schema (a record named
//! after the job, in namespace `weir`), registered under `<topic>-value` the first time a
//! result of that shape is written, and each row becomes one framed record.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use arrow::{
    array::{RecordBatch, UInt32Array},
    compute::{concat_batches, take_record_batch},
    datatypes::{Field, Schema, SchemaRef},
    error::ArrowError,
};
use arrow_avro::{
    reader::{self, DecoderMode, ReaderBuilder},
    schema::{
        AVRO_NAME_METADATA_KEY, AVRO_NAMESPACE_METADATA_KEY, AvroSchema, Fingerprint, FingerprintAlgorithm,
        FingerprintStrategy, SchemaStore,
    },
    writer::{self, WriterBuilder, format::AvroSoeFormat},
};
use weir_crds::KafkaSource;

use super::{
    CodecError, Decoded, Encoded, HeaderCarry, Layout, RawRecord,
    columns::{Extras, conform_rows, declared_schema},
    envelope,
    registry::Registry,
    visible,
};

/// The Confluent wire format's magic byte.
const MAGIC: u8 = 0;
/// Magic byte and schema id.
const HEADER_LEN: usize = 5;
/// Rows an arrow-avro decoder collects before it is flushed.
const DECODER_ROWS: usize = 64 * 1024;
/// The namespace of result records.
const NAMESPACE: &str = "weir";

/// A payload that is not a Confluent Avro frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A tombstone.
    #[error("empty payload")]
    Empty,
    /// Fewer than 5 bytes.
    #[error("payload of {0} bytes is shorter than the 5-byte schema registry header")]
    Short(usize),
    /// The first byte is not 0.
    #[error("unknown magic byte {0:#04x}: not in the schema registry wire format")]
    Magic(u8),
}

/// The writer schema id and the Avro body of a framed payload.
pub fn split_frame(payload: Option<&[u8]>) -> Result<(u32, &[u8]), FrameError> {
    let payload = payload.ok_or(FrameError::Empty)?;
    let (header, body) = payload.split_at_checked(HEADER_LEN).ok_or(FrameError::Short(payload.len()))?;
    let [magic, id @ ..] = header else { return Err(FrameError::Short(payload.len())) };
    if *magic != MAGIC {
        return Err(FrameError::Magic(*magic));
    }
    let id: [u8; 4] = id.try_into().map_err(|_| FrameError::Short(payload.len()))?;
    Ok((u32::from_be_bytes(id), body))
}

/// Decodes Confluent-framed Avro payloads of one source topic.
#[derive(Debug)]
pub struct AvroDecoder {
    registry: Registry,
    declared: Option<SchemaRef>,
    extras: Extras,
    /// arrow-avro decoders by (writer id, reader id), reused across batches.
    decoders: Mutex<HashMap<(u32, u32), reader::Decoder>>,
}

impl AvroDecoder {
    /// A decoder for `source` looking schemas up in `registry`.
    pub fn new(source: &KafkaSource, referenced: &BTreeSet<String>, registry: Registry) -> Self {
        Self {
            registry,
            declared: declared_schema(&source.schema),
            extras: Extras::new(source, referenced),
            decoders: Mutex::default(),
        }
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub fn carrying(mut self, carry: HeaderCarry) -> Self {
        self.extras = self.extras.carrying(carry);
        self
    }

    /// Looks up the writer schemas of `records` the registry has not told yet.
    pub async fn prepare(&self, records: &[RawRecord<'_>]) -> Result<(), CodecError> {
        let ids: BTreeSet<u32> = records.iter().filter_map(|r| split_frame(r.payload).ok()).map(|(id, _)| id).collect();
        Ok(self.registry.fetch_missing(ids).await?)
    }

    /// Decodes `records` into one batch in their order (after [`AvroDecoder::prepare`]).
    pub fn decode(&self, records: &[RawRecord<'_>]) -> Decoded {
        let mut errors = Vec::new();
        let mut groups: BTreeMap<u32, Vec<(usize, &[u8])>> = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            match split_frame(record.payload) {
                Ok((id, body)) => groups.entry(id).or_default().push((i, body)),
                Err(e) => errors.push((i, e.to_string())),
            }
        }
        let mut good = Vec::with_capacity(records.len());
        let decoded = self.decode_groups(groups, &mut good, &mut errors);
        let decoded = decoded.and_then(|batch| match batch {
            Some(batch) => conform_rows(batch, self.declared.as_ref(), &mut good, &mut errors).map(Some),
            None => Ok(None),
        });
        self.extras.finish(decoded, records, &good, errors)
    }

    /// Decodes each writer id's records, then puts the rows back in input order. Each writer
    /// version is read as the newest version of its type; a batch holds one type, the one
    /// most of its records have, so a stray record of another type fails alone.
    fn decode_groups(
        &self,
        groups: BTreeMap<u32, Vec<(usize, &[u8])>>,
        good: &mut Vec<usize>,
        errors: &mut Vec<(usize, String)>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        type Groups<'p> = Vec<(u32, Vec<(usize, &'p [u8])>)>;
        let mut by_reader: BTreeMap<u32, (Arc<str>, Groups<'_>)> = BTreeMap::new();
        for (writer, group) in groups {
            match self.registry.newest_of(writer) {
                Some((reader, name)) => {
                    by_reader.entry(reader).or_insert_with(|| (name, Vec::new())).1.push((writer, group))
                }
                None => {
                    let why = self.registry.schema(writer).err().unwrap_or_default();
                    errors.extend(group.into_iter().map(|(i, _)| (i, why.clone())));
                }
            }
        }
        let records = |groups: &Groups<'_>| groups.iter().map(|(_, g)| g.len()).sum::<usize>();
        let main = by_reader.iter().max_by_key(|(id, (_, groups))| (records(groups), **id)).map(|(id, _)| *id);
        let Some((reader, (name, chosen))) = main.and_then(|id| by_reader.remove_entry(&id)) else { return Ok(None) };
        for (other, groups) in by_reader.into_values() {
            let why = format!("record type {other} is not the batch's {name}: one record type per topic");
            errors.extend(groups.into_iter().flat_map(|(_, g)| g).map(|(i, _)| (i, why.clone())));
        }
        let mut decoders = self.decoders.lock().unwrap_or_else(PoisonError::into_inner);
        // Decoders resolving to a reader schema that is not the newest any more are not needed.
        decoders.retain(|(w, r), _| self.registry.newest_of(*w).is_some_and(|(newest, _)| newest == *r));
        let mut batches = Vec::new();
        let mut order = Vec::new();
        for (writer, group) in chosen {
            let decoder = match decoders.remove(&(writer, reader)) {
                Some(decoder) => decoder,
                None => match self.build_decoder(writer, reader) {
                    Ok(decoder) => decoder,
                    Err(why) => {
                        errors.extend(group.into_iter().map(|(i, _)| (i, why.clone())));
                        continue;
                    }
                },
            };
            let mut run = GroupRun {
                decoder: Some(decoder),
                rebuild: || self.build_decoder(writer, reader),
                pending: Vec::new(),
                batches: &mut batches,
                order: &mut order,
                errors,
            };
            for (index, body) in group {
                run.push(index, body);
            }
            if let Some(decoder) = run.finish() {
                decoders.insert((writer, reader), decoder);
            }
        }
        drop(decoders);
        // Rows back in input (offset) order; `good` is set first so that a failure below
        // reports these records instead of losing them.
        let mut by_input: Vec<u32> = (0..order.len() as u32).collect();
        by_input.sort_by_key(|&row| order[row as usize]);
        order.sort_unstable();
        *good = order;
        let Some(first) = batches.first() else { return Ok(None) };
        let batch = concat_batches(&first.schema(), &batches)?;
        Ok(Some(take_record_batch(&batch, &UInt32Array::from(by_input))?))
    }

    /// An arrow-avro decoder of bodies written with schema `writer`, read as `reader`.
    fn build_decoder(&self, writer: u32, reader: u32) -> Result<reader::Decoder, String> {
        let writer_schema = self.registry.schema(writer)?;
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        let build = || -> Result<reader::Decoder, ArrowError> {
            store.set(Fingerprint::Id(writer), AvroSchema::new(writer_schema.to_string()))?;
            let mut builder = ReaderBuilder::new()
                .with_batch_size(DECODER_ROWS)
                .with_decoder_mode(DecoderMode::UnframedDatum)
                .with_active_fingerprint(Fingerprint::Id(writer))
                .with_writer_schema_store(store);
            if writer != reader {
                let reader_schema = self.registry.schema(reader).map_err(ArrowError::SchemaError)?;
                builder = builder.with_reader_schema(AvroSchema::new(reader_schema.to_string()));
            }
            builder.build_decoder()
        };
        build().map_err(|e| format!("schema id {writer} cannot be read as schema id {reader}: {e}"))
    }
}

/// Decoding one writer id's records: each ends up either as a row (its index in `order`) or
/// in `errors`. arrow-avro leaves a half-written row behind when a body fails, so after a
/// failure the decoder is rebuilt and the rows not yet flushed are decoded again (each good
/// row at most twice, and only in batches with a bad one).
struct GroupRun<'b, 'p, F> {
    /// `None` once it could not be rebuilt.
    decoder: Option<reader::Decoder>,
    rebuild: F,
    /// Rows in the decoder, not yet flushed: (input index, body).
    pending: Vec<(usize, &'p [u8])>,
    batches: &'b mut Vec<RecordBatch>,
    order: &'b mut Vec<usize>,
    errors: &'b mut Vec<(usize, String)>,
}

impl<'p, F: Fn() -> Result<reader::Decoder, String>> GroupRun<'_, 'p, F> {
    fn push(&mut self, index: usize, body: &'p [u8]) {
        let Some(decoder) = self.decoder.as_mut() else {
            self.errors.push((index, "the Avro decoder could not be rebuilt after an earlier error".into()));
            return;
        };
        match decode_body(decoder, body) {
            Ok(()) => {
                self.pending.push((index, body));
                if decoder.batch_is_full() {
                    self.flush();
                }
            }
            Err(why) => {
                self.errors.push((index, why));
                self.reset();
            }
        }
    }

    /// A fresh decoder holding the pending rows again; when that fails, they are errors.
    fn reset(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let replayed = (self.rebuild)().and_then(|mut decoder| {
            // Decoded once already by an identical decoder: cannot fail now.
            pending.iter().try_for_each(|(_, body)| decode_body(&mut decoder, body)).map(|()| decoder)
        });
        match replayed {
            Ok(decoder) => {
                self.decoder = Some(decoder);
                self.pending = pending;
            }
            Err(why) => {
                self.decoder = None;
                self.errors.extend(pending.into_iter().map(|(i, _)| (i, why.clone())));
            }
        }
    }

    fn flush(&mut self) {
        let Some(decoder) = self.decoder.as_mut() else { return };
        match decoder.flush() {
            Ok(Some(batch)) => {
                self.batches.push(batch);
                self.order.extend(self.pending.drain(..).map(|(i, _)| i));
            }
            Ok(None) => {}
            Err(e) => {
                let why = format!("invalid Avro body: {e}");
                self.errors.extend(self.pending.drain(..).map(|(i, _)| (i, why.clone())));
                self.reset();
            }
        }
    }

    /// Flushes the rest; the decoder, clean again, to reuse.
    fn finish(mut self) -> Option<reader::Decoder> {
        self.flush();
        self.decoder
    }
}

/// Decodes one Avro body (the frame without its header) into `decoder`.
fn decode_body(decoder: &mut reader::Decoder, body: &[u8]) -> Result<(), String> {
    let read = decoder.decode(body).map_err(|e| format!("invalid Avro body: {e}"))?;
    if read != body.len() {
        return Err(format!("invalid Avro body: {} bytes left after the record", body.len() - read));
    }
    Ok(())
}

/// An Avro name (letters, digits, `_`, not starting with a digit) for `name`.
fn avro_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// The Avro writer schema of results of Arrow schema `schema`: a record `weir.<record_name>`
/// with one field per column, nullable columns as unions with null. Also the Arrow schema
/// the encoder is built for (field metadata dropped, so it depends on names and types only).
pub fn writer_schema(schema: &Schema, record_name: &str) -> Result<(SchemaRef, AvroSchema), ArrowError> {
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_metadata(HashMap::default())).collect();
    let metadata = HashMap::from([
        (AVRO_NAME_METADATA_KEY.to_owned(), avro_name(record_name)),
        (AVRO_NAMESPACE_METADATA_KEY.to_owned(), NAMESPACE.to_owned()),
    ]);
    let arrow = Schema::new_with_metadata(fields, metadata);
    let avro = AvroSchema::try_from(&arrow)?;
    Ok((Arc::new(arrow), avro))
}

/// One registered writer schema and its encoder.
#[derive(Debug)]
struct Writer {
    /// The Arrow schema it encodes (see [`writer_schema`]).
    schema: SchemaRef,
    encoder: writer::Encoder,
}

/// Encodes results as Confluent-framed Avro, registering their schemas under `<topic>-value`.
#[derive(Debug)]
pub struct AvroEncoder {
    registry: Registry,
    subject: String,
    record_name: String,
    writers: Mutex<Vec<Writer>>,
}

impl AvroEncoder {
    /// An encoder for `topic`, naming its records `record_name`.
    pub fn new(registry: Registry, topic: &str, record_name: &str) -> Self {
        Self {
            registry,
            subject: format!("{topic}-value"),
            record_name: record_name.to_owned(),
            writers: Mutex::default(),
        }
    }

    /// Registers the writer schema of each shape of result in `batches` not seen yet.
    pub async fn prepare(&self, batches: &[RecordBatch]) -> Result<(), CodecError> {
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let (schema, avro) = writer_schema(&visible(batch)?.schema(), &self.record_name)?;
            if self.find(&schema).is_some() {
                continue;
            }
            let id = self.registry.register(&self.subject, &avro.json_string).await?;
            let encoder = WriterBuilder::new(schema.as_ref().clone())
                .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                .build_encoder::<AvroSoeFormat>()
                .map_err(ArrowError::from)?;
            tracing::info!(subject = self.subject, id, "registered the sink's Avro schema");
            self.writers.lock().unwrap_or_else(PoisonError::into_inner).push(Writer { schema, encoder });
        }
        Ok(())
    }

    /// The index of the writer of `schema`.
    fn find(&self, schema: &Schema) -> Option<usize> {
        let writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        writers.iter().position(|w| w.schema.fields() == schema.fields())
    }

    /// Encodes result rows, one framed record each (after [`AvroEncoder::prepare`]).
    pub fn encode(&self, batch: &RecordBatch, layout: Layout<'_>) -> Result<Vec<Encoded>, CodecError> {
        let projected = visible(batch)?;
        let (schema, _) = writer_schema(&projected.schema(), &self.record_name)?;
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = writers.iter_mut().find(|w| w.schema.fields() == schema.fields()).ok_or_else(|| {
            CodecError::Config(format!("no Avro schema registered for results shaped {}", projected.schema()))
        })?;
        let rows = RecordBatch::try_new(writer.schema.clone(), projected.columns().to_vec())?;
        writer.encoder.encode(&rows).map_err(ArrowError::from)?;
        let mut payloads: Vec<Vec<u8>> = writer.encoder.flush().iter().map(|row| row.to_vec()).collect();
        drop(writers);
        Ok(envelope(batch, &projected, layout, |row| payloads.get_mut(row).map(std::mem::take).unwrap_or_default())?)
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;
    use arrow::{
        array::AsArray,
        datatypes::{DataType, Float64Type, Int64Type, TimeUnit},
    };
    use weir_crds::JobDocument;
    use weir_testkit::registry::SchemaRegistry;

    use super::*;
    use crate::{
        codec::{Decoder, FormatFiles},
        engine::OFFSET,
        kafka::config::SecretMounts,
    };

    const V1: &str = r#"{"type": "record", "name": "Payment", "fields": [
        {"name": "user", "type": "string"}, {"name": "amount", "type": "long"}]}"#;
    const V2: &str = r#"{"type": "record", "name": "Payment", "fields": [
        {"name": "user", "type": "string"}, {"name": "amount", "type": "long"},
        {"name": "channel", "type": ["null", "string"], "default": null}]}"#;

    fn frame(schema: &str, id: u32, user: &str, amount: i64) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(schema).unwrap();
        let mut fields =
            vec![("user".to_owned(), Avro::String(user.into())), ("amount".to_owned(), Avro::Long(amount))];
        if matches!(&schema, apache_avro::Schema::Record(r) if r.fields.len() == 3) {
            fields.push(("channel".to_owned(), Avro::Union(1, Box::new(Avro::String("web".into())))));
        }
        let mut out = vec![0];
        out.extend(id.to_be_bytes());
        out.extend(apache_avro::to_avro_datum(&schema, Avro::Record(fields)).unwrap());
        out
    }

    /// Decodes `payloads` with an Avro source reading `registry`, `extra` added to its settings.
    fn decode(registry: &SchemaRegistry, extra: &str, payloads: &[Vec<u8>]) -> Decoded {
        let spec = format!(
            "source: {{kafka: {{bootstrapServers: k:9092, topic: in, format: avro, \
             schemaRegistry: {{url: \"{}\"}}{extra}}}}}\nsink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}",
            registry.url()
        );
        let source = JobDocument::parse(&spec).unwrap().spec.source.kafka;
        let files = FormatFiles { secrets: SecretMounts::new("/nonexistent"), descriptor_set: None };
        let decoder = Decoder::new(&source, &BTreeSet::new(), &files).unwrap();
        let records: Vec<RawRecord<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord {
                payload: Some(p),
                key: None,
                partition: 0,
                offset: 100 + i as i64,
                timestamp: Some(1),
                headers: None,
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(decoder.prepare(&records)).unwrap();
        decoder.decode(&records)
    }

    #[test]
    fn two_writer_versions_decode_in_offset_order_as_the_newest_and_bad_records_fail_alone() {
        let registry = SchemaRegistry::start().unwrap();
        let (v1, v2) = (registry.register("in-value", V1), registry.register("in-value", V2));
        let truncated = frame(V1, v1, "c", 3)[..7].to_vec();
        let payloads = [
            frame(V1, v1, "a", 1),
            frame(V2, v2, "b", 2),
            b"{}".to_vec(),
            truncated,
            frame(V1, v1, "d", 4),
            frame(V1, 999, "e", 5),
            frame(V2, v2, "f", 6),
        ];
        let decoded = decode(&registry, "", &payloads);
        let failed: Vec<usize> = decoded.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [2, 3, 5], "{:?}", decoded.errors);
        assert!(decoded.errors[2].1.contains("schema id 999 is not in the registry"), "{:?}", decoded.errors);
        let batch = decoded.batch.unwrap();
        let users: Vec<&str> = batch.column_by_name("user").unwrap().as_string::<i32>().iter().flatten().collect();
        assert_eq!(users, ["a", "b", "d", "f"]);
        assert_eq!(batch.column_by_name(OFFSET).unwrap().as_primitive::<Int64Type>().values(), &[100, 101, 104, 106]);
        let channel = batch.column_by_name("channel").unwrap().as_string::<i32>();
        assert_eq!(
            channel.iter().collect::<Vec<_>>(),
            [None, Some("web"), None, Some("web")],
            "v1 rows get the default"
        );
        assert_eq!(registry.lookups(v1), 1);
    }

    #[test]
    fn a_stray_record_of_another_type_fails_alone_even_with_a_newer_id() {
        let registry = SchemaRegistry::start().unwrap();
        let v1 = registry.register("in-value", V1);
        let other_schema = r#"{"type": "record", "name": "Refund", "fields": [
            {"name": "user", "type": "string"}, {"name": "amount", "type": "long"}]}"#;
        let other = registry.register("refunds-value", other_schema);
        let payloads = [frame(V1, v1, "a", 1), frame(other_schema, other, "x", 9), frame(V1, v1, "b", 2)];
        let decoded = decode(&registry, "", &payloads);
        assert_eq!(decoded.errors.len(), 1, "{:?}", decoded.errors);
        assert_eq!(decoded.errors[0].0, 1);
        assert!(decoded.errors[0].1.contains("record type Refund is not the batch's Payment"), "{:?}", decoded.errors);
        assert_eq!(decoded.batch.unwrap().num_rows(), 2);
    }

    #[test]
    fn declared_fields_select_and_cast_avro_columns() {
        let registry = SchemaRegistry::start().unwrap();
        let v1 = registry.register("in-value", V1);
        let extra = ", schema: [{name: amount, type: double}]";
        let batch = decode(&registry, extra, &[frame(V1, v1, "a", 7)]).batch.unwrap();
        assert_eq!(batch.column(0).as_primitive::<Float64Type>().value(0), 7.0);
        assert!(batch.column_by_name("user").is_none(), "undeclared fields are left out");
    }

    #[test]
    fn a_frame_is_magic_zero_then_a_big_endian_id() {
        let payload = [0, 0, 0, 1, 2, 9, 9];
        assert_eq!(split_frame(Some(&payload)), Ok((258, &[9, 9][..])));
        assert_eq!(split_frame(Some(&[0, 0, 0, 0, 7])), Ok((7, &[][..])));
    }

    #[test]
    fn bad_frames_say_why() {
        assert_eq!(split_frame(None), Err(FrameError::Empty));
        assert_eq!(split_frame(Some(&[0, 0, 1])), Err(FrameError::Short(3)));
        assert_eq!(split_frame(Some(b"{\"a\":1}")), Err(FrameError::Magic(b'{')));
    }

    #[test]
    fn the_writer_schema_is_a_record_named_after_the_job_with_nullable_unions() {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("window_start", DataType::Utf8, false),
            Field::new("total", DataType::Float64, true),
            Field::new("payments", DataType::Int64, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())), false),
        ]);
        let (arrow, avro) = writer_schema(&schema, "spend-per-user").unwrap();
        let json: serde_json::Value = serde_json::from_str(&avro.json_string).unwrap();
        assert_eq!(json["type"], "record");
        assert_eq!(json["name"], "spend_per_user");
        assert_eq!(json["namespace"], "weir");
        let fields = json["fields"].as_array().unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["user_id", "window_start", "total", "payments", "at"]);
        assert_eq!(fields[0]["type"], serde_json::json!(["null", "string"]));
        assert_eq!(fields[1]["type"], "string");
        assert_eq!(fields[2]["type"], serde_json::json!(["null", "double"]));
        assert_eq!(fields[3]["type"], serde_json::json!(["null", "long"]));
        assert_eq!(fields[4]["type"]["logicalType"], "timestamp-millis");
        assert_eq!(arrow.fields().len(), 5);
    }

    #[test]
    fn avro_names_replace_what_avro_does_not_allow() {
        assert_eq!(avro_name("spend-per-user.v2"), "spend_per_user_v2");
        assert_eq!(avro_name("1st"), "_1st");
    }
}

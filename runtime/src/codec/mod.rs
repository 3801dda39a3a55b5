//! Kafka payloads to Arrow batches and back, in the formats a StreamJob names: JSON
//! ([`json`]), Avro in the Confluent Schema Registry wire format ([`avro`], schemas from
//! [`registry`]) and Protobuf described by a descriptor set ([`protobuf`], source only).
//!
//! Decoding adds the engine's hidden columns (event time, offset, and the headers that travel
//! to the sink) and the Kafka metadata fields the pipeline uses (`_key`, `_topic`,
//! `_partition`, `_offset`, `_timestamp`, `_headers`). A record that cannot be decoded is
//! reported with its error, never fatal.
//!
//! The runner sees one [`Decoder`] and one [`Encoder`]: `prepare` does what needs the
//! network (schema lookups and registrations) before the synchronous `decode`/`encode`.

pub mod avro;
mod columns;
pub mod json;
pub mod protobuf;
pub mod registry;

use std::{collections::BTreeSet, path::PathBuf};

use arrow::{
    array::{Array, AsArray, MapArray, RecordBatch},
    compute::kernels::cast::cast,
    datatypes::{DataType, Int64Type},
    error::ArrowError,
};
use rdkafka::message::{BorrowedHeaders, Headers};
use weir_crds::{Format, KafkaSink, KafkaSource};

use self::columns::event_time_millis;
pub use self::{
    avro::{AvroDecoder, AvroEncoder},
    columns::declared_schema,
    json::{JsonDecoder, encode_json},
    protobuf::ProtobufDecoder,
    registry::{Registry, RegistryError},
};
use crate::{
    engine::{EVENT_TIME, HEADERS, is_hidden},
    kafka::config::{SecretMounts, Side},
};

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

/// A record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The record key, from the sink's `keyField`.
    pub key: Option<Vec<u8>>,
    /// The payload, in the sink's format.
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

/// A format could not be set up, or results could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The job's format settings cannot work (named in the message).
    #[error("{0}")]
    Config(String),
    /// The schema registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Results could not be encoded.
    #[error("encoding results: {0}")]
    Encode(#[from] ArrowError),
}

/// Files the formats read besides the job: registry credentials (under the secrets folder,
/// `<side>-registry/{username,password}`) and the Protobuf descriptor set.
#[derive(Debug, Clone)]
pub struct FormatFiles {
    /// Where the operator mounts Secrets.
    pub secrets: SecretMounts,
    /// The serialized `FileDescriptorSet` of a `protobuf` source.
    pub descriptor_set: Option<PathBuf>,
}

/// Decodes the source topic's payloads in its format.
#[derive(Debug)]
pub enum Decoder {
    /// One JSON object per record.
    Json(JsonDecoder),
    /// Confluent-framed Avro.
    Avro(Box<AvroDecoder>),
    /// Protobuf messages of one type.
    Protobuf(ProtobufDecoder),
}

impl Decoder {
    /// The decoder of `source`'s format, adding the metadata fields named in `referenced`.
    pub fn new(source: &KafkaSource, referenced: &BTreeSet<String>, files: &FormatFiles) -> Result<Self, CodecError> {
        Ok(match source.format {
            Format::Json => Self::Json(JsonDecoder::new(source, referenced)),
            Format::Avro => {
                let settings = source
                    .schema_registry
                    .as_ref()
                    .ok_or_else(|| CodecError::Config("spec.source.kafka: format avro needs schemaRegistry".into()))?;
                let registry = Registry::new(settings, Side::Source, &files.secrets, &source.retry)?;
                Self::Avro(Box::new(AvroDecoder::new(source, referenced, registry)))
            }
            Format::Protobuf => Self::Protobuf(ProtobufDecoder::new(source, referenced, files)?),
        })
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub fn carrying(self, carry: HeaderCarry) -> Self {
        match self {
            Self::Json(d) => Self::Json(d.carrying(carry)),
            Self::Avro(d) => Self::Avro(Box::new(d.carrying(carry))),
            Self::Protobuf(d) => Self::Protobuf(d.carrying(carry)),
        }
    }

    /// Looks up what decoding `records` needs (Avro writer schemas not seen yet). Fails only
    /// when the registry cannot answer; an id it does not know fails its records alone.
    pub async fn prepare(&self, records: &[RawRecord<'_>]) -> Result<(), CodecError> {
        match self {
            Self::Avro(d) => Ok(d.prepare(records).await?),
            Self::Json(_) | Self::Protobuf(_) => Ok(()),
        }
    }

    /// Decodes `records` into one batch (after [`Decoder::prepare`]).
    pub fn decode(&self, records: &[RawRecord<'_>]) -> Decoded {
        match self {
            Self::Json(d) => d.decode(records),
            Self::Avro(d) => d.decode(records),
            Self::Protobuf(d) => d.decode(records),
        }
    }
}

/// Encodes results in the sink topic's format.
#[derive(Debug)]
pub enum Encoder {
    /// One JSON object per record.
    Json,
    /// Confluent-framed Avro, its schema registered under `<topic>-value`.
    Avro(Box<AvroEncoder>),
}

impl Encoder {
    /// The encoder of `sink`'s format; Avro records are named `record_name` (the job's name).
    pub fn new(sink: &KafkaSink, record_name: &str, secrets: &SecretMounts) -> Result<Self, CodecError> {
        Ok(match sink.format {
            Format::Json => Self::Json,
            Format::Avro => {
                let settings = sink
                    .schema_registry
                    .as_ref()
                    .ok_or_else(|| CodecError::Config("spec.sink.kafka: format avro needs schemaRegistry".into()))?;
                let registry = Registry::new(settings, Side::Sink, secrets, &sink.retry)?;
                Self::Avro(Box::new(AvroEncoder::new(registry, &sink.topic, record_name)))
            }
            Format::Protobuf => return Err(CodecError::Config("spec.sink.kafka: the sink writes json or avro".into())),
        })
    }

    /// Registers the writer schemas `batches` need (Avro), once per distinct schema.
    pub async fn prepare(&self, batches: &[RecordBatch]) -> Result<(), CodecError> {
        match self {
            Self::Json => Ok(()),
            Self::Avro(e) => e.prepare(batches).await,
        }
    }

    /// Encodes result rows, one record each, without the hidden columns (after
    /// [`Encoder::prepare`]).
    pub fn encode(&self, batch: &RecordBatch, layout: Layout<'_>) -> Result<Vec<Encoded>, CodecError> {
        match self {
            Self::Json => Ok(encode_json(batch, layout)?),
            Self::Avro(e) => e.encode(batch, layout),
        }
    }
}

/// The columns of `batch` a sink writes: all but the engine's hidden ones.
fn visible(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let shown: Vec<usize> = (0..batch.num_columns()).filter(|&i| !is_hidden(schema.field(i).name())).collect();
    batch.project(&shown)
}

/// Each row of `batch` as a record: `payload(row)` around the key (`layout.key_field`), the
/// timestamp (`layout.timestamp_field`, else the event time) and the carried headers, all
/// read from `projected`, the visible columns, or from the hidden ones.
fn envelope(
    batch: &RecordBatch,
    projected: &RecordBatch,
    layout: Layout<'_>,
    mut payload: impl FnMut(usize) -> Vec<u8>,
) -> Result<Vec<Encoded>, ArrowError> {
    let keys = match layout.key_field.and_then(|k| projected.column_by_name(k)) {
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
        let key = keys.as_ref().and_then(|k| {
            let k = k.as_string::<i32>();
            k.is_valid(row).then(|| k.value(row).as_bytes().to_vec())
        });
        let timestamp = times.as_ref().and_then(|t| t.is_valid(row).then(|| t.value(row)));
        let headers = carried.map(|map| map_entries(map, row)).unwrap_or_default();
        out.push(Encoded { key, payload: payload(row), timestamp, headers });
    }
    Ok(out)
}

/// The entries of row `row` of a map of text to text.
pub(crate) fn map_entries(map: &MapArray, row: usize) -> Vec<(String, Option<String>)> {
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

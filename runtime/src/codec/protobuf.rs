//! Protobuf payloads: each record is one message of the configured type, described by a
//! serialized `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`) and
//! decoded as a prost-reflect dynamic message.
//!
//! Columns follow the message's fields, by their `.proto` names, all nullable:
//! - numbers, `bool` and `string` as the matching Arrow type; enums as their value names;
//!   `bytes` as base64 text;
//! - nested messages as struct columns (not flattened: the SQL names top-level fields, and a
//!   struct keeps its shape through to a JSON sink); repeated fields as lists; maps as maps
//!   with text keys;
//! - `google.protobuf.Timestamp` as a UTC timestamp (usable as event time), the wrapper types
//!   as their nullable value, `Duration` and `FieldMask` as text.
//!
//! Recursive messages and `Any`, `Struct`, `Value`, `ListValue` and `Empty` fields have no
//! fixed columns: the job refuses to start and names the field. A payload that is not a valid
//! message fails its record alone.

use std::{collections::BTreeSet, sync::Arc};

use arrow::{
    array::RecordBatch,
    datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
    json::ReaderBuilder,
};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde::{Serialize, Serializer};
use weir_crds::KafkaSource;

use super::{
    CodecError, Decoded, FormatFiles, HeaderCarry, RawRecord,
    columns::{Extras, conform_rows, declared_schema},
};

/// Messages go to Arrow through arrow-json's serde path, in the proto3 JSON mapping with the
/// `.proto` field names, 64-bit integers as numbers and every field present.
const JSON: SerializeOptions =
    SerializeOptions::new().stringify_64_bit_integers(false).use_proto_field_name(true).skip_default_fields(false);

/// Decodes Protobuf payloads of one source topic.
#[derive(Debug)]
pub struct ProtobufDecoder {
    message: MessageDescriptor,
    schema: SchemaRef,
    declared: Option<SchemaRef>,
    extras: Extras,
}

impl ProtobufDecoder {
    /// A decoder for `source`, reading its descriptor set from `files`.
    pub fn new(source: &KafkaSource, referenced: &BTreeSet<String>, files: &FormatFiles) -> Result<Self, CodecError> {
        let settings = source.protobuf.as_ref().ok_or_else(|| {
            CodecError::Config(
                "spec.source.kafka: format protobuf needs protobuf (descriptor set and message type)".into(),
            )
        })?;
        let path = files.descriptor_set.as_ref().ok_or_else(|| {
            CodecError::Config(
                "format protobuf needs the descriptor set file: pass --descriptor-set (the operator mounts \
                 spec.source.kafka.protobuf.descriptorSet there)"
                    .into(),
            )
        })?;
        let bytes = std::fs::read(path)
            .map_err(|e| CodecError::Config(format!("reading the protobuf descriptor set {}: {e}", path.display())))?;
        let message = message_descriptor(&bytes, &settings.message_type)?;
        let schema = arrow_schema(&message)?;
        Ok(Self { message, schema, declared: declared_schema(&source.schema), extras: Extras::new(source, referenced) })
    }

    /// Also carries these headers of each record, in a hidden column, to the sink.
    pub fn carrying(mut self, carry: HeaderCarry) -> Self {
        self.extras = self.extras.carrying(carry);
        self
    }

    /// Decodes `records` into one batch.
    pub fn decode(&self, records: &[RawRecord<'_>]) -> Decoded {
        let mut errors = Vec::new();
        let mut messages = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let Some(payload) = record.payload else {
                errors.push((i, "empty payload".to_owned()));
                continue;
            };
            match DynamicMessage::decode(self.message.clone(), payload) {
                Ok(message) => messages.push((i, message)),
                Err(e) => errors.push((i, format!("invalid {} message: {e}", self.message.full_name()))),
            }
        }
        let mut good = Vec::with_capacity(messages.len());
        let decoded = self.to_arrow(&messages, &mut good, &mut errors).and_then(|batch| match batch {
            Some(batch) => conform_rows(batch, self.declared.as_ref(), &mut good, &mut errors).map(Some),
            None => Ok(None),
        });
        self.extras.finish(decoded, records, &good, errors)
    }

    /// The messages as one batch; when the batch fails as a whole, message by message.
    fn to_arrow(
        &self,
        messages: &[(usize, DynamicMessage)],
        good: &mut Vec<usize>,
        errors: &mut Vec<(usize, String)>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        if messages.is_empty() {
            return Ok(None);
        }
        let builder = || ReaderBuilder::new(self.schema.clone()).with_coerce_primitive(true);
        let all: Vec<AsJson<'_>> = messages.iter().map(|(_, m)| AsJson(m)).collect();
        let mut decoder = builder().with_batch_size(messages.len()).build_decoder()?;
        if decoder.serialize(&all).is_ok()
            && let Ok(batch) = decoder.flush()
        {
            good.extend(messages.iter().map(|(i, _)| *i));
            return Ok(batch);
        }
        let mut decoder = builder().with_batch_size(messages.len()).build_decoder()?;
        for ((i, _), one) in messages.iter().zip(&all) {
            let mut probe = builder().build_decoder()?;
            match probe.serialize(std::slice::from_ref(one)).and_then(|()| probe.flush()) {
                Ok(_) => {
                    decoder.serialize(std::slice::from_ref(one))?;
                    good.push(*i);
                }
                Err(e) => errors.push((*i, format!("message does not fit its columns: {e}"))),
            }
        }
        decoder.flush()
    }
}

/// A message serialized with [`JSON`]'s options.
struct AsJson<'a>(&'a DynamicMessage);

impl Serialize for AsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &JSON)
    }
}

/// The descriptor of `message_type` in the serialized `FileDescriptorSet` `descriptor_set`.
pub fn message_descriptor(descriptor_set: &[u8], message_type: &str) -> Result<MessageDescriptor, CodecError> {
    let pool = DescriptorPool::decode(descriptor_set)
        .map_err(|e| CodecError::Config(format!("the protobuf descriptor set is not valid: {e}")))?;
    let wanted = message_type.trim_start_matches('.');
    pool.get_message_by_name(wanted).ok_or_else(|| {
        let known: Vec<String> = pool.all_messages().map(|m| m.full_name().to_owned()).take(20).collect();
        CodecError::Config(format!(
            "message type {wanted} is not in the protobuf descriptor set (it has: {})",
            known.join(", ")
        ))
    })
}

/// The Arrow schema of `message`'s columns (see the module documentation).
pub fn arrow_schema(message: &MessageDescriptor) -> Result<SchemaRef, CodecError> {
    let mut path = vec![message.full_name().to_owned()];
    let fields = message_fields(message, message.name(), &mut path).map_err(CodecError::Config)?;
    Ok(Arc::new(Schema::new(fields)))
}

/// The fields of `message`; `at` names where it is, `path` the messages around it.
fn message_fields(message: &MessageDescriptor, at: &str, path: &mut Vec<String>) -> Result<Fields, String> {
    message
        .fields()
        .map(|field| {
            let at = format!("{at}.{}", field.name());
            Ok(Field::new(field.name(), field_type(&field, &at, path)?, true))
        })
        .collect()
}

fn field_type(field: &FieldDescriptor, at: &str, path: &mut Vec<String>) -> Result<DataType, String> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Err(format!("protobuf field {at}: a map without an entry message"));
        };
        let value = entry.map_entry_value_field();
        let value_type = kind_type(&value.kind(), at, path)?;
        let entries =
            Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", value_type, true)]);
        return Ok(DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false));
    }
    let item = kind_type(&field.kind(), at, path)?;
    Ok(if field.is_list() { DataType::List(Arc::new(Field::new("item", item, true))) } else { item })
}

fn kind_type(kind: &Kind, at: &str, path: &mut Vec<String>) -> Result<DataType, String> {
    Ok(match kind {
        Kind::Double => DataType::Float64,
        Kind::Float => DataType::Float32,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => DataType::Int64,
        Kind::Uint32 | Kind::Fixed32 => DataType::UInt32,
        Kind::Uint64 | Kind::Fixed64 => DataType::UInt64,
        Kind::Bool => DataType::Boolean,
        Kind::String | Kind::Bytes | Kind::Enum(_) => DataType::Utf8,
        Kind::Message(message) => return message_type(message, at, path),
    })
}

fn message_type(message: &MessageDescriptor, at: &str, path: &mut Vec<String>) -> Result<DataType, String> {
    let name = message.full_name();
    Ok(match name {
        "google.protobuf.Timestamp" => DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        "google.protobuf.Duration" | "google.protobuf.FieldMask" => DataType::Utf8,
        "google.protobuf.DoubleValue" => DataType::Float64,
        "google.protobuf.FloatValue" => DataType::Float32,
        "google.protobuf.Int64Value" => DataType::Int64,
        "google.protobuf.UInt64Value" => DataType::UInt64,
        "google.protobuf.Int32Value" => DataType::Int32,
        "google.protobuf.UInt32Value" => DataType::UInt32,
        "google.protobuf.BoolValue" => DataType::Boolean,
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => DataType::Utf8,
        "google.protobuf.Any"
        | "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue"
        | "google.protobuf.Empty" => {
            return Err(format!("protobuf field {at}: {name} has no fixed columns; it is not supported"));
        }
        _ if path.iter().any(|p| p == name) => {
            return Err(format!("protobuf field {at}: {name} contains itself; recursive messages are not supported"));
        }
        _ if message.fields().len() == 0 => {
            return Err(format!("protobuf field {at}: {name} has no fields"));
        }
        _ => {
            path.push(name.to_owned());
            let fields = message_fields(message, at, path);
            path.pop();
            DataType::Struct(fields?)
        }
    })
}

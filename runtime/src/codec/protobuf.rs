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

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use prost_reflect::{
        Value,
        prost::Message,
        prost_types::{
            DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
            FileDescriptorSet, MessageOptions,
            field_descriptor_proto::{Label, Type},
        },
    };
    use weir_crds::JobDocument;

    use super::*;
    use crate::kafka::config::SecretMounts;

    fn field(name: &str, number: i32, kind: Type, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(kind as i32),
            label: Some(Label::Optional as i32),
            type_name: type_name.map(Into::into),
            ..FieldDescriptorProto::default()
        }
    }

    fn repeated(field: FieldDescriptorProto) -> FieldDescriptorProto {
        FieldDescriptorProto { label: Some(Label::Repeated as i32), ..field }
    }

    fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto { name: Some(name.into()), field: fields, ..DescriptorProto::default() }
    }

    /// `t.Order`: scalars, an enum, a nested message, a repeated field, a map and a
    /// Timestamp; `t.Node` contains itself; `t.Boxed` holds an `Any`.
    fn descriptor_set() -> Vec<u8> {
        let timestamp = FileDescriptorProto {
            name: Some("google/protobuf/timestamp.proto".into()),
            package: Some("google.protobuf".into()),
            message_type: vec![message(
                "Timestamp",
                vec![field("seconds", 1, Type::Int64, None), field("nanos", 2, Type::Int32, None)],
            )],
            syntax: Some("proto3".into()),
            ..FileDescriptorProto::default()
        };
        let any = FileDescriptorProto {
            name: Some("google/protobuf/any.proto".into()),
            package: Some("google.protobuf".into()),
            message_type: vec![message(
                "Any",
                vec![field("type_url", 1, Type::String, None), field("value", 2, Type::Bytes, None)],
            )],
            syntax: Some("proto3".into()),
            ..FileDescriptorProto::default()
        };
        let counts_entry = DescriptorProto {
            options: Some(MessageOptions { map_entry: Some(true), ..MessageOptions::default() }),
            ..message("CountsEntry", vec![field("key", 1, Type::String, None), field("value", 2, Type::Int64, None)])
        };
        let order = DescriptorProto {
            nested_type: vec![counts_entry],
            ..message(
                "Order",
                vec![
                    field("id", 1, Type::Int64, None),
                    field("price", 2, Type::Double, None),
                    field("status", 3, Type::Enum, Some(".t.Status")),
                    field("customer", 4, Type::Message, Some(".t.Customer")),
                    repeated(field("tags", 5, Type::String, None)),
                    repeated(field("counts", 6, Type::Message, Some(".t.Order.CountsEntry"))),
                    field("at", 7, Type::Message, Some(".google.protobuf.Timestamp")),
                ],
            )
        };
        let status = EnumDescriptorProto {
            name: Some("Status".into()),
            value: ["UNKNOWN", "PAID"]
                .iter()
                .zip(0..)
                .map(|(name, number)| EnumValueDescriptorProto {
                    name: Some((*name).into()),
                    number: Some(number),
                    ..EnumValueDescriptorProto::default()
                })
                .collect(),
            ..EnumDescriptorProto::default()
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            dependency: vec!["google/protobuf/timestamp.proto".into(), "google/protobuf/any.proto".into()],
            message_type: vec![
                order,
                message("Customer", vec![field("name", 1, Type::String, None)]),
                message("Node", vec![field("child", 1, Type::Message, Some(".t.Node"))]),
                message("Boxed", vec![field("inner", 1, Type::Message, Some(".google.protobuf.Any"))]),
            ],
            enum_type: vec![status],
            syntax: Some("proto3".into()),
            ..FileDescriptorProto::default()
        };
        FileDescriptorSet { file: vec![timestamp, any, file] }.encode_to_vec()
    }

    fn decoder(message_type: &str) -> Result<ProtobufDecoder, CodecError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.pb");
        std::fs::write(&path, descriptor_set()).unwrap();
        let spec = format!(
            "source: {{kafka: {{bootstrapServers: k:9092, topic: in, format: protobuf, protobuf: \
             {{descriptorSet: {{name: d, key: k}}, messageType: {message_type}}}}}}}\n\
             sink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}"
        );
        let source = JobDocument::parse(&spec).unwrap().spec.source.kafka;
        let files = FormatFiles { secrets: SecretMounts::new(dir.path()), descriptor_set: Some(path) };
        ProtobufDecoder::new(&source, &BTreeSet::new(), &files)
    }

    fn order(decoder: &ProtobufDecoder, id: i64) -> Vec<u8> {
        let pool = decoder.message.parent_pool();
        let mut order = DynamicMessage::new(decoder.message.clone());
        order.set_field_by_name("id", Value::I64(id));
        order.set_field_by_name("price", Value::F64(9.5));
        order.set_field_by_name("status", Value::EnumNumber(1));
        let mut customer = DynamicMessage::new(pool.get_message_by_name("t.Customer").unwrap());
        customer.set_field_by_name("name", Value::String("ada".into()));
        order.set_field_by_name("customer", Value::Message(customer));
        order.set_field_by_name("tags", Value::List(vec![Value::String("a".into()), Value::String("b".into())]));
        let mut at = DynamicMessage::new(pool.get_message_by_name("google.protobuf.Timestamp").unwrap());
        at.set_field_by_name("seconds", Value::I64(1_700_000_000));
        at.set_field_by_name("nanos", Value::I32(250_000_000));
        order.set_field_by_name("at", Value::Message(at));
        order.encode_to_vec()
    }

    fn raw(payloads: &[Vec<u8>]) -> Vec<RawRecord<'_>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord {
                payload: Some(p),
                key: None,
                partition: 0,
                offset: i as i64,
                timestamp: Some(1),
                headers: None,
            })
            .collect()
    }

    #[test]
    fn fields_become_columns_nested_messages_structs_and_repeated_fields_lists() {
        let decoder = decoder("t.Order").unwrap();
        let types: Vec<(&str, &DataType)> =
            decoder.schema.fields().iter().map(|f| (f.name().as_str(), f.data_type())).collect();
        assert_eq!(types[0], ("id", &DataType::Int64));
        assert_eq!(types[2], ("status", &DataType::Utf8));
        assert!(matches!(types[3].1, DataType::Struct(fields) if fields[0].name() == "name"));
        assert!(matches!(types[4].1, DataType::List(item) if item.data_type() == &DataType::Utf8));
        assert!(matches!(types[5].1, DataType::Map(..)));
        assert_eq!(types[6].1, &DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())));
    }

    #[test]
    fn messages_decode_and_a_malformed_payload_fails_alone() {
        let decoder = decoder("t.Order").unwrap();
        let payloads = [order(&decoder, 1), vec![0xff, 0xff, 0xff], order(&decoder, 3)];
        let decoded = decoder.decode(&raw(&payloads));
        assert_eq!(decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        let batch = decoded.batch.unwrap();
        assert_eq!(batch.column_by_name("id").unwrap().as_primitive::<Int64Type>().values(), &[1, 3]);
        assert_eq!(batch.column_by_name("status").unwrap().as_string::<i32>().value(0), "PAID");
        let customer = batch.column_by_name("customer").unwrap().as_struct();
        assert_eq!(customer.column(0).as_string::<i32>().value(1), "ada");
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["a", "b"]);
        let at = batch.column_by_name("at").unwrap().as_primitive::<TimestampMillisecondType>();
        assert_eq!(at.value(0), 1_700_000_000_250);
        assert!(!at.is_null(1));
    }

    #[test]
    fn recursive_messages_and_any_are_refused_naming_the_field() {
        let recursive = decoder("t.Node").unwrap_err().to_string();
        assert!(recursive.contains("Node.child") && recursive.contains("recursive"), "{recursive}");
        let any = decoder("t.Boxed").unwrap_err().to_string();
        assert!(any.contains("Boxed.inner") && any.contains("google.protobuf.Any"), "{any}");
    }

    #[test]
    fn an_unknown_message_type_lists_the_types_the_set_has() {
        let error = decoder("t.Missing").unwrap_err().to_string();
        assert!(error.contains("t.Missing is not in") && error.contains("t.Order"), "{error}");
    }
}

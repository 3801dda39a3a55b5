//! Avro and Protobuf payloads through the runtime binary and a real broker: Avro in the
//! Confluent wire format (schemas from a registry stand-in, since no registry can be
//! installed here) written with two schema versions, aggregated per window and written back
//! as Avro that an independent Avro implementation reads; Protobuf messages of a descriptor
//! set aggregated to JSON. Undecodable records are dead-lettered and the rest go on.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use apache_avro::types::Value as Avro;
use common::*;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, Value as Proto,
    prost::Message,
    prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    },
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir_testkit::{broker::Broker, kafka, payments::Totals, registry::SchemaRegistry, wait_until};

/// Creates `<name>-in` with `partitions` partitions, `<name>-out` and `<name>-dlq`.
fn topics(broker: &Broker, name: &str, partitions: u32) {
    create_topics(broker, name, partitions);
    must(broker.create_topic(&format!("{name}-dlq"), 1), "creating the dead-letter topic");
}

/// The payments job of the other broker tests (sum and count per user and 10 s window),
/// `source` and `sink` appended to the source's and sink's Kafka settings.
fn windowed_job(dir: &Path, broker: &Broker, name: &str, source: &str, sink: &str) -> PathBuf {
    let servers = broker.bootstrap();
    let job = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: test}}
spec:
  source:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-in
      partitionedBy: [user_id]
      eventTime: {{field: ts, maxOutOfOrderness: 5s}}
{source}
  pipeline:
    - filter: "amount > 0 AND currency = 'EUR'"
    - keyBy: [user_id]
    - window: {{tumbling: {{size: 10s}}}}
    - aggregate: [{{fn: sum, field: amount, as: total}}, {{fn: count, as: payments}}]
  sink:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-out
      keyField: user_id
{sink}
  deadLetter: {{topic: {name}-dlq}}
"#
    );
    write_job_file(dir, name, &job)
}

fn send_bytes(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8], partition: Option<i32>) {
    let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    must(kafka::send(producer, record), "sending a record");
}

/// The `weir.error` headers of the dead-lettered records.
fn dead_letter_reasons(broker: &Broker, topic: &str, count: usize) -> Vec<String> {
    let records = read_records(broker, topic, count);
    let mut reasons: Vec<String> = records
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "weir.error").map(|(_, v)| v.clone()))
        .collect();
    reasons.sort();
    reasons
}

// ---- Avro ----

const PAYMENT_V1: &str = r#"{"type": "record", "name": "Payment", "namespace": "shop", "fields": [
    {"name": "user_id", "type": "string"},
    {"name": "amount", "type": "long"},
    {"name": "currency", "type": "string"},
    {"name": "ts", "type": "long"}]}"#;

/// Version 2 adds an optional field, as a compatible schema change does.
const PAYMENT_V2: &str = r#"{"type": "record", "name": "Payment", "namespace": "shop", "fields": [
    {"name": "user_id", "type": "string"},
    {"name": "amount", "type": "long"},
    {"name": "currency", "type": "string"},
    {"name": "ts", "type": "long"},
    {"name": "channel", "type": ["null", "string"], "default": null}]}"#;

fn avro_schema(text: &str) -> apache_avro::Schema {
    must(apache_avro::Schema::parse_str(text), "parsing an Avro schema")
}

/// A payment in the Confluent wire format: magic 0, schema id, Avro body.
fn avro_payment(schema: &apache_avro::Schema, id: u32, user: &str, amount: i64, ts: i64) -> Vec<u8> {
    let mut fields = vec![
        ("user_id".to_owned(), Avro::String(user.to_owned())),
        ("amount".to_owned(), Avro::Long(amount)),
        ("currency".to_owned(), Avro::String("EUR".to_owned())),
        ("ts".to_owned(), Avro::Long(ts)),
    ];
    if let apache_avro::Schema::Record(record) = schema
        && record.fields.len() == 5
    {
        fields.push(("channel".to_owned(), Avro::Union(1, Box::new(Avro::String("web".to_owned())))));
    }
    let body = must(apache_avro::to_avro_datum(schema, Avro::Record(fields)), "encoding Avro");
    let mut frame = vec![0];
    frame.extend(id.to_be_bytes());
    frame.extend(body);
    frame
}

/// A union's value, or the value itself.
fn plain(value: &Avro) -> &Avro {
    match value {
        Avro::Union(_, inner) => plain(inner),
        other => other,
    }
}

/// Avro window results read with their registered schemas, by an independent implementation.
fn avro_results(registry: &SchemaRegistry, records: &[kafka::Received]) -> Totals {
    let mut out = BTreeMap::new();
    for record in records {
        let payload = &record.payload;
        assert!(payload.len() > 5 && payload[0] == 0, "not a Confluent Avro frame: {payload:?}");
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        let schema = avro_schema(&registry.schema(id).unwrap_or_else(|| panic!("schema id {id} is not registered")));
        let mut body = &payload[5..];
        let value = must(apache_avro::from_avro_datum(&schema, &mut body, None), "reading an output record");
        assert!(body.is_empty(), "bytes left after the record");
        let Avro::Record(fields) = value else { panic!("not a record: {value:?}") };
        let field =
            |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| plain(v).clone()).unwrap_or(Avro::Null);
        let (Avro::String(user), Avro::String(start), Avro::Long(total), Avro::Long(count)) =
            (field("user_id"), field("window_start"), field("total"), field("payments"))
        else {
            panic!("unexpected output record {fields:?}");
        };
        let start = must(chrono::DateTime::parse_from_rfc3339(&start), "window_start").timestamp_millis();
        assert!(out.insert((user, start), (total, count)).is_none(), "window emitted twice");
    }
    out
}

fn registry_secrets(dir: &Path, username: &str, password: &str) -> PathBuf {
    let secrets = dir.join("secrets");
    for side in ["source", "sink"] {
        let folder = secrets.join(format!("{side}-registry"));
        must(std::fs::create_dir_all(&folder), "creating a secrets folder");
        must(std::fs::write(folder.join("username"), username), "writing a username");
        must(std::fs::write(folder.join("password"), format!("{password}\n")), "writing a password");
    }
    secrets
}

#[test]
fn avro_of_two_schema_versions_aggregates_to_avro_that_another_implementation_reads() {
    let broker = shared_broker();
    let registry = must(SchemaRegistry::start_with_credentials("weir", "s3cret"), "starting the registry");
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "avro-spend";
    topics(broker, name, 2);
    let (v1, v2) = (avro_schema(PAYMENT_V1), avro_schema(PAYMENT_V2));
    let id1 = registry.register(&format!("{name}-in-value"), PAYMENT_V1);
    let id2 = registry.register(&format!("{name}-in-value"), PAYMENT_V2);

    let input = payments(1_000, 10, 0);
    let producer = producer(broker);
    let topic = format!("{name}-in");
    for (i, p) in input.iter().enumerate() {
        let (schema, id) = if i % 2 == 0 { (&v1, id1) } else { (&v2, id2) };
        send_bytes(&producer, &topic, &p.user, &avro_payment(schema, id, &p.user, p.amount, p.ts), None);
        // Undecodable records amid good ones, in the same batches.
        match i {
            100 => send_bytes(&producer, &topic, &p.user, br#"{"user_id": "json"}"#, None),
            200 => send_bytes(&producer, &topic, &p.user, &avro_payment(&v1, 999, &p.user, 1, p.ts), None),
            300 => {
                let truncated = &avro_payment(&v1, id1, &p.user, 1, p.ts)[..8];
                send_bytes(&producer, &topic, &p.user, truncated, None);
            }
            _ => {}
        }
    }
    for partition in 0..2 {
        send_bytes(&producer, &topic, "flush", &avro_payment(&v1, id1, "flush", 0, FLUSH_TS), Some(partition));
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");

    let url = registry.url();
    let format = format!("      format: avro\n      schemaRegistry: {{url: \"{url}\", credentialsSecret: registry}}");
    let job = windowed_job(dir.path(), broker, name, &format, &format);
    let secrets = registry_secrets(dir.path(), "weir", "s3cret");
    let runtime = Runtime::start_with(&job, &["--secrets-dir", &secrets.display().to_string()]);

    let want = expected(&input);
    let got = avro_results(&registry, &read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got.len(), want.len(), "number of window results");
    assert_eq!(got, want);

    let reasons = dead_letter_reasons(broker, &format!("{name}-dlq"), 3);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().all(|r| r.starts_with("decode: ")), "{reasons:?}");
    for cause in ["invalid Avro body", "schema id 999 is not in the registry", "unknown magic byte 0x7b"] {
        assert!(reasons.iter().any(|r| r.contains(cause)), "no dead letter says {cause:?}: {reasons:?}");
    }
    must(
        wait_until(Duration::from_secs(10), "the decode error counter", || {
            runtime.metric(&format!("weir_decode_errors_total{{streamjob=\"{name}\"}}")) == 3.0
        }),
        "decode errors",
    );
    assert_eq!(registry.versions(&format!("{name}-out-value")).len(), 1, "the result schema, registered once");
    assert_eq!((registry.lookups(id1), registry.lookups(id2)), (1, 1), "writer schemas are fetched once");
    assert_eq!(registry.refused(), 0, "every call carried the mounted credentials");
    assert_eq!(runtime.terminate(), Some(0));
}

// ---- Protobuf ----

fn field(name: &str, number: i32, kind: Type, label: Label, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        r#type: Some(kind as i32),
        label: Some(label as i32),
        type_name: type_name.map(str::to_owned),
        json_name: Some(name.to_owned()),
        ..FieldDescriptorProto::default()
    }
}

/// `shop.v1.Payment` with a nested message and a repeated field, as `protoc
/// --descriptor_set_out` would write it.
fn payment_descriptor_set() -> Vec<u8> {
    let optional = Label::Optional;
    let meta = DescriptorProto {
        name: Some("Meta".to_owned()),
        field: vec![field("channel", 1, Type::String, optional, None)],
        ..DescriptorProto::default()
    };
    let payment = DescriptorProto {
        name: Some("Payment".to_owned()),
        field: vec![
            field("user_id", 1, Type::String, optional, None),
            field("amount", 2, Type::Int64, optional, None),
            field("currency", 3, Type::String, optional, None),
            field("ts", 4, Type::Int64, optional, None),
            field("meta", 5, Type::Message, optional, Some(".shop.v1.Meta")),
            field("tags", 6, Type::String, Label::Repeated, None),
        ],
        ..DescriptorProto::default()
    };
    let file = FileDescriptorProto {
        name: Some("shop/v1/payment.proto".to_owned()),
        package: Some("shop.v1".to_owned()),
        message_type: vec![meta, payment],
        syntax: Some("proto3".to_owned()),
        ..FileDescriptorProto::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

fn proto_payment(descriptor: &MessageDescriptor, p: &Payment) -> Vec<u8> {
    let mut message = DynamicMessage::new(descriptor.clone());
    message.set_field_by_name("user_id", Proto::String(p.user.clone()));
    message.set_field_by_name("amount", Proto::I64(p.amount));
    message.set_field_by_name("currency", Proto::String("EUR".to_owned()));
    message.set_field_by_name("ts", Proto::I64(p.ts));
    message.set_field_by_name("tags", Proto::List(vec![Proto::String("card".to_owned())]));
    if let Some(meta) = descriptor.get_field_by_name("meta").and_then(|f| f.kind().as_message().cloned()) {
        let mut nested = DynamicMessage::new(meta);
        nested.set_field_by_name("channel", Proto::String("web".to_owned()));
        message.set_field_by_name("meta", Proto::Message(nested));
    }
    message.encode_to_vec()
}

#[test]
fn protobuf_messages_aggregate_to_json_and_a_malformed_one_is_dead_lettered() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "proto-spend";
    topics(broker, name, 2);
    let set = payment_descriptor_set();
    let descriptor_file = dir.path().join("payment.pb");
    must(std::fs::write(&descriptor_file, &set), "writing the descriptor set");
    let pool = must(DescriptorPool::decode(set.as_slice()), "reading the descriptor set");
    let descriptor = pool.get_message_by_name("shop.v1.Payment").unwrap_or_else(|| panic!("no shop.v1.Payment"));

    let input = payments(1_000, 10, 0);
    let producer = producer(broker);
    let topic = format!("{name}-in");
    for (i, p) in input.iter().enumerate() {
        send_bytes(&producer, &topic, &p.user, &proto_payment(&descriptor, p), None);
        if i == 500 {
            send_bytes(&producer, &topic, &p.user, &[0xff, 0xff, 0xff], None);
        }
    }
    for partition in 0..2 {
        let flush = Payment { user: "flush".into(), amount: 0, ts: FLUSH_TS };
        send_bytes(&producer, &topic, "flush", &proto_payment(&descriptor, &flush), Some(partition));
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");

    let source = "      format: protobuf\n      protobuf: {descriptorSet: {name: payments-proto, key: payment.pb}, \
                  messageType: shop.v1.Payment}";
    let job = windowed_job(dir.path(), broker, name, source, "");
    let runtime = Runtime::start_with(&job, &["--descriptor-set", &descriptor_file.display().to_string()]);

    let want = expected(&input);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got.len(), want.len(), "number of window results");
    assert_eq!(got, want);
    let reasons = dead_letter_reasons(broker, &format!("{name}-dlq"), 1);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].starts_with("decode: invalid shop.v1.Payment message"), "{reasons:?}");
    assert_eq!(runtime.terminate(), Some(0));
}

#[test]
fn a_protobuf_source_without_its_descriptor_set_stops_with_the_reason() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "proto-missing";
    topics(broker, name, 1);
    let source =
        "      format: protobuf\n      protobuf: {descriptorSet: {name: x, key: y}, messageType: shop.v1.Payment}";
    let job = windowed_job(dir.path(), broker, name, source, "");
    let (code, message) = Runtime::until_it_stops(&job, dir.path(), &[]);
    assert_eq!(code, Some(1));
    assert!(message.contains("--descriptor-set"), "{message}");
}

//! Where a StreamJob writes to.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration,
    kafka::{CreateTopic, Format, KafkaProperties, KafkaSecurity, Retry, SchemaRegistry},
};

/// The output of the job. Kafka is the only sink today.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// Write records to a Kafka topic.
    pub kafka: KafkaSink,
}

/// A Kafka topic the job produces to.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format != 'avro' || has(self.schemaRegistry)")
    .message("format avro needs schemaRegistry").field_path(".schemaRegistry"))]
#[x_kube(validation = Rule::new("self.format != 'protobuf'")
    .message("the sink writes json or avro").field_path(".format"))]
#[x_kube(validation = Rule::new("!(self.delivery in ['idempotent', 'exactlyOnce']) || !has(self.acks) || self.acks == 'all'")
    .message("idempotent and exactlyOnce delivery need acks all").field_path(".acks"))]
#[x_kube(validation = Rule::new("self.delivery != 'fireAndForget' || !has(self.acks) || self.acks == '0'")
    .message("fireAndForget delivery sends with acks 0").field_path(".acks"))]
pub struct KafkaSink {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topic to produce to.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Payload encoding: `json` or `avro`.
    #[serde(default)]
    pub format: Format,
    /// Schema registry for `avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistry>,
    /// Output field whose value becomes the Kafka record key. Without it, records have no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub key_field: Option<String>,
    /// Output field whose value becomes the Kafka record timestamp: epoch milliseconds, an
    /// RFC 3339 string or a timestamp. Without it, the record's event time is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub timestamp_field: Option<String>,
    /// Headers added to every produced record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Carry the headers of the consumed record to the records produced from it (rows that
    /// pass filters and selects; an aggregate comes from many records and carries none).
    #[serde(default)]
    pub forward_headers: bool,
    /// W3C trace context: `propagate` (default) carries a consumed record's `traceparent` to
    /// the records produced from it; `start` also gives every other record a new one; `off`.
    #[serde(default)]
    pub trace_context: TraceContext,
    /// Delivery guarantee: `fireAndForget` (acks 0, no retries to rely on), `atLeastOnce`,
    /// `idempotent` (no duplicates from producer retries) or `exactlyOnce` (Kafka
    /// transactions committed with each checkpoint; needs `checkpoint`).
    #[serde(default)]
    pub delivery: Delivery,
    /// What to do with a result larger than the sink accepts (the producer's
    /// `message.max.bytes`, or the topic's `max.message.bytes` when smaller).
    #[serde(default)]
    pub oversize_records: OversizeRecords,
    /// Acknowledgements the producer waits for: `"0"`, `"1"` or `all`. Defaults to `0` for
    /// `fireAndForget`, `1` for `atLeastOnce` and `all` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<Acks>,
    /// Compression codec of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, e.g. `5ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<Duration>,
    /// Most bytes in one produced batch (librdkafka `batch.size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_147_483_647))]
    #[schemars(extend("format" = "int64"))]
    pub batch_size_bytes: Option<u32>,
    /// How long the producer waits for a broker to answer one request, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// How long a record may take to be delivered, retries included, before delivery fails
    /// and the pod restarts from its last commit, e.g. `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_timeout: Option<Duration>,
    /// Retries of transient errors (broker unavailable, leader change, timeouts).
    #[serde(default)]
    pub retry: Retry,
    /// Create the topic with these settings when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_topic: Option<CreateTopic>,
    /// Security protocol and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
    /// librdkafka producer properties passed through.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub properties: KafkaProperties,
}

/// The delivery guarantee of the sink.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Sent without waiting for the broker (acks 0): the fastest, and results are lost
    /// whenever a broker or the network fails.
    FireAndForget,
    /// Every result arrives at least once; a retry or restart may repeat some.
    AtLeastOnce,
    /// Producer retries never duplicate; a restart may still repeat results since the last checkpoint.
    #[default]
    Idempotent,
    /// Every result is committed exactly once, atomically with the source offsets, per checkpoint.
    /// Readers must use `isolation.level=read_committed`.
    ExactlyOnce,
}

/// What happens to a result record larger than the sink accepts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OversizeRecords {
    /// Counted and sent to the dead-letter topic (its first 64 KiB, with the reason); the job
    /// goes on. Without a `deadLetter` topic it is only counted.
    #[default]
    DeadLetter,
    /// The pod stops with an error naming the size and the limit, and the job shows it.
    Fail,
}

/// Producer acknowledgements.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Fire and forget.
    #[serde(rename = "0")]
    None,
    /// The partition leader has written the record.
    #[serde(rename = "1")]
    Leader,
    /// All in-sync replicas have written the record.
    #[serde(rename = "all")]
    All,
}

/// What happens to W3C trace context (`traceparent` headers).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TraceContext {
    /// A consumed record's `traceparent` travels to the records produced from it.
    #[default]
    Propagate,
    /// As `propagate`, and every other produced record starts a new trace.
    Start,
    /// No `traceparent` is written.
    Off,
}

/// Compression codec of produced batches.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// A topic for records the job cannot process: undecodable payloads and late records.
/// Each carries the error in the `weir.error` header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Topic to produce dead letters to.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Brokers of the dead-letter topic. Defaults to the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// Also send records that arrive after their window closed. Otherwise they are only counted.
    #[serde(default)]
    pub late_records: bool,
    /// Create the topic with these settings when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_topic: Option<CreateTopic>,
}

//! Where a StreamJob reads from.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration,
    kafka::{Format, KafkaProperties, KafkaSecurity, ProtobufFormat, Retry, SchemaRegistry},
};

/// The input of the job. Kafka is the only source today.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Read records from a Kafka topic through a consumer group.
    pub kafka: KafkaSource,
}

/// A Kafka topic read through a consumer group: each runtime pod owns some partitions,
/// and all state is kept per owned partition.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format != 'avro' || has(self.schemaRegistry)")
    .message("format avro needs schemaRegistry").field_path(".schemaRegistry"))]
#[x_kube(validation = Rule::new("self.format != 'protobuf' || has(self.protobuf)")
    .message("format protobuf needs protobuf (descriptor set and message type)").field_path(".protobuf"))]
#[x_kube(validation = Rule::new("(self.startOffset == 'timestamp') == has(self.startTimestamp)")
    .message("startTimestamp is required with startOffset timestamp and not allowed otherwise")
    .field_path(".startTimestamp"))]
#[x_kube(validation = Rule::new("!(has(self.groupId) && has(self.groupIdPrefix))")
    .message("set groupId or groupIdPrefix, not both").field_path(".groupIdPrefix"))]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topic to consume.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Consumer group id. Defaults to `<groupIdPrefix><namespace>.<name>` of the StreamJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group_id: Option<String>,
    /// Prefix of the default group id, e.g. `team-a.` for ACLs granted on a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group_id_prefix: Option<String>,
    /// Where a partition without a committed offset or checkpoint starts: `earliest`, `latest`,
    /// or `timestamp` (the first record at or after `startTimestamp`).
    #[serde(default)]
    pub start_offset: StartOffset,
    /// RFC 3339 time to start from with `startOffset: timestamp`, e.g. `2026-11-01T00:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub start_timestamp: Option<String>,
    /// Whether records of open or aborted transactions are read: `readCommitted` (default)
    /// or `readUncommitted`.
    #[serde(default)]
    pub isolation_level: IsolationLevel,
    /// Most records decoded and processed as one batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub batch_size: u32,
    /// Longest wait to fill a batch; a partial batch is processed when it runs out, e.g. `50ms`.
    #[serde(default = "default_batch_timeout")]
    pub batch_timeout: Duration,
    /// Least data a fetch waits for (librdkafka `fetch.min.bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub fetch_min_bytes: Option<u32>,
    /// Longest time a broker holds a fetch to gather `fetchMinBytes` (`fetch.wait.max.ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300_000))]
    #[schemars(extend("format" = "int64"))]
    pub fetch_max_wait_ms: Option<u32>,
    /// Most data fetched per partition at once (`max.partition.fetch.bytes`). Defaults to
    /// 1 MiB; with `maxRecordsPerSecond`, to 32 bytes per record a second (16 KiB to 1 MiB),
    /// so that a throttled pod with a backlog reads its partitions in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_partition_fetch_bytes: Option<u32>,
    /// Most records each pod reads per second, smoothed by a token bucket. Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_records_per_second: Option<u32>,
    /// Retries of transient errors (broker unavailable, leader change, timeouts).
    #[serde(default)]
    pub retry: Retry,
    /// Payload encoding: `json`, `avro` or `protobuf`.
    #[serde(default)]
    pub format: Format,
    /// Schema registry for `avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistry>,
    /// Descriptor set and message type for `protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufFormat>,
    /// Declared fields of the records. Optional; when given, the pipeline's field references
    /// are checked against it before the job starts, and values are read with these types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub schema: Vec<FieldDecl>,
    /// Fields by which the topic is already partitioned. When they cover `keyBy`, the job
    /// aggregates each partition directly; otherwise it repartitions through an internal topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub partitioned_by: Vec<String>,
    /// Event time of each record. Without it, the Kafka record timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTime>,
    /// Security protocol and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
    /// librdkafka consumer properties passed through, e.g. `fetch.min.bytes: "32768"`.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub properties: KafkaProperties,
}

/// Where consumption starts when a partition has no committed offset and no checkpoint.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StartOffset {
    /// The oldest record still on the topic.
    #[default]
    Earliest,
    /// Only records produced after the job starts.
    Latest,
    /// The first record at or after `startTimestamp`.
    Timestamp,
}

/// Which records a consumer sees of transactions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum IsolationLevel {
    /// Only records of committed transactions (and records outside transactions).
    #[default]
    ReadCommitted,
    /// Every record, including those of open and aborted transactions.
    ReadUncommitted,
}

fn default_batch_size() -> u32 {
    4096
}

fn default_batch_timeout() -> Duration {
    std::time::Duration::from_millis(50).into()
}

/// Where a record's event time comes from, and how far out of order records may arrive.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventTime {
    /// Field holding the event time: an integer is epoch milliseconds, a string RFC 3339.
    /// Without it, the Kafka record timestamp is the event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub field: Option<String>,
    /// How late a record may be relative to the newest seen in its partition; the watermark
    /// is the newest event time minus this.
    #[serde(default = "zero_duration")]
    pub max_out_of_orderness: Duration,
    /// A partition that has produced nothing for this long stops holding the watermark back.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// How far ahead of the wall clock an event time may be. A record beyond it (a clock gone
    /// wrong, a typo'd year) is dead-lettered with the reason and does not move the
    /// watermark, which would otherwise make every later record late.
    #[serde(default = "default_max_ahead")]
    pub max_ahead: Duration,
}

impl Default for EventTime {
    fn default() -> Self {
        Self {
            field: None,
            max_out_of_orderness: zero_duration(),
            idle_timeout: default_idle_timeout(),
            max_ahead: default_max_ahead(),
        }
    }
}

/// Clocks of producers may run somewhat ahead; an hour is far more than NTP-kept clocks
/// drift and far less than the window sizes a bad timestamp would wreck.
fn default_max_ahead() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

fn zero_duration() -> Duration {
    std::time::Duration::ZERO.into()
}

fn default_idle_timeout() -> Duration {
    std::time::Duration::from_secs(30).into()
}

/// A declared field of the input records.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldDecl {
    /// Field name as it appears in the payload.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `string`, `long`, `double`, `boolean` or `timestamp`.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether the field may be missing or null.
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The type of a declared field.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Long,
    /// 64-bit floating point.
    Double,
    /// `true` or `false`.
    Boolean,
    /// A point in time: epoch milliseconds or an RFC 3339 string in the payload.
    Timestamp,
}

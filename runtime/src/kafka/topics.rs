//! Topics: partition counts, the largest record a topic takes, creating a topic.

use std::time::Duration;

use rdkafka::{
    Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
};
use tracing::{debug, error, info, warn};
use weir_crds::CreateTopic;

use super::{
    auth::TokenSource,
    clients::{AdminContext, client},
    config,
    retry::{Class, classify_code},
};

/// `partitions` of `topic`, each at `offset`.
pub fn partition_list(topic: &str, partitions: &[i32], offset: Offset) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition_offset(topic, partition, offset)?;
    }
    Ok(list)
}

/// A topic's partition count; 0 when the topic does not exist.
pub fn partition_count<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<usize, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len()))
}

/// librdkafka's default `message.max.bytes`.
pub const LIBRDKAFKA_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Room for the record batch and record framing a broker counts besides key, value and
/// headers (61 bytes of batch header and at most a few dozen of varints).
pub const RECORD_OVERHEAD: usize = 128;
/// The largest record the sink takes: the producer's `message.max.bytes`, lowered (in
/// `properties` too, so batches of small records stay under it) to the topic's
/// `max.message.bytes` when the broker says that is smaller. Not lowered when the broker
/// does not say (no DescribeConfigs right, say): then the broker's refusal is what tells.
pub fn sink_record_limit(properties: &mut config::Properties, token: Option<TokenSource>, topic: &str) -> usize {
    let configured =
        properties.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(LIBRDKAFKA_MAX_MESSAGE_BYTES);
    let topic_limit = match topic_max_message_bytes(properties, token, topic) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(topic, error = %e, "cannot read the sink topic's max.message.bytes; keeping the producer's limit");
            None
        }
    };
    match topic_limit {
        Some(limit) if limit < configured => {
            info!(topic, limit, "the sink topic takes smaller records than the producer; lowering message.max.bytes");
            properties.insert("message.max.bytes".into(), limit.to_string());
            let batch = properties.get("batch.size").and_then(|v| v.parse::<usize>().ok());
            if batch.is_none_or(|b| b > limit) {
                properties.insert("batch.size".into(), limit.to_string());
            }
            limit
        }
        _ => configured,
    }
}

/// The topic's `max.message.bytes`, as the broker reports it.
pub fn topic_max_message_bytes(
    properties: &config::Properties,
    token: Option<TokenSource>,
    topic: &str,
) -> Result<Option<usize>, KafkaError> {
    let admin: AdminClient<AdminContext> = client(properties, AdminContext::new(token))?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = futures::executor::block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options))?;
    Ok(described
        .into_iter()
        .filter_map(Result::ok)
        .find_map(|resource| resource.get("max.message.bytes")?.value.as_ref()?.parse().ok()))
}

/// Creates `topic` as `create` says when it is set and the topic does not exist yet.
pub fn ensure_topic(
    properties: &config::Properties,
    token: Option<TokenSource>,
    topic: &str,
    create: Option<&CreateTopic>,
) -> Result<(), KafkaError> {
    let Some(create) = create else { return Ok(()) };
    let admin: AdminClient<AdminContext> = client(properties, AdminContext::new(token))?;
    let new_topic = NewTopic::new(topic, create.partitions, TopicReplication::Fixed(create.replication_factor));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&new_topic], &options))?;
    for result in results {
        match result {
            Ok(name) => info!(topic = name, partitions = create.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => debug!(topic, "topic exists"),
            Err((name, code)) => {
                error!(topic = name, %code, "creating the topic failed");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// Why producing to `topic` cannot work, when the broker says it does not exist (and does
/// not create topics on request): producing would only fail after the delivery timeout.
pub fn missing_topic(
    metadata: Result<rdkafka::metadata::Metadata, KafkaError>,
    topic: &str,
    create_field: &str,
) -> Option<String> {
    let Ok(metadata) = metadata else {
        // Unreachable brokers are the producer's to retry; only a clear "no such topic" stops.
        return None;
    };
    let unknown = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_some_and(|e| classify_code(e.into()) == Class::Fatal));
    unknown.then(|| {
        format!("topic {topic} does not exist and the broker does not create it: create it, or set {create_field}")
    })
}

//! librdkafka settings from the StreamJob spec: a pure mapping, so every option is tested
//! without a broker. Credentials are read from files the operator mounts from Secrets.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use weir_crds::{
    Acks, Compression, Delivery, IsolationLevel, KafkaSecurity, KafkaSink, KafkaSource, Retry, SaslMechanism,
    StartOffset,
};

/// librdkafka properties, ordered for stable output.
pub type Properties = BTreeMap<String, String>;

/// Which connection a Secret mount belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source topic's brokers.
    Source,
    /// The sink topic's brokers.
    Sink,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Sink => "sink",
        }
    }
}

/// Where the operator mounts Kafka credentials: `<dir>/<side>-credentials/{username,password}`
/// and `<dir>/<side>-tls/{ca.crt,tls.crt,tls.key}`; and schema registry credentials:
/// `<dir>/<side>-registry/{username,password}`.
#[derive(Debug, Clone)]
pub struct SecretMounts {
    dir: PathBuf,
}

/// A credential file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading Kafka credential {path}: {source}")]
pub struct CredentialError {
    path: PathBuf,
    source: std::io::Error,
}

impl SecretMounts {
    /// Mounts under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of a key of the credentials Secret.
    pub fn credential_file(&self, side: Side, key: &str) -> PathBuf {
        self.dir.join(format!("{}-credentials", side.name())).join(key)
    }

    /// The file of a key of the schema registry's credentials Secret (`username`, `password`).
    pub fn registry_file(&self, side: Side, key: &str) -> PathBuf {
        self.dir.join(format!("{}-registry", side.name())).join(key)
    }

    fn credential(&self, side: Side, key: &str) -> Result<String, CredentialError> {
        let path = self.credential_file(side, key);
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|source| CredentialError { path, source })
    }

    fn tls_file(&self, side: Side, key: &str) -> PathBuf {
        self.dir.join(format!("{}-tls", side.name())).join(key)
    }
}

fn security(
    props: &mut Properties,
    security: Option<&KafkaSecurity>,
    side: Side,
    secrets: &SecretMounts,
) -> Result<(), CredentialError> {
    let Some(security) = security else { return Ok(()) };
    props.insert("security.protocol".into(), security.protocol.as_librdkafka().into());
    if let Some(mechanism) = security.sasl_mechanism {
        props.insert("sasl.mechanism".into(), mechanism.as_librdkafka().into());
        // OAUTHBEARER and MSK IAM tokens come from the client context's refresh callback.
        if matches!(mechanism, SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512) {
            props.insert("sasl.username".into(), secrets.credential(side, "username")?);
            props.insert("sasl.password".into(), secrets.credential(side, "password")?);
        }
    }
    if security.tls_secret.is_some() {
        let location = |key: &str| secrets.tls_file(side, key).display().to_string();
        props.insert("ssl.ca.location".into(), location("ca.crt"));
        if Path::new(&location("tls.crt")).exists() {
            props.insert("ssl.certificate.location".into(), location("tls.crt"));
            props.insert("ssl.key.location".into(), location("tls.key"));
        }
    }
    Ok(())
}

/// librdkafka's own retry and reconnect backoff, from the spec's retry policy.
fn backoff(props: &mut Properties, retry: &Retry) {
    let initial = retry.initial_backoff.get().as_millis().max(1).to_string();
    let max = retry.max_backoff.get().as_millis().max(1).to_string();
    props.insert("retry.backoff.ms".into(), initial.clone());
    props.insert("retry.backoff.max.ms".into(), max.clone());
    props.insert("reconnect.backoff.ms".into(), initial);
    props.insert("reconnect.backoff.max.ms".into(), max);
}

fn insert_some(props: &mut Properties, key: &str, value: Option<impl ToString>) {
    if let Some(value) = value {
        props.insert(key.into(), value.to_string());
    }
}

/// What a source read at `records_per_second` fetches of a partition at most, unless
/// `maxPartitionFetchBytes` says: about half a second of small records. With librdkafka's
/// 1 MiB, a throttled pod working through a backlog reads its partitions one fetch at a time,
/// each seconds long (16,000 records of 64 bytes), and the others wait their turn.
fn throttled_fetch_bytes(records_per_second: u32) -> u32 {
    records_per_second.saturating_mul(32).clamp(16 * 1024, 1024 * 1024)
}

/// Consumer settings: manual commits (offsets follow results), cooperative rebalancing,
/// statistics every second for the lag metric.
pub fn consumer(source: &KafkaSource, group_id: &str, secrets: &SecretMounts) -> Result<Properties, CredentialError> {
    let mut props = Properties::new();
    props.insert("bootstrap.servers".into(), source.bootstrap_servers.clone());
    props.insert("group.id".into(), group_id.to_owned());
    props.insert("enable.auto.commit".into(), "false".into());
    props.insert("enable.auto.offset.store".into(), "false".into());
    // From a timestamp, partitions without a position start from the earliest offset and are
    // then sought to the offset of the timestamp (see the runner).
    let reset = match source.start_offset {
        StartOffset::Earliest | StartOffset::Timestamp => "earliest",
        StartOffset::Latest => "latest",
    };
    props.insert("auto.offset.reset".into(), reset.into());
    props.insert("partition.assignment.strategy".into(), "cooperative-sticky".into());
    props.insert("statistics.interval.ms".into(), "1000".into());
    let isolation = match source.isolation_level {
        IsolationLevel::ReadCommitted => "read_committed",
        IsolationLevel::ReadUncommitted => "read_uncommitted",
    };
    props.insert("isolation.level".into(), isolation.into());
    insert_some(&mut props, "fetch.min.bytes", source.fetch_min_bytes);
    insert_some(&mut props, "fetch.wait.max.ms", source.fetch_max_wait_ms);
    let partition_fetch = source.max_partition_fetch_bytes.or(source.max_records_per_second.map(throttled_fetch_bytes));
    insert_some(&mut props, "max.partition.fetch.bytes", partition_fetch);
    backoff(&mut props, &source.retry);
    security(&mut props, source.security.as_ref(), Side::Source, secrets)?;
    props.extend(source.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(props)
}

/// Producer settings for the delivery guarantee, acks, compression, batching, timeouts and
/// retries. Statistics every second feed the sink metrics.
pub fn producer(sink: &KafkaSink, secrets: &SecretMounts) -> Result<Properties, CredentialError> {
    let mut props = Properties::new();
    props.insert("bootstrap.servers".into(), sink.bootstrap_servers.clone());
    let idempotent = matches!(sink.delivery, Delivery::Idempotent | Delivery::ExactlyOnce);
    props.insert("enable.idempotence".into(), idempotent.to_string());
    let acks = match (sink.acks, sink.delivery) {
        (Some(Acks::None), _) | (None, Delivery::FireAndForget) => "0",
        (Some(Acks::Leader), _) | (None, Delivery::AtLeastOnce) => "1",
        (Some(Acks::All), _) | (None, Delivery::Idempotent | Delivery::ExactlyOnce) => "all",
    };
    props.insert("acks".into(), acks.into());
    let compression = match sink.compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    };
    props.insert("compression.type".into(), compression.into());
    insert_some(&mut props, "linger.ms", sink.linger.as_ref().map(|d| d.get().as_millis()));
    insert_some(&mut props, "batch.size", sink.batch_size_bytes);
    insert_some(&mut props, "request.timeout.ms", sink.request_timeout.as_ref().map(|d| d.get().as_millis().max(1)));
    insert_some(&mut props, "message.timeout.ms", sink.delivery_timeout.as_ref().map(|d| d.get().as_millis()));
    // An idempotent producer must not give up on a record it may have written: librdkafka
    // then retries until the delivery timeout, and the retry policy sets only the backoff.
    if !idempotent {
        props.insert("retries".into(), sink.retry.max_retries.to_string());
    }
    backoff(&mut props, &sink.retry);
    props.insert("statistics.interval.ms".into(), "1000".into());
    security(&mut props, sink.security.as_ref(), Side::Sink, secrets)?;
    props.extend(sink.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(props)
}

#[cfg(test)]
mod tests {
    use weir_crds::{JobDocument, StreamJobSpec};

    use super::*;

    fn spec(source_extra: &str, sink_extra: &str) -> StreamJobSpec {
        let text = format!(
            "source: {{kafka: {{bootstrapServers: 'b1:9092,b2:9092', topic: in{source_extra}}}}}\n\
             sink: {{kafka: {{bootstrapServers: 'b3:9092', topic: out{sink_extra}}}}}"
        );
        JobDocument::parse(&text).unwrap().spec
    }

    fn no_secrets() -> SecretMounts {
        SecretMounts::new("/nonexistent")
    }

    #[test]
    fn the_consumer_commits_by_hand_and_rebalances_cooperatively() {
        let props = consumer(&spec("", "").source.kafka, "shop.spend", &no_secrets()).unwrap();
        assert_eq!(props["bootstrap.servers"], "b1:9092,b2:9092");
        assert_eq!(props["group.id"], "shop.spend");
        assert_eq!(props["enable.auto.commit"], "false");
        assert_eq!(props["auto.offset.reset"], "earliest");
        assert_eq!(props["partition.assignment.strategy"], "cooperative-sticky");
        assert!(!props.contains_key("security.protocol"));
    }

    #[test]
    fn start_offset_latest_maps_to_auto_offset_reset() {
        let props = consumer(&spec(", startOffset: latest", "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(props["auto.offset.reset"], "latest");
    }

    #[test]
    fn properties_pass_through() {
        let props =
            consumer(&spec(", properties: {fetch.min.bytes: '32768'}", "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(props["fetch.min.bytes"], "32768");
    }

    #[test]
    fn idempotent_delivery_is_the_default() {
        let props = producer(&spec("", "").sink.kafka, &no_secrets()).unwrap();
        assert_eq!((props["enable.idempotence"].as_str(), props["acks"].as_str()), ("true", "all"));
    }

    #[test]
    fn at_least_once_waits_for_the_leader_only() {
        let props = producer(&spec("", ", delivery: atLeastOnce").sink.kafka, &no_secrets()).unwrap();
        assert_eq!((props["enable.idempotence"].as_str(), props["acks"].as_str()), ("false", "1"));
    }

    #[test]
    fn compression_and_linger_reach_the_producer() {
        let props = producer(&spec("", ", compression: zstd, linger: 20ms").sink.kafka, &no_secrets()).unwrap();
        assert_eq!((props["compression.type"].as_str(), props["linger.ms"].as_str()), ("zstd", "20"));
    }

    #[test]
    fn scram_credentials_are_read_from_the_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("source-credentials")).unwrap();
        std::fs::write(dir.path().join("source-credentials/username"), "alice\n").unwrap();
        std::fs::write(dir.path().join("source-credentials/password"), "s3cret").unwrap();
        let security = ", security: {protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: creds}";
        let props = consumer(&spec(security, "").source.kafka, "g", &SecretMounts::new(dir.path())).unwrap();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!((props["sasl.username"].as_str(), props["sasl.password"].as_str()), ("alice", "s3cret"));
    }

    #[test]
    fn a_missing_credential_file_is_a_clear_error() {
        let security = ", security: {protocol: SASL_SSL, saslMechanism: PLAIN, credentialsSecret: creds}";
        let err = producer(&spec("", security).sink.kafka, &no_secrets()).unwrap_err();
        assert!(err.to_string().contains("sink-credentials/username"), "{err}");
    }

    #[test]
    fn mutual_tls_points_at_the_mounted_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sink-tls")).unwrap();
        for file in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::write(dir.path().join("sink-tls").join(file), "pem").unwrap();
        }
        let security = ", security: {protocol: SSL, tlsSecret: kafka-tls}";
        let props = producer(&spec("", security).sink.kafka, &SecretMounts::new(dir.path())).unwrap();
        assert_eq!(props["security.protocol"], "ssl");
        assert!(props["ssl.certificate.location"].ends_with("sink-tls/tls.crt"));
        assert!(props["ssl.key.location"].ends_with("sink-tls/tls.key"));
    }

    #[test]
    fn fetch_tuning_and_isolation_reach_the_consumer() {
        let extra = ", fetchMinBytes: 65536, fetchMaxWaitMs: 250, maxPartitionFetchBytes: 2097152, \
                     isolationLevel: readUncommitted";
        let props = consumer(&spec(extra, "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(props["fetch.min.bytes"], "65536");
        assert_eq!(props["fetch.wait.max.ms"], "250");
        assert_eq!(props["max.partition.fetch.bytes"], "2097152");
        let throttled = consumer(&spec(", maxRecordsPerSecond: 3000", "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(throttled["max.partition.fetch.bytes"], "96000", "half a second of small records");
        let slow = consumer(&spec(", maxRecordsPerSecond: 10", "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(slow["max.partition.fetch.bytes"], "16384");
        assert_eq!(props["isolation.level"], "read_uncommitted");
        let defaults = consumer(&spec("", "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(defaults["isolation.level"], "read_committed");
        assert!(!defaults.contains_key("fetch.min.bytes"));
    }

    #[test]
    fn a_timestamp_start_resets_to_earliest_before_seeking() {
        let extra = ", startOffset: timestamp, startTimestamp: '2026-11-01T00:00:00Z'";
        let props = consumer(&spec(extra, "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(props["auto.offset.reset"], "earliest");
    }

    #[test]
    fn the_retry_policy_sets_librdkafka_backoff() {
        let retry = ", retry: {maxRetries: 4, initialBackoff: 250ms, maxBackoff: 4s}";
        let source = consumer(&spec(retry, "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!((source["retry.backoff.ms"].as_str(), source["retry.backoff.max.ms"].as_str()), ("250", "4000"));
        assert_eq!(source["reconnect.backoff.max.ms"], "4000");
        let sink = producer(&spec("", &format!(", delivery: atLeastOnce{retry}")).sink.kafka, &no_secrets()).unwrap();
        assert_eq!(sink["retries"], "4");
        assert_eq!(sink["retry.backoff.ms"], "250");
        let idempotent = producer(&spec("", retry).sink.kafka, &no_secrets()).unwrap();
        assert!(!idempotent.contains_key("retries"), "an idempotent producer retries until its delivery timeout");
    }

    #[test]
    fn fire_and_forget_sends_with_acks_zero_and_without_idempotence() {
        let props = producer(&spec("", ", delivery: fireAndForget").sink.kafka, &no_secrets()).unwrap();
        assert_eq!((props["enable.idempotence"].as_str(), props["acks"].as_str()), ("false", "0"));
    }

    #[test]
    fn batching_and_timeouts_reach_the_producer() {
        let extra = ", batchSizeBytes: 131072, requestTimeout: 15s, deliveryTimeout: 2m";
        let props = producer(&spec("", extra).sink.kafka, &no_secrets()).unwrap();
        assert_eq!(props["batch.size"], "131072");
        assert_eq!(props["request.timeout.ms"], "15000");
        assert_eq!(props["message.timeout.ms"], "120000");
    }

    #[test]
    fn every_compression_codec_maps_to_librdkafka() {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let props = producer(&spec("", &format!(", compression: {codec}")).sink.kafka, &no_secrets()).unwrap();
            assert_eq!(props["compression.type"], codec);
        }
    }

    #[test]
    fn oauthbearer_takes_no_username_or_password() {
        let security = ", security: {protocol: SASL_SSL, saslMechanism: OAUTHBEARER, credentialsSecret: token}";
        let props = consumer(&spec(security, "").source.kafka, "g", &no_secrets()).unwrap();
        assert_eq!(props["sasl.mechanism"], "OAUTHBEARER");
        assert!(!props.contains_key("sasl.username") && !props.contains_key("sasl.password"));
    }

    #[test]
    fn msk_iam_rides_on_oauthbearer() {
        let security = ", security: {protocol: SASL_SSL, saslMechanism: AWS_MSK_IAM}";
        let props = producer(&spec("", security).sink.kafka, &no_secrets()).unwrap();
        assert_eq!(
            (props["security.protocol"].as_str(), props["sasl.mechanism"].as_str()),
            ("sasl_ssl", "OAUTHBEARER")
        );
    }
}

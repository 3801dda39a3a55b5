//! librdkafka settings from the StreamJob spec: a pure mapping, so every option is tested
//! without a broker. Credentials are read from files the operator mounts from Secrets.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use weir_crds::{Acks, Compression, Delivery, KafkaSecurity, KafkaSink, KafkaSource, StartOffset};

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
/// and `<dir>/<side>-tls/{ca.crt,tls.crt,tls.key}`.
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

    fn credential(&self, side: Side, key: &str) -> Result<String, CredentialError> {
        let path = self.dir.join(format!("{}-credentials", side.name())).join(key);
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
        props.insert("sasl.username".into(), secrets.credential(side, "username")?);
        props.insert("sasl.password".into(), secrets.credential(side, "password")?);
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

/// Consumer settings: manual commits (offsets follow results), cooperative rebalancing,
/// statistics every second for the lag metric.
pub fn consumer(source: &KafkaSource, group_id: &str, secrets: &SecretMounts) -> Result<Properties, CredentialError> {
    let mut props = Properties::new();
    props.insert("bootstrap.servers".into(), source.bootstrap_servers.clone());
    props.insert("group.id".into(), group_id.to_owned());
    props.insert("enable.auto.commit".into(), "false".into());
    props.insert("enable.auto.offset.store".into(), "false".into());
    let reset = match source.start_offset {
        StartOffset::Earliest => "earliest",
        StartOffset::Latest => "latest",
    };
    props.insert("auto.offset.reset".into(), reset.into());
    props.insert("partition.assignment.strategy".into(), "cooperative-sticky".into());
    props.insert("statistics.interval.ms".into(), "1000".into());
    props.insert("isolation.level".into(), "read_committed".into());
    security(&mut props, source.security.as_ref(), Side::Source, secrets)?;
    props.extend(source.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(props)
}

/// Producer settings for the delivery guarantee, acks, compression and linger.
pub fn producer(sink: &KafkaSink, secrets: &SecretMounts) -> Result<Properties, CredentialError> {
    let mut props = Properties::new();
    props.insert("bootstrap.servers".into(), sink.bootstrap_servers.clone());
    let idempotent = sink.delivery != Delivery::AtLeastOnce;
    props.insert("enable.idempotence".into(), idempotent.to_string());
    let acks = match (sink.acks, sink.delivery) {
        (Some(Acks::None), _) => "0",
        (Some(Acks::Leader), _) => "1",
        (Some(Acks::All), _) => "all",
        (None, Delivery::AtLeastOnce) => "1",
        (None, _) => "all",
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
    if let Some(linger) = &sink.linger {
        props.insert("linger.ms".into(), linger.get().as_millis().to_string());
    }
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
}

//! Kafka connection settings shared by the source, the sink and the dead-letter topic.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// How records are encoded on a topic.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
    /// Avro in the Confluent Schema Registry wire format (needs `schemaRegistry`).
    Avro,
    /// Protobuf messages described by a descriptor set (needs `protobuf`).
    Protobuf,
}

/// Where Avro schemas are looked up, in the Confluent Schema Registry API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRegistry {
    /// Base URL of the registry, e.g. `http://schema-registry:8081`.
    #[schemars(length(min = 1), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Name of a Secret in the StreamJob's namespace with keys `username` and `password`
    /// for HTTP basic authentication, when the registry needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Protobuf decoding settings: a compiled descriptor set and the message to decode.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProtobufFormat {
    /// ConfigMap key holding a `FileDescriptorSet` (output of `protoc --descriptor_set_out`).
    pub descriptor_set: ConfigMapKey,
    /// Fully qualified name of the message type, e.g. `shop.v1.Payment`.
    #[schemars(length(min = 1))]
    pub message_type: String,
}

/// A key in a ConfigMap of the StreamJob's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the ConfigMap (binary data is read from `binaryData`).
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The Kafka security protocol, as librdkafka's `security.protocol`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS; with `tlsSecret` holding a client certificate, mutual TLS.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL authentication without encryption.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether the protocol authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// The value of librdkafka's `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// A SASL mechanism, as librdkafka's `sasl.mechanism`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Username and password sent as they are: only over TLS, or with `allowInsecure`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// A bearer token (e.g. an OIDC JWT) read from the credentials Secret's `token` key and
    /// read again whenever the file changes: only over TLS, or with `allowInsecure`.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
    /// Amazon MSK IAM: a SigV4-signed token from the pod's AWS credentials (environment or a
    /// credentials Secret with `aws_access_key_id` and `aws_secret_access_key`). Always over
    /// TLS. Needs a runtime built with the `msk-iam` feature.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanism`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            // MSK IAM rides on librdkafka's OAUTHBEARER with a token the runtime signs.
            Self::OAuthBearer | Self::AwsMskIam => "OAUTHBEARER",
        }
    }

    /// Whether the secret itself travels to the broker, so it must never go unencrypted.
    pub fn sends_secret(self) -> bool {
        matches!(self, Self::Plain | Self::OAuthBearer)
    }

    /// Whether the mechanism needs a credentials Secret (MSK IAM can use the pod's AWS identity).
    pub fn needs_credentials_secret(self) -> bool {
        self != Self::AwsMskIam
    }
}

/// How to authenticate to and encrypt traffic with the brokers. Credentials always come
/// from Secrets mounted into the runtime pods; they are never written into the StreamJob.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol.startsWith('SASL_') == has(self.saslMechanism)")
    .message("saslMechanism is required with a SASL_ protocol and not allowed otherwise")
    .field_path(".saslMechanism"))]
#[x_kube(validation = Rule::new("!has(self.saslMechanism) || self.saslMechanism == 'AWS_MSK_IAM' || has(self.credentialsSecret)")
    .message("credentialsSecret is required with saslMechanism")
    .field_path(".credentialsSecret"))]
#[x_kube(validation = Rule::new("!(self.protocol == 'SASL_PLAINTEXT' && has(self.saslMechanism) && self.saslMechanism in ['PLAIN', 'OAUTHBEARER']) || self.allowInsecure")
    .message("PLAIN and OAUTHBEARER over SASL_PLAINTEXT send the secret unencrypted: use SASL_SSL, or set allowInsecure")
    .field_path(".protocol"))]
#[x_kube(validation = Rule::new("!(self.protocol == 'SASL_PLAINTEXT' && has(self.saslMechanism) && self.saslMechanism == 'AWS_MSK_IAM')")
    .message("AWS_MSK_IAM needs SASL_SSL: MSK serves IAM authentication over TLS only")
    .field_path(".protocol"))]
pub struct KafkaSecurity {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `AWS_MSK_IAM`; required
    /// with a `SASL_` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Name of a Secret with the SASL credentials: `username` and `password` for PLAIN and
    /// SCRAM, `token` for OAUTHBEARER, optionally `aws_access_key_id`, `aws_secret_access_key`
    /// and `aws_session_token` for AWS_MSK_IAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// AWS region of the MSK cluster for AWS_MSK_IAM; defaults to the pod's `AWS_REGION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub aws_region: Option<String>,
    /// Name of a Secret with `ca.crt` (the brokers' CA) and, for mutual TLS, `tls.crt` and
    /// `tls.key` (the client certificate and key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// Allow secrets to travel unencrypted (SASL PLAIN or OAUTHBEARER without TLS). Off by default.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// librdkafka properties passed through as they are, e.g. `fetch.min.bytes: "32768"`.
/// Properties Weir manages (bootstrap servers, group, security, delivery) are refused here.
pub type KafkaProperties = BTreeMap<String, String>;

/// Properties that have their own StreamJob fields; setting them as raw properties would
/// silently fight those fields.
pub const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "enable.idempotence",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "acks",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
];

/// Parts of a property name that mark it as carrying a secret (a password, a private key,
/// a client secret, a JAAS line with credentials in it).
const SECRET_MARKS: &[&str] =
    &["password", "secret", "jaas", "keytab", "oauthbearer.config", "ssl.key", "ssl_key", "keystore"];

/// For a raw property that would carry a secret in plain text (in the StreamJob and the
/// ConfigMap rendered from it), the Secret-based field to use instead.
pub fn secret_field(property: &str) -> Option<&'static str> {
    let property = property.to_ascii_lowercase();
    if !SECRET_MARKS.iter().any(|mark| property.contains(mark)) {
        return None;
    }
    Some(if property.contains("ssl") || property.contains("keystore") {
        "security.tlsSecret"
    } else {
        "security.credentialsSecret"
    })
}

/// How transient Kafka errors (broker unavailable, leader change, request timeout, network)
/// are retried: exponential backoff with jitter from `initialBackoff` up to `maxBackoff`,
/// at most `maxRetries` times in a row before the error stops the pod.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.initialBackoff) <= duration(self.maxBackoff)")
    .message("initialBackoff must not exceed maxBackoff").field_path(".initialBackoff"))]
pub struct Retry {
    /// Retries in a row before the error is treated as fatal.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_retries: u32,
    /// Wait before the first retry.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_max_retries() -> u32 {
    10
}

fn default_initial_backoff() -> Duration {
    std::time::Duration::from_millis(100).into()
}

fn default_max_backoff() -> Duration {
    std::time::Duration::from_secs(10).into()
}

/// Creates a topic that does not exist yet, with these settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateTopic {
    /// Number of partitions.
    #[schemars(range(min = 1, max = 100_000))]
    pub partitions: i32,
    /// Copies of each partition.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
}

fn one() -> i32 {
    1
}

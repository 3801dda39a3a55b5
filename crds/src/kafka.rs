//! Kafka connection settings shared by the source, the sink and the dead-letter topic.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanism`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How to authenticate to and encrypt traffic with the brokers. Credentials always come
/// from Secrets mounted into the runtime pods; they are never written into the StreamJob.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol.startsWith('SASL_') == has(self.saslMechanism)")
    .message("saslMechanism is required with a SASL_ protocol and not allowed otherwise")
    .field_path(".saslMechanism"))]
#[x_kube(validation = Rule::new("!has(self.saslMechanism) || has(self.credentialsSecret)")
    .message("credentialsSecret is required with saslMechanism")
    .field_path(".credentialsSecret"))]
#[x_kube(validation = Rule::new("!(self.protocol == 'SASL_PLAINTEXT' && has(self.saslMechanism) && self.saslMechanism == 'PLAIN') || self.allowInsecure")
    .message("SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted: use SASL_SSL, or set allowInsecure")
    .field_path(".protocol"))]
pub struct KafkaSecurity {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `SASL_` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Name of a Secret with keys `username` and `password` for SASL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Name of a Secret with `ca.crt` (the brokers' CA) and, for mutual TLS, `tls.crt` and
    /// `tls.key` (the client certificate and key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// Allow credentials to travel unencrypted (SASL PLAIN without TLS). Off by default.
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
];

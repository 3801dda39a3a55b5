//! Reading a StreamJob from a file, as the runtime gets it: the whole resource or only its
//! spec, in YAML or JSON.

use serde::{Deserialize, de::DeserializeOwned};

use crate::{StreamJobSpec, validation};

/// A StreamJob spec with the identity of the resource it came from, when known.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDocument {
    /// `metadata.name`, when the document is a whole resource.
    pub name: Option<String>,
    /// `metadata.namespace`, when the document is a whole resource and has one.
    pub namespace: Option<String>,
    /// The spec.
    pub spec: StreamJobSpec,
}

/// Why a StreamJob document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML/JSON of a StreamJob or of its spec; says which field is wrong.
    #[error("not a StreamJob or StreamJob spec: {0}")]
    Parse(String),
    /// The spec parsed but is not valid.
    #[error(transparent)]
    Invalid(#[from] validation::InvalidSpec),
}

#[derive(Deserialize)]
struct WholeResource {
    #[serde(default)]
    metadata: Metadata,
    spec: StreamJobSpec,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

impl JobDocument {
    /// Parses YAML or JSON (JSON is YAML), whole resource or spec, and validates the spec.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        // Through a JSON value: serde_yaml reads enums only from YAML tags, not from the
        // single-key maps the API uses for pipeline steps.
        let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| LoadError::Parse(e.to_string()))?;
        let is_resource = value.get("spec").is_some() && value.get("source").is_none();
        let document = if is_resource {
            let resource: WholeResource = from_value(value, "")?;
            Self { name: resource.metadata.name, namespace: resource.metadata.namespace, spec: resource.spec }
        } else {
            Self { name: None, namespace: None, spec: from_value(value, "spec.")? }
        };
        validation::validate(&document.spec)?;
        Ok(document)
    }
}

/// Deserializes with the path of the offending field in the error, e.g.
/// `spec.parallelism: invalid type: string "two", expected i32`.
fn from_value<T: DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| LoadError::Parse(format!("{prefix}{}: {}", e.path(), e.inner())))
}

//! Reading a StreamJob from a file, as the runtime gets it: the whole resource or only its
//! spec, in YAML or JSON.

use serde::Deserialize;

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
    /// The text is not YAML/JSON of a StreamJob or of its spec.
    #[error("not a StreamJob or StreamJob spec: {0}")]
    Parse(String),
    /// The spec parsed but is not valid.
    #[error(transparent)]
    Invalid(#[from] validation::InvalidSpec),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
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
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| LoadError::Parse(e.to_string()))?;
        let is_resource = value.get("spec").is_some() && value.get("source").is_none();
        let document = if is_resource {
            let resource: WholeResource = serde_yaml::from_value(value).map_err(|e| LoadError::Parse(e.to_string()))?;
            Self { name: resource.metadata.name, namespace: resource.metadata.namespace, spec: resource.spec }
        } else {
            let spec = serde_yaml::from_value(value).map_err(|e| LoadError::Parse(e.to_string()))?;
            Self { name: None, namespace: None, spec }
        };
        validation::validate(&document.spec)?;
        Ok(document)
    }
}

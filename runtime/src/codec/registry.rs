//! A Confluent Schema Registry client. Avro writer schemas are looked up by id
//! (`GET /schemas/ids/{id}`) and kept: an id never changes meaning. Result schemas are
//! registered under a subject (`POST /subjects/{subject}/versions`, which answers the
//! existing id when the schema is already there). Basic auth comes from the mounted Secret,
//! read at each call so a rotated password is picked up. Connection failures, timeouts, 5xx
//! and 429 answers are retried under the connection's retry policy, then fatal.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tracing::{debug, warn};
use weir_crds::{Retry, kafka::SchemaRegistry};

use crate::kafka::{
    config::{SecretMounts, Side},
    retry::Backoff,
};

/// How long an id the registry did not know is believed missing before it is asked again.
const MISSING_FOR: Duration = Duration::from_secs(60);
/// How long one registry call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/json";

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A credentials file could not be read.
    #[error("reading schema registry credential {path}: {source}")]
    Credential {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the schema registry client: {0}")]
    Client(#[source] reqwest::Error),
    /// The registry could not be reached (after retries).
    #[error("schema registry {url}: {source}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The registry refused the request (or kept failing).
    #[error("schema registry {url} answered {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The answer was not what the API promises.
    #[error("schema registry {url} answered an unexpected body: {reason}")]
    Body {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// What the registry said about a schema id.
#[derive(Debug, Clone)]
enum Lookup {
    /// An Avro schema (JSON text) and the full name of the type it describes.
    Avro(Arc<str>, Arc<str>),
    /// An id that cannot decode Avro: why, and when that was learnt.
    Unusable(String, Instant),
}

/// `{"schema": "...", "schemaType": "AVRO"}`, as `GET /schemas/ids/{id}` answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaAnswer {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

/// `{"id": N}`, as `POST /subjects/{subject}/versions` answers.
#[derive(Debug, Deserialize)]
struct IdAnswer {
    id: u32,
}

/// One registry, with the schemas looked up so far.
#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    url: String,
    credentials: Option<(PathBuf, PathBuf)>,
    retry: Retry,
    schemas: RwLock<BTreeMap<u32, Lookup>>,
}

impl Registry {
    /// A client of `settings`' registry; its credentials (when it has a Secret) are read
    /// from `<secrets>/<side>-registry/{username,password}`, and must be there now.
    pub fn new(
        settings: &SchemaRegistry,
        side: Side,
        secrets: &SecretMounts,
        retry: &Retry,
    ) -> Result<Self, RegistryError> {
        let credentials = settings
            .credentials_secret
            .as_ref()
            .map(|_| (secrets.registry_file(side, "username"), secrets.registry_file(side, "password")));
        if let Some((username, password)) = &credentials {
            read_credential(username)?;
            read_credential(password)?;
        }
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().map_err(RegistryError::Client)?;
        Ok(Self {
            http,
            url: settings.url.trim_end_matches('/').to_owned(),
            credentials,
            retry: retry.clone(),
            schemas: RwLock::default(),
        })
    }

    /// Looks up the ids not known yet (and those missing for a while). An id the registry
    /// does not have, or that is not Avro, is remembered as unusable, not an error.
    pub async fn fetch_missing(&self, ids: impl IntoIterator<Item = u32>) -> Result<(), RegistryError> {
        let wanted: Vec<u32> = {
            let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            ids.into_iter()
                .filter(|id| match schemas.get(id) {
                    None => true,
                    Some(Lookup::Avro(..)) => false,
                    Some(Lookup::Unusable(_, at)) => at.elapsed() > MISSING_FOR,
                })
                .collect()
        };
        for id in wanted {
            let lookup = self.fetch(id).await?;
            self.schemas.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, lookup);
        }
        Ok(())
    }

    async fn fetch(&self, id: u32) -> Result<Lookup, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let (status, body) = self.call(&url, || self.http.get(&url)).await?;
        if status == 404 {
            debug!(id, "schema id not in the registry");
            return Ok(Lookup::Unusable(format!("schema id {id} is not in the registry"), Instant::now()));
        }
        if !(200..300).contains(&status) {
            return Err(RegistryError::Status { url, status, body: String::from_utf8_lossy(&body).into_owned() });
        }
        let answer: SchemaAnswer =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Body { url, reason: e.to_string() })?;
        Ok(match answer.schema_type.as_deref() {
            None | Some("AVRO") => {
                let name = type_name(&answer.schema);
                Lookup::Avro(answer.schema.into(), name.into())
            }
            Some(other) => Lookup::Unusable(format!("schema id {id} is a {other} schema, not Avro"), Instant::now()),
        })
    }

    /// The Avro schema (JSON text) of `id`, or why there is none.
    pub fn schema(&self, id: u32) -> Result<Arc<str>, String> {
        match self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
            Some(Lookup::Avro(schema, _)) => Ok(schema.clone()),
            Some(Lookup::Unusable(why, _)) => Err(why.clone()),
            None => Err(format!("schema id {id} was not looked up")),
        }
    }

    /// The newest version of `id`'s type: the highest id looked up of a schema with the same
    /// full name (the registry hands out ids in order), and that name.
    pub fn newest_of(&self, id: u32) -> Option<(u32, Arc<str>)> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(Lookup::Avro(_, name)) = schemas.get(&id) else { return None };
        let newest = schemas.iter().rev().find_map(|(other, lookup)| match lookup {
            Lookup::Avro(_, other_name) if other_name == name => Some(*other),
            _ => None,
        });
        newest.map(|newest| (newest, name.clone()))
    }

    /// Registers the Avro `schema` under `subject`, or finds it there: its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let request = serde_json::json!({ "schema": schema }).to_string();
        let (status, body) = self
            .call(&url, || {
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/vnd.schemaregistry.v1+json")
                    .body(request.clone())
            })
            .await?;
        if !(200..300).contains(&status) {
            return Err(RegistryError::Status { url, status, body: String::from_utf8_lossy(&body).into_owned() });
        }
        let answer: IdAnswer =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Body { url, reason: e.to_string() })?;
        Ok(answer.id)
    }

    /// Sends the request `make` builds, with credentials, retrying transient failures.
    async fn call(
        &self,
        url: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), RegistryError> {
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let mut request = make().header(reqwest::header::ACCEPT, ACCEPT);
            if let Some((username, password)) = &self.credentials {
                request = request.basic_auth(read_credential(username)?, Some(read_credential(password)?));
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(body) if !transient_status(status) => return Ok((status, body.to_vec())),
                        Ok(body) => RegistryError::Status {
                            url: url.to_owned(),
                            status,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        },
                        Err(source) => RegistryError::Unreachable { url: url.to_owned(), source },
                    }
                }
                Err(source) => RegistryError::Unreachable { url: url.to_owned(), source },
            };
            match backoff.next(rand::random()) {
                Some(wait) => {
                    warn!(error = %failure, retry_in = ?wait, "schema registry call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(failure),
            }
        }
    }
}

/// Answers worth asking again: the registry is starting, overloaded or failing for a while.
fn transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// The full name of the type an Avro schema describes (`namespace.name` of a record), or the
/// schema itself for a primitive.
fn type_name(schema: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(schema) else { return schema.to_owned() };
    let name = value.get("name").and_then(|n| n.as_str());
    match (name, value.get("namespace").and_then(|n| n.as_str())) {
        (Some(name), Some(namespace)) if !name.contains('.') && !namespace.is_empty() => format!("{namespace}.{name}"),
        (Some(name), _) => name.to_owned(),
        (None, _) => value.to_string(),
    }
}

fn read_credential(path: &PathBuf) -> Result<String, RegistryError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|source| RegistryError::Credential { path: path.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_full_names() {
        assert_eq!(
            type_name(r#"{"type": "record", "name": "Payment", "namespace": "shop", "fields": []}"#),
            "shop.Payment"
        );
        assert_eq!(type_name(r#"{"type": "record", "name": "a.B", "namespace": "shop", "fields": []}"#), "a.B");
        assert_eq!(type_name(r#"{"type": "record", "name": "B", "fields": []}"#), "B");
        assert_eq!(type_name(r#""string""#), r#""string""#);
    }
}

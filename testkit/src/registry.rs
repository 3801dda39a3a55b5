//! A Confluent Schema Registry stand-in for tests: no registry can be installed here, and the
//! runtime only needs two of its endpoints. `GET /schemas/ids/{id}` answers
//! `{"schema": "..."}` (404 with error code 40403 for an unknown id);
//! `POST /subjects/{subject}/versions` with `{"schema": "..."}` answers `{"id": N}`, the
//! existing id when the same schema text is registered already (as the real registry does),
//! else the next id from 1. With credentials, every call needs HTTP basic auth (401 without).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use serde_json::{Value, json};

use crate::{Error, server::Server};

/// What the registry holds, and what it was asked.
#[derive(Debug, Default)]
struct Store {
    /// Schema texts; the id of `schemas[i]` is `i + 1`.
    schemas: Vec<String>,
    /// Ids registered under each subject, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
    /// `GET /schemas/ids/{id}` calls per id.
    lookups: BTreeMap<u32, usize>,
    /// The `Authorization` header every call must carry.
    authorization: Option<String>,
    /// Calls refused for missing or wrong credentials.
    refused: usize,
}

impl Store {
    fn register(&mut self, subject: &str, schema: &str) -> u32 {
        let id = match self.schemas.iter().position(|s| s == schema) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push(schema.to_owned());
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running registry on a free port of 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct SchemaRegistry {
    server: Server,
    store: Shared,
}

impl SchemaRegistry {
    /// A registry open to anyone.
    pub fn start() -> Result<Self, Error> {
        Self::serve(None)
    }

    /// A registry that needs HTTP basic auth with `username` and `password`.
    pub fn start_with_credentials(username: &str, password: &str) -> Result<Self, Error> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Self::serve(Some(format!("Basic {token}")))
    }

    fn serve(authorization: Option<String>) -> Result<Self, Error> {
        let store: Shared = Arc::new(Mutex::new(Store { authorization, ..Store::default() }));
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/subjects/{subject}/versions", post(register))
            .with_state(store.clone());
        Ok(Self { server: Server::start(app, "schema registry")?, store })
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Registers `schema` under `subject` as a producer's serializer would: its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        lock(&self.store).register(subject, schema)
    }

    /// The schema text of `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        lock(&self.store).schemas.get((id as usize).checked_sub(1)?).cloned()
    }

    /// The ids registered under `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        lock(&self.store).subjects.get(subject).cloned().unwrap_or_default()
    }

    /// How many times schema `id` was looked up.
    pub fn lookups(&self, id: u32) -> usize {
        lock(&self.store).lookups.get(&id).copied().unwrap_or(0)
    }

    /// How many calls were refused for missing or wrong credentials.
    pub fn refused(&self) -> usize {
        lock(&self.store).refused
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/vnd.schemaregistry.v1+json")], body.to_string()).into_response()
}

/// `None` when the call may go on; else the 401 to answer.
fn refuse_unauthorized(store: &mut Store, headers: &HeaderMap) -> Option<Response> {
    let wanted = store.authorization.as_deref()?;
    if headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(wanted) {
        return None;
    }
    store.refused += 1;
    Some(answer(StatusCode::UNAUTHORIZED, json!({"error_code": 401, "message": "Unauthorized"})))
}

async fn schema_by_id(State(store): State<Shared>, Path(id): Path<u32>, headers: HeaderMap) -> Response {
    let mut store = lock(&store);
    if let Some(refused) = refuse_unauthorized(&mut store, &headers) {
        return refused;
    }
    *store.lookups.entry(id).or_default() += 1;
    match (id as usize).checked_sub(1).and_then(|i| store.schemas.get(i)) {
        Some(schema) => answer(StatusCode::OK, json!({ "schema": schema })),
        None => answer(StatusCode::NOT_FOUND, json!({"error_code": 40403, "message": "Schema not found"})),
    }
}

async fn register(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut store = lock(&store);
    if let Some(refused) = refuse_unauthorized(&mut store, &headers) {
        return refused;
    }
    let Some(schema) = body["schema"].as_str() else {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"error_code": 42201, "message": "Invalid schema"}));
    };
    let id = store.register(&subject, schema);
    answer(StatusCode::OK, json!({ "id": id }))
}

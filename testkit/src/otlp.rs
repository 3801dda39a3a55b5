//! An OpenTelemetry collector stand-in for tests: no collector can be installed here, and
//! the runtime only needs OTLP/HTTP's trace endpoint. `POST /v1/traces` with an
//! `ExportTraceServiceRequest` in OTLP/JSON is stored span by span and answered `{}`;
//! other encodings (protobuf) are refused with 415, so a test notices a protocol change.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    routing::post,
};
use serde_json::Value;

use crate::{Error, server::Server};

/// A span as received (ids in lowercase hex, as OTLP/JSON writes them).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The trace id.
    pub trace_id: String,
    /// The span id.
    pub span_id: String,
    /// The parent span id; empty for a root span.
    pub parent_span_id: String,
    /// The span name, e.g. `process payments`.
    pub name: String,
    /// The span kind (OTLP numbering: 4 producer, 5 consumer).
    pub kind: i64,
    /// Attributes, their values as JSON (strings, numbers, booleans).
    pub attributes: BTreeMap<String, Value>,
    /// Links as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// A string attribute.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    /// Export requests answered, and refused.
    requests: usize,
    refused: usize,
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver on a free port of 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    server: Server,
    store: Shared,
}

impl OtlpReceiver {
    /// Starts a receiver.
    pub fn start() -> Result<Self, Error> {
        let store: Shared = Arc::default();
        let app = Router::new().route("/v1/traces", post(traces)).with_state(store.clone());
        Ok(Self { server: Server::start(app, "OTLP receiver")?, store })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        self.server.url()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.store).spans.clone()
    }

    /// Export requests received (accepted or refused).
    pub fn requests(&self) -> usize {
        lock(&self.store).requests
    }

    /// Export requests refused (not OTLP/JSON, or unreadable).
    pub fn refused(&self) -> usize {
        lock(&self.store).refused
    }

    /// Waits until the spans received satisfy `condition`, polling every 100 ms.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Error> {
        let mut spans = Vec::new();
        crate::wait_until(timeout, what, || {
            spans = self.spans();
            condition(&spans)
        })?;
        Ok(spans)
    }
}

async fn traces(State(store): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let json = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    let parsed = if json { serde_json::from_slice::<Value>(&body).ok().map(|v| parse(&v)) } else { None };
    let mut store = lock(&store);
    store.requests += 1;
    match parsed {
        Some(spans) => {
            store.spans.extend(spans);
            (StatusCode::OK, "{}")
        }
        None => {
            store.refused += 1;
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "only OTLP/JSON is accepted")
        }
    }
}

fn items<'v>(value: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    value.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn text(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// An OTLP `AnyValue` as plain JSON; 64-bit integers may arrive as strings.
fn any_value(value: &Value) -> Value {
    if let Some(v) = value.get("stringValue") {
        return v.clone();
    }
    if let Some(v) = value.get("intValue") {
        return match v {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    ["boolValue", "doubleValue"].iter().find_map(|k| value.get(*k)).cloned().unwrap_or(Value::Null)
}

fn attributes(value: &Value) -> BTreeMap<String, Value> {
    items(value, "attributes").map(|kv| (text(kv, "key"), kv.get("value").map_or(Value::Null, any_value))).collect()
}

/// The spans of an `ExportTraceServiceRequest`.
fn parse(request: &Value) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in items(request, "resourceSpans") {
        let resource = resource_spans.get("resource").map(attributes).unwrap_or_default();
        let service = resource.get("service.name").and_then(Value::as_str).unwrap_or_default().to_owned();
        for span in items(resource_spans, "scopeSpans").flat_map(|scope| items(scope, "spans")) {
            out.push(ReceivedSpan {
                service: service.clone(),
                trace_id: text(span, "traceId").to_lowercase(),
                span_id: text(span, "spanId").to_lowercase(),
                parent_span_id: text(span, "parentSpanId").to_lowercase(),
                name: text(span, "name"),
                kind: span.get("kind").and_then(Value::as_i64).unwrap_or_default(),
                attributes: attributes(span),
                links: items(span, "links")
                    .map(|l| (text(l, "traceId").to_lowercase(), text(l, "spanId").to_lowercase()))
                    .collect(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otlp_json_request_becomes_spans() {
        let request = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "weir-runtime"}}]},
            "scopeSpans": [{"scope": {"name": "weir-runtime"}, "spans": [{
                "traceId": "4BF92F3577B34DA6A3CE929D0E0E4736", "spanId": "00f067aa0ba902b7", "parentSpanId": "",
                "name": "process in", "kind": 5,
                "attributes": [
                    {"key": "messaging.batch.message_count", "value": {"intValue": "3"}},
                    {"key": "messaging.system", "value": {"stringValue": "kafka"}}
                ],
                "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331"}]
            }]}]
        }]});
        let spans = parse(&request);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.service, "weir-runtime");
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((span.name.as_str(), span.kind), ("process in", 5));
        assert_eq!(span.int("messaging.batch.message_count"), Some(3));
        assert_eq!(span.text("messaging.system"), Some("kafka"));
        assert_eq!(span.links, [("0af7651916cd43dd8448eb211c80319c".into(), "b7ad6b7169203331".into())]);
    }
}

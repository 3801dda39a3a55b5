//! OpenTelemetry spans, exported with OTLP over HTTP when the standard `OTEL_*` environment
//! asks for them, following the messaging semantic conventions for batches:
//! - `process <topic>` (consumer) per processed batch of one source partition, linked to
//!   the trace contexts its records carried (at most [`MAX_LINKS`]);
//! - `send <topic>` (producer) per batch of results produced;
//! - `create <topic>` (producer) per produced record continuing a consumed record's trace:
//!   its parent is that record's context, and the produced record's `traceparent` names it.
//!
//! With tracing off nothing here runs: the runner holds no [`Spans`].

use std::fmt;

use opentelemetry::{
    Context, KeyValue,
    trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider, Span},
};
use rdkafka::message::{BorrowedHeaders, Headers};

use crate::{
    codec::TRACEPARENT,
    kafka::trace::{ContextSource, TraceParent},
};

/// Links a `process` span keeps at most; the rest are counted in [`LINKS_DROPPED`].
pub const MAX_LINKS: usize = 128;
/// Attribute: records whose trace context did not fit in the links.
pub const LINKS_DROPPED: &str = "weir.links.dropped";
/// Attribute: the StreamJob's name.
pub const STREAMJOB: &str = "weir.streamjob";
/// `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) names one.
pub const DEFAULT_SERVICE_NAME: &str = "weir-runtime";

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the environment.
    #[error("setting up the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The OTLP endpoint is not an http(s) URL (the exporter would fall back to
    /// `localhost:4318` without a word).
    #[error("{var}={value:?} is not an http or https URL")]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// Pending spans could not be flushed at exit.
    #[error("flushing spans: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Whether `var` (the environment) asks for spans: an OTLP endpoint is set and
/// `OTEL_SDK_DISABLED` is not `true`.
pub fn enabled(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Checks the endpoint variable the exporter will use (the traces one first).
fn check_endpoint(var: impl Fn(&str) -> Option<String>) -> Result<(), TelemetryError> {
    for name in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        if let Some(value) = var(name).filter(|v| !v.trim().is_empty()) {
            let parsed = url::Url::parse(value.trim());
            return match parsed {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
                _ => Err(TelemetryError::Endpoint { var: name, value }),
            };
        }
    }
    Ok(())
}

/// The OTLP/HTTP encoding: JSON unless the environment asks for `http/protobuf`; gRPC is
/// not built in, so it falls back to JSON on the same endpoint.
fn protocol(var: impl Fn(&str) -> Option<String>) -> Protocol {
    let asked = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match asked.as_deref().map(str::trim) {
        Some("http/protobuf") => Protocol::HttpBinary,
        _ => Protocol::HttpJson,
    }
}

/// Whether the environment names the service itself.
fn names_service(var: impl Fn(&str) -> Option<String>) -> bool {
    var("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || var("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|v| v.split(',').any(|kv| kv.trim().starts_with("service.name=")))
}

/// The tracer provider: a batch span processor on its own thread, exporting over OTLP/HTTP.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The provider the process environment asks for; `None` when tracing is off. The
    /// exporter reads the endpoint, headers and timeout from the `OTEL_EXPORTER_OTLP_*`
    /// variables, the SDK the sampler from `OTEL_TRACES_SAMPLER`(`_ARG`).
    pub fn from_env() -> Result<Option<Self>, TelemetryError> {
        let var = |name: &str| std::env::var(name).ok();
        if !enabled(var) {
            return Ok(None);
        }
        check_endpoint(var)?;
        let exporter = SpanExporter::builder().with_http().with_protocol(protocol(var)).build()?;
        let mut resource = Resource::builder();
        if !names_service(var) {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        Ok(Some(Self { provider }))
    }

    /// The spans of job `job`, reading with consumer group `group`.
    pub fn spans(&self, job: &str, group: &str) -> Spans {
        Spans {
            tracer: self.provider.tracer("weir-runtime"),
            job: KeyValue::new(STREAMJOB, job.to_owned()),
            group: KeyValue::new("messaging.consumer.group.name", group.to_owned()),
        }
    }

    /// Exports the spans still queued and stops the exporter (at exit, so none are lost).
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        Ok(self.provider.shutdown()?)
    }
}

/// Starts the runner's spans; cheap to clone.
#[derive(Clone)]
pub struct Spans {
    tracer: SdkTracer,
    job: KeyValue,
    group: KeyValue,
}

impl fmt::Debug for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spans").field("job", &self.job.value).finish_non_exhaustive()
    }
}

fn messaging(operation: &'static str, topic: &str) -> [KeyValue; 3] {
    [
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
    ]
}

impl Spans {
    /// The `process` span of a batch of `count` records of `topic`'s `partition` (none for
    /// a batch from several), linked to the contexts in `carried` (the valid
    /// `traceparent`s of its records).
    pub fn process(
        &self,
        topic: &str,
        partition: Option<i32>,
        count: usize,
        carried: impl IntoIterator<Item = TraceParent>,
    ) -> Span {
        let (links, dropped) = links(carried, MAX_LINKS);
        let mut attributes = Vec::with_capacity(8);
        attributes.extend(messaging("process", topic));
        if let Some(partition) = partition {
            attributes.push(KeyValue::new("messaging.destination.partition.id", partition.to_string()));
        }
        attributes.extend([
            KeyValue::new("messaging.batch.message_count", count as i64),
            self.group.clone(),
            self.job.clone(),
            KeyValue::new(LINKS_DROPPED, dropped as i64),
        ]);
        let links = links.into_iter().map(|c| Link::with_context(c.span_context())).collect();
        self.tracer
            .span_builder(format!("process {topic}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&self.tracer, &Context::new())
    }

    /// The `send` span of producing `count` records to `topic`, a child of the `process`
    /// span they came from (a root for results a timer closed).
    pub fn send(&self, topic: &str, count: usize, parent: Option<&SpanContext>) -> Span {
        let parent = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p.clone()));
        let mut attributes = Vec::with_capacity(5);
        attributes.extend(messaging("send", topic));
        attributes.extend([KeyValue::new("messaging.batch.message_count", count as i64), self.job.clone()]);
        self.tracer
            .span_builder(format!("send {topic}"))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent)
    }

    /// Where the records of one produced batch get their trace context: `create` spans for
    /// records continuing a trace, `batch` (the process or send span) for the others.
    pub fn contexts<'a>(&'a self, topic: &'a str, batch: &'a SpanContext) -> Traced<'a> {
        Traced { spans: self, topic, batch }
    }

    /// A finished `create` span of a record produced from one that carried `parent`,
    /// linked to the batch's span; its context is the produced record's.
    fn create(&self, topic: &str, parent: TraceParent, batch: &SpanContext) -> TraceParent {
        let mut attributes = Vec::with_capacity(4);
        attributes.extend(messaging("create", topic));
        attributes.push(self.job.clone());
        let parent_context = Context::new().with_remote_span_context(parent.span_context());
        let mut span = self
            .tracer
            .span_builder(format!("create {topic}"))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .with_links(vec![Link::with_context(batch.clone())])
            .start_with_context(&self.tracer, &parent_context);
        span.end();
        TraceParent::of_span(span.span_context()).unwrap_or(parent)
    }
}

/// The trace contexts of one produced batch (see [`Spans::contexts`]).
#[derive(Debug)]
pub struct Traced<'a> {
    spans: &'a Spans,
    topic: &'a str,
    batch: &'a SpanContext,
}

impl ContextSource for &Traced<'_> {
    fn child(&mut self, parent: TraceParent) -> TraceParent {
        self.spans.create(self.topic, parent, self.batch)
    }

    fn start(&mut self) -> TraceParent {
        // Never invalid: the SDK gives every span ids, sampled or not.
        TraceParent::of_span(self.batch).unwrap_or_else(|| TraceParent::start(rand::random))
    }

    fn untraced(&mut self) -> Option<TraceParent> {
        TraceParent::of_span(self.batch)
    }
}

/// The distinct contexts of `carried`, at most `cap` of them, and how many records'
/// contexts were left out.
pub fn links(carried: impl IntoIterator<Item = TraceParent>, cap: usize) -> (Vec<TraceParent>, usize) {
    let mut linked: Vec<TraceParent> = Vec::new();
    let mut dropped = 0;
    for context in carried {
        if linked.contains(&context) {
            continue;
        }
        if linked.len() < cap {
            linked.push(context);
        } else {
            dropped += 1;
        }
    }
    (linked, dropped)
}

/// The valid `traceparent` of a consumed record, if it carries one.
pub fn traceparent(headers: Option<&BorrowedHeaders>) -> Option<TraceParent> {
    let header = headers?.iter().find(|h| h.key == TRACEPARENT)?;
    TraceParent::parse(std::str::from_utf8(header.value?).ok()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn context(n: u64) -> TraceParent {
        TraceParent::parse(&format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{n:016x}-01")).unwrap()
    }

    #[test]
    fn links_are_distinct_and_capped_and_the_rest_counted() {
        let carried = (1..=5).chain(1..=5).chain(6..=9).map(context);
        let (linked, dropped) = links(carried, 6);
        assert_eq!(linked, (1..=6).map(context).collect::<Vec<_>>(), "first seen, duplicates once");
        assert_eq!(dropped, 3, "contexts 7, 8 and 9 do not fit");
        assert_eq!(links(std::iter::empty(), MAX_LINKS), (vec![], 0));
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn tracing_is_on_with_an_otlp_endpoint_unless_the_sdk_is_disabled() {
        assert!(!enabled(env(&[])));
        assert!(enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(enabled(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")])));
        assert!(!enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(!enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "false")])));
    }

    #[test]
    fn an_endpoint_must_be_an_http_url() {
        assert!(check_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])).is_ok());
        assert!(check_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector")])).is_ok());
        for bad in ["http://exa mple:4318", "collector:4318", "ftp://collector"] {
            let error = check_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)])).unwrap_err();
            assert!(error.to_string().starts_with("OTEL_EXPORTER_OTLP_ENDPOINT="), "{error}");
        }
        let traces_first = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "nonsense"),
        ]);
        assert!(check_endpoint(traces_first).is_err());
    }

    #[test]
    fn json_is_exported_unless_protobuf_is_asked_for() {
        assert_eq!(protocol(env(&[])), Protocol::HttpJson);
        assert_eq!(protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])), Protocol::HttpJson);
        assert_eq!(protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])), Protocol::HttpBinary);
        assert_eq!(
            protocol(env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
            ])),
            Protocol::HttpJson
        );
    }

    #[test]
    fn the_service_is_named_weir_runtime_unless_the_environment_names_it() {
        assert!(!names_service(env(&[])));
        assert!(names_service(env(&[("OTEL_SERVICE_NAME", "payments")])));
        assert!(names_service(env(&[("OTEL_RESOURCE_ATTRIBUTES", "team=data, service.name=payments")])));
    }

    #[test]
    fn records_continuing_a_trace_get_a_create_span_of_that_trace_and_others_the_batch_span() {
        let provider = SdkTracerProvider::builder().build();
        let spans = Telemetry { provider }.spans("job", "group");
        let process = spans.process("in", Some(0), 2, [context(1)]);
        let batch = process.span_context().clone();
        let traced = spans.contexts("out", &batch);
        let child = (&traced).child(context(1));
        assert_eq!(child.trace_id(), context(1).trace_id(), "the consumed record's trace");
        assert_ne!(child, context(1), "a new span");
        let own = (&traced).untraced().unwrap();
        assert_eq!(own.parent_id(), batch.span_id().to_string(), "the process span");
        assert_eq!((&traced).start(), own);
    }
}

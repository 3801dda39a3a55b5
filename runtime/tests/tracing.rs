//! OpenTelemetry tracing against a real broker and an OTLP/HTTP receiver: with an OTLP
//! endpoint set, `process` spans link the consumed records' trace contexts and name the job
//! and partition, produced records name spans the receiver got (a `create` span in the
//! consumed record's trace, or the batch's `process` span), and SIGTERM flushes spans still
//! queued; a repartitioned job traces both stages, and its window results name the keyed
//! stage's spans. Without tracing nothing is exported and trace context travels as before;
//! with `traceContext: off` spans are exported but no produced record carries a context.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::json;
use weir_testkit::{
    broker::Broker,
    kafka,
    otlp::{OtlpReceiver, ReceivedSpan},
};

/// Records `0..TRACED` carry a traceparent of their own; the rest carry none.
const TRACED: i64 = 20;
const TOTAL: i64 = 30;

/// The traceparent record `n` was produced with: trace `n + 1`, parent span `n + 0x100`.
fn incoming(n: i64) -> String {
    format!("00-{:032x}-{:016x}-01", n + 1, n + 0x100)
}

/// The headers of record `n`: its traceparent when it is one of the first [`TRACED`].
fn headers(n: i64) -> OwnedHeaders {
    if n < TRACED {
        OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(&incoming(n)) })
    } else {
        OwnedHeaders::new()
    }
}

/// The trace contexts the traced records carry.
fn traced_contexts() -> BTreeSet<(String, String)> {
    (0..TRACED).map(|n| ids(&incoming(n))).collect()
}

/// `<name>-in` with two partitions and `<name>-out`, then the records `0..TOTAL`.
fn topics_and_records(broker: &Broker, name: &str) {
    create_topics(broker, name, 2);
    let producer: BaseProducer = producer(broker);
    let topic = format!("{name}-in");
    for n in 0..TOTAL {
        let payload = json!({"n": n}).to_string();
        let key = format!("k{n}");
        let record = BaseRecord::to(&topic).key(key.as_bytes()).payload(payload.as_bytes()).headers(headers(n));
        must(kafka::send(&producer, record), "sending a record");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
}

/// A stateless job `<name>-in` → `<name>-out` in batches of at most 10 records.
fn copy_job(dir: &Path, broker: &Broker, name: &str) -> PathBuf {
    copy_job_with(dir, broker, name, "")
}

/// [`copy_job`] with `sink_extra` (`key: value, …`) added to its sink's settings.
fn copy_job_with(dir: &Path, broker: &Broker, name: &str, sink_extra: &str) -> PathBuf {
    let servers = broker.bootstrap();
    let job = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: test}}
spec:
  source:
    kafka: {{bootstrapServers: "{servers}", topic: {name}-in, batchSize: 10}}
  pipeline:
    - filter: "n >= 0"
  sink:
    kafka: {{bootstrapServers: "{servers}", topic: {name}-out{sink_extra}}}
"#
    );
    write_job_file(dir, name, &job)
}

fn env(receiver: &OtlpReceiver, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The output records' traceparents by `n`.
fn outputs(broker: &Broker, name: &str) -> BTreeMap<i64, Option<String>> {
    let records = read_records(broker, &format!("{name}-out"), TOTAL as usize);
    let by_n: BTreeMap<i64, Option<String>> = records
        .iter()
        .map(|r| {
            let traceparent = r.headers.iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v.clone());
            (json(r)["n"].as_i64().unwrap_or(-1), traceparent)
        })
        .collect();
    assert_eq!(by_n.keys().copied().collect::<Vec<_>>(), (0..TOTAL).collect::<Vec<_>>(), "every record once");
    by_n
}

/// (trace id, parent id) of a traceparent.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn process_spans<'s>(spans: &'s [ReceivedSpan], name: &str) -> Vec<&'s ReceivedSpan> {
    spans.iter().filter(|s| s.name == format!("process {name}-in")).collect()
}

/// Records of `<name>-in` the `process` spans count.
fn consumed(spans: &[ReceivedSpan], name: &str) -> i64 {
    process_spans(spans, name).iter().filter_map(|s| s.int("messaging.batch.message_count")).sum()
}

/// The trace contexts the `process` spans of `<name>-in` link.
fn linked(spans: &[ReceivedSpan], name: &str) -> BTreeSet<(String, String)> {
    process_spans(spans, name).iter().flat_map(|s| s.links.iter().cloned()).collect()
}

/// Whether the spans account for every consumed record and every produced one.
fn complete(spans: &[ReceivedSpan], name: &str, out: &BTreeMap<i64, Option<String>>) -> bool {
    let span_ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    consumed(spans, name) >= TOTAL
        && out.values().all(|t| t.as_deref().is_some_and(|t| span_ids.contains(ids(t).1.as_str())))
}

/// Checks what a traced run exported against what it produced.
fn check_traced_run(spans: &[ReceivedSpan], name: &str, out: &BTreeMap<i64, Option<String>>) {
    let process = process_spans(spans, name);
    assert!(!process.is_empty(), "process spans: {spans:#?}");
    for span in &process {
        assert_eq!(span.service, "weir-runtime");
        assert_eq!(span.kind, 5, "consumer");
        assert_eq!(span.text("messaging.system"), Some("kafka"));
        assert_eq!(span.text("messaging.operation.type"), Some("process"));
        assert_eq!(span.text("messaging.destination.name"), Some(format!("{name}-in").as_str()));
        assert!(matches!(span.text("messaging.destination.partition.id"), Some("0" | "1")), "{span:?}");
        assert_eq!(span.text("weir.streamjob"), Some(name));
        assert_eq!(span.text("messaging.consumer.group.name"), Some(format!("test.{name}").as_str()));
        assert_eq!(span.int("weir.links.dropped"), Some(0));
        assert!(span.parent_span_id.is_empty(), "a root span, linked to its records' traces");
    }
    assert_eq!(linked(spans, name), traced_contexts(), "links to exactly the consumed records' trace contexts");
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for (n, traceparent) in out {
        let traceparent = traceparent.as_deref().unwrap_or_default();
        let (trace, parent) = ids(traceparent);
        let span = by_id.get(parent.as_str()).unwrap_or_else(|| panic!("record {n}: no span {parent} exported"));
        assert_eq!(span.trace_id, trace, "record {n}: its traceparent is the span's context");
        if *n < TRACED {
            let (incoming_trace, incoming_parent) = ids(&incoming(*n));
            assert_eq!(trace, incoming_trace, "record {n} continues the consumed record's trace");
            assert_eq!(span.name, format!("create {name}-out"));
            assert_eq!(span.parent_span_id, incoming_parent, "record {n}: a child of the consumed record's span");
        } else {
            assert_eq!(span.name, format!("process {name}-in"), "record {n}: the batch's process span");
        }
    }
    let sends = spans.iter().filter(|s| s.name == format!("send {name}-out")).count();
    assert!(sends >= 1, "send spans: {spans:#?}");
}

#[test]
fn spans_link_consumed_traces_and_produced_records_name_exported_spans() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "traced";
    topics_and_records(broker, name);
    let receiver = must(OtlpReceiver::start(), "starting the OTLP receiver");
    let env = env(&receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let runtime = Runtime::start_with_env(&copy_job(dir.path(), broker, name), &[], &env);
    let out = outputs(broker, name);
    let spans = must(
        receiver.wait_for(Duration::from_secs(60), "spans of every record", |spans| complete(spans, name, &out)),
        "spans",
    );
    check_traced_run(&spans, name, &out);
    assert_eq!(receiver.refused(), 0, "OTLP/JSON only");
    assert_eq!(runtime.terminate(), Some(0));
}

/// Payments spread over the two partitions of `<name>-in`, the first [`TRACED`] with a
/// traceparent of their own, then the flush markers that close every window.
fn traced_payments(broker: &Broker, name: &str, payments: &[Payment]) {
    let producer: BaseProducer = producer(broker);
    let topic = format!("{name}-in");
    for (n, p) in (0..).zip(payments) {
        let payload = json!({"user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts}).to_string();
        let record = BaseRecord::to(&topic)
            .key(p.user.as_bytes())
            .payload(payload.as_bytes())
            .partition(i32::try_from(n % 2).unwrap_or(0))
            .headers(headers(n));
        must(kafka::send(&producer, record), "sending a payment");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    produce_flush_markers(&producer, &topic, 2);
}

#[test]
fn a_repartitioned_job_traces_both_stages_and_its_results_name_the_keyed_stages_spans() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "traced-keyed";
    create_topics(broker, name, 2);
    let input = payments(200, 5, 0);
    traced_payments(broker, name, &input);
    let receiver = must(OtlpReceiver::start(), "starting the OTLP receiver");
    let env = env(&receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let runtime = Runtime::start_with_env(&unkeyed_job(dir.path(), broker, name, ""), &[], &env);
    let want = expected(&input);
    let out = read_records(broker, &format!("{name}-out"), want.len());
    assert_eq!(results(&out), want, "every window result once");
    let parents: Vec<(String, String)> = out
        .iter()
        .map(|r| ids(r.headers.iter().find(|(k, _)| k == "traceparent").map_or("", |(_, v)| v.as_str())))
        .collect();
    let internal = format!("test.{name}-repartition");
    let spans = must(
        receiver.wait_for(Duration::from_secs(60), "spans of both stages and of every result", |spans| {
            let exported: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            consumed(spans, name) >= input.len() as i64 + 2
                && parents.iter().all(|(_, parent)| exported.contains(parent.as_str()))
        }),
        "spans",
    );
    assert_eq!(linked(&spans, name), traced_contexts(), "the front links exactly the consumed records' trace contexts");
    let keyed: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == format!("process {internal}")).collect();
    assert!(!keyed.is_empty(), "the keyed stage's process spans: {spans:#?}");
    for span in &keyed {
        assert_eq!(span.text("messaging.destination.name"), Some(internal.as_str()));
        assert_eq!(span.text("weir.streamjob"), Some(name));
        assert!(span.links.is_empty(), "rows on the internal topic carry no trace context: {span:?}");
    }
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let keyed_ids: BTreeSet<&str> = keyed.iter().map(|s| s.span_id.as_str()).collect();
    for (trace, parent) in &parents {
        let span = by_id[parent.as_str()];
        // The batch of the internal topic whose watermark closed the window, or the `send`
        // span of results a timer closed.
        let closed_by = [format!("process {internal}"), format!("send {name}-out")];
        assert!(closed_by.contains(&span.name), "a window result names the span that produced it: {span:?}");
        assert_eq!(&span.trace_id, trace);
    }
    let sends: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == format!("send {name}-out")).collect();
    assert!(!sends.is_empty(), "send spans: {spans:#?}");
    for send in sends.iter().filter(|s| !s.parent_span_id.is_empty()) {
        assert!(keyed_ids.contains(send.parent_span_id.as_str()), "a send span under the keyed stage: {send:?}");
    }
    assert_eq!(runtime.terminate(), Some(0));
}

#[test]
fn sigterm_exports_the_spans_still_queued() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "flushed";
    topics_and_records(broker, name);
    let receiver = must(OtlpReceiver::start(), "starting the OTLP receiver");
    // Nothing is exported on a timer during the test: only the shutdown flush sends spans.
    let env = env(&receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "600000"), ("OTEL_SERVICE_NAME", "payments-trace")]);
    let runtime = Runtime::start_with_env(&copy_job(dir.path(), broker, name), &[], &env);
    let out = outputs(broker, name);
    assert_eq!(receiver.requests(), 0, "spans wait in the batch processor");
    assert_eq!(runtime.terminate(), Some(0));
    let spans = receiver.spans();
    assert!(complete(&spans, name, &out), "every span is exported before exit: {spans:#?}");
    assert!(spans.iter().all(|s| s.service == "payments-trace"), "OTEL_SERVICE_NAME names the service");
}

#[test]
fn without_tracing_nothing_is_exported_and_trace_context_travels_as_before() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "untraced";
    topics_and_records(broker, name);
    let receiver = must(OtlpReceiver::start(), "starting the OTLP receiver");
    let env = env(&receiver, &[("OTEL_SDK_DISABLED", "true")]);
    let runtime = Runtime::start_with_env(&copy_job(dir.path(), broker, name), &[], &env);
    let out = outputs(broker, name);
    assert_eq!(runtime.terminate(), Some(0));
    assert_eq!(receiver.requests(), 0, "OTEL_SDK_DISABLED=true: nothing exported");
    for (n, traceparent) in out {
        if n < TRACED {
            let (trace, parent) = ids(traceparent.as_deref().unwrap_or_default());
            let (incoming_trace, incoming_parent) = ids(&incoming(n));
            assert_eq!(trace, incoming_trace, "record {n}: same trace");
            assert_ne!(parent, incoming_parent, "record {n}: a child span id");
        } else {
            assert_eq!(traceparent, None, "record {n}: propagate starts no trace");
        }
    }
}

#[test]
fn trace_context_off_writes_no_traceparent_while_spans_are_still_exported() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "context-off";
    topics_and_records(broker, name);
    let receiver = must(OtlpReceiver::start(), "starting the OTLP receiver");
    let env = env(&receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let job = copy_job_with(dir.path(), broker, name, ", traceContext: off");
    let runtime = Runtime::start_with_env(&job, &[], &env);
    let out = outputs(broker, name);
    assert!(out.values().all(Option::is_none), "no produced record carries a traceparent: {out:?}");
    let spans = must(
        receiver
            .wait_for(Duration::from_secs(60), "process spans of every record", |spans| consumed(spans, name) >= TOTAL),
        "spans",
    );
    assert_eq!(linked(&spans, name), traced_contexts(), "the process spans still link the consumed records' traces");
    assert!(!spans.iter().any(|s| s.name.starts_with("create ")), "no create span without a produced context");
    assert_eq!(runtime.terminate(), Some(0));
}

#[test]
fn an_unusable_otlp_endpoint_costs_the_spans_not_the_job() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "misconfigured";
    topics_and_records(broker, name);
    // Not a URL: the exporter cannot be built, and the job runs without it.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), "http://exa mple:4318".to_owned())];
    let runtime = Runtime::start_with_env(&copy_job(dir.path(), broker, name), &[], &env);
    let out = outputs(broker, name);
    assert_eq!(out.len(), TOTAL as usize);
    assert_eq!(runtime.terminate(), Some(0));
}

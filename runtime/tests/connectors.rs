//! The Kafka connector options against a real broker: compression codecs round-trip,
//! headers, trace context and timestamps land on produced records, the rate limit holds,
//! fire-and-forget delivers, a start timestamp skips older records, topics are created on
//! request, a missing topic stops the pod with its cause, the job rides out a broker
//! restart, the isolation level decides whether an open transaction's records are read,
//! every security protocol and SASL mechanism of the broker authenticates (or is refused),
//! and a result too large for the sink is dead-lettered or, as asked, stops the pod.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::json;
use weir_testkit::{broker::Broker, kafka, wait_until};

/// A stateless job `<name>-in` → `<name>-out`; `source` and `sink` are appended to the
/// source's and sink's Kafka settings, `extra` to the spec.
fn copy_job(dir: &Path, broker: &Broker, name: &str, source: &str, sink: &str, extra: &str) -> PathBuf {
    let servers = broker.bootstrap();
    let job = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: test}}
spec:
  source:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-in
{source}
  pipeline:
    - filter: "n >= 0"
  sink:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-out
{sink}
{extra}"#
    );
    write_job_file(dir, name, &job)
}

/// `count` records `{"n": i, "at": <epoch ms>}` keyed `k<i>`, with `headers` on each.
fn produce_numbered(producer: &BaseProducer, topic: &str, numbers: std::ops::Range<i64>, headers: &[(&str, &str)]) {
    for n in numbers {
        let payload = json!({"n": n, "at": 1_700_000_000_000i64 + n}).to_string();
        let key = format!("k{n}");
        let owned =
            headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(*value) }));
        let record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes()).headers(owned);
        must(kafka::send(producer, record), "sending a record");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
}

/// The distinct `n` values of the records read.
fn numbers(records: &[kafka::Received]) -> std::collections::BTreeSet<i64> {
    records.iter().filter_map(|r| json(r)["n"].as_i64()).collect()
}

fn header<'r>(record: &'r kafka::Received, name: &str) -> Option<&'r str> {
    record.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Every codec's records are acknowledged by the broker and read back.
#[test]
fn every_compression_codec_round_trips() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let producer = producer(broker);
    for codec in ["gzip", "lz4", "zstd", "none", "snappy"] {
        let name = format!("codec-{codec}");
        create_topics(broker, &name, 1);
        produce_numbered(&producer, &format!("{name}-in"), 0..200, &[]);
        let job = copy_job(dir.path(), broker, &name, "", &format!("      compression: {codec}"), "");
        let runtime = Runtime::start(&job);
        let delivered = format!("weir_sink_delivery_latency_seconds_count{{streamjob=\"{name}\"}}");
        must(
            wait_until(Duration::from_secs(60), "the broker to acknowledge every record", || {
                runtime.metric(&delivered) >= 200.0
            }),
            codec,
        );
        assert_eq!(runtime.metric(&format!("weir_sink_errors_total{{streamjob=\"{name}\"}}")), 0.0, "{codec}");
        let records = read_records(broker, &format!("{name}-out"), 200);
        assert_eq!(numbers(&records), (0..200).collect(), "{codec}: every record, readable");
        assert_eq!(records.len(), 200, "{codec}: no duplicates");
        assert_eq!(runtime.terminate(), Some(0), "{codec}");
    }
}

#[test]
fn headers_trace_context_timestamps_and_metrics_land_on_produced_records() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "headers";
    create_topics(broker, name, 1);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    produce_numbered(&producer(broker), &format!("{name}-in"), 0..50, &[("tenant", "acme"), ("traceparent", parent)]);
    let sink = "      timestampField: at\n      forwardHeaders: true\n      headers: {origin: weir}";
    let job = copy_job(dir.path(), broker, name, "      batchSize: 10", sink, "");
    let runtime = Runtime::start(&job);
    let records = read_records(broker, &format!("{name}-out"), 50);
    assert_eq!(numbers(&records).len(), 50);
    for record in &records {
        let n = json(record)["n"].as_i64().unwrap_or(-1);
        assert_eq!(record.timestamp, Some(1_700_000_000_000 + n), "the timestamp field sets the record timestamp");
        assert_eq!(header(record, "origin"), Some("weir"), "static header");
        assert_eq!(header(record, "tenant"), Some("acme"), "forwarded header");
        let traceparent = header(record, "traceparent").unwrap_or_default();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "same trace: {traceparent}");
        assert_ne!(traceparent, parent, "a child span of the consumed record's");
    }
    let metric = |series: &str| runtime.metric(&format!("{series}{{streamjob=\"{name}\"}}"));
    let text = runtime.get("/metrics").1;
    let value = |series: &str| weir_testkit::metric_value(&text, series).unwrap_or(-1.0);
    let batches = value(&format!("weir_source_batch_records_count{{streamjob=\"{name}\"}}"));
    assert!(batches >= 5.0, "50 records in batches of at most 10: {batches} batches");
    assert_eq!(value(&format!("weir_source_batch_records_bucket{{streamjob=\"{name}\",le=\"10\"}}")), batches);
    assert!(metric("weir_source_bytes_total") > 0.0 && metric("weir_sink_bytes_total") > 0.0, "{text}");
    assert!(metric("weir_source_polls_total") >= batches, "{text}");
    assert_eq!(metric("weir_sink_sends_total"), 50.0, "{text}");
    wait_until(Duration::from_secs(30), "delivery latencies to be observed", || {
        weir_testkit::metric_value(
            &runtime.get("/metrics").1,
            &format!("weir_sink_delivery_latency_seconds_count{{streamjob=\"{name}\"}}"),
        ) == Some(50.0)
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_rate_limit_holds_within_ten_percent() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "rate";
    create_topics(broker, name, 2);
    produce_numbered(&producer(broker), &format!("{name}-in"), 0..4_000, &[]);
    let job = copy_job(dir.path(), broker, name, "      maxRecordsPerSecond: 500", "", "");
    let runtime = Runtime::start(&job);
    let consumed = || runtime.metric(&format!("weir_records_in_total{{streamjob=\"{name}\"}}"));
    let mark = |at_least: f64| {
        must(wait_until(Duration::from_secs(60), "records to be consumed", || consumed() >= at_least), "progress");
        (Instant::now(), consumed())
    };
    let (t0, c0) = mark(500.0);
    let (t1, c1) = mark(2_500.0);
    let rate = (c1 - c0) / (t1 - t0).as_secs_f64();
    assert!((450.0..=550.0).contains(&rate), "read {rate:.0} records/s under a limit of 500");
}

#[test]
fn fire_and_forget_delivers() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "fire";
    create_topics(broker, name, 1);
    produce_numbered(&producer(broker), &format!("{name}-in"), 0..300, &[]);
    let runtime = Runtime::start(&copy_job(dir.path(), broker, name, "", "      delivery: fireAndForget", ""));
    let records = read_records(broker, &format!("{name}-out"), 300);
    assert_eq!(numbers(&records), (0..300).collect());
    assert_eq!(runtime.terminate(), Some(0));
}

#[test]
fn a_start_timestamp_skips_older_records() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "since";
    create_topics(broker, name, 1);
    let producer = producer(broker);
    let topic = format!("{name}-in");
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    for (n, timestamp) in [(0, hour_ago), (1, hour_ago + 1_000), (2, hour_ago + 1_900_000), (3, hour_ago + 2_000_000)] {
        let payload = json!({"n": n}).to_string();
        let record = BaseRecord::<[u8], [u8]>::to(&topic).payload(payload.as_bytes()).timestamp(timestamp);
        must(kafka::send(&producer, record), "sending a record");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    let since = chrono::DateTime::from_timestamp_millis(hour_ago + 1_800_000).unwrap_or_default().to_rfc3339();
    let source = format!("      startOffset: timestamp\n      startTimestamp: \"{since}\"");
    let _runtime = Runtime::start(&copy_job(dir.path(), broker, name, &source, "", ""));
    let records = read_records(broker, &format!("{name}-out"), 2);
    assert_eq!(numbers(&records), [2, 3].into(), "only records at or after {since}");
}

#[test]
fn create_topic_creates_a_missing_sink_topic() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "created";
    must(broker.create_topic(&format!("{name}-in"), 1), "creating the input topic");
    produce_numbered(&producer(broker), &format!("{name}-in"), 0..10, &[]);
    let sink = "      createTopic: {partitions: 3}";
    let _runtime = Runtime::start(&copy_job(dir.path(), broker, name, "", sink, ""));
    assert_eq!(numbers(&read_records(broker, &format!("{name}-out"), 10)).len(), 10);
    let consumer: BaseConsumer =
        must(ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create(), "a metadata client");
    let metadata = must(consumer.fetch_metadata(Some(&format!("{name}-out")), Duration::from_secs(30)), "metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 3, "created with the partitions asked for");
}

#[test]
fn a_missing_source_topic_stops_the_pod_with_its_cause() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    must(broker.create_topic("absent-out", 1), "creating the output topic");
    let job = copy_job(dir.path(), broker, "absent", "", "", "");
    let (code, message) = Runtime::until_it_stops(&job, dir.path(), &[]);
    assert_eq!(code, Some(1), "a fatal error exits non-zero so Kubernetes restarts the pod");
    assert!(message.contains("absent-in does not exist"), "{message}");
}

#[test]
fn the_job_rides_out_a_broker_restart() {
    let mut broker = must(Broker::start(), "starting a broker of its own");
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "outage";
    create_topics(&broker, name, 1);
    produce_numbered(&producer(&broker), &format!("{name}-in"), 0..100, &[]);
    let retry = "      retry: {maxRetries: 20, initialBackoff: 200ms, maxBackoff: 2s}";
    let mut runtime = Runtime::start(&copy_job(dir.path(), &broker, name, retry, retry, ""));
    assert_eq!(numbers(&read_records(&broker, &format!("{name}-out"), 100)).len(), 100);
    must(broker.restart(), "restarting the broker");
    produce_numbered(&producer(&broker), &format!("{name}-in"), 100..200, &[]);
    let records = read_records(&broker, &format!("{name}-out"), 200);
    assert_eq!(numbers(&records), (0..200).collect(), "every record after the restart too");
    assert!(matches!(runtime.child.try_wait(), Ok(None)), "the runtime kept running through the outage");
    assert_eq!(runtime.terminate(), Some(0));
}

/// A transaction left open: `readUncommitted` reads its records, `readCommitted` (the
/// default) stops before them.
#[test]
fn read_uncommitted_sees_records_of_an_open_transaction() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    for name in ["dirty", "clean"] {
        create_topics(broker, name, 1);
        produce_numbered(&producer(broker), &format!("{name}-in"), 0..5, &[]);
    }
    let transactional: BaseProducer = must(
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("transactional.id", "left-open").create(),
        "a transactional producer",
    );
    must(transactional.init_transactions(Duration::from_secs(60)), "initialising transactions");
    must(transactional.begin_transaction(), "beginning a transaction");
    for name in ["dirty", "clean"] {
        produce_numbered(&transactional, &format!("{name}-in"), 5..25, &[]);
    }
    let dirty = Runtime::start(&copy_job(dir.path(), broker, "dirty", "      isolationLevel: readUncommitted", "", ""));
    let clean = Runtime::start(&copy_job(dir.path(), broker, "clean", "", "", ""));
    assert_eq!(numbers(&read_records(broker, "dirty-out", 25)), (0..25).collect(), "open records read");
    assert_eq!(numbers(&read_records(broker, "clean-out", 5)), (0..5).collect(), "open records held back");
    drop((dirty, clean));
}

/// `count` small records `{"n": i}` and, after the `big`-th, one with a field of `size` bytes.
fn produce_with_one_big(producer: &BaseProducer, topic: &str, count: i64, big: i64, size: usize) -> String {
    let mut big_payload = String::new();
    for n in 0..count {
        send(producer, topic, &format!("k{n}"), &json!({"n": n}).to_string());
        if n == big {
            big_payload = json!({"n": n, "blob": "x".repeat(size)}).to_string();
            send(producer, topic, "big", &big_payload);
        }
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    big_payload
}

#[test]
fn a_result_larger_than_the_sink_topic_takes_is_dead_lettered_and_the_job_goes_on() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "oversize";
    must(broker.create_topic(&format!("{name}-in"), 1), "creating the input topic");
    // The topic takes records of at most 4000 bytes; the producer's limit is 1 MB.
    must(broker.create_topic_with(&format!("{name}-out"), 1, &[("max.message.bytes", "4000")]), "output topic");
    must(broker.create_topic(&format!("{name}-dlq"), 1), "creating the dead-letter topic");
    let producer = producer(broker);
    produce_with_one_big(&producer, &format!("{name}-in"), 50, 20, 10_000);
    let job = copy_job(dir.path(), broker, name, "", "", &format!("  deadLetter: {{topic: {name}-dlq}}"));
    let runtime = Runtime::start(&job);
    let out = read_records(broker, &format!("{name}-out"), 50);
    let numbers: Vec<i64> = out.iter().map(|r| json(r)["n"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(numbers, (0..50).collect::<Vec<_>>(), "every small result, once, in order");
    let dead = read_records(broker, &format!("{name}-dlq"), 1);
    let reason = dead[0].headers.iter().find(|(k, _)| k == "weir.error").map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(reason.starts_with("sink: a result of 100"), "{reason}");
    assert!(reason.contains("larger than the sink topic oversize-out takes (4000 bytes)"), "{reason}");
    assert!(dead[0].payload.starts_with(br#"{"n":20,"blob":"xxx"#), "the dead letter keeps the result's start");
    assert_eq!(runtime.metric("weir_records_oversize_total{streamjob=\"oversize\"}"), 1.0);
    assert!(matches!(runtime.get("/readyz").0, 200), "the job goes on");
}

/// A fatal error: the pod exits non-zero (Kubernetes restarts it and the record is retried
/// from the last commit) with the cause as its termination message.
#[test]
fn with_oversize_records_fail_a_result_too_large_stops_the_pod_naming_the_size_and_the_limit() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "oversize-fail";
    must(broker.create_topic(&format!("{name}-in"), 1), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    let producer = producer(broker);
    // Beyond the producer's own limit, on a topic of the broker's default.
    produce_with_one_big(&producer, &format!("{name}-in"), 3, 1, 10_000);
    let sink = "      oversizeRecords: fail\n      properties: {message.max.bytes: \"5000\"}";
    let job = copy_job(dir.path(), broker, name, "", sink, "");
    let (code, message) = Runtime::until_it_stops(&job, dir.path(), &[]);
    assert_eq!(code, Some(1));
    assert!(message.contains("a result of 100") && message.contains("takes (5000 bytes)"), "{message}");
    assert!(message.contains("(spec.sink.kafka.oversizeRecords: fail)"), "{message}");
}

/// Partitions added to the source while `runtime` runs are found and read from their
/// beginning, and their lag is exported.
fn added_partitions_are_consumed(name: &str, start: impl FnOnce(&Path) -> Runtime) {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    must(broker.create_topic(&input, 2), "creating the input topic");
    must(broker.create_topic(&output, 1), "creating the output topic");
    let job = copy_job(dir.path(), broker, name, "", "", "");
    let runtime = start(&job);
    let producer = producer(broker);
    produce_numbered(&producer, &input, 0..40, &[]);
    assert_eq!(numbers(&read_records(broker, &output, 40)), (0..40).collect(), "the first partitions");

    must(broker.add_partitions(&input, 4), "adding partitions");
    let producer = self::producer(broker);
    must(
        wait_until(Duration::from_secs(30), "the producer to see the added partitions", || {
            producer
                .client()
                .fetch_metadata(Some(&input), Duration::from_secs(5))
                .is_ok_and(|m| m.topics().first().is_some_and(|t| t.partitions().len() == 4))
        }),
        "metadata",
    );
    for n in 40..80 {
        let payload = json!({"n": n}).to_string();
        let record = BaseRecord::to(&input).key(&b"k"[..]).payload(payload.as_bytes()).partition(2 + (n % 2));
        must(kafka::send(&producer, record), "sending to an added partition");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    assert_eq!(
        numbers(&read_records(broker, &output, 80)),
        (0..80).collect(),
        "the added partitions, from their start"
    );
    let status: serde_json::Value = must(serde_json::from_str(&runtime.get("/status").1), "status is JSON");
    assert_eq!(status["partitionCount"], 4, "{status}");
    let lag = format!("weir_consumer_lag{{partition=\"3\",streamjob=\"{name}\",topic=\"{input}\"}}");
    must(wait_until(Duration::from_secs(30), "the added partition's lag", || runtime.metric(&lag) >= 0.0), "lag");
}

#[test]
fn partitions_added_to_the_source_are_consumed_under_the_operator() {
    added_partitions_are_consumed("grown-slots", |job| {
        let args = ["--instance", "a", "--assignment", "operator", "--partition-discovery-interval", "1s"];
        let runtime = Runtime::launch(job, &args);
        must(wait_until(Duration::from_secs(60), "the admin server", || runtime.get("/healthz").0 == 200), "start");
        runtime.assign(0, 1);
        runtime
    });
}

#[test]
fn partitions_added_to_the_source_are_consumed_in_a_consumer_group() {
    added_partitions_are_consumed("grown-group", |job| {
        Runtime::start_with(job, &["--partition-discovery-interval", "1s"])
    });
}

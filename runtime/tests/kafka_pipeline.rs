//! The runtime binary against a real Kafka-protocol broker: windowed results equal an
//! independent computation, malformed records are counted and dead-lettered, and a SIGTERM
//! mid-stream followed by a restart loses nothing and repeats nothing.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use rdkafka::producer::Producer;
use serde_json::{Value, json};
use weir_testkit::wait_until;

#[test]
fn windowed_results_equal_an_independent_computation_and_bad_or_late_records_are_dead_lettered() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "spend";
    must(broker.create_topic(&format!("{name}-in"), 3), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    must(broker.create_topic(&format!("{name}-dlq"), 1), "creating the dead-letter topic");

    let input = payments(3_000, 25, 0);
    let producer = producer(broker);
    produce_payments(&producer, &format!("{name}-in"), &input);
    // Undecodable, no event time, and two whose `amount` is of another type than every
    // other record's: each must fail alone, and none may take good records with it.
    let last_ts = input.last().map_or(BASE_TS, |p| p.ts);
    let odd_types = [
        json!({"user_id": "y", "amount": "lots", "currency": "EUR", "ts": last_ts}).to_string(),
        json!({"user_id": "z", "amount": {"cents": 5}, "currency": "EUR", "ts": last_ts}).to_string(),
    ];
    // And one from the year 2100: it must not move the watermark and make the rest late.
    let future = json!({"user_id": "w", "amount": 1, "currency": "EUR", "ts": 4_102_444_800_000_i64}).to_string();
    let bad = ["{not json", "[1, 2, 3]", r#"{"user_id": "x", "amount": 1, "currency": "EUR"}"#, future.as_str()];
    for bad in bad.iter().copied().chain(odd_types.iter().map(String::as_str)) {
        send(&producer, &format!("{name}-in"), "bad", bad);
    }
    let dead_letters = format!("  deadLetter: {{topic: {name}-dlq, lateRecords: true}}\n");
    let runtime = Runtime::start(&job_file(dir.path(), broker, name, &dead_letters));

    // Once everything above is consumed, the watermark is far past the first window: a record
    // for it now is late. It must be counted and dead-lettered, not aggregated.
    wait_until(Duration::from_secs(60), "the input to be consumed", || {
        runtime.metric("weir_records_in_total{streamjob=\"spend\"}") >= 3_006.0
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let late = json!({"user_id": input[0].user, "amount": 5, "currency": "EUR", "ts": BASE_TS}).to_string();
    send(&producer, &format!("{name}-in"), &input[0].user, &late);
    must(producer.flush(Duration::from_secs(30)), "flushing the late record");
    produce_flush_markers(&producer, &format!("{name}-in"), 3);

    let want = expected(&input);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got.len(), want.len(), "number of window results");
    assert_eq!(got, want);

    // Two undecodable payloads, one without its event time, one from the future, the two of
    // odd types (found at decoding, or by the pipeline when one is polled alone) and the late
    // record.
    let dead = read_records(broker, &format!("{name}-dlq"), 7);
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "weir.error").map(|(_, v)| v.as_str()))
        .collect();
    assert!(reasons.iter().filter(|r| r.starts_with("decode")).count() >= 4, "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("decode") || r.starts_with("pipeline")).count(),
        6,
        "{reasons:?}"
    );
    let beyond = "decode: event time 2100-01-01T00:00:00+00:00 is more than 1h ahead of the clock \
                  (source.kafka.eventTime.maxAhead)";
    assert!(reasons.contains(&beyond), "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.starts_with("late")).count(), 1, "{reasons:?}");
    let payloads: Vec<String> = dead.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    for odd in &odd_types {
        assert!(payloads.contains(odd), "{odd} is dead-lettered as it was consumed: {payloads:?}");
    }
    assert_eq!(runtime.metric("weir_records_late_total{streamjob=\"spend\"}"), 1.0);
    wait_until(Duration::from_secs(10), "the error counters", || {
        runtime.metric("weir_decode_errors_total{streamjob=\"spend\"}")
            + runtime.metric("weir_pipeline_errors_total{streamjob=\"spend\"}")
            == 6.0
    })
    .unwrap_or_else(|e| panic!("{e}: metrics were {}", runtime.get("/metrics").1));
    assert!(runtime.metric("weir_records_in_total{streamjob=\"spend\"}") >= 3_010.0);
    let metrics = runtime.get("/metrics").1;
    assert!(metrics.contains("weir_consumer_lag{"), "the lag gauge is exported");
    assert!(metrics.contains("weir_state_bytes{partition=\"0\""), "state sizes are exported: {metrics}");
    assert!(metrics.contains("weir_state_aggregates{partition=\"2\""), "per partition: {metrics}");
    let status: Value = must(serde_json::from_str(&runtime.get("/status").1), "status is JSON");
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(3), "{status}");
}

#[test]
fn sigterm_mid_stream_then_restart_loses_and_repeats_nothing() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "restart";
    must(broker.create_topic(&format!("{name}-in"), 2), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    // Progress is kept in the checkpoint folder (this broker does not return commit metadata).
    let checkpoints = format!("  checkpoint: {{storage: \"file://{}/checkpoints\"}}\n", dir.path().display());
    let job = job_file(dir.path(), broker, name, &checkpoints);
    let producer = producer(broker);

    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &first);
    let runtime = Runtime::start(&job);
    // Stop once it has emitted some windows, with others still open.
    wait_until(Duration::from_secs(60), "some results before the stop", || {
        runtime.metric("weir_records_out_total{streamjob=\"restart\"}") > 0.0
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runtime.terminate(), Some(0), "SIGTERM exits cleanly");

    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &format!("{name}-in"), &second);
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    let _restarted = Runtime::start(&job);

    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let records = read_records(broker, &format!("{name}-out"), want.len());
    let got = results(&records);
    assert_eq!(got, want);
}

#[test]
fn an_invalid_job_file_is_refused_with_the_field_path() {
    let dir = must(tempfile::tempdir(), "tempdir");
    let job = dir.path().join("bad.yaml");
    let spec = "source: {kafka: {bootstrapServers: 'k:9092', topic: in}}\n\
                sink: {kafka: {bootstrapServers: 'k:9092', topic: out, keyField: nope}}\n\
                pipeline: [{filter: 'amount >'}]\n";
    must(std::fs::write(&job, spec), "writing the job");
    let output = must(
        Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
            .args(["--job", &job.display().to_string(), "--log-format", "text"])
            .output(),
        "running weir-runtime",
    );
    assert_eq!(output.status.code(), Some(2));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("spec.pipeline[0].filter"), "{log}");
}

#[test]
fn window_state_past_its_budget_stops_the_pod_naming_the_budget() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "budget";
    must(broker.create_topic(&format!("{name}-in"), 1), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    // 2000 users in one window: far more than 64 KiB of keys and aggregates.
    produce_payments(&producer(broker), &format!("{name}-in"), &payments(2_000, 2_000, 0));
    let job = job_file(dir.path(), broker, name, "  stateBudget: 64Ki\n");
    let (code, message) = Runtime::until_it_stops(&job, dir.path(), &[]);
    assert_eq!(code, Some(1));
    assert!(message.contains("exceeds the state budget of 65536 bytes"), "{message}");
}

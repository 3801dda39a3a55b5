//! The runtime binary against a real Kafka-protocol broker: windowed results equal an
//! independent computation, malformed records are counted and dead-lettered, and a SIGTERM
//! mid-stream followed by a restart loses nothing and repeats nothing.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use weir_e2e::{
    broker::Broker,
    free_port, http_get,
    kafka::{self, Received},
    metric_value, wait_until,
};

const WINDOW_MS: i64 = 10_000;
/// Far beyond every test event: a record at this time closes all earlier windows.
const FLUSH_TS: i64 = 4_000_000_000_000;
const BASE_TS: i64 = 1_700_000_000_000;

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One generated payment.
#[derive(Debug, Clone)]
struct Payment {
    user: String,
    amount: i64,
    ts: i64,
}

/// Payments of `users` users over `count` records, event times rising with up to 2 s of
/// disorder (less than the job's 5 s allowance, so none is late).
fn payments(count: usize, users: usize, start: usize) -> Vec<Payment> {
    (start..start + count)
        .map(|i| {
            let jitter = ((i * 7919) % 2000) as i64;
            Payment {
                user: format!("user-{}", (i * 31) % users),
                amount: (i % 97) as i64 + 1,
                ts: BASE_TS + i as i64 * 50 - jitter,
            }
        })
        .collect()
}

/// The expected result: (user, window start) → (total, count), computed without the runtime.
fn expected(payments: &[Payment]) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for p in payments {
        let entry = out.entry((p.user.clone(), p.ts - p.ts.rem_euclid(WINDOW_MS))).or_insert((0, 0));
        entry.0 += p.amount;
        entry.1 += 1;
    }
    out
}

fn producer(broker: &Broker) -> BaseProducer {
    must(kafka::producer(&broker.bootstrap()), "creating a producer")
}

fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    must(kafka::send_text(producer, topic, key, payload), "sending a record");
}

fn produce_payments(producer: &BaseProducer, topic: &str, payments: &[Payment]) {
    for p in payments {
        let payload = json!({"user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts}).to_string();
        send(producer, topic, &p.user, &payload);
    }
    must(producer.flush(Duration::from_secs(30)), "flushing input");
}

/// One far-future record per partition, so every window of the test data closes.
fn produce_flush_markers(producer: &BaseProducer, topic: &str, partitions: i32) {
    for partition in 0..partitions {
        let payload = json!({"user_id": "flush", "amount": 0, "currency": "EUR", "ts": FLUSH_TS}).to_string();
        let record = BaseRecord::to(topic).key("flush").payload(&payload).partition(partition);
        if let Err((e, _)) = producer.send(record) {
            panic!("sending a flush marker: {e}");
        }
    }
    must(producer.flush(Duration::from_secs(30)), "flushing markers");
}

/// A windowed job reading `<name>-in`; `extra` is appended to its spec (indented lines).
fn job_file(dir: &Path, broker: &Broker, name: &str, extra: &str) -> std::path::PathBuf {
    let job = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: test}}
spec:
  source:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-in
      partitionedBy: [user_id]
      eventTime: {{field: ts, maxOutOfOrderness: 5s}}
  pipeline:
    - filter: "amount > 0 AND currency = 'EUR'"
    - keyBy: [user_id]
    - window: {{tumbling: {{size: 10s}}}}
    - aggregate: [{{fn: sum, field: amount, as: total}}, {{fn: count, as: payments}}]
  sink:
    kafka: {{bootstrapServers: "{servers}", topic: {name}-out, keyField: user_id}}
{extra}"#,
        servers = broker.bootstrap()
    );
    let path = dir.join(format!("{name}.yaml"));
    must(std::fs::write(&path, job), "writing the job file");
    path
}

struct Runtime {
    child: Child,
    admin: String,
}

impl Runtime {
    fn start(job: &Path) -> Self {
        let admin = format!("127.0.0.1:{}", must(free_port(), "free port"));
        let child = must(
            Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
                .args(["--job", &job.display().to_string(), "--admin-addr", &admin, "--log-format", "text"])
                .env("RUST_LOG", "warn,weir_runtime=info")
                .stdout(Stdio::null())
                .spawn(),
            "starting weir-runtime",
        );
        let runtime = Self { child, admin };
        must(
            wait_until(Duration::from_secs(60), "the runtime to become ready", || runtime.get("/readyz").0 == 200),
            "readiness",
        );
        runtime
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path).unwrap_or((0, String::new()))
    }

    fn metric(&self, series: &str) -> f64 {
        metric_value(&self.get("/metrics").1, series).unwrap_or(-1.0)
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("weir-runtime did not exit within 60 s of SIGTERM");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_records(broker: &Broker, topic: &str, count: usize) -> Vec<Received> {
    must(kafka::read_records(&broker.bootstrap(), topic, count, Duration::from_secs(90)), "reading records")
}

fn json(record: &Received) -> Value {
    must(record.json(), "output is JSON")
}

/// Output records as (user, window start) → (total, count), failing on a duplicate window.
fn results(records: &[Received]) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for record in records.iter().map(json) {
        let user = record["user_id"].as_str().unwrap_or_default().to_owned();
        let start = chrono::DateTime::parse_from_rfc3339(record["window_start"].as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|e| panic!("window_start of {record}: {e}"));
        let end = chrono::DateTime::parse_from_rfc3339(record["window_end"].as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis())
            .unwrap_or_default();
        assert_eq!(end - start, WINDOW_MS, "{record}");
        let value = (record["total"].as_i64().unwrap_or(-1), record["payments"].as_i64().unwrap_or(-1));
        assert!(out.insert((user, start), value).is_none(), "window emitted twice: {record}");
    }
    out
}

#[test]
fn windowed_results_equal_an_independent_computation_and_bad_or_late_records_are_dead_lettered() {
    let broker = must(Broker::start(), "starting the broker");
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "spend";
    must(broker.create_topic(&format!("{name}-in"), 3), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    must(broker.create_topic(&format!("{name}-dlq"), 1), "creating the dead-letter topic");

    let input = payments(3_000, 25, 0);
    let producer = producer(&broker);
    produce_payments(&producer, &format!("{name}-in"), &input);
    for bad in ["{not json", "[1, 2, 3]", r#"{"user_id": "x", "amount": 1, "currency": "EUR"}"#] {
        send(&producer, &format!("{name}-in"), "bad", bad);
    }
    let dead_letters = format!("  deadLetter: {{topic: {name}-dlq, lateRecords: true}}\n");
    let runtime = Runtime::start(&job_file(dir.path(), &broker, name, &dead_letters));

    // Once everything above is consumed, the watermark is far past the first window: a record
    // for it now is late. It must be counted and dead-lettered, not aggregated.
    wait_until(Duration::from_secs(60), "the input to be consumed", || {
        runtime.metric("weir_records_in_total{streamjob=\"spend\"}") >= 3_003.0
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let late = json!({"user_id": input[0].user, "amount": 5, "currency": "EUR", "ts": BASE_TS}).to_string();
    send(&producer, &format!("{name}-in"), &input[0].user, &late);
    must(producer.flush(Duration::from_secs(30)), "flushing the late record");
    produce_flush_markers(&producer, &format!("{name}-in"), 3);

    let want = expected(&input);
    let got = results(&read_records(&broker, &format!("{name}-out"), want.len()));
    assert_eq!(got.len(), want.len(), "number of window results");
    assert_eq!(got, want);

    // Two undecodable payloads, one without its event time, and the late record.
    let dead = read_records(&broker, &format!("{name}-dlq"), 4);
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "weir.error").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(reasons.iter().filter(|r| r.starts_with("decode")).count(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.starts_with("late")).count(), 1, "{reasons:?}");
    assert_eq!(runtime.metric("weir_records_late_total{streamjob=\"spend\"}"), 1.0);
    wait_until(Duration::from_secs(10), "the decode error counter", || {
        runtime.metric("weir_decode_errors_total{streamjob=\"spend\"}") == 3.0
    })
    .unwrap_or_else(|e| panic!("{e}: metrics were {}", runtime.get("/metrics").1));
    assert!(runtime.metric("weir_records_in_total{streamjob=\"spend\"}") >= 3_007.0);
    assert!(runtime.get("/metrics").1.contains("weir_consumer_lag{"), "the lag gauge is exported");
    let status: Value = must(serde_json::from_str(&runtime.get("/status").1), "status is JSON");
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(3), "{status}");
}

#[test]
fn sigterm_mid_stream_then_restart_loses_and_repeats_nothing() {
    let broker = must(Broker::start(), "starting the broker");
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "restart";
    must(broker.create_topic(&format!("{name}-in"), 2), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    // Progress is kept in the checkpoint folder (this broker does not return commit metadata).
    let checkpoints = format!("  checkpoint: {{storage: \"file://{}/checkpoints\"}}\n", dir.path().display());
    let job = job_file(dir.path(), &broker, name, &checkpoints);
    let producer = producer(&broker);

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
    let records = read_records(&broker, &format!("{name}-out"), want.len());
    let got = results(&records);
    assert_eq!(got, want);
}

#[test]
fn a_key_spread_over_partitions_is_refused_until_repartitioning_exists() {
    let broker = must(Broker::start(), "starting the broker");
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "uncovered";
    must(broker.create_topic(&format!("{name}-in"), 3), "creating the input topic");
    let job = job_file(dir.path(), &broker, name, "");
    let text = must(std::fs::read_to_string(&job), "reading the job").replace("      partitionedBy: [user_id]\n", "");
    must(std::fs::write(&job, text), "writing the job");
    let output = must(
        Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
            .args(["--job", &job.display().to_string(), "--admin-addr", "127.0.0.1:0", "--log-format", "text"])
            .output(),
        "running weir-runtime",
    );
    assert!(!output.status.success(), "must refuse to run");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("not covered by source.kafka.partitionedBy"), "{log}");
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

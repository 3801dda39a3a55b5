//! Helpers the runtime's broker tests share: generated payments, their expected window
//! results, the job file, and the runtime binary as a child process.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
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

pub const WINDOW_MS: i64 = 10_000;
/// Far beyond every test event: a record at this time closes all earlier windows.
pub const FLUSH_TS: i64 = 4_000_000_000_000;
pub const BASE_TS: i64 = 1_700_000_000_000;

pub fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One generated payment.
#[derive(Debug, Clone)]
pub struct Payment {
    pub user: String,
    pub amount: i64,
    pub ts: i64,
}

/// Payments of `users` users over `count` records, event times rising with up to 2 s of
/// disorder (less than the job's 5 s allowance, so none is late).
pub fn payments(count: usize, users: usize, start: usize) -> Vec<Payment> {
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
pub fn expected(payments: &[Payment]) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for p in payments {
        let entry = out.entry((p.user.clone(), p.ts - p.ts.rem_euclid(WINDOW_MS))).or_insert((0, 0));
        entry.0 += p.amount;
        entry.1 += 1;
    }
    out
}

pub fn producer(broker: &Broker) -> BaseProducer {
    must(kafka::producer(&broker.bootstrap()), "creating a producer")
}

pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    must(kafka::send_text(producer, topic, key, payload), "sending a record");
}

pub fn produce_payments(producer: &BaseProducer, topic: &str, payments: &[Payment]) {
    for p in payments {
        let payload = json!({"user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts}).to_string();
        send(producer, topic, &p.user, &payload);
    }
    must(producer.flush(Duration::from_secs(30)), "flushing input");
}

/// One far-future record per partition, so every window of the test data closes.
pub fn produce_flush_markers(producer: &BaseProducer, topic: &str, partitions: i32) {
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
pub fn job_file(dir: &Path, broker: &Broker, name: &str, extra: &str) -> std::path::PathBuf {
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

pub struct Runtime {
    pub child: Child,
    pub admin: String,
}

impl Runtime {
    pub fn start(job: &Path) -> Self {
        Self::start_with(job, &[])
    }

    /// Starts the runtime with extra arguments and waits until it is ready.
    pub fn start_with(job: &Path, args: &[&str]) -> Self {
        let runtime = Self::launch(job, args);
        must(
            wait_until(Duration::from_secs(90), "the runtime to become ready", || runtime.get("/readyz").0 == 200),
            "readiness",
        );
        runtime
    }

    /// Starts the runtime without waiting for it.
    pub fn launch(job: &Path, args: &[&str]) -> Self {
        let admin = format!("127.0.0.1:{}", must(free_port(), "free port"));
        let child = must(
            Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
                .args(["--job", &job.display().to_string(), "--admin-addr", &admin, "--log-format", "text"])
                .args(args)
                .env("RUST_LOG", "warn,weir_runtime=info")
                .stdout(Stdio::null())
                .spawn(),
            "starting weir-runtime",
        );
        Self { child, admin }
    }

    /// SIGKILL: no drain, no final checkpoint.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `POST path` on the admin server: status and body.
    pub fn post(&self, path: &str) -> (u16, String) {
        post(&self.admin, path).unwrap_or((0, String::new()))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path).unwrap_or((0, String::new()))
    }

    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.get("/metrics").1, series).unwrap_or(-1.0)
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(mut self) -> Option<i32> {
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

pub fn read_records(broker: &Broker, topic: &str, count: usize) -> Vec<Received> {
    must(kafka::read_records(&broker.bootstrap(), topic, count, Duration::from_secs(90)), "reading records")
}

pub fn json(record: &Received) -> Value {
    must(record.json(), "output is JSON")
}

/// Output records as (user, window start) → (total, count), failing on a duplicate window.
pub fn results(records: &[Received]) -> BTreeMap<(String, i64), (i64, i64)> {
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

/// A bare HTTP/1.0 POST without a body.
fn post(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(stream, "POST {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

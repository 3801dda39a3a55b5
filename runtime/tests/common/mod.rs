//! Helpers the runtime's broker tests share: generated payments, their expected window
//! results, the job file, and the runtime binary as a child process.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::producer::BaseProducer;
use serde_json::Value;
use weir_testkit::{
    broker::Broker,
    free_port, http_get,
    kafka::{self, Received},
    metric_value, wait_until,
};

#[allow(unused_imports)]
pub use weir_testkit::payments::{BASE_TS, FLUSH_TS, Payment, WINDOW_MS, expected, payments};

pub fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One broker for the tests of a binary that do not restart it; each test has its own topics.
pub fn shared_broker() -> &'static Broker {
    static BROKER: std::sync::OnceLock<Broker> = std::sync::OnceLock::new();
    BROKER.get_or_init(|| must(Broker::start(), "starting the broker"))
}

/// Creates `<name>-in` with `partitions` partitions and `<name>-out` with one (the test
/// broker, like most production clusters, does not create topics on use).
pub fn create_topics(broker: &Broker, name: &str, partitions: u32) {
    must(broker.create_topic(&format!("{name}-in"), partitions), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
}

/// The shared broker with `<name>-in` (`partitions` partitions) and `<name>-out`, and a
/// folder for the job file and checkpoints.
pub fn setup(name: &str, partitions: u32) -> (&'static Broker, tempfile::TempDir) {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    create_topics(broker, name, partitions);
    (broker, dir)
}

pub fn producer(broker: &Broker) -> BaseProducer {
    must(kafka::producer(&broker.bootstrap()), "creating a producer")
}

pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    must(kafka::send_text(producer, topic, key, payload), "sending a record");
}

pub fn produce_payments(producer: &BaseProducer, topic: &str, payments: &[Payment]) {
    must(weir_testkit::payments::produce(producer, topic, payments), "producing payments");
}

/// One far-future record per partition, so every window of the test data closes.
pub fn produce_flush_markers(producer: &BaseProducer, topic: &str, partitions: i32) {
    must(weir_testkit::payments::produce_flush_markers(producer, topic, partitions), "producing flush markers");
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
    write_job_file(dir, name, &job)
}

/// The windowed job of [`job_file`] with `delivery: exactlyOnce`.
pub fn exactly_once_job_file(dir: &Path, broker: &Broker, name: &str, extra: &str) -> std::path::PathBuf {
    let job = job_file(dir, broker, name, extra);
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("keyField: user_id}", "keyField: user_id, delivery: exactlyOnce}");
    must(std::fs::write(&job, text), "writing the job");
    job
}

/// The windowed job of [`job_file`] without `partitionedBy`: its source is not keyed by
/// `user_id`, so it is repartitioned.
pub fn unkeyed_job(dir: &Path, broker: &Broker, name: &str, extra: &str) -> std::path::PathBuf {
    let job = job_file(dir, broker, name, extra);
    let text = must(std::fs::read_to_string(&job), "reading the job").replace("      partitionedBy: [user_id]\n", "");
    must(std::fs::write(&job, text), "writing the job");
    job
}

/// Writes a job file `<dir>/<name>.yaml`; returns its path.
pub fn write_job_file(dir: &Path, name: &str, job: &str) -> std::path::PathBuf {
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
        Self::start_within(job, args, Duration::from_secs(90))
    }

    /// Starts and waits up to `timeout` for readiness.
    pub fn start_within(job: &Path, args: &[&str], timeout: Duration) -> Self {
        Self::launch(job, args).ready_within(timeout)
    }

    fn ready_within(self, timeout: Duration) -> Self {
        must(wait_until(timeout, "the runtime to become ready", || self.get("/readyz").0 == 200), "readiness");
        self
    }

    /// Starts an instance that takes its partitions from the operator (`--assignment
    /// operator`) and waits until its admin server answers.
    pub fn operated(job: &Path, instance: &str) -> Self {
        let runtime = Self::launch(job, &["--instance", instance, "--assignment", "operator"]);
        must(wait_until(Duration::from_secs(60), "the admin server", || runtime.get("/healthz").0 == 200), "starting");
        runtime
    }

    /// Gives the instance slot `slot` of `slots` (`POST /assign`) and waits until it is
    /// ready with it.
    pub fn assign(&self, slot: u32, slots: u32) {
        let (code, body) = self.post(&format!("/assign?slot={slot}&slots={slots}"));
        assert_eq!(code, 200, "assigning slot {slot} of {slots}: {body}");
        let answer: Value = must(serde_json::from_str(&body), "the answer is JSON");
        assert_eq!(answer, serde_json::json!({"slot": slot, "slots": slots}));
        must(
            wait_until(Duration::from_secs(60), "readiness with the slot", || self.get("/readyz").0 == 200),
            "readiness",
        );
    }

    /// A ready instance owning every partition, given them as the operator does: after a
    /// `kill -9` the next instance takes them at once, where in a consumer group it would
    /// wait for the killed member's session to time out (and on the test broker, sometimes
    /// for much longer).
    pub fn start_alone(job: &Path, instance: &str) -> Self {
        let runtime = Self::operated(job, instance);
        runtime.assign(0, 1);
        runtime
    }

    /// Starts the runtime without waiting for it.
    pub fn launch(job: &Path, args: &[&str]) -> Self {
        Self::launch_with_env(job, args, &[])
    }

    /// Starts the runtime with extra environment variables and waits until it is ready.
    pub fn start_with_env(job: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        Self::launch_with_env(job, args, env).ready_within(Duration::from_secs(90))
    }

    /// Starts the runtime with extra environment variables, without waiting for it.
    pub fn launch_with_env(job: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let admin = format!("127.0.0.1:{}", must(free_port(), "free port"));
        let child = must(
            Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
                .args(["--job", &job.display().to_string(), "--admin-addr", &admin, "--log-format", "text"])
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", "warn,weir_runtime=info")
                .stdout(Stdio::null())
                .spawn(),
            "starting weir-runtime",
        );
        Self { child, admin }
    }

    /// Starts the runtime with `args` and waits up to 90 s for it to stop on its own: its
    /// exit code and the termination message it left in `dir`.
    pub fn until_it_stops(job: &Path, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
        let termination_log = dir.join("termination-log");
        let _ = std::fs::remove_file(&termination_log);
        let log = termination_log.display().to_string();
        let args: Vec<&str> = args.iter().copied().chain(["--termination-log", log.as_str()]).collect();
        let mut runtime = Self::launch(job, &args);
        must(
            wait_until(Duration::from_secs(90), "the runtime to stop", || {
                matches!(runtime.child.try_wait(), Ok(Some(_)))
            }),
            "stopping",
        );
        let code = must(runtime.child.wait(), "exit status").code();
        (code, std::fs::read_to_string(&termination_log).unwrap_or_default())
    }

    /// SIGKILL: no drain, no final checkpoint.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `POST path` on the admin server: status and body.
    pub fn post(&self, path: &str) -> (u16, String) {
        weir_testkit::http_post(&self.admin, path, None).unwrap_or((0, String::new()))
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
    weir_testkit::payments::results(records).unwrap_or_else(|e| panic!("{e}"))
}

/// Exactly-once across a restart: a windowed job with
/// checkpoints (started, ready to consume, by `start`) commits results and a checkpoint,
/// exits on SIGTERM, and a second instance finishes the input. Every window result is
/// committed once.
pub fn exactly_once_across_a_restart(name: &str, start: impl Fn(&Path) -> Runtime) {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    must(broker.create_topic(&input, 2), "creating the input topic");
    must(broker.create_topic(&output, 1), "creating the output topic");
    let storage = format!("file://{}/checkpoints", dir.path().display());
    let extra = format!("  checkpoint: {{storage: \"{storage}\", interval: 1s}}\n");
    let job = exactly_once_job_file(dir.path(), broker, name, &extra);
    let producer = producer(broker);
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &input, &first);

    let runtime = start(&job);
    let metric = |family: &str| runtime.metric(&format!("{family}{{streamjob=\"{name}\"}}"));
    must(
        wait_until(Duration::from_secs(90), "results and a committed checkpoint", || {
            metric("weir_records_out_total") > 0.0 && metric("weir_last_checkpoint_timestamp_seconds") > 0.0
        }),
        "first checkpoint",
    );
    assert_eq!(runtime.terminate(), Some(0), "SIGTERM commits the open transaction and exits cleanly");

    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &input, &second);
    produce_flush_markers(&producer, &input, 2);
    let _restarted = start(&job);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let records = must(
        kafka::read_committed_records(&broker.bootstrap(), &output, want.len(), Duration::from_secs(120)),
        "reading committed results",
    );
    assert_eq!(results(&records), want, "each window result committed once");
}

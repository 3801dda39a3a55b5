//! The windowed payments job on a local stack, as the rollout and autoscaling scenarios run
//! it: per-user 10 s tumbling totals on event time, a load that runs until stopped, and the
//! output checked against the totals computed without the runtime (no window lost, none
//! emitted twice).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    kafka::{self, read_committed_records, read_records},
    payments::{self, Payment},
    stack::{LocalStack, RUNTIME_IMAGE, running},
};

/// How long one step of a scenario may take.
pub const WAIT: Duration = Duration::from_secs(120);
/// Users the payments are keyed by.
pub const USERS: usize = 20;

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A payments job `name` reading `<name>-in` and writing `<name>-out`, both with
/// `partitions` partitions, on `stack`.
#[derive(Debug)]
pub struct WindowedJob {
    /// The stack it runs on.
    pub stack: LocalStack,
    /// The StreamJob's name.
    pub name: String,
    /// Partitions of the input and output topics.
    pub partitions: i32,
    /// Whether the sink writes in transactions (`delivery: exactlyOnce`), read committed.
    exactly_once: bool,
    started: Instant,
}

impl WindowedJob {
    /// Creates the topics on `stack`'s broker.
    pub fn new(stack: LocalStack, name: &str, partitions: i32) -> Self {
        for topic in ["in", "out"] {
            let partitions = u32::try_from(partitions).unwrap_or(1);
            must(stack.broker.create_topic(&format!("{name}-{topic}"), partitions), "creating a topic");
        }
        Self { stack, name: name.to_owned(), partitions, exactly_once: false, started: Instant::now() }
    }

    /// The same job with an exactly-once sink, whose output is read as committed.
    pub fn exactly_once(self) -> Self {
        Self { exactly_once: true, ..self }
    }

    /// Seconds since the scenario started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Logs a step of the scenario with the time it was reached.
    pub fn step(&self, what: &str) {
        eprintln!("{:>6.1}s {what}", self.elapsed());
    }

    /// The job, with `extra` merged into its spec.
    pub fn job(&self, extra: Value) -> Value {
        let bootstrap = self.stack.broker.bootstrap();
        let mut spec = json!({
            "parallelism": 1,
            "image": format!("{RUNTIME_IMAGE}:v1"),
            "source": {"kafka": {"bootstrapServers": bootstrap, "topic": format!("{}-in", self.name),
                "partitionedBy": ["user_id"], "eventTime": {"field": "ts", "maxOutOfOrderness": "5s"}}},
            "pipeline": [
                {"filter": "amount > 0 AND currency = 'EUR'"},
                {"keyBy": ["user_id"]},
                {"window": {"tumbling": {"size": "10s"}}},
                {"aggregate": [{"fn": "sum", "field": "amount", "as": "total"}, {"fn": "count", "as": "payments"}]},
            ],
            "sink": {"kafka": {"bootstrapServers": bootstrap, "topic": format!("{}-out", self.name),
                "keyField": "user_id"}},
            "checkpoint": {"storage": self.stack.storage_url(), "interval": "2s"},
        });
        if self.exactly_once {
            spec["sink"]["kafka"]["delivery"] = json!("exactlyOnce");
        }
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": self.name}, "spec": spec})
    }

    /// Applies the job with `extra` in its spec.
    pub fn apply(&self, extra: Value) {
        must(self.stack.apply(&self.job(extra)), "applying the job");
    }

    /// Waits for the job to satisfy `condition`, and logs the step.
    pub fn wait(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let job = must(self.stack.wait_for_job(&self.name, what, WAIT, condition), what);
        self.step(what);
        job
    }

    /// Produces payments `from..`, `per_second` of them in batches of a tenth, until stopped.
    /// A burst goes out between two batches, so event time keeps rising across it.
    pub fn produce_until_stopped(&self, from: usize, per_second: usize) -> Producing {
        let stop = Arc::new(AtomicBool::new(false));
        let burst = Arc::new(AtomicUsize::new(0));
        let (sent_burst, burst_sent) = mpsc::channel();
        let bootstrap = self.stack.broker.bootstrap();
        let topic = format!("{}-in", self.name);
        let (stopping, bursting) = (stop.clone(), burst.clone());
        let thread = std::thread::spawn(move || {
            let producer = must(kafka::producer(&bootstrap), "a producer");
            let mut sent = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let extra = bursting.swap(0, Ordering::Relaxed);
                let batch = payments::payments(per_second.div_ceil(10) + extra, USERS, from + sent.len());
                must(payments::produce(&producer, &topic, &batch), "producing payments");
                sent.extend(batch);
                if extra > 0 {
                    // The test may be gone already; the load goes on until stopped.
                    let _ = sent_burst.send(Instant::now());
                }
                // Pacing of the load, not synchronisation.
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        });
        Producing { stop, burst, burst_sent, thread }
    }

    /// Produces `batch` at once.
    pub fn produce(&self, batch: &[Payment]) {
        let producer = must(kafka::producer(&self.stack.broker.bootstrap()), "a producer");
        must(payments::produce(&producer, &format!("{}-in", self.name), batch), "producing payments");
    }

    /// Closes every window, then reads the output and compares it with `sent`.
    pub fn assert_exact_output(&self, sent: &[Payment]) {
        let producer = must(kafka::producer(&self.stack.broker.bootstrap()), "a producer");
        let input = format!("{}-in", self.name);
        must(payments::produce_flush_markers(&producer, &input, self.partitions), "flush markers");
        let expected = payments::expected(sent);
        let output = format!("{}-out", self.name);
        let read = if self.exactly_once { read_committed_records } else { read_records };
        let records = must(read(&self.stack.broker.bootstrap(), &output, expected.len(), WAIT), "the output");
        let results = payments::results(&records).unwrap_or_else(|e| panic!("{e}\n{}", self.stack.diagnostics()));
        assert_eq!(results.len(), expected.len(), "windows out vs expected\n{}", self.stack.diagnostics());
        assert_eq!(results, expected, "every window exactly once with the right totals");
        self.step(&format!("output exact: {} windows of {} payments", expected.len(), sent.len()));
    }
}

/// A load running on its own thread.
#[derive(Debug)]
pub struct Producing {
    stop: Arc<AtomicBool>,
    burst: Arc<AtomicUsize>,
    burst_sent: mpsc::Receiver<Instant>,
    thread: JoinHandle<Vec<Payment>>,
}

impl Producing {
    /// Sends `count` more payments at once; returns when the broker has them.
    pub fn burst(&self, count: usize) -> Instant {
        self.burst.fetch_add(count, Ordering::Relaxed);
        must(self.burst_sent.recv_timeout(WAIT), "the burst")
    }

    /// Stops the load; returns what it sent.
    pub fn finish(self) -> Vec<Payment> {
        self.stop.store(true, Ordering::Relaxed);
        must(self.thread.join().map_err(|_| "panicked"), "the producer thread")
    }
}

/// The job's `metadata.generation`.
pub fn generation(job: &Value) -> i64 {
    job["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// Whether the job runs `replicas` ready pods of its latest generation.
pub fn settled_on(job: &Value, replicas: i64) -> bool {
    running(job, replicas) && job["status"]["observedGeneration"] == job["metadata"]["generation"]
}

/// The savepoint of this generation's rollout for `reason`, if it was taken.
pub fn last_savepoint<'a>(job: &'a Value, reason: &str) -> Option<&'a Value> {
    let savepoint = &job["status"]["lastSavepoint"];
    let generation = format!("-g{}-{reason}-", generation(job));
    (savepoint["reason"] == reason && savepoint["id"].as_str().is_some_and(|id| id.contains(&generation)))
        .then_some(savepoint)
}

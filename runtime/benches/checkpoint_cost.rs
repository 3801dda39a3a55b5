//! What checkpoints and exactly-once delivery cost in throughput, through a real broker,
//! printed as figures (run with `cargo bench -p weir-runtime --bench checkpoint_cost`).
//!
//! Both parts run `weir-runtime` on a windowed job (keyBy + 60 s tumbling window + sum/count)
//! over the same pre-filled input topic, in alternating runs (A, B, A, B, …) since the
//! machine is noisy, and report medians. Each run reads the whole topic with its own consumer
//! group and writes to its own output topic. Throughput is the runtime's own counter
//! `weir_records_in_total`, sampled between two points after start-up: from the moment it
//! passes 10 % of the input to the moment it passes 90 %, so the group join and the tail are
//! left out.
//!
//! 1. Checkpoint cost: no `checkpoint` (offsets committed every 1 s, the runtime's default)
//!    against `checkpoint: {interval: 10s, storage: file://…}`.
//! 2. Exactly-once against idempotent, both with checkpoints every 10 s to `file://`.
//!
//! Both run on Apache Kafka (`e2e/kafka/start.sh`), one broker per part. Environment: `WEIR_BENCH_RECORDS_CHECKPOINT` (default 2,000,000),
//! `WEIR_BENCH_RECORDS_EOS` (default 6,500,000), `WEIR_BENCH_PAIRS` (A/B pairs per part,
//! default 3), `WEIR_BENCH_PARTS` (`checkpoint`, `eos` or both, default both).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    producer::{BaseProducer, BaseRecord, Producer},
};
use weir_testkit::{broker::Broker, free_port, http_get, kafka, metric_value};

const PARTITIONS: u32 = 3;
const USERS: usize = 10_000;
const BASE_TS: i64 = 1_700_000_000_000;

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// `records` payments of 10,000 users, event time rising 1 ms per record: each 60 s window
/// holds 60,000 records and about 10,000 (user, window) results, one per 6 input records.
fn fill(broker: &Broker, topic: &str, records: usize) {
    let started = Instant::now();
    let producer: BaseProducer = must(
        ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .create(),
        "producer",
    );
    for i in 0..records {
        let user = format!("user-{}", (i * 31) % USERS);
        let payload =
            format!(r#"{{"user_id":"{user}","amount":{},"currency":"EUR","ts":{}}}"#, i % 97 + 1, BASE_TS + i as i64);
        must(
            kafka::send(&producer, BaseRecord::to(topic).key(user.as_bytes()).payload(payload.as_bytes())),
            "sending a record",
        );
    }
    must(producer.flush(Duration::from_secs(600)), "flushing input");
    eprintln!("filled {topic} with {records} records in {:.0} s", started.elapsed().as_secs_f64());
}

/// The declared record schema (the fast decoding path).
const SCHEMA: &str = "[{name: user_id, type: string}, {name: amount, type: long}, \
                      {name: currency, type: string}, {name: ts, type: long}]";

/// The job file of one run: `checkpoint` is the storage folder, if any.
fn job(broker: &Broker, dir: &Path, name: &str, input: &str, checkpoint: Option<&Path>, delivery: &str) -> String {
    let checkpoint = checkpoint
        .map(|path| format!("  checkpoint: {{interval: 10s, storage: \"file://{}\"}}\n", path.display()))
        .unwrap_or_default();
    let text = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: bench}}
spec:
  source:
    kafka:
      bootstrapServers: "{b}"
      topic: {input}
      partitionedBy: [user_id]
      eventTime: {{field: ts, maxOutOfOrderness: 5s}}
      schema: {SCHEMA}
  pipeline:
    - filter: "amount > 0 AND currency = 'EUR'"
    - keyBy: [user_id]
    - window: {{tumbling: {{size: 60s}}}}
    - aggregate: [{{fn: sum, field: amount, as: total}}, {{fn: count, as: payments}}]
  sink:
    kafka: {{bootstrapServers: "{b}", topic: {name}-out, keyField: user_id, delivery: {delivery}}}
{checkpoint}"#,
        b = broker.bootstrap()
    );
    let path = dir.join(format!("{name}.yaml"));
    must(std::fs::write(&path, text), "job file");
    path.display().to_string()
}

/// CPU seconds (user + system) of a process so far, from /proc.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// One sample of a running job.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    records_in: f64,
    cpu: f64,
    checkpoints: f64,
    checkpoint_seconds: f64,
    machine: (f64, f64),
}

/// What one run measured between its two sample points.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    cpu_per_million: f64,
    checkpoints: f64,
    checkpoint_seconds: f64,
    machine_busy: f64,
    join: Duration,
}

struct Runtime {
    child: Child,
    admin: String,
    name: String,
}

impl Runtime {
    fn launch(job: &str, name: &str) -> Self {
        let admin = format!("127.0.0.1:{}", must(free_port(), "port"));
        let child = must(
            Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
                .args(["--job", job, "--admin-addr", &admin, "--log-format", "text", "--instance", name])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn(),
            "weir-runtime",
        );
        Self { child, admin, name: name.to_owned() }
    }

    fn sample(&mut self) -> Sample {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("weir-runtime {} exited early: {status}", self.name);
        }
        let text = http_get(&self.admin, "/metrics").map(|r| r.1).unwrap_or_default();
        let series = |metric: &str| metric_value(&text, &format!("{metric}{{streamjob=\"{}\"}}", self.name));
        Sample {
            at: Instant::now(),
            records_in: series("weir_records_in_total").unwrap_or(0.0),
            cpu: cpu_seconds_of(self.child.id()),
            checkpoints: series("weir_checkpoint_duration_seconds_count").unwrap_or(0.0),
            checkpoint_seconds: series("weir_checkpoint_duration_seconds_sum").unwrap_or(0.0),
            machine: machine_jiffies(),
        }
    }

    /// Samples every 50 ms until `records_in` reaches `target`.
    fn sample_at(&mut self, target: f64, timeout: Duration) -> Sample {
        let deadline = Instant::now() + timeout;
        loop {
            let sample = self.sample();
            if sample.records_in >= target {
                return sample;
            }
            if Instant::now() > deadline {
                panic!("{}: {} records in after {timeout:?}, waiting for {target}", self.name, sample.records_in);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one job over `input` (holding `records`) and measures it between 10 % and 90 %.
fn run(broker: &Broker, dir: &Path, name: &str, input: &str, records: usize, variant: &Variant) -> Measured {
    must(broker.create_topic(&format!("{name}-out"), PARTITIONS), "output topic");
    let storage = dir.join(format!("{name}-checkpoints"));
    let job = job(broker, dir, name, input, variant.checkpoint.then_some(storage.as_path()), variant.delivery);
    let started = Instant::now();
    let mut runtime = Runtime::launch(&job, name);
    let timeout = Duration::from_secs(900);
    let first = runtime.sample_at(1.0, timeout);
    let join = first.at - started;
    let a = runtime.sample_at(records as f64 * 0.1, timeout);
    let b = runtime.sample_at(records as f64 * 0.9, timeout);
    drop(runtime);
    let seconds = (b.at - a.at).as_secs_f64();
    let consumed = b.records_in - a.records_in;
    let measured = Measured {
        rate: consumed / seconds,
        cpu_per_million: (b.cpu - a.cpu) * 1e6 / consumed,
        checkpoints: b.checkpoints - a.checkpoints,
        checkpoint_seconds: b.checkpoint_seconds - a.checkpoint_seconds,
        machine_busy: (b.machine.0 - a.machine.0) / (b.machine.1 - a.machine.1).max(1.0),
        join,
    };
    eprintln!(
        "  {name:<22} {:>8.0} records/s over {seconds:>5.1} s, {:>5.1} CPU s/M, {} checkpoints taking {:.3} s, \
         machine {:.0} % busy, first record after {:.1} s",
        measured.rate,
        measured.cpu_per_million,
        measured.checkpoints,
        measured.checkpoint_seconds,
        measured.machine_busy * 100.0,
        join.as_secs_f64()
    );
    measured
}

struct Variant {
    label: &'static str,
    checkpoint: bool,
    delivery: &'static str,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Alternates the two variants `pairs` times and prints medians and the ratio B / A.
fn compare(broker: &Broker, part: &str, records: usize, pairs: usize, a: &Variant, b: &Variant, target: &str) {
    let dir = must(tempfile::tempdir(), "tempdir");
    let input = format!("{part}-in");
    must(broker.create_topic(&input, PARTITIONS), "input topic");
    fill(broker, &input, records);
    let mut results: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
    for pair in 0..pairs {
        for (i, variant) in [a, b].into_iter().enumerate() {
            let name = format!("{part}-{}-{pair}", variant.label);
            results[i].push(run(broker, dir.path(), &name, &input, records, variant));
        }
    }
    let rates = |i: usize| results[i].iter().map(|m| m.rate).collect::<Vec<_>>();
    let ratios: Vec<f64> = results[0].iter().zip(&results[1]).map(|(x, y)| y.rate / x.rate).collect();
    println!(
        "{part}: {records} JSON records over {PARTITIONS} partitions, {pairs} alternating pairs, 10 %–90 % of input"
    );
    for (i, variant) in [a, b].into_iter().enumerate() {
        let of = |f: fn(&Measured) -> f64| median(results[i].iter().map(f).collect());
        let r = rates(i);
        let (low, high) = (r.iter().copied().fold(f64::INFINITY, f64::min), r.iter().copied().fold(0.0, f64::max));
        println!(
            "  {:<28} median {:>8.0} records/s (range {low:.0}–{high:.0}), {:>5.1} CPU s/M, \
             {:.0} checkpoints taking {:.3} s in the window, machine {:.0} % busy, first record after {:.1} s",
            variant.label,
            median(r.clone()),
            of(|m| m.cpu_per_million),
            of(|m| m.checkpoints),
            of(|m| m.checkpoint_seconds),
            of(|m| m.machine_busy) * 100.0,
            of(|m| m.join.as_secs_f64()),
        );
    }
    let ratio = median(rates(1)) / median(rates(0));
    let ratios_text: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "  {} / {}: {ratio:.3} (ratio of medians); per pair {} (median {:.3}); target {target}",
        b.label,
        a.label,
        ratios_text.join(", "),
        median(ratios.clone())
    );
}

fn main() {
    let pairs = env_or("WEIR_BENCH_PAIRS", 3);
    let parts = std::env::var("WEIR_BENCH_PARTS").unwrap_or_else(|_| "checkpoint,eos".into());
    if parts.contains("checkpoint") {
        let broker = must(Broker::start(), "broker");
        compare(
            &broker,
            "ckpt",
            env_or("WEIR_BENCH_RECORDS_CHECKPOINT", 2_000_000),
            pairs,
            &Variant { label: "no-checkpoint", checkpoint: false, delivery: "idempotent" },
            &Variant { label: "checkpoint-10s", checkpoint: true, delivery: "idempotent" },
            "≥ 0.95 (under 5 % cost)",
        );
    }
    if parts.contains("eos") {
        let broker = must(Broker::start(), "broker");
        compare(
            &broker,
            "eos",
            env_or("WEIR_BENCH_RECORDS_EOS", 6_500_000),
            pairs,
            &Variant { label: "idempotent", checkpoint: true, delivery: "idempotent" },
            &Variant { label: "exactly-once", checkpoint: true, delivery: "exactlyOnce" },
            "≥ 0.7",
        );
    }
}

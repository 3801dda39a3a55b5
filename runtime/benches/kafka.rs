//! Throughput through a real broker, printed as figures (run with `cargo bench -p
//! weir-runtime --bench kafka`): a plain rdkafka program that copies each record from one
//! topic to another, and `weir-runtime` running a filter/select job over the same records,
//! on the same broker in the same run. Also CPU seconds per million records of each.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseProducer, BaseRecord, Producer},
};
use weir_testkit::{broker::Broker, free_port, http_get, kafka, metric_value, wait_until};

const RECORDS: usize = 200_000;

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn config(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker.bootstrap());
    config
}

fn send(producer: &BaseProducer, record: BaseRecord<'_, [u8], [u8]>) {
    must(kafka::send(producer, record), "sending a record");
}

fn fill(broker: &Broker, topic: &str) {
    let producer: BaseProducer = must(config(broker).set("linger.ms", "20").create(), "producer");
    for i in 0..RECORDS {
        let payload = format!(r#"{{"user_id":"user-{}","amount":{},"currency":"EUR","ts":{}}}"#, i % 1000, i % 97, i);
        let key = format!("user-{}", i % 1000);
        send(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes()));
    }
    must(producer.flush(Duration::from_secs(120)), "flushing input");
}

/// CPU seconds this process has used so far (user + system), from /proc.
fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The plain copy: consume every record and produce it unchanged (`idempotent`: with an
/// idempotent producer, as the runtime's default delivery has).
fn copy(broker: &Broker, from: &str, to: &str, idempotent: bool) -> (Duration, f64) {
    let group = format!("bench-copy-{to}");
    let consumer: BaseConsumer =
        must(config(broker).set("group.id", group).set("auto.offset.reset", "earliest").create(), "consumer");
    let producer: BaseProducer = must(
        config(broker).set("linger.ms", "5").set("enable.idempotence", idempotent.to_string()).create(),
        "producer",
    );
    must(consumer.subscribe(&[from]), "subscribe");
    let cpu = own_cpu_seconds();
    let started = Instant::now();
    let mut copied = 0;
    while copied < RECORDS {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let mut record = BaseRecord::to(to).payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            send(&producer, record);
            copied += 1;
        }
    }
    must(producer.flush(Duration::from_secs(120)), "flushing the copy");
    (started.elapsed(), own_cpu_seconds() - cpu)
}

/// The declared record schema, for the fast decoding path.
const SCHEMA: &str = ", schema: [{name: user_id, type: string}, {name: amount, type: long}, \
                      {name: currency, type: string}, {name: ts, type: long}]";

/// weir-runtime with a filter and a select, until it has produced every record.
/// `delivery` is the sink's delivery mode (`idempotent` is the default).
fn runtime(
    broker: &Broker,
    from: &str,
    to: &str,
    dir: &std::path::Path,
    schema: &str,
    delivery: &str,
) -> (Duration, f64) {
    let job = format!(
        "metadata: {{name: {to}}}\nspec:\n  source: {{kafka: {{bootstrapServers: '{b}', topic: {from}{schema}}}}}\n  \
         pipeline: [{{filter: 'amount >= 0'}}, {{select: [user_id, amount, currency, ts]}}]\n  \
         sink: {{kafka: {{bootstrapServers: '{b}', topic: {to}, keyField: user_id, linger: 5ms, delivery: {delivery}}}}}\n",
        b = broker.bootstrap()
    );
    let path = dir.join(format!("{to}.yaml"));
    must(std::fs::write(&path, job), "job file");
    let admin = format!("127.0.0.1:{}", must(free_port(), "port"));
    let started = Instant::now();
    let mut child = must(
        Command::new(env!("CARGO_BIN_EXE_weir-runtime"))
            .args(["--job", &path.display().to_string(), "--admin-addr", &admin, "--log-format", "text"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn(),
        "weir-runtime",
    );
    let out = || metric_value(&http_get(&admin, "/metrics").map(|r| r.1).unwrap_or_default(), "weir_records_out_total");
    must(
        wait_until(Duration::from_secs(600), "the runtime to copy every record", || {
            out().unwrap_or(0.0) >= RECORDS as f64
        }),
        "runtime",
    );
    let elapsed = started.elapsed();
    let cpu = cpu_seconds_of(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, cpu)
}

fn main() {
    let broker = must(Broker::start(), "broker");
    let dir = must(tempfile::tempdir(), "tempdir");
    for topic in [
        "bench-in",
        "bench-copy",
        "bench-copy-idempotent",
        "bench-out",
        "bench-out-declared",
        "bench-out-at-least-once",
    ] {
        must(broker.create_topic(topic, 3), "topic");
    }
    fill(&broker, "bench-in");
    let (copy_time, copy_cpu) = copy(&broker, "bench-in", "bench-copy", false);
    let (idempotent_copy_time, idempotent_copy_cpu) = copy(&broker, "bench-in", "bench-copy-idempotent", true);
    let (weir_time, weir_cpu) = runtime(&broker, "bench-in", "bench-out", dir.path(), "", "idempotent");
    let (declared_time, declared_cpu) =
        runtime(&broker, "bench-in", "bench-out-declared", dir.path(), SCHEMA, "idempotent");
    // The copy's producer is not idempotent: the same without idempotence, to compare like with like.
    let (plain_time, plain_cpu) =
        runtime(&broker, "bench-in", "bench-out-at-least-once", dir.path(), SCHEMA, "atLeastOnce");
    let rate = |t: Duration| RECORDS as f64 / t.as_secs_f64();
    let per_million = |cpu: f64| cpu * 1e6 / RECORDS as f64;
    println!("through Apache Kafka, {RECORDS} JSON records over 3 partitions, start-up included:");
    let line = |what: &str, t: Duration, cpu: f64| {
        let (records_per_second, cpu_per_million) = (rate(t), per_million(cpu));
        let ratio = rate(t) / rate(copy_time);
        println!("  {what:<44} {records_per_second:>8.0} records/s {cpu_per_million:>6.1} CPU s/M  {ratio:>5.2}x copy");
    };
    line("plain rdkafka copy", copy_time, copy_cpu);
    line("  same, idempotent producer", idempotent_copy_time, idempotent_copy_cpu);
    line("weir-runtime filter+select, inferred JSON", weir_time, weir_cpu);
    line("weir-runtime filter+select, declared schema", declared_time, declared_cpu);
    line("  same, delivery atLeastOnce (no idempotence)", plain_time, plain_cpu);
}

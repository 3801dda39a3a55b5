//! Repartitioning against a real broker: a job keyed by a field its source topic is not
//! partitioned by runs its window on an internal topic keyed by that field. Results are
//! exact when every key is spread over all partitions, when one partition lags far behind
//! the others (the keyed stage waits for its watermark), across instances sharing the work,
//! and across a SIGTERM and a `kill -9`.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::*;
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{Value, json};
use weir_testkit::{kafka, payments::produce_spread, wait_until};

fn metric(runtime: &Runtime, family: &str, name: &str) -> f64 {
    runtime.metric(&format!("{family}{{streamjob=\"{name}\"}}"))
}

type Totals = BTreeMap<(String, i64), (i64, i64)>;

/// Fails with the first differences (the whole maps are thousands of entries).
fn assert_same(got: &Totals, want: &Totals, what: &str) {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .chain(got.keys().filter(|k| !want.contains_key(k)).map(|k| format!("{k:?}: not expected")))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} results differ, e.g. {:?}",
        wrong.len(),
        want.len(),
        &wrong[..wrong.len().min(8)]
    );
}

fn checkpoints(dir: &Path) -> String {
    format!("  checkpoint: {{storage: \"file://{}/checkpoints\", interval: 500ms}}\n", dir.display())
}

#[test]
fn keys_spread_over_partitions_give_exact_results_and_a_lagging_partition_holds_windows_open() {
    let name = "spread";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let producer = producer(broker);
    let input = payments(3_000, 25, 0);
    // Every user's payments on partitions 0 and 1 first; partition 2's come later, with
    // event times far behind what the other two have reached by then.
    let behind: Vec<Payment> = input.iter().skip(2).step_by(3).cloned().collect();
    let ahead: Vec<Payment> = input.iter().enumerate().filter(|(i, _)| i % 3 != 2).map(|(_, p)| p.clone()).collect();
    must(produce_spread(&producer, &topic, &ahead, 2), "producing to partitions 0 and 1");

    let runtime = Runtime::start(&unkeyed_job(dir.path(), broker, name, ""));
    must(
        wait_until(Duration::from_secs(60), "partitions 0 and 1 to be consumed", || {
            metric(&runtime, "weir_records_in_total", name) >= ahead.len() as f64
        }),
        "consuming",
    );
    // Partition 2 has reported no watermark and is not idle yet: nothing may close.
    assert_eq!(metric(&runtime, "weir_records_out_total", name), 0.0, "no window closes without partition 2");

    for payment in &behind {
        let payload =
            json!({"user_id": payment.user, "amount": payment.amount, "currency": "EUR", "ts": payment.ts}).to_string();
        let record = BaseRecord::to(&topic).key(payment.user.as_bytes()).payload(payload.as_bytes()).partition(2);
        must(kafka::send(&producer, record), "producing to partition 2");
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    produce_flush_markers(&producer, &topic, 3);

    let want = expected(&input);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_same(&got, &want, "every (user, window) exactly, though each user's payments were spread");
    assert_eq!(metric(&runtime, "weir_records_late_total", name), 0.0, "nothing was late");

    let status: Value = must(serde_json::from_str(&runtime.get("/status").1), "status is JSON");
    assert_eq!(status["topic"], "test.spread-repartition", "the keyed stage reads the internal topic: {status}");
    assert_eq!(status["partitionCount"], 3, "as many internal partitions as source partitions: {status}");
    let metrics = runtime.get("/metrics").1;
    assert!(metrics.contains("streamjob=\"spread\",topic=\"spread-in\"}"), "the source lag is exported: {metrics}");
}

#[test]
fn two_instances_then_a_sigterm_of_one_give_exact_results() {
    let name = "shared";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let job = unkeyed_job(dir.path(), broker, name, &checkpoints(dir.path()));
    // The source is quiet between the two batches for as long as the instances take: its
    // event time must not move on with the clock meanwhile.
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("maxOutOfOrderness: 5s}", "maxOutOfOrderness: 5s, idleTimeout: 10m}");
    must(std::fs::write(&job, text), "writing the job");
    let producer = producer(broker);
    let first = payments(3_000, 20, 0);
    must(produce_spread(&producer, &topic, &first, 3), "producing");

    let a = Runtime::start_with(&job, &["--instance", "a"]);
    let b = Runtime::start_with(&job, &["--instance", "b"]);
    // Both are ready, so both own internal partitions (and state); some windows closed.
    wait_until(Duration::from_secs(90), "results", || {
        metric(&a, "weir_records_out_total", name) + metric(&b, "weir_records_out_total", name) > 0.0
    })
    .unwrap_or_else(|e| panic!("{e}: statuses {} and {}", a.get("/status").1, b.get("/status").1));
    assert_eq!(a.terminate(), Some(0), "SIGTERM exits cleanly");

    let second = payments(3_000, 20, 3_000);
    must(produce_spread(&producer, &topic, &second, 3), "producing more");
    produce_flush_markers(&producer, &topic, 3);

    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    // `results` fails on a window emitted twice.
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_same(&got, &want, "every (user, window) once");
    drop(b);
}

#[test]
fn kill_9_of_a_repartitioning_instance_loses_no_result() {
    let name = "killed";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let job = unkeyed_job(dir.path(), broker, name, &checkpoints(dir.path()));
    let producer = producer(broker);
    let input = payments(6_000, 20, 0);
    for (round, chunk) in input.chunks(3_000).enumerate() {
        must(produce_spread(&producer, &topic, chunk, 3), "producing");
        let runtime = Runtime::start_alone(&job, "killed");
        let target = [1_200.0, 2_000.0][round];
        must(
            wait_until(Duration::from_secs(60), "consuming part of the chunk", || {
                metric(&runtime, "weir_records_in_total", name) >= target
            }),
            "consuming",
        );
        runtime.kill();
    }
    let _last = Runtime::start_alone(&job, "killed");
    produce_flush_markers(&producer, &topic, 3);
    let want = expected(&input);
    let records = read_records(broker, &format!("{name}-out"), want.len());
    // After a kill, windows closed since the last checkpoint are emitted again: with the
    // same values, since rows the front sends again are applied once.
    let mut got = Totals::new();
    for record in &records {
        for (window, value) in results(std::slice::from_ref(record)) {
            if let Some(previous) = got.insert(window.clone(), value) {
                assert_eq!(previous, value, "a repeated window result differs: {window:?}");
            }
        }
    }
    assert_same(&got, &want, "every window result, with the right value");
}

#[test]
fn stop_with_savepoint_then_restore_on_two_instances_is_exact() {
    let name = "rescaled";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let job = unkeyed_job(dir.path(), broker, name, &checkpoints(dir.path()));
    let producer = producer(broker);
    let first = payments(3_000, 20, 0);
    must(produce_spread(&producer, &topic, &first, 3), "producing");

    let one = Runtime::start_with(&job, &["--instance", "one"]);
    must(
        wait_until(Duration::from_secs(60), "the first part to be consumed", || {
            metric(&one, "weir_records_in_total", name) >= 3_000.0
        }),
        "consuming",
    );
    let (code, body) = one.post("/savepoint?stop=true&id=sp-repartitioned");
    assert_eq!(code, 200, "{body}");
    let savepoint: Value = must(serde_json::from_str(&body), "savepoint answer is JSON");
    assert_eq!(savepoint["topic"], "test.rescaled-repartition", "state is kept per internal partition");
    assert_eq!(savepoint["partitions"], json!([0, 1, 2]), "{savepoint}");

    // Both stages stopped: what arrives now waits for the restored instances.
    let second = payments(3_000, 20, 3_000);
    must(produce_spread(&producer, &topic, &second, 3), "producing more");
    assert_eq!(metric(&one, "weir_records_in_total", name), 3_000.0, "nothing consumed after the stop");
    assert_eq!(one.terminate(), Some(0));

    let two = Runtime::launch(&job, &["--instance", "two", "--restore-from", "sp-repartitioned"]);
    let three = Runtime::launch(&job, &["--instance", "three", "--restore-from", "sp-repartitioned"]);
    produce_flush_markers(&producer, &topic, 3);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_same(&got, &want, "results before the savepoint and after it, each once");
    drop((two, three));
}

#[test]
fn exactly_once_through_the_internal_topic_commits_each_result_once_across_a_restart() {
    let name = "eosrep";
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let topic = format!("{name}-in");
    must(broker.create_topic(&topic, 3), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    let job = unkeyed_job(dir.path(), broker, name, &checkpoints(dir.path()));
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("keyField: user_id}", "keyField: user_id, delivery: exactlyOnce}");
    must(std::fs::write(&job, text), "writing the job");
    let producer = producer(broker);
    let first = payments(3_000, 20, 0);
    must(produce_spread(&producer, &topic, &first, 3), "producing");

    let runtime = Runtime::start_with(&job, &["--instance", "eos"]);
    must(
        wait_until(Duration::from_secs(90), "results and a committed checkpoint", || {
            metric(&runtime, "weir_records_out_total", name) > 0.0
                && metric(&runtime, "weir_last_checkpoint_timestamp_seconds", name) > 0.0
        }),
        "first checkpoint",
    );
    assert_eq!(runtime.terminate(), Some(0), "SIGTERM commits both transactions and exits cleanly");

    let second = payments(3_000, 20, 3_000);
    must(produce_spread(&producer, &topic, &second, 3), "producing more");
    produce_flush_markers(&producer, &topic, 3);
    let _restarted = Runtime::start_with(&job, &["--instance", "eos"]);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let records = must(
        kafka::read_committed_records(
            &broker.bootstrap(),
            &format!("{name}-out"),
            want.len(),
            Duration::from_secs(120),
        ),
        "reading committed results",
    );
    assert_same(&results(&records), &want, "each window result committed once");
}

//! Checkpoints against a real broker: stop-with-savepoint then a restore on two instances is
//! exact; stop-with-savepoint then `/resume` on the same instance is exact; unwritable checkpoint storage is counted and reported by readiness while the job
//! goes on, and it recovers; `kill -9` at several points loses no result.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::*;
use serde_json::Value;
use weir_testkit::{broker::Broker, wait_until};

fn checkpointed_job(dir: &Path, broker: &Broker, name: &str, extra: &str) -> std::path::PathBuf {
    let storage = format!("file://{}/checkpoints", dir.display());
    job_file(dir, broker, name, &format!("  checkpoint: {{storage: \"{storage}\", interval: 500ms{extra}}}\n"))
}

fn records_in(runtime: &Runtime, name: &str) -> f64 {
    runtime.metric(&format!("weir_records_in_total{{streamjob=\"{name}\"}}"))
}

fn records_out(runtime: &Runtime, name: &str) -> f64 {
    runtime.metric(&format!("weir_records_out_total{{streamjob=\"{name}\"}}"))
}

/// `weir_consumer_lag` summed over the partitions the instance reports.
fn total_lag(runtime: &Runtime) -> f64 {
    weir_testkit::lag_of(&runtime.get("/metrics").1) as f64
}

/// Records in a single-partition topic: its high watermark (no transactions in these jobs).
fn records_in_topic(producer: &rdkafka::producer::BaseProducer, topic: &str) -> i64 {
    use rdkafka::producer::Producer;
    must(producer.client().fetch_watermarks(topic, 0, Duration::from_secs(10)), "reading the output's watermarks").1
}

fn json_of(body: &str, what: &str) -> Value {
    must(serde_json::from_str(body), what)
}

#[test]
fn stop_with_savepoint_then_restore_on_two_instances_is_exact() {
    let name = "savepoint";
    let (broker, dir) = setup(name, 2);
    let job = checkpointed_job(dir.path(), broker, name, "");
    let producer = producer(broker);
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &first);

    let one = Runtime::start_with(&job, &["--instance", "one"]);
    must(
        wait_until(Duration::from_secs(60), "the first half to be consumed", || records_in(&one, name) >= 2_000.0),
        "consuming",
    );
    let (code, body) = one.post("/savepoint?stop=true&id=sp-test");
    assert_eq!(code, 200, "{body}");
    let savepoint: Value = must(serde_json::from_str(&body), "savepoint answer is JSON");
    assert_eq!(savepoint["id"], "sp-test");
    assert!(savepoint["path"].as_str().is_some_and(|p| p.ends_with("/savepoints/sp-test")), "{savepoint}");
    let status: Value = must(serde_json::from_str(&one.get("/status").1), "status");
    assert_eq!(status["stopped"], true, "{status}");
    assert_eq!(status["lastSavepoint"]["id"], "sp-test", "{status}");
    let manifest = dir.path().join("checkpoints/test.savepoint/savepoints/sp-test/manifest-one.json");
    assert!(manifest.is_file(), "the savepoint has a manifest");

    // Consuming has stopped: what arrives now waits for the restored instances.
    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &format!("{name}-in"), &second);
    let out_before = one.metric("weir_records_out_total{streamjob=\"savepoint\"}");
    assert_eq!(records_in(&one, name), 2_000.0, "nothing consumed after stop");
    assert_eq!(one.terminate(), Some(0));

    // Parallelism changes from one instance to two, both restoring the savepoint.
    let two = Runtime::launch(&job, &["--instance", "two", "--restore-from", "sp-test"]);
    let three = Runtime::launch(&job, &["--instance", "three", "--restore-from", "sp-test"]);
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "results before the savepoint ({out_before} records) and after it, each once");
    drop((two, three));
}

#[test]
fn stop_with_savepoint_then_resume_loses_and_repeats_nothing() {
    let name = "resume";
    let partitions: i32 = 3;
    let (broker, dir) = setup(name, partitions.unsigned_abs());
    let job = checkpointed_job(dir.path(), broker, name, "");
    let producer = producer(broker);
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &input, &first);

    let runtime = Runtime::start_with(&job, &["--instance", "one"]);
    must(
        wait_until(Duration::from_secs(60), "the first part to be consumed", || records_in(&runtime, name) >= 2_000.0),
        "consuming",
    );
    // Resuming a running instance changes nothing and says so.
    let (code, body) = runtime.post("/resume");
    assert_eq!((code, json_of(&body, "resume answer")), (200, serde_json::json!({"stopped": false})), "{body}");
    let status = json_of(&runtime.get("/status").1, "status");
    assert_eq!(status["partitionCount"], partitions, "{status}");

    let (code, body) = runtime.post("/savepoint?stop=true&id=x");
    assert_eq!(code, 200, "{body}");
    let savepoint = json_of(&body, "savepoint answer");
    assert_eq!(savepoint["id"], "x", "{savepoint}");
    assert_eq!(savepoint["stopped"], true, "{savepoint}");
    assert_eq!(savepoint["topic"], input, "{savepoint}");
    assert_eq!(savepoint["partitions"], serde_json::json!([0, 1, 2]), "one instance owns every partition");
    assert_eq!(savepoint["partitionCount"], partitions, "{savepoint}");
    assert_eq!(json_of(&runtime.get("/status").1, "status")["stopped"], true);
    let out_at_stop = records_out(&runtime, name);
    let topic_at_stop = records_in_topic(&producer, &output);

    // Records arriving now are seen (as lag: nothing is committed past the savepoint) and
    // not consumed.
    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &input, &second);
    must(
        wait_until(Duration::from_secs(30), "the new records to show as lag", || total_lag(&runtime) == 2_000.0),
        "lag while stopped",
    );
    assert_eq!(records_in(&runtime, name), 2_000.0, "nothing consumed while stopped");
    assert_eq!(records_out(&runtime, name), out_at_stop, "nothing produced while stopped");
    assert_eq!(records_in_topic(&producer, &output), topic_at_stop, "the output has not grown");

    // The rollout is aborted: the instance goes on where it stopped.
    let (code, body) = runtime.post("/resume");
    assert_eq!((code, json_of(&body, "resume answer")), (200, serde_json::json!({"stopped": false})), "{body}");
    assert_eq!(json_of(&runtime.get("/status").1, "status")["stopped"], false);
    assert_eq!(runtime.post("/resume").0, 200, "resuming twice is harmless");
    produce_flush_markers(&producer, &input, partitions);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(broker, &output, want.len()));
    assert_eq!(got, want, "every window once, across the stop and the resume");
    must(
        wait_until(Duration::from_secs(60), "every record and marker to be consumed", || {
            records_in(&runtime, name) >= (all.len() + partitions as usize) as f64
        }),
        "consuming after resume",
    );
    must(
        wait_until(Duration::from_secs(30), "the lag to drain after resume", || total_lag(&runtime) == 0.0),
        "lag after resume",
    );
    assert_eq!(runtime.terminate(), Some(0), "a resumed instance drains and commits on SIGTERM");
    assert_eq!(records_in_topic(&producer, &output), want.len() as i64, "no result written twice");
}

/// The partitions an instance's `/status` lists.
fn owned(runtime: &Runtime) -> Vec<i64> {
    let status = json_of(&runtime.get("/status").1, "status");
    status["partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["partition"].as_i64()).collect())
        .unwrap_or_default()
}

#[test]
fn resume_after_partitions_moved_while_stopped_is_exact() {
    let name = "moved";
    let partitions: i32 = 2;
    let (broker, dir) = setup(name, partitions.unsigned_abs());
    let job = checkpointed_job(dir.path(), broker, name, "");
    let producer = producer(broker);
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &input, &first);
    let one = Runtime::start_with(&job, &["--instance", "one"]);
    must(
        wait_until(Duration::from_secs(60), "the first part to be consumed", || records_in(&one, name) >= 2_000.0),
        "consuming",
    );
    let (code, body) = one.post("/savepoint?stop=true&id=y");
    assert_eq!(code, 200, "{body}");
    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &input, &second);

    // The stopped instance left the group: a second one that joins takes every partition
    // from the savepoint's positions. Resumed, the first joins again and they share.
    let two = Runtime::start_with(&job, &["--instance", "two"]);
    must(
        wait_until(Duration::from_secs(60), "the second to own every partition", || {
            owned(&one).is_empty() && owned(&two).len() == 2
        }),
        "rebalance",
    );
    assert_eq!(json_of(&one.get("/status").1, "status")["stopped"], true, "still stopped after the rebalance");
    let (code, body) = one.post("/resume");
    assert_eq!(code, 200, "{body}");
    must(
        wait_until(Duration::from_secs(60), "the partitions to be shared", || {
            let (a, b) = (owned(&one), owned(&two));
            a.len() == 1 && b.len() == 1 && a != b
        }),
        "rebalance after the resume",
    );
    produce_flush_markers(&producer, &input, partitions);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    assert_eq!(results(&read_records(broker, &output, want.len())), want, "every window once");
    must(
        wait_until(Duration::from_secs(60), "the lag to drain", || total_lag(&one) == 0.0 && total_lag(&two) == 0.0),
        "lag",
    );
    assert_eq!(one.terminate(), Some(0));
    assert_eq!(two.terminate(), Some(0));
    assert_eq!(records_in_topic(&producer, &output), want.len() as i64, "no result written twice");
}

#[test]
fn unwritable_checkpoint_storage_is_reported_and_the_job_recovers() {
    let name = "storage";
    let (broker, dir) = setup(name, 1);
    let job = checkpointed_job(dir.path(), broker, name, ", tolerableFailures: 2");
    let producer = producer(broker);
    let input = payments(3_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &input[..1_000]);
    let runtime = Runtime::start(&job);
    let last_checkpoint = || runtime.metric("weir_last_checkpoint_timestamp_seconds{streamjob=\"storage\"}");
    must(wait_until(Duration::from_secs(30), "a first checkpoint", || last_checkpoint() > 0.0), "checkpoint");

    // The storage folder becomes a file: every write fails.
    let storage = dir.path().join("checkpoints");
    let away = dir.path().join("checkpoints.away");
    must(std::fs::rename(&storage, &away), "moving the storage away");
    must(std::fs::write(&storage, "not a folder"), "blocking the storage path");
    must(
        wait_until(Duration::from_secs(30), "readiness to report the failures", || {
            let (code, body) = runtime.get("/readyz");
            code == 503 && body.contains("checkpoints in a row failed")
        }),
        "not ready",
    );
    assert!(runtime.metric("weir_checkpoints_failed_total{streamjob=\"storage\"}") >= 2.0);
    // The job goes on meanwhile.
    produce_payments(&producer, &format!("{name}-in"), &input[1_000..2_000]);
    must(
        wait_until(Duration::from_secs(30), "consuming while checkpoints fail", || {
            records_in(&runtime, name) >= 2_000.0
        }),
        "consuming",
    );

    must(std::fs::remove_file(&storage), "unblocking the storage path");
    must(std::fs::rename(&away, &storage), "bringing the storage back");
    let failed_at = last_checkpoint();
    must(
        wait_until(Duration::from_secs(30), "recovery", || {
            runtime.get("/readyz").0 == 200 && last_checkpoint() > failed_at
        }),
        "ready again",
    );
    produce_payments(&producer, &format!("{name}-in"), &input[2_000..]);
    produce_flush_markers(&producer, &format!("{name}-in"), 1);
    let want = expected(&input);
    assert_eq!(results(&read_records(broker, &format!("{name}-out"), want.len())), want);
}

#[test]
fn kill_9_at_several_points_loses_no_result() {
    let name = "kill";
    let (broker, dir) = setup(name, 2);
    let job = checkpointed_job(dir.path(), broker, name, "");
    let producer = producer(broker);
    let input = payments(8_000, 20, 0);
    let mut consumed_before = 0.0;
    for (round, chunk) in input.chunks(2_000).enumerate() {
        produce_payments(&producer, &format!("{name}-in"), chunk);
        let runtime = Runtime::start_alone(&job, "kill");
        // Kill at a different point each round: after some, about half, or most of the chunk.
        let target = [300.0, 1_000.0, 1_700.0, 200.0][round];
        must(
            wait_until(Duration::from_secs(60), "consuming part of the chunk", || records_in(&runtime, name) >= target),
            "consuming",
        );
        consumed_before += records_in(&runtime, name);
        runtime.kill();
    }
    let _last = Runtime::start_alone(&job, "kill");
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    let want = expected(&input);
    let records = read_records(broker, &format!("{name}-out"), want.len());
    let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut duplicates = 0;
    for record in &records {
        let single = results(std::slice::from_ref(record));
        for (window, value) in single {
            if let Some(previous) = got.insert(window.clone(), value) {
                assert_eq!(previous, value, "a repeated window result differs: {window:?}");
                duplicates += 1;
            }
        }
    }
    println!(
        "{} results, {duplicates} repeated after kills ({consumed_before} records consumed before kills)",
        records.len()
    );
    assert_eq!(got, want, "every window result, with the right value");
}

#[test]
fn exactly_once_results_commit_with_the_offsets_across_a_restart() {
    exactly_once_across_a_restart("eos", |job| Runtime::start_with(job, &["--instance", "eos"]));
}

//! Assignment by the operator against a real broker: instances started with
//! `--assignment=operator` join no consumer group and own the partitions of the slot they
//! are given (`POST /assign`). Moving a slot's partitions between instances hands them over
//! through a commit and a checkpoint, so results stay exact: for a keyed job, for a
//! repartitioned one (the front and the keyed stage both follow the slot), and exactly-once
//! across a restart.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use serde_json::Value;
use weir_e2e::{broker::Broker, payments::produce_spread, wait_until};

/// Starts an instance in operator mode and waits until its admin server answers.
fn operated(job: &Path, instance: &str) -> Runtime {
    let runtime = Runtime::launch(job, &["--instance", instance, "--assignment", "operator"]);
    must(wait_until(Duration::from_secs(60), "the admin server", || runtime.get("/healthz").0 == 200), "starting");
    runtime
}

fn status(runtime: &Runtime) -> Value {
    must(serde_json::from_str(&runtime.get("/status").1), "status is JSON")
}

/// Gives `runtime` slot `slot` of `slots` and waits until it is ready with it.
fn assign(runtime: &Runtime, slot: u32, slots: u32) {
    let (code, body) = runtime.post(&format!("/assign?slot={slot}&slots={slots}"));
    assert_eq!(code, 200, "assigning slot {slot} of {slots}: {body}");
    let answer: Value = must(serde_json::from_str(&body), "the answer is JSON");
    assert_eq!(answer, serde_json::json!({"slot": slot, "slots": slots}));
    must(
        wait_until(Duration::from_secs(60), "readiness with the slot", || runtime.get("/readyz").0 == 200),
        "readiness",
    );
}

/// The partitions `runtime` owns, from `/status`.
fn owned(runtime: &Runtime) -> Vec<i64> {
    let status = status(runtime);
    status["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["partition"].as_i64()).collect())
        .unwrap_or_default()
}

fn checkpoints(dir: &Path) -> String {
    format!("  checkpoint: {{storage: \"file://{}/checkpoints\", interval: 1s}}\n", dir.display())
}

/// The job without `partitionedBy`: the window runs behind the internal topic. Its source
/// is quiet between batches for as long as the test takes: event time must not move on
/// with the clock meanwhile.
fn repartitioned(job: PathBuf) -> PathBuf {
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("      partitionedBy: [user_id]\n", "")
        .replace("maxOutOfOrderness: 5s}", "maxOutOfOrderness: 5s, idleTimeout: 10m}");
    must(std::fs::write(&job, text), "writing the job");
    job
}

fn records_out(runtimes: &[&Runtime], name: &str) -> f64 {
    runtimes.iter().map(|r| r.metric(&format!("weir_records_out_total{{streamjob=\"{name}\"}}"))).sum()
}

#[test]
fn slots_from_the_operator_move_partitions_between_instances_exactly() {
    let name = "slots";
    let (broker, dir) = setup(name, 4);
    let topic = format!("{name}-in");
    let job = job_file(dir.path(), &broker, name, &checkpoints(dir.path()));
    let producer = producer(&broker);
    let first = payments(2_000, 16, 0);
    produce_payments(&producer, &topic, &first);

    let a = operated(&job, "a");
    let (code, body) = a.get("/readyz");
    assert_eq!(code, 503, "not ready before the operator assigns: {body}");
    let before = status(&a);
    assert_eq!(before["assignmentMode"], "operator", "{before}");
    assert_eq!(before["assignment"], Value::Null, "{before}");
    assign(&a, 0, 1);
    assert_eq!(owned(&a), vec![0, 1, 2, 3], "one slot owns every partition");
    must(wait_until(Duration::from_secs(60), "results", || records_out(&[&a], name) > 0.0), "processing");

    // A second instance: the first hands over the partitions of slot 1 of 2 before the
    // second takes them.
    let b = operated(&job, "b");
    assign(&a, 0, 2);
    assert_eq!(owned(&a), vec![0, 2], "slot 0 of 2 keeps the even partitions");
    assign(&b, 1, 2);
    assert_eq!(owned(&b), vec![1, 3], "slot 1 of 2 takes the odd ones");
    assert_eq!(status(&b)["assignment"], serde_json::json!({"slot": 1, "slots": 2}));
    assign(&b, 1, 2);
    assert_eq!(owned(&b), vec![1, 3], "the same slot again moves nothing");

    let second = payments(2_000, 16, 2_000);
    produce_payments(&producer, &topic, &second);
    produce_flush_markers(&producer, &topic, 4);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    // `results` fails on a window emitted twice.
    let got = results(&read_records(&broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "every (user, window) once across the move");

    let (code, body) = a.post("/release");
    assert_eq!(code, 200, "{body}");
    assert!(owned(&a).is_empty(), "released: owns nothing");
    assert_eq!(a.get("/readyz").0, 503, "an instance without partitions is not ready");
    assert_eq!(a.post("/assign?slot=2&slots=2").0, 400, "no such slot");
}

#[test]
fn a_repartitioned_job_splits_both_stages_by_slot() {
    let name = "slotted";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let job = repartitioned(job_file(dir.path(), &broker, name, &checkpoints(dir.path())));
    let producer = producer(&broker);
    let first = payments(2_000, 20, 0);
    must(produce_spread(&producer, &topic, &first, 3), "producing");

    let a = operated(&job, "a");
    let b = operated(&job, "b");
    assign(&a, 0, 1);
    must(wait_until(Duration::from_secs(90), "results", || records_out(&[&a], name) > 0.0), "processing");
    assign(&a, 0, 2);
    assign(&b, 1, 2);
    let internal = status(&b);
    assert_eq!(internal["topic"], format!("test.{name}-repartition"), "{internal}");
    assert_eq!(owned(&b), vec![1], "slot 1 of 2 of the internal topic's 3 partitions");
    assert_eq!(owned(&a), vec![0, 2]);

    let second = payments(2_000, 20, 2_000);
    must(produce_spread(&producer, &topic, &second, 3), "producing more");
    produce_flush_markers(&producer, &topic, 3);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(&broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "every (user, window) once through both stages");
}

#[test]
fn a_stop_with_savepoint_then_resume_keeps_the_slot_and_is_exact() {
    let name = "parked";
    let (broker, dir) = setup(name, 3);
    let topic = format!("{name}-in");
    let job = repartitioned(job_file(dir.path(), &broker, name, &checkpoints(dir.path())));
    let producer = producer(&broker);
    let first = payments(2_000, 20, 0);
    must(produce_spread(&producer, &topic, &first, 3), "producing");

    let a = operated(&job, "a");
    assign(&a, 0, 1);
    must(wait_until(Duration::from_secs(90), "results", || records_out(&[&a], name) > 0.0), "processing");
    let (code, body) = a.post("/savepoint?stop=true&id=p");
    assert_eq!(code, 200, "{body}");
    let (code, body) = a.post("/assign?slot=0&slots=2");
    assert_eq!(code, 409, "a stopped instance takes no new slot: {body}");

    // Records arriving while stopped are processed after the resume, once.
    let second = payments(2_000, 20, 2_000);
    must(produce_spread(&producer, &topic, &second, 3), "producing more");
    produce_flush_markers(&producer, &topic, 3);
    let (code, body) = a.post("/resume");
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&a)["assignment"], serde_json::json!({"slot": 0, "slots": 1}), "the slot is kept");
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(&broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "every (user, window) once across the stop and the resume");
}

#[test]
fn exactly_once_without_a_group_commits_each_result_once_across_a_restart() {
    let name = "eos-slots";
    let broker = must(Broker::start_transactional(), "starting the broker with transactions");
    let dir = must(tempfile::tempdir(), "tempdir");
    must(broker.create_topic(&format!("{name}-in"), 2), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    let job = job_file(dir.path(), &broker, name, &checkpoints(dir.path()));
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("keyField: user_id}", "keyField: user_id, delivery: exactlyOnce}");
    must(std::fs::write(&job, text), "writing the job");
    let producer = producer(&broker);
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &first);

    let runtime = operated(&job, "eos");
    assign(&runtime, 0, 1);
    let committed = || runtime.metric(&format!("weir_last_checkpoint_timestamp_seconds{{streamjob=\"{name}\"}}"));
    must(
        wait_until(Duration::from_secs(90), "results and a committed checkpoint", || {
            records_out(&[&runtime], name) > 0.0 && committed() > 0.0
        }),
        "first checkpoint",
    );
    assert_eq!(runtime.terminate(), Some(0), "SIGTERM commits the open transaction and exits cleanly");

    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &format!("{name}-in"), &second);
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    let restarted = operated(&job, "eos");
    assign(&restarted, 0, 1);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let records = must(
        weir_e2e::kafka::read_committed_records(
            &broker.bootstrap(),
            &format!("{name}-out"),
            want.len(),
            Duration::from_secs(120),
        ),
        "reading committed results",
    );
    assert_eq!(results(&records), want, "each window result committed once");
}

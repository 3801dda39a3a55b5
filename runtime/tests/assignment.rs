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
use rdkafka::producer::BaseProducer;
use serde_json::Value;
use weir_testkit::{broker::Broker, payments::produce_spread, wait_until};

fn status(runtime: &Runtime) -> Value {
    must(serde_json::from_str(&runtime.get("/status").1), "status is JSON")
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

/// A repartitioned job (no `partitionedBy`: the window runs behind the internal topic) over
/// 3 partitions, with a first batch of payments, each user's spread over all of them.
struct Spread {
    name: String,
    broker: &'static Broker,
    _dir: tempfile::TempDir,
    job: PathBuf,
    producer: BaseProducer,
    first: Vec<Payment>,
}

impl Spread {
    fn start(name: &str) -> Self {
        let (broker, dir) = setup(name, 3);
        let job = job_file(dir.path(), broker, name, &checkpoints(dir.path()));
        // The source is quiet between batches for as long as the test takes: event time
        // must not move on with the clock meanwhile.
        let text = must(std::fs::read_to_string(&job), "reading the job")
            .replace("      partitionedBy: [user_id]\n", "")
            .replace("maxOutOfOrderness: 5s}", "maxOutOfOrderness: 5s, idleTimeout: 10m}");
        must(std::fs::write(&job, text), "writing the job");
        let producer = producer(broker);
        let first = payments(2_000, 20, 0);
        must(produce_spread(&producer, &format!("{name}-in"), &first, 3), "producing");
        Self { name: name.to_owned(), broker, _dir: dir, job, producer, first }
    }

    /// An instance holding the only slot, once it has produced results.
    fn processing(&self, instance: &str) -> Runtime {
        let runtime = Runtime::operated(&self.job, instance);
        runtime.assign(0, 1);
        let name = &self.name;
        must(wait_until(Duration::from_secs(90), "results", || records_out(&[&runtime], name) > 0.0), "processing");
        runtime
    }

    /// A second batch of payments, then a record per partition that closes every window.
    fn produce_second(&self) -> Vec<Payment> {
        let topic = format!("{}-in", self.name);
        let second = payments(2_000, 20, 2_000);
        must(produce_spread(&self.producer, &topic, &second, 3), "producing more");
        produce_flush_markers(&self.producer, &topic, 3);
        second
    }

    /// Checks the output holds every window of both batches once.
    fn assert_exact(self, second: Vec<Payment>, what: &str) {
        let all: Vec<Payment> = self.first.into_iter().chain(second).collect();
        let want = expected(&all);
        let got = results(&read_records(self.broker, &format!("{}-out", self.name), want.len()));
        assert_eq!(got, want, "{what}");
    }

    fn assert_exact_with_more(self, what: &str) {
        let second = self.produce_second();
        self.assert_exact(second, what);
    }
}

fn records_out(runtimes: &[&Runtime], name: &str) -> f64 {
    runtimes.iter().map(|r| r.metric(&format!("weir_records_out_total{{streamjob=\"{name}\"}}"))).sum()
}

#[test]
fn slots_from_the_operator_move_partitions_between_instances_exactly() {
    let name = "slots";
    let (broker, dir) = setup(name, 4);
    let topic = format!("{name}-in");
    let job = job_file(dir.path(), broker, name, &checkpoints(dir.path()));
    let producer = producer(broker);
    let first = payments(2_000, 16, 0);
    produce_payments(&producer, &topic, &first);

    let a = Runtime::operated(&job, "a");
    let (code, body) = a.get("/readyz");
    assert_eq!(code, 503, "not ready before the operator assigns: {body}");
    let before = status(&a);
    assert_eq!(before["assignmentMode"], "operator", "{before}");
    assert_eq!(before["assignment"], Value::Null, "{before}");
    a.assign(0, 1);
    assert_eq!(owned(&a), vec![0, 1, 2, 3], "one slot owns every partition");
    must(wait_until(Duration::from_secs(60), "results", || records_out(&[&a], name) > 0.0), "processing");

    // A second instance: the first hands over the partitions of slot 1 of 2 before the
    // second takes them.
    let b = Runtime::operated(&job, "b");
    a.assign(0, 2);
    assert_eq!(owned(&a), vec![0, 2], "slot 0 of 2 keeps the even partitions");
    b.assign(1, 2);
    assert_eq!(owned(&b), vec![1, 3], "slot 1 of 2 takes the odd ones");
    assert_eq!(status(&b)["assignment"], serde_json::json!({"slot": 1, "slots": 2}));
    b.assign(1, 2);
    assert_eq!(owned(&b), vec![1, 3], "the same slot again moves nothing");

    let second = payments(2_000, 16, 2_000);
    produce_payments(&producer, &topic, &second);
    produce_flush_markers(&producer, &topic, 4);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    // `results` fails on a window emitted twice.
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
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
    let spread = Spread::start(name);
    let a = spread.processing("a");
    let b = Runtime::operated(&spread.job, "b");
    a.assign(0, 2);
    b.assign(1, 2);
    let internal = status(&b);
    assert_eq!(internal["topic"], format!("test.{name}-repartition"), "{internal}");
    assert_eq!(owned(&b), vec![1], "slot 1 of 2 of the internal topic's 3 partitions");
    assert_eq!(owned(&a), vec![0, 2]);

    spread.assert_exact_with_more("every (user, window) once through both stages");
}

#[test]
fn a_stop_with_savepoint_then_resume_keeps_the_slot_and_is_exact() {
    let spread = Spread::start("parked");
    let a = spread.processing("a");
    let (code, body) = a.post("/savepoint?stop=true&id=p");
    assert_eq!(code, 200, "{body}");
    let (code, body) = a.post("/assign?slot=0&slots=2");
    assert_eq!(code, 409, "a stopped instance takes no new slot: {body}");

    // Records arriving while stopped are processed after the resume, once.
    let second = spread.produce_second();
    let (code, body) = a.post("/resume");
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&a)["assignment"], serde_json::json!({"slot": 0, "slots": 1}), "the slot is kept");
    spread.assert_exact(second, "every (user, window) once across the stop and the resume");
}

#[test]
fn exactly_once_without_a_group_commits_each_result_once_across_a_restart() {
    exactly_once_across_a_restart("eos-slots", |job| {
        let runtime = Runtime::operated(job, "eos");
        runtime.assign(0, 1);
        runtime
    });
}

#[test]
fn exactly_once_a_hand_over_whose_checkpoint_fails_releases_nothing_and_stops_the_instance() {
    let name = "eos-handover";
    let (broker, dir) = setup(name, 2);
    let storage = dir.path().join("checkpoints");
    // Checkpoints only when partitions move: the one of the hand-over is the one that fails.
    let extra = format!("  checkpoint: {{storage: \"file://{}\", interval: 10m}}\n", storage.display());
    let job = exactly_once_job_file(dir.path(), broker, name, &extra);
    let producer = producer(broker);
    let first = payments(2_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &first);

    let a = Runtime::operated(&job, "a");
    a.assign(0, 1);
    must(wait_until(Duration::from_secs(90), "results", || records_out(&[&a], name) > 0.0), "processing");
    // The storage breaks: where the checkpoint folder was is now a file.
    let away = dir.path().join("checkpoints.away");
    must(std::fs::rename(&storage, &away), "moving the checkpoint folder away");
    must(std::fs::write(&storage, "not a folder"), "putting a file in its place");
    // Results of both partitions sit in the open transaction: partition 1 must not leave.
    let (code, body) = a.post("/assign?slot=0&slots=2");
    assert_ne!(code, 200, "the hand-over is refused: {body}");
    assert!(body.contains("hand-over"), "{body}");
    let mut a = a;
    must(
        wait_until(Duration::from_secs(60), "the instance to stop", || matches!(a.child.try_wait(), Ok(Some(_)))),
        "stopping",
    );
    assert_eq!(must(a.child.wait(), "exit status").code(), Some(1));

    must(std::fs::remove_file(&storage), "removing the file");
    must(std::fs::rename(&away, &storage), "restoring the checkpoint folder");
    let second = payments(2_000, 10, 2_000);
    produce_payments(&producer, &format!("{name}-in"), &second);
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    // The pod's container restarts: the same instance, whose transactional id aborts the
    // transaction left open. It checkpoints, and so commits, every second.
    let every_second = dir.path().join("every-second.yaml");
    let text = must(std::fs::read_to_string(&job), "reading the job").replace("interval: 10m", "interval: 1s");
    must(std::fs::write(&every_second, text), "writing the replacement's job");
    let _restarted = Runtime::start_alone(&every_second, "a");
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let records = must(
        weir_testkit::kafka::read_committed_records(
            &broker.bootstrap(),
            &format!("{name}-out"),
            want.len(),
            Duration::from_secs(120),
        ),
        "reading committed results",
    );
    assert_eq!(results(&records), want, "each window result committed once");
}

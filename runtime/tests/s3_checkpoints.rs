//! Checkpoints and savepoints on S3, through the same `object_store` code as `file://`,
//! against an S3-compatible server (moto): a stop-with-savepoint lands in the bucket, and a
//! new instance restored from it gives exact results.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use weir_testkit::{s3::S3Server, wait_until};

#[test]
fn a_savepoint_on_s3_restores_exactly() {
    let name = "s3job";
    let broker = shared_broker();
    let s3 = must(S3Server::start(), "starting the S3 server");
    must(s3.create_bucket("weir-state"), "creating the bucket");
    must(broker.create_topic(&format!("{name}-in"), 2), "creating the input topic");
    must(broker.create_topic(&format!("{name}-out"), 1), "creating the output topic");
    let dir = must(tempfile::tempdir(), "tempdir");
    let checkpoint = "  checkpoint: {storage: \"s3://weir-state/jobs\", interval: 500ms}\n";
    let job = job_file(dir.path(), broker, name, checkpoint);
    let producer = producer(broker);
    let first = payments(1_000, 10, 0);
    produce_payments(&producer, &format!("{name}-in"), &first);

    let env = s3.env();
    let one = Runtime::start_with_env(&job, &["--instance", "one"], &env);
    let consumed = |runtime: &Runtime| runtime.metric(&format!("weir_records_in_total{{streamjob=\"{name}\"}}"));
    must(wait_until(Duration::from_secs(60), "the input to be consumed", || consumed(&one) >= 1_000.0), "consuming");
    let (code, body) = one.post("/savepoint?stop=true&id=sp-s3");
    assert_eq!(code, 200, "{body}");
    let savepoint: Value = must(serde_json::from_str(&body), "savepoint answer is JSON");
    assert!(savepoint["path"].as_str().is_some_and(|p| p.starts_with("s3://weir-state/jobs/")), "{savepoint}");
    let keys = must(s3.keys("weir-state", "jobs/"), "listing the bucket");
    assert!(keys.iter().any(|k| k.contains("/savepoints/sp-s3/manifest-one.json")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/checkpoints/")), "checkpoints are in the bucket too: {keys:?}");
    assert_eq!(one.terminate(), Some(0));

    let second = payments(1_000, 10, 1_000);
    produce_payments(&producer, &format!("{name}-in"), &second);
    let _two = Runtime::start_with_env(&job, &["--instance", "two", "--restore-from", "sp-s3"], &env);
    produce_flush_markers(&producer, &format!("{name}-in"), 2);
    let all: Vec<Payment> = first.into_iter().chain(second).collect();
    let want = expected(&all);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "results before and after the savepoint, each once");
}

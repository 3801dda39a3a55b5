//! A `dedupe` step against a real broker: payments sent two and three times (a producer's
//! retries, some of them after a restart) are each counted once in exactly-once results, the
//! dedupe state surviving the restart in the checkpoint; and in a job that repartitions,
//! copies consumed from different partitions meet in the keyed stage and count once.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use weir_testkit::{kafka, wait_until};

/// Sends payments `from..` of `all` keyed by user, each with its index as `payment_id`; a
/// third of them twice and a seventh three times, the copies right after the first.
fn produce_with_retries(producer: &BaseProducer, topic: &str, all: &[Payment], from: usize) -> usize {
    let mut copies = 0;
    for (i, p) in all.iter().enumerate().skip(from) {
        let payload = json!({"payment_id": i, "user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts});
        let times = 1 + usize::from(i % 3 == 0) + usize::from(i % 7 == 0);
        for _ in 0..times {
            send(producer, topic, &p.user, &payload.to_string());
        }
        copies += times - 1;
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    copies
}

#[test]
fn repeats_are_counted_once_in_exactly_once_results_across_a_restart() {
    let name = "dedupe";
    let (broker, dir) = setup(name, 2);
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let storage = format!("file://{}/checkpoints", dir.path().display());
    let job = exactly_once_job_file(
        dir.path(),
        broker,
        name,
        &format!("  checkpoint: {{storage: \"{storage}\", interval: 500ms}}\n"),
    );
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("    - keyBy: [user_id]\n", "    - dedupe: {key: [payment_id], within: 1m}\n    - keyBy: [user_id]\n");
    must(std::fs::write(&job, text), "writing the job");
    let producer = producer(broker);
    let all = payments(3_000, 10, 0);
    let first_half = &all[..1_500];
    let sent_first = produce_with_retries(&producer, &input, first_half, 0);

    let runtime = Runtime::start(&job);
    let metric = |runtime: &Runtime, family: &str| runtime.metric(&format!("{family}{{streamjob=\"{name}\"}}"));
    must(
        wait_until(Duration::from_secs(90), "the first half consumed and checkpointed", || {
            metric(&runtime, "weir_records_in_total") >= (first_half.len() + sent_first) as f64
                && metric(&runtime, "weir_last_checkpoint_timestamp_seconds") > 0.0
        }),
        "first half",
    );
    assert_eq!(
        metric(&runtime, "weir_records_deduplicated_total"),
        sent_first as f64,
        "every repeat of the first half is dropped"
    );
    assert_eq!(runtime.terminate(), Some(0));

    // The producer retries the last 50 payments after the restart: only the restored dedupe
    // state knows they were counted.
    let retried = produce_with_retries(&producer, &input, &all[..1_500], 1_450) + 50;
    produce_with_retries(&producer, &input, &all, 1_500);
    produce_flush_markers(&producer, &input, 2);
    let restarted = Runtime::start(&job);
    let want = expected(&all);
    let records = must(
        kafka::read_committed_records(&broker.bootstrap(), &output, want.len(), Duration::from_secs(120)),
        "reading committed results",
    );
    assert_eq!(results(&records), want, "each payment counted once");
    must(
        wait_until(Duration::from_secs(30), "the retried payments dropped", || {
            metric(&restarted, "weir_records_deduplicated_total") >= retried as f64
        }),
        "deduplicated after the restart",
    );
}

/// The job of `job` with a dedupe on `payment_id` before its keyBy.
fn with_dedupe(job: &std::path::Path) {
    let text = must(std::fs::read_to_string(job), "reading the job")
        .replace("    - keyBy: [user_id]\n", "    - dedupe: {key: [payment_id], within: 1m}\n    - keyBy: [user_id]\n");
    must(std::fs::write(job, text), "writing the job");
}

#[test]
fn copies_consumed_from_different_partitions_count_once_in_a_job_that_repartitions() {
    let name = "dedupe-spread";
    let (broker, dir) = setup(name, 3);
    let input = format!("{name}-in");
    let job = unkeyed_job(dir.path(), broker, name, "");
    with_dedupe(&job);
    let producer = producer(broker);
    let all = payments(2_000, 10, 0);
    let mut copies = 0;
    for (i, p) in all.iter().enumerate() {
        let payload = json!({"payment_id": i, "user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts});
        let payload = payload.to_string();
        // The original and its copies each on another partition, as retries through a
        // partitioner that does not use the key would put them.
        let times = 1 + usize::from(i % 2 == 0) + usize::from(i % 5 == 0);
        for copy in 0..times {
            let partition = i32::try_from((i + copy) % 3).unwrap_or(0);
            let record = BaseRecord::to(&input).key(p.user.as_bytes()).payload(payload.as_bytes()).partition(partition);
            must(kafka::send(&producer, record), "producing");
        }
        copies += times - 1;
    }
    must(producer.flush(Duration::from_secs(30)), "flushing");
    produce_flush_markers(&producer, &input, 3);

    let runtime = Runtime::start(&job);
    let want = expected(&all);
    let got = results(&read_records(broker, &format!("{name}-out"), want.len()));
    assert_eq!(got, want, "each payment counted once, wherever its copies were consumed");
    must(
        wait_until(Duration::from_secs(30), "every copy dropped", || {
            runtime.metric(&format!("weir_records_deduplicated_total{{streamjob=\"{name}\"}}")) == copies as f64
        }),
        "deduplicated",
    );
}

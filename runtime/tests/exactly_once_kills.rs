//! Exactly-once under `kill -9`: the job is killed at several points of its transaction
//! cycle and restarted each time; a read_committed reader then sees every window result
//! once, with the right value. Undecodable records go to a dead-letter topic on the same
//! cluster, in the same transactions: each is committed there once too.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use weir_testkit::{broker::Broker, kafka, wait_until};

const NAME: &str = "eoskill";

/// Where in its transaction cycle an instance is killed.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// Results of the open transaction are in the output log, not yet committed.
    WithResultsInAnOpenTransaction,
    /// Just after a transaction committed (within the 100 ms the metric is polled at).
    RightAfterACommit,
    /// With results in its first transaction, before that committed: everything since the
    /// previous instance's last commit is replayed.
    BeforeItsFirstCommit,
    /// Results in an open transaction after commits of its own: the restore must take this
    /// instance's last committed checkpoint, not the previous instance's.
    WithResultsAfterItsOwnCommits,
}

impl KillPoint {
    /// The checkpoint (and so commit) interval of the instance. Its commit timer starts
    /// before it is given its partitions, so only a long one keeps the first commit away
    /// from the first records; the others commit often.
    fn interval(self) -> &'static str {
        match self {
            Self::BeforeItsFirstCommit => "300s",
            _ => "2s",
        }
    }
}

/// The windowed fixture job with exactly-once delivery and file checkpoints.
fn write_job(dir: &Path, broker: &Broker, interval: &str) -> std::path::PathBuf {
    let storage = format!("file://{}/checkpoints", dir.display());
    let extra = format!(
        "  checkpoint: {{storage: \"{storage}\", interval: {interval}}}\n  deadLetter: {{topic: {NAME}-dlq}}\n"
    );
    let job = job_file(dir, broker, NAME, &extra);
    let text = must(std::fs::read_to_string(&job), "reading the job")
        .replace("keyField: user_id}", "keyField: user_id, delivery: exactlyOnce}");
    must(std::fs::write(&job, text), "writing the job");
    job
}

fn metric(runtime: &Runtime, name: &str) -> f64 {
    runtime.metric(&format!("{name}{{streamjob=\"{NAME}\"}}"))
}

/// Records of open (not yet committed or aborted) transactions in `topic`.
fn open_in(broker: &Broker, topic: &str) -> i64 {
    kafka::open_transaction_records(&broker.bootstrap(), topic).unwrap_or(0)
}

fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    must(wait_until(Duration::from_secs(120), what, condition), "reaching the kill point");
}

#[test]
fn kill_9_at_several_points_commits_every_result_exactly_once() {
    let (input, output) = (format!("{NAME}-in"), format!("{NAME}-out"));
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    must(broker.create_topic(&input, 2), "creating the input topic");
    must(broker.create_topic(&output, 2), "creating the output topic");
    let dead_letters = format!("{NAME}-dlq");
    must(broker.create_topic(&dead_letters, 1), "creating the dead-letter topic");
    let producer = producer(broker);
    let payments = payments(8_000, 20, 0);
    let points = [
        KillPoint::WithResultsInAnOpenTransaction,
        KillPoint::RightAfterACommit,
        KillPoint::BeforeItsFirstCommit,
        KillPoint::WithResultsAfterItsOwnCommits,
    ];

    for (round, (chunk, point)) in payments.chunks(2_000).zip(points).enumerate() {
        let job = write_job(dir.path(), broker, point.interval());
        let (now, later) = match point {
            KillPoint::WithResultsAfterItsOwnCommits => chunk.split_at(chunk.len() / 2),
            _ => (chunk, &chunk[chunk.len()..]),
        };
        produce_payments(&producer, &input, now);
        // One undecodable record per chunk, among the payments.
        send(&producer, &input, "bad", &format!("{{not json, round {round}"));
        let runtime = Runtime::start_alone(&job, "kill");
        let records_in = || metric(&runtime, "weir_records_in_total");
        let commits = || metric(&runtime, "weir_source_commits_total");
        match point {
            KillPoint::WithResultsInAnOpenTransaction => {
                wait_for("results in an open transaction", || records_in() > 0.0 && open_in(broker, &output) > 0)
            }
            KillPoint::RightAfterACommit => wait_for("a commit", || records_in() > 0.0 && commits() >= 1.0),
            KillPoint::BeforeItsFirstCommit => {
                wait_for("results in the first transaction", || metric(&runtime, "weir_records_out_total") > 0.0)
            }
            KillPoint::WithResultsAfterItsOwnCommits => {
                wait_for("the first half consumed and committed", || {
                    records_in() >= now.len() as f64 && commits() >= 1.0 && open_in(broker, &output) == 0
                });
                produce_payments(&producer, &input, later);
                wait_for("results of the second half in an open transaction", || open_in(broker, &output) > 0);
            }
        }
        let (consumed, commits_at_kill) = (records_in(), commits());
        println!(
            "kill -9 {point:?}: {consumed} records in, {} results out, {commits_at_kill} commits",
            metric(&runtime, "weir_records_out_total"),
        );
        runtime.kill();
        if let KillPoint::BeforeItsFirstCommit = point {
            assert_eq!(commits_at_kill, 0.0, "killed before its first commit");
        }
    }

    let job = write_job(dir.path(), broker, "2s");
    let last = Runtime::start_alone(&job, "kill");
    produce_flush_markers(&producer, &input, 2);
    let want = expected(&payments);
    let committed = |topic: &str, count: usize| {
        must(
            kafka::read_committed_records(&broker.bootstrap(), topic, count, Duration::from_secs(240)),
            "reading committed records",
        )
    };
    let seen = committed(&output, want.len());
    assert!(seen.len() >= want.len(), "{} of {} results committed in time", seen.len(), want.len());
    // A clean stop commits the open transaction, and the log is settled.
    assert_eq!(last.terminate(), Some(0), "SIGTERM commits and exits cleanly");
    assert_eq!(open_in(broker, &output), 0, "no transaction left open after a clean stop");
    let log = committed(&output, want.len());
    let everything = must(
        kafka::read_records(&broker.bootstrap(), &output, want.len(), Duration::from_secs(60)),
        "reading the output uncommitted",
    );
    let aborted = everything.len() - log.len();
    println!("{} committed results; {aborted} records of aborted transactions not read", log.len());
    assert!(aborted > 0, "the kills left results in transactions that were then aborted");
    assert_eq!(results(&log), want, "every window result committed exactly once, with the right value");
    let dead = committed(&dead_letters, points.len());
    let mut bad: Vec<String> = dead.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    bad.sort();
    assert_eq!(bad.len(), points.len(), "each undecodable record dead-lettered once: {bad:?}");
    bad.dedup();
    assert_eq!(bad.len(), points.len(), "no dead letter repeated: {bad:?}");
}

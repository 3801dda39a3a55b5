//! Rollout downtime on the local stack (broker, API server, node agent, operator): a
//! checkpointed `filter` job over a 3-partition topic, fed about 2,000 records a second, is
//! upgraded (a new image tag), then rescaled 1→2, 2→3 and 3→1, each through a savepoint.
//! Each round runs on a new stack, so that a rollout that never settles ends only its round.
//!
//! A reader tails every partition of the output topic and notes when each record arrives.
//! The downtime of a rollout is the longest gap between two consecutive arrivals on one
//! partition (the output is keyed like the input, so a partition of the output is fed by the
//! same partition of the input), from the change until 3 s after the output has caught up;
//! the outage is the same gap over all partitions. The sink stamps output records with their
//! event time (here the input's produce time), not with the time they were processed, so the
//! gaps are measured at the reader. The rollout time runs from the change to the job's status
//! showing it settled. Where the time went comes from the operator's and the pods' logs. At
//! the end of a round, the output is checked: every record that passes the filter, once.
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p weir-e2e --bench rollout                 # 3 rounds
//!     WEIR_BENCH_RUNS=5 WEIR_BENCH_LOGS=/tmp/rollout-logs cargo bench -p weir-e2e --bench rollout
//!
//! `WEIR_BENCH_LOGS` keeps the operator's, the node agent's, every pod's and the broker's log
//! there, one folder per round.
//!
//! `WEIR_BENCH_SCENARIO=autoscaling` runs the job under KEDA instead (a stack with KEDA and
//! Prometheus, pods throttled to [`PER_POD`] records a second): the change is a burst of
//! [`BURST`] records, which the autoscaler answers with a rescale 1→3, then the lag draining,
//! after which it rescales back to 1. Nobody touches the job.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::Producer,
};
use serde_json::{Value, json};
use weir_e2e::{
    kafka,
    stack::{LocalStack, RUNTIME_IMAGE},
    wait_until,
    windowed::{last_savepoint, settled_on},
};

const NAME: &str = "bench";
const PARTITIONS: i32 = 3;
/// Records produced a second.
const RATE: f64 = 2000.0;
/// Users the records are keyed by.
const USERS: i64 = 30;
const WAIT: Duration = Duration::from_secs(120);
/// Output after the catch-up that still belongs to a rollout's window.
const AFTER: f64 = 3.0;
/// Length of the window measured without any change, for the reader's own floor.
const STEADY: f64 = 10.0;
/// The autoscaled job: records each pod reads a second at most...
const PER_POD: u32 = 3000;
/// ...the lag each pod is to carry...
const LAG_THRESHOLD: i64 = 10_000;
/// ...and the burst, worth all partitions' pods.
const BURST: i64 = 60_000;
/// The job keeps records whose `amount` (`n % 100`) passes this.
const FILTER: &str = "amount >= 10";

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn passes(n: i64) -> bool {
    n % 100 >= 10
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the benchmark started, and the wall clock they map to.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    wall: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self { start: Instant::now(), wall: Utc::now() }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// `at` as UTC time of day, to find it in the logs.
    fn wall(&self, at: f64) -> String {
        let at = self.wall + chrono::Duration::microseconds((at * 1e6) as i64);
        at.format("%H:%M:%S%.3f").to_string()
    }
}

/// One output record as the reader saw it.
#[derive(Clone, Copy)]
struct Arrival {
    /// When it arrived, on the [`Clock`].
    at: f64,
    /// Its number.
    n: i64,
    /// The output partition (the same as the input's: both are keyed by user).
    partition: i32,
    /// Arrival minus its Kafka timestamp (the input's produce time), ms.
    latency_ms: i64,
}

/// A reader tailing every partition of the output topic (assigned, so no group to join).
/// Sets a thread's stop flag when dropped, so that a panic does not leave it running.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Tail {
    stop: StopOnDrop,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Per partition, the latest Kafka timestamp read: the produce time of the input record
    /// (the job keeps it), so a partition has caught up with time `t` once it reaches `t`.
    produced_up_to: Arc<Vec<AtomicI64>>,
    thread: JoinHandle<()>,
}

impl Tail {
    fn start(bootstrap: &str, topic: &str, clock: Clock) -> Self {
        let consumer: BaseConsumer = must(
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "rollout-bench-tail")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .create(),
            "a reader",
        );
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            must(partitions.add_partition_offset(topic, partition, Offset::Beginning), "a partition to read");
        }
        must(consumer.assign(&partitions), "assigning the output partitions");
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let produced_up_to: Arc<Vec<AtomicI64>> = Arc::new((0..PARTITIONS).map(|_| AtomicI64::new(-1)).collect());
        let (stopping, arriving, up_to) = (stop.clone(), arrivals.clone(), produced_up_to.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(message)) => {
                        let at = clock.now();
                        let now_ms = Utc::now().timestamp_millis();
                        let n = message
                            .payload()
                            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                            .and_then(|v| v["n"].as_i64())
                            .unwrap_or(-1);
                        let produced_ms = message.timestamp().to_millis().unwrap_or(now_ms);
                        let latency_ms = now_ms - produced_ms;
                        if let Some(partition) = usize::try_from(message.partition()).ok().and_then(|p| up_to.get(p)) {
                            partition.fetch_max(produced_ms, Ordering::Relaxed);
                        }
                        lock(&arriving).push(Arrival { at, n, partition: message.partition(), latency_ms });
                    }
                    Some(Err(e)) => eprintln!("reading the output: {e}"),
                    None => {}
                }
            }
        });
        Self { stop: StopOnDrop(stop), arrivals, produced_up_to, thread }
    }

    fn last_at(&self) -> f64 {
        lock(&self.arrivals).last().map_or(f64::NEG_INFINITY, |a| a.at)
    }

    fn count(&self) -> usize {
        lock(&self.arrivals).len()
    }

    fn finish(self) -> Vec<Arrival> {
        self.stop.0.store(true, Ordering::Relaxed);
        must(self.thread.join().map_err(|_| "panicked"), "the reader thread");
        std::mem::take(&mut *lock(&self.arrivals))
    }
}

/// The longest gap between consecutive arrivals on `partition` (on any partition: `None`)
/// that touches `[from, to]`: the arrival before it and the one after.
fn longest_gap(arrivals: &[Arrival], partition: Option<i32>, from: f64, to: f64) -> Option<(f64, f64)> {
    let times: Vec<f64> =
        arrivals.iter().filter(|a| partition.is_none_or(|p| a.partition == p)).map(|a| a.at).collect();
    let first = times.partition_point(|at| *at < from).saturating_sub(1);
    let end = times.partition_point(|at| *at <= to);
    times.get(first..end)?.windows(2).map(|pair| (pair[0], pair[1])).max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
}

/// The worst partition's longest gap, with the partition.
fn worst_gap(arrivals: &[Arrival], from: f64, to: f64) -> Option<(i32, (f64, f64))> {
    (0..PARTITIONS)
        .filter_map(|p| Some((p, longest_gap(arrivals, Some(p), from, to)?)))
        .max_by(|(_, a), (_, b)| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
}

fn max_latency(arrivals: &[Arrival], from: f64, to: f64) -> f64 {
    arrivals.iter().filter(|a| a.at >= from && a.at <= to).map(|a| a.latency_ms).max().unwrap_or(0) as f64 / 1000.0
}

/// A thread producing `{"n", "user", "amount"}` records at [`RATE`] until stopped, and
/// bursts on request.
struct Producing {
    stop: StopOnDrop,
    burst: Arc<AtomicI64>,
    thread: JoinHandle<(i64, Option<String>)>,
}

impl Producing {
    fn start(bootstrap: &str, topic: &str) -> Self {
        let producer = must(kafka::producer(bootstrap), "a producer");
        let topic = topic.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let burst = Arc::new(AtomicI64::new(0));
        let (stopping, bursts) = (stop.clone(), burst.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0_i64;
            while !stopping.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * RATE) as i64 + bursts.load(Ordering::Relaxed);
                while n < due {
                    let user = format!("u{}", n % USERS);
                    let payload = json!({"n": n, "user": user, "amount": n % 100}).to_string();
                    must(kafka::send_text(&producer, &topic, &user, &payload), "producing");
                    n += 1;
                }
                producer.poll(Duration::ZERO);
                // Pacing of the load, not synchronisation: a small batch every 10 ms.
                std::thread::sleep(Duration::from_millis(10));
            }
            // A stuck rollout leaves a long backlog on a busy broker: give it time, and say so if
            // not everything was delivered, instead of failing the round.
            let flushed = producer.flush(WAIT).err().map(|e| format!("the producer could not deliver everything: {e}"));
            (n, flushed)
        });
        Self { stop: StopOnDrop(stop), burst, thread }
    }

    /// `records` more, sent at once.
    fn burst(&self, records: i64) {
        self.burst.fetch_add(records, Ordering::Relaxed);
    }

    /// Records sent, and why not all were delivered, if they were not.
    fn finish(self) -> (i64, Option<String>) {
        self.stop.0.store(true, Ordering::Relaxed);
        must(self.thread.join().map_err(|_| "panicked"), "the producer thread")
    }
}

#[derive(Clone, Copy)]
enum Change {
    /// No change: the reader's floor.
    Steady,
    /// A new image tag.
    Upgrade { tag: u32 },
    /// `kubectl scale` from one parallelism to another.
    Rescale { from: i32, to: i32 },
    /// A burst of records, which the autoscaler answers by scaling up.
    Burst { records: i64, to: i32 },
    /// Nothing: after the burst drained, the autoscaler scales back down.
    Calm { to: i32 },
}

impl Change {
    fn label(&self) -> String {
        match self {
            Self::Steady => "steady (no change)".into(),
            Self::Upgrade { .. } => "upgrade".into(),
            Self::Rescale { from, to } => format!("rescale {from}→{to}"),
            Self::Burst { records, to } => format!("autoscaler 1→{to}, burst of {records}"),
            Self::Calm { to } => format!("autoscaler →{to}, lag drained"),
        }
    }
}

/// The figures of one rollout, in seconds on the [`Clock`].
struct Measured {
    change: Change,
    run: usize,
    applied: f64,
    /// The longest gap on any one output partition: (last record before, first after).
    gap: (f64, f64),
    /// That partition.
    partition: i32,
    /// The longest time without output on any partition.
    outage: (f64, f64),
    /// The job's status showing it settled.
    settled: Option<f64>,
    /// The output holding every record sent before the job settled.
    caught_up: Option<f64>,
    /// The end of the window measured.
    end: f64,
    /// The longest a record of the window took from the producer to the reader.
    max_latency: f64,
    savepoint: Option<String>,
    phases: Phases,
    /// The job did not settle within [`WAIT`]: the gap is still open at `end`.
    stuck: bool,
}

impl Measured {
    fn downtime(&self) -> f64 {
        self.gap.1 - self.gap.0
    }

    fn since(&self, at: Option<f64>) -> String {
        at.map_or("-".to_owned(), |at| format!("{:.2}", at - self.applied))
    }
}

/// Where a rollout's time went, from the operator's and the pods' logs, on the [`Clock`].
#[derive(Default)]
struct Phases {
    /// The operator asked the pods for the savepoint (the time in its id).
    savepoint_asked: Option<f64>,
    /// The operator had the savepoint.
    savepoint_taken: Option<f64>,
    /// The last new pod logged `consuming` (started, restored, subscribed).
    consuming: Option<f64>,
    /// The last assignment of partitions to a new pod.
    assigned: Option<f64>,
}

/// The time at the start of a log line, or in a JSON line's `timestamp`.
fn log_time(line: &str) -> Option<DateTime<Utc>> {
    let text = match serde_json::from_str::<Value>(line) {
        Ok(json) => json["timestamp"].as_str()?.to_owned(),
        Err(_) => line.split_whitespace().next()?.to_owned(),
    };
    DateTime::parse_from_rfc3339(&text).ok().map(|t| t.with_timezone(&Utc))
}

/// `line` without terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// The time a savepoint id names (`<job>-g<n>-<reason>-YYYYMMDDtHHMMSSmmmz`).
fn savepoint_asked(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.rsplit('-').next()?.strip_suffix('z')?;
    let (seconds, millis) = stamp.split_at_checked(15)?;
    let at = chrono::NaiveDateTime::parse_from_str(seconds, "%Y%m%dt%H%M%S").ok()?.and_utc();
    Some(at + chrono::Duration::milliseconds(millis.parse().ok()?))
}

/// Events of the operator's and the pods' logs: (time, what).
fn log_events(stack: &LocalStack) -> Vec<(DateTime<Utc>, String)> {
    let state = stack.agent.state_dir();
    let mut events = Vec::new();
    for line in stack.operator.log().lines().map(plain) {
        if let (Some(at), Some((_, rest))) = (log_time(&line), line.split_once(": savepoint "))
            && rest.contains(" pods at ")
        {
            events.push((at, format!("savepoint {}", rest.split(' ').next().unwrap_or_default())));
        }
    }
    let pods = std::fs::read_dir(state.join("pods").join("default")).into_iter().flatten().flatten();
    for pod in pods {
        let log = std::fs::read_to_string(pod.path().join("runtime.log")).unwrap_or_default();
        for line in log.lines() {
            let Ok(json) = serde_json::from_str::<Value>(line) else { continue };
            let fields = &json["fields"];
            let what = match fields["message"].as_str() {
                Some("consuming") => "consuming",
                Some("partitions assigned") if fields["partitions"] != "[]" => "assigned",
                _ => continue,
            };
            if let Some(at) = log_time(line) {
                events.push((at, what.to_owned()));
            }
        }
    }
    events
}

impl Clock {
    fn of(&self, at: DateTime<Utc>) -> f64 {
        (at - self.wall).as_seconds_f64()
    }
}

/// Fills in each rollout's phases from the logs.
fn find_phases(stack: &LocalStack, clock: &Clock, measured: &mut [Measured]) {
    let events: Vec<(f64, String)> = log_events(stack).into_iter().map(|(at, what)| (clock.of(at), what)).collect();
    for m in measured.iter_mut() {
        let Some(id) = m.savepoint.clone() else { continue };
        let asked = savepoint_asked(&id).map(|at| clock.of(at));
        let taken = events.iter().find(|(_, what)| *what == format!("savepoint {id}")).map(|(at, _)| *at);
        let after = taken.unwrap_or(m.applied);
        let last = |kind: &str| {
            events
                .iter()
                .filter(|(at, what)| what == kind && *at >= after && *at <= m.end)
                .map(|(at, _)| *at)
                .reduce(f64::max)
        };
        m.phases = Phases {
            savepoint_asked: asked,
            savepoint_taken: taken,
            consuming: last("consuming"),
            assigned: last("assigned"),
        };
    }
}

/// Fields drop in order: the load and the reader stop before the stack.
struct Bench {
    tail: Tail,
    producing: Producing,
    stack: LocalStack,
    clock: Clock,
}

fn job(stack: &LocalStack, tag: u32) -> Value {
    let bootstrap = stack.broker.bootstrap();
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": NAME}, "spec": {
        "parallelism": 1,
        "image": format!("{RUNTIME_IMAGE}:v{tag}"),
        "source": {"kafka": {"bootstrapServers": bootstrap, "topic": format!("{NAME}-in")}},
        "pipeline": [{"filter": FILTER}],
        "sink": {"kafka": {"bootstrapServers": bootstrap, "topic": format!("{NAME}-out"), "keyField": "user"}},
        "checkpoint": {"storage": stack.storage_url(), "interval": "2s"},
        "upgradeMode": "savepoint",
    }})
}

/// The job under KEDA: its parallelism left to the autoscaler, each pod reading at most
/// [`PER_POD`] records a second, so that one pod drains a burst slowly.
fn autoscaled_job(stack: &LocalStack) -> Value {
    let mut job = job(stack, 1);
    if let Some(spec) = job["spec"].as_object_mut() {
        spec.remove("parallelism");
    }
    job["spec"]["source"]["kafka"]["maxRecordsPerSecond"] = json!(PER_POD);
    job["spec"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": PARTITIONS, "lagThreshold": LAG_THRESHOLD,
        "scaleDownStabilization": "20s"});
    job
}

impl Bench {
    fn start(autoscaled: bool) -> Self {
        let clock = Clock::new();
        // Under the autoscaler, the operator's default stabilization, which merges a walk down.
        let stack = must(
            if autoscaled {
                LocalStack::with_autoscaling(&[])
            } else {
                LocalStack::start(&["--rescale-stabilization", "0s"])
            },
            "starting the stack",
        );
        for topic in ["in", "out"] {
            must(stack.broker.create_topic(&format!("{NAME}-{topic}"), PARTITIONS as u32), "creating a topic");
        }
        must(stack.apply(&if autoscaled { autoscaled_job(&stack) } else { job(&stack, 1) }), "applying the job");
        must(stack.wait_for_job(NAME, "1 pod running", WAIT, |j| settled_on(j, 1)), "the first deploy");
        let bootstrap = stack.broker.bootstrap();
        let tail = Tail::start(&bootstrap, &format!("{NAME}-out"), clock);
        let producing = Producing::start(&bootstrap, &format!("{NAME}-in"));
        let bench = Self { stack, clock, tail, producing };
        bench.wait_for_output_after(bench.clock.now() + 1.0, "the first output");
        bench.step("job running, output flowing");
        bench
    }

    fn step(&self, what: &str) {
        eprintln!("{:>7.1}s {} {what}", self.clock.now(), self.clock.wall(self.clock.now()));
    }

    fn wait_for_output_after(&self, at: f64, what: &str) {
        must(wait_until(WAIT, what, || self.tail.last_at() > at), what);
    }

    /// Waits until every partition of the output holds what was produced before now: a
    /// partition still waiting for its new owner holds the wait up.
    fn wait_for_catch_up(&self) {
        let now_ms = Utc::now().timestamp_millis();
        let caught_up = || self.tail.produced_up_to.iter().all(|t| t.load(Ordering::Relaxed) >= now_ms);
        must(wait_until(WAIT, "the output to catch up", caught_up), "catching up");
    }

    fn measure(&self, change: Change, run: usize) -> Measured {
        let applied = self.clock.now();
        let (replicas, reason) = match change {
            Change::Steady => (0, ""),
            Change::Upgrade { tag } => {
                must(self.stack.apply(&job(&self.stack, tag)), "applying the upgrade");
                (1, "upgrade")
            }
            Change::Rescale { to, .. } => {
                must(self.stack.scale(NAME, to), "scaling");
                (i64::from(to), "rescale")
            }
            Change::Burst { records, to } => {
                self.producing.burst(records);
                (i64::from(to), "rescale")
            }
            Change::Calm { to } => (i64::from(to), "rescale"),
        };
        let (settled, caught_up, savepoint, stuck) = if let Change::Steady = change {
            self.wait_for_output_after(applied + STEADY, "steady output");
            (None, None, None, false)
        } else {
            let what = format!("{} settled", change.label());
            let settled = self
                .stack
                .wait_for_job(NAME, &what, WAIT, |j| settled_on(j, replicas) && last_savepoint(j, reason).is_some());
            match settled {
                Ok(settled_job) => {
                    let settled = self.clock.now();
                    self.wait_for_catch_up();
                    let caught_up = self.clock.now();
                    self.wait_for_output_after(caught_up + AFTER, "output after the catch-up");
                    let savepoint =
                        last_savepoint(&settled_job, reason).and_then(|s| s["id"].as_str()).map(str::to_owned);
                    (Some(settled), Some(caught_up), savepoint, false)
                }
                Err(_) => {
                    self.step(&format!("STUCK: {what} timed out after {WAIT:?}; this round ends here"));
                    let savepoint = self
                        .stack
                        .job(NAME)
                        .and_then(|j| last_savepoint(&j, reason).and_then(|s| s["id"].as_str()).map(str::to_owned));
                    (None, None, savepoint, true)
                }
            }
        };
        let end = match (caught_up, stuck) {
            (Some(caught_up), _) => caught_up + AFTER,
            (None, true) => self.clock.now(),
            (None, false) => applied + STEADY,
        };
        let arrivals = lock(&self.tail.arrivals);
        let (mut partition, mut gap) = worst_gap(&arrivals, applied, end).unwrap_or((-1, (applied, applied)));
        let mut outage = longest_gap(&arrivals, None, applied, end).unwrap_or((applied, applied));
        if stuck {
            // The gaps still open at the end count too.
            let open = |partition: Option<i32>| {
                let last = arrivals.iter().rev().find(|a| partition.is_none_or(|p| a.partition == p));
                last.map_or((applied, end), |a| (a.at, end))
            };
            let (worst, open_gap) = (0..PARTITIONS)
                .map(|p| (p, open(Some(p))))
                .max_by(|(_, a), (_, b)| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
                .unwrap_or((-1, (applied, end)));
            if open_gap.1 - open_gap.0 > gap.1 - gap.0 {
                gap = open_gap;
                partition = worst;
            }
            let all = open(None);
            if all.1 - all.0 > outage.1 - outage.0 {
                outage = all;
            }
        }
        let max_latency = max_latency(&arrivals, applied, end);
        drop(arrivals);
        let measured = Measured {
            change,
            run,
            applied,
            gap,
            partition,
            outage,
            settled,
            caught_up,
            end,
            max_latency,
            savepoint,
            phases: Phases::default(),
            stuck,
        };
        self.report(&measured);
        measured
    }

    /// The rollout's timeline on the wall clock, to read next to the logs.
    fn report(&self, m: &Measured) {
        let wall = |at: f64| format!("{} (+{:.2}s)", self.clock.wall(at), at - m.applied);
        eprintln!(
            "{:>7.1}s {} run {}: downtime {:.2}s on partition {} ({:.2}s without any output) | applied {} | \
             last output before the gap {} | {} {} | settled {} | caught up {} | savepoint {}",
            self.clock.now(),
            m.change.label(),
            m.run,
            m.downtime(),
            m.partition,
            m.outage.1 - m.outage.0,
            self.clock.wall(m.applied),
            wall(m.gap.0),
            if m.stuck { "still none at" } else { "first after" },
            wall(m.gap.1),
            m.settled.map(wall).unwrap_or_default(),
            m.caught_up.map(wall).unwrap_or_default(),
            m.savepoint.as_deref().unwrap_or("-"),
        );
    }

    /// Stops the load, reads the output to its end and checks it: every record that passes
    /// the filter, once. Returns the problems found, by rollout window.
    /// With a stuck rollout, the records it holds up are not looked for: only repeats and
    /// strangers are.
    fn check_output(self, measured: &[Measured]) -> (LocalStack, Vec<String>) {
        let Self { stack, clock, tail, producing } = self;
        let stuck = measured.iter().any(|m| m.stuck);
        let (sent, undelivered) = producing.finish();
        let expected = (0..sent).filter(|n| passes(*n)).count();
        eprintln!("{:>7.1}s load stopped: {sent} records sent, {expected} pass the filter", clock.now());
        let read_all = if stuck { Ok(()) } else { wait_until(WAIT, "the whole output", || tail.count() >= expected) };
        // The rest, if any: until 3 s pass without a record, so that repeats show.
        let quiet = wait_until(WAIT, "a quiet output", || tail.last_at() + 3.0 < clock.now());
        let arrivals = tail.finish();
        let mut problems: Vec<String> = undelivered.into_iter().collect();
        if let Err(e) = read_all.and(quiet) {
            problems.push(e.to_string());
        }
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let window_of = |at: f64| {
            measured
                .iter()
                .find(|m| at >= m.applied && at <= m.end)
                .map_or("outside every rollout window".to_owned(), |m| format!("{} run {}", m.change.label(), m.run))
        };
        let mut repeats: HashMap<String, usize> = HashMap::new();
        for arrival in &arrivals {
            let count = seen.entry(arrival.n).or_default();
            *count += 1;
            if *count > 1 {
                *repeats.entry(window_of(arrival.at)).or_default() += 1;
            }
        }
        let missing: Vec<i64> = (0..sent).filter(|n| passes(*n) && !seen.contains_key(n)).collect();
        let unexpected = seen.keys().filter(|n| !(0..sent).contains(*n) || !passes(**n)).count();
        if stuck {
            eprintln!("a rollout was stuck: {} records held up by it are not looked for", missing.len());
        } else if !missing.is_empty() {
            let first: Vec<i64> = missing.iter().take(10).copied().collect();
            problems.push(format!("{} records missing, the first {first:?}", missing.len()));
        }
        for (window, count) in &repeats {
            problems.push(format!("{count} records repeated, arriving in {window}"));
        }
        if unexpected > 0 {
            problems.push(format!("{unexpected} records that should not be there"));
        }
        eprintln!(
            "output: {} records read, {} distinct, {} expected ({} sent)",
            arrivals.len(),
            seen.len(),
            expected,
            sent
        );
        (stack, problems)
    }
}

/// The median, with two decimals; `-` for none.
fn median(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let median = match values.len() {
        0 => return "-".to_owned(),
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    };
    format!("{median:.2}")
}

fn print_figures(measured: &[Measured]) {
    println!();
    println!("Per rollout, seconds (downtime: the longest gap on one output partition; outage: on all of them):");
    println!();
    println!(
        "| scenario | run | downtime | partition | outage | change → settled | change → caught up | max latency |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for m in measured {
        let open = if m.stuck { "stuck, > " } else { "" };
        println!(
            "| {} | {} | {open}{:.2} | {} | {open}{:.2} | {} | {} | {} |",
            m.change.label(),
            m.run,
            m.downtime(),
            m.partition,
            m.outage.1 - m.outage.0,
            if m.stuck { format!("not within {} s", WAIT.as_secs()) } else { m.since(m.settled) },
            m.since(m.caught_up),
            if m.stuck { "-".to_owned() } else { format!("{:.2}", m.max_latency) }
        );
    }
    println!();
    println!("Where the time went, seconds after the change (from the logs; the gap on the worst partition):");
    println!();
    println!(
        "| scenario | run | savepoint asked | savepoint taken | last old output | new pods consuming | \
         partitions assigned | first new output | settled |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in measured.iter().filter(|m| m.savepoint.is_some()) {
        let p = &m.phases;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.change.label(),
            m.run,
            m.since(p.savepoint_asked),
            m.since(p.savepoint_taken),
            m.since(Some(m.gap.0)),
            m.since(p.consuming),
            m.since(p.assigned),
            if m.stuck { "-".to_owned() } else { m.since(Some(m.gap.1)) },
            m.since(m.settled)
        );
    }
    println!();
    println!("Medians over the rollouts that settled, seconds:");
    println!();
    println!(
        "| scenario | settled | stuck | downtime, median | downtime, worst | outage, median | rollout, median | \
         downtime < 5 s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut labels: Vec<String> = Vec::new();
    for m in measured {
        if !labels.contains(&m.change.label()) {
            labels.push(m.change.label());
        }
    }
    for label in labels {
        let of: Vec<&Measured> = measured.iter().filter(|m| m.change.label() == label && !m.stuck).collect();
        let stuck = measured.iter().filter(|m| m.change.label() == label && m.stuck).count();
        let mut downtimes: Vec<f64> = of.iter().map(|m| m.downtime()).collect();
        let worst = downtimes.iter().copied().reduce(f64::max).map_or("-".to_owned(), |w| format!("{w:.2}"));
        let under = downtimes.iter().filter(|d| **d < 5.0).count();
        let mut outages: Vec<f64> = of.iter().map(|m| m.outage.1 - m.outage.0).collect();
        let mut rollouts: Vec<f64> = of.iter().filter_map(|m| Some(m.settled? - m.applied)).collect();
        println!(
            "| {label} | {} | {stuck} | {} | {worst} | {} | {} | {under} of {} |",
            of.len(),
            median(&mut downtimes),
            median(&mut outages),
            median(&mut rollouts),
            of.len() + stuck
        );
    }
}

/// Copies the operator's, the agent's, the pods' and the broker's logs to `dir`, if set,
/// when dropped: after the round, or after a panic.
struct KeepLogs {
    state: PathBuf,
    /// The broker's folder, with `kafka.log`.
    broker: PathBuf,
    /// Where to copy them.
    dir: Option<PathBuf>,
}

impl KeepLogs {
    /// Copies what it can; returns what it could not.
    fn copy(&self, dir: &Path) -> Vec<String> {
        let mut files = vec![
            (self.state.join("operator.log"), dir.join("operator.log")),
            (self.state.join("agent.log"), dir.join("agent.log")),
        ];
        let pods = std::fs::read_dir(self.state.join("pods").join("default")).into_iter().flatten().flatten();
        for pod in pods {
            files
                .push((pod.path().join("runtime.log"), dir.join(format!("{}.log", pod.file_name().to_string_lossy()))));
        }
        files.push((self.broker.join("kafka.log"), dir.join("kafka.log")));
        let mut failed = Vec::new();
        if let Err(e) = std::fs::create_dir_all(dir) {
            failed.push(format!("{}: {e}", dir.display()));
        }
        for (from, to) in files {
            if let Err(e) = std::fs::copy(&from, to) {
                failed.push(format!("{}: {e}", from.display()));
            }
        }
        failed
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            for failed in self.copy(dir) {
                eprintln!("keeping the logs: {failed}");
            }
        }
    }
}

fn main() -> ExitCode {
    let runs: usize = std::env::var("WEIR_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let logs = std::env::var_os("WEIR_BENCH_LOGS").map(PathBuf::from);
    let autoscaling = std::env::var("WEIR_BENCH_SCENARIO").is_ok_and(|s| s == "autoscaling");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("rollout benchmark: {runs} rounds, each on a new stack, {RATE} records/s, {cores} cores");
    let mut measured = Vec::new();
    let mut problems = Vec::new();
    for run in 1..=runs {
        let bench = Bench::start(autoscaling);
        let keep_logs = KeepLogs {
            state: bench.stack.agent.state_dir().to_path_buf(),
            broker: bench.stack.broker.dir().to_path_buf(),
            dir: logs.as_ref().map(|d| d.join(format!("run-{run}"))),
        };
        let mut round = vec![bench.measure(Change::Steady, run)];
        let rescales = [(1, 2), (2, 3), (3, 1)].map(|(from, to)| Change::Rescale { from, to });
        let changes: Vec<Change> = if autoscaling {
            vec![Change::Burst { records: BURST, to: PARTITIONS }, Change::Calm { to: 1 }]
        } else {
            std::iter::once(Change::Upgrade { tag: 2 }).chain(rescales).collect()
        };
        for change in changes {
            let measured = bench.measure(change, run);
            let stuck = measured.stuck;
            round.push(measured);
            if stuck {
                break;
            }
        }
        if autoscaling {
            // Each savepoint is one rescale the autoscaler asked for: one up and one down
            // per burst is the aim.
            let history = bench.stack.job(NAME).map(|j| j["status"]["savepointHistory"].clone()).unwrap_or_default();
            let ids: Vec<&str> = history.as_array().into_iter().flatten().filter_map(|s| s["id"].as_str()).collect();
            println!("round {run}: {} autoscaler rescales, newest first: {}", ids.len(), ids.join(", "));
        }
        let clock = bench.clock;
        let (stack, wrong) = bench.check_output(&round);
        find_phases(&stack, &clock, &mut round);
        problems.extend(wrong.into_iter().map(|w| format!("round {run}: {w}")));
        measured.extend(round);
        drop(keep_logs);
    }
    print_figures(&measured);
    println!();
    let stuck = measured.iter().filter(|m| m.stuck).count();
    if stuck > 0 {
        println!("STUCK: {stuck} rollouts did not settle within {} s", WAIT.as_secs());
    }
    if problems.is_empty() {
        println!("output exact in every round: every record that passes the filter, once");
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            println!("OUTPUT WRONG: {problem}");
        }
        ExitCode::FAILURE
    }
}

//! The autoscaling loop with real parts, on the windowed payments job with an exactly-once
//! sink under a steady load: a burst of records raises the lag; KEDA reads it (from
//! Prometheus, which scrapes the pods' `weir_consumer_lag`, or from the broker with its Kafka
//! trigger), the HPA controller writes the StreamJob's `/scale`, and the operator rescales
//! through a savepoint; the lag drains, and after the stabilization window the job goes back
//! down. Each step is one rescale (the test counts them), and the output equals the window
//! totals computed without the runtime: no window lost or repeated.
//!
//! Each test prints its timeline (the times a status shows pods ready, which trail the pods'
//! consuming by a few seconds); the rollout benchmark's autoscaling scenario measures
//! reaction and downtime at the output (e2e/BENCHMARKS.md).

use std::{cell::Cell, sync::Mutex, time::Instant};

use serde_json::{Value, json};
use weir_e2e::{
    stack::LocalStack,
    wait_until,
    windowed::{WAIT, WindowedJob, settled_on},
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Each test runs a stack of its own; one at a time, so that two cores suffice.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const PARTITIONS: i32 = 4;
/// The lag one pod is asked to carry.
const THRESHOLD: i64 = 1500;
/// Payments a second of the steady load: far under what one pod reads.
const STEADY: usize = 100;
/// What each pod reads a second at most, so that one pod drains a burst slowly.
const PER_POD: u32 = 400;
/// A burst worth the 4 pods of `maxReplicas` (and more).
const BURST: usize = 12_000;
/// The scale-down stabilization window of the tests.
const STABILIZATION: &str = "20s";

fn start(name: &str) -> WindowedJob {
    let stack = must(LocalStack::with_autoscaling(&["--rescale-stabilization", "1s"]), "starting the stack");
    WindowedJob::new(stack, name, PARTITIONS).exactly_once()
}

/// The job with `autoscaling`, its parallelism left to the autoscaler, each pod throttled.
fn apply_autoscaled(test: &WindowedJob, autoscaling: Value) {
    let mut job = test.job(json!({"autoscaling": autoscaling}));
    if let Some(spec) = job["spec"].as_object_mut() {
        spec.remove("parallelism");
    }
    job["spec"]["source"]["kafka"]["maxRecordsPerSecond"] = json!(PER_POD);
    must(test.stack.apply(&job), "applying the job");
}

/// The HPA KEDA made for the job.
fn hpa(test: &WindowedJob) -> Value {
    let hpa = test.stack.kubectl(["get", "hpa", &format!("keda-hpa-{}", test.name), "-o", "json"]);
    hpa.ok().and_then(|out| serde_json::from_slice(&out).ok()).unwrap_or_default()
}

/// The reasons of the job's savepoints, newest first.
fn savepoint_reasons(job: &Value) -> Vec<String> {
    let history = job["status"]["savepointHistory"].as_array().cloned().unwrap_or_default();
    history.iter().filter_map(|s| s["reason"].as_str().map(str::to_owned)).collect()
}

/// Waits for the job to run `replicas` pods with `parallelism` as asked for by the
/// autoscaler; returns when the autoscaler's write was first seen and when the pods ran.
fn scaled_to(test: &WindowedJob, replicas: i64) -> (Instant, Instant) {
    let asked = Cell::new(None);
    let pods = if replicas == 1 { "1 pod".to_owned() } else { format!("{replicas} pods") };
    test.wait(&format!("{pods} after the autoscaler's rescale"), |j| {
        if j["spec"]["parallelism"] == replicas && asked.get().is_none() {
            asked.set(Some(Instant::now()));
        }
        settled_on(j, replicas)
    });
    (asked.get().unwrap_or_else(Instant::now), Instant::now())
}

fn seconds(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

#[test]
fn a_burst_scales_the_job_up_once_and_back_down_once_through_prometheus_keda_and_the_hpa() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("clicks");
    let autoscaling = json!({"minReplicas": 1, "maxReplicas": 4, "lagThreshold": THRESHOLD,
        "scaleDownStabilization": STABILIZATION});
    apply_autoscaled(&test, autoscaling);
    test.wait("1 pod running", |j| settled_on(j, 1));
    let producing = test.produce_until_stopped(0, STEADY);

    // Under the steady load the loop runs and asks for one pod.
    let (_, prometheus) = test.stack.autoscaling.as_ref().expect("a stack with autoscaling");
    let mut seen = Value::Null;
    let read = wait_until(WAIT, "the HPA to read the lag", || {
        seen = hpa(&test);
        seen["status"]["currentMetrics"][0]["external"]["current"].is_object() && seen["status"]["desiredReplicas"] == 1
    });
    assert!(read.is_ok(), "{seen:#}\n{}", test.stack.diagnostics());
    test.step("steady: the HPA reads the lag and wants 1 pod");

    let burst = producing.burst(BURST);
    test.step(&format!("burst of {BURST} payments"));
    let (asked_up, up) = scaled_to(&test, 4);
    let query = r#"sum(weir_consumer_lag{streamjob="clicks",namespace="default"})"#;
    let under = wait_until(WAIT, "the lag back under the threshold", || {
        prometheus.value(query).ok().flatten().is_some_and(|lag| lag < THRESHOLD as f64)
    });
    assert!(under.is_ok(), "{}", test.stack.diagnostics());
    let drained = Instant::now();
    test.step("lag under the threshold");

    let (asked_down, down) = scaled_to(&test, 1);
    let sent = producing.finish();
    test.assert_exact_output(&sent);

    let job = test.stack.job("clicks").unwrap_or_default();
    let reasons = savepoint_reasons(&job);
    eprintln!(
        "figures: burst → /scale written {:.1}s, → 4 pods ready in status {:.1}s, → lag under the threshold {:.1}s; \
         lag under → /scale 1 written {:.1}s (window {STABILIZATION}), → 1 pod ready in status {:.1}s; rescales {}",
        seconds(burst, asked_up),
        seconds(burst, up),
        seconds(burst, drained),
        seconds(drained, asked_down),
        seconds(drained, down),
        reasons.len(),
    );
    assert_eq!(reasons, ["rescale", "rescale"], "one step up and one down: {:#}", job["status"]);
    assert_eq!(job["spec"]["parallelism"], 1);
}

#[test]
fn an_idle_job_goes_to_zero_and_records_bring_it_back_through_keda_s_kafka_trigger() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("views");
    let autoscaling = json!({"minReplicas": 0, "maxReplicas": 4, "lagThreshold": THRESHOLD, "trigger": "kafka",
        "scaleDownStabilization": STABILIZATION});
    apply_autoscaled(&test, autoscaling);
    // Nothing to read: KEDA stops the job.
    let idle = test.wait("at zero pods, nothing to read", |j| settled_on(j, 0) && j["spec"]["parallelism"] == 0);
    let before = savepoint_reasons(&idle).len();

    // Records wake it (KEDA's activation), the backlog takes it to 4 pods (the HPA), and
    // once it drained, back to 1.
    let producing = test.produce_until_stopped(0, STEADY);
    let burst = producing.burst(BURST);
    test.step(&format!("burst of {BURST} payments"));
    let (_, woken) = scaled_to(&test, 1);
    let (_, up) = scaled_to(&test, 4);
    let (_, down) = scaled_to(&test, 1);
    let sent = producing.finish();

    // Idle again: to zero through a savepoint, its windows still open in it.
    let asleep = test.wait("at zero pods again", |j| settled_on(j, 0) && j["spec"]["parallelism"] == 0);
    let slept = Instant::now();
    let reasons = savepoint_reasons(&asleep);
    // Closing the windows is a record too: it wakes the job, which restores them.
    test.assert_exact_output(&sent);
    eprintln!(
        "figures: burst → 1 pod ready in status {:.1}s, → 4 pods {:.1}s, → 1 pod {:.1}s; asleep → output exact {:.1}s; \
         rescales {}",
        seconds(burst, woken),
        seconds(burst, up),
        seconds(burst, down),
        seconds(slept, Instant::now()),
        reasons.len() - before,
    );
    // Up to 4, down to 1, to zero; waking up restores the last savepoint without one.
    assert_eq!(reasons[..reasons.len() - before], ["rescale"; 3], "{:#}", asleep["status"]);
}

//! Savepoints as resources on the whole local stack: a savepoint a user asks for with a
//! `StreamJobSavepoint` is taken while the job runs on (its output stays exact), one that
//! names an existing savepoint is adopted, one asked of a suspended job waits, and every
//! savepoint the operator takes for a rollout is recorded as one, so `kubectl get sjsp` is
//! the job's history; and a job in another namespace started from a savepoint
//! (`restoreFrom.path`) carries on exactly where it was taken.

use std::sync::Mutex;

use serde_json::{Value, json};
use weir_crds::{JobReference, StreamJobSavepoint, StreamJobSavepointSpec};
use weir_e2e::{
    kafka::{self, read_records},
    payments::{self, Totals},
    stack::{LocalStack, RUNTIME_IMAGE},
    wait_until,
    windowed::{USERS, WAIT, WindowedJob, last_savepoint, settled_on},
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Each test runs a stack of its own; one at a time, so that two cores suffice.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A savepoint of `job`, as a user writes one.
fn savepoint(name: &str, job: &str, path: Option<&str>) -> Value {
    let savepoint = StreamJobSavepoint::new(
        name,
        StreamJobSavepointSpec {
            job_ref: JobReference { name: job.into() },
            path: path.map(str::to_owned),
            dispose_on_delete: false,
        },
    );
    must(serde_json::to_value(&savepoint), "serializing the savepoint")
}

fn get(stack: &LocalStack, name: &str) -> Option<Value> {
    let output = stack.kubectl(["get", "streamjobsavepoint", name, "-o", "json"]).ok()?;
    serde_json::from_slice(&output).ok()
}

/// Waits for savepoint `name` to satisfy `condition`; returns it.
fn wait_for(stack: &LocalStack, name: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let waited = wait_until(WAIT, what, || {
        last = get(stack, name);
        last.as_ref().is_some_and(&condition)
    });
    if let Err(e) = waited {
        panic!("{e}\nsavepoint: {:#}\n{}", last.unwrap_or_default(), stack.diagnostics());
    }
    last.unwrap_or_default()
}

fn state(savepoint: &Value) -> &str {
    savepoint["status"]["state"].as_str().unwrap_or_default()
}

/// Job `name` on a stack of its own, on 2 pods over 3 partitions, with payments sent to it.
fn running_with_input(name: &str) -> (WindowedJob, Vec<payments::Payment>) {
    let stack = must(LocalStack::start(&[]), "starting the stack");
    let job = WindowedJob::new(stack, name, 3);
    job.apply(json!({"parallelism": 2}));
    job.wait("2 pods running", |j| settled_on(j, 2));
    let sent = payments::payments(1500, USERS, 0);
    job.produce(&sent);
    (job, sent)
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn a_savepoint_asked_for_is_taken_while_the_job_runs_and_every_savepoint_is_listed() {
    let _one = ONE_AT_A_TIME.lock();
    let (test, before) = running_with_input("ledger");

    must(test.stack.apply(&savepoint("ledger-manual-1", "ledger", None)), "asking for a savepoint");
    let taken = wait_for(&test.stack, "ledger-manual-1", "the savepoint taken", |s| state(s) == "Completed");
    test.step("manual savepoint taken");
    let status = &taken["status"];
    assert_eq!(status["reason"], "manual", "{status:#}");
    assert_eq!(taken["metadata"]["labels"]["weir.dev/streamjob"], "ledger", "labelled with its job");
    assert_eq!(status["partitions"], 3, "both pods' partitions: {status:#}");
    assert!(status["path"].as_str().is_some_and(|p| p.ends_with("/savepoints/ledger-manual-1")), "{status:#}");
    let job = must(test.stack.job("ledger").ok_or("no job"), "reading the job");
    assert_eq!(job["status"]["lastSavepoint"]["id"], "ledger-manual-1", "{:#}", job["status"]);
    assert!(settled_on(&job, 2), "the pods ran on: {:#}", job["status"]);

    // A savepoint named by its path is adopted as it is.
    let path = status["path"].as_str().unwrap_or_default().to_owned();
    must(test.stack.apply(&savepoint("ledger-adopted", "ledger", Some(&path))), "adopting a savepoint");
    let adopted = wait_for(&test.stack, "ledger-adopted", "the savepoint adopted", |s| state(s) == "Completed");
    assert_eq!(adopted["status"]["path"], path.as_str());

    // The operator's own savepoints are listed too.
    let during = payments::payments(1500, USERS, 1500);
    test.produce(&during);
    test.apply(json!({"parallelism": 2, "image": format!("{}:v2", RUNTIME_IMAGE)}));
    let upgraded =
        test.wait("upgraded through a savepoint", |j| settled_on(j, 2) && last_savepoint(j, "upgrade").is_some());
    let upgrade_id = last_savepoint(&upgraded, "upgrade").and_then(|s| s["id"].as_str()).unwrap_or_default().to_owned();
    let recorded = wait_for(&test.stack, &upgrade_id, "the upgrade's savepoint recorded", |s| state(s) == "Completed");
    assert_eq!(recorded["status"]["reason"], "upgrade");
    assert_eq!(recorded["spec"]["jobRef"]["name"], "ledger");
    assert_eq!(recorded["metadata"]["labels"]["weir.dev/streamjob"], "ledger");
    assert!(recorded["metadata"]["ownerReferences"].is_null(), "a job's history outlives it: {recorded:#}");

    let listed = must(test.stack.kubectl(["get", "sjsp", "-l", "weir.dev/streamjob=ledger"]), "kubectl get sjsp");
    let listed = String::from_utf8_lossy(&listed).into_owned();
    let mut lines = listed.lines();
    assert_eq!(words(lines.next().unwrap_or_default()), ["NAME", "JOB", "STATE", "REASON", "AGE"], "{listed}");
    let mut rows: Vec<Vec<&str>> = lines.map(|l| words(l)[..4].to_vec()).collect();
    let mut expected = vec![
        vec!["ledger-adopted", "ledger", "Completed", "manual"],
        vec!["ledger-manual-1", "ledger", "Completed", "manual"],
        vec![upgrade_id.as_str(), "ledger", "Completed", "upgrade"],
    ];
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected, "{listed}");

    // Asked of a suspended job, a savepoint waits for it to run.
    test.apply(json!({"parallelism": 2, "image": format!("{}:v2", RUNTIME_IMAGE), "suspend": true}));
    test.wait("suspended", |j| j["status"]["phase"] == "Suspended" && j["status"]["replicas"] == 0);
    must(test.stack.apply(&savepoint("ledger-manual-2", "ledger", None)), "asking for a savepoint");
    let pending = wait_for(&test.stack, "ledger-manual-2", "the savepoint pending", |s| state(s) == "Pending");
    assert_eq!(pending["status"]["error"], "waiting: the job is suspended");
    test.apply(json!({"parallelism": 2, "image": format!("{}:v2", RUNTIME_IMAGE)}));
    wait_for(&test.stack, "ledger-manual-2", "the savepoint taken once the job runs", |s| state(s) == "Completed");

    test.assert_exact_output(&[before, during].concat());

    // With disposeOnDelete, deleting a savepoint removes its files first.
    let mut disposable = savepoint("ledger-disposable", "ledger", None);
    disposable["spec"]["disposeOnDelete"] = json!(true);
    must(test.stack.apply(&disposable), "asking for a disposable savepoint");
    let taken = wait_for(&test.stack, "ledger-disposable", "the savepoint taken with its finalizer", |s| {
        state(s) == "Completed" && s["metadata"]["finalizers"] == json!(["weir.dev/dispose"])
    });
    let folder =
        taken["status"]["path"].as_str().and_then(|p| p.strip_prefix("file://")).unwrap_or_default().to_owned();
    assert!(std::path::Path::new(&folder).is_dir(), "the savepoint's files at {folder}");
    must(test.stack.kubectl(["delete", "sjsp", "ledger-disposable", "--wait=false"]), "deleting the savepoint");
    let gone = wait_until(WAIT, "the savepoint gone", || get(&test.stack, "ledger-disposable").is_none());
    must(gone.map_err(|e| format!("{e}\n{}", test.stack.diagnostics())), "the savepoint gone");
    assert!(!std::path::Path::new(&folder).exists(), "its files went first: {folder}");

    // The savepoint the running pods restore from stays, whatever is asked.
    let job = must(test.stack.job("ledger").ok_or("no job"), "reading the job");
    let restored = job["status"]["savepointHistory"]
        .as_array()
        .and_then(|h| h.iter().find(|s| s["reason"] == "suspend"))
        .and_then(|s| s["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let patch = r#"{"spec": {"disposeOnDelete": true}}"#;
    must(test.stack.kubectl(["patch", "sjsp", restored.as_str(), "--type=merge", "-p", patch]), "disposeOnDelete");
    wait_for(&test.stack, &restored, "the finalizer on it", |s| {
        s["metadata"]["finalizers"] == json!(["weir.dev/dispose"])
    });
    must(test.stack.kubectl(["delete", "sjsp", restored.as_str(), "--wait=false"]), "deleting it");
    let kept = wait_for(&test.stack, &restored, "the savepoint kept", |s| {
        s["status"]["error"].as_str().is_some_and(|e| e.contains("restore from it"))
    });
    let path = kept["status"]["path"].as_str().and_then(|p| p.strip_prefix("file://")).unwrap_or_default().to_owned();
    assert!(std::path::Path::new(&path).is_dir(), "its files stay: {path}");
}

#[test]
fn a_savepoint_asked_of_a_job_that_does_not_exist_fails() {
    let _one = ONE_AT_A_TIME.lock();
    let stack = must(LocalStack::start(&[]), "starting the stack");
    must(stack.apply(&savepoint("nobody-1", "nobody", None)), "asking for a savepoint");
    let failed = wait_for(&stack, "nobody-1", "the savepoint failed", |s| state(s) == "Failed");
    assert!(failed["status"]["error"].as_str().is_some_and(|e| e.contains("no StreamJob nobody")), "{failed:#}");
}

#[test]
fn a_job_in_another_namespace_restored_from_a_savepoint_carries_on_where_it_was_taken() {
    let _one = ONE_AT_A_TIME.lock();
    let (origin, before) = running_with_input("origin");
    origin.wait("the input consumed", |j| j["status"]["consumerLag"] == 0);
    must(origin.stack.apply(&savepoint("origin-fork-point", "origin", None)), "asking for a savepoint");
    let taken = wait_for(&origin.stack, "origin-fork-point", "the savepoint taken", |s| state(s) == "Completed");
    let path = taken["status"]["path"].as_str().unwrap_or_default().to_owned();
    // The original stops, so what it wrote is final.
    origin.apply(json!({"parallelism": 2, "suspend": true}));
    origin.wait("the original suspended", |j| j["status"]["phase"] == "Suspended" && j["status"]["replicas"] == 0);
    let bootstrap = origin.stack.broker.bootstrap();
    let written = must(read_records(&bootstrap, "origin-out", 0, WAIT), "the original's output");
    let from_origin = must(payments::results(&written), "the original's windows");

    // The fork reads the same topic from the savepoint on, in a namespace of its own.
    must(origin.stack.kubectl(["create", "namespace", "forked"]), "creating the namespace");
    must(origin.stack.broker.create_topic("fork-out", 3), "creating the fork's output topic");
    let mut fork = origin.job(json!({"parallelism": 2, "restoreFrom": {"path": path}}));
    fork["metadata"] = json!({"name": "fork", "namespace": "forked"});
    fork["spec"]["sink"]["kafka"]["topic"] = json!("fork-out");
    must(origin.stack.apply(&fork), "applying the fork");
    let after = payments::payments(1500, USERS, 1500);
    origin.produce(&after);
    let running = wait_until(WAIT, "the fork running", || {
        let job = origin.stack.kubectl(["get", "sj", "fork", "-n", "forked", "-o", "json"]).ok();
        job.and_then(|j| serde_json::from_slice::<Value>(&j).ok()).is_some_and(|j| settled_on(&j, 2))
    });
    must(running.map_err(|e| format!("{e}\n{}", origin.stack.diagnostics())), "the fork running");
    origin.step("the fork runs from the savepoint");

    let producer = must(kafka::producer(&bootstrap), "a producer");
    must(payments::produce_flush_markers(&producer, "origin-in", 3), "flush markers");
    let expected = payments::expected(&[before, after].concat());
    let rest = expected.len().saturating_sub(from_origin.len());
    let forked = must(read_records(&bootstrap, "fork-out", rest, WAIT), "the fork's output");
    let from_fork = must(payments::results(&forked), "the fork's windows");
    // A window both wrote (closed after the savepoint) must agree; together they are exact.
    let mut together: Totals = from_origin.clone();
    for (window, totals) in &from_fork {
        if let Some(theirs) = together.insert(window.clone(), *totals) {
            assert_eq!(theirs, *totals, "window {window:?} differs between the original and the fork");
        }
    }
    assert!(!from_fork.is_empty(), "the fork wrote windows");
    assert_eq!(together, expected, "every window once with the right totals across the original and the fork");
    let fork = must(origin.stack.kubectl(["get", "sj", "fork", "-n", "forked", "-o", "json"]), "reading the fork");
    let fork: Value = must(serde_json::from_slice(&fork), "the fork as JSON");
    assert_eq!(fork["metadata"]["namespace"], "forked");
}

#[test]
fn periodic_savepoints_are_taken_and_retention_disposes_of_the_old_ones() {
    let _one = ONE_AT_A_TIME.lock();
    let stack = must(LocalStack::start(&[]), "starting the stack");
    let test = WindowedJob::new(stack, "ticker", 3);
    let policy = json!({"savepoints": {"interval": "3s", "maxCount": 2, "disposeOnDelete": true}});
    test.apply(policy.clone());
    test.wait("1 pod running", |j| settled_on(j, 1));
    let producing = test.produce_until_stopped(0, 300);

    // Every periodic savepoint seen, with its folder, oldest first.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut listed = Vec::new();
    let rotated = wait_until(WAIT, "three periodic savepoints, the first disposed of", || {
        listed = test.stack.list("streamjobsavepoints", "weir.dev/streamjob=ticker").unwrap_or_default();
        for savepoint in &listed {
            let (name, path) = (savepoint["metadata"]["name"].as_str(), savepoint["status"]["path"].as_str());
            if let (Some(name), Some(path), "Completed", "periodic") =
                (name, path, state(savepoint), savepoint["status"]["reason"].as_str().unwrap_or_default())
                && !seen.iter().any(|(n, _)| n == name)
            {
                seen.push((name.to_owned(), path.to_owned()));
            }
        }
        let first_gone = seen.first().is_some_and(|(name, _)| listed.iter().all(|s| s["metadata"]["name"] != *name));
        seen.len() >= 3 && first_gone
    });
    let sent = producing.finish();
    must(rotated.map_err(|e| format!("{e}\nseen: {seen:?}\n{}", test.stack.diagnostics())), "rotation");
    test.step("periodic savepoints rotated");
    let (first, folder) = &seen[0];
    let folder = folder.strip_prefix("file://").unwrap_or_default();
    assert!(!std::path::Path::new(folder).exists(), "the files of {first} went with it: {folder}");
    // Retention keeps 2; one just taken may wait for the next reconcile to push one out.
    let completed = listed.iter().filter(|s| state(s) == "Completed").count();
    assert!(completed <= 3, "retention keeps 2 (and the newest): {listed:#?}");
    for (name, _) in &seen {
        assert!(name.starts_with("ticker-g1-periodic-"), "{name}");
    }
    test.assert_exact_output(&sent);
}

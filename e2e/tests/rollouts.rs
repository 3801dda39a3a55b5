//! Savepoint rollouts on the whole local stack (broker, API server, node agent, operator):
//! an upgrade and rescales mid-stream (one past the partition count, which is clamped), a
//! rollback of an upgrade whose pods never become ready, suspend and resume, a failed
//! savepoint, a deleted pod whose partitions go to its replacement, and a rescale without a
//! savepoint, whose running pods let go of their slots first. Each checks the output topic
//! against per-user window totals computed without the runtime: no window lost, none
//! emitted twice. The autoscaler's rescales are in `autoscaling.rs`.

use std::sync::Mutex;

use serde_json::{Value, json};
use weir_e2e::{
    payments::{self},
    stack::{LocalStack, RUNTIME_IMAGE, condition, running},
    wait_until,
    windowed::{USERS, WAIT, WindowedJob, last_savepoint, settled_on},
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Each test runs a stack of its own; one at a time, so that two cores suffice.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const PARTITIONS: i32 = 3;
/// Payments a second of the load that runs through a change.
const LOAD: usize = 500;

type Test = WindowedJob;

fn start(name: &str) -> Test {
    let stack = must(LocalStack::start(&["--rescale-stabilization", "2s"]), "starting the stack");
    WindowedJob::new(stack, name, PARTITIONS)
}

#[test]
fn an_upgrade_and_rescales_mid_stream_lose_and_repeat_nothing() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("orders");
    test.apply(json!({}));
    test.wait("1 pod running", |j| settled_on(j, 1));
    let producing = test.produce_until_stopped(0, LOAD);

    test.apply(json!({"image": format!("{RUNTIME_IMAGE}:v2")}));
    let upgraded =
        test.wait("upgraded through a savepoint", |j| settled_on(j, 1) && last_savepoint(j, "upgrade").is_some());
    let savepoint = &upgraded["status"]["lastSavepoint"];
    assert!(savepoint["path"].as_str().is_some_and(|p| p.starts_with("file://")), "{savepoint}");

    must(test.stack.scale("orders", 3), "scaling to 3");
    test.wait("rescaled to 3 through a savepoint", |j| settled_on(j, 3) && last_savepoint(j, "rescale").is_some());
    must(test.stack.scale("orders", 2), "scaling to 2");
    test.wait("rescaled to 2 through a savepoint", |j| settled_on(j, 2) && last_savepoint(j, "rescale").is_some());
    // More pods than partitions would idle: the operator runs one per partition.
    must(test.stack.scale("orders", 6), "scaling to 6");
    let done = test.wait("parallelism 6 clamped to the 3 partitions", |j| {
        settled_on(j, 3) && j["spec"]["parallelism"] == 6 && last_savepoint(j, "rescale").is_some()
    });
    let sent = producing.finish();

    let history = done["status"]["savepointHistory"].as_array().cloned().unwrap_or_default();
    let reasons: Vec<&str> = history.iter().filter_map(|s| s["reason"].as_str()).collect();
    assert_eq!(reasons, ["rescale", "rescale", "rescale", "upgrade"], "newest first");
    let progressing = condition(&done, "Progressing").cloned().unwrap_or_default();
    assert_eq!(progressing["status"], "False", "{progressing}");
    test.assert_exact_output(&sent);
}

#[test]
fn an_upgrade_whose_pods_never_become_ready_is_rolled_back() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("refunds");
    test.apply(json!({"rolloutTimeout": "15s"}));
    test.wait("1 pod running", |j| settled_on(j, 1));
    let before = payments::payments(1000, USERS, 0);
    test.produce(&before);

    test.apply(json!({"rolloutTimeout": "15s", "image": "ghcr.io/weir-dev/no-such-runtime:1"}));
    let rolled_back = test.wait("rolled back", |j| {
        running(j, 1) && condition(j, "Degraded").is_some_and(|c| c["reason"] == "RolledBack")
    });
    assert!(last_savepoint(&rolled_back, "upgrade").is_some(), "{:#}", rolled_back["status"]);
    let deployment: Value = serde_json::from_slice(&must(
        test.stack.kubectl(["get", "deployment", "refunds", "-o", "json"]),
        "reading the Deployment",
    ))
    .unwrap_or_default();
    let image = &deployment["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, &json!(format!("{RUNTIME_IMAGE}:v1")), "the previous spec runs again");

    let after = payments::payments(1000, USERS, 1000);
    test.produce(&after);
    test.assert_exact_output(&[before, after].concat());
}

#[test]
fn suspending_takes_a_savepoint_and_resuming_restores_it() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("refills");
    test.apply(json!({}));
    test.wait("1 pod running", |j| settled_on(j, 1));
    let before = payments::payments(1500, USERS, 0);
    test.produce(&before);

    test.apply(json!({"suspend": true}));
    let suspended = test.wait("suspended through a savepoint", |j| {
        j["status"]["phase"] == "Suspended" && j["status"]["replicas"] == 0 && last_savepoint(j, "suspend").is_some()
    });
    assert_eq!(condition(&suspended, "Ready").map(|c| c["reason"].clone()), Some(json!("Suspended")));
    let during = payments::payments(1500, USERS, 1500);
    test.produce(&during);

    test.apply(json!({"suspend": false}));
    let resumed = test.wait("resumed", |j| settled_on(j, 1));
    assert!(last_savepoint(&resumed, "upgrade").is_none(), "resuming takes no savepoint of its own");
    test.assert_exact_output(&[before, during].concat());
}

#[test]
fn a_failed_savepoint_leaves_the_old_pods_running_and_is_retried() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("fees");
    test.apply(json!({}));
    test.wait("1 pod running", |j| settled_on(j, 1));
    let before = payments::payments(1000, USERS, 0);
    test.produce(&before);

    // A file where the savepoints folder goes: savepoints fail, checkpoints go on.
    let group = test.stack.storage.path().join("default.fees");
    must(std::fs::create_dir_all(&group), "creating the group folder");
    let blocker = group.join("savepoints");
    must(std::fs::write(&blocker, "not a folder"), "blocking savepoints");
    test.apply(json!({"image": format!("{RUNTIME_IMAGE}:v2")}));
    let failed = test.wait("the savepoint failure reported", |j| {
        condition(j, "Degraded").is_some_and(|c| c["reason"] == "SavepointFailed")
    });
    let message = condition(&failed, "Degraded").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(message.contains("pod fees-"), "names the pod: {message}");
    let deployment: Value =
        serde_json::from_slice(&must(test.stack.kubectl(["get", "deployment", "fees", "-o", "json"]), "kubectl"))
            .unwrap_or_default();
    let image = &deployment["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, &json!(format!("{RUNTIME_IMAGE}:v1")), "the old pods go on");
    let during = payments::payments(1000, USERS, 1000);
    test.produce(&during);

    must(std::fs::remove_file(&blocker), "unblocking savepoints");
    test.wait("upgraded on a retry", |j| settled_on(j, 1) && last_savepoint(j, "upgrade").is_some());
    test.assert_exact_output(&[before, during].concat());
}

/// Each pod's name and the slot its `/status` reports (slot, of how many), sorted by slot.
fn slots(test: &Test) -> Vec<(String, Option<(i64, i64)>)> {
    let pods = must(test.stack.list("pods", &format!("weir.dev/streamjob={}", test.name)), "listing the pods");
    let token = must(test.stack.admin_token(&test.name), "the admin token");
    let mut slots: Vec<(String, Option<(i64, i64)>)> = pods
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let status = pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| weir_e2e::http_get_with(&format!("{ip}:9249"), "/status", &token).ok())
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
            let assignment =
                status.and_then(|s| Some((s["assignment"]["slot"].as_i64()?, s["assignment"]["slots"].as_i64()?)));
            (name, assignment)
        })
        .collect();
    slots.sort_by_key(|(_, slot)| *slot);
    slots
}

#[test]
fn a_deleted_pod_s_slot_goes_to_its_replacement_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("replaced");
    test.apply(json!({"parallelism": 3}));
    test.wait("3 pods running", |j| settled_on(j, 3));
    let before = slots(&test);
    let held: Vec<Option<(i64, i64)>> = before.iter().map(|(_, slot)| *slot).collect();
    assert_eq!(held, [Some((0, 3)), Some((1, 3)), Some((2, 3))], "one slot each: {before:?}");
    let producing = test.produce_until_stopped(0, LOAD);

    // Anyone who reaches a pod may read it, but not stop it.
    let pods = must(test.stack.list("pods", "weir.dev/streamjob=replaced"), "listing pods");
    let ip = pods.first().and_then(|p| p["status"]["podIP"].as_str()).unwrap_or_default().to_owned();
    let stop = "/savepoint?stop=true&id=unasked";
    let (code, body) = must(weir_e2e::http_post(&format!("{ip}:9249"), stop, None), "stop without the token");
    assert_eq!((code, body.as_str()), (401, "the admin token is required"), "anyone who reaches the pod");

    let (deleted, _) = &before[1];
    must(test.stack.kubectl(["delete", "pod", deleted.as_str()]), "deleting a pod");
    test.step(&format!("deleted {deleted}, which held slot 1"));
    let mut after = Vec::new();
    let replaced = wait_until(WAIT, "a replacement pod holding slot 1", || {
        after = slots(&test);
        let held = after.iter().map(|(_, s)| *s);
        after.len() == 3 && held.eq([Some((0, 3)), Some((1, 3)), Some((2, 3))]) && after[1].0 != *deleted
    });
    replaced.unwrap_or_else(|e| panic!("{e}: {after:?}\n{}", test.stack.diagnostics()));
    assert_eq!((&after[0], &after[2]), (&before[0], &before[2]), "the other pods keep their slots");
    test.wait("3 pods running again", |j| settled_on(j, 3));
    let sent = producing.finish();
    test.assert_exact_output(&sent);
}

#[test]
fn a_stateless_rescale_releases_the_old_slots_before_giving_the_new_ones() {
    let _one = ONE_AT_A_TIME.lock();
    let test = start("widened");
    // Without a savepoint the Deployment keeps its pods and adds one: the two running pods
    // hold slots of 2, which overlap the slots of 3.
    test.apply(json!({"parallelism": 2, "upgradeMode": "stateless"}));
    test.wait("2 pods running", |j| settled_on(j, 2));
    let producing = test.produce_until_stopped(0, LOAD);
    must(test.stack.scale("widened", 3), "scaling to 3");
    test.wait("3 pods running", |j| settled_on(j, 3));
    let mut after = Vec::new();
    let slotted = wait_until(WAIT, "every pod holding a slot of 3", || {
        after = slots(&test);
        after.iter().map(|(_, s)| *s).eq([Some((0, 3)), Some((1, 3)), Some((2, 3))])
    });
    slotted.unwrap_or_else(|e| panic!("{e}: {after:?}\n{}", test.stack.diagnostics()));
    let sent = producing.finish();
    // Partitions moved between running pods through a commit and a checkpoint.
    test.assert_exact_output(&sent);
}

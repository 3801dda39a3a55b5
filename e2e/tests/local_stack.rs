//! The whole local stack: Apache Kafka, the Kubernetes control plane, the operator under
//! the chart's ServiceAccount and RBAC, the node agent and runtime pods in a namespace held
//! to the restricted Pod Security Standard. A StreamJob applied with kubectl runs as pods
//! that consume and produce; its status reaches Running with the pods' lag; kubectl shows
//! what a user expects; a rescale through `/scale` changes the pods and loses no record;
//! deleting the job takes a final savepoint and the garbage collector removes its children.

use std::time::Duration;

use serde_json::{Value, json};
use weir_e2e::{
    kafka, repo_root,
    stack::{LocalStack, running},
    wait_until,
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn a_stream_job_runs_and_rescales_on_the_local_stack() {
    let started = std::time::Instant::now();
    let stack = must(LocalStack::start(&["--rescale-stabilization", "1s"]), "starting the stack");
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    step("stack up");
    let bootstrap = stack.broker.bootstrap();
    must(stack.broker.create_topic("clicks", 2), "creating the input topic");
    must(stack.broker.create_topic("big-clicks", 2), "creating the output topic");
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "clicks"}, "spec": {
        "parallelism": 2,
        "source": {"kafka": {"bootstrapServers": bootstrap, "topic": "clicks",
            "schema": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}]}},
        "pipeline": [{"filter": "n >= 10"}],
        "sink": {"kafka": {"bootstrapServers": bootstrap, "topic": "big-clicks", "keyField": "user"}},
        "checkpoint": {"storage": stack.storage_url(), "interval": "2s"},
    }});
    must(stack.apply(&job), "applying the job");

    let running_job = must(stack.wait_for_job("clicks", "2 ready pods and phase Running", WAIT, |j| running(j, 2)), "");
    step("running");
    assert_eq!(running_job["status"]["selector"], "weir.dev/streamjob=clicks");
    must(kafka::produce_clicks(&bootstrap, "clicks", 0..100), "producing clicks");
    let output = must(kafka::read_click_numbers(&bootstrap, "big-clicks", 90), "reading");
    assert_eq!(output, (10..100).collect::<Vec<_>>(), "every record with n >= 10, once");
    step("output read");
    must(stack.wait_for_job("clicks", "the consumer lag in status", WAIT, |j| j["status"]["consumerLag"].is_i64()), "");
    step("lag reported");

    what_kubectl_shows(&stack);
    step("kubectl checked");

    must(stack.scale("clicks", 1), "kubectl scale");
    let rescaled = |j: &serde_json::Value| running(j, 1) && j["status"]["observedGeneration"] == 2;
    must(stack.wait_for_job("clicks", "1 ready pod after the rescale", WAIT, rescaled), "");
    step("rescaled");
    // A new note is a new Event, not a repeat of the old one's: "2 of 2" does not stand for "1 of 1".
    let running_events = || {
        let selector = "involvedObject.name=clicks,reason=Running";
        text(stack.kubectl(["get", "events", "--field-selector", selector, "-o", "json"]).unwrap_or_default())
    };
    let told =
        wait_until(Duration::from_secs(30), "a Running Event for one pod", || running_events().contains("1 of 1"));
    assert!(told.is_ok(), "{}", running_events());
    must(kafka::produce_clicks(&bootstrap, "clicks", 100..120), "producing clicks");
    let output = must(kafka::read_click_numbers(&bootstrap, "big-clicks", 110), "reading");
    assert_eq!(output, (10..120).collect::<Vec<_>>(), "nothing lost or repeated across the rescale");

    deleting_leaves_nothing_behind(&stack);
    step("deleted");
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// kubectl as a user runs it against the running job: every view has its columns, Events
/// are where `describe` and `get events` look, conditions carry their generation.
fn what_kubectl_shows(stack: &LocalStack) {
    let crds = repo_root().join("crds");
    let applied = must(stack.cluster.kubectl(["apply", "-f", &crds.display().to_string()]), "kubectl apply");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success() && !stderr.contains("Warning"), "applying the CRDs warns: {stderr}");

    must(stack.kubectl(["wait", "--for=condition=Ready", "sj/clicks", "--timeout=60s"]), "kubectl wait");
    let jobs = text(must(stack.kubectl(["get", "sj"]), "kubectl get sj"));
    let header: Vec<&str> = jobs.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "PARALLELISM", "READY", "LAG", "AGE"], "{jobs}");
    let row: Vec<&str> = jobs.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[..4], ["clicks", "Running", "2", "2"], "{jobs}");

    let pods = text(must(stack.kubectl(["get", "pods", "-o", "wide", "-l", "weir.dev/streamjob=clicks"]), "get pods"));
    let header: Vec<&str> = pods.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header[..7], ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"], "{pods}");
    let rows: Vec<Vec<&str>> = pods.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{pods}");
    assert!(
        rows.iter().all(|r| r[1] == "1/1" && r[2] == "Running" && r[5].starts_with("127.0.0.") && r[6] == "local"),
        "{pods}"
    );
    // Each runtime process runs as the user the rendered securityContext names.
    for row in &rows {
        let pid = must(stack.agent.pid("default", row[0], "runtime").ok_or("no pid file"), row[0]);
        let status = must(std::fs::read_to_string(format!("/proc/{pid}/status")), "the runtime's status");
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
        assert_eq!(
            uid.split_whitespace().collect::<Vec<_>>(),
            ["Uid:", "65532", "65532", "65532", "65532"],
            "{status}"
        );
    }
    let deployment = text(must(stack.kubectl(["get", "deploy", "clicks"]), "get deploy"));
    let header: Vec<&str> = deployment.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{deployment}");
    assert!(deployment.lines().nth(1).is_some_and(|row| row.split_whitespace().nth(1) == Some("2/2")), "{deployment}");

    let described = text(must(stack.kubectl(["describe", "sj", "clicks"]), "kubectl describe"));
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(!events.trim_start().starts_with("<none>") && events.contains("Running"), "{described}");
    let listed =
        text(must(stack.kubectl(["get", "events", "--field-selector", "involvedObject.name=clicks"]), "get events"));
    assert!(listed.lines().any(|l| l.contains("Running") && l.contains("streamjob/clicks")), "{listed}");

    let explained = text(must(stack.kubectl(["explain", "streamjob.spec.pipeline"]), "kubectl explain"));
    assert!(explained.contains("FIELD: pipeline") && explained.contains("DESCRIPTION:"), "{explained}");

    let job: Value =
        must(serde_json::from_slice(&must(stack.kubectl(["get", "sj", "clicks", "-o", "json"]), "get")), "json");
    let conditions = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(!conditions.is_empty(), "{job:#}");
    for condition in &conditions {
        assert_eq!(condition["observedGeneration"], job["metadata"]["generation"], "{condition:#}");
    }
}

/// `kubectl delete` waits on the finalizer, which takes the final savepoint; then the
/// garbage collector removes every object the job owned, and the pods of its ReplicaSet.
fn deleting_leaves_nothing_behind(stack: &LocalStack) {
    let job = must(stack.job("clicks").ok_or("no job"), "the job");
    let uid = job["metadata"]["uid"].clone();
    const KINDS: &str = "deployments,replicasets,pods,configmaps,secrets,services,poddisruptionbudgets";
    let owned_by = |uids: &[Value]| -> Vec<String> {
        let listed: Value = serde_json::from_slice(&stack.kubectl(["get", KINDS, "-o", "json"]).unwrap_or_default())
            .unwrap_or_default();
        listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| {
                o["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| uids.contains(&r["uid"]))
            })
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or("")))
            .collect()
    };
    let children = owned_by(std::slice::from_ref(&uid));
    assert!(children.iter().any(|c| c == "Deployment/clicks"), "the job owns its children: {children:?}");
    must(stack.kubectl(["delete", "sj", "clicks", "--timeout=90s"]), "kubectl delete");
    assert!(stack.job("clicks").is_none(), "kubectl delete returned before the StreamJob went");
    let selector = "involvedObject.name=clicks,reason=SavepointTaken";
    let taken = text(must(stack.kubectl(["get", "events", "--field-selector", selector, "-o", "json"]), "events"));
    assert!(taken.contains("final savepoint"), "the finalizer took a final savepoint: {taken}");
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(60), "the garbage collector to remove the job's children", || {
        left = owned_by(std::slice::from_ref(&uid));
        left.extend(
            stack
                .list("pods", "weir.dev/streamjob=clicks")
                .unwrap_or_default()
                .iter()
                .map(|p| format!("Pod/{}", p["metadata"]["name"].as_str().unwrap_or(""))),
        );
        left.is_empty()
    });
    assert!(gone.is_ok(), "left behind: {left:?}");
}

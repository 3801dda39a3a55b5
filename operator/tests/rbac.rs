//! The operator under exactly the chart's RBAC, as the API server enforces it: a rule the
//! chart lacks shows on the job as a `Degraded` condition and a Warning Event naming what was
//! forbidden, the operator keeps running, and once the rule is back the job proceeds.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{
    chart::{self, OPERATOR_SERVICE_ACCOUNT, RELEASE_NAMESPACE},
    cluster::LocalCluster,
    operator_process::OperatorProcess,
    wait_until,
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn json_of(cluster: &LocalCluster, args: &[&str]) -> Value {
    let output = must(cluster.kubectl(args.iter().chain(&["-o", "json"])), "kubectl");
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

fn degraded(job: &Value) -> Value {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .unwrap_or_default()
}

/// The chart's ClusterRole with `verb` taken off the rule for `resource`.
fn without(access: &[Value], resource: &str, verb: &str) -> Vec<Value> {
    let mut access = access.to_vec();
    for object in access.iter_mut().filter(|o| o["kind"] == "ClusterRole") {
        for rule in object["rules"].as_array_mut().into_iter().flatten() {
            if rule["resources"].as_array().is_some_and(|r| r.iter().any(|r| r == resource))
                && let Some(verbs) = rule["verbs"].as_array_mut()
            {
                verbs.retain(|v| v != verb);
            }
        }
    }
    access
}

#[test]
fn a_forbidden_write_is_reported_on_the_job_and_the_operator_carries_on() {
    let cluster = must(LocalCluster::start(), "starting the local cluster");
    must(cluster.install_crds(), "installing the CRDs");
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}});
    must(cluster.apply(&namespace.to_string()), "creating the release namespace");
    let access = must(chart::operator_access(&json!({})), "rendering the chart's RBAC");
    must(cluster.apply(&chart::manifest_list(&without(&access, "configmaps", "create"))), "applying RBAC");
    let kubeconfig = must(
        cluster.service_account_kubeconfig(RELEASE_NAMESPACE, OPERATOR_SERVICE_ACCOUNT),
        "the operator's kubeconfig",
    );
    let log = std::env::temp_dir().join(format!("weir-operator-rbac-{}.log", std::process::id()));
    let binary = Path::new(env!("CARGO_BIN_EXE_weir-operator"));
    let args =
        ["--runtime-image", "weir-runtime:test", "--lease-namespace", RELEASE_NAMESPACE, "--resync-interval", "2s"];
    let mut operator = must(OperatorProcess::start(binary, &kubeconfig, log, &args), "starting weir-operator");

    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "orders"}, "spec": {
        "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in"}},
        "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}}}});
    must(cluster.apply(&job.to_string()), "applying the job");
    let mut last = Value::Null;
    let reported = wait_until(Duration::from_secs(60), "a Degraded condition naming the forbidden write", || {
        last = json_of(&cluster, &["get", "streamjob", "orders"]);
        let condition = degraded(&last);
        condition["status"] == "True" && condition["message"].as_str().is_some_and(|m| m.contains("forbidden"))
    });
    assert!(reported.is_ok(), "{last:#}\n{}", operator.log());
    let message = degraded(&last)["message"].as_str().unwrap_or_default().to_owned();
    let identity = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}");
    assert!(message.contains(&identity) && message.contains("cannot create resource"), "{message}");
    assert_eq!(degraded(&last)["reason"], "ApplyFailed");
    let events = json_of(&cluster, &["get", "events", "--field-selector", "involvedObject.name=orders,type=Warning"]);
    let warned = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["reason"] == "ApplyFailed" && e["message"].as_str().is_some_and(|m| m.contains("forbidden")));
    assert!(warned, "a Warning Event: {events:#}");
    assert!(operator.is_running(), "the operator crashed:\n{}", operator.log());

    must(cluster.apply(&chart::manifest_list(&access)), "restoring the chart's RBAC");
    let recovered = wait_until(Duration::from_secs(60), "the job's children once the rule is back", || {
        json_of(&cluster, &["get", "deployment", "orders"])["metadata"]["name"] == "orders"
            && degraded(&json_of(&cluster, &["get", "streamjob", "orders"]))["reason"] != "ApplyFailed"
    });
    assert!(recovered.is_ok(), "{:#}\n{}", json_of(&cluster, &["get", "streamjob", "orders"]), operator.log());
}

fn ready(job: &Value) -> bool {
    job["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// With `watchNamespace`, the chart grants a Role in that namespace and nothing cluster-wide:
/// the operator runs the jobs there on that Role alone and leaves other namespaces be.
#[test]
fn with_watch_namespace_a_role_in_that_namespace_is_all_the_operator_needs() {
    let cluster = must(LocalCluster::start(), "starting the local cluster");
    must(cluster.install_crds(), "installing the CRDs");
    for name in [RELEASE_NAMESPACE, "team-a", "team-b"] {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        must(cluster.apply(&namespace.to_string()), "creating a namespace");
    }
    let access = must(chart::operator_access(&json!({"watchNamespace": "team-a"})), "rendering the chart's RBAC");
    let kinds: Vec<&str> = access.iter().filter_map(|o| o["kind"].as_str()).collect();
    // The only ClusterRoles are the ones aggregated to users' `edit` and `view`; nothing
    // cluster-wide is bound to the operator.
    assert!(kinds.contains(&"Role") && !kinds.contains(&"ClusterRoleBinding"), "{kinds:?}");
    must(cluster.apply(&chart::manifest_list(&access)), "applying RBAC");
    let kubeconfig = must(
        cluster.service_account_kubeconfig(RELEASE_NAMESPACE, OPERATOR_SERVICE_ACCOUNT),
        "the operator's kubeconfig",
    );
    let log = std::env::temp_dir().join(format!("weir-operator-rbac-ns-{}.log", std::process::id()));
    let binary = Path::new(env!("CARGO_BIN_EXE_weir-operator"));
    let args = [
        "--runtime-image",
        "weir-runtime:test",
        "--lease-namespace",
        RELEASE_NAMESPACE,
        "--namespace",
        "team-a",
        "--resync-interval",
        "2s",
    ];
    let mut operator = must(OperatorProcess::start(binary, &kubeconfig, log, &args), "starting weir-operator");

    let job = |namespace: &str| {
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "orders", "namespace": namespace}, "spec": {"parallelism": 0,
            "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in"}},
            "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}}}})
        .to_string()
    };
    must(cluster.apply(&job("team-b")), "applying the job in team-b");
    must(cluster.apply(&job("team-a")), "applying the job in team-a");
    let mut last = Value::Null;
    let running = wait_until(Duration::from_secs(60), "the team-a job Ready with its children", || {
        last = json_of(&cluster, &["get", "streamjob", "orders", "-n", "team-a"]);
        ready(&last)
            && json_of(&cluster, &["get", "deployment", "orders", "-n", "team-a"])["metadata"]["name"] == "orders"
            && json_of(&cluster, &["get", "secret", "orders-admin-token", "-n", "team-a"])["type"] == "Opaque"
    });
    assert!(running.is_ok(), "{last:#}\n{}", operator.log());
    let events =
        json_of(&cluster, &["get", "events", "-n", "team-a", "--field-selector", "involvedObject.name=orders"]);
    assert!(events["items"].as_array().is_some_and(|e| !e.is_empty()), "Events in team-a: {events:#}");

    let other = json_of(&cluster, &["get", "streamjob", "orders", "-n", "team-b"]);
    assert!(other["status"].is_null() && other["metadata"]["finalizers"].is_null(), "team-b is not watched: {other:#}");
    let deployments = json_of(&cluster, &["get", "deployments", "-n", "team-b"]);
    assert_eq!(deployments["items"].as_array().map(Vec::len), Some(0), "{deployments:#}");
    let log = operator.log();
    assert!(!log.contains("forbidden"), "the Role covers everything the operator does:\n{log}");
    assert!(operator.is_running(), "the operator crashed:\n{log}");
}

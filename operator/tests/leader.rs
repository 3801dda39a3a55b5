//! Two operator replicas against one API server: exactly one leads and reconciles; when it
//! dies, the other takes the lease over and carries on.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{cluster::LocalCluster, metric_value, operator_process::OperatorProcess, wait_until};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn operator(cluster: &LocalCluster, identity: &str) -> OperatorProcess {
    let log = std::env::temp_dir().join(format!("weir-operator-{identity}-{}.log", std::process::id()));
    let binary = Path::new(env!("CARGO_BIN_EXE_weir-operator"));
    let args = ["--identity", identity, "--lease-duration", "3s", "--runtime-image", "weir-runtime:test"];
    must(OperatorProcess::start(binary, cluster.kubeconfig(), log, &args), "starting weir-operator")
}

fn holder(cluster: &LocalCluster) -> Option<String> {
    let output = cluster.kubectl(["get", "lease", "weir-operator", "-n", "default", "-o", "json"]).ok()?;
    let lease: Value = serde_json::from_slice(&output.stdout).ok()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn leads(operator: &OperatorProcess) -> bool {
    weir_e2e::http_get(operator.metrics_addr(), "/metrics")
        .is_ok_and(|(_, body)| metric_value(&body, "weir_operator_leader") == Some(1.0))
}

fn reconciled(cluster: &LocalCluster, name: &str) -> bool {
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": name}, "spec": {
        "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in"}},
        "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}}}});
    let applied = must(cluster.kubectl_stdin(&["apply", "-f", "-"], &job.to_string()), "kubectl apply");
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    wait_until(Duration::from_secs(30), "the job's status", || {
        cluster
            .kubectl(["get", "streamjob", name, "-o", "jsonpath={.status.observedGeneration}"])
            .is_ok_and(|o| o.stdout == b"1")
    })
    .is_ok()
}

#[test]
fn one_operator_leads_and_the_other_takes_over_when_it_dies() {
    let cluster = must(LocalCluster::start(), "starting the local cluster");
    must(cluster.install_crds(), "installing the CRDs");
    let mut a = operator(&cluster, "operator-a");
    let mut b = operator(&cluster, "operator-b");
    must(wait_until(Duration::from_secs(30), "a leader", || holder(&cluster).is_some()), "election");
    let first = holder(&cluster).unwrap_or_default();
    let (leader, standby) = if first == "operator-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    must(wait_until(Duration::from_secs(10), "the leader to report it", || leads(leader)), "leader metric");
    assert!(!leads(standby), "two leaders at once");
    assert!(reconciled(&cluster, "before-failover"), "the leader reconciles\n{}", leader.log());

    leader.kill();
    let waited = wait_until(Duration::from_secs(20), "the standby to take over", || {
        holder(&cluster).is_some_and(|h| h != first)
    });
    assert!(waited.is_ok(), "no takeover\n{}", standby.log());
    must(wait_until(Duration::from_secs(10), "the new leader to report it", || leads(standby)), "leader metric");
    assert!(reconciled(&cluster, "after-failover"), "the new leader reconciles\n{}", standby.log());
    assert!(standby.is_running());
}

//! The operator installed from the rendered Helm chart rather than run as a bare process:
//! the chart's CRD and manifests are applied as `helm install` would, the node agent runs
//! the operator's Deployment (two replicas electing a leader through the Lease) and the
//! runtime pods it renders, a StreamJob runs end to end, Argo CD's health check calls it
//! Healthy, and after the leading replica's pod is deleted the other one takes over and
//! carries out a rescale.

use std::{ffi::OsStr, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{
    agent_process::{AgentOptions, NodeAgent},
    broker::Broker,
    chart::{self, RELEASE_NAMESPACE},
    cluster::LocalCluster,
    gitops, kafka, repo_root, wait_until, workspace_binary,
};

const OPERATOR_IMAGE: &str = "ghcr.io/weir-dev/weir-operator";
const RUNTIME_IMAGE: &str = "ghcr.io/weir-dev/weir-runtime";

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fields drop in order: the agent stops the operator's and the job's pods before the
/// cluster and the broker go.
struct Stack {
    agent: NodeAgent,
    cluster: LocalCluster,
    broker: Broker,
}

impl Stack {
    fn start() -> Self {
        let broker = must(Broker::start(), "starting the broker");
        let cluster = must(LocalCluster::start(), "starting the local cluster");
        // As `helm install`: the chart's crds/ first, then the rendered templates.
        let crds = repo_root().join("charts/weir/crds");
        let applied = must(cluster.kubectl([OsStr::new("apply"), OsStr::new("-f"), crds.as_os_str()]), "kubectl apply");
        assert!(applied.status.success(), "{}", text(&applied.stderr));
        must(
            wait_until(Duration::from_secs(30), "the StreamJob CRD to be served", || {
                cluster.kubectl(["get", "streamjobs", "-A"]).is_ok_and(|o| o.status.success())
            }),
            "waiting for the CRD",
        );
        let created = must(cluster.kubectl(["create", "namespace", RELEASE_NAMESPACE]), "kubectl create namespace");
        assert!(created.status.success(), "{}", text(&created.stderr));
        // Pods share the host's network here: the operator listens on its pod's address.
        let values = json!({
            "metrics": {"listenHost": "$(POD_IP)"},
            "runtimeImage": {"tag": "test"},
            "resyncInterval": "3s",
            "logFormat": "text",
            "logLevel": "info,kube=warn",
        });
        let manifests = must(chart::render(&values, &[]), "rendering the chart");
        let installed = must(
            cluster.kubectl_stdin(&["apply", "--server-side", "--field-manager=helm", "-f", "-"], &manifests),
            "kubectl apply",
        );
        assert!(installed.status.success(), "{}", text(&installed.stderr));
        let options = AgentOptions::default()
            .image(OPERATOR_IMAGE, must(workspace_binary("weir-operator"), "weir-operator"))
            .image(RUNTIME_IMAGE, must(workspace_binary("weir-runtime"), "weir-runtime"));
        let agent_binary = must(workspace_binary("weir-node-agent"), "weir-node-agent");
        let agent = must(NodeAgent::for_cluster(agent_binary, &cluster, &options), "starting the node agent");
        Self { agent, cluster, broker }
    }

    fn get(&self, args: &[&str]) -> Option<Value> {
        let output = self.cluster.kubectl(args.iter().chain(&["-o", "json"])).ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    fn operator_pods(&self) -> Vec<Value> {
        self.get(&["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=weir-operator"])
            .and_then(|list| list["items"].as_array().cloned())
            .unwrap_or_default()
    }

    fn lease_holder(&self) -> Option<String> {
        let lease = self.get(&["get", "lease", "weir-operator", "-n", RELEASE_NAMESPACE])?;
        lease["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty()).map(str::to_owned)
    }

    /// Waits for `condition`; fails with the cluster's state and every log on timeout.
    fn wait(&self, what: &str, mut condition: impl FnMut() -> bool) {
        if let Err(e) = wait_until(Duration::from_secs(90), what, &mut condition) {
            let pods = self.cluster.kubectl(["get", "pods", "-A", "-o", "wide"]).map(|o| o.stdout).unwrap_or_default();
            let job = self.get(&["get", "streamjob", "clicks"]).map(|j| j["status"].clone()).unwrap_or_default();
            panic!(
                "{e}\nlease holder: {:?}\njob status: {job:#}\npods:\n{}\noperators:\n{}\nagent:\n{}",
                self.lease_holder(),
                text(&pods),
                self.operator_logs(),
                self.agent.log()
            );
        }
    }

    fn operator_logs(&self) -> String {
        self.operator_pods()
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .map(|name| format!("--- {name}\n{}", self.agent.container_log(RELEASE_NAMESPACE, name, "operator")))
            .collect()
    }

    fn job(&self) -> Option<Value> {
        self.get(&["get", "streamjob", "clicks"])
    }

    fn wait_for_job(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        self.wait(what, || {
            last = self.job();
            last.as_ref().is_some_and(&condition)
        });
        last.unwrap_or_default()
    }

    fn produce(&self, numbers: std::ops::Range<i64>) {
        must(kafka::produce_clicks(&self.broker.bootstrap(), "clicks", numbers), "producing clicks");
    }

    /// The `n` of every output record, sorted.
    fn output(&self, count: usize) -> Vec<i64> {
        must(kafka::read_click_numbers(&self.broker.bootstrap(), "big-clicks", count), "reading")
    }
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

fn ready_pod(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn condition<'a>(job: &'a Value, type_: &str) -> &'a Value {
    job["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_)).unwrap_or(&Value::Null)
}

fn running(job: &Value, replicas: i64) -> bool {
    let status = &job["status"];
    status["phase"] == "Running"
        && status["readyReplicas"] == replicas
        && status["replicas"] == replicas
        && condition(job, "Ready")["status"] == "True"
}

#[test]
fn the_operator_installed_from_the_chart_runs_a_job_and_fails_over() {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    let stack = Stack::start();
    step("chart applied, agent up");

    // Both replicas run; one of them holds the Lease.
    stack.wait("two ready operator pods, one holding the Lease", || {
        let pods = stack.operator_pods();
        let holder = stack.lease_holder();
        pods.len() == 2 && pods.iter().all(ready_pod) && pods.iter().any(|p| Some(name(p)) == holder)
    });
    let leader = must(stack.lease_holder().ok_or("no holder"), "the Lease holder");
    step("leader elected");

    must(stack.broker.create_topic("clicks", 2), "creating the input topic");
    must(stack.broker.create_topic("big-clicks", 2), "creating the output topic");
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "clicks"}, "spec": {
        "parallelism": 2,
        "source": {"kafka": {"bootstrapServers": stack.broker.bootstrap(), "topic": "clicks",
            "schema": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}]}},
        "pipeline": [{"filter": "n >= 10"}],
        "sink": {"kafka": {"bootstrapServers": stack.broker.bootstrap(), "topic": "big-clicks", "keyField": "user"}},
    }});
    let applied = must(stack.cluster.kubectl_stdin(&["apply", "-f", "-"], &job.to_string()), "kubectl apply");
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let job = stack.wait_for_job("the job running on 2 pods", |j| running(j, 2));
    step("job running");
    assert_eq!(condition(&job, "Reconciling")["status"], "False");
    assert_eq!(condition(&job, "Stalled")["status"], "False");
    let health = must(gitops::argocd_health(&job), "Argo CD's health check");
    assert_eq!(health.status, "Healthy", "{health:?}");

    stack.produce(0..100);
    assert_eq!(stack.output(90), (10..100).collect::<Vec<_>>(), "every record with n >= 10, once");
    step("output read");

    // The leader's pod goes (SIGTERM: it releases the Lease); the other replica leads.
    let deleted = must(
        stack.cluster.kubectl(["delete", "pod", "-n", RELEASE_NAMESPACE, &leader, "--wait=false"]),
        "kubectl delete pod",
    );
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    stack.wait("another replica to hold the Lease", || stack.lease_holder().is_some_and(|h| h != leader));
    step("failed over");
    let scaled = must(stack.cluster.kubectl(["scale", "streamjob/clicks", "--replicas=1"]), "kubectl scale");
    assert!(scaled.status.success(), "{}", text(&scaled.stderr));
    stack.wait_for_job("1 pod after the rescale", |j| running(j, 1) && j["status"]["observedGeneration"] == 2);
    step("rescaled by the new leader");
    stack.produce(100..120);
    assert_eq!(stack.output(110), (10..120).collect::<Vec<_>>(), "nothing lost or repeated across the failover");
}

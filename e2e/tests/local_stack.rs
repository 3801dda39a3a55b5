//! The whole local stack: a Kafka-protocol broker, the API server, the operator, the node
//! agent and runtime pods. A StreamJob applied with kubectl runs as pods that consume and
//! produce; its status reaches Running with the pods' lag; a rescale through `/scale`
//! changes the pods and loses no record.

use std::{ffi::OsStr, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{
    agent_process::{AgentOptions, NodeAgent},
    broker::Broker,
    devcluster::DevCluster,
    kafka,
    operator_process::OperatorProcess,
    wait_until, workspace_binary,
};

const RUNTIME_IMAGE: &str = "ghcr.io/weir-dev/weir-runtime";

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Fields drop in order: the operator and the pods stop before the cluster and the broker
/// they talk to.
struct Stack {
    operator: OperatorProcess,
    agent: NodeAgent,
    cluster: DevCluster,
    broker: Broker,
}

impl Stack {
    fn start() -> Self {
        let broker = must(Broker::start(), "starting the broker");
        let cluster = must(DevCluster::start(), "starting the devcluster");
        must(cluster.install_crds(), "installing the CRDs");
        let runtime = must(workspace_binary("weir-runtime"), "weir-runtime");
        let options = AgentOptions::default().image(RUNTIME_IMAGE, runtime);
        let agent_binary = must(workspace_binary("weir-node-agent"), "weir-node-agent");
        let agent = must(NodeAgent::start(agent_binary, cluster.kubeconfig(), &options), "starting the node agent");
        let log = agent.state_dir().join("operator.log");
        let operator_binary = must(workspace_binary("weir-operator"), "weir-operator");
        let image = format!("{RUNTIME_IMAGE}:test");
        let args = ["--runtime-image", image.as_str(), "--identity", "local-stack", "--resync-interval", "3s"];
        let operator =
            must(OperatorProcess::start(&operator_binary, cluster.kubeconfig(), log, &args), "starting the operator");
        Self { operator, agent, cluster, broker }
    }

    fn job(&self) -> Option<Value> {
        let output = self.cluster.kubectl(["get", "streamjob", "clicks", "-o", "json"]).ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits for the job's status to satisfy `condition`; fails with every log on timeout.
    fn wait_for_job(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let waited = wait_until(Duration::from_secs(90), what, || {
            last = self.job();
            last.as_ref().is_some_and(&condition)
        });
        if let Err(e) = waited {
            let pods = self.cluster.kubectl(["get", "pods", "-o", "wide"]).map(|o| o.stdout).unwrap_or_default();
            panic!(
                "{e}\nstatus: {:#}\npods:\n{}\noperator:\n{}\nagent:\n{}",
                last.map(|j| j["status"].clone()).unwrap_or_default(),
                String::from_utf8_lossy(&pods),
                self.operator.log(),
                self.agent.log()
            );
        }
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

fn ready(job: &Value, replicas: i64) -> bool {
    let status = &job["status"];
    let ready = status["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    status["phase"] == "Running" && status["readyReplicas"] == replicas && status["replicas"] == replicas && ready
}

#[test]
fn a_stream_job_runs_and_rescales_on_the_local_stack() {
    let started = std::time::Instant::now();
    let stack = Stack::start();
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    step("stack up");
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
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let running = stack.wait_for_job("2 ready pods and phase Running", |j| ready(j, 2));
    step("running");
    assert_eq!(running["status"]["selector"], "weir.dev/streamjob=clicks");
    stack.produce(0..100);
    assert_eq!(stack.output(90), (10..100).collect::<Vec<_>>(), "every record with n >= 10, once");
    step("output read");
    stack.wait_for_job("the consumer lag in status", |j| j["status"]["consumerLag"].is_i64());
    step("lag reported");

    let scaled =
        must(stack.cluster.kubectl(["scale", "streamjob/clicks", "--replicas=1"].map(OsStr::new)), "kubectl scale");
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    stack.wait_for_job("1 ready pod after the rescale", |j| ready(j, 1) && j["status"]["observedGeneration"] == 2);
    step("rescaled");
    stack.produce(100..120);
    assert_eq!(stack.output(110), (10..120).collect::<Vec<_>>(), "nothing lost or repeated across the rescale");
}

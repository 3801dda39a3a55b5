//! The whole local stack in one value: Apache Kafka, the Kubernetes control plane with the
//! CRDs, the node agent running runtime pods as local processes, the operator, and with
//! autoscaling real KEDA and Prometheus. Fields drop in order: the operator and the pods
//! stop before KEDA, Prometheus, the cluster and the broker.

use std::{ffi::OsStr, time::Duration};

use serde_json::{Value, json};

use crate::{
    Error,
    agent_process::{AgentOptions, NodeAgent},
    broker::Broker,
    chart,
    cluster::LocalCluster,
    keda::Keda,
    operator_process::OperatorProcess,
    prometheus::Prometheus,
    wait_until, workspace_binary,
};

/// The runtime image the stack's node agent runs as the workspace's `weir-runtime`, whatever the tag.
pub const RUNTIME_IMAGE: &str = "ghcr.io/weir-dev/weir-runtime";

/// Broker, cluster, node agent and operator, started together.
pub struct LocalStack {
    /// The operator.
    pub operator: OperatorProcess,
    /// The node agent.
    pub agent: NodeAgent,
    /// KEDA and Prometheus, in a stack started with [`LocalStack::with_autoscaling`].
    pub autoscaling: Option<(Keda, Prometheus)>,
    /// The API server.
    pub cluster: LocalCluster,
    /// The broker.
    pub broker: Broker,
    /// A folder for checkpoints and savepoints, removed with the stack.
    pub storage: tempfile::TempDir,
}

impl std::fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack").field("broker", &self.broker.bootstrap()).finish_non_exhaustive()
    }
}

impl LocalStack {
    /// Starts everything; `operator_args` are added to the operator's command line.
    pub fn start(operator_args: &[&str]) -> Result<Self, Error> {
        Self::start_with(operator_args, false)
    }

    /// Starts everything and KEDA and Prometheus, which the operator's ScaledObjects use.
    pub fn with_autoscaling(operator_args: &[&str]) -> Result<Self, Error> {
        Self::start_with(operator_args, true)
    }

    fn start_with(operator_args: &[&str], autoscaling: bool) -> Result<Self, Error> {
        let broker = Broker::start()?;
        let cluster = LocalCluster::start()?;
        cluster.install_crds()?;
        // Jobs run in `default`, held to the restricted Pod Security Standard.
        let restricted = json!({"pod-security.kubernetes.io/enforce": "restricted"});
        let namespace = |name: &str, labels: &Value| {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}).to_string()
        };
        cluster.apply(&namespace("default", &restricted))?;
        cluster.apply(&namespace(chart::RELEASE_NAMESPACE, &restricted))?;
        // The operator runs with exactly the chart's permissions, as the API server enforces them.
        cluster.apply(&chart::manifest_list(&chart::operator_access(&json!({}))?))?;
        let operator_kubeconfig =
            cluster.service_account_kubeconfig(chart::RELEASE_NAMESPACE, chart::OPERATOR_SERVICE_ACCOUNT)?;
        // Before the operator, which looks for KEDA's API when it starts.
        let autoscaling = if autoscaling { Some((Keda::start(&cluster)?, Prometheus::start(&cluster)?)) } else { None };
        let prometheus_address = autoscaling.as_ref().map(|(_, prometheus)| prometheus.url.clone());
        let options = AgentOptions::default().image(RUNTIME_IMAGE, workspace_binary("weir-runtime")?);
        let agent = NodeAgent::for_cluster(workspace_binary("weir-node-agent")?, &cluster, &options)?;
        let log = agent.state_dir().join("operator.log");
        let image = format!("{RUNTIME_IMAGE}:test");
        let mut args = vec!["--runtime-image", image.as_str(), "--identity", "local-stack", "--resync-interval", "3s"];
        args.extend_from_slice(&["--lease-namespace", chart::RELEASE_NAMESPACE]);
        if let Some(address) = &prometheus_address {
            args.extend_from_slice(&["--prometheus-address", address.as_str()]);
        }
        args.extend_from_slice(operator_args);
        let operator = OperatorProcess::start(&workspace_binary("weir-operator")?, &operator_kubeconfig, log, &args)?;
        let storage = tempfile::Builder::new()
            .prefix("weir-checkpoints-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        // A shared volume for the pods, which run as their own users.
        std::fs::set_permissions(storage.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(|source| Error::Spawn { what: "chmod".into(), source })?;
        Ok(Self { operator, agent, autoscaling, cluster, broker, storage })
    }

    /// The checkpoint storage URL of the stack's folder.
    pub fn storage_url(&self) -> String {
        format!("file://{}", self.storage.path().display())
    }

    /// Runs kubectl; fails with its stderr when it fails.
    pub fn kubectl<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<Vec<u8>, Error> {
        let output = self.cluster.kubectl(args)?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(Error::Failed(String::from_utf8_lossy(&output.stderr).into_owned()))
        }
    }

    /// The admin token of job `name`'s pods, from the Secret the operator wrote.
    pub fn admin_token(&self, name: &str) -> Result<String, Error> {
        let secret = format!("{name}-admin-token");
        let template = "--template={{.data.token | base64decode}}";
        let token = self.kubectl(["get", "secret", secret.as_str(), "-o", "go-template", template])?;
        Ok(String::from_utf8_lossy(&token).trim().to_owned())
    }

    /// `kubectl apply` of one object.
    pub fn apply(&self, object: &Value) -> Result<(), Error> {
        self.cluster.apply(&object.to_string())
    }

    /// `kubectl scale streamjob/<name> --replicas=<n>`: a write of the `/scale` subresource.
    pub fn scale(&self, name: &str, replicas: i32) -> Result<(), Error> {
        self.kubectl(["scale".to_owned(), format!("streamjob/{name}"), format!("--replicas={replicas}")]).map(drop)
    }

    /// The StreamJob as JSON, if it exists.
    pub fn job(&self, name: &str) -> Option<Value> {
        let output = self.kubectl(["get", "streamjob", name, "-o", "json"]).ok()?;
        serde_json::from_slice(&output).ok()
    }

    /// Objects of `kind` (e.g. `pods`) selected by `selector`, as JSON items.
    pub fn list(&self, kind: &str, selector: &str) -> Result<Vec<Value>, Error> {
        let output = self.kubectl(["get", kind, "-l", selector, "-o", "json"])?;
        let list: Value = serde_json::from_slice(&output).map_err(|e| Error::Failed(format!("kubectl output: {e}")))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits up to `timeout` for job `name` to satisfy `condition`; returns it. On timeout
    /// the error carries the status, the pods and every log, to say why.
    pub fn wait_for_job(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value, Error> {
        let mut last = None;
        let waited = wait_until(timeout, what, || {
            last = self.job(name);
            last.as_ref().is_some_and(&condition)
        });
        match (waited, last) {
            (Ok(()), Some(job)) => Ok(job),
            (result, last) => Err(Error::Failed(format!(
                "{}\nstatus: {:#}\n{}",
                result.err().map(|e| e.to_string()).unwrap_or_default(),
                last.map(|j| j["status"].clone()).unwrap_or_default(),
                self.diagnostics()
            ))),
        }
    }

    /// The pods with the end of each one's log, the operator's log and the node agent's log.
    pub fn diagnostics(&self) -> String {
        let pods = self.cluster.kubectl(["get", "pods", "-o", "wide"]).map(|o| o.stdout).unwrap_or_default();
        let listed = self.list("pods", "weir.dev/streamjob").unwrap_or_default();
        let logs: String = listed
            .iter()
            .filter_map(|pod| {
                let job = pod["metadata"]["labels"]["weir.dev/streamjob"].as_str()?;
                Some((pod["metadata"]["name"].as_str()?, job, pod["status"]["podIP"].as_str()))
            })
            .map(|(pod, job, ip)| {
                let log = self.pod_log(pod);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                // What the runtime says of itself: assignment, positions, watermarks.
                let token = self.admin_token(job).unwrap_or_default();
                let status = ip
                    .and_then(|ip| crate::http_get_with(&format!("{ip}:9249"), "/status", &token).ok())
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                format!("--- {pod}:\n{}\nstatus: {status}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect();
        let autoscaling = self.autoscaling.as_ref().map_or(String::new(), |(keda, prometheus)| {
            let tail = |log: String| {
                log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            let hpa = self.cluster.kubectl(["get", "hpa", "-o", "yaml"]).map(|o| o.stdout).unwrap_or_default();
            format!(
                "\nKEDA operator:\n{}\nKEDA adapter:\n{}\nPrometheus:\n{}\nHPAs:\n{}",
                tail(keda.operator_log()),
                tail(keda.adapter_log()),
                tail(prometheus.log()),
                String::from_utf8_lossy(&hpa)
            )
        });
        format!(
            "pods:\n{}\n{logs}operator:\n{}\nagent:\n{}{autoscaling}",
            String::from_utf8_lossy(&pods),
            self.operator.log(),
            self.agent.log()
        )
    }

    /// The log of a pod's runtime container.
    pub fn pod_log(&self, pod: &str) -> String {
        self.agent.container_log("default", pod, "runtime")
    }
}

/// Whether `job` runs `replicas` ready pods in phase Running with `Ready` True.
pub fn running(job: &Value, replicas: i64) -> bool {
    let status = &job["status"];
    let ready = condition(job, "Ready").is_some_and(|c| c["status"] == "True");
    status["phase"] == "Running" && status["readyReplicas"] == replicas && status["replicas"] == replicas && ready
}

/// The condition of `type_` in a job's status.
pub fn condition<'a>(job: &'a Value, type_: &str) -> Option<&'a Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

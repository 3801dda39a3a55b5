//! The operator against a real API server (the project's local control plane): children appear with
//! owner references, spec changes roll through, invalid specs are reported and left alone,
//! a runtime pod's fatal error shows on the job, a starting runtime pod is given a partition
//! slot, children the API server refuses are reported, suspension scales to zero, deletion runs
//! the finalizer, and real KEDA takes the ScaledObject up (an HPA on the StreamJob's `/scale`);
//! an operator given `--namespace` leaves the other namespaces alone.

use std::{ffi::OsStr, process::Output, sync::OnceLock, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{cluster::LocalCluster, keda::Keda, operator_process::OperatorProcess, wait_until};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

struct Stack {
    operator: OperatorProcess,
    /// Real KEDA, for the stack that has it; stopped before the cluster.
    keda: Option<Keda>,
    cluster: LocalCluster,
}

/// One cluster with KEDA and one operator (watching every namespace) for this test binary.
fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| Stack::start("test-operator", true, &[]))
}

impl Stack {
    /// A cluster of its own with the StreamJob CRD (and real KEDA, with `keda`) and one
    /// operator named `identity`, started with `args` added.
    fn start(identity: &str, keda: bool, args: &[&str]) -> Self {
        let cluster = must(LocalCluster::start(), "starting the local cluster");
        must(cluster.install_crds(), "installing the CRDs");
        let keda = keda.then(|| must(Keda::start(&cluster), "starting KEDA"));
        let log = std::env::temp_dir().join(format!("weir-operator-{identity}-{}.log", std::process::id()));
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_weir-operator"));
        let mut all = vec!["--identity", identity, "--runtime-image", "weir-runtime:test"];
        all.extend_from_slice(args);
        let operator = must(OperatorProcess::start(binary, cluster.kubeconfig(), log, &all), "starting weir-operator");
        Self { operator, keda, cluster }
    }

    fn kubectl<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Output {
        must(self.cluster.kubectl(args), "kubectl")
    }

    fn namespace(&self, name: &str) -> String {
        let created = self.kubectl(["create", "namespace", name]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        name.to_owned()
    }

    fn apply(&self, ns: &str, object: &Value) {
        let output = must(self.cluster.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string()), "kubectl");
        assert!(output.status.success(), "apply: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The object as JSON, or `None` when it does not exist.
    fn get(&self, ns: &str, kind: &str, name: &str) -> Option<Value> {
        let output = self.kubectl(["get", "-n", ns, kind, name, "-o", "json", "--show-managed-fields"]);
        output.status.success().then(|| must(serde_json::from_slice(&output.stdout), "kubectl output"))
    }

    /// Waits up to 30 s for `condition` over the object (absent = `None`), then returns the
    /// object; on timeout fails with the object and the operator's log.
    fn wait_for(
        &self,
        ns: &str,
        kind: &str,
        name: &str,
        what: &str,
        condition: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let mut last = None;
        let waited = wait_until(Duration::from_secs(30), what, || {
            last = self.get(ns, kind, name);
            condition(last.as_ref())
        });
        if let Err(e) = waited {
            let keda = self.keda.as_ref().map(|k| k.operator_log()).unwrap_or_default();
            let keda: Vec<&str> = keda.lines().rev().take(30).collect();
            let keda = keda.into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!("{e}\nlast {kind}/{name}: {last:#?}\noperator log:\n{}\nKEDA's log:\n{keda}", self.operator.log());
        }
        last
    }

    /// Waits up to 30 s for a Warning Event with `reason` whose note contains `quote`.
    fn wait_for_warning(&self, ns: &str, reason: &str, quote: &str) {
        let events = wait_until(Duration::from_secs(30), "a Warning event", || {
            let out = self.kubectl(["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
            let events: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["type"] == "Warning"
                        && e["reason"] == reason
                        && e["note"].as_str().is_some_and(|n| n.contains(quote))
                })
            })
        });
        assert!(events.is_ok(), "no {reason} Warning event containing {quote:?}");
    }
}

fn kubectl<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Output {
    stack().kubectl(args)
}

fn namespace(name: &str) -> String {
    stack().namespace(name)
}

fn apply(ns: &str, object: &Value) {
    stack().apply(ns, object);
}

fn get(ns: &str, kind: &str, name: &str) -> Option<Value> {
    stack().get(ns, kind, name)
}

fn wait_for(ns: &str, kind: &str, name: &str, what: &str, condition: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
    stack().wait_for(ns, kind, name, what, condition)
}

fn condition<'a>(job: &'a Value, type_: &str) -> Option<&'a Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn job(name: &str, spec: Value) -> Value {
    let mut full = json!({
        "parallelism": 2,
        "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in",
            "schema": [{"name": "user", "type": "string"}, {"name": "amount", "type": "double"}]}},
        "pipeline": [{"filter": "amount > 0"}],
        "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}},
    });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": name}, "spec": full})
}

fn wait_for_warning(ns: &str, reason: &str, quote: &str) {
    stack().wait_for_warning(ns, reason, quote);
}

fn template_hash(deployment: &Value) -> String {
    deployment["metadata"]["annotations"]["weir.dev/template-hash"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn applying_a_job_creates_its_children_with_owner_references() {
    let ns = namespace("children");
    apply(&ns, &job("orders", json!({})));
    let job = wait_for(&ns, "streamjob", "orders", "the status", |j| {
        j.is_some_and(|j| j["status"]["observedGeneration"] == 1)
    })
    .unwrap();
    let uid = job["metadata"]["uid"].clone();
    assert_eq!(job["metadata"]["finalizers"], json!(["weir.dev/cleanup"]));
    assert_eq!(job["status"]["selector"], "weir.dev/streamjob=orders");
    assert_eq!(job["status"]["phase"], "Deploying", "no pods run in this cluster: {job:#}");
    assert_eq!(condition(&job, "Progressing").unwrap()["reason"], "Deploying");
    for (kind, name) in [
        ("configmap", "orders-job"),
        ("deployment", "orders"),
        ("service", "orders"),
        ("poddisruptionbudget", "orders"),
    ] {
        let child = get(&ns, kind, name).unwrap_or_else(|| panic!("{kind}/{name} was not created"));
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["uid"].clone()), (Some("StreamJob"), uid.clone()), "{kind}");
        assert_eq!(owner["controller"], true, "{kind}");
        assert_eq!(child["metadata"]["labels"]["weir.dev/streamjob"], "orders", "{kind}");
        // Of the object itself: controllers own the status they write (the Deployment's).
        let managers: Vec<_> = child["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["subresource"].is_null())
            .map(|m| m["manager"].clone())
            .collect();
        assert_eq!(managers, vec![json!("weir-operator")], "{kind}: one field manager");
    }
    let deployment = get(&ns, "deployment", "orders").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "weir-runtime:test");
    assert_eq!(container["ports"][0]["name"], "admin");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let file = get(&ns, "configmap", "orders-job").unwrap()["data"]["job.yaml"].as_str().unwrap().to_owned();
    assert!(file.contains("filter: amount > 0"), "{file}");
}

#[test]
fn a_spec_change_updates_the_deployment_and_observed_generation() {
    let ns = namespace("changes");
    apply(&ns, &job("orders", json!({})));
    let first = wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some()).unwrap();
    apply(&ns, &job("orders", json!({"pipeline": [{"filter": "amount > 10"}]})));
    let job = wait_for(&ns, "streamjob", "orders", "observedGeneration 2", |j| {
        j.is_some_and(|j| j["status"]["observedGeneration"] == 2)
    })
    .unwrap();
    assert_eq!(job["status"]["phase"], "Upgrading");
    assert_eq!(condition(&job, "Ready").unwrap()["observedGeneration"], 2);
    let upgraded = get(&ns, "deployment", "orders").unwrap();
    assert_ne!(template_hash(&first), template_hash(&upgraded), "a pipeline change rolls the pods");
    let file = get(&ns, "configmap", "orders-job").unwrap()["data"]["job.yaml"].as_str().unwrap().to_owned();
    assert!(file.contains("amount > 10"), "{file}");

    let scaled = kubectl(["scale", "-n", &ns, "streamjob/orders", "--replicas=5"]);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    let deployment =
        wait_for(&ns, "deployment", "orders", "5 replicas", |d| d.is_some_and(|d| d["spec"]["replicas"] == 5)).unwrap();
    assert_eq!(template_hash(&deployment), template_hash(&upgraded), "a rescale keeps the pod template");
    let job = wait_for(&ns, "streamjob", "orders", "observedGeneration 3", |j| {
        j.is_some_and(|j| j["status"]["observedGeneration"] == 3)
    })
    .unwrap();
    assert_eq!(condition(&job, "Progressing").unwrap()["reason"], "Rescaling");
}

#[test]
fn an_invalid_spec_is_reported_and_changes_nothing() {
    let ns = namespace("invalid");
    apply(&ns, &job("orders", json!({})));
    let valid = wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some()).unwrap();
    apply(&ns, &job("orders", json!({"pipeline": [{"filter": "amount > 0"}, {"select": ["user", "price * 2 AS p"]}]})));
    let job = wait_for(&ns, "streamjob", "orders", "an InvalidSpec condition", |j| {
        j.and_then(|j| condition(j, "Ready")).is_some_and(|c| c["reason"] == "InvalidSpec")
    })
    .unwrap();
    let ready = condition(&job, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert!(ready["message"].as_str().unwrap().contains("spec.pipeline[1].select"), "{ready:#}");
    assert_eq!(job["status"]["phase"], "Failed");
    assert_eq!(job["status"]["observedGeneration"], 2);
    wait_for_warning(&ns, "InvalidSpec", "spec.pipeline[1].select");
    let after = get(&ns, "deployment", "orders").unwrap();
    assert_eq!(template_hash(&after), template_hash(&valid), "an invalid spec leaves the pods alone");
    assert_eq!(after["metadata"]["generation"], valid["metadata"]["generation"]);
}

#[test]
fn a_job_whose_savepoint_to_restore_is_not_there_waits_for_it_and_says_why() {
    let ns = namespace("restore-from");
    let spec = json!({"checkpoint": {"storage": "file:///cp"}, "restoreFrom": {"savepoint": "before-migration"}});
    apply(&ns, &job("forked", spec));
    let job = wait_for(&ns, "streamjob", "forked", "a Degraded condition", |j| {
        j.and_then(|j| condition(j, "Degraded")).is_some_and(|c| c["reason"] == "RestoreFromUnavailable")
    })
    .unwrap();
    let degraded = condition(&job, "Degraded").unwrap();
    assert!(degraded["message"].as_str().unwrap().contains("no StreamJobSavepoint before-migration"), "{degraded:#}");
    assert!(get(&ns, "deployment", "forked").is_none(), "no pods start without their state");

    // Once the savepoint is there, the first pods restore it.
    let savepoint = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJobSavepoint",
        "metadata": {"name": "before-migration"}, "spec": {"jobRef": {"name": "origin"}}});
    apply(&ns, &savepoint);
    let patch = json!({"status": {"state": "Completed", "path": "file:///cp/ns.origin/savepoints/before-migration"}});
    let patched = kubectl([
        "-n",
        &ns,
        "patch",
        "streamjobsavepoint",
        "before-migration",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    assert!(patched.status.success(), "{}", String::from_utf8_lossy(&patched.stderr));
    let deployment = wait_for(&ns, "deployment", "forked", "the Deployment", |d| d.is_some()).unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let restore = env.as_array().unwrap().iter().find(|e| e["name"] == "WEIR_RESTORE_FROM").cloned();
    assert_eq!(restore.map(|e| e["value"].clone()), Some(json!("file:///cp/ns.origin/savepoints/before-migration")));
}

#[test]
fn a_job_the_operator_cannot_decode_is_reported_and_the_others_go_on() {
    // A cluster of its own: the CRD is loosened as an older schema would be, so the API
    // server stores a rolloutTimeout the operator's types refuse (longer than 8760h).
    let stack = Stack::start("decode-operator", false, &[]);
    let ns = stack.namespace("decode");
    let loosen = r#"[{"op": "replace", "value": {"type": "string"},
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/rolloutTimeout"}]"#;
    let patched = stack.kubectl(["patch", "crd", "streamjobs.weir.dev", "--type=json", "-p", loosen]);
    assert!(patched.status.success(), "{}", String::from_utf8_lossy(&patched.stderr));
    let bad = job("refunds", json!({"rolloutTimeout": "9000h"}));
    // The API server serves the new schema a moment after the CRD changes.
    must(
        wait_until(Duration::from_secs(30), "the loosened schema to accept the job", || {
            stack
                .cluster
                .kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &bad.to_string())
                .is_ok_and(|o| o.status.success())
        }),
        "applying the undecodable job",
    );
    // Listed after the bad one, in the same watch: typed decoding of the whole list would
    // fail both.
    stack.apply(&ns, &job("orders", json!({})));
    stack.wait_for(&ns, "deployment", "orders", "the good job's Deployment", |d| d.is_some());

    let reported = stack
        .wait_for(&ns, "streamjob", "refunds", "an InvalidSpec condition", |j| {
            j.and_then(|j| condition(j, "Ready")).is_some_and(|c| c["reason"] == "InvalidSpec")
        })
        .unwrap();
    let ready = condition(&reported, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.rolloutTimeout") && message.contains("8760h"), "{ready:#}");
    assert_eq!(reported["status"]["phase"], "Failed");
    assert_eq!(reported["status"]["observedGeneration"], 1);
    stack.wait_for_warning(&ns, "InvalidSpec", "spec.rolloutTimeout");
    assert!(stack.get(&ns, "deployment", "refunds").is_none(), "nothing is rendered from an unreadable spec");

    // Fixed, it runs like any other; broken again, its pods are left as they are.
    stack.apply(&ns, &job("refunds", json!({"rolloutTimeout": "5m"})));
    let running = stack.wait_for(&ns, "deployment", "refunds", "the fixed job's Deployment", |d| d.is_some()).unwrap();
    stack.wait_for(&ns, "streamjob", "refunds", "observedGeneration 2", |j| {
        j.is_some_and(|j| j["status"]["observedGeneration"] == 2)
    });
    stack.apply(&ns, &job("refunds", json!({"rolloutTimeout": "9000h", "parallelism": 3})));
    stack.wait_for(&ns, "streamjob", "refunds", "InvalidSpec of generation 3", |j| {
        j.and_then(|j| condition(j, "Ready"))
            .is_some_and(|c| c["reason"] == "InvalidSpec" && c["observedGeneration"] == 3)
    });
    let after = stack.get(&ns, "deployment", "refunds").unwrap();
    assert_eq!(template_hash(&after), template_hash(&running), "an unreadable spec leaves the pods alone");
    assert_eq!(after["spec"]["replicas"], running["spec"]["replicas"]);

    // Deleted while unreadable: the finalizer still lets it go, and its pods with it.
    let deleted = stack.kubectl(["delete", "-n", &ns, "streamjob", "refunds", "--wait=false"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    stack.wait_for(&ns, "streamjob", "refunds", "the StreamJob to go", |j| j.is_none());
    stack.wait_for(&ns, "deployment", "refunds", "its Deployment to go", |d| d.is_none());
    assert!(stack.get(&ns, "deployment", "orders").is_some(), "the other job keeps its pods");
}

#[test]
fn children_the_api_server_refuses_are_reported_on_the_job() {
    let ns = namespace("refused");
    // The name is a valid StreamJob name, but as the value of the children's
    // `app.kubernetes.io/instance` label it is one character too long: the server refuses them.
    let name = format!("orders-{}", "x".repeat(57));
    apply(&ns, &job(&name, json!({})));
    let job = wait_for(&ns, "streamjob", &name, "an ApplyFailed condition", |j| {
        j.and_then(|j| condition(j, "Degraded")).is_some_and(|c| c["reason"] == "ApplyFailed")
    })
    .unwrap();
    let degraded = condition(&job, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"].as_str().unwrap().contains("must be no more than 63"), "{degraded:#}");
    assert_eq!(condition(&job, "Ready").unwrap()["status"], "False");
    wait_for_warning(&ns, "ApplyFailed", "must be no more than 63");
    assert!(get(&ns, "deployment", &name).is_none(), "nothing was created");
}

/// Writes `status` to the pod through its `pods/status` subresource, as the kubelet does.
fn patch_pod_status(ns: &str, pod: &str, status: &Value) {
    let patch = json!({"status": status}).to_string();
    let patched = kubectl(["patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p", &patch]);
    assert!(patched.status.success(), "patching the pod status: {}", String::from_utf8_lossy(&patched.stderr));
}

/// The runtime container's status, as the kubelet writes it, with `fields` added.
fn runtime_status(fields: Value) -> Value {
    let mut status = json!({"name": "runtime", "image": "weir-runtime:test", "imageID": "", "restartCount": 1});
    if let (Some(status), Some(fields)) = (status.as_object_mut(), fields.as_object()) {
        status.extend(fields.clone());
    }
    status
}

fn rfc3339(ago: Duration) -> String {
    let at = k8s_openapi::jiff::Timestamp::now() - ago;
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[test]
fn a_runtime_pod_that_failed_degrades_the_job_with_its_error_until_it_runs_again() {
    let ns = namespace("runtime-failed");
    apply(&ns, &job("orders", json!({})));
    wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some());
    // No controller or kubelet runs here: the pod is made as its ReplicaSet would make it,
    // and its status written as the kubelet would after the runtime's fatal error.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-7d9f-x2k4p", "labels": {"weir.dev/streamjob": "orders"}},
        "spec": {"containers": [{"name": "runtime", "image": "weir-runtime:test"}]},
    });
    apply(&ns, &pod);
    let error = "kafka: consuming: SASL authentication failed";
    let terminated = json!({"exitCode": 1, "reason": "Error", "message": format!("{error}\n"),
        "startedAt": rfc3339(Duration::from_secs(5)), "finishedAt": rfc3339(Duration::ZERO)});
    patch_pod_status(
        &ns,
        "orders-7d9f-x2k4p",
        &json!({"phase": "Running", "containerStatuses": [runtime_status(json!({"ready": false,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": terminated}}))]}),
    );

    let job = wait_for(&ns, "streamjob", "orders", "Degraded with reason RuntimeFailed", |j| {
        j.and_then(|j| condition(j, "Degraded")).is_some_and(|c| c["reason"] == "RuntimeFailed")
    })
    .unwrap();
    let degraded = condition(&job, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["message"], format!("pod orders-7d9f-x2k4p: {error}"), "{degraded:#}");
    wait_for_warning(&ns, "RuntimeFailed", error);

    // Restarted, ready, and its failure older than the window the operator reports it for.
    let old = json!({"exitCode": 1, "message": error, "finishedAt": rfc3339(Duration::from_secs(600))});
    patch_pod_status(
        &ns,
        "orders-7d9f-x2k4p",
        &json!({"containerStatuses": [runtime_status(json!({"ready": true,
            "state": {"running": {"startedAt": rfc3339(Duration::from_secs(590))}},
            "lastState": {"terminated": old}}))]}),
    );
    wait_for(&ns, "streamjob", "orders", "Degraded to clear", |j| {
        j.and_then(|j| condition(j, "Degraded")).is_some_and(|c| c["reason"] != "RuntimeFailed")
    });
}

#[test]
fn suspending_scales_to_zero() {
    let ns = namespace("suspend");
    apply(&ns, &job("orders", json!({})));
    wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some_and(|d| d["spec"]["replicas"] == 2));
    apply(&ns, &job("orders", json!({"suspend": true})));
    wait_for(&ns, "deployment", "orders", "zero replicas", |d| d.is_some_and(|d| d["spec"]["replicas"] == 0));
    let suspended = wait_for(&ns, "streamjob", "orders", "phase Suspended", |j| {
        j.is_some_and(|j| j["status"]["phase"] == "Suspended")
    })
    .unwrap();
    assert_eq!(condition(&suspended, "Ready").unwrap()["status"], "False");
    apply(&ns, &job("orders", json!({"suspend": false})));
    wait_for(&ns, "deployment", "orders", "two replicas again", |d| d.is_some_and(|d| d["spec"]["replicas"] == 2));
}

#[test]
fn deleting_a_job_runs_the_finalizer() {
    let ns = namespace("delete");
    apply(&ns, &job("orders", json!({})));
    wait_for(&ns, "streamjob", "orders", "the finalizer", |j| {
        j.is_some_and(|j| j["metadata"]["finalizers"] == json!(["weir.dev/cleanup"]))
    });
    wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some());
    let deleted = kubectl(["delete", "-n", &ns, "streamjob", "orders", "--wait=false"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    wait_for(&ns, "streamjob", "orders", "the StreamJob to go", |j| j.is_none());
    wait_for(&ns, "deployment", "orders", "the pods' Deployment to go", |d| d.is_none());
}

#[test]
fn autoscaling_renders_a_scaled_object_keda_takes_up() {
    let ns = namespace("autoscaling");
    // As the docs ask, the manifests leave `parallelism` to the autoscaler.
    let autoscaled = |spec: Value| {
        let mut job = job("orders", spec);
        job["spec"].as_object_mut().map(|spec| spec.remove("parallelism"));
        job
    };
    let autoscaling = json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "lagThreshold": 1000}});
    apply(&ns, &autoscaled(autoscaling));
    let scaled = wait_for(&ns, "scaledobject", "orders", "the ScaledObject", |s| s.is_some()).unwrap();
    assert_eq!(
        scaled["spec"]["scaleTargetRef"],
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "name": "orders"})
    );
    assert_eq!(scaled["spec"]["maxReplicaCount"], 4);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(
        trigger["metadata"]["query"],
        format!("sum(weir_consumer_lag{{streamjob=\"orders\",namespace=\"{ns}\"}})")
    );
    assert_eq!(trigger["metadata"]["threshold"], "1000");
    // KEDA takes it up: it found the StreamJob's /scale and made an HPA on it.
    let taken = stack().wait_for(&ns, "scaledobject", "orders", "KEDA to take the ScaledObject up", |s| {
        s.is_some_and(|s| s["status"]["scaleTargetKind"] == "weir.dev/v1alpha1.StreamJob")
    });
    assert!(taken.is_some_and(|s| s["metadata"]["finalizers"] == json!(["finalizer.keda.sh"])));
    let hpa = stack().wait_for(&ns, "hpa", "keda-hpa-orders", "KEDA's HPA", |h| h.is_some()).unwrap();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "name": "orders"}),
        "{hpa:#}"
    );
    assert_eq!((hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()), (Some(1), Some(4)));
    assert_eq!(hpa["spec"]["metrics"][0]["type"], "External", "{hpa:#}");
    // One step each way: up at once to what the lag asks for, down after the window.
    let behavior = &hpa["spec"]["behavior"];
    assert_eq!(behavior["scaleUp"]["policies"], json!([{"type": "Pods", "value": 4, "periodSeconds": 15}]));
    assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0, "{hpa:#}");
    assert_eq!(behavior["scaleDown"]["stabilizationWindowSeconds"], 300, "{hpa:#}");

    // A hand edit of the ScaledObject is undone; a deleted one is made again.
    must_run(kubectl([
        "-n",
        &ns,
        "patch",
        "scaledobject",
        "orders",
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"maxReplicaCount": 9}}"#,
    ]));
    wait_for(&ns, "scaledobject", "orders", "the hand edit undone", |s| {
        s.is_some_and(|s| s["spec"]["maxReplicaCount"] == 4)
    });
    let uid = get(&ns, "scaledobject", "orders").map(|s| s["metadata"]["uid"].clone()).unwrap_or_default();
    must_run(kubectl(["-n", &ns, "delete", "scaledobject", "orders", "--wait=false"]));
    wait_for(&ns, "scaledobject", "orders", "the ScaledObject made again", |s| {
        s.is_some_and(|s| s["metadata"]["uid"] != uid && s["metadata"]["deletionTimestamp"].is_null())
    });

    let kafka = json!({"autoscaling": {"maxReplicas": 4, "lagThreshold": 1000, "trigger": "kafka"}});
    apply(&ns, &autoscaled(kafka));
    let scaled = wait_for(&ns, "scaledobject", "orders", "the Kafka trigger", |s| {
        s.is_some_and(|s| s["spec"]["triggers"][0]["type"] == "kafka")
    })
    .unwrap();
    assert_eq!(scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"], format!("{ns}.orders"));

    // The autoscaler's last word stays when autoscaling is removed.
    must_run(kubectl(["-n", &ns, "scale", "streamjob", "orders", "--replicas", "3"]));
    wait_for(&ns, "deployment", "orders", "3 replicas", |d| d.is_some_and(|d| d["spec"]["replicas"] == 3));
    apply(&ns, &autoscaled(json!({})));
    // KEDA's finalizer lets it go once KEDA removed its HPA.
    wait_for(&ns, "scaledobject", "orders", "the ScaledObject to go", |s| s.is_none());
    // The garbage collector removes it, once it has found KEDA's kinds: on a cluster as new
    // as this one, the HPA the hand-deleted ScaledObject owned waited for that first.
    let gone =
        wait_until(Duration::from_secs(150), "KEDA's HPA to go", || get(&ns, "hpa", "keda-hpa-orders").is_none());
    assert!(gone.is_ok(), "{:#?}", get(&ns, "hpa", "keda-hpa-orders"));
    let kept = get(&ns, "streamjob", "orders").unwrap();
    assert_eq!(kept["spec"]["parallelism"], 3, "{:#}", kept["spec"]);
    assert_eq!(get(&ns, "deployment", "orders").unwrap()["spec"]["replicas"], 3);
}

fn must_run(output: Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_operator_exports_its_metrics() {
    let ns = namespace("metrics");
    apply(&ns, &job("orders", json!({})));
    wait_for(&ns, "streamjob", "orders", "a status", |j| j.is_some_and(|j| j["status"]["phase"].is_string()));
    let (status, body) = must(weir_e2e::http_get(stack().operator.metrics_addr(), "/metrics"), "GET /metrics");
    assert_eq!(status, 200);
    let reconciles = weir_e2e::metric_value(&body, "weir_operator_reconciles_total{result=\"ok\"}");
    assert!(reconciles.is_some_and(|n| n >= 1.0), "{body}");
    assert!(body.contains("weir_operator_reconcile_duration_seconds_bucket"), "{body}");
    assert_eq!(weir_e2e::metric_value(&body, "weir_operator_leader"), Some(1.0), "{body}");
    let status_writes =
        "weir_operator_api_request_duration_seconds_count{resource=\"streamjobs/status\",verb=\"patch\"}";
    assert!(weir_e2e::metric_value(&body, status_writes).is_some_and(|n| n >= 1.0), "{body}");
    let limit = weir_e2e::metric_value(&body, "weir_operator_reconcile_limit");
    assert!(limit.is_some_and(|n| (2.0..=16.0).contains(&n)), "{body}");
}

/// Field managers of `object` other than kubectl's: who wrote to it besides the test.
fn writers(object: &Value) -> Vec<String> {
    let managers = object["metadata"]["managedFields"].as_array().into_iter().flatten();
    managers.filter_map(|m| m["manager"].as_str()).filter(|m| !m.starts_with("kubectl")).map(str::to_owned).collect()
}

#[test]
fn an_operator_given_a_namespace_leaves_the_others_alone() {
    // This test has a cluster of its own, with one operator, started with `--namespace
    // watched`. The shared operator of the other tests watches every namespace: on the shared
    // cluster it would reconcile the job in `unwatched` too, and as both operators write with
    // the same field manager, finalizer and event reporter name, nothing on that job or its
    // children would tell which of them wrote it; only the Event's reporting instance would,
    // and an absent Event proves nothing while the other operator acts. Here no other
    // controller runs, so anything written to the job in `unwatched` can only come from the
    // restricted operator. Its leader lease is on this API server too, so the shared
    // operator's election does not involve it.
    let stack = Stack::start("namespaced-operator", false, &["--namespace", "watched"]);
    let watched = stack.namespace("watched");
    let unwatched = stack.namespace("unwatched");
    // The same valid spec in both namespaces, the ignored one first: an operator that watched
    // `unwatched` would see that job before the other (one watch delivers in order, and a
    // first list holds both).
    stack.apply(&unwatched, &job("orders", json!({})));
    stack.apply(&watched, &job("orders", json!({})));

    let job_a = stack
        .wait_for(&watched, "streamjob", "orders", "observedGeneration 1", |j| {
            j.is_some_and(|j| j["status"]["observedGeneration"] == 1)
        })
        .unwrap();
    assert_eq!(job_a["metadata"]["finalizers"], json!(["weir.dev/cleanup"]));
    let first = stack.wait_for(&watched, "deployment", "orders", "the Deployment", |d| d.is_some()).unwrap();
    assert_eq!(first["metadata"]["ownerReferences"][0]["uid"], job_a["metadata"]["uid"]);
    // A later event of the same operator: a second change, reconciled after the first. By the
    // time it is, a reconcile of the job in `unwatched`, queued before the first one, would
    // have written its finalizer and status, so the checks below are not merely early.
    stack.apply(&watched, &job("orders", json!({"pipeline": [{"filter": "amount > 10"}]})));
    let job_a = stack
        .wait_for(&watched, "streamjob", "orders", "observedGeneration 2", |j| {
            j.is_some_and(|j| j["status"]["observedGeneration"] == 2)
        })
        .unwrap();
    let upgraded = stack.get(&watched, "deployment", "orders").unwrap();
    assert_ne!(template_hash(&first), template_hash(&upgraded), "the change reached the Deployment");
    assert!(!writers(&job_a).is_empty(), "the operator's writes show in managedFields: {job_a:#}");

    let job_b = stack.get(&unwatched, "streamjob", "orders").expect("the job in `unwatched`");
    let untouched = || format!("{job_b:#}\noperator log:\n{}", stack.operator.log());
    assert!(job_b["status"].as_object().is_none_or(|s| s.is_empty()), "a status: {}", untouched());
    assert!(job_b["metadata"]["finalizers"].is_null(), "a finalizer: {}", untouched());
    assert_eq!(writers(&job_b), Vec::<String>::new(), "written by the operator: {}", untouched());
    for (kind, name) in [
        ("configmap", "orders-job"),
        ("deployment", "orders"),
        ("service", "orders"),
        ("poddisruptionbudget", "orders"),
    ] {
        assert!(stack.get(&unwatched, kind, name).is_none(), "{kind}/{name} in `unwatched`: {}", untouched());
    }
    let events = stack.kubectl(["get", "events.events.k8s.io", "-n", &unwatched, "-o", "json"]);
    assert!(events.status.success(), "{}", String::from_utf8_lossy(&events.stderr));
    let events: Value = must(serde_json::from_slice(&events.stdout), "kubectl output");
    assert_eq!(events["items"], json!([]), "events in `unwatched`: {}", untouched());
}

/// A runtime pod's admin server in operator-assignment mode, on `address`: answers
/// `GET /status` with the slot it holds and takes `POST /assign`; keeps the requests made.
fn fake_admin(address: &str) -> std::sync::Arc<std::sync::Mutex<(Value, Vec<String>)>> {
    use std::io::{Read, Write};
    let listener = must(std::net::TcpListener::bind(address), "binding the fake admin server");
    let state = std::sync::Arc::new(std::sync::Mutex::new((Value::Null, Vec::new())));
    let shared = state.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            // The request line, then its headers.
            let request = String::from_utf8_lossy(&request).trim_end().to_owned();
            let Ok(mut state) = shared.lock() else { break };
            let body = if let Some(query) = request.strip_prefix("POST /assign?") {
                let query = query.split_whitespace().next().unwrap_or_default();
                let number =
                    |key: &str| query.split('&').find_map(|p| p.strip_prefix(key)).and_then(|v| v.parse::<u32>().ok());
                state.0 = json!({"slot": number("slot="), "slots": number("slots=")});
                state.0.to_string()
            } else {
                json!({"assignment": state.0, "assignmentMode": "operator", "stopped": false}).to_string()
            };
            state.1.push(request);
            let _ = stream.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes());
        }
    });
    state
}

#[test]
fn a_starting_runtime_pod_is_given_a_partition_slot() {
    let ns = namespace("assignment");
    apply(&ns, &job("orders", json!({"parallelism": 2})));
    wait_for(&ns, "deployment", "orders", "the Deployment", |d| d.is_some());
    // The operator calls pods on the runtime's admin port (9249) at their IP: a loopback
    // address of its own stands in for the pod.
    let ip = "127.0.99.1";
    let admin = fake_admin(&format!("{ip}:9249"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-7d9f-a1b2c", "labels": {"weir.dev/streamjob": "orders"}},
        "spec": {"containers": [{"name": "runtime", "image": "weir-runtime:test"}]},
    });
    apply(&ns, &pod);
    patch_pod_status(
        &ns,
        "orders-7d9f-a1b2c",
        &json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "False"}]}),
    );
    let assigned = wait_until(Duration::from_secs(30), "the pod to be given slot 0 of 2", || {
        admin.lock().unwrap().1.iter().any(|r| r.starts_with("POST /assign?slot=0&slots=2 "))
    });
    assert!(assigned.is_ok(), "requests: {:?}", admin.lock().unwrap().1);
    let requests = admin.lock().unwrap().1.clone();
    let asked = requests.iter().position(|r| r.starts_with("GET /status")).unwrap();
    let given = requests.iter().position(|r| r.starts_with("POST /assign")).unwrap();
    assert!(asked < given, "what the pod holds is asked first: {requests:?}");
    assert_eq!(requests.iter().filter(|r| r.starts_with("POST /assign")).count(), 1, "given once: {requests:?}");

    // Every admin call carries the job's admin token, which lives in a Secret the job owns
    // (`/metrics` is open to Prometheus).
    let template = "--template={{.data.token | base64decode}}";
    let token = kubectl(["get", "secret", "-n", &ns, "orders-admin-token", "-o", "go-template", template]);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    let bearer = format!("\r\nAuthorization: Bearer {token}\r\n");
    let admin_calls: Vec<&String> = requests.iter().filter(|r| !r.starts_with("GET /metrics ")).collect();
    assert!(admin_calls.iter().all(|r| r.contains(&bearer)), "{requests:?}");
    let secret = get(&ns, "secret", "orders-admin-token").unwrap();
    let owner = get(&ns, "streamjob", "orders").unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], owner["metadata"]["uid"]);
    let deployment = get(&ns, "deployment", "orders").unwrap();
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "orders-admin-token"), "{volumes:?}");

    // Deleted under running pods, it comes back with the token they hold, before new pods.
    let deleted = kubectl(["delete", "secret", "-n", &ns, "orders-admin-token"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    apply(&ns, &job("orders", json!({"parallelism": 2, "pipeline": [{"filter": "amount > 1"}]})));
    wait_for(&ns, "secret", "orders-admin-token", "the admin token Secret again", |s| s.is_some());
    let again = kubectl(["get", "secret", "-n", &ns, "orders-admin-token", "-o", "go-template", template]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), token, "the same token");
}

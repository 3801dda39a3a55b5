//! The node agent as the kubelet of the real control plane: the pods that Deployments'
//! ReplicaSets make and the scheduler binds to node `local` become local processes on
//! their own loopback addresses, reachable over HTTP; scaling, template changes, volumes,
//! service-account tokens, crashes, deletions and probes behave as a kubelet makes them.

use std::{collections::BTreeSet, path::Path, process::Output, sync::OnceLock, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{
    agent_process::{AgentOptions, NodeAgent},
    cluster::LocalCluster,
    http_get, wait_until,
};

/// How long a rollout, restart or deletion may take here.
const PATIENCE: Duration = Duration::from_secs(60);

/// A small HTTP server: `/env/NAME` answers an env var, `/file/N` the Nth file argument,
/// `/secrets/PATH` a file under `$SECRETS_DIR`, `/write/N` writes the Nth file argument, `/id`
/// its user, group and supplementary groups, `/pid` its pid, `/healthz` 200 until `/sick` is
/// requested, anything else `ok`. With `IGNORE_TERM` set it ignores SIGTERM.
const SERVER: &str = r#"
import http.server, os, signal, sys
ip, port, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sick = False
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global sick
        status, body = 200, "ok"
        if self.path.startswith("/env/"):
            body = os.environ.get(self.path[5:], "")
        elif self.path.startswith("/file/"):
            try:
                body = open(files[int(self.path[6:])]).read()
            except Exception as e:
                status, body = 404, str(e)
        elif self.path.startswith("/secrets/"):
            try:
                body = open(os.path.join(os.environ["SECRETS_DIR"], self.path[9:])).read()
            except Exception as e:
                status, body = 404, str(e)
        elif self.path.startswith("/write/"):
            try:
                open(files[int(self.path[7:])], "w").write("written")
                body = "written"
            except Exception as e:
                status, body = 403, str(e)
        elif self.path == "/id":
            body = "%d %d %s" % (os.getuid(), os.getgid(), ",".join(map(str, sorted(os.getgroups()))))
        elif self.path == "/pid":
            body = str(os.getpid())
        elif self.path == "/sick":
            sick = True
        elif self.path == "/healthz" and sick:
            status = 500
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
"#;

/// Unwraps in the helpers below, with what failed in the panic message.
fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One cluster and one agent for this test binary; both stop when the binary exits.
fn cluster() -> &'static (LocalCluster, NodeAgent) {
    static CLUSTER: OnceLock<(LocalCluster, NodeAgent)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = must(LocalCluster::start(), "starting the local cluster");
        // The Python on PATH may sit under a home folder other users cannot enter; the
        // system's is what a pod of another user runs.
        let options = AgentOptions::default()
            .image("example.com/http-echo", "python3")
            .image("example.com/system-python", "/usr/bin/python3");
        let agent = must(
            NodeAgent::for_cluster(env!("CARGO_BIN_EXE_weir-node-agent"), &cluster, &options),
            "starting the node agent",
        );
        (cluster, agent)
    })
}

fn agent() -> &'static NodeAgent {
    &cluster().1
}

fn kubectl<const N: usize>(args: [&str; N]) -> Output {
    must(cluster().0.kubectl(args), "running kubectl")
}

fn succeed(output: Output) -> String {
    assert!(output.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each test works in a namespace of its own.
fn namespace(name: &str) -> String {
    succeed(kubectl(["create", "namespace", name]));
    name.to_owned()
}

fn apply(ns: &str, object: &Value) {
    let output = must(cluster().0.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string()), "kubectl apply");
    succeed(output);
}

fn patch(ns: &str, deployment: &str, patch: &Value) {
    succeed(kubectl(["patch", "deployment", deployment, "-n", ns, "--type=merge", "-p", &patch.to_string()]));
}

/// A Deployment with `app: <name>` pods of one `web` container.
fn deployment(name: &str, replicas: u32, container: Value) -> Value {
    let mut container = container;
    container["name"] = json!("web");
    container["image"] = json!("example.com/http-echo:1.0");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}
            }
        }
    })
}

/// `python3 -m http.server` on the pod IP, ready when it answers.
fn http_server() -> Value {
    json!({
        "args": ["-m", "http.server", "--bind", "$(POD_IP)", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1}
    })
}

/// [`SERVER`] with `files` as its file arguments and `env` added after POD_IP.
fn script_server(files: &[&str], env: Value) -> Value {
    let mut args = vec![json!("-c"), json!(SERVER), json!("$(POD_IP)"), json!("8080")];
    args.extend(files.iter().map(|f| json!(f)));
    let mut vars = vec![json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})];
    vars.extend(env.as_array().cloned().unwrap_or_default());
    json!({
        "args": args,
        "env": vars,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1}
    })
}

fn get_json<const N: usize>(args: [&str; N]) -> Value {
    must(serde_json::from_str(&succeed(kubectl(args))), "parsing kubectl's JSON")
}

/// The Pod objects of a Deployment's `app` label.
fn pods(ns: &str, app: &str) -> Vec<Value> {
    let list = get_json(["get", "pods", "-n", ns, "-l", &format!("app={app}"), "-o", "json"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

fn ip(pod: &Value) -> String {
    pod["status"]["podIP"].as_str().unwrap_or_default().to_owned()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn hash(pod: &Value) -> String {
    pod["metadata"]["labels"]["pod-template-hash"].as_str().unwrap_or_default().to_owned()
}

fn restart_count(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(-1)
}

fn deployment_status(ns: &str, name: &str) -> Value {
    get_json(["get", "deployment", name, "-n", ns, "-o", "json"])["status"].clone()
}

/// GET over HTTP/1.0 at the pod's address, port 8080.
fn get(ip: &str, path: &str) -> Option<(u16, String)> {
    http_get(&format!("{ip}:8080"), path).ok()
}

fn answers(ip: &str) -> bool {
    get(ip, "/").is_some_and(|(status, _)| status == 200)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits for `condition`, printing the agent's log when it does not hold in time.
fn eventually(what: &str, condition: impl FnMut() -> bool) {
    if let Err(e) = wait_until(PATIENCE, what, condition) {
        panic!("{e}\n--- agent log ---\n{}", agent().log());
    }
}

/// Waits until the Deployment has exactly `n` ready, current pods and says so in its status.
fn wait_ready(ns: &str, app: &str, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(&format!("{n} ready pods of {ns}/{app}"), || {
        let status = deployment_status(ns, app);
        found = pods(ns, app);
        found.len() == n
            && found.iter().all(is_ready)
            && status["readyReplicas"].as_u64().unwrap_or(0) == n as u64
            && status["updatedReplicas"].as_u64().unwrap_or(0) == n as u64
            && status["replicas"].as_u64().unwrap_or(0) == n as u64
    });
    found
}

fn pid_of(ns: &str, pod: &Value) -> u32 {
    agent().pid(ns, &name(pod), "web").unwrap_or_else(|| panic!("no pid file for {}", name(pod)))
}

#[test]
fn replicas_run_as_processes_on_their_own_addresses() {
    let ns = namespace("replicas");
    apply(&ns, &deployment("echo", 2, http_server()));
    let pods = wait_ready(&ns, "echo", 2);
    let ips: BTreeSet<String> = pods.iter().map(ip).collect();
    assert_eq!(ips.len(), 2, "distinct pod IPs: {ips:?}");
    for pod in &pods {
        let ip = ip(pod);
        assert!(ip.starts_with("127.0.0.") && ip != "127.0.0.1", "{ip}");
        assert_eq!(pod["status"]["podIPs"][0]["ip"], json!(ip));
        assert!(answers(&ip), "{ip}:8080 does not answer");
        assert!(alive(pid_of(&ns, pod)));
        assert_eq!(pod["spec"]["nodeName"], "local");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert!(name(pod).starts_with(&format!("echo-{}-", hash(pod))), "{}", name(pod));
        let container = &pod["status"]["containerStatuses"][0];
        assert_eq!((container["ready"].clone(), container["restartCount"].clone()), (json!(true), json!(0)));
        assert!(container["state"]["running"]["startedAt"].is_string(), "{container}");
    }
    let status = deployment_status(&ns, "echo");
    assert_eq!(status["availableReplicas"], 2);
    assert_eq!(status["observedGeneration"], 1);
    let available = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(available["status"], "True");
}

#[test]
fn scaling_adds_and_removes_processes() {
    let ns = namespace("scaling");
    apply(&ns, &deployment("scaled", 1, http_server()));
    let first = wait_ready(&ns, "scaled", 1);
    patch(&ns, "scaled", &json!({"spec": {"replicas": 3}}));
    let three = wait_ready(&ns, "scaled", 3);
    assert!(three.iter().all(|p| answers(&ip(p))));
    assert!(three.iter().any(|p| name(p) == name(&first[0])), "scaling up keeps the running pod");
    let before: Vec<(String, String, u32)> = three.iter().map(|p| (name(p), ip(p), pid_of(&ns, p))).collect();
    patch(&ns, "scaled", &json!({"spec": {"replicas": 1}}));
    let one = wait_ready(&ns, "scaled", 1);
    assert_eq!(name(&one[0]), name(&first[0]), "scaling down removes the newest pods");
    for (pod, ip, pid) in before.iter().filter(|(pod, _, _)| *pod != name(&one[0])) {
        eventually(&format!("{pod} to stop"), || !alive(*pid) && !answers(ip));
    }
    assert!(answers(&ip(&one[0])));
}

#[test]
fn a_template_change_rolls_the_pods() {
    let ns = namespace("rollout");
    let greeting = |value: &str| json!([{"name": "GREETING", "value": value}]);
    apply(&ns, &deployment("rolled", 2, script_server(&[], greeting("hello"))));
    let old = wait_ready(&ns, "rolled", 2);
    let old_hash = hash(&old[0]);
    let old_pids: Vec<u32> = old.iter().map(|p| pid_of(&ns, p)).collect();
    for pod in &old {
        assert_eq!(get(&ip(pod), "/env/GREETING").map(|r| r.1), Some("hello".into()));
    }
    apply(&ns, &deployment("rolled", 2, script_server(&[], greeting("bonjour"))));
    let mut fewest_ready = u64::MAX;
    eventually("the rollout to finish", || {
        let now = pods(&ns, "rolled");
        let status = deployment_status(&ns, "rolled");
        fewest_ready = fewest_ready.min(status["readyReplicas"].as_u64().unwrap_or(0));
        now.len() == 2
            && now.iter().all(|p| hash(p) != old_hash && is_ready(p))
            && status["updatedReplicas"] == 2
            && status["readyReplicas"] == 2
            && status["replicas"] == 2
            && status["observedGeneration"] == 2
    });
    assert_eq!(fewest_ready, 2, "25% maxUnavailable of 2 replicas is 0: a new pod is ready before an old one goes");
    for pod in pods(&ns, "rolled") {
        assert_eq!(get(&ip(&pod), "/env/GREETING").map(|r| r.1), Some("bonjour".into()));
    }
    for pid in old_pids {
        eventually("the old processes to stop", || !alive(pid));
    }
}

#[test]
fn recreate_stops_old_pods_before_starting_new_ones() {
    let ns = namespace("recreate");
    let mut d = deployment("recreated", 2, script_server(&[], json!([{"name": "V", "value": "1"}])));
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    apply(&ns, &d);
    let old = wait_ready(&ns, "recreated", 2);
    d["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("2");
    apply(&ns, &d);
    let mut mixed = false;
    eventually("the recreate rollout to finish", || {
        let now = pods(&ns, "recreated");
        let hashes: BTreeSet<String> = now.iter().map(hash).collect();
        mixed |= hashes.len() > 1;
        now.len() == 2 && !hashes.contains(&hash(&old[0])) && now.iter().all(is_ready)
    });
    assert!(!mixed, "old and new pods ran at the same time");
    for pod in pods(&ns, "recreated") {
        assert_eq!(get(&ip(&pod), "/env/V").map(|r| r.1), Some("2".into()));
    }
}

#[test]
fn config_map_and_secret_volumes_are_files_at_rewritten_mount_paths() {
    let ns = namespace("volumes");
    apply(
        &ns,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site"},
            "data": {"index.html": "hello from a ConfigMap", "other": "not selected", "greeting": "hi"}
        }),
    );
    apply(
        &ns,
        &json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"},
            "data": {"token": "czNjcmV0"}
        }),
    );
    let env = json!([
        {"name": "SITE", "value": "/etc/site"},
        {"name": "SECRETS_DIR", "value": "/var/run/weir/secrets"},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "greeting"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}}
    ]);
    let mut d = deployment(
        "mounted",
        1,
        script_server(&["/etc/site/pages/index.html", "/var/run/weir/secrets/api/token"], env),
    );
    d["spec"]["template"]["spec"]["volumes"] = json!([
        {"name": "site", "configMap": {"name": "site", "items": [{"key": "index.html", "path": "pages/index.html"}]}},
        {"name": "secret", "secret": {"secretName": "token", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}}
    ]);
    d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "site", "mountPath": "/etc/site"},
        {"name": "secret", "mountPath": "/var/run/weir/secrets/api", "readOnly": true},
        {"name": "scratch", "mountPath": "/tmp/scratch"}
    ]);
    apply(&ns, &d);
    let pod = wait_ready(&ns, "mounted", 1).remove(0);
    let ip = ip(&pod);
    assert_eq!(get(&ip, "/file/0"), Some((200, "hello from a ConfigMap".into())));
    assert_eq!(get(&ip, "/file/1"), Some((200, "s3cret".into())));
    assert_eq!(
        get(&ip, "/secrets/api/token"),
        Some((200, "s3cret".into())),
        "a parent of a mount path is rewritten too"
    );
    assert_eq!(get(&ip, "/env/GREETING").map(|r| r.1), Some("hi".into()));
    assert_eq!(get(&ip, "/env/TOKEN").map(|r| r.1), Some("s3cret".into()));
    assert_eq!(get(&ip, "/env/HOSTNAME").map(|r| r.1), Some(name(&pod)));
    let volumes = agent().pod_dir(&ns, &name(&pod)).join("volumes");
    assert_eq!(get(&ip, "/env/SITE").map(|r| r.1), Some(volumes.join("site").display().to_string()));
    assert!(!volumes.join("site/other").exists(), "items select keys");
    assert!(volumes.join("scratch").is_dir());
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &str| must(std::fs::metadata(volumes.join(path)), path).permissions().mode() & 0o777;
    assert_eq!(mode("secret/token"), 0o400, "defaultMode is honoured");
    assert_eq!(mode("site/pages/index.html"), 0o644, "the API server's default mode");
}

#[test]
fn processes_run_as_the_security_context_user_with_fs_group_volumes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ns = namespace("run-as");
    apply(
        &ns,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "data": {"key": "czNjcmV0"}}),
    );
    let mut d = deployment("as-user", 1, script_server(&["/etc/key/key", "/scratch/out", "/etc/key/new"], json!([])));
    let spec = &mut d["spec"]["template"]["spec"];
    spec["containers"][0]["image"] = json!("example.com/system-python:3");
    spec["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 4242, "runAsGroup": 4343, "fsGroup": 5000});
    spec["volumes"] = json!([
        {"name": "key", "secret": {"secretName": "key", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}}
    ]);
    spec["containers"][0]["volumeMounts"] =
        json!([{"name": "key", "mountPath": "/etc/key"}, {"name": "scratch", "mountPath": "/scratch"}]);
    apply(&ns, &d);
    let pod = wait_ready(&ns, "as-user", 1).remove(0);
    let ip = ip(&pod);
    assert_eq!(get(&ip, "/id").map(|r| r.1), Some("4242 4343 5000".into()), "user, group, fsGroup");
    let status = must(std::fs::read_to_string(format!("/proc/{}/status", pid_of(&ns, &pod))), "process status");
    assert!(status.lines().any(|l| l.split_whitespace().eq(["Uid:", "4242", "4242", "4242", "4242"])), "{status}");
    assert_eq!(get(&ip, "/file/0"), Some((200, "s3cret".into())), "a 0400 Secret file is the fsGroup's to read");
    assert_eq!(get(&ip, "/write/1").map(|r| r.1), Some("written".into()), "an emptyDir is writable");
    assert_eq!(get(&ip, "/write/2").map(|r| r.0), Some(403), "a Secret volume is not writable");
    let volumes = agent().pod_dir(&ns, &name(&pod)).join("volumes");
    let key = must(std::fs::metadata(volumes.join("key/key")), "the key file");
    assert_eq!((key.permissions().mode() & 0o777, key.gid()), (0o440, 5000));
    let written = must(std::fs::metadata(volumes.join("scratch/out")), "the written file");
    assert_eq!((written.uid(), written.gid()), (4242, 5000), "setgid folder: new files are the fsGroup's");

    // runAsNonRoot with no user to run as: the container does not start, and says why.
    let mut rootful = deployment("would-be-root", 1, http_server());
    rootful["spec"]["template"]["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    apply(&ns, &rootful);
    eventually("a runAsNonRoot pod refused", || {
        pods(&ns, "would-be-root").first().is_some_and(|pod| {
            let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
            waiting["reason"] == "CreateContainerConfigError"
                && waiting["message"].as_str().is_some_and(|m| m.contains("runAsNonRoot"))
        })
    });
}

#[test]
fn a_killed_process_is_restarted() {
    let ns = namespace("restart");
    apply(&ns, &deployment("crashy", 1, script_server(&[], json!([]))));
    let pod = wait_ready(&ns, "crashy", 1).remove(0);
    let pid = pid_of(&ns, &pod);
    assert_eq!(get(&ip(&pod), "/pid").map(|r| r.1), Some(pid.to_string()));
    succeed(must(std::process::Command::new("kill").args(["-9", &pid.to_string()]).output(), "kill"));
    eventually("the process to be restarted and ready", || {
        let now = pods(&ns, "crashy");
        now.len() == 1 && name(&now[0]) == name(&pod) && restart_count(&now[0]) == 1 && is_ready(&now[0])
    });
    let now = pods(&ns, "crashy").remove(0);
    let last = &now["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{last}");
    let new_pid = pid_of(&ns, &now);
    assert_ne!(new_pid, pid);
    assert_eq!(get(&ip(&now), "/pid").map(|r| r.1), Some(new_pid.to_string()));
    assert_eq!(ip(&now), ip(&pod), "a restart keeps the pod IP");
}

#[test]
fn a_crash_reports_its_termination_message() {
    let ns = namespace("last-words");
    let script = "import os, sys; open(os.environ['LOG'], 'w').write('boom: out of disk\\n'); sys.exit(3)";
    let container = json!({"args": ["-c", script], "env": [{"name": "LOG", "value": "/dev/termination-log"}]});
    apply(&ns, &deployment("doomed", 1, container));
    let mut seen = Value::Null;
    eventually("the crash and its message in the pod status", || {
        let Some(pod) = pods(&ns, "doomed").into_iter().next() else { return false };
        let status = &pod["status"]["containerStatuses"][0];
        seen = [&status["state"]["terminated"], &status["lastState"]["terminated"]]
            .into_iter()
            .find(|t| t["exitCode"] == 3)
            .cloned()
            .unwrap_or(Value::Null);
        !seen.is_null()
    });
    assert_eq!(seen["message"], "boom: out of disk", "{seen}");
    assert!(!std::path::Path::new("/dev/termination-log").exists(), "the host's /dev is left alone");
}

#[test]
fn a_failing_liveness_probe_restarts_the_process() {
    let ns = namespace("liveness");
    let mut container = script_server(&[], json!([]));
    container["livenessProbe"] =
        json!({"httpGet": {"port": 8080, "path": "/healthz"}, "periodSeconds": 1, "failureThreshold": 2});
    apply(&ns, &deployment("sickly", 1, container));
    let pod = wait_ready(&ns, "sickly", 1).remove(0);
    let pid = pid_of(&ns, &pod);
    assert_eq!(get(&ip(&pod), "/sick").map(|r| r.0), Some(200));
    eventually("the unhealthy process to be restarted", || {
        let now = pods(&ns, "sickly");
        now.len() == 1 && restart_count(&now[0]) == 1 && is_ready(&now[0])
    });
    let now = pods(&ns, "sickly").remove(0);
    assert_eq!(now["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"], "Unhealthy");
    assert!(!alive(pid));
    assert_eq!(get(&ip(&now), "/healthz").map(|r| r.0), Some(200));
}

#[test]
fn a_pod_deleted_through_the_api_is_replaced() {
    let ns = namespace("replace");
    apply(&ns, &deployment("replaced", 2, http_server()));
    let before = wait_ready(&ns, "replaced", 2);
    let victim = &before[0];
    let pid = pid_of(&ns, victim);
    succeed(kubectl(["delete", "pod", &name(victim), "-n", &ns, "--wait=false"]));
    eventually("a replacement pod", || {
        let now = pods(&ns, "replaced");
        now.len() == 2 && now.iter().all(|p| name(p) != name(victim) && is_ready(p))
    });
    eventually("the deleted pod's process to stop", || !alive(pid));
}

#[test]
fn deleting_the_deployment_stops_its_pods() {
    let ns = namespace("deletion");
    apply(&ns, &deployment("doomed", 2, http_server()));
    let running: Vec<(String, u32)> = wait_ready(&ns, "doomed", 2).iter().map(|p| (ip(p), pid_of(&ns, p))).collect();
    succeed(kubectl(["delete", "deployment", "doomed", "-n", &ns]));
    eventually("the pods to be deleted and their processes stopped", || {
        pods(&ns, "doomed").is_empty() && running.iter().all(|(ip, pid)| !alive(*pid) && !answers(ip))
    });
}

#[test]
fn pods_bound_to_another_node_are_left_alone() {
    let ns = namespace("elsewhere");
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "elsewhere", "labels": {"app": "elsewhere"}},
        "spec": {"nodeName": "another-node", "containers": [http_server()]}
    });
    pod["spec"]["containers"][0]["name"] = json!("web");
    pod["spec"]["containers"][0]["image"] = json!("example.com/http-echo:1.0");
    apply(&ns, &pod);
    apply(&ns, &deployment("here", 1, http_server()));
    wait_ready(&ns, "here", 1);
    let elsewhere = pods(&ns, "elsewhere").remove(0);
    assert!(elsewhere["status"]["podIP"].is_null(), "{elsewhere:#}");
    assert!(!agent().pod_dir(&ns, "elsewhere").exists());
}

#[test]
fn a_pod_acts_as_its_service_account_with_a_token_bound_to_it() {
    let ns = namespace("identity");
    // Asks the API server for the namespace's pods with what the agent gave the pod.
    let script = r#"
import json, os, ssl, sys, urllib.request, urllib.error, http.server
config = json.load(open(os.environ["KUBECONFIG"]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        token = open(user["tokenFile"]).read()
        request = urllib.request.Request(cluster["server"] + self.path, headers={"Authorization": "Bearer " + token})
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        try:
            status, body = 200, urllib.request.urlopen(request, context=context).read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], 8080), Handler).serve_forever()
"#;
    let container = json!({
        "args": ["-c", script, "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    });
    apply(&ns, &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}));
    let mut d = deployment("reader", 1, container);
    d["spec"]["template"]["spec"]["serviceAccountName"] = json!("reader");
    apply(&ns, &d);
    let pod = wait_ready(&ns, "reader", 1).remove(0);
    let ip = ip(&pod);
    let path = format!("/api/v1/namespaces/{ns}/pods");
    let (status, body) = must(get(&ip, &path).ok_or("no answer"), "listing pods as the pod");
    assert_eq!(status, 403, "RBAC denies an unbound ServiceAccount: {body}");
    assert!(body.contains(&format!("system:serviceaccount:{ns}:reader")), "{body}");
    succeed(kubectl([
        "create",
        "rolebinding",
        "reader",
        "-n",
        &ns,
        "--clusterrole=view",
        &format!("--serviceaccount={ns}:reader"),
    ]));
    eventually("the granted role to let the pod list pods", || {
        get(&ip, &path).is_some_and(|(status, body)| status == 200 && body.contains(&name(&pod)))
    });
    // The token is bound to the pod: the API server names the pod in its claims.
    let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["projected"].is_object()).unwrap();
    let token_file =
        agent().pod_dir(&ns, &name(&pod)).join("volumes").join(volume["name"].as_str().unwrap()).join("token");
    let token = must(std::fs::read_to_string(&token_file), "reading the token");
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let reviewed =
        must(cluster().0.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &review.to_string()), "TokenReview");
    let reviewed: Value = must(serde_json::from_str(&succeed(reviewed)), "TokenReview JSON");
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed:#}");
    assert_eq!(reviewed["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], json!(name(&pod)));
}

#[test]
fn other_crates_find_the_built_agent() {
    let found = must(weir_e2e::agent_process::built_binary(), "locating weir-node-agent");
    assert_eq!(found, Path::new(env!("CARGO_BIN_EXE_weir-node-agent")));
}

#[test]
fn a_stopped_agent_stops_its_processes_deletes_its_pods_and_reports_its_node_not_ready() {
    // A cluster of its own: one node agent per cluster.
    let own_cluster = must(LocalCluster::start(), "starting a second cluster");
    let options = AgentOptions::default().image("example.com/http-echo", "python3");
    let mut own = must(
        NodeAgent::for_cluster(env!("CARGO_BIN_EXE_weir-node-agent"), &own_cluster, &options),
        "starting its node agent",
    );
    let own_kubectl = |args: &[&str]| succeed(must(own_cluster.kubectl(args), "kubectl"));
    let applied = must(
        own_cluster.kubectl_stdin(&["apply", "-f", "-"], &deployment("owned", 2, http_server()).to_string()),
        "apply",
    );
    succeed(applied);
    let mut before: Vec<String> = Vec::new();
    eventually("two ready pods on the second cluster", || {
        let list: Value =
            serde_json::from_str(&own_kubectl(&["get", "pods", "-l", "app=owned", "-o", "json"])).unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        before = items.iter().map(name).collect();
        items.len() == 2 && items.iter().all(is_ready)
    });
    let pids: Vec<u32> =
        before.iter().map(|p| must(own.pid("default", p, "web").ok_or("no pid file"), "pid")).collect();
    own.stop();
    assert!(pids.iter().all(|pid| !alive(*pid)), "processes outlived their agent");
    let ready =
        own_kubectl(&["get", "node", "local", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]);
    assert_eq!(ready, "False", "the Node is reported not ready");
    eventually("the agent's Pod objects to be deleted", || {
        let names = own_kubectl(&["get", "pods", "-o", "name"]);
        before.iter().all(|p| !names.contains(p.as_str()))
    });
}

#[test]
fn exec_readiness_tcp_startup_and_liveness_probes_gate_the_pod() {
    let ns = namespace("probes");
    let mut container = script_server(&[], json!([]));
    container["readinessProbe"] = json!({"exec": {"command": ["test", "-f", "/data/ready"]}, "periodSeconds": 1});
    container["startupProbe"] = json!({"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 30});
    container["livenessProbe"] = json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
    container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let mut d = deployment("probed", 1, container);
    d["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    apply(&ns, &d);
    let mut pod = Value::Null;
    eventually("the container to be started but not ready", || {
        pod = pods(&ns, "probed").pop().unwrap_or_default();
        pod["status"]["containerStatuses"][0]["started"] == true && !is_ready(&pod)
    });
    assert_eq!(deployment_status(&ns, "probed")["readyReplicas"].as_u64().unwrap_or(0), 0);
    std::fs::write(agent().pod_dir(&ns, &name(&pod)).join("volumes/data/ready"), "").unwrap();
    let ready = wait_ready(&ns, "probed", 1);
    assert_eq!(name(&ready[0]), name(&pod));
    assert_eq!(restart_count(&ready[0]), 0, "the tcp liveness probe passes");
}

#[test]
fn a_terminating_pod_is_unready_and_killed_after_its_grace_period() {
    let ns = namespace("grace");
    let mut d = deployment("stubborn", 1, script_server(&[], json!([{"name": "IGNORE_TERM", "value": "1"}])));
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(3);
    apply(&ns, &d);
    let pod = wait_ready(&ns, "stubborn", 1).remove(0);
    let pid = pid_of(&ns, &pod);
    patch(&ns, "stubborn", &json!({"spec": {"replicas": 0}}));
    eventually("the pod to be reported unready while its process ignores SIGTERM", || {
        pods(&ns, "stubborn").first().is_some_and(|p| !is_ready(p)) && alive(pid)
    });
    eventually("SIGKILL after the grace period, then the Pod object to go", || {
        !alive(pid) && pods(&ns, "stubborn").is_empty()
    });
    assert_eq!(deployment_status(&ns, "stubborn")["replicas"].as_u64().unwrap_or(0), 0);
}

//! The Helm chart (`charts/weir`), linted and rendered by Helm's own engine (the PyPI wheel
//! helm-python-sdk, through `e2e/chart/render.py`) with default and non-default values; the
//! rendered objects say what the operator needs, and a real API server accepts them
//! (server-side dry-run apply).

use std::{collections::BTreeSet, process::Output, sync::OnceLock, time::Duration};

use serde_json::{Value, json};
use weir_e2e::{
    chart::{self, RELEASE_NAMESPACE},
    cluster::LocalCluster,
    repo_root, wait_until,
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// render.py's output for `values` and `args`, whatever its exit status.
fn render_raw(values: &Value, args: &[&str]) -> Output {
    must(chart::render_output(values, args), "running render.py")
}

/// The rendered manifests as YAML, failing the test if lint or rendering fails.
fn render_yaml(values: &Value, args: &[&str]) -> String {
    must(chart::render(values, args), "rendering the chart")
}

/// The rendered objects.
fn render(values: &Value) -> Vec<Value> {
    let rendered = render_yaml(values, &["--format", "json"]);
    let objects: Value = must(serde_json::from_str(&rendered), "render.py --format json");
    objects.as_array().cloned().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", kinds(objects)))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or(""), o["metadata"]["name"])).collect()
}

fn operator_container(objects: &[Value], name: &str) -> Value {
    find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args(container: &Value) -> Vec<String> {
    container["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect()
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name} in {container:#}"))
}

/// Every (apiGroup, resource, verb) a list of RBAC rules grants.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let mut granted = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    granted
}

/// What the operator calls: reconcile (streamjobs, their status and finalizer, server-side
/// apply and deletion of the rendered kinds, the pods it scrapes, assigns and watches),
/// kube-runtime's Recorder (events.k8s.io), and blockOwnerDeletion on owner references
/// (finalizers).
fn operator_needs() -> BTreeSet<(String, String, String)> {
    let mut needs = BTreeSet::new();
    let mut add = |group: &str, resource: &str, verbs: &[&str]| {
        for verb in verbs {
            needs.insert((group.to_owned(), resource.to_owned(), (*verb).to_owned()));
        }
    };
    add("weir.dev", "streamjobs", &["get", "list", "watch", "patch"]);
    add("weir.dev", "streamjobs/status", &["get", "patch"]);
    add("weir.dev", "streamjobs/finalizers", &["update"]);
    add("weir.dev", "streamjobsavepoints", &["get", "list", "watch", "create", "patch", "delete"]);
    add("weir.dev", "streamjobsavepoints/status", &["get", "patch"]);
    // Every child kind: watched, server-side applied, deleted once no longer rendered.
    for (group, resource) in [
        ("", "configmaps"),
        ("apps", "deployments"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
        ("keda.sh", "scaledobjects"),
    ] {
        add(group, resource, &["get", "list", "watch", "create", "patch", "delete"]);
    }
    add("", "pods", &["get", "list", "watch"]);
    add("", "secrets", &["get", "create"]);
    add("events.k8s.io", "events", &["create", "patch"]);
    needs
}

#[test]
fn default_values_render_two_operator_replicas_with_leader_election() {
    let objects = render(&json!({}));
    let deployment = find(&objects, "Deployment", "weir-operator");
    assert_eq!(deployment["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = operator_container(&objects, "weir-operator");
    let args = args(&container);
    for expected in ["--lease-name=weir-operator", "--metrics-addr=0.0.0.0:8080", "--log-format=json"] {
        assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "watches all namespaces: {args:?}");
    assert_eq!(env(&container, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env(&container, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env(&container, "RUST_LOG")["value"], "info");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["serviceAccountName"], "weir-operator");
    let pdb = find(&objects, "PodDisruptionBudget", "weir-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for optional in ["ServiceMonitor", "PodMonitor"] {
        assert!(!objects.iter().any(|o| o["kind"] == optional), "{optional} is opt-in: {:?}", kinds(&objects));
    }
    // On by default: the release namespace's runtime pods take admin traffic from the
    // operator and the default Prometheus only.
    let policy = find(&objects, "NetworkPolicy", "weir-runtime-admin");
    assert_eq!(policy["metadata"]["namespace"], RELEASE_NAMESPACE);
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], RELEASE_NAMESPACE);
    assert_eq!(
        from[1],
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}})
    );
}

#[test]
fn default_image_tags_and_chart_versions_match_the_crate_version() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = must(std::fs::read_to_string(repo_root().join("charts/weir/Chart.yaml")), "reading Chart.yaml");
    assert!(chart.lines().any(|l| l == format!("version: {version}")), "Chart.yaml version is not {version}");
    assert!(chart.lines().any(|l| l == format!("appVersion: \"{version}\"")), "Chart.yaml appVersion is not {version}");
    let objects = render(&json!({}));
    let container = operator_container(&objects, "weir-operator");
    assert_eq!(container["image"], format!("ghcr.io/weir-dev/weir-operator:{version}"));
    let runtime = format!("--runtime-image=ghcr.io/weir-dev/weir-runtime:{version}");
    assert!(args(&container).contains(&runtime), "{runtime} missing from {:?}", args(&container));
}

#[test]
fn the_operator_is_granted_exactly_what_it_uses() {
    let objects = render(&json!({}));
    let role = find(&objects, "ClusterRole", "weir-operator");
    assert_eq!(grants(&role["rules"]), operator_needs());
    let binding = find(&objects, "ClusterRoleBinding", "weir-operator");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "weir-operator", "namespace": RELEASE_NAMESPACE})
    );
    let election = find(&objects, "Role", "weir-operator-leader-election");
    assert_eq!(election["metadata"]["namespace"], RELEASE_NAMESPACE);
    let leases = |verb: &str| ("coordination.k8s.io".to_owned(), "leases".to_owned(), verb.to_owned());
    assert_eq!(grants(&election["rules"]), [leases("create"), leases("get"), leases("update")].into());
    let renewals = election["rules"].as_array().and_then(|r| r.iter().find(|r| r["verbs"] == json!(["get", "update"])));
    assert_eq!(renewals.map(|r| r["resourceNames"].clone()), Some(json!(["weir-operator"])), "only its own Lease");
    // Users manage and scale jobs through the built-in roles.
    let edit = find(&objects, "ClusterRole", "weir-streamjobs-edit");
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert!(grants(&edit["rules"]).contains(&("weir.dev".into(), "streamjobs/scale".into(), "update".into())));
}

/// Values that change every switch the chart has.
fn custom_values() -> Value {
    json!({
        "replicaCount": 3,
        "watchNamespace": "jobs",
        "logLevel": "debug,kube=info",
        "logFormat": "text",
        "image": {"repository": "registry.example.com/weir-operator",
                  "digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
        "runtimeImage": {"repository": "registry.example.com/weir-runtime", "tag": "0.1.0-rc1"},
        "prometheusAddress": "http://prometheus.monitoring:9090",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "metrics": {"port": 9000,
                    "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
                    "podMonitor": {"enabled": true, "interval": "5s"}},
        "networkPolicy": {"enabled": true, "namespaces": ["jobs", "more-jobs"],
                          "additionalAdminPeers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "serviceAccount": {"name": "weir", "annotations": {"example.com/role": "weir"}},
        "rbac": {"aggregateToDefaultRoles": false},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "weir", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "streaming"},
        "priorityClassName": "system-cluster-critical",
        "extraArgs": ["--lease-namespace=$(POD_NAMESPACE)"],
    })
}

#[test]
fn non_default_values_render_a_namespaced_install_with_monitors_and_network_policies() {
    let objects = render(&custom_values());
    let deployment = find(&objects, "Deployment", "weir-operator");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = operator_container(&objects, "weir-operator");
    assert_eq!(
        container["image"],
        "registry.example.com/weir-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let args = args(&container);
    for expected in [
        "--namespace=jobs",
        "--runtime-image=registry.example.com/weir-runtime:0.1.0-rc1",
        "--prometheus-address=http://prometheus.monitoring:9090",
        "--metrics-addr=0.0.0.0:9000",
        "--log-format=text",
        "--lease-namespace=$(POD_NAMESPACE)",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
    }
    assert_eq!(env(&container, "RUST_LOG")["value"], "debug,kube=info");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "weir");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["value"], "weir");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(deployment["spec"]["template"]["metadata"]["annotations"]["example.com/team"], "streaming");

    // One watched namespace: a Role there, nothing cluster-wide.
    assert!(
        !objects.iter().any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding"),
        "{:?}",
        kinds(&objects)
    );
    let role = find(&objects, "Role", "weir-operator");
    assert_eq!(role["metadata"]["namespace"], "jobs");
    assert_eq!(grants(&role["rules"]), operator_needs());
    assert_eq!(find(&objects, "RoleBinding", "weir-operator")["subjects"][0]["namespace"], RELEASE_NAMESPACE);

    let monitor = find(&objects, "ServiceMonitor", "weir-operator");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let pods = find(&objects, "PodMonitor", "weir-runtime");
    assert_eq!(pods["spec"]["namespaceSelector"], json!({"matchNames": ["jobs"]}));
    assert_eq!(
        pods["spec"]["podMetricsEndpoints"][0],
        json!({"port": "admin", "path": "/metrics", "interval": "5s", "scrapeTimeout": "10s"})
    );
    assert_eq!(pods["spec"]["selector"]["matchExpressions"][0]["key"], "weir.dev/streamjob");

    let policies: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "NetworkPolicy").collect();
    let namespaces: Vec<&Value> = policies.iter().map(|p| &p["metadata"]["namespace"]).collect();
    assert_eq!(namespaces, [&json!("jobs"), &json!("more-jobs")]);
    let ingress = &policies[0]["spec"]["ingress"];
    assert_eq!(ingress.as_array().map(Vec::len), Some(1), "one rule: the admin port");
    assert_eq!(ingress[0]["ports"], json!([{"port": 9249, "protocol": "TCP"}]));
    assert_eq!(
        ingress[0]["from"][0],
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "weir-operator", "app.kubernetes.io/instance": "weir"}},
        })
    );
    assert_eq!(ingress[0]["from"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
    // The policy's peer selects the operator's pods.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["app.kubernetes.io/name"], "weir-operator");
    assert_eq!(pod_labels["app.kubernetes.io/instance"], "weir");
}

#[test]
fn values_that_break_the_schema_are_refused_with_the_key_named() {
    for (values, key) in [
        (json!({"replicaCount": "two"}), "/replicaCount"),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (json!({"replicas": 2}), "'replicas'"),
        (json!({"resyncInterval": "30 seconds"}), "/resyncInterval"),
        (json!({"image": {"tag": "latest", "pullPolicy": "Sometimes"}}), "/image/pullPolicy"),
        (json!({"watchNamespace": "Not_A_Namespace"}), "/watchNamespace"),
    ] {
        let output = render_raw(&values, &[]);
        let message = text(&output.stderr);
        assert!(!output.status.success(), "{values} was accepted");
        assert!(message.contains(key), "the refusal of {values} should name {key}: {message}");
    }
}

#[test]
fn a_service_monitor_without_its_service_is_refused() {
    let output =
        render_raw(&json!({"metrics": {"service": {"enabled": false}, "serviceMonitor": {"enabled": true}}}), &[]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("needs metrics.service.enabled"), "{}", text(&output.stderr));
}

/// One API server for the dry runs, with the Prometheus Operator's monitor kinds served
/// (a minimal stand-in for their CRDs: see `e2e/fixtures/prometheus-operator`).
fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = must(LocalCluster::start(), "starting the local cluster");
        let fixture = repo_root().join("e2e/fixtures/prometheus-operator/monitoring.coreos.com.yaml");
        let applied = must(cluster.kubectl(["apply".as_ref(), "-f".as_ref(), fixture.as_os_str()]), "kubectl apply");
        assert!(applied.status.success(), "{}", text(&applied.stderr));
        must(
            wait_until(Duration::from_secs(30), "the monitor kinds to be served", || {
                cluster.kubectl(["get", "servicemonitors,podmonitors", "-A"]).is_ok_and(|o| o.status.success())
            }),
            "waiting for the monitor CRDs",
        );
        for namespace in [RELEASE_NAMESPACE, "jobs", "more-jobs"] {
            let created = must(cluster.kubectl(["create", "namespace", namespace]), "kubectl create namespace");
            assert!(created.status.success(), "{}", text(&created.stderr));
        }
        cluster
    })
}

/// Server-side applies `manifests` as a dry run; the server's answer.
fn dry_run(manifests: &str) -> Output {
    let args = ["apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-"];
    must(cluster().kubectl_stdin(&args, manifests), "kubectl apply --dry-run=server")
}

fn assert_accepted(manifests: &str) {
    let documents = manifests.split("\n---").filter(|d| d.lines().any(|l| l.starts_with("kind:"))).count();
    let output = dry_run(manifests);
    let answer = text(&output.stdout);
    assert!(output.status.success(), "refused:\n{}\n{answer}", text(&output.stderr));
    assert_eq!(answer.matches("serverside-applied (server dry run)").count(), documents, "{answer}");
}

#[test]
fn the_api_server_accepts_the_default_manifests_and_the_crd() {
    assert_accepted(&render_yaml(&json!({}), &["--include-crds"]));
}

#[test]
fn the_api_server_accepts_the_non_default_manifests() {
    assert_accepted(&render_yaml(&custom_values(), &[]));
}

#[test]
fn the_dry_run_refuses_a_misspelt_field() {
    let rendered = render_yaml(&json!({}), &[]);
    let misspelt = rendered.replacen("revisionHistoryLimit:", "revisionHistoryLimt:", 1);
    assert_ne!(misspelt, rendered);
    let output = dry_run(&misspelt);
    assert!(!output.status.success(), "a misspelt field was accepted");
    assert!(text(&output.stderr).contains("revisionHistoryLimt"), "{}", text(&output.stderr));
}

#[test]
fn the_dockerfile_builds_the_images_the_chart_runs_as_the_user_it_asks_for() {
    let dockerfile = must(std::fs::read_to_string(repo_root().join("Dockerfile")), "reading the Dockerfile");
    let objects = render(&json!({}));
    let deployment = find(&objects, "Deployment", "weir-operator");
    let user = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_i64().unwrap_or_default();
    for program in ["weir-operator", "weir-runtime"] {
        let stage = format!("FROM gcr.io/distroless/cc-debian12:nonroot AS {program}\n");
        let stage = dockerfile.split(&stage).nth(1).unwrap_or_else(|| panic!("no distroless stage {program}"));
        let stage = stage.split("\nFROM ").next().unwrap_or_default();
        assert!(stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{program}\"]")), "{program}: {stage}");
        assert!(stage.contains(&format!("USER {user}:{user}")), "{program} must run as {user}: {stage}");
        assert!(dockerfile.contains(&format!("cargo build --release --locked -p {program} --bin {program}")));
    }
    let container = operator_container(&objects, "weir-operator");
    assert!(container["image"].as_str().is_some_and(|i| i.starts_with("ghcr.io/weir-dev/weir-operator:")));
}

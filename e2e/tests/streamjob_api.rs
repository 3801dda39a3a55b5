//! The StreamJob CRD against a real API server: it installs, examples apply, kubectl shows
//! descriptions and columns, defaults are applied, `/scale` works, and invalid objects are
//! rejected with a message naming the field.

use std::{process::Output, sync::OnceLock};

use serde_json::{Value, json};
use weir_e2e::{cluster::LocalCluster, repo_root};

/// Unwraps in the helpers below, with what failed in the panic message.
fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One cluster for this test binary; it stops when the binary exits.
fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = must(LocalCluster::start(), "starting the local cluster");
        must(cluster.install_crds(), "installing the CRDs");
        cluster
    })
}

/// Each test works in a namespace of its own.
fn namespace(name: &str) -> String {
    let created = must(cluster().kubectl(["create", "namespace", name]), "kubectl create namespace");
    assert!(created.status.success(), "{}", stderr(&created));
    name.to_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A minimal valid StreamJob; tests change one thing in it.
fn minimal_job(name: &str) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "in"}},
            "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": "out"}}
        }
    })
}

fn apply(ns: &str, object: &Value) -> Output {
    must(cluster().kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string()), "kubectl apply")
}

/// Asserts the API server rejects `object`, and that its message names `field` and says `why`.
fn assert_rejected(ns: &str, object: &Value, field: &str, why: &str) {
    let output = apply(ns, object);
    let message = stderr(&output);
    assert!(!output.status.success(), "expected a rejection naming {field}, but it was accepted");
    assert!(message.contains(field), "rejection should name {field}: {message}");
    assert!(message.contains(why), "rejection should say {why:?}: {message}");
}

#[test]
fn the_cluster_serves_namespaces() {
    let output = cluster().kubectl(["get", "namespaces", "-o", "name"]).unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("namespace/default"), "{}", stdout(&output));
}

#[test]
fn the_crd_is_established() {
    let output =
        cluster().kubectl(["wait", "--for=condition=Established", "--timeout=30s", "crd/streamjobs.weir.dev"]).unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn every_example_applies() {
    let ns = namespace("examples");
    let examples = repo_root().join("examples");
    let output = cluster().kubectl(["apply", "-n", &ns, "-f", examples.to_str().unwrap()]).unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = stdout(&cluster().kubectl(["get", "sj", "-n", &ns, "-o", "name"]).unwrap());
    for name in ["spend-per-user", "page-views", "sessionized-clicks"] {
        assert!(listed.contains(&format!("streamjob.weir.dev/{name}")), "{name} missing from {listed}");
    }
}

#[test]
fn kubectl_get_shows_the_printer_columns() {
    let ns = namespace("columns");
    assert!(apply(&ns, &minimal_job("cols")).status.success());
    let output = cluster().kubectl(["get", "sj", "-n", &ns]).unwrap();
    let header = stdout(&output).lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(header, "NAME PHASE PARALLELISM READY LAG AGE");
}

#[test]
fn kubectl_explain_shows_field_descriptions() {
    let output = cluster().kubectl(["explain", "streamjob.spec.source.kafka"]).unwrap();
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(text.contains("Consumer group id"), "{text}");
    assert!(text.contains("partitionedBy"), "{text}");
    let output = cluster().kubectl(["explain", "streamjob.spec.source"]).unwrap();
    assert!(stdout(&output).contains("Read records from a Kafka topic"), "{}", stdout(&output));
}

#[test]
fn the_api_server_applies_defaults() {
    let ns = namespace("defaults");
    assert!(apply(&ns, &minimal_job("defaults")).status.success());
    let output = cluster().kubectl(["get", "sj", "defaults", "-n", &ns, "-o", "json"]).unwrap();
    let job: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(job["spec"]["parallelism"], 1);
    assert_eq!(job["spec"]["sink"]["kafka"]["delivery"], "idempotent");
    assert_eq!(job["spec"]["source"]["kafka"]["startOffset"], "earliest");
    assert_eq!(job["spec"]["source"]["kafka"]["format"], "json");
}

#[test]
fn the_scale_subresource_reads_and_writes_parallelism() {
    let ns = namespace("scale");
    assert!(apply(&ns, &minimal_job("scaled")).status.success());
    let scaled = cluster().kubectl(["scale", "sj", "scaled", "-n", &ns, "--replicas=3"]).unwrap();
    assert!(scaled.status.success(), "{}", stderr(&scaled));
    let output = cluster().kubectl(["get", "sj", "scaled", "-n", &ns, "-o", "jsonpath={.spec.parallelism}"]).unwrap();
    assert_eq!(stdout(&output), "3");
    let path = format!("/apis/weir.dev/v1alpha1/namespaces/{ns}/streamjobs/scaled/scale");
    let scale: Value = serde_json::from_slice(&cluster().kubectl(["get", "--raw", &path]).unwrap().stdout).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
}

#[test]
fn the_status_is_written_only_through_its_subresource() {
    let ns = namespace("status");
    let mut job = minimal_job("with-status");
    job["status"] = json!({"phase": "Running"});
    assert!(apply(&ns, &job).status.success());
    let output = cluster().kubectl(["get", "sj", "with-status", "-n", &ns, "-o", "jsonpath={.status.phase}"]).unwrap();
    assert_eq!(stdout(&output), "", "status must be ignored on the main resource");
}

#[test]
fn negative_parallelism_is_rejected() {
    let ns = namespace("reject-parallelism");
    let mut job = minimal_job("bad");
    job["spec"]["parallelism"] = json!(-1);
    assert_rejected(&ns, &job, "spec.parallelism", "greater than or equal to 0");
}

#[test]
fn min_replicas_above_max_replicas_is_rejected() {
    let ns = namespace("reject-autoscaling");
    let mut job = minimal_job("bad");
    job["spec"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2, "lagThreshold": 100});
    assert_rejected(&ns, &job, "spec.autoscaling.minReplicas", "must not exceed maxReplicas");
}

#[test]
fn min_replicas_zero_with_the_prometheus_trigger_is_rejected() {
    let ns = namespace("reject-scale-to-zero");
    let mut job = minimal_job("bad");
    job["spec"]["autoscaling"] = json!({"minReplicas": 0, "maxReplicas": 2, "lagThreshold": 100});
    assert_rejected(&ns, &job, "spec.autoscaling.minReplicas", "needs trigger kafka");
    job["spec"]["autoscaling"] = json!({"maxReplicas": 2, "lagThreshold": 100, "scaleDownStabilization": "2h"});
    assert_rejected(&ns, &job, "spec.autoscaling.scaleDownStabilization", "at most 1h");
}

#[test]
fn an_unknown_upgrade_mode_is_rejected() {
    let ns = namespace("reject-upgrade-mode");
    let mut job = minimal_job("bad");
    job["spec"]["upgradeMode"] = json!("yolo");
    assert_rejected(&ns, &job, "spec.upgradeMode", "Unsupported value: \"yolo\"");
}

#[test]
fn exactly_once_without_checkpoint_storage_is_rejected() {
    let ns = namespace("reject-exactly-once");
    let mut job = minimal_job("bad");
    job["spec"]["sink"]["kafka"]["delivery"] = json!("exactlyOnce");
    assert_rejected(&ns, &job, "spec.checkpoint", "exactlyOnce delivery needs checkpoint.storage");
}

#[test]
fn a_wrong_type_is_rejected() {
    let ns = namespace("reject-type");
    let mut job = minimal_job("bad");
    job["spec"]["parallelism"] = json!("two");
    assert_rejected(&ns, &job, "spec.parallelism", "must be of type integer");
}

#[test]
fn a_slide_longer_than_the_window_is_rejected() {
    let ns = namespace("reject-slide");
    let mut job = minimal_job("bad");
    job["spec"]["pipeline"] = json!([
        {"keyBy": ["k"]},
        {"window": {"sliding": {"size": "1m", "slide": "5m"}}},
        {"aggregate": [{"fn": "count"}]}
    ]);
    assert_rejected(&ns, &job, "spec.pipeline[1].window.sliding.slide", "slide must not be longer than size");
}

#[test]
fn a_sliding_window_that_puts_a_record_in_more_than_1000_windows_is_rejected() {
    let ns = namespace("reject-slide-ratio");
    let mut job = minimal_job("bad");
    job["spec"]["pipeline"] = json!([
        {"keyBy": ["k"]},
        {"window": {"sliding": {"size": "8760h", "slide": "1ms"}}},
        {"aggregate": [{"fn": "count"}]}
    ]);
    assert_rejected(&ns, &job, "spec.pipeline[1].window.sliding.slide", "at most 1000");
    job["spec"]["pipeline"][1] = json!({"window": {"sliding": {"size": "1000s", "slide": "1s"}}});
    let output = apply(&ns, &job);
    assert!(output.status.success(), "1000 windows per record is allowed: {}", stderr(&output));
}

#[test]
fn a_malformed_duration_is_rejected() {
    let ns = namespace("reject-duration");
    let mut job = minimal_job("bad");
    job["spec"]["checkpoint"] = json!({"interval": "5 minutes", "storage": "file:///cp"});
    assert_rejected(&ns, &job, "spec.checkpoint.interval", "should match");
}

#[test]
fn durations_and_numbers_past_their_bounds_are_rejected() {
    let ns = namespace("reject-bounds");
    for timeout in ["9000h", "99999999999999h", "8760h1ms"] {
        let mut job = minimal_job("bad");
        job["spec"]["rolloutTimeout"] = json!(timeout);
        assert_rejected(&ns, &job, "spec.rolloutTimeout", "");
    }
    let mut job = minimal_job("bad");
    job["spec"]["rolloutTimeout"] = json!("9000h");
    assert_rejected(&ns, &job, "spec.rolloutTimeout", "must be at most 8760h");
    let mut job = minimal_job("bad");
    job["spec"]["source"]["kafka"]["maxRecordsPerSecond"] = json!(5_000_000_000_u64);
    assert_rejected(&ns, &job, "spec.source.kafka.maxRecordsPerSecond", "less than or equal to");
    let mut at_the_bound = minimal_job("longest");
    at_the_bound["spec"]["rolloutTimeout"] = json!("8760h");
    let output = apply(&ns, &at_the_bound);
    assert!(output.status.success(), "8760h is allowed: {}", stderr(&output));
}

#[test]
fn a_plaintext_password_is_rejected() {
    let ns = namespace("reject-plain");
    let mut job = minimal_job("bad");
    job["spec"]["source"]["kafka"]["security"] =
        json!({"protocol": "SASL_PLAINTEXT", "saslMechanism": "PLAIN", "credentialsSecret": "creds"});
    assert_rejected(&ns, &job, "spec.source.kafka.security.protocol", "unencrypted");
}

#[test]
fn a_pipeline_step_with_two_kinds_is_rejected() {
    let ns = namespace("reject-step");
    let mut job = minimal_job("bad");
    job["spec"]["pipeline"] = json!([{"filter": "a > 1", "select": ["a"]}]);
    assert_rejected(&ns, &job, "spec.pipeline[0]", "one and only one");
}

#[test]
fn msk_iam_over_sasl_plaintext_is_rejected_even_when_insecure_is_allowed() {
    let ns = namespace("reject-msk-plain");
    let mut job = minimal_job("bad");
    job["spec"]["sink"]["kafka"]["security"] =
        json!({"protocol": "SASL_PLAINTEXT", "saslMechanism": "AWS_MSK_IAM", "allowInsecure": true});
    assert_rejected(&ns, &job, "spec.sink.kafka.security.protocol", "AWS_MSK_IAM needs SASL_SSL");
}

#[test]
fn an_oauth_token_without_tls_is_rejected() {
    let ns = namespace("reject-oauth-plain");
    let mut job = minimal_job("bad");
    job["spec"]["source"]["kafka"]["security"] =
        json!({"protocol": "SASL_PLAINTEXT", "saslMechanism": "OAUTHBEARER", "credentialsSecret": "token"});
    assert_rejected(&ns, &job, "spec.source.kafka.security.protocol", "unencrypted");
}

#[test]
fn a_timestamp_start_without_its_time_is_rejected() {
    let ns = namespace("reject-start-ts");
    let mut job = minimal_job("bad");
    job["spec"]["source"]["kafka"]["startOffset"] = json!("timestamp");
    assert_rejected(&ns, &job, "spec.source.kafka.startTimestamp", "required with startOffset timestamp");
}

#[test]
fn fire_and_forget_with_acks_all_is_rejected() {
    let ns = namespace("reject-fire-acks");
    let mut job = minimal_job("bad");
    job["spec"]["sink"]["kafka"]["delivery"] = json!("fireAndForget");
    job["spec"]["sink"]["kafka"]["acks"] = json!("all");
    assert_rejected(&ns, &job, "spec.sink.kafka.acks", "acks 0");
}

#[test]
fn a_retry_backoff_starting_above_its_maximum_is_rejected() {
    let ns = namespace("reject-backoff");
    let mut job = minimal_job("bad");
    job["spec"]["source"]["kafka"]["retry"] = json!({"initialBackoff": "30s", "maxBackoff": "1s"});
    assert_rejected(&ns, &job, "spec.source.kafka.retry.initialBackoff", "must not exceed maxBackoff");
}

#[test]
fn connector_options_apply_and_default() {
    let ns = namespace("connector-options");
    let mut job = minimal_job("tuned");
    job["spec"]["source"]["kafka"]["groupIdPrefix"] = json!("team-a.");
    job["spec"]["source"]["kafka"]["maxRecordsPerSecond"] = json!(500);
    job["spec"]["sink"]["kafka"]["headers"] = json!({"origin": "weir"});
    job["spec"]["sink"]["kafka"]["createTopic"] = json!({"partitions": 6});
    let output = apply(&ns, &job);
    assert!(output.status.success(), "{}", stderr(&output));
    let got = must(cluster().kubectl(["get", "sj", "tuned", "-n", &ns, "-o", "json"]), "kubectl get");
    let stored: Value = must(serde_json::from_slice(&got.stdout), "parsing the stored StreamJob");
    let source = &stored["spec"]["source"]["kafka"];
    assert_eq!(source["batchSize"], json!(4096), "{source}");
    assert_eq!(source["isolationLevel"], json!("readCommitted"), "{source}");
    assert_eq!(source["retry"]["maxRetries"], json!(10), "{source}");
    let sink = &stored["spec"]["sink"]["kafka"];
    assert_eq!(sink["createTopic"]["replicationFactor"], json!(1), "{sink}");
    assert_eq!(sink["traceContext"], json!("propagate"), "{sink}");
}

/// A StreamJobSavepoint of job `job`, typed as the operator reads it.
fn savepoint(name: &str, job: &str, path: Option<&str>) -> Value {
    let spec = weir_crds::StreamJobSavepointSpec {
        job_ref: weir_crds::JobReference { name: job.into() },
        path: path.map(str::to_owned),
        dispose_on_delete: false,
    };
    must(serde_json::to_value(weir_crds::StreamJobSavepoint::new(name, spec)), "serializing the savepoint")
}

#[test]
fn a_savepoint_keeps_its_job_and_path_and_lists_with_its_columns() {
    let ns = namespace("savepoint-api");
    let created = apply(&ns, &savepoint("sp-1", "orders", None));
    assert!(created.status.success(), "{}", stderr(&created));
    assert_rejected(&ns, &savepoint("sp-1", "refunds", None), "spec.jobRef", "jobRef cannot change");
    assert_rejected(&ns, &savepoint("sp-1", "orders", Some("file:///sp")), "spec.path", "path cannot change");
    let mut disposed = savepoint("sp-1", "orders", None);
    disposed["spec"]["disposeOnDelete"] = json!(true);
    let changed = apply(&ns, &disposed);
    assert!(changed.status.success(), "disposeOnDelete may change: {}", stderr(&changed));
    assert_rejected(&ns, &savepoint("sp-2", "", None), "spec.jobRef.name", "at least 1");

    let listed = must(cluster().kubectl(["get", "sjsp", "-n", &ns, "-o", "wide"]), "kubectl get sjsp");
    let header: Vec<String> =
        stdout(&listed).lines().next().unwrap_or_default().split_whitespace().map(String::from).collect();
    assert_eq!(header, ["NAME", "JOB", "STATE", "REASON", "AGE", "PATH"], "{}", stdout(&listed));
}

#[test]
fn restore_from_is_set_when_a_job_is_created_and_cannot_change() {
    let ns = namespace("restore-from");
    let mut job = minimal_job("forked");
    job["spec"]["checkpoint"] = json!({"storage": "file:///cp"});
    let plain = apply(&ns, &job);
    assert!(plain.status.success(), "{}", stderr(&plain));
    job["spec"]["restoreFrom"] = json!({"savepoint": "sp-1"});
    assert_rejected(&ns, &job, "spec.restoreFrom", "cannot change afterwards");

    let mut restored = minimal_job("restored");
    restored["spec"]["checkpoint"] = json!({"storage": "file:///cp"});
    restored["spec"]["restoreFrom"] = json!({"savepoint": "sp-1", "path": "file:///cp/g/savepoints/sp-1"});
    assert_rejected(&ns, &restored, "spec.restoreFrom", "either a savepoint or a path");
    restored["spec"]["restoreFrom"] = json!({"savepoint": "sp-1"});
    let created = apply(&ns, &restored);
    assert!(created.status.success(), "{}", stderr(&created));
    restored["spec"]["restoreFrom"] = json!({"savepoint": "sp-2"});
    assert_rejected(&ns, &restored, "spec.restoreFrom", "cannot change afterwards");
    restored["spec"]["parallelism"] = json!(3);
    restored["spec"]["restoreFrom"] = json!({"savepoint": "sp-1"});
    let scaled = apply(&ns, &restored);
    assert!(scaled.status.success(), "other fields still change: {}", stderr(&scaled));
    let mut unstored = minimal_job("unstored");
    unstored["spec"]["restoreFrom"] = json!({"savepoint": "sp-1"});
    assert_rejected(&ns, &unstored, "spec.restoreFrom", "needs checkpoint.storage");
}

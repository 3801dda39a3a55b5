//! Every renderer against YAML fixtures: `tests/fixtures/render/<case>/streamjob.yaml` is
//! the input, the other files are the expected objects. After an intended change, rewrite
//! them with `WEIR_UPDATE_FIXTURES=1 cargo test -p weir-operator --test render` and review
//! the diff.

use std::path::{Path, PathBuf};

use serde::Serialize;
use weir_crds::StreamJob;
use weir_operator::{config::OperatorConfig, render::render};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/render")
}

fn config() -> OperatorConfig {
    OperatorConfig {
        runtime_image: "ghcr.io/weir-dev/weir-runtime:0.1.0".into(),
        prometheus_address: "http://prometheus.monitoring:9090".into(),
        admin_port: 9249,
        keda_available: true,
        resync_interval: std::time::Duration::from_secs(30),
        rescale_stabilization: std::time::Duration::from_secs(30),
    }
}

fn check(case: &str, file: &str, object: &impl Serialize) {
    let path = fixtures().join(case).join(file);
    let actual = must(serde_yaml::to_string(object), "serializing");
    if std::env::var_os("WEIR_UPDATE_FIXTURES").is_some() {
        must(std::fs::write(&path, &actual), "updating a fixture");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "{} differs from the rendered object", path.display());
}

fn check_case(case: &str) {
    let input = must(std::fs::read_to_string(fixtures().join(case).join("streamjob.yaml")), "reading the input");
    // Through JSON values: serde_yaml reads enums only from YAML tags.
    let value: serde_json::Value = must(serde_yaml::from_str(&input), "parsing the input");
    let job: StreamJob = must(serde_json::from_value(value), "reading the StreamJob");
    let rendered = must(render(&job, &config()), "rendering");
    check(case, "configmap.yaml", &rendered.config_map);
    check(case, "deployment.yaml", &rendered.deployment);
    check(case, "service.yaml", &rendered.service);
    check(case, "poddisruptionbudget.yaml", &rendered.pod_disruption_budget);
    let scaled_object = fixtures().join(case).join("scaledobject.yaml");
    match &rendered.scaled_object {
        Some(object) => check(case, "scaledobject.yaml", object),
        None => assert!(!scaled_object.exists(), "{case}: no ScaledObject rendered, but a fixture exists"),
    }
}

#[test]
fn a_minimal_job_renders_its_defaults() {
    check_case("minimal");
}

#[test]
fn security_resources_overrides_and_autoscaling_render() {
    check_case("secured-autoscaled");
}

#[test]
fn a_suspended_job_renders_zero_replicas() {
    check_case("suspended");
}

#[test]
fn protobuf_source_and_avro_sink_mount_the_descriptor_set_and_registry_credentials() {
    check_case("formats");
}

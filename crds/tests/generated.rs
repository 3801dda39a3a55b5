//! Generated and shipped files stay in step with the types.

use std::path::Path;

use kube::CustomResourceExt;
use weir_crds::{JobDocument, StreamJob, StreamJobSavepoint};

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn committed_crd_equals_crdgen_output() {
    let generated = serde_yaml::to_string(&StreamJob::crd()).unwrap();
    assert!(
        repo_file("crds/streamjob.yaml") == generated,
        "crds/streamjob.yaml is stale: run `cargo run -p weir-crds --bin crdgen > crds/streamjob.yaml`"
    );
}

#[test]
fn the_charts_crd_equals_crdgen_output() {
    let generated = serde_yaml::to_string(&StreamJob::crd()).unwrap();
    assert!(
        repo_file("charts/weir/crds/streamjob.yaml") == generated,
        "charts/weir/crds/streamjob.yaml is stale: run `cargo run -p weir-crds --bin crdgen > charts/weir/crds/streamjob.yaml`"
    );
}

#[test]
fn the_savepoint_crds_equal_crdgen_output() {
    let generated = serde_yaml::to_string(&StreamJobSavepoint::crd()).unwrap();
    for file in ["crds/streamjobsavepoint.yaml", "charts/weir/crds/streamjobsavepoint.yaml"] {
        assert!(
            repo_file(file) == generated,
            "{file} is stale: run `cargo run -p weir-crds --bin crdgen -- savepoint > {file}`"
        );
    }
}

#[test]
fn the_streamjob_reference_equals_crdgen_output() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen")).arg("--reference").output().unwrap();
    assert!(output.status.success(), "crdgen --reference: {}", String::from_utf8_lossy(&output.stderr));
    let generated = String::from_utf8(output.stdout).unwrap();
    assert!(generated.contains("| `source.kafka.topic` | string |"), "{generated}");
    assert!(
        repo_file("docs/streamjob-reference.md") == generated,
        "docs/streamjob-reference.md is stale: run \
         `cargo run -p weir-crds --bin crdgen -- --reference > docs/streamjob-reference.md`"
    );
}

#[test]
fn every_example_parses_and_passes_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let document = JobDocument::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(document.name.is_some(), "{} has no metadata.name", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected at least three examples, found {checked}");
}

#[test]
fn the_crd_has_the_scale_and_status_subresources() {
    let crd = StreamJob::crd();
    let version = &crd.spec.versions[0];
    let subresources = version.subresources.as_ref().unwrap();
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.parallelism");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["sj".to_owned()][..]));
}

#[test]
fn the_crd_uses_only_formats_the_api_server_knows() {
    let generated = serde_yaml::to_string(&StreamJob::crd()).unwrap();
    let formats: std::collections::BTreeSet<&str> =
        generated.lines().filter_map(|l| l.trim().strip_prefix("format: ")).collect();
    let known = ["int32", "int64", "double", "date-time"];
    assert!(formats.iter().all(|f| known.contains(f)), "kubectl warns of unknown formats: {formats:?}");
}

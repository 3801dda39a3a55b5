//! The Helm chart rendered with Helm's own engine: `e2e/chart/render.py` on the
//! helm-python-sdk wheel, which `e2e/chart/install-helm-sdk.sh` installs (once, cached).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

use crate::{Error, repo_root};

/// The namespace charts are rendered for unless `--namespace` says otherwise.
pub const RELEASE_NAMESPACE: &str = "weir-system";

/// The operator's ServiceAccount name with the chart's default values.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "weir-operator";

/// The virtualenv python that has helm-python-sdk, installing it on first use.
pub fn helm_python() -> Result<&'static Path, Error> {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    if let Some(python) = PYTHON.get() {
        return Ok(python);
    }
    let script = repo_root().join("e2e/chart/install-helm-sdk.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
    if !output.status.success() {
        return Err(Error::Failed(format!("install-helm-sdk.sh: {}", String::from_utf8_lossy(&output.stderr))));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    Ok(PYTHON.get_or_init(|| python))
}

/// Lints and renders `charts/weir` with `values` (written to a values file) and `args`
/// (e.g. `--include-crds`, `--format json`); render.py's output, whatever its exit status.
pub fn render_output(values: &Value, args: &[&str]) -> Result<Output, Error> {
    let dir = tempfile::tempdir().map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
    let file = dir.path().join("values.json");
    std::fs::write(&file, values.to_string()).map_err(|source| Error::Spawn { what: "values file".into(), source })?;
    let script = repo_root().join("e2e/chart/render.py");
    Command::new(helm_python()?)
        .arg(&script)
        .arg(repo_root().join("charts/weir"))
        .arg("--values")
        .arg(&file)
        .args(["--namespace", RELEASE_NAMESPACE])
        .args(args)
        .output()
        .map_err(|source| Error::Spawn { what: script.display().to_string(), source })
}

/// The rendered manifests (YAML, or JSON with `--format json`); an error with render.py's
/// reasons when lint, the values schema or a template fails.
pub fn render(values: &Value, args: &[&str]) -> Result<String, Error> {
    let output = render_output(values, args)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Failed(format!("render.py: {}", String::from_utf8_lossy(&output.stderr))))
    }
}

/// The chart's ServiceAccount and RBAC objects (ClusterRole or Role and their bindings)
/// rendered with `values`: what the operator may do once installed.
pub fn operator_access(values: &Value) -> Result<Vec<Value>, Error> {
    const KINDS: [&str; 5] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    let rendered = render(values, &["--format", "json"])?;
    let objects: Vec<Value> =
        serde_json::from_str(&rendered).map_err(|e| Error::Failed(format!("render.py --format json: {e}")))?;
    Ok(objects.into_iter().filter(|o| o["kind"].as_str().is_some_and(|kind| KINDS.contains(&kind))).collect())
}

/// `objects` as one `List` manifest for `kubectl apply`.
pub fn manifest_list(objects: &[Value]) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

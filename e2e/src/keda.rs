//! Real KEDA — its operator and metrics adapter, built from `github.com/kedacore/keda/v2` by
//! `e2e/keda/install.sh` — running for a [`LocalCluster`], started by `e2e/keda/start.sh`
//! and stopped when dropped (or when the owning process exits).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

use crate::{Error, cluster::LocalCluster, repo_root};

/// The folder KEDA is built into (cached): `bin/`, `crds/` and its module's `config/`.
pub fn install() -> Result<PathBuf, Error> {
    let script = repo_root().join("e2e/keda/install.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
    let printed = String::from_utf8_lossy(&output.stdout);
    match printed.lines().last() {
        Some(dir) if output.status.success() => Ok(PathBuf::from(dir)),
        _ => Err(Error::Start(format!("{printed}{}", String::from_utf8_lossy(&output.stderr)))),
    }
}

/// KEDA's own ScaledObject CRD, from the module it is built from.
pub fn scaled_object_crd() -> Result<PathBuf, Error> {
    Ok(install()?.join("crds/keda.sh_scaledobjects.yaml"))
}

/// KEDA running for one cluster: its CRDs, RBAC and external-metrics APIService installed,
/// its operator and adapter acting with its ServiceAccount's token.
#[derive(Debug)]
pub struct Keda {
    run_dir: TempDir,
}

impl Keda {
    /// Installs KEDA into `cluster` and starts it; returns once the external metrics API is
    /// Available.
    pub fn start(cluster: &LocalCluster) -> Result<Self, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix("weir-keda-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let script = repo_root().join("e2e/keda/start.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(run_dir.path())
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("KUBECTL", cluster.kubectl_path())
            .env("WATCH_PID", std::process::id().to_string())
            .output()
            .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
        if !output.status.success() {
            return Err(Error::Start(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(Self { run_dir })
    }

    /// The operator's log so far.
    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.path().join("operator.log")).unwrap_or_default()
    }

    /// The folder of its logs, certificates and pid files.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }
}

impl Drop for Keda {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_root().join("e2e/keda/stop.sh")).arg(self.run_dir.path()).output();
    }
}

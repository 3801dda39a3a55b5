//! A component of the local stack that a script of `e2e/<name>/` builds (`install.sh`),
//! starts for a cluster (`start.sh RUN_DIR`, with the cluster's admin kubeconfig) and stops
//! (`stop.sh RUN_DIR`, when dropped, or when the owning process exits).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tempfile::TempDir;

use crate::{Error, cluster::LocalCluster, repo_root};

fn run(command: &mut Command, script: &Path) -> Result<Output, Error> {
    let output = command.output().map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Start(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// The folder `e2e/<name>/install.sh` builds into (cached) and prints last.
pub fn install(name: &str) -> Result<PathBuf, Error> {
    let script = repo_root().join("e2e").join(name).join("install.sh");
    let output = run(Command::new("bash").arg(&script), &script)?;
    let printed = String::from_utf8_lossy(&output.stdout);
    printed
        .lines()
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Start(format!("{} printed nothing", script.display())))
}

/// A running component and the folder of its logs, configuration and pid files.
#[derive(Debug)]
pub struct Scripted {
    name: &'static str,
    run_dir: TempDir,
}

impl Scripted {
    /// Runs `e2e/<name>/start.sh` for `cluster`; returns once the script says it is ready.
    pub fn start(name: &'static str, cluster: &LocalCluster) -> Result<Self, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix(&format!("weir-{name}-"))
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let script = repo_root().join("e2e").join(name).join("start.sh");
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .arg(run_dir.path())
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("KUBECTL", cluster.kubectl_path())
            .env("WATCH_PID", std::process::id().to_string());
        run(&mut command, &script)?;
        Ok(Self { name, run_dir })
    }

    /// A file of its folder, as text (empty when missing).
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.run_dir.path().join(file)).unwrap_or_default()
    }

    /// Its folder.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let script = repo_root().join("e2e").join(self.name).join("stop.sh");
        let _ = Command::new("bash").arg(script).arg(self.run_dir.path()).output();
    }
}

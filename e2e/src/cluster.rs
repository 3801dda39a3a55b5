//! A running devcluster: etcd and the devcluster API server on 127.0.0.1, started by
//! `e2e/devcluster/start.sh` and stopped when dropped (or when the owning process exits).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Error, free_port, repo_root, wait_until};

/// A local API server with its own etcd, certificates and kubeconfig.
#[derive(Debug)]
pub struct DevCluster {
    run_dir: TempDir,
    kubeconfig: PathBuf,
}

impl DevCluster {
    /// Builds the server if needed (cached) and starts it on free ports.
    pub fn start() -> Result<Self, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix("weir-devcluster-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let port = |what: &str| free_port().map_err(|source| Error::Spawn { what: what.into(), source });
        let script = repo_root().join("e2e/devcluster/start.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(run_dir.path())
            .env("API_PORT", port("api port")?.to_string())
            .env("ETCD_PORT", port("etcd port")?.to_string())
            .env("ETCD_PEER_PORT", port("etcd peer port")?.to_string())
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
        let kubeconfig = run_dir.path().join("kubeconfig");
        Ok(Self { run_dir, kubeconfig })
    }

    /// The kubeconfig of the admin user.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl against this cluster and returns its output, whatever its exit status.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn { what: "kubectl".into(), source })
    }

    /// Runs kubectl with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Output, Error> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { what: "kubectl".into(), source })?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .map_err(|source| Error::Spawn { what: "kubectl stdin".into(), source })?;
        }
        child.wait_with_output().map_err(|source| Error::Spawn { what: "kubectl".into(), source })
    }

    /// Applies the StreamJob CRD and waits until the API server serves it.
    pub fn install_crds(&self) -> Result<(), Error> {
        let crd = repo_root().join("crds/streamjob.yaml");
        let applied = self.kubectl([OsStr::new("apply"), OsStr::new("-f"), crd.as_os_str()])?;
        if !applied.status.success() {
            return Err(Error::Start(String::from_utf8_lossy(&applied.stderr).into_owned()));
        }
        wait_until(Duration::from_secs(30), "the StreamJob CRD to be served", || {
            self.kubectl(["get", "streamjobs", "--all-namespaces"]).is_ok_and(|o| o.status.success())
        })
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_root().join("e2e/devcluster/stop.sh")).arg(self.run_dir.path()).output();
    }
}

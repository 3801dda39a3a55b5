//! A running local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler on 127.0.0.1, started by `e2e/kubernetes/start.sh` and stopped when
//! dropped (or when the owning process exits). Pods run once a node agent joins
//! ([`crate::agent_process::NodeAgent::for_cluster`]).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Error, free_ports, repo_root, wait_until};

/// A local control plane with its own etcd, certificates and kubeconfigs.
#[derive(Debug)]
pub struct LocalCluster {
    run_dir: TempDir,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// The API server's URL.
    server: String,
}

impl LocalCluster {
    /// Builds the control plane if needed (cached) and starts it on free ports.
    pub fn start() -> Result<Self, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix("weir-kubernetes-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let [api_port, etcd_port, etcd_peer_port] =
            free_ports().map_err(|source| Error::Spawn { what: "free ports".into(), source })?;
        let script = repo_root().join("e2e/kubernetes/start.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(run_dir.path())
            .env("API_PORT", api_port.to_string())
            .env("ETCD_PORT", etcd_port.to_string())
            .env("ETCD_PEER_PORT", etcd_peer_port.to_string())
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
        let kubectl = binaries()?.join("kubectl");
        Ok(Self { run_dir, kubeconfig, kubectl, server: format!("https://127.0.0.1:{api_port}") })
    }

    /// The kubeconfig of the admin user (group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubectl of the cluster's own release.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// The kubeconfig of the node agent (`system:node:local`, Node-authorized).
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.run_dir.path().join("node.kubeconfig")
    }

    /// Runs kubectl against this cluster and returns its output, whatever its exit status.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn { what: "kubectl".into(), source })
    }

    /// Runs kubectl with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Output, Error> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
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

    /// Applies `manifests` (YAML or JSON) with kubectl; an error with its reasons otherwise.
    pub fn apply(&self, manifests: &str) -> Result<(), Error> {
        let output = self.kubectl_stdin(&["apply", "-f", "-"], manifests)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Failed(format!("kubectl apply: {}", String::from_utf8_lossy(&output.stderr))))
        }
    }

    /// A kubeconfig acting as ServiceAccount `namespace/name`, with a day-long token from the
    /// TokenRequest API: a process outside the cluster then has exactly that account's
    /// permissions, as it would in a pod.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf, Error> {
        let created = self.kubectl(["create", "token", name, "-n", namespace, "--duration=24h"])?;
        if !created.status.success() {
            return Err(Error::Failed(format!(
                "kubectl create token {namespace}/{name}: {}",
                String::from_utf8_lossy(&created.stderr)
            )));
        }
        let io = |source| Error::Spawn { what: format!("writing the kubeconfig of {namespace}/{name}"), source };
        let token_file = self.run_dir.path().join(format!("{namespace}-{name}.token"));
        std::fs::write(&token_file, String::from_utf8_lossy(&created.stdout).trim()).map_err(io)?;
        let ca = self.run_dir.path().join("pki/ca.crt");
        // JSON is YAML: kubectl and kube read it as a kubeconfig.
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority": ca}}],
            "users": [{"name": name, "user": {"tokenFile": token_file}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": name, "namespace": namespace}}],
            "current-context": "local",
        })
        .to_string();
        let path = self.run_dir.path().join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, kubeconfig).map_err(io)?;
        Ok(path)
    }

    /// Applies Weir's CRDs (every file in `crds/`) and waits until the API server serves them.
    pub fn install_crds(&self) -> Result<(), Error> {
        let crds = repo_root().join("crds");
        let applied = self.kubectl([OsStr::new("apply"), OsStr::new("-f"), crds.as_os_str()])?;
        if !applied.status.success() {
            return Err(Error::Start(String::from_utf8_lossy(&applied.stderr).into_owned()));
        }
        wait_until(Duration::from_secs(30), "Weir's CRDs to be served", || {
            ["streamjobs", "streamjobsavepoints"]
                .iter()
                .all(|kind| self.kubectl(["get", kind, "--all-namespaces"]).is_ok_and(|o| o.status.success()))
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_root().join("e2e/kubernetes/stop.sh")).arg(self.run_dir.path()).output();
    }
}

/// The folder of the built control plane and kubectl (`e2e/kubernetes/install.sh`, cached).
pub fn binaries() -> Result<PathBuf, Error> {
    Ok(crate::scripted::install("kubernetes")?.join("bin"))
}

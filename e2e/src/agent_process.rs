//! A `weir-node-agent` process for tests: started with a cluster's node kubeconfig with a
//! temporary state folder, tied to the test process (`--watch-pid`), stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Error, agent::READY_FILE, cluster::LocalCluster, wait_until};

/// Set this variable to keep agents' state folders (pod logs, volumes) after a test run;
/// by default an agent deletes its own when it exits.
pub const KEEP_STATE_ENV: &str = "WEIR_KEEP_AGENT_STATE";

/// What the agent runs.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--image NAME=PATH` entries.
    pub images: Vec<(String, PathBuf)>,
}

impl AgentOptions {
    /// Adds an image mapping (image name without tag → program path or PATH name).
    pub fn image(mut self, name: &str, program: impl Into<PathBuf>) -> Self {
        self.images.push((name.to_owned(), program.into()));
        self
    }
}

/// The `weir-node-agent` built next to the running test executable (`target/<profile>/`), for
/// tests of other crates, which cannot name another package's binary: `cargo test --workspace`
/// builds it; `cargo build -p weir-e2e --bin weir-node-agent` does too.
pub fn built_binary() -> Result<PathBuf, Error> {
    crate::workspace_binary("weir-node-agent")
}

/// A running node agent.
#[derive(Debug)]
pub struct NodeAgent {
    child: Child,
    state_dir: TempDir,
}

impl NodeAgent {
    /// Starts `binary` (in weir-e2e's tests: `env!("CARGO_BIN_EXE_weir-node-agent")`) against
    /// `kubeconfig` and waits until it watches the cluster.
    pub fn start(binary: impl AsRef<Path>, kubeconfig: &Path, options: &AgentOptions) -> Result<Self, Error> {
        let state_dir = tempfile::Builder::new()
            .prefix("weir-node-agent-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let log_path = state_dir.path().join("agent.log");
        let log =
            std::fs::File::create(&log_path).map_err(|source| Error::Spawn { what: "agent log".into(), source })?;
        let err = log.try_clone().map_err(|source| Error::Spawn { what: "agent log".into(), source })?;
        let binary = binary.as_ref();
        let mut command = Command::new(binary);
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--state-dir")
            .arg(state_dir.path())
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .args(std::env::var_os(KEEP_STATE_ENV).is_none().then_some("--remove-state-dir"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for (name, program) in &options.images {
            command.arg("--image").arg(format!("{name}={}", program.display()));
        }
        let child = command.spawn().map_err(|source| Error::Spawn { what: binary.display().to_string(), source })?;
        let mut agent = Self { child, state_dir };
        let ready = agent.state_dir.path().join(READY_FILE);
        let mut exited = false;
        let waited = wait_until(Duration::from_secs(30), "the node agent to watch the cluster", || {
            exited = agent.child.try_wait().is_ok_and(|s| s.is_some());
            exited || ready.exists()
        });
        if exited || waited.is_err() {
            let log = agent.log();
            agent.stop();
            return Err(Error::Start(format!("weir-node-agent:\n{log}")));
        }
        Ok(agent)
    }

    /// Starts `binary` as `cluster`'s node (see [`NodeAgent::start`]).
    pub fn for_cluster(
        binary: impl AsRef<Path>,
        cluster: &LocalCluster,
        options: &AgentOptions,
    ) -> Result<Self, Error> {
        Self::start(binary, &cluster.node_kubeconfig(), options)
    }

    /// The agent's state folder.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// A pod's folder: working directory, `<container>.log`, `<container>.pid`, `volumes/`.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.state_dir.path().join("pods").join(namespace).join(pod)
    }

    /// The pid of a container's running process.
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        let file = self.pod_dir(namespace, pod).join(format!("{container}.pid"));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// A container's output so far.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.pod_dir(namespace, pod).join(format!("{container}.log"))).unwrap_or_default()
    }

    /// The agent's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent (SIGTERM: it stops its pods, each within its grace period, and deletes
    /// their Pod objects), killing it if that takes longer than two minutes.
    pub fn stop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_some()) {
            return;
        }
        let _ = Command::new("kill").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let stopped = wait_until(Duration::from_secs(120), "the node agent to exit", || {
            self.child.try_wait().is_ok_and(|s| s.is_some())
        });
        if stopped.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

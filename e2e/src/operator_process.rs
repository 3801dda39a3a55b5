//! A `weir-operator` process for tests and the local stack, killed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{Error, free_port};

/// A running operator with its log file and metrics address.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    metrics_addr: String,
}

impl OperatorProcess {
    /// Starts `binary` against the cluster of `kubeconfig`, its metrics on a free port, its
    /// log (text) in `log`, with `args` added.
    pub fn start(binary: &Path, kubeconfig: &Path, log: PathBuf, args: &[&str]) -> Result<Self, Error> {
        let spawn = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Spawn { what, source }
        };
        let port = free_port().map_err(spawn("a free port"))?;
        let file = std::fs::File::create(&log).map_err(spawn("the operator log"))?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["--metrics-addr", &metrics_addr, "--log-format", "text"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(spawn(&binary.display().to_string()))?;
        Ok(Self { child, log, metrics_addr })
    }

    /// `host:port` of the operator's `/metrics` and `/healthz`.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics_addr
    }

    /// What the operator logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (to read its memory use, for instance).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

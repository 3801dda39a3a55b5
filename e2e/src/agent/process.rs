//! Local processes for containers: spawn one (own process group, output to a log file,
//! killed with the agent), signal it, and stop it gracefully.

use std::{
    fs::File,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use super::launch::Launch;

/// How children are tied to the agent's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spawner {
    /// Start children through `setpriv --pdeathsig KILL`, so the kernel kills them if the
    /// agent dies without cleaning up (the agent forbids unsafe code, so it cannot call
    /// prctl itself). The agent runs a single-threaded runtime, so the parent thread is
    /// the agent's main thread and lives as long as the agent.
    pub pdeathsig: bool,
}

impl Spawner {
    /// Uses `setpriv --pdeathsig` when this machine's setpriv supports it.
    pub fn detect() -> Self {
        let supported = std::process::Command::new("setpriv")
            .arg("--help")
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--pdeathsig"));
        Self { pdeathsig: supported }
    }

    /// Starts `launch` with stdout and stderr appended to `log`, in its own process group.
    pub fn spawn(&self, launch: &Launch, log: &Path) -> std::io::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = if self.pdeathsig {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL"]);
            if let Some(identity) = &launch.identity {
                c.args(identity.setpriv_args());
            }
            c.arg("--").arg(&launch.program);
            c
        } else {
            let mut c = Command::new(&launch.program);
            // Without setpriv, the supplementary groups are dropped rather than set.
            if let Some(identity) = &launch.identity {
                c.uid(identity.uid).gid(identity.gid);
            }
            c
        };
        command
            .args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        command.as_std_mut().process_group(0);
        command.spawn()
    }
}

/// Sends `signal` (a name such as TERM) to the process group led by `pid`.
pub async fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Stops a child as the kubelet does: SIGTERM to its group, SIGKILL after `grace`.
/// Returns its exit status, when one could be read.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        if !grace.is_zero() {
            signal_group(pid, "TERM").await;
            if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
                // Anything the process left behind in its group goes too.
                signal_group(pid, "KILL").await;
                return status.ok();
            }
        }
        signal_group(pid, "KILL").await;
    }
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// Kubernetes' exit code for a status: the code, or 128 + the signal number.
pub fn exit_code(status: &ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

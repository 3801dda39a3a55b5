//! One container's life, as the kubelet runs it: prepare, spawn, probe, restart on exit
//! (restartPolicy Always) with exponential backoff, restart on a failed liveness or
//! startup probe, stop gracefully when asked. Its state is shared with the status writer.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{Container, Probe};
use kube::Client;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{
    images::ImageTable,
    launch::{self, Launch, PodInfo},
    probes::{self, ExecContext, ProbeSpec, Tracker},
    process::{self, Spawner},
    volumes::Mounts,
};

/// The first restart delay, doubled after each crash.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest restart delay (the kubelet's is 5 min; tests cannot wait that long).
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// Completed, Error, or Unhealthy.
    pub reason: String,
    /// When the run started.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: SystemTime,
    /// What the program wrote to its termination message file.
    pub message: Option<String>,
}

/// What the status writer reports for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// The running process: pid and start time.
    pub running: Option<(u32, SystemTime)>,
    /// Whether the startup probe (if any) passed in this run.
    pub started: bool,
    /// Whether the container is ready.
    pub ready: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// The previous run's end.
    pub last_termination: Option<Termination>,
    /// Why it is not running: reason and message.
    pub waiting: Option<(String, String)>,
}

impl ContainerState {
    /// A container not started yet.
    pub fn new(container: &Container) -> Self {
        Self {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            running: None,
            started: false,
            ready: false,
            restart_count: 0,
            last_termination: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
        }
    }
}

/// Everything a supervisor needs.
#[derive(Clone)]
pub struct Supervisor {
    /// API client, for ConfigMap and Secret env.
    pub client: Client,
    /// The image table.
    pub images: Arc<ImageTable>,
    /// How processes are spawned.
    pub spawner: Spawner,
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// The container spec.
    pub container: Container,
    /// The container's mounts, to rewrite paths.
    pub mounts: Mounts,
    /// The local file behind the container's termination message path.
    pub termination_message: PathBuf,
    /// SIGTERM → SIGKILL delay.
    pub grace: Duration,
    /// Shared state for the status writer.
    pub state: Arc<Mutex<ContainerState>>,
    /// Woken on every state change.
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("pod", &self.pod.name)
            .field("container", &self.container.name)
            .finish_non_exhaustive()
    }
}

/// The termination message a run left (at most 4096 bytes, as the kubelet keeps), removed
/// so the next run starts without one.
fn take_message(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let _ = std::fs::remove_file(path);
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].trim().to_owned()).filter(|m| !m.is_empty())
}

/// Creates the (empty) termination-message file, writable by any user.
fn message_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
}

/// How one run ended.
enum Ended {
    Exited(Termination),
    Stopped,
}

impl Supervisor {
    /// Runs the container until `stop` turns true (or its sender goes away).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let log = self.pod.dir.join(format!("{}.log", self.container.name));
        let pid_file = self.pod.dir.join(format!("{}.pid", self.container.name));
        let mut backoff = BACKOFF_START;
        let mut runs = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            let launch =
                match launch::prepare(&self.client, &self.images, &self.pod, &self.container, &self.mounts).await {
                    Ok(launch) => launch,
                    Err(e) => {
                        tracing::warn!(pod = %self.pod.name, container = %self.container.name, "cannot start: {e}");
                        self.update(|s| s.waiting = Some((e.reason().into(), e.to_string())));
                        if wait_or_stop(&mut stop, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(BACKOFF_CAP);
                        continue;
                    }
                };
            // The kubelet creates the termination-message file for the container to write,
            // whoever it runs as.
            if let Err(e) = message_file(&self.termination_message) {
                tracing::warn!(pod = %self.pod.name, container = %self.container.name, "termination message file: {e}");
            }
            let mut child = match self.spawner.spawn(&launch, &log) {
                Ok(child) => child,
                Err(e) => {
                    tracing::warn!(pod = %self.pod.name, container = %self.container.name, "spawn failed: {e}");
                    self.update(|s| s.waiting = Some(("RunContainerError".into(), e.to_string())));
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    continue;
                }
            };
            let pid = child.id().unwrap_or_default();
            let started_at = SystemTime::now();
            let _ = std::fs::write(&pid_file, format!("{pid}\n"));
            tracing::info!(pod = %self.pod.name, container = %self.container.name, pid, program = %launch.program.display(), "started");
            self.update(|s| {
                s.running = Some((pid, started_at));
                s.waiting = None;
                s.started = false;
                s.ready = false;
                if runs > 0 {
                    s.restart_count += 1;
                }
            });
            runs += 1;
            let began = Instant::now();
            let ended = self.watch(&mut child, &launch, started_at, &mut stop).await;
            let _ = std::fs::remove_file(&pid_file);
            match ended {
                Ended::Stopped => {
                    self.update(|s| {
                        s.running = None;
                        s.ready = false;
                        s.waiting = Some(("Terminated".into(), String::new()));
                    });
                    break;
                }
                Ended::Exited(termination) => {
                    tracing::info!(
                        pod = %self.pod.name, container = %self.container.name,
                        code = termination.exit_code, reason = %termination.reason, "exited; restarting in {backoff:?}"
                    );
                    self.update(|s| {
                        s.running = None;
                        s.ready = false;
                        s.started = false;
                        s.last_termination = Some(termination);
                        s.waiting = Some(("CrashLoopBackOff".into(), format!("back-off {backoff:?} restarting")));
                    });
                    if began.elapsed() >= BACKOFF_RESET {
                        backoff = BACKOFF_START;
                    }
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }

    /// Waits for the process to exit, probing it meanwhile; kills it when a liveness or
    /// startup probe fails, or when stopped.
    async fn watch(
        &self,
        child: &mut tokio::process::Child,
        launch: &Launch,
        started_at: SystemTime,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let user = launch.identity.as_ref().map(|i| (i.uid, i.gid));
        let exec = ExecContext { env: launch.env.clone(), cwd: launch.cwd.clone(), user };
        let now = Instant::now();
        let mut startup = self.probe(self.container.startup_probe.as_ref(), now, false);
        let mut readiness = self.probe(self.container.readiness_probe.as_ref(), now, false);
        let mut liveness = self.probe(self.container.liveness_probe.as_ref(), now, true);
        self.publish(&startup, &readiness);
        loop {
            let started = startup.as_ref().is_none_or(|p| p.tracker.passing());
            let due = if started {
                [readiness.as_ref(), liveness.as_ref()].into_iter().flatten().map(|p| p.next).min()
            } else {
                startup.as_ref().map(|p| p.next)
            };
            let sleep = tokio::time::sleep_until(due.unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)));
            tokio::select! {
                status = child.wait() => {
                    let (exit_code, reason) = match status {
                        Ok(status) => {
                            let code = process::exit_code(&status);
                            (code, if code == 0 { "Completed" } else { "Error" })
                        }
                        Err(_) => (-1, "Error"),
                    };
                    let finished_at = SystemTime::now();
                    let message = take_message(&self.termination_message);
                    return Ended::Exited(Termination { exit_code, reason: reason.into(), started_at, finished_at, message });
                }
                _ = stop.changed() => {
                    process::terminate(child, self.grace).await;
                    return Ended::Stopped;
                }
                () = sleep => {
                    let mut failed = None;
                    for (which, slot) in [("startup", &mut startup), ("readiness", &mut readiness), ("liveness", &mut liveness)] {
                        let Some(p) = slot.as_mut() else { continue };
                        let active = if which == "startup" { !started } else { started };
                        if !active || p.next > Instant::now() {
                            continue;
                        }
                        let ok = probes::check(&p.spec.action, p.spec.timeout, &exec).await;
                        p.tracker.record(ok);
                        p.next = Instant::now() + p.spec.period;
                        if which != "readiness" && p.tracker.failed() {
                            failed = Some(which);
                        }
                    }
                    self.publish(&startup, &readiness);
                    if let Some(which) = failed {
                        tracing::info!(pod = %self.pod.name, container = %self.container.name, "{which} probe failed; killing");
                        let status = process::terminate(child, self.grace).await;
                        let exit_code = status.as_ref().map_or(-1, process::exit_code);
                        let finished_at = SystemTime::now();
                        let message = take_message(&self.termination_message);
                        return Ended::Exited(Termination {
                            exit_code,
                            reason: "Unhealthy".into(),
                            started_at,
                            finished_at,
                            message,
                        });
                    }
                }
            }
        }
    }

    /// A probe's schedule, or None when the container has none (or it cannot be resolved,
    /// which is logged and treated as absent).
    fn probe(&self, probe: Option<&Probe>, now: Instant, passing: bool) -> Option<Scheduled> {
        let spec = match probes::resolve(probe?, &self.container, self.pod.ip) {
            Ok(mut spec) => {
                // An exec probe reads files where the container sees its mounts.
                if let probes::Action::Exec { argv } = &mut spec.action {
                    *argv = argv.iter().map(|a| self.mounts.rewrite(a)).collect();
                }
                spec
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod.name, container = %self.container.name, "ignoring probe: {e}");
                return None;
            }
        };
        Some(Scheduled { tracker: Tracker::new(&spec, passing), next: now + spec.initial_delay, spec })
    }

    /// Publishes started/ready from the probes' state.
    fn publish(&self, startup: &Option<Scheduled>, readiness: &Option<Scheduled>) {
        let started = startup.as_ref().is_none_or(|p| p.tracker.passing());
        let ready = started && readiness.as_ref().is_none_or(|p| p.tracker.passing());
        self.update(|s| {
            s.started = started;
            s.ready = ready;
        });
    }

    /// Changes the shared state and wakes the status writer when it changed.
    fn update(&self, change: impl FnOnce(&mut ContainerState)) {
        let changed = match self.state.lock() {
            Ok(mut state) => {
                let before = state.clone();
                change(&mut state);
                *state != before
            }
            Err(_) => false,
        };
        if changed {
            self.changed.notify_one();
        }
    }
}

/// A probe and when it next runs.
struct Scheduled {
    spec: ProbeSpec,
    tracker: Tracker,
    next: Instant,
}

/// Sleeps `delay` unless stopped first; true when stopped.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(delay) => *stop.borrow(),
    }
}

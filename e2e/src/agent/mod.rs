//! The local node agent: the kubelet of a local Kubernetes control plane that has no
//! container runtime. It registers the Node [`NODE_NAME`], and runs the pods the scheduler
//! binds to it as local processes, each on a loopback address of its own, with the
//! downward API, ConfigMap, Secret, emptyDir and projected service-account-token volumes,
//! probes and restarts; it reports their status and removes their objects once they stop.
//! The real controllers (Deployment, ReplicaSet, garbage collector) make and delete pods.
//!
//! Pure parts (expansion, address pool, status, the Node object) are separate from the I/O
//! (processes, probes, API writes) so they are unit-tested without a cluster.
//!
//! A pod that mounts a service-account token gets a kubeconfig with that token as
//! `KUBECONFIG` (see [`api_access`]), so programs that infer their cluster configuration,
//! such as the operator, run as pods under their own ServiceAccount.
//!
//! Processes run as the user and groups their securityContext names (see [`identity`]),
//! and volume files are owned as the kubelet owns them (`fsGroup`).
//!
//! Not modelled: init and ephemeral containers, resource limits and `resourceFieldRef`,
//! the rest of the securityContext (capabilities, seccomp, read-only root filesystem,
//! privilege escalation: a local process has the user's rights, no fewer), image pulls,
//! Services and Endpoints, and volume kinds without a local meaning (hostPath, PVCs: an
//! empty folder).

pub mod api_access;
pub mod container;
pub mod env;
pub mod identity;
pub mod images;
pub mod ip;
pub mod kubelet;
pub mod launch;
pub mod probes;
pub mod process;
pub mod registration;
pub mod status;
pub mod volumes;

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::Notify;

use self::{
    images::ImageTable,
    ip::LoopbackAddresses,
    kubelet::{Kubelet, KubeletConfig},
    process::Spawner,
};

/// The node's name; its client certificate must be `system:node:local` (Node authorization).
pub const NODE_NAME: &str = "local";

/// The file the agent writes in its state dir once it watches and acts.
pub const READY_FILE: &str = "agent.ready";

/// How the agent is run.
#[derive(Debug, Clone)]
pub struct Config {
    /// A kubeconfig file; else `KUBECONFIG` or in-cluster, as kube infers.
    pub kubeconfig: Option<PathBuf>,
    /// Where pods' folders (`pods/<namespace>/<pod>/`) go.
    pub state_dir: PathBuf,
    /// Image → program table.
    pub images: ImageTable,
    /// Exit when this process is gone.
    pub watch_pid: Option<u32>,
    /// Where per-address locks are shared with other agents on this machine.
    pub ip_lock_dir: PathBuf,
    /// Delete the state dir on exit (tests' temporary folders outlive a test binary's statics).
    pub remove_state_dir: bool,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be inferred.
    #[error("inferring the cluster configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("building the API client: {0}")]
    Client(#[from] kube::Error),
    /// A local folder could not be prepared.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Node could not be registered.
    #[error("registering node {NODE_NAME}: {0}")]
    Register(kube::Error),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the agent until SIGTERM/SIGINT or until the watched PID exits, then stops every
/// pod, deletes their Pod objects and reports the Node not ready. Run it on a current-thread runtime (see
/// [`Spawner`]).
pub async fn run(config: Config) -> Result<(), AgentError> {
    let (client, server) = client(&config).await?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::Io {
        what: "creating",
        path: config.state_dir.clone(),
        source,
    })?;
    // Pods that run as another user reach their folders through it.
    std::fs::set_permissions(&config.state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|source| AgentError::Io { what: "opening up", path: config.state_dir.clone(), source })?;
    let addresses = LoopbackAddresses::new(config.ip_lock_dir.clone()).map_err(|source| AgentError::Io {
        what: "creating",
        path: config.ip_lock_dir.clone(),
        source,
    })?;
    let spawner = Spawner::detect();
    if !spawner.pdeathsig {
        tracing::warn!("setpriv --pdeathsig is unavailable: children outlive the agent if it is killed with SIGKILL");
    }
    let changed = Arc::new(Notify::new());
    let mut shutdown = shutdown_signal(config.watch_pid)?;
    let node_uid = tokio::select! {
        registered = registration::register(&client, NODE_NAME) => registered.map_err(AgentError::Register)?,
        _ = &mut shutdown => return Ok(()),
    };
    tokio::spawn(keep_alive(client.clone(), node_uid));
    let bound = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let pods = watch(Api::<Pod>::all(client.clone()), bound, changed.clone());
    tokio::select! {
        _ = pods.wait_until_ready() => {}
        _ = &mut shutdown => return Ok(()),
    }
    let state_dir = config.state_dir.clone();
    let ready_file = state_dir.join(READY_FILE);
    std::fs::write(&ready_file, format!("{}\n", std::process::id())).map_err(|source| AgentError::Io {
        what: "writing",
        path: ready_file.clone(),
        source,
    })?;
    tracing::info!(node = NODE_NAME, "running the pods bound to this node");
    let kubelet_config = KubeletConfig {
        client: client.clone(),
        images: Arc::new(config.images),
        spawner,
        state_dir: state_dir.clone(),
        addresses,
        server,
    };
    let mut kubelet = Kubelet::new(kubelet_config, pods, changed.clone());
    loop {
        kubelet.reconcile().await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    // Not ready first, so the scheduler stops binding replacements here.
    let _ = tokio::time::timeout(Duration::from_secs(5), registration::mark_stopped(&client, NODE_NAME)).await;
    kubelet.shutdown().await;
    let _ = std::fs::remove_file(&ready_file);
    if config.remove_state_dir {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(())
}

/// Renews the node's Lease for as long as the agent runs.
async fn keep_alive(client: Client, node_uid: String) {
    let mut every = tokio::time::interval(registration::RENEW_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = registration::renew(&client, NODE_NAME, &node_uid).await {
            tracing::warn!(node = NODE_NAME, "renewing the node's Lease: {e}");
        }
    }
}

/// The API client and the server's URL (for pods' kubeconfigs).
async fn client(config: &Config) -> Result<(Client, String), AgentError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let error = |source| AgentError::Kubeconfig { path: path.clone(), source };
            let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    let server = kube_config.cluster_url.to_string().trim_end_matches('/').to_owned();
    Ok((Client::try_from(kube_config)?, server))
}

/// A watch cache of `api`, kept up to date in the background; every event wakes `changed`.
fn watch<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                if let Err(e) = event {
                    tracing::debug!("watch: {e}");
                }
                changed.notify_one();
                futures::future::ready(())
            })
            .await;
    });
    reader
}

/// Resolves on SIGTERM, SIGINT, or when `watch_pid` is gone.
fn shutdown_signal(watch_pid: Option<u32>) -> Result<futures::future::BoxFuture<'static, ()>, AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    Ok(Box::pin(async move {
        let parent_gone = async {
            match watch_pid {
                Some(pid) => {
                    let proc = PathBuf::from(format!("/proc/{pid}"));
                    while proc.exists() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    tracing::info!(pid, "watched process exited");
                }
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
            () = parent_gone => {}
        }
    }))
}

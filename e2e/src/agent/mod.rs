//! The local node agent: the devcluster has no controllers and no kubelet, so this plays
//! the Deployment/ReplicaSet controller and the kubelet for labelled Deployments, running
//! each pod's containers as local processes on a loopback address of their own.
//!
//! Pure parts (planning, expansion, address pool, status) are separate from the I/O
//! (processes, probes, API writes) so they are unit-tested without a cluster.
//!
//! Service-account tokens are not minted: a pod that would get one is given the agent's
//! kubeconfig as `KUBECONFIG` instead (see [`node::Node::with_pod_kubeconfig`]), so programs
//! that infer their cluster configuration, such as the operator, run as pods too.
//!
//! Not modelled: init and ephemeral containers, resource limits and `resourceFieldRef`,
//! security contexts (processes run as the agent's user), image pulls, Services and
//! Endpoints, updates of ConfigMap/Secret volumes after a pod started, and volume kinds
//! other than ConfigMap, Secret and emptyDir (they get an empty folder). Pods are owned by
//! the Deployment directly: there are no ReplicaSet objects.

pub mod container;
pub mod env;
pub mod images;
pub mod ip;
pub mod launch;
pub mod node;
pub mod pods;
pub mod probes;
pub mod process;
pub mod status;
pub mod volumes;

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::Notify;

use self::{images::ImageTable, ip::LoopbackAddresses, node::Node, process::Spawner};

/// The label selector watched by default: Deployments rendered by the operator.
pub const DEFAULT_SELECTOR: &str = "weir.dev/streamjob";

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
    /// Label selector for Deployments.
    pub selector: String,
    /// Watch one namespace instead of all.
    pub namespace: Option<String>,
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
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the agent until SIGTERM/SIGINT or until the watched PID exits, then stops every
/// pod and deletes their Pod objects. Run it on a current-thread runtime (see [`Spawner`]).
pub async fn run(config: Config) -> Result<(), AgentError> {
    let client = client(&config).await?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::Io {
        what: "creating",
        path: config.state_dir.clone(),
        source,
    })?;
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
    let (deployment_api, pod_api): (Api<Deployment>, Api<Pod>) = match &config.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let deployments = watch(deployment_api, watcher::Config::default().labels(&config.selector), changed.clone());
    // Pods are watched unfiltered: their labels come from templates and need not carry the selector.
    let pods = watch(pod_api, watcher::Config::default(), changed.clone());
    let mut shutdown = shutdown_signal(config.watch_pid)?;
    tokio::select! {
        _ = async { tokio::join!(deployments.wait_until_ready(), pods.wait_until_ready()) } => {}
        _ = &mut shutdown => return Ok(()),
    }
    let state_dir = config.state_dir.clone();
    let ready_file = state_dir.join(READY_FILE);
    std::fs::write(&ready_file, format!("{}\n", std::process::id())).map_err(|source| AgentError::Io {
        what: "writing",
        path: ready_file.clone(),
        source,
    })?;
    tracing::info!(selector = %config.selector, namespace = ?config.namespace, "watching Deployments");
    let pod_kubeconfig = pod_kubeconfig(&config);
    let mut node =
        Node::new(client, config.images, spawner, state_dir.clone(), addresses, deployments, pods, changed.clone())
            .with_pod_kubeconfig(pod_kubeconfig);
    loop {
        node.reconcile().await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    let _ = std::fs::remove_file(&ready_file);
    if config.remove_state_dir {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(())
}

async fn client(config: &Config) -> Result<Client, AgentError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let error = |source| AgentError::Kubeconfig { path: path.clone(), source };
            let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(kube_config)?)
}

/// The agent's own kubeconfig file (`--kubeconfig`, else `KUBECONFIG` when it names one
/// file), as an absolute path, for pods' API access.
fn pod_kubeconfig(config: &Config) -> Option<PathBuf> {
    let path = config
        .kubeconfig
        .clone()
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from).filter(|p| !p.to_string_lossy().contains(':')))?;
    std::fs::canonicalize(path).ok()
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

//! The kubelet's loop: runs the pods the scheduler bound to this node as local processes,
//! stops the ones deleted through the API and then removes their objects, and writes their
//! status. Pods come from the real controllers (a Deployment's ReplicaSet); the agent
//! creates none.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::reflector::Store,
};
use serde_json::json;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    NODE_NAME, api_access,
    container::{ContainerState, Supervisor},
    identity::VolumeOwnership,
    images::ImageTable,
    ip::LoopbackAddresses,
    launch::PodInfo,
    process::Spawner,
    status,
    volumes::{self, Mounts},
};

/// Namespace and name.
type PodKey = (String, String);

/// Default `terminationGracePeriodSeconds`.
const GRACE: Duration = Duration::from_secs(30);
/// How often volumes are written again (ConfigMap and Secret changes, token refreshes).
const VOLUME_RESYNC: Duration = Duration::from_secs(60);

/// A pod the agent runs.
#[derive(Debug)]
struct LocalPod {
    info: Arc<PodInfo>,
    started: SystemTime,
    grace: Duration,
    terminating: bool,
    containers: Vec<Arc<Mutex<ContainerState>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    written: Option<PodStatus>,
}

impl LocalPod {
    fn states(&self) -> Vec<ContainerState> {
        self.containers.iter().filter_map(|c| c.lock().ok().map(|s| s.clone())).collect()
    }

    fn terminate(&mut self) {
        if !self.terminating {
            tracing::info!(namespace = %self.info.namespace, pod = %self.info.name, "stopping");
            self.terminating = true;
            let _ = self.stop.send(true);
        }
    }
}

/// What the kubelet needs besides its pods.
pub struct KubeletConfig {
    /// The agent's API client (the node's identity).
    pub client: Client,
    /// Image → program table, shared with every pod's task.
    pub images: Arc<ImageTable>,
    /// How processes are spawned.
    pub spawner: Spawner,
    /// Where pods' folders go.
    pub state_dir: PathBuf,
    /// The address pool.
    pub addresses: LoopbackAddresses,
    /// The API server's URL, written into pods' kubeconfigs.
    pub server: String,
}

impl std::fmt::Debug for KubeletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConfig")
            .field("state_dir", &self.state_dir)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The node's pods and what it last wrote about them.
pub struct Kubelet {
    config: KubeletConfig,
    api_pods: Store<Pod>,
    changed: Arc<Notify>,
    pods: BTreeMap<PodKey, LocalPod>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("pods", &self.pods.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Kubelet {
    /// A kubelet over the watch cache of the pods bound to this node; `changed` is woken by
    /// the watch and by containers.
    pub fn new(config: KubeletConfig, api_pods: Store<Pod>, changed: Arc<Notify>) -> Self {
        Self { config, api_pods, changed, pods: BTreeMap::new() }
    }

    /// One pass: stop what was deleted, remove the objects of pods that stopped, start what
    /// was bound here, write status.
    pub async fn reconcile(&mut self) {
        let bound: BTreeMap<PodKey, Arc<Pod>> = self
            .api_pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME))
            .filter_map(|p| Some(((p.metadata.namespace.clone()?, p.metadata.name.clone()?), p)))
            .collect();
        for (key, pod) in self.pods.iter_mut().filter(|(_, p)| !p.terminating) {
            match bound.get(key) {
                Some(api) if api.metadata.uid.as_deref() == Some(pod.info.uid.as_str()) => {
                    if api.metadata.deletion_timestamp.is_some() {
                        tracing::info!(namespace = %key.0, pod = %key.1, "deleted through the API");
                        pod.terminate();
                    }
                }
                // Gone, or replaced by a new pod of the same name.
                _ => pod.terminate(),
            }
        }
        self.finish_terminations(&bound).await;
        for (key, api) in &bound {
            if self.pods.contains_key(key) {
                continue;
            }
            let uid = api.metadata.uid.clone().unwrap_or_default();
            let phase = api.status.as_ref().and_then(|s| s.phase.as_deref());
            if api.metadata.deletion_timestamp.is_some() {
                // Deleted before it ran here, or left by an agent that stopped.
                delete_pod(&self.config.client, &key.0, &key.1, &uid).await;
            } else if !matches!(phase, Some("Succeeded" | "Failed"))
                && let Err(e) = self.start_pod(api)
            {
                tracing::warn!(namespace = %key.0, pod = %key.1, "cannot start: {e}");
            }
        }
        self.write_pod_statuses().await;
    }

    /// Deletes the objects of pods whose processes all exited and frees their addresses.
    async fn finish_terminations(&mut self, bound: &BTreeMap<PodKey, Arc<Pod>>) {
        let done: Vec<PodKey> =
            self.pods.iter().filter(|(_, p)| p.terminating && p.task.is_finished()).map(|(k, _)| k.clone()).collect();
        for key in done {
            if let Some(pod) = self.pods.remove(&key) {
                let still_there =
                    bound.get(&key).is_some_and(|api| api.metadata.uid.as_deref() == Some(pod.info.uid.as_str()));
                if still_there {
                    delete_pod(&self.config.client, &key.0, &key.1, &pod.info.uid).await;
                }
                self.config.addresses.release(pod.info.ip);
                self.changed.notify_one();
            }
        }
    }

    /// Gives the pod an address and a folder, then starts its volumes and containers.
    fn start_pod(&mut self, api: &Pod) -> Result<(), StartError> {
        let namespace = api.metadata.namespace.clone().unwrap_or_default();
        let name = api.metadata.name.clone().unwrap_or_default();
        let spec = api.spec.clone().unwrap_or_default();
        let ip = self.config.addresses.allocate().ok_or(StartError::NoAddress)?;
        let dir = self.config.state_dir.join("pods").join(&namespace).join(&name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.config.addresses.release(ip);
            return Err(StartError::Dir(dir, e));
        }
        let info = Arc::new(PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: api.metadata.uid.clone().unwrap_or_default(),
            ip,
            service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
            labels: api.metadata.labels.clone().unwrap_or_default(),
            annotations: api.metadata.annotations.clone().unwrap_or_default(),
            kubeconfig: api_access::service_account_volume(&spec).map(|_| dir.join(api_access::KUBECONFIG_FILE)),
            dir,
            programs: self.config.state_dir.join("bin"),
            ownership: VolumeOwnership::of(
                spec.security_context.as_ref(),
                &spec.containers.iter().map(|c| c.security_context.as_ref()).collect::<Vec<_>>(),
            ),
            security: spec.security_context.clone(),
        });
        let grace =
            spec.termination_grace_period_seconds.map_or(GRACE, |s| Duration::from_secs(s.max(0).unsigned_abs()));
        let containers: Vec<Arc<Mutex<ContainerState>>> =
            spec.containers.iter().map(|c| Arc::new(Mutex::new(ContainerState::new(c)))).collect();
        let (stop, stopped) = watch::channel(false);
        let run = PodRun {
            client: self.config.client.clone(),
            images: self.config.images.clone(),
            spawner: self.config.spawner,
            server: self.config.server.clone(),
            info: info.clone(),
            grace,
            states: containers.clone(),
            changed: self.changed.clone(),
        };
        let task = tokio::spawn(run_pod(run, spec, stopped));
        tracing::info!(%namespace, pod = %name, %ip, "starting");
        let pod = LocalPod {
            info,
            started: SystemTime::now(),
            grace,
            terminating: false,
            containers,
            stop,
            task,
            written: None,
        };
        self.pods.insert((namespace, name), pod);
        Ok(())
    }

    /// Writes each pod's status when it changed; a terminating pod is reported not ready at
    /// once, as the kubelet does, so nobody sends it work while it drains.
    async fn write_pod_statuses(&mut self) {
        let now = SystemTime::now();
        for ((namespace, name), pod) in self.pods.iter_mut() {
            let computed =
                status::pod_status(pod.info.ip, pod.started, &pod.states(), pod.terminating, pod.written.as_ref(), now);
            if pod.written.as_ref() == Some(&computed) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.config.client.clone(), namespace);
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": computed }))).await {
                Ok(_) => pod.written = Some(computed),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(%namespace, pod = %name, "writing status: {e}"),
            }
        }
    }

    /// Stops every pod gracefully and deletes their objects (best effort: the API server
    /// may be gone already).
    pub async fn shutdown(&mut self) {
        let longest = self.pods.values().map(|p| p.grace).max().unwrap_or_default();
        for pod in self.pods.values_mut() {
            pod.terminate();
        }
        let tasks: Vec<&mut JoinHandle<()>> = self.pods.values_mut().map(|p| &mut p.task).collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(longest + Duration::from_secs(5), all).await.is_err() {
            tracing::warn!("some pods did not stop in time");
        }
        let client = &self.config.client;
        let deletes =
            self.pods.iter().map(|((namespace, name), pod)| delete_pod(client, namespace, name, &pod.info.uid));
        let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(deletes)).await;
        self.pods.clear();
    }
}

/// Why a pod could not be started (retried on the next pass).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("no free loopback address")]
    NoAddress,
    #[error("creating {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// Deletes a Pod object at once, as the kubelet does once its containers are gone; the uid
/// precondition spares a new pod of the same name. A missing one is fine.
async fn delete_pod(client: &Client, namespace: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_owned()), resource_version: None }),
        ..DeleteParams::default().grace_period(0)
    };
    match api.delete(name, &params).await {
        Ok(_) => tracing::info!(%namespace, pod = %name, "deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(%namespace, pod = %name, "deleting: {e}"),
    }
}

/// What a pod's task needs.
struct PodRun {
    client: Client,
    images: Arc<ImageTable>,
    spawner: Spawner,
    server: String,
    info: Arc<PodInfo>,
    grace: Duration,
    states: Vec<Arc<Mutex<ContainerState>>>,
    changed: Arc<Notify>,
}

impl PodRun {
    /// Shows `reason` as every container's waiting state.
    fn waiting(&self, reason: &str, message: String) {
        for state in &self.states {
            if let Ok(mut s) = state.lock() {
                s.waiting = Some((reason.to_owned(), message.clone()));
            }
        }
        self.changed.notify_one();
    }

    /// Writes the pod's kubeconfig (see [`api_access`]) once its volumes exist.
    fn write_kubeconfig(&self, spec: &PodSpec, dirs: &volumes::VolumeDirs) -> Result<(), String> {
        let (Some(path), Some(volume)) = (&self.info.kubeconfig, api_access::service_account_volume(spec)) else {
            return Ok(());
        };
        let dir = dirs.get(volume).ok_or_else(|| format!("volume {volume} is not declared"))?;
        let config = api_access::kubeconfig(&self.server, dir, &self.info.namespace);
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// A pod's life: its volumes, then one supervisor per container until stopped, writing
/// the volumes again every minute and before tokens expire.
async fn run_pod(run: PodRun, spec: PodSpec, mut stop: watch::Receiver<bool>) {
    let volumes = spec.volumes.clone().unwrap_or_default();
    let written = loop {
        let attempt = volumes::materialize(&run.client, &run.info, &volumes).await.map_err(|e| e.to_string());
        match attempt.and_then(|w| run.write_kubeconfig(&spec, &w.dirs).map(|()| w)) {
            Ok(written) => break written,
            Err(e) => {
                tracing::warn!(pod = %run.info.name, "volumes: {e}");
                run.waiting("ContainerCreating", e);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let supervisors = spec.containers.iter().zip(&run.states).map(|(container, state)| {
        let termination_message = run.info.dir.join(format!("{}.termination-log", container.name));
        let message_path = container.termination_message_path.as_deref().unwrap_or("/dev/termination-log");
        let mounts =
            Mounts::new(container, &written.dirs).with_termination_message(message_path, termination_message.clone());
        let root = run.info.dir.join("root").join(&container.name);
        let mounts = mounts.clone().with_root(root).unwrap_or_else(|e| {
            tracing::warn!(pod = %run.info.name, container = %container.name, "mount mirror folder: {e}");
            mounts
        });
        let supervisor = Supervisor {
            client: run.client.clone(),
            images: run.images.clone(),
            spawner: run.spawner,
            pod: run.info.clone(),
            container: container.clone(),
            mounts,
            termination_message,
            grace: run.grace,
            state: state.clone(),
            changed: run.changed.clone(),
        };
        supervisor.run(stop.clone())
    });
    let mut containers = std::pin::pin!(futures::future::join_all(supervisors));
    let mut refresh = written.token_refresh;
    loop {
        let next = refresh
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map_or(VOLUME_RESYNC, |d| d.min(VOLUME_RESYNC));
        tokio::select! {
            _ = &mut containers => break,
            () = tokio::time::sleep(next) => {
                match volumes::materialize(&run.client, &run.info, &volumes).await {
                    Ok(again) => refresh = again.token_refresh,
                    Err(e) => tracing::warn!(pod = %run.info.name, "writing volumes again: {e}"),
                }
            }
        }
    }
    run.changed.notify_one();
}

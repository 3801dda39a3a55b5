//! The agent's control loop: the ReplicaSet/Deployment controller and the kubelet in one.
//! It keeps the local pods (processes) in line with the Deployments it watches, creates and
//! deletes their Pod objects, and writes Pod and Deployment status.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentStatus},
    core::v1::{Pod, PodSpec, PodStatus},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::json;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    container::{ContainerState, Supervisor},
    images::ImageTable,
    ip::LoopbackAddresses,
    launch::PodInfo,
    pods::{self, NODE_NAME, PodView, Strategy},
    process::Spawner,
    status::{self, Counts, Progress},
    volumes::{self, Mounts},
};

/// Namespace and name.
type PodKey = (String, String);

/// Default `progressDeadlineSeconds`.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default `terminationGracePeriodSeconds`.
const GRACE: Duration = Duration::from_secs(30);

/// A pod the agent runs.
#[derive(Debug)]
struct LocalPod {
    info: Arc<PodInfo>,
    deployment_uid: String,
    hash: String,
    seq: u64,
    started: SystemTime,
    grace: Duration,
    /// Seen in the API watch, so its later absence means someone deleted it.
    seen: bool,
    terminating: bool,
    containers: Vec<Arc<Mutex<ContainerState>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    written: Option<PodStatus>,
    /// Since when the pod has been ready without interruption, for `minReadySeconds`.
    ready_since: Option<Instant>,
}

impl LocalPod {
    /// Ready for at least `min_ready` (the Deployment controller's "available").
    fn available(&self, min_ready: Duration, now: Instant) -> bool {
        self.ready_since.is_some_and(|since| now.duration_since(since) >= min_ready)
    }

    fn ready(&self) -> bool {
        !self.containers.is_empty()
            && self.containers.iter().all(|c| c.lock().is_ok_and(|s| s.ready && s.running.is_some()))
    }

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

/// The node: its pods, addresses and what it last wrote.
pub struct Node {
    client: Client,
    images: Arc<ImageTable>,
    spawner: Spawner,
    state_dir: std::path::PathBuf,
    addresses: LoopbackAddresses,
    deployments: Store<Deployment>,
    api_pods: Store<Pod>,
    changed: Arc<Notify>,
    pods: BTreeMap<PodKey, LocalPod>,
    seq: u64,
    progress: HashMap<String, Progress>,
    written: HashMap<String, DeploymentStatus>,
    /// Given to pods as KUBECONFIG in place of a service-account token.
    pod_kubeconfig: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("pods", &self.pods.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Node {
    /// A node over the given watch caches; `changed` is woken by watches and containers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        images: ImageTable,
        spawner: Spawner,
        state_dir: std::path::PathBuf,
        addresses: LoopbackAddresses,
        deployments: Store<Deployment>,
        api_pods: Store<Pod>,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            client,
            images: Arc::new(images),
            spawner,
            state_dir,
            addresses,
            deployments,
            api_pods,
            changed,
            pods: BTreeMap::new(),
            seq: 0,
            progress: HashMap::new(),
            written: HashMap::new(),
            pod_kubeconfig: None,
        }
    }

    /// Gives pods that would get a service-account token (`automountServiceAccountToken`
    /// not false) this kubeconfig as KUBECONFIG instead: the agent cannot mint tokens, and
    /// programs read the token from a fixed path that cannot be redirected to the pod's
    /// folder. They act with the kubeconfig's identity (the devcluster enforces no RBAC).
    pub fn with_pod_kubeconfig(mut self, kubeconfig: Option<std::path::PathBuf>) -> Self {
        self.pod_kubeconfig = kubeconfig;
        self
    }

    /// One pass: notice deletions, finish terminations, plan and act per Deployment, clean
    /// up Pod objects nobody runs, write status.
    pub async fn reconcile(&mut self) {
        let deployments: BTreeMap<String, Arc<Deployment>> = self
            .deployments
            .state()
            .into_iter()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .filter_map(|d| d.metadata.uid.clone().map(|uid| (uid, d)))
            .collect();
        let now = Instant::now();
        for pod in self.pods.values_mut() {
            match (pod.ready(), pod.ready_since) {
                (true, None) => pod.ready_since = Some(now),
                (false, Some(_)) => pod.ready_since = None,
                _ => {}
            }
        }
        self.notice_deletions(&deployments);
        self.finish_terminations().await;
        for deployment in deployments.values() {
            self.reconcile_deployment(deployment).await;
        }
        self.delete_orphans(&deployments).await;
        self.write_pod_statuses().await;
        self.progress.retain(|uid, _| deployments.contains_key(uid));
        self.written.retain(|uid, _| deployments.contains_key(uid));
    }

    /// Stops pods whose Deployment went away and pods deleted from the API by someone else
    /// (the ReplicaSet controller then replaces them).
    fn notice_deletions(&mut self, deployments: &BTreeMap<String, Arc<Deployment>>) {
        for ((namespace, name), pod) in self.pods.iter_mut().filter(|(_, p)| !p.terminating) {
            if !deployments.contains_key(&pod.deployment_uid) {
                pod.terminate();
                continue;
            }
            match self.api_pods.get(&ObjectRef::new(name).within(namespace)) {
                Some(api) if api.metadata.uid.as_deref() == Some(pod.info.uid.as_str()) => {
                    if api.metadata.deletion_timestamp.is_some() {
                        tracing::info!(%namespace, pod = %name, "deleted through the API");
                        pod.terminate();
                    } else {
                        pod.seen = true;
                    }
                }
                _ if pod.seen => {
                    tracing::info!(%namespace, pod = %name, "deleted through the API");
                    pod.terminate();
                }
                _ => {}
            }
        }
    }

    /// Deletes the Pod objects of terminated pods and frees their addresses.
    async fn finish_terminations(&mut self) {
        let done: Vec<PodKey> =
            self.pods.iter().filter(|(_, p)| p.terminating && p.task.is_finished()).map(|(k, _)| k.clone()).collect();
        for key in done {
            if let Some(pod) = self.pods.remove(&key) {
                delete_pod(&self.client, &key.0, &key.1).await;
                self.addresses.release(pod.info.ip);
                self.changed.notify_one();
            }
        }
    }

    async fn reconcile_deployment(&mut self, deployment: &Deployment) {
        let (Some(uid), Some(spec)) = (deployment.metadata.uid.clone(), deployment.spec.as_ref()) else { return };
        let hash = pods::template_hash(&spec.template);
        let replicas = pods::desired_replicas(deployment);
        let strategy = Strategy::of(deployment);
        let now = Instant::now();
        let mine = || self.pods.values().filter(|p| p.deployment_uid == uid);
        let views: Vec<PodView> = mine()
            .filter(|p| !p.terminating)
            .map(|p| PodView {
                name: p.info.name.clone(),
                hash: p.hash.clone(),
                ready: p.available(min_ready(deployment), now),
                seq: p.seq,
            })
            .collect();
        let old_terminating = mine().filter(|p| p.terminating && p.hash != hash).count();
        if !spec.paused.unwrap_or(false) {
            let plan = pods::plan(replicas, &hash, strategy, &views, old_terminating);
            let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
            for name in &plan.terminate {
                if let Some(pod) = self.pods.get_mut(&(namespace.clone(), name.clone())) {
                    pod.terminate();
                }
            }
            for _ in 0..plan.create {
                if let Err(e) = self.start_pod(deployment, &hash).await {
                    tracing::warn!(%namespace, deployment = ?deployment.metadata.name, "cannot create a pod: {e}");
                    break;
                }
            }
        }
        self.write_deployment_status(deployment, &uid, &hash).await;
    }

    /// Creates the Pod object, then starts its processes.
    async fn start_pod(&mut self, deployment: &Deployment, hash: &str) -> Result<(), StartError> {
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
        let name = pods::pod_name(&deployment_name, hash, &pods::random_suffix());
        let ip = self.addresses.allocate().ok_or(StartError::NoAddress)?;
        let object = pods::pod_object(deployment, hash, &name);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let created = match api.create(&PostParams::default(), &object).await {
            Ok(created) => created,
            Err(e) => {
                self.addresses.release(ip);
                return Err(StartError::Create(e));
            }
        };
        let dir = self.state_dir.join("pods").join(&namespace).join(&name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.addresses.release(ip);
            delete_pod(&self.client, &namespace, &name).await;
            return Err(StartError::Dir(dir, e));
        }
        let spec = created.spec.clone().unwrap_or_default();
        let info = Arc::new(PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            ip,
            service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
            labels: created.metadata.labels.clone().unwrap_or_default(),
            annotations: created.metadata.annotations.clone().unwrap_or_default(),
            dir,
            kubeconfig: self.pod_kubeconfig.clone().filter(|_| spec.automount_service_account_token != Some(false)),
        });
        let grace =
            spec.termination_grace_period_seconds.map_or(GRACE, |s| Duration::from_secs(s.max(0).unsigned_abs()));
        let containers: Vec<Arc<Mutex<ContainerState>>> =
            spec.containers.iter().map(|c| Arc::new(Mutex::new(ContainerState::new(c)))).collect();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run_pod(
            PodRun {
                client: self.client.clone(),
                images: self.images.clone(),
                spawner: self.spawner,
                info: info.clone(),
                grace,
                states: containers.clone(),
                changed: self.changed.clone(),
            },
            spec,
            stopped,
        ));
        tracing::info!(%namespace, pod = %name, %ip, "created");
        self.seq += 1;
        let pod = LocalPod {
            info,
            deployment_uid: deployment.metadata.uid.clone().unwrap_or_default(),
            hash: hash.to_owned(),
            seq: self.seq,
            started: SystemTime::now(),
            grace,
            seen: false,
            terminating: false,
            containers,
            stop,
            task,
            written: None,
            ready_since: None,
        };
        self.pods.insert((namespace, name), pod);
        Ok(())
    }

    async fn write_deployment_status(&mut self, deployment: &Deployment, uid: &str, hash: &str) {
        let mine: Vec<&LocalPod> = self.pods.values().filter(|p| p.deployment_uid == uid && !p.terminating).collect();
        let count = |f: &dyn Fn(&&LocalPod) -> bool| u32::try_from(mine.iter().filter(|p| f(p)).count()).unwrap_or(0);
        let now = Instant::now();
        let counts = Counts {
            replicas: count(&|_| true),
            updated: count(&|p| p.hash == hash),
            ready: count(&|p| p.ready_since.is_some()),
            available: count(&|p| p.available(min_ready(deployment), now)),
        };
        let progress = self.progress.entry(uid.to_owned()).or_insert_with(|| Progress::new(hash, counts, now));
        progress.observe(hash, counts, now);
        let deadline = deployment
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .map_or(PROGRESS_DEADLINE, |s| Duration::from_secs(s.max(0).unsigned_abs().into()));
        let stalled = progress.stalled(deadline, now);
        let computed = status::deployment_status(deployment, hash, counts, stalled, SystemTime::now());
        if deployment.status.as_ref() == Some(&computed) || self.written.get(uid) == Some(&computed) {
            return;
        }
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": computed }))).await {
            Ok(_) => {
                self.written.insert(uid.to_owned(), computed);
            }
            Err(e) => tracing::warn!(%namespace, deployment = %name, "writing status: {e}"),
        }
    }

    /// Deletes Pod objects on this node that belong to a watched Deployment but that no
    /// process backs (left by an agent that died, or created twice).
    async fn delete_orphans(&mut self, deployments: &BTreeMap<String, Arc<Deployment>>) {
        let orphans: Vec<PodKey> = self
            .api_pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME))
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Deployment" && deployments.contains_key(&o.uid))
            })
            .filter_map(|p| Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?)))
            .filter(|key| !self.pods.contains_key(key))
            .collect();
        for (namespace, name) in orphans {
            tracing::info!(%namespace, pod = %name, "deleting a pod no process backs");
            delete_pod(&self.client, &namespace, &name).await;
        }
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
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": computed }))).await {
                Ok(_) => pod.written = Some(computed),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(%namespace, pod = %name, "writing status: {e}"),
            }
        }
    }

    /// Stops every pod gracefully and deletes their Pod objects (best effort: the API
    /// server may be gone already).
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
        let keys: Vec<PodKey> = self.pods.keys().cloned().collect();
        let deletes = keys.iter().map(|(namespace, name)| delete_pod(&self.client, namespace, name));
        let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(deletes)).await;
        self.pods.clear();
    }
}

/// Why a pod could not be started (retried on the next pass).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("no free loopback address")]
    NoAddress,
    #[error("creating the Pod object: {0}")]
    Create(kube::Error),
    #[error("creating {0}: {1}")]
    Dir(std::path::PathBuf, std::io::Error),
}

/// `spec.minReadySeconds`: how long a pod must be ready to count as available.
fn min_ready(deployment: &Deployment) -> Duration {
    let seconds = deployment.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    Duration::from_secs(seconds.max(0).unsigned_abs().into())
}

/// Deletes a Pod object at once (its processes are gone); a missing one is fine.
async fn delete_pod(client: &Client, namespace: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default().grace_period(0)).await {
        Ok(_) => tracing::info!(%namespace, pod = %name, "deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(%namespace, pod = %name, "deleting: {e}"),
    }
}

/// What a pod's task needs.
struct PodRun {
    client: Client,
    images: Arc<ImageTable>,
    spawner: Spawner,
    info: Arc<PodInfo>,
    grace: Duration,
    states: Vec<Arc<Mutex<ContainerState>>>,
    changed: Arc<Notify>,
}

/// A pod's life: its volumes, then one supervisor per container until stopped.
async fn run_pod(run: PodRun, spec: PodSpec, mut stop: watch::Receiver<bool>) {
    let volumes = spec.volumes.clone().unwrap_or_default();
    let dirs = loop {
        match volumes::materialize(&run.client, &run.info.namespace, &volumes, &run.info.dir).await {
            Ok(dirs) => break dirs,
            Err(e) => {
                tracing::warn!(pod = %run.info.name, "volumes: {e}");
                for state in &run.states {
                    if let Ok(mut s) = state.lock() {
                        s.waiting = Some(("ContainerCreating".into(), e.to_string()));
                    }
                }
                run.changed.notify_one();
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
        let mounts = Mounts::new(container, &dirs).with_termination_message(message_path, termination_message.clone());
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
    futures::future::join_all(supervisors).await;
    run.changed.notify_one();
}

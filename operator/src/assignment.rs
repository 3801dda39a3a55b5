//! Operator-driven partition assignment: the operator gives each runtime pod a slot `I` of
//! `N` (the pod owns every source partition `p` with `p % N == I`) instead of the pods
//! joining a consumer group, whose rebalances are slow on some brokers.
//!
//! [`assign`] asks every pod what it holds, has [`crate::plan::assignment`] plan the orders,
//! and sends them; [`Given`] and [`Settled`] are what the operator remembers between rounds.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use futures::future::join_all;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt;
use tracing::{info, warn};
use weir_admin_api::{
    AssignmentMode, Status,
    client::{AdminClient, CallError},
};

pub use crate::plan::assignment::Slot;
use crate::{
    admin_token::AdminToken,
    plan::assignment::{Command, Observed, Order, Report, plan},
    pod_http,
    render::CONTAINER_NAME,
};

/// How to reach a job's pods' admin API: the port, and the job's token.
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a> {
    /// The admin port.
    pub port: i32,
    /// The job's admin token.
    pub token: &'a AdminToken,
}

impl<'a> Admin<'a> {
    /// The admin API of the pod at `address`, each call given `timeout`.
    pub fn client(&self, address: SocketAddr, timeout: Duration) -> AdminClient<'a> {
        AdminClient::new(address, Some(self.token.expose()), timeout)
    }
}

/// How long a pod may take to answer `GET /status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pod may take to apply an order: it commits the partitions it gives up first.
const ORDER_TIMEOUT: Duration = Duration::from_secs(15);

/// What one round of assignment did, for the reconciler to decide when to look again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Orders the pods applied.
    pub sent: usize,
    /// Orders that failed (the pod's admin server not up yet, say).
    pub failed: usize,
    /// Every slot is held by exactly one live pod.
    pub settled: bool,
    /// Pods with an IP that wait for a slot or keep slots from being given: their admin
    /// server may answer any moment, which no pod event announces. Pods without an IP are
    /// not counted: getting one is an event the controller sees.
    pub pending: usize,
}

impl Outcome {
    /// An order was just sent or failed, or reachable pods wait: worth a look again soon.
    pub fn in_progress(&self) -> bool {
        self.sent > 0 || self.failed > 0 || self.pending > 0
    }
}

/// Asks every unfinished pod of the job what it holds, plans, and sends the orders.
pub async fn assign(job: &str, pods: &[Pod], slots: u32, admin: &Admin<'_>, given: &Given) -> Outcome {
    given.retain(job, pods);
    let observed = observe(job, pods, admin, given).await;
    let plan = plan(slots, &observed);
    // Remembered before sending: an order that times out may still be applied.
    for command in plan.commands.iter().filter(|c| matches!(c.order, Order::Assign(_))) {
        if let Some(process) = pods.iter().find(|pod| pod.name_any() == command.pod).and_then(process) {
            given.remember(job, process);
        }
    }
    if !plan.unknown.is_empty() {
        info!(pods = ?plan.unknown, "no slot is given while these pods may hold partitions");
    }
    let results = join_all(plan.commands.iter().map(|command| send(command, admin))).await;
    let failed = results.iter().filter(|ok| !**ok).count();
    let stuck = |pod: &&Observed| plan.waiting.contains(&pod.name) || plan.unknown.contains(&pod.name);
    let pending = observed.iter().filter(stuck).filter(|pod| pod.address.is_some()).count();
    Outcome { sent: results.len() - failed, failed, settled: plan.settled(), pending }
}

/// `GET /status` on the job's pods that have not finished, all at once.
async fn observe(job: &str, pods: &[Pod], admin: &Admin<'_>, given: &Given) -> Vec<Observed> {
    let unfinished = pods.iter().filter(|pod| !finished(pod));
    join_all(unfinished.map(|pod| async move {
        let address = pod_http::admin_address(pod, admin.port);
        let report = match address {
            Some(address) => report(admin.client(address, STATUS_TIMEOUT).status().await),
            None => Report::Unreachable,
        };
        Observed {
            name: pod.name_any(),
            address,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            fresh: given.fresh(job, pod),
            report,
        }
    }))
    .await
}

/// Sends one order; true when the pod applied it.
async fn send(command: &Command, admin: &Admin<'_>) -> bool {
    let client = admin.client(command.address, ORDER_TIMEOUT);
    let applied = match command.order {
        Order::Assign(slot) => client.assign(slot).await,
        Order::Release => client.release().await,
    };
    match applied {
        Ok(_) => {
            info!(pod = %command.pod, order = ?command.order, "partition assignment");
            true
        }
        Err(e @ CallError::Refused { .. }) => {
            warn!(pod = %command.pod, order = ?command.order, "partition assignment refused: {e}");
            false
        }
        Err(e) => {
            warn!(pod = %command.pod, order = ?command.order, "partition assignment failed: {e}");
            false
        }
    }
}

/// What a `/status` answer says about assignment; one that could not be read counts as none.
fn report(answer: Result<Status, CallError>) -> Report {
    match answer {
        Ok(status) if status.assignment_mode == AssignmentMode::Operator => {
            Report::Answered { assignment: status.assignment, stopped: status.stopped }
        }
        Ok(status) => Report::GroupMode { stopped: status.stopped },
        Err(_) => Report::Unreachable,
    }
}

fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A runtime process: its pod's uid and when its runtime container started (a restarted
/// container is a new process, which holds nothing).
type Process = (String, Timestamp);

/// The running runtime process of `pod`, if its container runs.
fn process(pod: &Pod) -> Option<Process> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let runtime = statuses.iter().find(|c| c.name == CONTAINER_NAME)?;
    let started = runtime.state.as_ref()?.running.as_ref()?.started_at.as_ref()?;
    Some((pod.metadata.uid.clone().unwrap_or_default(), started.0))
}

/// The runtime processes this operator sent a slot to, per job, so that one that stops
/// answering counts as holding nothing only when it never got one.
#[derive(Debug, Default)]
pub struct Given {
    /// When this operator first gave slots (it leads by then): a process started earlier may
    /// hold a slot another leader gave.
    since: OnceLock<Timestamp>,
    jobs: Mutex<HashMap<String, HashSet<Process>>>,
}

impl Given {
    fn since(&self) -> Timestamp {
        *self.since.get_or_init(Timestamp::now)
    }

    fn remember(&self, job: &str, process: Process) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.entry(job.to_owned()).or_default().insert(process);
        }
    }

    /// Whether the runtime process of `pod` (of `job`) is known to hold nothing: not
    /// running, or started since this operator gives slots and never sent one.
    pub fn fresh(&self, job: &str, pod: &Pod) -> bool {
        let since = self.since();
        // No running container holds nothing; a Ready pod without one shown is not trusted.
        let Some(process) = process(pod) else { return !ready(pod) };
        let sent = self.jobs.lock().is_ok_and(|jobs| jobs.get(job).is_some_and(|p| p.contains(&process)));
        process.1 > since && !sent
    }

    /// Keeps only the processes of `pods`, the job's pods now.
    pub fn retain(&self, job: &str, pods: &[Pod]) {
        let live: HashSet<Process> = pods.iter().filter_map(process).collect();
        if let Ok(mut jobs) = self.jobs.lock()
            && let Some(processes) = jobs.get_mut(job)
        {
            processes.retain(|p| live.contains(p));
        }
    }

    /// Forgets a deleted job.
    pub fn forget(&self, job: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(job);
        }
    }
}

/// The pods (and slot count) each job last had a settled assignment with. When every pod of
/// a job is Ready and they are still those pods with that count, the pods need not be asked:
/// a Ready pod holds a slot, and none was added, lost or made stale by a rescale.
#[derive(Debug, Default)]
pub struct Settled {
    jobs: Mutex<HashMap<String, (u32, BTreeSet<String>)>>,
}

impl Settled {
    /// Whether `pods` of job `key` are known to hold one slot of `slots` each.
    pub fn holds(&self, key: &str, slots: u32, pods: &[Pod]) -> bool {
        let unfinished: Vec<&Pod> = pods.iter().filter(|pod| !finished(pod)).collect();
        let steady = unfinished.iter().all(|pod| pod.metadata.deletion_timestamp.is_none() && ready(pod));
        let names: BTreeSet<String> = unfinished.iter().map(|pod| pod.name_any()).collect();
        steady && self.jobs.lock().is_ok_and(|jobs| jobs.get(key) == Some(&(slots, names)))
    }

    /// Remembers (or forgets) that `pods` of job `key` settled on `slots`.
    pub fn record(&self, key: &str, slots: u32, pods: &[Pod], outcome: &Outcome) {
        let Ok(mut jobs) = self.jobs.lock() else { return };
        if outcome.settled && outcome.sent == 0 && outcome.failed == 0 {
            let names = pods.iter().filter(|pod| !finished(pod)).map(|pod| pod.name_any()).collect();
            jobs.insert(key.to_owned(), (slots, names));
        } else {
            jobs.remove(key);
        }
    }

    /// Forgets a deleted job.
    pub fn forget(&self, key: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn running_pod(name: &str, uid: &str, started: &str) -> Pod {
        use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut pod = k8s_pod(name, false);
        pod.metadata.uid = Some(uid.into());
        let running = ContainerStateRunning { started_at: Some(Time(started.parse().unwrap())) };
        let container = ContainerStatus {
            name: CONTAINER_NAME.into(),
            state: Some(ContainerState { running: Some(running), ..Default::default() }),
            ..Default::default()
        };
        if let Some(status) = pod.status.as_mut() {
            status.container_statuses = Some(vec![container]);
        }
        pod
    }

    #[test]
    fn a_process_is_fresh_until_it_is_sent_a_slot_and_again_once_it_restarts() {
        let given = Given::default();
        let now = given.since();
        let at = |seconds: i64| (now + k8s_openapi::jiff::SignedDuration::from_secs(seconds)).to_string();
        let pod = running_pod("a", "uid-a", &at(1));
        assert!(given.fresh("ns/j", &pod), "started since, sent nothing");
        given.remember("ns/j", process(&pod).unwrap());
        assert!(!given.fresh("ns/j", &pod), "sent a slot: silence no longer means nothing held");
        assert!(given.fresh("ns/other", &pod), "per job");
        assert!(given.fresh("ns/j", &running_pod("a", "uid-a", &at(5))), "the container restarted");
        let older = running_pod("b", "uid-b", &at(-1));
        assert!(!given.fresh("ns/j", &older), "started before this operator gave slots: another leader may have");
        assert!(given.fresh("ns/j", &k8s_pod("c", false)), "no running container holds nothing");
        assert!(!given.fresh("ns/j", &k8s_pod("d", true)), "Ready, so something runs");
        given.retain("ns/j", &[]);
        assert!(given.fresh("ns/j", &pod), "forgotten once gone");
    }

    #[test]
    fn the_status_document_is_read_by_mode() {
        let parse = |body: &str| report(serde_json::from_str(body).map_err(|e| CallError::BadAnswer(e.to_string())));
        let operator = r#"{"assignment":{"slot":1,"slots":3},"assignmentMode":"operator","stopped":false,
                          "partitions":[{"partition":1,"position":5,"committed":null,"watermark":null,"openAggregates":0}]}"#;
        assert_eq!(parse(operator), Report::Answered { assignment: Some(Slot { slot: 1, slots: 3 }), stopped: false });
        let unassigned = r#"{"assignment":null,"assignmentMode":"operator","stopped":true}"#;
        assert_eq!(parse(unassigned), Report::Answered { assignment: None, stopped: true });
        assert_eq!(parse(r#"{"assignmentMode":"group","stopped":false}"#), Report::GroupMode { stopped: false });
        assert_eq!(parse(r#"{"stopped":true}"#), Report::GroupMode { stopped: true }, "older runtimes");
        assert_eq!(parse("not json"), Report::Unreachable);
        assert_eq!(report(Err(CallError::Unreachable("refused".into()))), Report::Unreachable);
    }

    fn k8s_pod(name: &str, ready: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        let status = if ready { "True" } else { "False" };
        let condition = PodCondition { type_: "Ready".into(), status: status.into(), ..PodCondition::default() };
        pod.status = Some(PodStatus { conditions: Some(vec![condition]), ..PodStatus::default() });
        pod
    }

    #[test]
    fn a_settled_job_is_not_asked_again_until_its_pods_or_count_change() {
        let settled = Settled::default();
        let pods = [k8s_pod("a", true), k8s_pod("b", true)];
        let done = Outcome { sent: 0, failed: 0, settled: true, pending: 0 };
        assert!(!settled.holds("ns/j", 2, &pods), "nothing known yet");
        settled.record("ns/j", 2, &pods, &done);
        assert!(settled.holds("ns/j", 2, &pods));
        assert!(!settled.holds("ns/j", 3, &pods), "rescaled");
        assert!(!settled.holds("ns/j", 2, &pods[..1]), "a pod lost");
        assert!(!settled.holds("ns/j", 2, &[k8s_pod("a", true), k8s_pod("b", false)]), "restarted");
        settled.record("ns/j", 2, &pods, &Outcome { sent: 1, ..done });
        assert!(!settled.holds("ns/j", 2, &pods), "an order was just sent");
    }
}

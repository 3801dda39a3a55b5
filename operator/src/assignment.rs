//! Operator-driven partition assignment: the operator gives each runtime pod a slot `I` of
//! `N` (the pod owns every source partition `p` with `p % N == I`) instead of the pods
//! joining a consumer group, whose rebalances are slow on some brokers.
//!
//! [`plan`] is pure: from what each pod's `GET /status` said (and what Kubernetes says of
//! the pod) to the orders to send. Safety comes first: two pods must never own a partition
//! at once, so a slot is only given when every pod that could hold it is known not to.
//! [`assign`] does the I/O around it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
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

use crate::{admin_token::AdminToken, pod_http, render::CONTAINER_NAME};

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

pub use weir_admin_api::Slot;

/// What a pod's `GET /status` said, as far as assignment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// No answer (no IP, refused, timed out, not understood).
    Unreachable,
    /// The pod consumes through a consumer group: its partitions are not the operator's to know.
    GroupMode {
        /// Stopped by a savepoint: it consumes nothing more.
        stopped: bool,
    },
    /// The pod runs in operator mode.
    Answered {
        /// The slot it holds.
        assignment: Option<Slot>,
        /// Stopped by a savepoint: it holds nothing, whatever it reports.
        stopped: bool,
    },
}

/// One pod of the job as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The pod's name.
    pub name: String,
    /// Its admin address, once it has an IP.
    pub address: Option<SocketAddr>,
    /// Its deletion has started.
    pub terminating: bool,
    /// Its runtime process cannot hold a slot: its container is not running, or it started
    /// after this operator began giving slots and was sent none. Only then does silence
    /// mean it holds nothing; readiness does not tell (a pod holding a slot can lose it).
    pub fresh: bool,
    /// What its `/status` said.
    pub report: Report,
}

/// What to tell a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `POST /assign?slot=I&slots=N`.
    Assign(Slot),
    /// `POST /release`: commit and give up every partition.
    Release,
}

/// An order for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The pod's name.
    pub pod: String,
    /// Where to send it.
    pub address: SocketAddr,
    /// What to send.
    pub order: Order,
}

/// The orders for one round, and what keeps the assignment from being complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Orders to send, releases first.
    pub commands: Vec<Command>,
    /// Pods that may hold partitions nobody knows of: no slot is given while there are any.
    pub unknown: Vec<String>,
    /// Live pods that hold no slot after this round.
    pub waiting: Vec<String>,
    /// Slots nobody holds after this round.
    pub free: Vec<u32>,
}

impl Plan {
    /// Every slot is held by exactly one live pod, and nothing needs saying.
    pub fn settled(&self) -> bool {
        self.commands.is_empty() && self.unknown.is_empty() && self.waiting.is_empty() && self.free.is_empty()
    }
}

/// What a pod holds, as far as safety goes.
enum Holding {
    Nothing,
    Slot(Slot),
    Unknown,
}

fn holding(pod: &Observed) -> Holding {
    match pod.report {
        Report::Answered { stopped: true, .. } | Report::GroupMode { stopped: true } => Holding::Nothing,
        Report::Answered { assignment: Some(slot), .. } => Holding::Slot(slot),
        Report::Answered { assignment: None, .. } => Holding::Nothing,
        Report::GroupMode { stopped: false } => Holding::Unknown,
        Report::Unreachable if !pod.terminating && pod.fresh => Holding::Nothing,
        Report::Unreachable => Holding::Unknown,
    }
}

/// The orders that bring the pods to one slot each of `slots`, without two pods ever owning
/// a partition at once:
/// - a holder of a slot of another count (or a second holder of a slot) is released, and no
///   slot is given while a holder of another count remains: its partitions overlap any slot;
/// - a pod that may hold something unknown (a Ready or terminating pod that does not answer,
///   a pod consuming through a group) keeps every slot from being given;
/// - free slots go in order to the live pods without one, sorted by name; a live pod keeps
///   the slot it holds, so losing a pod moves only its slot.
pub fn plan(slots: u32, pods: &[Observed]) -> Plan {
    let mut pods: Vec<&Observed> = pods.iter().collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = Plan::default();
    let mut releases = Vec::new();
    let mut stale = false;
    // Holders of each current slot, live pods first so a terminating duplicate is the one let go.
    let mut holders: BTreeMap<u32, Vec<&Observed>> = BTreeMap::new();
    for pod in &pods {
        match holding(pod) {
            Holding::Nothing => {}
            Holding::Unknown => plan.unknown.push(pod.name.clone()),
            Holding::Slot(held) if held.slots == slots && held.slot < slots => {
                holders.entry(held.slot).or_default().push(pod);
            }
            Holding::Slot(_) => {
                stale = true;
                releases.extend(pod.address.map(|address| (*pod, address)));
            }
        }
    }
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for held in holders.values_mut() {
        held.sort_by_key(|pod| pod.terminating);
        let mut rest = held.iter();
        kept.extend(rest.next().map(|pod| pod.name.as_str()));
        releases.extend(rest.filter_map(|pod| pod.address.map(|address| (*pod, address))));
    }
    plan.commands.extend(releases.into_iter().map(|(pod, address)| Command {
        pod: pod.name.clone(),
        address,
        order: Order::Release,
    }));
    let live_without = |pod: &&&Observed| {
        !pod.terminating
            && !kept.contains(pod.name.as_str())
            && !matches!(pod.report, Report::Answered { stopped: true, .. } | Report::GroupMode { stopped: true })
    };
    let mut free: Vec<u32> = (0..slots).filter(|s| !holders.contains_key(s)).collect();
    if plan.unknown.is_empty() && !stale {
        let candidates = pods.iter().filter(live_without).filter_map(|pod| assignable(pod).map(|a| (pod, a)));
        for ((pod, address), slot) in candidates.zip(&free) {
            let order = Order::Assign(Slot { slot: *slot, slots });
            plan.commands.push(Command { pod: pod.name.clone(), address, order });
        }
    }
    let given: BTreeSet<&str> =
        plan.commands.iter().filter(|c| matches!(c.order, Order::Assign(_))).map(|c| c.pod.as_str()).collect();
    free.drain(..given.len());
    plan.waiting = pods
        .iter()
        .filter(live_without)
        .filter(|pod| !given.contains(pod.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    plan.free = free;
    plan
}

/// The address of a pod that answered in operator mode, holds nothing and can be given a slot.
fn assignable(pod: &Observed) -> Option<SocketAddr> {
    matches!(pod.report, Report::Answered { assignment: None, stopped: false }).then_some(pod.address).flatten()
}

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

    fn address(name: &str) -> SocketAddr {
        let last = name.bytes().last().unwrap_or(0);
        SocketAddr::from(([127, 0, 0, last], 9000))
    }

    /// A live, answering, operator-mode pod holding `assignment`.
    fn pod(name: &str, assignment: Option<(u32, u32)>) -> Observed {
        Observed {
            name: name.into(),
            address: Some(address(name)),
            terminating: false,
            fresh: assignment.is_none(),
            report: Report::Answered {
                assignment: assignment.map(|(slot, slots)| Slot { slot, slots }),
                stopped: false,
            },
        }
    }

    fn unreachable(name: &str, fresh: bool, terminating: bool) -> Observed {
        Observed { name: name.into(), address: None, terminating, fresh, report: Report::Unreachable }
    }

    fn stopped(mut pod: Observed) -> Observed {
        if let Report::Answered { stopped, .. } = &mut pod.report {
            *stopped = true;
        }
        pod
    }

    fn terminating(mut pod: Observed) -> Observed {
        pod.terminating = true;
        pod
    }

    /// The plan's orders as `(pod, order)` in a short form: `a=0/3`, `b=release`.
    fn orders(slots: u32, pods: &[Observed]) -> Vec<String> {
        plan(slots, pods)
            .commands
            .iter()
            .map(|c| match c.order {
                Order::Assign(s) => format!("{}={}/{}", c.pod, s.slot, s.slots),
                Order::Release => format!("{}=release", c.pod),
            })
            .collect()
    }

    #[test]
    fn new_pods_get_the_slots_in_order_of_their_names() {
        assert_eq!(orders(3, &[pod("c", None), pod("a", None), pod("b", None)]), ["a=0/3", "b=1/3", "c=2/3"]);
        assert!(plan(2, &[pod("a", Some((0, 2))), pod("b", Some((1, 2)))]).settled());
    }

    #[test]
    fn slots_are_sticky_so_a_lost_pod_moves_only_its_slot() {
        let cases: &[(&[Observed], &[&str])] = &[
            (&[pod("a", Some((0, 3))), pod("b", None), pod("c", Some((2, 3)))], &["b=1/3"]),
            (&[pod("a", None), pod("b", Some((0, 3))), pod("c", Some((2, 3)))], &["a=1/3"]),
            (&[pod("a", Some((0, 3))), pod("b", Some((1, 3))), pod("c", Some((2, 3)))], &[]),
        ];
        for (pods, expected) in cases {
            assert_eq!(orders(3, pods), *expected, "{pods:?}");
        }
    }

    #[test]
    fn stopped_pods_hold_nothing_and_get_nothing() {
        let pods = [stopped(pod("a", Some((0, 2)))), pod("b", None), pod("c", None)];
        assert_eq!(orders(2, &pods), ["b=0/2", "c=1/2"]);
        let group = Observed { report: Report::GroupMode { stopped: true }, ..pod("d", None) };
        assert_eq!(orders(1, &[group, pod("e", None)]), ["e=0/1"]);
    }

    #[test]
    fn a_terminating_pod_that_answers_holds_what_it_reports() {
        let pods = [terminating(pod("a", Some((0, 2)))), pod("b", None), pod("c", None)];
        let planned = plan(2, &pods);
        assert_eq!(orders(2, &pods), ["b=1/2"], "slot 0 waits for a to go");
        assert_eq!(planned.waiting, ["c"]);
        assert_eq!(orders(2, &[terminating(pod("a", None)), pod("b", None)]), ["b=0/2"]);
    }

    #[test]
    fn a_terminating_pod_that_does_not_answer_blocks_every_slot() {
        for fresh in [true, false] {
            let planned = plan(2, &[unreachable("a", fresh, true), pod("b", None), pod("c", None)]);
            assert!(planned.commands.is_empty(), "{planned:?}");
            assert_eq!(planned.unknown, ["a"]);
            assert_eq!(planned.waiting, ["b", "c"]);
        }
    }

    #[test]
    fn a_live_pod_that_does_not_answer_blocks_unless_it_never_got_a_slot() {
        let starting = plan(2, &[unreachable("a", true, false), pod("b", None)]);
        assert_eq!(starting.commands, [Command { pod: "b".into(), address: address("b"), order: assign(0, 2) }]);
        assert_eq!(starting.waiting, ["a"], "a gets slot 1 once it answers");
        assert_eq!(starting.free, [1]);
        // It held slot 0 and went silent (not Ready, say): its slot stays with it.
        let silent = plan(2, &[unreachable("a", false, false), pod("b", None)]);
        assert!(silent.commands.is_empty(), "{silent:?}");
        assert_eq!(silent.unknown, ["a"]);
    }

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
    fn a_pod_consuming_through_a_group_blocks_every_slot() {
        let group = Observed { report: Report::GroupMode { stopped: false }, ..pod("a", None) };
        let planned = plan(1, &[group, pod("b", None)]);
        assert!(planned.commands.is_empty());
        assert_eq!(planned.unknown, ["a"]);
    }

    #[test]
    fn holders_of_another_count_are_released_before_any_slot_is_given() {
        // A rescale 2 → 3 that only added a pod.
        let pods = [pod("a", Some((0, 2))), pod("b", Some((1, 2))), pod("c", None)];
        assert_eq!(orders(3, &pods), ["a=release", "b=release"]);
        assert_eq!(plan(3, &pods).waiting, ["a", "b", "c"]);
        // A holder of the right count keeps its slot meanwhile.
        let pods = [pod("a", Some((0, 2))), pod("b", Some((1, 3))), pod("c", None)];
        assert_eq!(orders(3, &pods), ["a=release"]);
        // A rescale 3 → 2 that only removed one.
        let pods = [pod("a", Some((0, 3))), pod("b", Some((2, 3)))];
        assert_eq!(orders(2, &pods), ["a=release", "b=release"]);
        // Once released, they are given slots of the new count.
        assert_eq!(orders(2, &[pod("a", None), pod("b", None)]), ["a=0/2", "b=1/2"]);
    }

    #[test]
    fn a_terminating_holder_of_another_count_is_released_too() {
        let pods = [terminating(pod("a", Some((2, 3)))), pod("b", Some((0, 2))), pod("c", None)];
        assert_eq!(orders(2, &pods), ["a=release"]);
    }

    #[test]
    fn of_two_pods_holding_one_slot_the_later_is_released() {
        let pods = [pod("b", Some((0, 2))), pod("a", Some((0, 2))), pod("c", None)];
        assert_eq!(orders(2, &pods), ["b=release", "c=1/2"]);
        let pods = [terminating(pod("a", Some((0, 2)))), pod("b", Some((0, 2)))];
        assert_eq!(orders(2, &pods), ["a=release"], "the live pod keeps it");
    }

    #[test]
    fn more_pods_than_slots_leave_the_last_waiting() {
        let planned = plan(1, &[pod("a", None), pod("b", None)]);
        assert_eq!(planned.commands.len(), 1);
        assert_eq!(planned.waiting, ["b"]);
        assert!(!planned.settled());
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

    fn assign(slot: u32, slots: u32) -> Order {
        Order::Assign(Slot { slot, slots })
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

//! Partition assignment, planned: from what each pod's `GET /status` said (and what
//! Kubernetes says of the pod) to the orders to send. Safety comes first: two pods must never
//! own a partition at once, so a slot is only given when every pod that could hold it is
//! known not to. `crate::assignment` asks the pods and sends the orders.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

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

#[cfg(test)]
mod tests {
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

    fn assign(slot: u32, slots: u32) -> Order {
        Order::Assign(Slot { slot, slots })
    }
}

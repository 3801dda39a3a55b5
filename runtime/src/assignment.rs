//! How an instance gets its partitions. Standalone, instances share them through a Kafka
//! consumer group. Under the operator, the operator gives each pod a slot (like Flink's split
//! enumerator): no group membership, so a rescale does not wait on rebalance rounds, and
//! the operator decides who owns what from the pods it sees.

use serde::{Deserialize, Serialize};

/// Who assigns partitions to this instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentMode {
    /// The Kafka consumer group: instances join and rebalance among themselves.
    #[default]
    Group,
    /// The operator, over `POST /assign` and `POST /release`.
    Operator,
}

/// Slot `slot` of `slots`: the instance owns every partition `p` with `p % slots == slot`,
/// of the source topic and, in a repartitioned job, of the internal topic too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// This instance's slot.
    pub slot: u32,
    /// How many slots the job has (its pods).
    pub slots: u32,
}

/// A slot that owns nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("slot {slot} of {slots} does not exist: slots are numbered from 0 to slots - 1")]
pub struct InvalidSlot {
    slot: u32,
    slots: u32,
}

impl Slot {
    /// A slot, when `slot < slots`.
    pub fn new(slot: u32, slots: u32) -> Result<Self, InvalidSlot> {
        if slot < slots { Ok(Self { slot, slots }) } else { Err(InvalidSlot { slot, slots }) }
    }

    /// Whether the slot owns `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.slots == self.slot)
    }

    /// The partitions the slot owns of a topic with `count` partitions, ascending.
    pub fn partitions(&self, count: usize) -> Vec<i32> {
        (0..i32::try_from(count).unwrap_or(i32::MAX)).filter(|&p| self.owns(p)).collect()
    }
}

/// What moves when an instance owning `current` is given `slot` on a topic of `count`
/// partitions: the partitions to hand over first, then the ones to take.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Owned now, not by the slot: committed and released first.
    pub revoke: Vec<i32>,
    /// The slot's, not owned now.
    pub assign: Vec<i32>,
}

/// The moves from `current` to `slot` (`None`: release everything).
pub fn moves(current: &[i32], slot: Option<Slot>, count: usize) -> Moves {
    let wanted = slot.map(|s| s.partitions(count)).unwrap_or_default();
    Moves {
        revoke: current.iter().copied().filter(|p| !wanted.contains(p)).collect(),
        assign: wanted.into_iter().filter(|p| !current.contains(p)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_partitions_round_robin_and_cover_them_once() {
        let slots: Vec<Slot> = (0..3).map(|s| Slot::new(s, 3).unwrap()).collect();
        assert_eq!(slots[0].partitions(7), vec![0, 3, 6]);
        assert_eq!(slots[1].partitions(7), vec![1, 4]);
        assert_eq!(slots[2].partitions(7), vec![2, 5]);
        for partition in 0..7 {
            assert_eq!(slots.iter().filter(|s| s.owns(partition)).count(), 1, "partition {partition}");
        }
    }

    #[test]
    fn a_slot_past_the_count_is_refused() {
        assert_eq!(Slot::new(2, 2), Err(InvalidSlot { slot: 2, slots: 2 }));
        assert!(Slot::new(0, 0).is_err());
        assert!(Slot::new(1, 2).is_ok());
    }

    #[test]
    fn moves_hand_over_what_the_new_slot_does_not_own_and_take_the_rest() {
        let one_of_two = Slot::new(1, 2).unwrap();
        assert_eq!(moves(&[0, 1, 2, 3], Some(one_of_two), 4), Moves { revoke: vec![0, 2], assign: vec![] });
        assert_eq!(moves(&[], Some(one_of_two), 4), Moves { revoke: vec![], assign: vec![1, 3] });
        let zero_of_three = Slot::new(0, 3).unwrap();
        assert_eq!(moves(&[0, 2], Some(zero_of_three), 4), Moves { revoke: vec![2], assign: vec![3] });
        assert_eq!(moves(&[1, 3], Some(one_of_two), 4), Moves::default(), "the same slot again moves nothing");
        assert_eq!(moves(&[1, 3], None, 4), Moves { revoke: vec![1, 3], assign: vec![] });
    }
}

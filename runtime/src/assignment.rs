//! How an instance gets its partitions. Standalone, instances share them through a Kafka
//! consumer group. Under the operator, the operator gives each pod a slot (like Flink's split
//! enumerator): no group membership, so a rescale does not wait on rebalance rounds, and
//! the operator decides who owns what from the pods it sees.

pub use weir_admin_api::{AssignmentMode, InvalidSlot, Slot};

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

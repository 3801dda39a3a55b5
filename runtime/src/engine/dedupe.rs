//! `dedupe`: drops a row whose key was already passed on with an event time less than
//! `within` apart.
//!
//! The state is the event time (and offset) of the newest row passed on for each key. It is
//! kept until the watermark is `2 × within` past it: a row that is not late (less than
//! `within` behind the watermark) can only repeat a row less than `within` from it, so no
//! key it could repeat has been forgotten, and the outcome does not depend on how the rows
//! were batched or when the watermark moved. Rows `within` or more behind the watermark are
//! late, set aside like rows of closed windows.

use std::{collections::BTreeMap, sync::Arc};

use arrow::{
    array::{ArrayRef, BooleanArray, Int64Array, UInt32Array},
    compute::{filter_record_batch, take_record_batch},
    datatypes::{DataType, Field, Schema},
    record_batch::RecordBatch,
};
use hashbrown::HashMap;

use super::{
    EVENT_TIME, EngineError, OFFSET,
    keys::KeyCodec,
    operator::{Operator, Output, StateError, int_column},
};

/// Snapshot columns besides the keys: when and where each key was last passed on.
const STATE_AT: &str = "__weir_dedupe_at";
const STATE_OFFSET: &str = "__weir_dedupe_offset";

/// The newest row passed on for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: i64,
    offset: i64,
}

/// Drops repeats of a key within a time bound.
#[derive(Debug)]
pub struct Dedupe {
    step: String,
    /// Milliseconds of event time within which a key repeats.
    within: i64,
    keys: KeyCodec,
    seen: HashMap<Box<[u8]>, Seen>,
    /// When keys may be forgotten (event time), oldest first; an entry whose key was seen
    /// again since is stale and skipped.
    expiry: BTreeMap<i64, Vec<Box<[u8]>>>,
    /// How many keys were last seen at each offset, for the oldest one still needed.
    offsets: BTreeMap<i64, usize>,
}

impl Dedupe {
    /// The step at `step`: rows with one value of `keys` are one row within `within` ms.
    pub fn new(step: String, keys: Vec<String>, within: i64) -> Self {
        Self {
            step,
            within: within.max(1),
            keys: KeyCodec::new(keys),
            seen: HashMap::new(),
            expiry: BTreeMap::new(),
            offsets: BTreeMap::new(),
        }
    }

    fn forget_after(&self, at: i64) -> i64 {
        at.saturating_add(self.within.saturating_mul(2))
    }

    fn remember(&mut self, key: Box<[u8]>, seen: Seen) {
        if let Some(old) = self.seen.insert(key.clone(), seen) {
            self.drop_offset(old.offset);
        }
        *self.offsets.entry(seen.offset).or_default() += 1;
        self.expiry.entry(self.forget_after(seen.at)).or_default().push(key);
    }

    fn drop_offset(&mut self, offset: i64) {
        if let Some(count) = self.offsets.get_mut(&offset) {
            *count -= 1;
            if *count == 0 {
                self.offsets.remove(&offset);
            }
        }
    }

    fn fail(&self, source: impl Into<StateError>) -> EngineError {
        EngineError::State { step: self.step.clone(), source: source.into() }
    }
}

impl Operator for Dedupe {
    fn step(&self) -> &str {
        &self.step
    }

    fn fresh(&self) -> Box<dyn Operator> {
        Box::new(Self::new(self.step.clone(), self.keys.fields().to_vec(), self.within))
    }

    fn process(&mut self, batch: RecordBatch, watermark: i64) -> Result<Output, EngineError> {
        if batch.num_rows() == 0 {
            return Ok(Output::rows(batch));
        }
        // Everything that can fail comes first, and the state changes only at the end.
        let times = int_column(&batch, EVENT_TIME).map_err(|e| self.fail(e))?.values();
        let offsets = int_column(&batch, OFFSET).map_err(|e| self.fail(e))?.values();
        let rows = self.keys.encode(&batch).map_err(|e| self.fail(e))?;
        let mut passed: HashMap<&[u8], Seen> = HashMap::new();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let (mut late, mut duplicates) = (Vec::new(), 0);
        for row in 0..batch.num_rows() {
            let (at, offset) = (times[row], offsets[row]);
            if at.saturating_add(self.within) <= watermark {
                late.push(row as u32);
                keep.push(false);
                continue;
            }
            let key = rows.row(row).data();
            let last = passed.get(key).or_else(|| self.seen.get(key)).copied();
            if last.is_some_and(|last| at.abs_diff(last.at) < self.within.unsigned_abs()) {
                duplicates += 1;
                keep.push(false);
                continue;
            }
            keep.push(true);
            if last.is_none_or(|last| at > last.at) {
                passed.insert(key, Seen { at, offset });
            }
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))?;
        let late = match late.is_empty() {
            true => None,
            false => Some(take_record_batch(&batch, &UInt32Array::from(late))?),
        };
        for (key, seen) in passed {
            self.remember(key.into(), seen);
        }
        Ok(Output { rows: Some(kept), late, duplicates })
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Option<RecordBatch>, EngineError> {
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let (forget_at, keys) = entry.remove_entry();
            for key in keys {
                let current = self.seen.get(&key).copied();
                if let Some(seen) = current.filter(|s| self.forget_after(s.at) == forget_at) {
                    self.seen.remove(&key);
                    self.drop_offset(seen.offset);
                }
            }
        }
        Ok(None)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&self) -> Result<Option<RecordBatch>, EngineError> {
        if self.seen.is_empty() {
            return Ok(None);
        }
        let (mut ats, mut offsets) = (Vec::with_capacity(self.seen.len()), Vec::with_capacity(self.seen.len()));
        let mut key_rows = Vec::with_capacity(self.seen.len());
        for (key, seen) in &self.seen {
            key_rows.push(&**key);
            ats.push(seen.at);
            offsets.push(seen.offset);
        }
        let Some(keys) = self.keys.decode(key_rows).map_err(|e| self.fail(e))? else { return Ok(None) };
        let (mut fields, mut columns): (Vec<Field>, Vec<ArrayRef>) = keys.into_iter().unzip();
        for (name, values) in [(STATE_AT, ats), (STATE_OFFSET, offsets)] {
            fields.push(Field::new(name, DataType::Int64, false));
            columns.push(Arc::new(Int64Array::from(values)));
        }
        Ok(Some(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<(), EngineError> {
        let ats = int_column(state, STATE_AT).map_err(|e| self.fail(e))?.values();
        let offsets = int_column(state, STATE_OFFSET).map_err(|e| self.fail(e))?.values();
        let rows = self.keys.encode(state).map_err(|e| self.fail(e))?;
        for row in 0..state.num_rows() {
            self.remember(rows.row(row).data().into(), Seen { at: ats[row], offset: offsets[row] });
        }
        Ok(())
    }

    fn oldest_needed_offset(&self) -> Option<i64> {
        self.offsets.keys().next().copied()
    }

    fn state_bytes(&self) -> usize {
        let entry = size_of::<Box<[u8]>>() + size_of::<Seen>();
        let seen: usize = self.seen.keys().map(|k| k.len() + entry).sum();
        let expiry: usize = self.expiry.values().flatten().map(|k| k.len() + size_of::<Box<[u8]>>()).sum();
        seen + expiry + self.offsets.len() * 2 * size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    /// Rows (id, event time) at offsets from `first_offset` on.
    fn rows(ids: &[&str], times: &[i64], first_offset: i64) -> RecordBatch {
        let offsets: Vec<i64> = (first_offset..first_offset + ids.len() as i64).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(ids.to_vec())) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from(times.to_vec())) as ArrayRef),
            (OFFSET, Arc::new(Int64Array::from(offsets)) as ArrayRef),
        ])
        .unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<String> {
        batch.column_by_name("id").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_owned()).collect()
    }

    fn dedupe() -> Dedupe {
        Dedupe::new("pipeline[0].dedupe".into(), vec!["id".into()], 10)
    }

    #[test]
    fn repeats_within_the_bound_are_dropped_in_a_batch_and_across_batches() {
        let mut op = dedupe();
        let out = op.process(rows(&["a", "b", "a", "c"], &[0, 1, 5, 2], 0), i64::MIN).unwrap();
        assert_eq!(ids(&out.rows.unwrap()), ["a", "b", "c"]);
        assert_eq!(out.duplicates, 1);
        let out = op.process(rows(&["b", "a", "c"], &[10, 10, 12], 4), i64::MIN).unwrap();
        assert_eq!(ids(&out.rows.unwrap()), ["a", "c"], "b is 9 after the b passed on; a and c are 10 after theirs");
        assert_eq!(out.duplicates, 1);
    }

    #[test]
    fn keys_are_forgotten_twice_the_bound_behind_the_watermark_and_late_rows_set_aside() {
        let mut op = dedupe();
        op.process(rows(&["a"], &[100], 0), i64::MIN).unwrap();
        op.on_watermark(119).unwrap();
        assert_eq!(op.seen.len(), 1, "kept while a row it could repeat may still come");
        assert_eq!(op.oldest_needed_offset(), Some(0));
        op.on_watermark(120).unwrap();
        assert!(op.seen.is_empty() && op.offsets.is_empty() && op.expiry.is_empty());
        assert_eq!(op.oldest_needed_offset(), None);
        let out = op.process(rows(&["a", "b"], &[110, 111], 1), 120).unwrap();
        assert_eq!(ids(&out.late.unwrap()), ["a"], "110 is the bound behind 120: late");
        assert_eq!(ids(&out.rows.unwrap()), ["b"]);
    }

    #[test]
    fn a_key_seen_again_later_is_kept_until_its_newest_row_expires() {
        let mut op = dedupe();
        op.process(rows(&["a"], &[0], 0), i64::MIN).unwrap();
        op.process(rows(&["a"], &[15], 1), i64::MIN).unwrap();
        op.on_watermark(25).unwrap();
        assert_eq!(op.seen.len(), 1, "the stale expiry of the first row does not forget the second");
        assert_eq!(op.oldest_needed_offset(), Some(1));
        let out = op.process(rows(&["a"], &[20], 2), 25).unwrap();
        assert_eq!(out.duplicates, 1);
    }

    #[test]
    fn the_state_restores_with_its_key_types() {
        let mut op = dedupe();
        op.process(rows(&["a", "b"], &[0, 3], 7), i64::MIN).unwrap();
        let state = op.snapshot().unwrap().unwrap();
        assert_eq!(state.num_rows(), 2);
        let mut back = dedupe();
        back.restore(&state).unwrap();
        assert_eq!(back.oldest_needed_offset(), Some(7));
        let out = back.process(rows(&["b", "c"], &[5, 5], 9), i64::MIN).unwrap();
        assert_eq!(ids(&out.rows.unwrap()), ["c"]);
        let at = state.column_by_name(STATE_AT).unwrap().as_primitive::<Int64Type>();
        assert_eq!(at.values().iter().sum::<i64>(), 3);
    }

    #[test]
    fn a_failed_batch_changes_nothing() {
        let mut op = dedupe();
        let no_offsets = RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from(vec![0])) as ArrayRef),
        ])
        .unwrap();
        assert!(op.process(no_offsets, i64::MIN).is_err());
        assert!(op.seen.is_empty());
        let out = op.process(rows(&["a"], &[0], 0), i64::MIN).unwrap();
        assert_eq!(out.duplicates, 0);
    }
}

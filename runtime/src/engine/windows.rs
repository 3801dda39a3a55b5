//! Windowed aggregation of one partition's records: state by (key, window), results when
//! the watermark passes a window's end.

use std::{collections::BTreeMap, hash::BuildHasher, sync::Arc};

use arrow::{
    array::{Array, ArrayRef, Int64Array, StringArray},
    datatypes::{DataType, Field, Schema, SchemaRef},
    error::ArrowError,
    record_batch::RecordBatch,
};
use chrono::{DateTime, SecondsFormat};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use weir_crds::{
    Aggregation,
    pipeline::{WINDOW_END, WINDOW_START},
};

use super::{
    EVENT_TIME, OFFSET,
    accumulate::{Accumulators, Updates},
    keys::{KeyCodec, column_or_nulls},
    operator::{StateError, int_column},
    window::WindowKind,
};

/// A fixed window: its groups (slot ids, found by key), and the oldest source offset that
/// contributed to it.
#[derive(Debug, Default)]
struct OpenWindow {
    groups: HashTable<u32>,
    slots: Vec<u32>,
    min_offset: i64,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    last: i64,
    slot: u32,
    min_offset: i64,
}

/// The keyed window state of one partition.
#[derive(Debug)]
pub struct KeyedWindows {
    kind: WindowKind,
    keys: KeyCodec,
    accumulators: Accumulators,
    /// Fixed windows by start.
    windows: BTreeMap<i64, OpenWindow>,
    /// Key row of each slot: compared on lookup, decoded when the window closes.
    slot_keys: Vec<Box<[u8]>>,
    hasher: DefaultHashBuilder,
    /// Session windows: key row → open sessions, ordered by start.
    sessions: HashMap<Box<[u8]>, Vec<Session>>,
    updates: Updates,
    /// Rows of the current batch per window start (reused between batches).
    buckets: Vec<(i64, Vec<u32>)>,
}

/// What one batch did to the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows whose every window had already closed.
    pub late_rows: Vec<u32>,
}

impl KeyedWindows {
    /// Empty state for windows of `kind` over `key_fields`, computing `aggregations`.
    pub fn new(kind: WindowKind, key_fields: Vec<String>, aggregations: &[Aggregation]) -> Self {
        Self {
            kind,
            keys: KeyCodec::new(key_fields),
            accumulators: Accumulators::new(aggregations),
            windows: BTreeMap::new(),
            slot_keys: Vec::new(),
            hasher: DefaultHashBuilder::default(),
            sessions: HashMap::new(),
            updates: Updates::default(),
            buckets: Vec::new(),
        }
    }

    /// Number of (key, window) aggregates held.
    pub fn open_aggregates(&self) -> usize {
        self.accumulators.live_slots()
    }

    /// Bytes the state holds, from its containers' sizes: keys, windows, sessions and
    /// aggregates. What the state budget is measured against.
    pub fn state_bytes(&self) -> usize {
        let boxed = size_of::<Box<[u8]>>();
        let keys: usize = self.slot_keys.iter().map(|k| k.len() + boxed).sum();
        let windows: usize = self
            .windows
            .values()
            .map(|w| size_of::<OpenWindow>() + w.groups.capacity() * (size_of::<u32>() + 1) + w.slots.capacity() * 4)
            .sum();
        let sessions: usize =
            self.sessions.iter().map(|(k, v)| k.len() + boxed + v.capacity() * size_of::<Session>()).sum();
        keys + windows + sessions + self.accumulators.heap_bytes()
    }

    /// The oldest source offset an open window still needs, if any window is open.
    pub fn min_open_offset(&self) -> Option<i64> {
        let fixed = self.windows.values().map(|w| w.min_offset);
        let sessions = self.sessions.values().flatten().map(|s| s.min_offset);
        fixed.chain(sessions).min()
    }

    /// Adds the rows of `batch` to their windows. Rows whose windows all ended at or before
    /// `watermark` are late: they are returned, not added.
    pub fn apply(&mut self, batch: &RecordBatch, watermark: i64) -> Result<Applied, StateError> {
        let mut applied = Applied::default();
        if batch.num_rows() == 0 {
            return Ok(applied);
        }
        // Everything that can fail comes first: a failed batch leaves no state behind.
        let prepared = self.accumulators.prepare(&self.aggregate_inputs(batch))?;
        let times = int_column(batch, EVENT_TIME)?;
        let offsets = int_column(batch, OFFSET)?;
        let rows = self.keys.encode(batch)?;
        let (times, offsets) = (times.values(), offsets.values());
        let mut updates = std::mem::take(&mut self.updates);
        updates.clear();
        match self.kind {
            WindowKind::Session { gap } => {
                for row in 0..batch.num_rows() {
                    let (ts, offset) = (times[row], offsets[row]);
                    if ts + gap <= watermark {
                        applied.late_rows.push(row as u32);
                        continue;
                    }
                    let slot = self.session_slot(rows.row(row).as_ref(), ts, offset, gap, &mut updates);
                    updates.push(row, slot);
                }
            }
            kind => {
                // Bucket rows by window start first (a batch usually spans one or two windows),
                // then find each row's group within its window.
                let mut buckets = std::mem::take(&mut self.buckets);
                buckets.iter_mut().for_each(|(_, rows)| rows.clear());
                let mut last = 0;
                for row in 0..batch.num_rows() {
                    let assigned = kind.open_windows(times[row], watermark, |start| {
                        if buckets.get(last).is_none_or(|(s, _)| *s != start) {
                            last = match buckets.iter().position(|(s, rows)| *s == start || rows.is_empty()) {
                                Some(i) => i,
                                None => {
                                    buckets.push((start, Vec::new()));
                                    buckets.len() - 1
                                }
                            };
                            buckets[last].0 = start;
                        }
                        buckets[last].1.push(row as u32);
                    });
                    if assigned == 0 {
                        applied.late_rows.push(row as u32);
                    }
                }
                for (start, bucket_rows) in buckets.iter().filter(|(_, rows)| !rows.is_empty()) {
                    let first_offset = offsets[bucket_rows[0] as usize];
                    let window = self
                        .windows
                        .entry(*start)
                        .or_insert_with(|| OpenWindow { min_offset: first_offset, ..OpenWindow::default() });
                    for &row in bucket_rows {
                        let key = rows.row(row as usize);
                        let slot = find_or_add_group(
                            window,
                            &mut self.accumulators,
                            &mut self.slot_keys,
                            &self.hasher,
                            key.as_ref(),
                            offsets[row as usize],
                        );
                        updates.push(row as usize, slot);
                    }
                }
                self.buckets = buckets;
            }
        }
        self.accumulators.apply(&prepared, &updates);
        self.updates = updates;
        Ok(applied)
    }

    /// Emits every window that ends at or before `watermark` and forgets it.
    pub fn close_until(&mut self, watermark: i64) -> Result<Option<RecordBatch>, StateError> {
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut slots = Vec::new();
        let mut key_rows: Vec<Box<[u8]>> = Vec::new();
        match self.kind {
            WindowKind::Session { gap } => {
                self.sessions.retain(|key, sessions| {
                    sessions.retain(|s| {
                        let closed = s.last + gap <= watermark;
                        if closed {
                            starts.push(s.start);
                            ends.push(s.last + gap);
                            slots.push(s.slot);
                            key_rows.push(key.clone());
                        }
                        !closed
                    });
                    !sessions.is_empty()
                });
            }
            kind => {
                while let Some(entry) = self.windows.first_entry() {
                    let start = *entry.key();
                    if kind.end_of(start) > watermark {
                        break;
                    }
                    for slot in entry.remove().slots {
                        key_rows.push(std::mem::take(&mut self.slot_keys[slot as usize]));
                        starts.push(start);
                        ends.push(kind.end_of(start));
                        slots.push(slot);
                    }
                }
            }
        }
        if slots.is_empty() {
            return Ok(None);
        }
        let batch = self.results(&key_rows, &starts, &ends, &slots)?;
        for slot in slots {
            self.accumulators.release(slot);
        }
        Ok(Some(batch))
    }

    fn results(
        &self,
        key_rows: &[Box<[u8]>],
        starts: &[i64],
        ends: &[i64],
        slots: &[u32],
    ) -> Result<RecordBatch, StateError> {
        let Some(keys) = self.keys.decode(key_rows.iter().map(|r| &**r))? else {
            return Err(ArrowError::InvalidArgumentError("windows closed before any key was seen".into()).into());
        };
        let (mut fields, mut columns): (Vec<Field>, Vec<ArrayRef>) = keys.into_iter().unzip();
        fields.push(Field::new(WINDOW_START, DataType::Utf8, false));
        fields.push(Field::new(WINDOW_END, DataType::Utf8, false));
        columns.push(Arc::new(rfc3339(starts)));
        columns.push(Arc::new(rfc3339(ends)));
        let aggregates = self.accumulators.finish(slots)?;
        for (spec, column) in self.accumulators.specs().iter().zip(aggregates) {
            fields.push(Field::new(spec.output_name(), column.data_type().clone(), true));
            columns.push(column);
        }
        // Results carry their window end as event time, so later steps and the sink see it.
        fields.push(Field::new(EVENT_TIME, DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from(ends.to_vec())));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn aggregate_inputs(&self, batch: &RecordBatch) -> Vec<Option<ArrayRef>> {
        self.accumulators
            .specs()
            .iter()
            .map(|spec| spec.field.as_ref().map(|name| column_or_nulls(batch, name)))
            .collect()
    }

    /// The session a record at `ts` joins, merging sessions it bridges.
    /// Updates of this batch still pending (`updates`) that name a session merged away are
    /// moved to the session it merged into: its slot is released, and may be reused.
    fn session_slot(&mut self, key: &[u8], ts: i64, offset: i64, gap: i64, updates: &mut Updates) -> u32 {
        let sessions = self.sessions.entry_ref(key).or_default();
        // Sessions the record touches: it falls within `gap` of their span.
        let touching: Vec<usize> =
            (0..sessions.len()).filter(|&i| ts + gap > sessions[i].start && ts < sessions[i].last + gap).collect();
        let Some((&first, rest)) = touching.split_first() else {
            let slot = self.accumulators.allocate();
            let position = sessions.partition_point(|s| s.start < ts);
            sessions.insert(position, Session { start: ts, last: ts, slot, min_offset: offset });
            return slot;
        };
        let mut merged = sessions[first];
        for &i in rest.iter().rev() {
            let other = sessions.remove(i);
            self.accumulators.merge(merged.slot, other.slot);
            updates.slots.iter_mut().filter(|s| **s == other.slot).for_each(|s| *s = merged.slot);
            merged.start = merged.start.min(other.start);
            merged.last = merged.last.max(other.last);
            merged.min_offset = merged.min_offset.min(other.min_offset);
        }
        merged.start = merged.start.min(ts);
        merged.last = merged.last.max(ts);
        merged.min_offset = merged.min_offset.min(offset);
        sessions[first] = merged;
        merged.slot
    }
}

/// Columns of a window-state snapshot besides the keys and aggregates.
const STATE_START: &str = "__weir_window_start";
const STATE_LAST: &str = "__weir_window_last";
const STATE_MIN_OFFSET: &str = "__weir_window_min_offset";

impl KeyedWindows {
    /// Every open (key, window) aggregate as one batch, for a checkpoint: the key columns,
    /// the window (start; last event for sessions), the oldest offset it needs, and the
    /// aggregate state. `None` while nothing is open.
    pub fn snapshot(&self) -> Result<Option<RecordBatch>, StateError> {
        let mut key_rows: Vec<&[u8]> = Vec::new();
        let (mut starts, mut lasts, mut min_offsets, mut slots) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&start, window) in &self.windows {
            for &slot in &window.slots {
                key_rows.push(&self.slot_keys[slot as usize]);
                starts.push(start);
                lasts.push(start);
                min_offsets.push(window.min_offset);
                slots.push(slot);
            }
        }
        for (key, sessions) in &self.sessions {
            for session in sessions {
                key_rows.push(key);
                starts.push(session.start);
                lasts.push(session.last);
                min_offsets.push(session.min_offset);
                slots.push(session.slot);
            }
        }
        if slots.is_empty() {
            return Ok(None);
        }
        let Some(keys) = self.keys.decode(key_rows)? else { return Ok(None) };
        let (mut fields, mut columns): (Vec<Field>, Vec<ArrayRef>) = keys.into_iter().unzip();
        for (name, values) in [(STATE_START, starts), (STATE_LAST, lasts), (STATE_MIN_OFFSET, min_offsets)] {
            fields.push(Field::new(name, DataType::Int64, false));
            columns.push(Arc::new(Int64Array::from(values)));
        }
        for (field, column) in self.accumulators.snapshot(&slots) {
            fields.push(field);
            columns.push(column);
        }
        Ok(Some(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
    }

    /// State for windows of `kind` over `key_fields`, computing `aggregations`, holding what
    /// a [`Self::snapshot`] batch holds.
    pub fn restore(
        kind: WindowKind,
        key_fields: Vec<String>,
        aggregations: &[Aggregation],
        batch: &RecordBatch,
    ) -> Result<Self, StateError> {
        let mut state = Self::new(kind, key_fields, aggregations);
        state.accumulators = Accumulators::restore(aggregations, batch)?;
        let rows = state.keys.encode(batch)?;
        let starts = int_column(batch, STATE_START)?.values();
        let lasts = int_column(batch, STATE_LAST)?.values();
        let min_offsets = int_column(batch, STATE_MIN_OFFSET)?.values();
        state.slot_keys = (0..batch.num_rows()).map(|row| rows.row(row).as_ref().into()).collect();
        for row in 0..batch.num_rows() {
            let slot = row as u32;
            if let WindowKind::Session { .. } = kind {
                let session = Session { start: starts[row], last: lasts[row], slot, min_offset: min_offsets[row] };
                let sessions = state.sessions.entry_ref(rows.row(row).as_ref()).or_default();
                let position = sessions.partition_point(|s| s.start < session.start);
                sessions.insert(position, session);
            } else {
                let window = state
                    .windows
                    .entry(starts[row])
                    .or_insert_with(|| OpenWindow { min_offset: min_offsets[row], ..OpenWindow::default() });
                window.min_offset = window.min_offset.min(min_offsets[row]);
                let keys: &[Box<[u8]>] = &state.slot_keys;
                let hash = state.hasher.hash_one(&*keys[row]);
                window.groups.insert_unique(hash, slot, |&s| state.hasher.hash_one(&*keys[s as usize]));
                window.slots.push(slot);
            }
        }
        if let WindowKind::Session { .. } = kind {
            // Session key rows live in the session map; slots keep no copy.
            state.slot_keys.clear();
        }
        Ok(state)
    }
}

/// The slot of `key`'s group in `window`, opening the group when it is new.
fn find_or_add_group(
    window: &mut OpenWindow,
    accumulators: &mut Accumulators,
    slot_keys: &mut Vec<Box<[u8]>>,
    hasher: &DefaultHashBuilder,
    key: &[u8],
    offset: i64,
) -> u32 {
    let hash = hasher.hash_one(key);
    let keys: &[Box<[u8]>] = slot_keys;
    if let Some(&slot) = window.groups.find(hash, |&slot| &*keys[slot as usize] == key) {
        return slot;
    }
    // Offsets only grow within a partition, so a window's oldest offset is the one that
    // opened it (or, replaying, the smallest of the groups that opened it).
    window.min_offset = window.min_offset.min(offset);
    let slot = accumulators.allocate();
    if slot_keys.len() <= slot as usize {
        slot_keys.resize(slot as usize + 1, Box::default());
    }
    slot_keys[slot as usize] = key.into();
    let keys: &[Box<[u8]>] = slot_keys;
    window.groups.insert_unique(hash, slot, |&s| hasher.hash_one(&*keys[s as usize]));
    window.slots.push(slot);
    slot
}

/// Epoch milliseconds as RFC 3339 UTC text with millisecond precision.
pub fn rfc3339(millis: &[i64]) -> StringArray {
    millis
        .iter()
        .map(|&ms| DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringArray};
    use weir_crds::AggregateFn;

    use arrow::{array::AsArray, datatypes::Int64Type};

    use super::*;

    fn batch(keys: &[&str], amounts: &[f64], times: &[i64]) -> RecordBatch {
        let offsets: Vec<i64> = (0..keys.len() as i64).collect();
        RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(keys.to_vec())) as ArrayRef),
            ("amount", Arc::new(Float64Array::from(amounts.to_vec())) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from(times.to_vec())) as ArrayRef),
            (OFFSET, Arc::new(Int64Array::from(offsets)) as ArrayRef),
        ])
        .unwrap()
    }

    fn sum_and_count() -> Vec<Aggregation> {
        vec![
            Aggregation { function: AggregateFn::Sum, field: Some("amount".into()), alias: Some("total".into()) },
            Aggregation { function: AggregateFn::Count, field: None, alias: None },
        ]
    }

    /// (key, window_start, window_end, total, count) rows of a result batch, sorted.
    fn rows(batch: &RecordBatch) -> Vec<(String, String, String, f64, i64)> {
        let text = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (user, start, end) = (text("user"), text(WINDOW_START), text(WINDOW_END));
        let total = batch.column_by_name("total").unwrap().as_primitive::<arrow::datatypes::Float64Type>().clone();
        let count = batch.column_by_name("count").unwrap().as_primitive::<Int64Type>().clone();
        let mut out: Vec<_> = (0..batch.num_rows())
            .map(|i| (user.value(i).into(), start.value(i).into(), end.value(i).into(), total.value(i), count.value(i)))
            .collect();
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    #[test]
    fn tumbling_windows_close_when_the_watermark_passes_their_end() {
        let mut state = KeyedWindows::new(WindowKind::Tumbling { size: 60_000 }, vec!["user".into()], &sum_and_count());
        let applied = state
            .apply(&batch(&["a", "b", "a", "a"], &[1.0, 2.0, 3.0, 10.0], &[1_000, 2_000, 59_999, 60_000]), i64::MIN)
            .unwrap();
        assert_eq!(applied.late_rows, Vec::<u32>::new());
        assert!(state.close_until(59_999).unwrap().is_none(), "the first window ends at 60s");
        let closed = state.close_until(60_000).unwrap().unwrap();
        assert_eq!(
            rows(&closed),
            [
                ("a".into(), "1970-01-01T00:00:00.000Z".into(), "1970-01-01T00:01:00.000Z".into(), 4.0, 2),
                ("b".into(), "1970-01-01T00:00:00.000Z".into(), "1970-01-01T00:01:00.000Z".into(), 2.0, 1),
            ]
        );
        assert_eq!(state.open_aggregates(), 1, "the 60s window of a stays open");
    }

    #[test]
    fn records_behind_the_watermark_are_late_and_not_aggregated() {
        let mut state = KeyedWindows::new(WindowKind::Tumbling { size: 10 }, vec!["user".into()], &sum_and_count());
        let applied = state.apply(&batch(&["a", "a"], &[1.0, 1.0], &[5, 25]), 20).unwrap();
        assert_eq!(applied.late_rows, [0]);
        assert_eq!(state.open_aggregates(), 1);
    }

    #[test]
    fn a_sliding_record_counts_in_every_window_it_falls_in() {
        let kind = WindowKind::Sliding { size: 20, slide: 10 };
        let mut state = KeyedWindows::new(kind, vec!["user".into()], &sum_and_count());
        state.apply(&batch(&["a"], &[1.0], &[15]), i64::MIN).unwrap();
        let closed = state.close_until(i64::MAX).unwrap().unwrap();
        assert_eq!(closed.num_rows(), 2, "windows [0,20) and [10,30)");
    }

    #[test]
    fn sessions_merge_when_a_record_bridges_them() {
        let kind = WindowKind::Session { gap: 10 };
        let mut state = KeyedWindows::new(kind, vec!["user".into()], &sum_and_count());
        state.apply(&batch(&["a", "a"], &[1.0, 2.0], &[0, 15]), i64::MIN).unwrap();
        assert_eq!(state.open_aggregates(), 2, "15 - 0 >= gap: two sessions");
        state.apply(&batch(&["a"], &[4.0], &[8]), i64::MIN).unwrap();
        assert_eq!(state.open_aggregates(), 1, "8 is within the gap of both");
        let closed = state.close_until(25).unwrap().unwrap();
        assert_eq!(
            rows(&closed),
            [("a".into(), "1970-01-01T00:00:00.000Z".into(), "1970-01-01T00:00:00.025Z".into(), 7.0, 3)]
        );
    }

    #[test]
    fn sessions_bridged_within_one_batch_keep_every_record() {
        // Found by the engine's property test: 15 opens a second session, 8 then merges it
        // into the first in the same batch; 15's pending update must follow the merge, or
        // it lands on the released slot (and on whatever session reuses it).
        let kind = WindowKind::Session { gap: 10 };
        let mut state = KeyedWindows::new(kind, vec!["user".into()], &sum_and_count());
        state.apply(&batch(&["a", "a", "a", "b"], &[1.0, 2.0, 4.0, 8.0], &[0, 15, 8, 40]), i64::MIN).unwrap();
        let closed = state.close_until(i64::MAX).unwrap().unwrap();
        assert_eq!(
            rows(&closed),
            [
                ("a".into(), "1970-01-01T00:00:00.000Z".into(), "1970-01-01T00:00:00.025Z".into(), 7.0, 3),
                ("b".into(), "1970-01-01T00:00:00.040Z".into(), "1970-01-01T00:00:00.050Z".into(), 8.0, 1),
            ]
        );
    }

    #[test]
    fn the_oldest_open_offset_follows_open_windows() {
        let mut state = KeyedWindows::new(WindowKind::Tumbling { size: 10 }, vec!["user".into()], &sum_and_count());
        state.apply(&batch(&["a", "a", "b"], &[1.0, 1.0, 1.0], &[1, 12, 15]), i64::MIN).unwrap();
        assert_eq!(state.min_open_offset(), Some(0));
        state.close_until(10).unwrap();
        assert_eq!(state.min_open_offset(), Some(1));
        state.close_until(20).unwrap();
        assert_eq!(state.min_open_offset(), None);
    }
}

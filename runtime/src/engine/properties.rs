//! Property tests of the engine: for random inputs, arriving out of order within the
//! allowed lateness, cut into random batches, checkpointed and restored at random points,
//! every window kind's results equal a naive model's, computed record by record.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use arrow::{
    array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray},
    datatypes::{Float64Type, Int64Type},
};
use proptest::prelude::*;
use weir_crds::{
    JobDocument,
    pipeline::{WINDOW_END, WINDOW_START},
};

use super::{EVENT_TIME, OFFSET, PartitionPipeline, Plan, Resume};

/// How far out of order records arrive; the plan allows exactly this much.
const DISORDER_MS: i64 = 3_000;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

impl Kind {
    fn yaml(self) -> String {
        match self {
            Self::Tumbling { size } => format!("{{tumbling: {{size: {size}ms}}}}"),
            Self::Sliding { size, slide } => format!("{{sliding: {{size: {size}ms, slide: {slide}ms}}}}"),
            Self::Session { gap } => format!("{{session: {{gap: {gap}ms}}}}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    key: String,
    ts: i64,
    amount: i64,
    /// What a `dedupe` step keys on: few values, so repeats are common.
    id: u8,
}

/// (key, window start, window end) → (sum, count).
type Results = BTreeMap<(String, i64, i64), (i64, i64)>;

/// The windowed sum and count of `kind`, after a `dedupe` on `id` within `dedupe` ms if given.
fn plan(kind: Kind, dedupe: Option<i64>) -> Arc<Plan> {
    let dedupe = dedupe.map(|within| format!("  - dedupe: {{key: [id], within: {within}ms}}\n")).unwrap_or_default();
    let spec = format!(
        "source: {{kafka: {{bootstrapServers: k:9092, topic: in, partitionedBy: [k], \
         eventTime: {{maxOutOfOrderness: {DISORDER_MS}ms}}}}}}\n\
         sink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}\npipeline:\n{dedupe}  - keyBy: [k]\n  \
         - window: {}\n  - aggregate: [{{fn: sum, field: amount, as: total}}, {{fn: count, as: n}}]\n",
        kind.yaml()
    );
    Arc::new(Plan::new(&JobDocument::parse(&spec).expect("a valid spec").spec).expect("a plan"))
}

/// What the windows hold, computed directly from every record at once.
fn naive(kind: Kind, records: &[Record]) -> Results {
    let mut out = Results::new();
    let mut add = |key: &str, start: i64, end: i64, amount: i64| {
        let entry = out.entry((key.to_owned(), start, end)).or_insert((0, 0));
        entry.0 += amount;
        entry.1 += 1;
    };
    match kind {
        Kind::Tumbling { size } => {
            for r in records {
                let start = r.ts.div_euclid(size) * size;
                add(&r.key, start, start + size, r.amount);
            }
        }
        Kind::Sliding { size, slide } => {
            for r in records {
                let mut start = r.ts.div_euclid(slide) * slide;
                while start > r.ts - size {
                    add(&r.key, start, start + size, r.amount);
                    start -= slide;
                }
            }
        }
        Kind::Session { gap } => {
            let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
            for r in records {
                by_key.entry(&r.key).or_default().push(r);
            }
            for (key, mut rs) in by_key {
                rs.sort_by_key(|r| r.ts);
                let mut session: Option<(i64, i64, i64, i64)> = None; // start, last, sum, count
                for r in rs {
                    session = match session {
                        Some((start, last, sum, n)) if r.ts < last + gap => Some((start, r.ts, sum + r.amount, n + 1)),
                        Some((start, last, sum, n)) => {
                            out.insert((key.to_owned(), start, last + gap), (sum, n));
                            Some((r.ts, r.ts, r.amount, 1))
                        }
                        None => Some((r.ts, r.ts, r.amount, 1)),
                    };
                }
                if let Some((start, last, sum, n)) = session {
                    out.insert((key.to_owned(), start, last + gap), (sum, n));
                }
            }
        }
    }
    out
}

fn batch(records: &[Record], first_offset: i64) -> RecordBatch {
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let offsets: Vec<i64> = (first_offset..first_offset + records.len() as i64).collect();
    RecordBatch::try_from_iter([
        ("k", Arc::new(StringArray::from(keys)) as ArrayRef),
        ("amount", Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.amount as f64))) as ArrayRef),
        ("id", Arc::new(Int64Array::from_iter_values(records.iter().map(|r| i64::from(r.id)))) as ArrayRef),
        (EVENT_TIME, Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.ts))) as ArrayRef),
        (OFFSET, Arc::new(Int64Array::from(offsets)) as ArrayRef),
    ])
    .expect("a batch")
}

/// The engine's results for `records` cut at `cuts`, restored from a checkpoint after the
/// batches in `restores`, then flushed by one record far ahead.
fn engine(kind: Kind, dedupe: Option<i64>, records: &[Record], cuts: &[usize], restores: &[bool]) -> Results {
    let plan = plan(kind, dedupe);
    let now = Instant::now();
    let mut partition = PartitionPipeline::new(plan.clone(), Resume::default(), now);
    let mut out = Results::new();
    let collect = |batches: Vec<RecordBatch>, out: &mut Results| {
        for b in batches {
            let key = b.column_by_name("k").expect("key").as_string::<i32>();
            let millis = |name: &str, row: usize| {
                let text = b.column_by_name(name).expect("window bound").as_string::<i32>().value(row);
                chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339").timestamp_millis()
            };
            let total = b.column_by_name("total").expect("total").as_primitive::<Float64Type>();
            let n = b.column_by_name("n").expect("n").as_primitive::<Int64Type>();
            for row in 0..b.num_rows() {
                let window = (key.value(row).to_owned(), millis(WINDOW_START, row), millis(WINDOW_END, row));
                let previous = out.insert(window.clone(), (total.value(row) as i64, n.value(row)));
                assert!(previous.is_none(), "window {window:?} emitted twice");
            }
        }
    };
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (records.len() + 1)).collect();
    bounds.extend([0, records.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    for (i, pair) in bounds.windows(2).enumerate() {
        let processed = partition.process(batch(&records[pair[0]..pair[1]], pair[0] as i64), now).expect("process");
        assert!(processed.late.is_none(), "disorder within the allowance makes nothing late");
        assert!(processed.rejected.is_empty());
        collect(processed.output, &mut out);
        if restores.get(i).copied().unwrap_or(false) {
            let state = partition.state().expect("snapshot");
            let max_event_time = partition.watermark().max_event_time();
            partition = PartitionPipeline::restore(plan.clone(), max_event_time, &state, now).expect("restore");
        }
    }
    let last = records.iter().map(|r| r.ts).max().unwrap_or(0);
    let flush = Record { key: "~flush".into(), ts: last + 10_000_000, amount: 0, id: u8::MAX };
    collect(partition.process(batch(&[flush], records.len() as i64), now).expect("flush").output, &mut out);
    out
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (1_000..20_000i64).prop_map(|size| Kind::Tumbling { size }),
        (1..6i64, 1_000..10_000i64).prop_map(|(k, slide)| Kind::Sliding { size: slide * k, slide }),
        (500..10_000i64).prop_map(|gap| Kind::Session { gap }),
    ]
}

/// The records a `dedupe` on `id` within `within` ms passes, decided one by one in order:
/// a record repeats the newest one passed on with its id when less than `within` apart.
fn deduplicated(records: &[Record], within: i64) -> Vec<Record> {
    let mut newest: BTreeMap<u8, i64> = BTreeMap::new();
    let mut kept = Vec::new();
    for r in records {
        match newest.get(&r.id) {
            Some(&at) if (r.ts - at).abs() < within => continue,
            last => {
                if last.is_none_or(|&at| r.ts > at) {
                    newest.insert(r.id, r.ts);
                }
                kept.push(r.clone());
            }
        }
    }
    kept
}

/// Records of a few keys with rising event times, each up to [`DISORDER_MS`] early.
fn records() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec((0..5u8, 0..2_000i64, 0..DISORDER_MS, 1..100i64, 0..20u8), 1..200).prop_map(|raw| {
        let mut clock = 1_700_000_000_000i64;
        let mut newest = clock;
        raw.into_iter()
            .map(|(key, step, early, amount, id)| {
                clock += step;
                newest = newest.max(clock);
                // Never further behind the newest so far than the allowance.
                let ts = (clock - early).max(newest - DISORDER_MS + 1);
                Record { key: format!("key-{key}"), ts, amount, id }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn windowed_results_equal_the_naive_model_for_any_batching_and_restores(
        kind in kinds(),
        records in records(),
        cuts in proptest::collection::vec(0..1_000usize, 0..10),
        restores in proptest::collection::vec(any::<bool>(), 0..12),
    ) {
        let (got, want) = (engine(kind, None, &records, &cuts, &restores), naive(kind, &records));
        let extra: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(v)).collect();
        let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).collect();
        prop_assert!(extra.is_empty() && missing.is_empty(), "engine only: {:?}\nmodel only: {:?}", extra, missing);
    }

    #[test]
    fn a_dedupe_before_the_window_equals_deduplicating_first_for_any_batching_and_restores(
        kind in kinds(),
        within in (DISORDER_MS + 1)..20_000i64,
        records in records(),
        cuts in proptest::collection::vec(0..1_000usize, 0..10),
        restores in proptest::collection::vec(any::<bool>(), 0..12),
    ) {
        // Disorder within the allowance and a bound longer than it: nothing is late, so the
        // model needs no watermark.
        let got = engine(kind, Some(within), &records, &cuts, &restores);
        let want = naive(kind, &deduplicated(&records, within));
        let extra: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(v)).collect();
        let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).collect();
        prop_assert!(extra.is_empty() && missing.is_empty(), "engine only: {:?}\nmodel only: {:?}", extra, missing);
    }
}

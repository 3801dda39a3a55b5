//! The whole pipeline on in-memory batches, from a StreamJob spec.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use arrow::{
    array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray},
    datatypes::{Int64Type, Schema},
    record_batch::RecordBatch,
};
use weir_crds::JobDocument;

use super::*;

fn plan(pipeline_yaml: &str) -> Arc<Plan> {
    let spec = format!(
        "source: {{kafka: {{bootstrapServers: k:9092, topic: in, partitionedBy: [user_id], \
         eventTime: {{maxOutOfOrderness: 1s}}}}}}\n\
         sink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}\npipeline:\n{pipeline_yaml}"
    );
    let document = JobDocument::parse(&spec).unwrap();
    Arc::new(Plan::new(&document.spec).unwrap())
}

fn payments(users: &[&str], amounts: &[f64], currencies: &[&str], times: &[i64]) -> RecordBatch {
    let offsets: Vec<i64> = (0..users.len() as i64).collect();
    RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(users.to_vec())) as ArrayRef),
        ("amount", Arc::new(Float64Array::from(amounts.to_vec())) as ArrayRef),
        ("currency", Arc::new(StringArray::from(currencies.to_vec())) as ArrayRef),
        (EVENT_TIME, Arc::new(Int64Array::from(times.to_vec())) as ArrayRef),
        (OFFSET, Arc::new(Int64Array::from(offsets)) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn filter_and_select_without_a_window_pass_records_through() {
    let plan =
        plan("  - filter: \"amount > 1 AND currency = 'EUR'\"\n  - select: [user_id, \"amount * 2 AS doubled\"]\n");
    let mut partition = PartitionPipeline::new(plan, Resume::default(), Instant::now());
    let batch = payments(&["a", "b", "c"], &[5.0, 0.5, 7.0], &["EUR", "EUR", "USD"], &[1, 2, 3]);
    let processed = partition.process(batch, Instant::now()).unwrap();
    let out = &processed.output[0];
    assert_eq!(out.num_rows(), 1);
    assert_eq!(out.column_by_name("user_id").unwrap().as_string::<i32>().value(0), "a");
    assert_eq!(out.column_by_name("doubled").unwrap().as_primitive::<arrow::datatypes::Float64Type>().value(0), 10.0);
    assert!(out.column_by_name(EVENT_TIME).is_some(), "hidden columns survive a select");
    assert!(out.column_by_name("currency").is_none());
}

#[test]
fn a_tumbling_aggregate_emits_when_the_watermark_passes() {
    let plan = plan(
        "  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: sum, field: amount, as: total}, {fn: count}]\n",
    );
    let mut partition = PartitionPipeline::new(plan, Resume::default(), Instant::now());
    let first = payments(&["a", "a", "b"], &[1.0, 2.0, 3.0], &["EUR"; 3], &[1_000, 9_000, 5_000]);
    assert!(partition.process(first, Instant::now()).unwrap().output.is_empty());
    // 11.5s - 1s out-of-orderness = 10.5s watermark: the [0s, 10s) window closes.
    let second = payments(&["a"], &[100.0], &["EUR"], &[11_500]);
    let processed = partition.process(second, Instant::now()).unwrap();
    let out = &processed.output[0];
    assert_eq!(out.num_rows(), 2);
    let totals: i64 = out.column_by_name("count").unwrap().as_primitive::<Int64Type>().values().iter().sum();
    assert_eq!(totals, 3);
    assert_eq!(partition.open_aggregates(), 1);
}

#[test]
fn late_records_are_returned_and_replays_are_not() {
    let plan = plan("  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: count}]\n");
    let resume = Resume { max_event_time: Some(30_000), replay_until: 1 };
    let mut partition = PartitionPipeline::new(plan, resume, Instant::now());
    // Offsets 0 and 1; both behind the restored watermark (29s). Offset 0 is a replay.
    let processed =
        partition.process(payments(&["a", "b"], &[1.0, 1.0], &["EUR"; 2], &[1_000, 2_000]), Instant::now()).unwrap();
    let late = processed.late.unwrap();
    assert_eq!(late.num_rows(), 1);
    assert_eq!(late.column_by_name("user_id").unwrap().as_string::<i32>().value(0), "b");
}

#[test]
fn an_idle_partition_closes_its_windows_with_the_clock() {
    let plan = plan("  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: count}]\n");
    let start = Instant::now();
    let mut partition = PartitionPipeline::new(plan, Resume::default(), start);
    partition.process(payments(&["a"], &[1.0], &["EUR"], &[5_000]), start).unwrap();
    assert!(partition.tick(start + Duration::from_secs(1)).unwrap().output.is_empty(), "not idle yet");
    // Idle for the default 30s: event time is assumed to have moved 30s on.
    let closed = partition.tick(start + Duration::from_secs(31)).unwrap();
    assert_eq!(closed.output[0].num_rows(), 1);
}

/// Feeds `batches` through a pipeline, checkpointing and restoring it after each batch when
/// `restore` is set, and returns every result row as text, sorted.
fn run_with_restores(pipeline_yaml: &str, batches: Vec<RecordBatch>, restore: bool) -> Vec<String> {
    let plan = plan(pipeline_yaml);
    let now = Instant::now();
    let mut partition = PartitionPipeline::new(plan.clone(), Resume::default(), now);
    let mut results = Vec::new();
    let mut collect = |batches: Vec<RecordBatch>| {
        for batch in batches {
            for row in crate::codec::encode_json(&batch, crate::codec::Layout::default()).unwrap() {
                results.push(String::from_utf8(row.payload).unwrap());
            }
        }
    };
    for batch in batches {
        collect(partition.process(batch, now).unwrap().output);
        if restore {
            let state = partition.state().unwrap();
            let max_event_time = partition.watermark().max_event_time();
            partition = PartitionPipeline::restore(plan.clone(), max_event_time, &state, now).unwrap();
        }
    }
    results.sort();
    results
}

fn three_batches() -> Vec<RecordBatch> {
    vec![
        payments(&["a", "a", "b"], &[1.0, 2.0, 3.0], &["EUR"; 3], &[1_000, 9_000, 5_000]),
        payments(&["b", "c", "a"], &[4.5, 5.0, 6.0], &["EUR"; 3], &[12_000, 13_000, 14_500]),
        payments(&["a", "c"], &[7.0, 8.0], &["EUR"; 2], &[40_000, 50_000]),
    ]
}

#[test]
fn restored_state_gives_the_same_results_for_every_window_kind_and_aggregate() {
    let aggregates = "  - aggregate: [{fn: sum, field: amount, as: total}, {fn: count}, {fn: avg, field: amount, as: mean}, \
                      {fn: min, field: amount, as: low}, {fn: max, field: currency, as: top}]\n";
    for window in ["{tumbling: {size: 10s}}", "{sliding: {size: 20s, slide: 10s}}", "{session: {gap: 5s}}"] {
        let pipeline = format!("  - keyBy: [user_id]\n  - window: {window}\n{aggregates}");
        let straight = run_with_restores(&pipeline, three_batches(), false);
        assert!(!straight.is_empty(), "{pipeline}: some windows close");
        assert_eq!(run_with_restores(&pipeline, three_batches(), true), straight, "{pipeline}");
    }
}

#[test]
fn a_split_plan_gives_the_results_of_the_whole_when_fed_the_watermark() {
    let pipeline = "  - filter: \"currency = 'EUR'\"\n  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  \
                    - aggregate: [{fn: sum, field: amount, as: total}, {fn: count}]\n  - filter: \"count > 0\"\n";
    let whole = plan(pipeline);
    let (front, keyed) = whole.split_at_key();
    assert_eq!(front.key_fields(), &[] as &[String], "the front has no window");
    assert_eq!(keyed.key_fields(), &["user_id".to_owned()]);
    let now = Instant::now();
    let mut straight = PartitionPipeline::new(whole, Resume::default(), now);
    let mut split = PartitionPipeline::new(Arc::new(keyed), Resume::default(), now);
    let mut watermark = front.watermark(now);
    let batch = payments(
        &["a", "a", "b", "b"],
        &[1.0, 2.0, 3.0, 9.0],
        &["EUR", "EUR", "EUR", "USD"],
        &[1_000, 9_000, 5_000, 5_500],
    );
    let later = payments(&["a"], &[100.0], &["EUR"], &[11_500]);
    let mut want = Vec::new();
    let mut got = Vec::new();
    for batch in [batch, later] {
        want.extend(straight.process(batch.clone(), now).unwrap().output);
        watermark.observe(newest_event_time(&batch).unwrap(), now);
        let (rows, rejected) = front.apply_front(batch).unwrap();
        assert!(rejected.is_empty());
        let rows = rows.unwrap();
        let processed = split.process(rows, now).unwrap();
        assert!(processed.output.is_empty(), "rows alone never move an external watermark");
        got.extend(split.advance_watermark(watermark.current()).unwrap().output);
    }
    let text = |batches: &[RecordBatch]| -> Vec<String> {
        let mut rows: Vec<String> = batches
            .iter()
            .flat_map(|b| crate::codec::encode_json(b, crate::codec::Layout::default()).unwrap())
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(text(&got), text(&want));
    assert_eq!(text(&got).len(), 2, "a and b of the first window");
    assert!(
        split.advance_watermark(watermark.current()).unwrap().output.is_empty(),
        "the same watermark closes nothing"
    );
}

/// A batch whose `amount` holds JSON objects, as an inferred schema gives them.
fn object_amounts(users: &[&str], times: &[i64]) -> RecordBatch {
    let lines: Vec<String> =
        users.iter().map(|u| format!(r#"{{"user_id":"{u}","amount":{{"value":1}},"currency":"EUR"}}"#)).collect();
    let values: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok)).unwrap();
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::new(schema)).build_decoder().unwrap();
    decoder.serialize(&values).unwrap();
    let batch = decoder.flush().unwrap().unwrap();
    let mut fields: Vec<_> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    fields.push(arrow::datatypes::Field::new(EVENT_TIME, arrow::datatypes::DataType::Int64, false));
    columns.push(Arc::new(Int64Array::from(times.to_vec())));
    fields.push(arrow::datatypes::Field::new(OFFSET, arrow::datatypes::DataType::Int64, false));
    columns.push(Arc::new(Int64Array::from_iter_values(100..100 + users.len() as i64)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[test]
fn a_batch_the_aggregate_cannot_fold_leaves_no_window_state_and_does_not_move_the_watermark() {
    let plan = plan(
        "  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: sum, field: amount, as: total}, {fn: count}]\n",
    );
    let mut partition = PartitionPipeline::new(plan, Resume::default(), Instant::now());
    let bad = partition.process(object_amounts(&["ghost"], &[50_000]), Instant::now()).unwrap();
    assert_eq!(bad.rejected.len(), 1, "the record is rejected: {bad:?}");
    assert!(bad.rejected[0].reason.contains("pipeline[2].aggregate"), "{}", bad.rejected[0].reason);
    assert_eq!(partition.open_aggregates(), 0, "no group was left behind for the rejected record");
    assert_eq!(partition.watermark().max_event_time(), None, "a rejected record does not move event time");
    let good = payments(&["a"], &[5.0], &["EUR"], &[1_000]);
    assert!(partition.process(good, Instant::now()).unwrap().rejected.is_empty());
    let flush = payments(&["a"], &[1.0], &["EUR"], &[30_000]);
    let out = partition.process(flush, Instant::now()).unwrap().output;
    let users: Vec<&str> =
        out.iter().flat_map(|b| b.column_by_name("user_id").unwrap().as_string::<i32>().iter().flatten()).collect();
    assert_eq!(users, ["a"], "only the good record's window closes, and nothing for the ghost");
}

#[test]
fn rows_a_step_fails_on_are_rejected_alone_and_the_rest_are_processed() {
    let plan = plan("  - select: [user_id, \"amount * 2 AS doubled\"]\n");
    let mut partition = PartitionPipeline::new(plan, Resume::default(), Instant::now());
    // `amount * 2` cannot multiply an object: the step fails on these rows.
    let bad = object_amounts(&["x", "y"], &[1_000, 2_000]);
    let processed = partition.process(bad, Instant::now()).unwrap();
    assert!(processed.output.is_empty());
    assert_eq!(processed.rejected.len(), 2, "each row alone");
    let offsets: Vec<i64> = processed
        .rejected
        .iter()
        .flat_map(|r| r.rows.column_by_name(OFFSET).unwrap().as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(offsets, [100, 101]);
}

#[test]
fn state_bytes_grow_with_keys_and_fall_when_their_windows_close() {
    let plan =
        plan("  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: max, field: user_id}]\n");
    let mut partition = PartitionPipeline::new(plan, Resume::default(), Instant::now());
    let empty = partition.state_bytes();
    let users: Vec<String> = (0..1_000).map(|i| format!("a-rather-long-user-name-{i:06}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let batch = payments(&names, &vec![1.0; names.len()], &vec!["EUR"; names.len()], &vec![1_000; names.len()]);
    partition.process(batch, Instant::now()).unwrap();
    let held = partition.state_bytes();
    assert!(held >= empty + 1_000 * 60, "1000 keys of ~30 bytes, twice (key and max): {held} bytes");
    let flush = payments(&["z"], &[1.0], &["EUR"], &[60_000]);
    let closed = partition.process(flush, Instant::now()).unwrap();
    assert_eq!(closed.output.iter().map(RecordBatch::num_rows).sum::<usize>(), 1_000);
    assert_eq!(partition.open_aggregates(), 1, "only the flush record's window is open");
}

const DEDUPED_COUNTS: &str = "  - dedupe: {key: [user_id], within: 9s}\n  - keyBy: [user_id]\n  \
                              - window: {tumbling: {size: 10s}}\n  - aggregate: [{fn: count}]\n";

#[test]
fn a_dedupe_before_the_aggregate_counts_each_repeat_once_and_survives_restores() {
    let straight = run_with_restores(DEDUPED_COUNTS, three_batches(), false);
    // a@9s repeats a@1s and b@12s repeats b@5s; a@14.5s is 13.5s after the a passed on.
    let want: Vec<String> = [
        ("a", "1970-01-01T00:00:00.000Z"),
        ("a", "1970-01-01T00:00:10.000Z"),
        ("b", "1970-01-01T00:00:00.000Z"),
        ("c", "1970-01-01T00:00:10.000Z"),
    ]
    .iter()
    .map(|(user, start)| {
        let end = if start.contains(":10.") { "1970-01-01T00:00:20.000Z" } else { "1970-01-01T00:00:10.000Z" };
        format!(r#"{{"user_id":"{user}","window_start":"{start}","window_end":"{end}","count":1}}"#)
    })
    .collect();
    assert_eq!(straight, want);
    assert_eq!(run_with_restores(DEDUPED_COUNTS, three_batches(), true), straight);
}

#[test]
fn a_replay_rebuilds_dedupe_state_without_emitting_again() {
    let plan = plan("  - dedupe: {key: [user_id], within: 1m}\n");
    let resume = Resume { max_event_time: Some(2_000), replay_until: 2 };
    let mut partition = PartitionPipeline::new(plan, resume, Instant::now());
    // Offsets 0 and 1 were processed before the restart, offset 2 was not.
    let replayed = payments(&["a", "b", "a"], &[1.0; 3], &["EUR"; 3], &[1_000, 2_000, 3_000]);
    let processed = partition.process(replayed, Instant::now()).unwrap();
    assert!(processed.output.is_empty(), "a and b were passed on before; the second a repeats the first");
    assert_eq!(processed.duplicates, 1);
    assert_eq!(partition.oldest_needed_offset(), Some(0));
}

#[test]
fn state_ids_name_stateful_steps_by_kind_so_new_stateless_steps_keep_restores() {
    let ids = |yaml: &str| -> Vec<String> { plan(yaml).operators.iter().map(|p| p.id.clone()).collect() };
    let two = "  - dedupe: {key: [user_id], within: 1m}\n  - dedupe: {key: [currency], within: 1m}\n";
    assert_eq!(ids(two), ["dedupe", "dedupe-2"]);
    assert_eq!(ids(&format!("  - filter: \"amount > 0\"\n{two}")), ["filter", "dedupe", "dedupe-2"]);
    let with_filter = format!("  - filter: \"amount > 0\"\n{DEDUPED_COUNTS}");
    let mut partition = PartitionPipeline::new(plan(DEDUPED_COUNTS), Resume::default(), Instant::now());
    partition.process(three_batches().remove(0), Instant::now()).unwrap();
    let state = partition.state().unwrap();
    assert_eq!(state.keys().collect::<Vec<_>>(), ["aggregate", "dedupe"]);
    let restored = PartitionPipeline::restore(plan(&with_filter), None, &state, Instant::now()).unwrap();
    assert_eq!(restored.state().unwrap().keys().collect::<Vec<_>>(), ["aggregate", "dedupe"]);
    assert_eq!(restored.open_aggregates(), partition.open_aggregates());
}

/// Snapshots written by earlier releases (`testdata/snapshot-v<N>.arrow`) restore and give
/// the results the state they hold stands for.
#[test]
fn snapshots_of_every_format_version_restore() {
    let v1 = "  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  \
              - aggregate: [{fn: sum, field: amount, as: total}, {fn: count}]\n";
    // (the file, the pipeline that wrote it, parts of each result row after a flush)
    type Fixture = (&'static [u8], &'static str, &'static [[&'static str; 2]]);
    let fixtures: [Fixture; 2] = [
        (
            include_bytes!("../../testdata/snapshot-v1.arrow"),
            v1,
            &[[r#""user_id":"a""#, r#""total":3.0,"count":2}"#], [r#""user_id":"b""#, r#""total":3.0,"count":1}"#]],
        ),
        (
            include_bytes!("../../testdata/snapshot-v2.arrow"),
            DEDUPED_COUNTS,
            &[[r#""user_id":"a""#, r#""count":1}"#], [r#""user_id":"b""#, r#""count":1}"#]],
        ),
    ];
    for (version, (bytes, pipeline, want)) in fixtures.into_iter().enumerate() {
        let snapshot = crate::checkpoint::PartitionSnapshot::decode(bytes).unwrap();
        assert_eq!(snapshot.header.version as usize, version + 1);
        let now = Instant::now();
        let mut partition =
            PartitionPipeline::restore(plan(pipeline), snapshot.header.max_event_time, &snapshot.state, now).unwrap();
        let flush = payments(&["z"], &[0.0], &["EUR"], &[60_000]);
        let output = partition.process(flush, now).unwrap().output;
        let rows: Vec<String> = output
            .iter()
            .flat_map(|b| crate::codec::encode_json(b, crate::codec::Layout::default()).unwrap())
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect();
        assert_eq!(rows.len(), want.len(), "v{}: {rows:?}", version + 1);
        for (row, want) in rows.iter().zip(want) {
            assert!(want.iter().all(|part| row.contains(part)), "v{}: {row} has {want:?}", version + 1);
        }
    }
}

#[test]
#[ignore = "writes testdata/snapshot-v2.arrow, the fixture of today's format"]
fn write_the_snapshot_fixture_of_this_format() {
    let mut partition = PartitionPipeline::new(plan(DEDUPED_COUNTS), Resume::default(), Instant::now());
    partition.process(three_batches().remove(0), Instant::now()).unwrap();
    let snapshot = crate::checkpoint::PartitionSnapshot {
        header: crate::checkpoint::SnapshotHeader {
            version: crate::checkpoint::FORMAT_VERSION,
            checkpoint: 7,
            topic: "payments".into(),
            partition: 0,
            position: 3,
            max_event_time: partition.watermark().max_event_time(),
            offsets: std::collections::BTreeMap::from([(0, 3)]),
            created_at: "2026-12-03T00:00:00.000Z".into(),
            upstream: Default::default(),
            marks: Default::default(),
        },
        state: partition.state().unwrap(),
    };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/snapshot-v2.arrow");
    std::fs::write(path, snapshot.encode().unwrap()).unwrap();
}

#[test]
fn a_split_plan_cuts_before_its_first_stateful_step() {
    let whole = plan(&format!("  - filter: \"amount > 0\"\n{DEDUPED_COUNTS}"));
    let (front, keyed) = whole.split_at_key();
    let ids = |plan: &Plan| -> Vec<String> { plan.operators.iter().map(|p| p.id.clone()).collect() };
    assert_eq!(ids(&front), ["filter"], "the front keeps no state");
    assert_eq!(ids(&keyed), ["dedupe", "aggregate"]);
    assert_eq!(keyed.key_fields(), &["user_id".to_owned()]);
    assert!(!front.is_stateful() && keyed.is_stateful());
}

//! Checkpoint cost of large window state, printed as figures (run with `cargo bench -p
//! weir-runtime --bench checkpoint`): one partition holding 1 million open (key, window)
//! aggregates is exported, encoded as Arrow IPC and written to `file://` storage, then read
//! back and restored. Median of 5.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use arrow::{
    array::{ArrayRef, Float64Array, Int64Array, StringArray},
    record_batch::RecordBatch,
};
use weir_crds::JobDocument;
use weir_runtime::{
    checkpoint::{CheckpointStore, FORMAT_VERSION, PartitionSnapshot, SnapshotHeader},
    engine::{EVENT_TIME, OFFSET, PartitionPipeline, Plan, Resume},
};

const KEYS: usize = 1_000_000;
const BATCH: usize = 65_536;

fn plan() -> Arc<Plan> {
    let text = r#"
source: {kafka: {bootstrapServers: k:9092, topic: payments, eventTime: {field: ts, maxOutOfOrderness: 5s}}}
pipeline:
  - keyBy: [user_id]
  - window: {tumbling: {size: 1h}}
  - aggregate: [{fn: sum, field: amount, as: total}, {fn: count, as: n}, {fn: avg, field: amount, as: mean}]
sink: {kafka: {bootstrapServers: k:9092, topic: out}}
"#;
    let spec = JobDocument::parse(text).unwrap_or_else(|e| panic!("benchmark spec: {e}")).spec;
    Arc::new(Plan::new(&spec).unwrap_or_else(|e| panic!("plan: {e}")))
}

fn filled_pipeline(plan: &Arc<Plan>) -> PartitionPipeline {
    let now = Instant::now();
    let mut pipeline = PartitionPipeline::new(plan.clone(), Resume::default(), now);
    for first in (0..KEYS).step_by(BATCH) {
        let rows = first..(first + BATCH).min(KEYS);
        let batch = RecordBatch::try_from_iter([
            (
                "user_id",
                Arc::new(StringArray::from_iter_values(rows.clone().map(|i| format!("user-{i:07}")))) as ArrayRef,
            ),
            ("amount", Arc::new(Float64Array::from_iter_values(rows.clone().map(|i| (i % 100) as f64))) as ArrayRef),
            (EVENT_TIME, Arc::new(Int64Array::from_iter_values(rows.clone().map(|_| 1_000))) as ArrayRef),
            (OFFSET, Arc::new(Int64Array::from_iter_values(rows.map(|i| i as i64))) as ArrayRef),
        ])
        .unwrap_or_else(|e| panic!("batch: {e}"));
        pipeline.process(batch, now).unwrap_or_else(|e| panic!("process: {e}"));
    }
    pipeline
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let plan = plan();
    let pipeline = filled_pipeline(&plan);
    assert_eq!(pipeline.open_aggregates(), KEYS);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = CheckpointStore::open(&format!("file://{}", dir.path().display()), "bench")
        .unwrap_or_else(|e| panic!("store: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("runtime: {e}"));
    let (mut write, mut read, mut size) = (Vec::new(), Vec::new(), 0);
    for id in 0..5u64 {
        let started = Instant::now();
        let state = pipeline.state().unwrap_or_else(|e| panic!("export: {e}"));
        let snapshot = PartitionSnapshot {
            header: SnapshotHeader {
                version: FORMAT_VERSION,
                checkpoint: id,
                topic: "payments".into(),
                partition: 0,
                position: KEYS as i64,
                max_event_time: pipeline.watermark().max_event_time(),
                offsets: BTreeMap::from([(0, KEYS as i64)]),
                created_at: String::new(),
                upstream: BTreeMap::new(),
                marks: BTreeMap::new(),
            },
            state,
        };
        runtime.block_on(store.put_checkpoint("default", &snapshot)).unwrap_or_else(|e| panic!("write: {e}"));
        write.push(started.elapsed().as_secs_f64());
        size = snapshot.encode().map(|b| b.len()).unwrap_or(0);

        let started = Instant::now();
        let back = runtime
            .block_on(store.get_checkpoint("default", "payments", 0, id))
            .unwrap_or_else(|e| panic!("read: {e}"));
        let restored =
            PartitionPipeline::restore(plan.clone(), back.header.max_event_time, &back.state, Instant::now())
                .unwrap_or_else(|e| panic!("restore: {e}"));
        read.push(started.elapsed().as_secs_f64());
        assert_eq!(restored.open_aggregates(), KEYS);
    }
    println!(
        "checkpoint of {KEYS} keys: export + encode + write {:.3} s (median of 5), {:.1} MiB",
        median(write),
        size as f64 / 1048576.0
    );
    println!("restore of {KEYS} keys: read + decode + rebuild {:.3} s (median of 5)", median(read));
}

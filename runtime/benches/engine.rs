//! Throughput of the engine on one core, printed as figures (run with `cargo bench -p
//! weir-runtime --bench engine`):
//! 1. engine alone: Arrow batches in memory → filter → keyBy → tumbling sum/count;
//! 2. JSON decode + engine + JSON encode of the results, in memory.

use std::{
    collections::BTreeSet,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow::{
    array::{ArrayRef, Float64Array, Int64Array, StringArray},
    record_batch::RecordBatch,
};
use weir_crds::JobDocument;
use weir_runtime::{
    codec::{JsonDecoder, Layout, RawRecord, encode_json},
    engine::{EVENT_TIME, OFFSET, PartitionPipeline, Plan, Resume},
};

const BATCH: usize = 8192;
const KEYS: usize = 10_000;

fn spec() -> weir_crds::StreamJobSpec {
    let text = r#"
source:
  kafka:
    bootstrapServers: k:9092
    topic: payments
    schema: [{name: user_id, type: string}, {name: amount, type: double}, {name: ts, type: long}]
    eventTime: {field: ts, maxOutOfOrderness: 5s}
pipeline:
  - filter: "amount > 0"
  - keyBy: [user_id]
  - window: {tumbling: {size: 60s}}
  - aggregate: [{fn: sum, field: amount, as: total}, {fn: count, as: n_payments}]
sink:
  kafka: {bootstrapServers: k:9092, topic: out, keyField: user_id}
"#;
    match JobDocument::parse(text) {
        Ok(document) => document.spec,
        Err(e) => panic!("benchmark spec: {e}"),
    }
}

fn user(i: usize) -> String {
    format!("user-{:05}", (i * 7919) % KEYS)
}

/// The i-th batch: event time advances 1 ms per record, so windows close as it runs.
fn batch(i: usize) -> RecordBatch {
    let first = i * BATCH;
    let users: Vec<String> = (first..first + BATCH).map(user).collect();
    let amounts: Vec<f64> = (first..first + BATCH).map(|r| (r % 100) as f64 - 1.0).collect();
    let times: Vec<i64> = (first..first + BATCH).map(|r| r as i64).collect();
    let result = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(users)) as ArrayRef),
        ("amount", Arc::new(Float64Array::from(amounts)) as ArrayRef),
        ("ts", Arc::new(Int64Array::from(times.clone())) as ArrayRef),
        (EVENT_TIME, Arc::new(Int64Array::from(times.clone())) as ArrayRef),
        (OFFSET, Arc::new(Int64Array::from(times)) as ArrayRef),
    ]);
    match result {
        Ok(batch) => batch,
        Err(e) => panic!("building a batch: {e}"),
    }
}

const ROUNDS: usize = 5;

/// Prints the median of `ROUNDS` runs of `run`, which returns how long it took.
fn report(what: &str, records: usize, mut run: impl FnMut() -> Duration) {
    let mut rates: Vec<f64> = (0..ROUNDS).map(|_| records as f64 / run().as_secs_f64()).collect();
    rates.sort_by(f64::total_cmp);
    let (low, median, high) = (rates[0], rates[ROUNDS / 2], rates[ROUNDS - 1]);
    println!(
        "{what:<48} {median:>12.0} records/s  (median of {ROUNDS}; range {low:.0}..{high:.0}; {records} records each)"
    );
}

fn engine_alone(plan: &Arc<Plan>) {
    let batches: Vec<RecordBatch> = (0..200).map(batch).collect();
    report("engine: filter → keyBy → tumbling sum/count", batches.len() * BATCH, || {
        let mut pipeline = PartitionPipeline::new(plan.clone(), Resume::default(), Instant::now());
        let started = Instant::now();
        let mut emitted = 0;
        for b in &batches {
            let processed = match pipeline.process(b.clone(), Instant::now()) {
                Ok(p) => p,
                Err(e) => panic!("engine: {e}"),
            };
            emitted += processed.output.iter().map(RecordBatch::num_rows).sum::<usize>();
        }
        black_box(emitted);
        started.elapsed()
    });
}

fn json_round_trip(plan: &Arc<Plan>, spec: &weir_crds::StreamJobSpec) {
    let decoder = JsonDecoder::new(&spec.source.kafka, &BTreeSet::new());
    let batches = 60;
    let payloads: Vec<Vec<Vec<u8>>> = (0..batches)
        .map(|b| {
            (b * BATCH..(b + 1) * BATCH)
                .map(|r| format!(r#"{{"user_id":"{}","amount":{}.5,"ts":{}}}"#, user(r), r % 100, r).into_bytes())
                .collect()
        })
        .collect();
    report("json decode + engine + json encode", batches * BATCH, || {
        let mut pipeline = PartitionPipeline::new(plan.clone(), Resume::default(), Instant::now());
        let started = Instant::now();
        let mut produced = 0usize;
        for (b, batch_payloads) in payloads.iter().enumerate() {
            let records: Vec<RawRecord<'_>> = batch_payloads
                .iter()
                .enumerate()
                .map(|(i, p)| RawRecord {
                    payload: Some(p.as_slice()),
                    key: None,
                    partition: 0,
                    offset: (b * BATCH + i) as i64,
                    timestamp: None,
                    headers: None,
                })
                .collect();
            let decoded = decoder.decode(&records);
            let Some(batch) = decoded.batch else { panic!("nothing decoded: {:?}", decoded.errors.first()) };
            let processed = match pipeline.process(batch, Instant::now()) {
                Ok(p) => p,
                Err(e) => panic!("engine: {e}"),
            };
            for out in &processed.output {
                match encode_json(out, Layout { key_field: Some("user_id"), ..Layout::default() }) {
                    Ok(encoded) => produced += encoded.len(),
                    Err(e) => panic!("encode: {e}"),
                }
            }
        }
        black_box(produced);
        started.elapsed()
    });
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run either way.
    let spec = spec();
    let plan = match Plan::new(&spec) {
        Ok(plan) => Arc::new(plan),
        Err(e) => panic!("plan: {e}"),
    };
    println!("weir-runtime engine benchmark ({} keys, batches of {BATCH}, one thread)", KEYS);
    engine_alone(&plan);
    json_round_trip(&plan, &spec);
}

//! Throughput of the engine on one core, printed as figures (run with `cargo bench -p
//! weir-runtime --bench engine`):
//! 1. engine alone: Arrow batches in memory → filter → keyBy → tumbling sum/count;
//! 2. JSON decode + engine + JSON encode of the results, in memory;
//! 3. Avro (Confluent wire format) decode + engine + Avro encode, in memory; the schema
//!    registry is the test stand-in on localhost, asked once per schema, outside the timing.

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
use arrow_avro::{
    schema::FingerprintStrategy,
    writer::{WriterBuilder, format::AvroSoeFormat},
};
use weir_crds::JobDocument;
use weir_runtime::{
    codec::{Decoder, Encoder, FormatFiles, JsonDecoder, Layout, RawRecord, encode_json},
    engine::{EVENT_TIME, OFFSET, PartitionPipeline, Plan, Resume},
    kafka::config::SecretMounts,
};

const BATCH: usize = 8192;
const KEYS: usize = 10_000;

const JSON_FORMAT: &str =
    "schema: [{name: user_id, type: string}, {name: amount, type: double}, {name: ts, type: long}]";

/// The benchmark job; `source_format` and `sink_format` are added to the source's and sink's settings.
fn spec(source_format: &str, sink_format: &str) -> weir_crds::StreamJobSpec {
    let text = format!(
        r#"
source:
  kafka:
    bootstrapServers: k:9092
    topic: payments
    {source_format}
    eventTime: {{field: ts, maxOutOfOrderness: 5s}}
pipeline:
  - filter: "amount > 0"
  - keyBy: [user_id]
  - window: {{tumbling: {{size: 60s}}}}
  - aggregate: [{{fn: sum, field: amount, as: total}}, {{fn: count, as: n_payments}}]
sink:
  kafka: {{bootstrapServers: k:9092, topic: out, keyField: user_id, {sink_format}}}
"#
    );
    match JobDocument::parse(&text) {
        Ok(document) => document.spec,
        Err(e) => panic!("benchmark spec: {e}"),
    }
}

fn user(i: usize) -> String {
    format!("user-{:05}", (i * 7919) % KEYS)
}

/// The i-th batch: event time advances 1 ms per record, so windows close as it runs.
fn batch(i: usize) -> RecordBatch {
    let fields = fields(i);
    let times = fields.column(2).clone();
    let result = RecordBatch::try_from_iter(
        fields
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(fields.columns().iter().cloned())
            .chain([(EVENT_TIME.to_owned(), times.clone()), (OFFSET.to_owned(), times)]),
    );
    match result {
        Ok(batch) => batch,
        Err(e) => panic!("building a batch: {e}"),
    }
}

/// The payment fields of the i-th batch.
fn fields(i: usize) -> RecordBatch {
    let first = i * BATCH;
    let users: Vec<String> = (first..first + BATCH).map(user).collect();
    let amounts: Vec<f64> = (first..first + BATCH).map(|r| (r % 100) as f64 - 1.0).collect();
    let times: Vec<i64> = (first..first + BATCH).map(|r| r as i64).collect();
    let result = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(users)) as ArrayRef),
        ("amount", Arc::new(Float64Array::from(amounts)) as ArrayRef),
        ("ts", Arc::new(Int64Array::from(times)) as ArrayRef),
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

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The records of `payloads`, one batch's worth, at offsets from `first`.
fn raw(payloads: &[Vec<u8>], first: usize) -> Vec<RawRecord<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| RawRecord {
            payload: Some(p.as_slice()),
            key: None,
            partition: 0,
            offset: (first + i) as i64,
            timestamp: None,
            headers: None,
        })
        .collect()
}

fn avro_round_trip(plan: &Arc<Plan>) {
    let registry = must(weir_testkit::registry::SchemaRegistry::start(), "starting the schema registry stand-in");
    let registry_url = format!("schemaRegistry: {{url: \"{}\"}}", registry.url());
    let spec = spec(&format!("format: avro\n    {registry_url}"), &format!("format: avro, {registry_url}"));
    let files = FormatFiles { secrets: SecretMounts::new("/nonexistent"), descriptor_set: None };
    let decoder = must(Decoder::new(&spec.source.kafka, &BTreeSet::new(), &files), "avro decoder");
    let encoder = must(Encoder::new(&spec.sink.kafka, "bench", &files.secrets), "avro encoder");
    let async_runtime = must(tokio::runtime::Builder::new_current_thread().enable_all().build(), "tokio");
    // Payloads as a producer's serializer writes them: magic 0, schema id, Avro body.
    let writer_schema = fields(0).schema();
    let avro = must(arrow_avro::schema::AvroSchema::try_from(writer_schema.as_ref()), "avro schema");
    let id = registry.register("payments-value", &avro.json_string);
    let batches = 60;
    let payloads: Vec<Vec<Vec<u8>>> = (0..batches)
        .map(|b| {
            let mut writer = must(
                WriterBuilder::new(writer_schema.as_ref().clone())
                    .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                    .build_encoder::<AvroSoeFormat>(),
                "avro writer",
            );
            must(writer.encode(&fields(b)), "encoding input");
            writer.flush().iter().map(|row| row.to_vec()).collect()
        })
        .collect();
    report("avro decode + engine + avro encode", batches * BATCH, || {
        let mut pipeline = PartitionPipeline::new(plan.clone(), Resume::default(), Instant::now());
        let started = Instant::now();
        let mut produced = 0usize;
        for (b, batch_payloads) in payloads.iter().enumerate() {
            let records = raw(batch_payloads, b * BATCH);
            must(async_runtime.block_on(decoder.prepare(&records)), "schema lookup");
            let decoded = decoder.decode(&records);
            let Some(batch) = decoded.batch else { panic!("nothing decoded: {:?}", decoded.errors.first()) };
            let processed = must(pipeline.process(batch, Instant::now()), "engine");
            must(async_runtime.block_on(encoder.prepare(&processed.output)), "schema registration");
            for out in processed.output.iter().filter(|b| b.num_rows() > 0) {
                let layout = Layout { key_field: Some("user_id"), ..Layout::default() };
                produced += must(encoder.encode(out, layout), "encode").len();
            }
        }
        black_box(produced);
        started.elapsed()
    });
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run either way.
    let spec = spec(JSON_FORMAT, "format: json");
    let plan = match Plan::new(&spec) {
        Ok(plan) => Arc::new(plan),
        Err(e) => panic!("plan: {e}"),
    };
    println!("weir-runtime engine benchmark ({} keys, batches of {BATCH}, one thread)", KEYS);
    engine_alone(&plan);
    json_round_trip(&plan, &spec);
    avro_round_trip(&plan);
}

//! One pod's consume → process → produce loop, on a thread of its own.
//!
//! Offsets: each partition commits the oldest offset its open windows still need (or its
//! position when none are open), with its event-time progress in the commit metadata, and
//! only after everything produced before has been delivered. A restarted or reassigned
//! partition replays from there, rebuilds its open windows, and drops the replayed records
//! of windows it already emitted. Nothing is lost; a crash may repeat recent results.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arrow::{
    array::{AsArray, RecordBatch},
    datatypes::Int64Type,
    error::ArrowError,
};
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, DeliveryResult, Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer, ProducerContext},
};
use serde::Serialize;
use tracing::{debug, error, info, warn};
use weir_crds::{Step, StreamJobSpec};

use crate::{
    codec::{self, JsonDecoder, RawRecord},
    engine::{PartitionPipeline, Plan, Resume},
    kafka::config::{self, SecretMounts},
    metrics::Metrics,
    progress::{Progress, ProgressStore},
};

/// Why the job stopped with an error (the pod exits non-zero and is restarted).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline could not be compiled.
    #[error("compiling the pipeline: {0}")]
    Plan(#[from] crate::engine::EngineError),
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] config::CredentialError),
    /// A Kafka client could not be created or failed fatally.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: KafkaError,
    },
    /// Records could not be delivered to the sink; offsets were not committed.
    #[error("delivery to the sink failed: {0}")]
    Delivery(String),
    /// Results could not be encoded.
    #[error("encoding results: {0}")]
    Encode(#[from] ArrowError),
    /// The job needs something this runtime does not do yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> RunError {
    move |source| RunError::Kafka { context, source }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The StreamJob's name (the `streamjob` metric label).
    pub name: String,
    /// Consumer group of the source.
    pub group_id: String,
    /// The job.
    pub spec: StreamJobSpec,
    /// Where Kafka credentials are mounted.
    pub secrets: SecretMounts,
    /// Most records decoded into one batch.
    pub max_batch: usize,
    /// Longest wait to fill a batch.
    pub batch_wait: Duration,
    /// Time between offset commits.
    pub commit_interval: Duration,
}

/// What the admin server reads and writes while the loop runs.
#[derive(Debug)]
pub struct Shared {
    /// The runtime's metrics.
    pub metrics: Metrics,
    /// Set to stop the loop: it drains, commits and returns.
    pub shutdown: AtomicBool,
    last_poll_ms: AtomicI64,
    status: Mutex<Status>,
}

/// The `/status` document.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Source topic.
    pub topic: String,
    /// Owned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// When offsets were last committed, RFC 3339.
    pub last_commit: Option<String>,
}

/// One owned partition in `/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: i32,
    /// Next offset to process.
    pub position: i64,
    /// Offset last committed.
    pub committed: Option<i64>,
    /// The watermark, epoch ms.
    pub watermark: Option<i64>,
    /// (key, window) aggregates held.
    pub open_aggregates: usize,
}

impl Shared {
    /// State for a job whose metrics are `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, shutdown: AtomicBool::new(false), last_poll_ms: AtomicI64::new(0), status: Mutex::default() }
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Ready: owns at least one partition, and the loop polled within the last 10 s.
    pub fn is_ready(&self) -> bool {
        let polled_recently = now_ms() - self.last_poll_ms.load(Ordering::Relaxed) < 10_000;
        polled_recently && !lock(&self.status).partitions.is_empty()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The pipeline state of an owned partition.
#[derive(Debug)]
struct Run {
    pipeline: PartitionPipeline,
    position: i64,
    committed: Option<i64>,
}

impl Run {
    /// The offset to commit (the oldest one open windows still need) and the progress to keep.
    fn commit_point(&self) -> Progress {
        Progress {
            v: 1,
            max_event_time: self.pipeline.watermark().max_event_time(),
            position: self.position,
            committed: self.pipeline.min_open_offset().map_or(self.position, |o| o.min(self.position)),
        }
    }
}

/// Owned partitions, shared with the rebalance callbacks.
#[derive(Debug, Default)]
struct Table {
    runs: BTreeMap<i32, Run>,
    assigned: Vec<i32>,
}

/// Counts deliveries; the first failure stops the job before its offsets are committed.
#[derive(Debug, Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            error!(%error, topic = message.topic(), "delivery failed");
            lock(&self.failed).get_or_insert_with(|| error.to_string());
        }
    }
}

type Sink = BaseProducer<Deliveries>;

struct SourceContext {
    topic: String,
    table: Arc<Mutex<Table>>,
    progress: Option<ProgressStore>,
    producers: Vec<Arc<Sink>>,
    metrics: Metrics,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        for (id, partition) in &topic.partitions {
            if *id < 0 {
                continue;
            }
            let label = id.to_string();
            if !partition.desired {
                let _ = self.metrics.consumer_lag.remove_label_values(&[&self.topic, &label]);
                continue;
            }
            let lag = if partition.committed_offset >= 0 && partition.hi_offset >= 0 {
                partition.hi_offset - partition.committed_offset
            } else if partition.hi_offset >= 0 {
                partition.hi_offset - partition.lo_offset.max(0)
            } else {
                continue;
            };
            self.metrics.consumer_lag.with_label_values(&[&self.topic, &label]).set(lag.max(0));
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        // Hand the partitions over with everything produced delivered and committed.
        for producer in &self.producers {
            if let Err(e) = producer.flush(Duration::from_secs(30)) {
                warn!(error = %e, "flushing before giving up partitions");
            }
        }
        let mut table = lock(&self.table);
        let mut offsets = TopicPartitionList::new();
        for element in revoked.elements() {
            if let Some(run) = table.runs.remove(&element.partition()) {
                add_commit(&mut offsets, self.progress.as_ref(), &self.topic, element.partition(), &run, &self.metrics);
            }
        }
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
        {
            warn!(error = %e, "committing revoked partitions");
        }
        info!(partitions = ?revoked.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
            info!(?partitions, "partitions assigned");
            lock(&self.table).assigned.extend(partitions);
        }
    }
}

/// Saves a partition's progress, then adds its offset to `offsets`. When the progress cannot
/// be saved the offset is left out: offsets never run ahead of progress.
fn add_commit(
    offsets: &mut TopicPartitionList,
    store: Option<&ProgressStore>,
    topic: &str,
    partition: i32,
    run: &Run,
    metrics: &Metrics,
) {
    let progress = run.commit_point();
    if let Some(store) = store
        && let Err(e) = store.save(topic, partition, &progress)
    {
        warn!(partition, error = %e, "saving progress failed; offsets stay where they were");
        metrics.checkpoints_failed.inc();
        return;
    }
    if offsets.add_partition_offset(topic, partition, Offset::Offset(progress.committed)).is_ok()
        && let Some(mut element) = offsets.find_partition(topic, partition)
    {
        element.set_metadata(serde_json::to_string(&progress).unwrap_or_default());
    }
}

fn client<C: rdkafka::config::FromClientConfigAndContext<Ctx>, Ctx: ClientContext>(
    properties: &config::Properties,
    context: Ctx,
) -> Result<C, KafkaError> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config.create_with_context(context)
}

/// The running job: clients, plan and partition table.
struct Job {
    settings: Settings,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    decoder: JsonDecoder,
    consumer: BaseConsumer<SourceContext>,
    sink: Arc<Sink>,
    dead_letters: Option<(Arc<Sink>, String)>,
    table: Arc<Mutex<Table>>,
    topic: String,
    progress: Option<ProgressStore>,
}

/// Runs the job until `shared.shutdown` is set; then drains, commits and returns.
pub fn run(settings: Settings, shared: Arc<Shared>) -> Result<(), RunError> {
    let mut job = Job::start(settings, shared)?;
    let result = job.run_loop();
    if let Err(e) = &result {
        error!(error = %e, "stopping on a fatal error; offsets since the last commit will be replayed");
        return result;
    }
    job.commit()?;
    info!("stopped: results flushed and offsets committed");
    Ok(())
}

impl Job {
    fn start(settings: Settings, shared: Arc<Shared>) -> Result<Self, RunError> {
        let spec = &settings.spec;
        let plan = Arc::new(Plan::new(spec)?);
        let topic = spec.source.kafka.topic.clone();
        let decoder = JsonDecoder::new(&spec.source.kafka, &referenced_fields(spec));
        let sink: Arc<Sink> = Arc::new(
            client(&config::producer(&spec.sink.kafka, &settings.secrets)?, Deliveries::default())
                .map_err(kafka("creating the sink producer"))?,
        );
        let dead_letters = match &spec.dead_letter {
            Some(dlq) => {
                let mut sink_spec = spec.sink.kafka.clone();
                sink_spec.bootstrap_servers =
                    dlq.bootstrap_servers.clone().unwrap_or_else(|| spec.source.kafka.bootstrap_servers.clone());
                sink_spec.security = spec.source.kafka.security.clone();
                sink_spec.properties.clear();
                let producer: Sink = client(&config::producer(&sink_spec, &settings.secrets)?, Deliveries::default())
                    .map_err(kafka("creating the dead-letter producer"))?;
                Some((Arc::new(producer), dlq.topic.clone()))
            }
            None => None,
        };
        let table = Arc::new(Mutex::new(Table::default()));
        let mut producers = vec![sink.clone()];
        producers.extend(dead_letters.iter().map(|(p, _)| p.clone()));
        let progress =
            ProgressStore::for_storage(spec.checkpoint.as_ref().map(|c| c.storage.as_str()), &settings.group_id);
        let context = SourceContext {
            topic: topic.clone(),
            table: table.clone(),
            progress: progress.clone(),
            producers,
            metrics: shared.metrics.clone(),
        };
        let consumer: BaseConsumer<SourceContext> =
            client(&config::consumer(&spec.source.kafka, &settings.group_id, &settings.secrets)?, context)
                .map_err(kafka("creating the consumer"))?;
        refuse_uncovered_keys(&consumer, spec, &topic)?;
        consumer.subscribe(&[&topic]).map_err(kafka("subscribing to the source topic"))?;
        lock(&shared.status).topic = topic.clone();
        info!(topic, group = settings.group_id, "consuming");
        Ok(Self { settings, shared, plan, decoder, consumer, sink, dead_letters, table, topic, progress })
    }

    fn run_loop(&mut self) -> Result<(), RunError> {
        let mut last_commit = Instant::now();
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let messages = self.poll_batch()?;
            self.start_assigned_partitions()?;
            if !messages.is_empty() {
                self.process(&messages)?;
            }
            drop(messages);
            self.tick()?;
            self.sink.poll(Duration::ZERO);
            if let Some((dlq, _)) = &self.dead_letters {
                dlq.poll(Duration::ZERO);
            }
            if last_commit.elapsed() >= self.settings.commit_interval {
                self.commit()?;
                last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// Up to `max_batch` records, waiting at most `batch_wait` for them.
    fn poll_batch(&self) -> Result<Vec<BorrowedMessage<'_>>, RunError> {
        let deadline = Instant::now() + self.settings.batch_wait;
        let mut messages = Vec::new();
        // Liveness for /readyz: once per batch is enough (a batch waits at most `batch_wait`).
        self.shared.last_poll_ms.store(now_ms(), Ordering::Relaxed);
        while messages.len() < self.settings.max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.consumer.poll(wait) {
                Some(Ok(message)) => messages.push(message),
                Some(Err(KafkaError::MessageConsumption(code))) if !is_fatal(code) => {
                    warn!(%code, "consume error; librdkafka retries");
                }
                Some(Err(e)) => return Err(RunError::Kafka { context: "consuming", source: e }),
                None => break,
            }
        }
        Ok(messages)
    }

    /// Creates pipelines for newly assigned partitions, resuming from their commit metadata.
    fn start_assigned_partitions(&self) -> Result<(), RunError> {
        let assigned = std::mem::take(&mut lock(&self.table).assigned);
        if assigned.is_empty() {
            return Ok(());
        }
        let mut wanted = TopicPartitionList::new();
        for &partition in &assigned {
            wanted.add_partition(&self.topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(wanted, Duration::from_secs(30))
            .map_err(kafka("reading committed offsets"))?;
        let mut table = lock(&self.table);
        for element in committed.elements() {
            let committed = match element.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            let saved = match &self.progress {
                Some(store) => store.load(&self.topic, element.partition()).unwrap_or_else(|e| {
                    warn!(error = %e, "reading progress failed; replayed windows may repeat");
                    None
                }),
                None => serde_json::from_str::<Progress>(element.metadata()).ok(),
            };
            if saved.is_none() && committed.is_some() {
                warn!(
                    partition = element.partition(),
                    "no saved progress for a committed partition: windows open at the last stop may be emitted again \
                     in part (set checkpoint.storage, or use a broker that keeps commit metadata)"
                );
            }
            let resume = Resume {
                max_event_time: saved.and_then(|p| p.max_event_time),
                replay_until: saved.map_or(0, |p| p.position),
            };
            debug!(partition = element.partition(), ?resume, "starting partition");
            let pipeline = PartitionPipeline::new(self.plan.clone(), resume, Instant::now());
            let position = committed.unwrap_or(0);
            table.runs.insert(element.partition(), Run { pipeline, position, committed });
        }
        self.shared.metrics.assigned_partitions.set(table.runs.len() as i64);
        Ok(())
    }

    fn process(&self, messages: &[BorrowedMessage<'_>]) -> Result<(), RunError> {
        let mut by_partition: BTreeMap<i32, Vec<RawRecord<'_>>> = BTreeMap::new();
        for message in messages {
            by_partition.entry(message.partition()).or_default().push(RawRecord {
                payload: message.payload(),
                key: message.key(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
            });
        }
        self.shared.metrics.records_in.inc_by(messages.len() as u64);
        let mut table = lock(&self.table);
        for (partition, records) in by_partition {
            let Some(run) = table.runs.get_mut(&partition) else {
                // Revoked while the batch was in flight: the new owner replays these.
                continue;
            };
            let decoded = self.decoder.decode(&records);
            for (index, reason) in &decoded.errors {
                self.shared.metrics.decode_errors.inc();
                let record = &records[*index];
                self.dead_letter(
                    record.payload.unwrap_or_default(),
                    &format!("decode: {reason}"),
                    partition,
                    record.offset,
                    record.key,
                )?;
            }
            if let Some(batch) = decoded.batch {
                match run.pipeline.process(batch, Instant::now()) {
                    Ok(processed) => {
                        self.produce(&processed.output)?;
                        if let Some(late) = processed.late {
                            self.shared.metrics.records_late.inc_by(late.num_rows() as u64);
                            if self.settings.spec.dead_letter.as_ref().is_some_and(|d| d.late_records) {
                                self.dead_letter_rows(&late, "late: its window had closed", partition)?;
                            }
                        }
                    }
                    Err(e) => {
                        // Data the pipeline cannot evaluate (e.g. a string where a number is
                        // needed) is treated like undecodable input, not as a crash.
                        warn!(partition, error = %e, "pipeline failed on a batch; dead-lettering it");
                        self.shared.metrics.decode_errors.inc_by(records.len() as u64);
                        for record in &records {
                            let reason = format!("pipeline: {e}");
                            self.dead_letter(
                                record.payload.unwrap_or_default(),
                                &reason,
                                partition,
                                record.offset,
                                record.key,
                            )?;
                        }
                    }
                }
            }
            if let Some(last) = records.last() {
                run.position = last.offset + 1;
            }
        }
        Ok(())
    }

    fn tick(&self) -> Result<(), RunError> {
        let now = Instant::now();
        let mut table = lock(&self.table);
        let mut outputs = Vec::new();
        let mut slowest: Option<i64> = None;
        for run in table.runs.values_mut() {
            outputs.extend(run.pipeline.tick(now)?);
            if run.pipeline.watermark().max_event_time().is_some() {
                let wm = run.pipeline.watermark().current();
                slowest = Some(slowest.map_or(wm, |s| s.min(wm)));
            }
        }
        drop(table);
        if let Some(wm) = slowest {
            self.shared.metrics.watermark_lag_seconds.set((now_ms() - wm) as f64 / 1000.0);
        }
        self.produce(&outputs)
    }

    fn produce(&self, batches: &[RecordBatch]) -> Result<(), RunError> {
        let sink = &self.settings.spec.sink.kafka;
        for batch in batches {
            for record in codec::encode_json(batch, sink.key_field.as_deref())? {
                let mut base = BaseRecord::to(&sink.topic).payload(record.payload.as_slice());
                if let Some(key) = &record.key {
                    base = base.key(key.as_slice());
                }
                if let Some(ts) = record.timestamp {
                    base = base.timestamp(ts);
                }
                send(&self.sink, base)?;
                self.shared.metrics.records_out.inc();
            }
        }
        Ok(())
    }

    /// Sends a record the job cannot use to the dead-letter topic, with why and where from.
    fn dead_letter(
        &self,
        payload: &[u8],
        reason: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
    ) -> Result<(), RunError> {
        let Some((producer, topic)) = &self.dead_letters else { return Ok(()) };
        let partition = partition.to_string();
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "weir.error", value: Some(reason) })
            .insert(Header { key: "weir.source.topic", value: Some(&self.topic) })
            .insert(Header { key: "weir.source.partition", value: Some(&partition) })
            .insert(Header { key: "weir.source.offset", value: Some(&offset) });
        let mut base = BaseRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            base = base.key(key);
        }
        send(producer, base)?;
        self.shared.metrics.records_dead_lettered.inc();
        Ok(())
    }

    /// Dead-letters processed rows (late records) as JSON, with their source offsets.
    fn dead_letter_rows(&self, rows: &RecordBatch, reason: &str, partition: i32) -> Result<(), RunError> {
        let offsets = rows.column_by_name(crate::engine::OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>());
        for (row, encoded) in codec::encode_json(rows, None)?.into_iter().enumerate() {
            let offset = offsets.map_or(-1, |o| o.value(row));
            self.dead_letter(&encoded.payload, reason, partition, offset, None)?;
        }
        Ok(())
    }

    /// Waits for every produced record, then commits each partition's commit point.
    fn commit(&self) -> Result<(), RunError> {
        for producer in std::iter::once(&self.sink).chain(self.dead_letters.iter().map(|(p, _)| p)) {
            producer.flush(Duration::from_secs(60)).map_err(kafka("flushing produced records"))?;
            if let Some(failure) = lock(&producer.context().failed).clone() {
                return Err(RunError::Delivery(failure));
            }
        }
        let mut table = lock(&self.table);
        let mut offsets = TopicPartitionList::new();
        for (&partition, run) in &table.runs {
            add_commit(&mut offsets, self.progress.as_ref(), &self.topic, partition, run, &self.shared.metrics);
        }
        if offsets.count() > 0 {
            self.consumer.commit(&offsets, CommitMode::Sync).map_err(kafka("committing offsets"))?;
            for element in offsets.elements() {
                if let (Some(run), Offset::Offset(o)) = (table.runs.get_mut(&element.partition()), element.offset()) {
                    run.committed = Some(o);
                }
            }
        }
        let partitions = table
            .runs
            .iter()
            .map(|(&partition, run)| PartitionStatus {
                partition,
                position: run.position,
                committed: run.committed,
                watermark: run.pipeline.watermark().max_event_time().map(|_| run.pipeline.watermark().current()),
                open_aggregates: run.pipeline.open_aggregates(),
            })
            .collect();
        self.shared.metrics.assigned_partitions.set(table.runs.len() as i64);
        drop(table);
        let mut status = lock(&self.shared.status);
        status.partitions = partitions;
        status.last_commit = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        Ok(())
    }
}

/// Queues a record, waiting for room when the producer's queue is full.
fn send(producer: &Sink, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), RunError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(50));
                record = returned;
            }
            Err((e, _)) => return Err(RunError::Kafka { context: "producing", source: e }),
        }
    }
}

/// State is kept per source partition, so a key spread over several partitions would be
/// aggregated in pieces. Until the runtime repartitions through an internal topic, such a
/// job is refused at start rather than run with wrong results.
fn refuse_uncovered_keys(
    consumer: &BaseConsumer<SourceContext>,
    spec: &StreamJobSpec,
    topic: &str,
) -> Result<(), RunError> {
    let Some(keys) = spec.pipeline.iter().find_map(|s| if let Step::KeyBy(k) = s { Some(k) } else { None }) else {
        return Ok(());
    };
    let partitioned_by = &spec.source.kafka.partitioned_by;
    if keys.iter().all(|k| partitioned_by.contains(k)) {
        return Ok(());
    }
    let metadata =
        consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).map_err(kafka("reading topic metadata"))?;
    let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if partitions <= 1 {
        return Ok(());
    }
    Err(RunError::Unsupported(format!(
        "keyBy {keys:?} is not covered by source.kafka.partitionedBy {partitioned_by:?} and topic {topic} has \
         {partitions} partitions; repartitioning is not implemented yet, so declare partitionedBy when the topic \
         is keyed by these fields"
    )))
}

fn is_fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::Authentication
    )
}

/// Every field name the pipeline mentions, to know which metadata columns to add.
fn referenced_fields(spec: &StreamJobSpec) -> std::collections::BTreeSet<String> {
    use weir_crds::expr::{SelectItem, parse_expr, parse_select_item, referenced_fields as fields_of};
    let mut names = std::collections::BTreeSet::new();
    for step in &spec.pipeline {
        match step {
            Step::Filter(text) => names.extend(parse_expr(text).map(|e| fields_of(&e)).unwrap_or_default()),
            Step::Select(items) => {
                for item in items {
                    if let Ok(SelectItem::Named { expr, .. }) = parse_select_item(item) {
                        names.extend(fields_of(&expr));
                    }
                }
            }
            Step::KeyBy(keys) => names.extend(keys.iter().cloned()),
            Step::Aggregate(aggregations) => names.extend(aggregations.iter().filter_map(|a| a.field.clone())),
            Step::Window(_) => {}
        }
    }
    names
}

//! One pod's consume → process → produce loop, on a thread of its own.
//!
//! Progress is made durable by [`commit`]: checkpoints of every owned partition's state
//! followed by an offset commit (in the sink transaction for exactly-once), or, without
//! checkpoint storage, offset commits at the oldest offset open windows still need.
//! A partition assigned to this instance resumes from its checkpoint, or replays from its
//! committed offset and drops replayed records of windows it already emitted.

mod commit;
mod dead_letters;
mod front;
mod keyed;
mod owned;
mod shared;
mod source;

use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arrow::{array::RecordBatch, error::ArrowError};
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::Span;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{BaseRecord, Producer},
};
use tracing::{debug, error, info, warn};
use weir_crds::{Delivery, OversizeRecords, StartOffset, StreamJobSpec};

pub(crate) use self::shared::AdminRequest;
pub use self::shared::{
    AssignRequest, Assigned, CheckpointStatus, PartitionStatus, ResumeRequest, Resumed, Savepoint, SavepointRequest,
    Shared, Status,
};
use self::{
    commit::Committer,
    dead_letters::DeadLetters,
    front::Front,
    owned::OwnedPartition,
    shared::{lock, now_ms, now_rfc3339},
    source::{SourceContext, records_by_partition},
};
use crate::{
    assignment::{self, AssignmentMode, Slot},
    checkpoint::{self, CheckpointStore, Checkpointer, PartitionSnapshot},
    codec::{self, CodecError, Decoder, Encoder, FormatFiles, Layout, RawRecord},
    engine::{PartitionPipeline, Plan, Resume},
    kafka::{
        auth::{TokenError, TokenSource},
        clients::{AdminContext, Deliveries, Sink, client, send},
        config::{self, SecretMounts, Side},
        headers::HeaderPolicy,
        rate::RecordRate,
        retry::{Class, classify, retrying},
        start,
        topics::{RECORD_OVERHEAD, ensure_topic, missing_topic, partition_count, partition_list, sink_record_limit},
    },
    progress::Progress,
    telemetry::{self, Spans},
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
    /// An OAUTHBEARER or MSK IAM token source could not be set up.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A topic the job needs does not exist and will not be created.
    #[error("{0}")]
    MissingTopic(String),
    /// A Kafka client failed fatally; the reason is librdkafka's (it names the broker and,
    /// for authentication, the mechanism).
    #[error("kafka: {context}: {source}: {reason}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: KafkaError,
        /// librdkafka's words.
        reason: String,
    },
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
    /// A payload format could not be set up or its schema registry failed.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// Checkpoint storage failed where the job cannot go on without it.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// State could not be restored from checkpoint storage.
    #[error("restoring state: {0}")]
    Restore(#[from] checkpoint::StoreError),
    /// The job needs something this runtime does not do yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The window state outgrew `spec.stateBudget`.
    #[error(
        "window state of {held} bytes exceeds the state budget of {budget} bytes (spec.stateBudget, or half the \
         memory limit): raise it with the memory, add pods, or shorten windows and gaps"
    )]
    StateBudget {
        /// Bytes held.
        held: usize,
        /// The budget.
        budget: u64,
    },
    /// A result was larger than the sink accepts and `oversizeRecords` is `fail`.
    #[error("{0} (spec.sink.kafka.oversizeRecords: fail)")]
    Oversize(String),
}

impl RunError {
    /// `error` of `context`, with the reason of a fatal client error `admin` saw, if any:
    /// librdkafka reports those to the context while the call only times out.
    fn explained(admin: &AdminContext, context: &'static str, error: KafkaError) -> Self {
        match admin.fatal() {
            Some((source, reason)) => Self::Client { context, source, reason },
            None => Self::Kafka { context, source: error },
        }
    }
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> RunError {
    move |source| RunError::Kafka { context, source }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The StreamJob's name (the `streamjob` metric label).
    pub name: String,
    /// This instance (the pod name): names its transactional id and savepoint manifest.
    pub instance: String,
    /// Consumer group of the source.
    pub group_id: String,
    /// The job.
    pub spec: StreamJobSpec,
    /// Where Kafka and schema registry credentials are mounted.
    pub secrets: SecretMounts,
    /// The Protobuf descriptor set of a `protobuf` source.
    pub descriptor_set: Option<std::path::PathBuf>,
    /// Time between offset commits when the job has no checkpoint storage.
    pub commit_interval: Duration,
    /// Savepoint to start from.
    pub restore_from: Option<String>,
    /// Starts the exported spans; `None` when tracing is off.
    pub spans: Option<Spans>,
    /// Who assigns partitions.
    pub assignment: AssignmentMode,
    /// How often the source topic is checked for added partitions.
    pub partition_discovery: Duration,
}

/// Owned partitions, shared with the rebalance callbacks.
#[derive(Debug, Default)]
struct Table {
    partitions: BTreeMap<i32, OwnedPartition>,
    assigned: Vec<i32>,
}

/// The running job: clients, plan and partition table.
struct Job {
    settings: Settings,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    decoder: Decoder,
    encoder: Encoder,
    /// Runs the formats' schema registry calls.
    runtime: tokio::runtime::Handle,
    consumer: BaseConsumer<SourceContext>,
    committer: Arc<Committer>,
    dead_letter_topic: Option<String>,
    /// The largest record the sink takes, bytes (see [`sink_record_limit`]).
    sink_limit: usize,
    /// Most bytes of window state this pod may hold.
    state_budget: Option<u64>,
    /// The partitions whose state sizes are exported.
    state_shown: Mutex<BTreeSet<i32>>,
    table: Arc<Mutex<Table>>,
    topic: String,
    /// The source topic's partition count (the internal topic's for a repartitioned job):
    /// it grows when partitions are added to the topic (see [`Job::discover_partitions`]).
    partition_count: AtomicUsize,
    /// Partitions added to the source topic while the job ran: with no committed offset,
    /// they are read from their beginning, whatever `startOffset` says.
    discovered: Mutex<BTreeSet<i32>>,
    /// Set by a stop-with-savepoint, cleared by `/resume`: consuming is paused meanwhile.
    stopped: Arc<AtomicBool>,
    /// While stopped: per partition, the first offset fetched but not processed (see
    /// [`Job::hold_back`]).
    held_back: Mutex<BTreeMap<i32, i64>>,
    /// While stopped: the snapshots the stop-with-savepoint took. This instance left the
    /// group, so they are its state: their lag is reported from them, and a further
    /// savepoint (a rollout of pods already stopped) writes them again under its id.
    stopped_with: Mutex<Vec<PartitionSnapshot>>,
    /// `maxRecordsPerSecond`, when set.
    rate: Option<RecordRate>,
    /// Headers of produced records.
    headers: HeaderPolicy,
    /// The front of a repartitioned job; then `consumer` reads the internal topic.
    front: Option<Front>,
    /// Exactly-once with the dead-letter topic on the sink's cluster: dead letters of the
    /// window stage go in the sink's transaction, so a replay does not send them twice.
    dead_letters_in_sink_transaction: bool,
}

/// Runs the job until `shared.shutdown` is set; then drains, makes progress durable and returns.
pub fn run(settings: Settings, shared: Arc<Shared>, runtime: tokio::runtime::Handle) -> Result<(), RunError> {
    let failing = shared.clone();
    let fail = move |e: RunError| {
        error!(error = %e, "stopping on a fatal error; progress since the last checkpoint or commit will be replayed");
        failing.fail(&e.to_string());
        e
    };
    let mut job = Job::start(settings, shared, runtime).map_err(&fail)?;
    let result = job.run_loop();
    if let Err(e) = result {
        return Err(fail(e));
    }
    if !job.stopped.load(Ordering::Relaxed) {
        job.commit()?;
    }
    info!("stopped: results flushed and progress committed");
    Ok(())
}

impl Job {
    fn start(settings: Settings, shared: Arc<Shared>, runtime: tokio::runtime::Handle) -> Result<Self, RunError> {
        let spec = &settings.spec;
        let plan = Plan::new(spec)?;
        let source_token =
            TokenSource::for_connection(spec.source.kafka.security.as_ref(), Side::Source, &settings.secrets)?;
        let source_partitions = source_partition_count(spec, &settings, source_token.clone(), &shared)?;
        let exactly_once = spec.sink.kafka.delivery == Delivery::ExactlyOnce;
        let checkpoint = spec.checkpoint.as_ref();
        let interval = checkpoint.map_or(settings.commit_interval, |c| c.interval.get());
        // The broker aborts a transaction open this long; checkpoints commit well before.
        let transaction_timeout = (interval * 4).clamp(Duration::from_secs(60), Duration::from_secs(900));
        let front = if front::needs_repartition(spec, &plan, source_partitions) {
            let transactions = exactly_once
                .then(|| (format!("{}-{}-front", settings.group_id, settings.instance), transaction_timeout));
            Some(Front::start(&settings, &plan, &shared, source_partitions, transactions)?)
        } else {
            None
        };
        let plan = Arc::new(match &front {
            Some(_) => plan.split_at_key().1,
            None => plan,
        });
        let topic = front.as_ref().map_or_else(|| spec.source.kafka.topic.clone(), |f| f.internal.clone());
        let files = FormatFiles { secrets: settings.secrets.clone(), descriptor_set: settings.descriptor_set.clone() };
        let decoder = Decoder::new(&spec.source.kafka, plan.referenced_fields(), &files)?;
        let encoder = Encoder::new(&spec.sink.kafka, &settings.name, &settings.secrets)?;
        let mut sink_properties = config::producer(&spec.sink.kafka, &settings.secrets)?;
        if exactly_once {
            sink_properties.insert("transactional.id".into(), format!("{}-{}", settings.group_id, settings.instance));
            sink_properties.insert("transaction.timeout.ms".into(), transaction_timeout.as_millis().to_string());
        }
        let metrics = shared.metrics.clone();
        let sink_security = spec.sink.kafka.security.as_ref();
        let sink_token = TokenSource::for_connection(sink_security, Side::Sink, &settings.secrets)?;
        let sink_topic = &spec.sink.kafka.topic;
        ensure_topic(&sink_properties, sink_token.clone(), sink_topic, spec.sink.kafka.create_topic.as_ref())
            .map_err(kafka("creating topics"))?;
        let sink_limit = sink_record_limit(&mut sink_properties, sink_token.clone(), sink_topic);
        let state_budget = spec.state_budget_bytes();
        let deliveries = Deliveries::new("sink", metrics.clone(), sink_token);
        let sink: Arc<Sink> =
            Arc::new(client(&sink_properties, deliveries).map_err(kafka("creating the sink producer"))?);
        let sink_metadata = sink.client().fetch_metadata(Some(sink_topic), Duration::from_secs(30));
        if let Some(missing) = missing_topic(sink_metadata, sink_topic, "spec.sink.kafka.createTopic") {
            return Err(RunError::MissingTopic(missing));
        }
        if exactly_once {
            // Fences an earlier instance with the same id and aborts its open transaction.
            sink.init_transactions(Duration::from_secs(60)).map_err(kafka("initialising transactions"))?;
            sink.begin_transaction().map_err(kafka("beginning a transaction"))?;
        }
        let dead_letters_in_sink_transaction = exactly_once
            && spec.dead_letter.as_ref().is_some_and(|dlq| {
                dlq.bootstrap_servers.as_ref().unwrap_or(&spec.source.kafka.bootstrap_servers)
                    == &spec.sink.kafka.bootstrap_servers
                    && spec.source.kafka.security == spec.sink.kafka.security
            });
        let dead_letters = match &spec.dead_letter {
            Some(dlq) => {
                let sink_spec = front::source_side_sink(spec, dlq.bootstrap_servers.as_deref());
                let properties = config::producer(&sink_spec, &settings.secrets)?;
                let token = TokenSource::for_connection(sink_spec.security.as_ref(), Side::Source, &settings.secrets)?;
                ensure_topic(&properties, token.clone(), &dlq.topic, dlq.create_topic.as_ref())
                    .map_err(kafka("creating topics"))?;
                let deliveries = Deliveries::new("dead_letter", metrics.clone(), token);
                let producer: Sink =
                    client(&properties, deliveries).map_err(kafka("creating the dead-letter producer"))?;
                Some(Arc::new(producer))
            }
            None => None,
        };
        let checkpointer = match checkpoint {
            Some(c) => {
                let store = CheckpointStore::open(&c.storage, &settings.group_id)?;
                let options = checkpoint::Options {
                    restore_from: settings.restore_from.clone(),
                    retained: usize::try_from(c.retained).unwrap_or(1),
                    tolerable_failures: u32::try_from(c.tolerable_failures).unwrap_or(1),
                };
                Some(Arc::new(Checkpointer::new(store, runtime.clone(), options)?))
            }
            None => None,
        };
        let committer = Arc::new(Committer {
            topic: topic.clone(),
            shared: shared.clone(),
            checkpointer,
            sink,
            dead_letters,
            exactly_once,
            transaction_started: Mutex::new(Instant::now()),
            transaction_timeout,
            retry: spec.source.kafka.retry.clone(),
        });
        let table = Arc::new(Mutex::new(Table::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        let context = SourceContext {
            table: table.clone(),
            committer: committer.clone(),
            failed: Mutex::default(),
            stopped: stopped.clone(),
            token: source_token,
        };
        let consumer_properties = match &front {
            Some(front) => config::consumer(
                &front::internal_source(spec, &front.internal),
                &front::keyed_group(&settings.group_id),
                &settings.secrets,
            )?,
            None => {
                let mut properties = config::consumer(&spec.source.kafka, &settings.group_id, &settings.secrets)?;
                // A group notices added partitions at its metadata refresh: as often as discovery.
                properties
                    .entry("topic.metadata.refresh.interval.ms".into())
                    .or_insert_with(|| settings.partition_discovery.as_millis().to_string());
                properties
            }
        };
        let consumer: BaseConsumer<SourceContext> =
            client(&consumer_properties, context).map_err(kafka("creating the consumer"))?;
        let partition_count = front.as_ref().map_or(source_partitions, Front::internal_partitions);
        if settings.assignment == AssignmentMode::Group {
            consumer.subscribe(&[&topic]).map_err(kafka("subscribing to the source topic"))?;
        }
        {
            let mut status = lock(&shared.status);
            status.topic = topic.clone();
            status.partition_count = partition_count;
        }
        info!(topic, group = settings.group_id, exactly_once, "consuming");
        let dead_letter_topic = spec.dead_letter.as_ref().map(|d| d.topic.clone());
        // The front limits the rate of a repartitioned job.
        let rate = spec
            .source
            .kafka
            .max_records_per_second
            .and_then(NonZeroU32::new)
            .filter(|_| front.is_none())
            .map(RecordRate::new);
        let headers = HeaderPolicy::new(&spec.sink.kafka);
        let decoder = decoder.carrying(headers.carry());
        Ok(Self {
            settings,
            shared,
            plan,
            decoder,
            encoder,
            runtime,
            consumer,
            committer,
            dead_letter_topic,
            sink_limit,
            state_budget,
            state_shown: Mutex::default(),
            table,
            topic,
            partition_count: AtomicUsize::new(partition_count),
            discovered: Mutex::default(),
            stopped,
            held_back: Mutex::default(),
            stopped_with: Mutex::default(),
            rate,
            headers,
            front,
            dead_letters_in_sink_transaction,
        })
    }

    fn run_loop(&mut self) -> Result<(), RunError> {
        let interval =
            self.settings.spec.checkpoint.as_ref().map_or(self.settings.commit_interval, |c| c.interval.get());
        let mut last_commit = Instant::now();
        let mut last_state_check = Instant::now();
        let mut last_discovery = Instant::now();
        let mut last_status = Instant::now();
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            if let Some(front) = self.front.as_ref().filter(|_| !self.stopped.load(Ordering::Relaxed)) {
                self.pump_front(front, self.settings.spec.source.kafka.batch_timeout.get() / 2)?;
            }
            let messages = self.poll_batch()?;
            if let Some(e) = lock(&self.consumer.context().failed).take() {
                return Err(e);
            }
            if let Some(e) = self.front.as_ref().and_then(Front::take_failure) {
                return Err(e);
            }
            self.check_producers()?;
            self.start_assigned_partitions()?;
            if !messages.is_empty() {
                if self.stopped.load(Ordering::Relaxed) {
                    self.hold_back(&messages);
                } else {
                    self.process(&messages)?;
                }
            }
            drop(messages);
            if !self.stopped.load(Ordering::Relaxed) {
                self.tick()?;
            }
            if last_discovery.elapsed() >= self.settings.partition_discovery {
                self.discover_partitions()?;
                last_discovery = Instant::now();
            }
            if last_state_check.elapsed() >= STATE_CHECK_INTERVAL {
                self.check_state()?;
                last_state_check = Instant::now();
            }
            self.committer.sink.poll(Duration::ZERO);
            if let Some(dlq) = &self.committer.dead_letters {
                dlq.poll(Duration::ZERO);
            }
            self.serve_requests()?;
            if last_commit.elapsed() >= interval && !self.stopped.load(Ordering::Relaxed) {
                self.commit()?;
                last_commit = Instant::now();
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                self.committer.refresh_status(&lock(&self.table));
                if self.stopped.load(Ordering::Relaxed) {
                    self.report_stopped_lag();
                }
                last_status = Instant::now();
            }
        }
        Ok(())
    }

    fn commit(&self) -> Result<(), RunError> {
        if let Some(front) = &self.front {
            front.commit(&self.shared, &self.settings.spec.source.kafka.retry)?;
        }
        let mut table = lock(&self.table);
        let result = self.committer.commit(&self.consumer, &mut table);
        self.committer.refresh_status(&table);
        result
    }

    /// Answers queued admin requests, in arrival order. A partition hand-over that fails
    /// stops the job, as it does in a rebalance.
    fn serve_requests(&self) -> Result<(), RunError> {
        for request in self.shared.take_requests() {
            match request {
                AdminRequest::Savepoint(request) => {
                    let outcome = self.savepoint(request.id.clone(), request.stop);
                    if let Err(e) = &outcome {
                        warn!(error = %e, "savepoint failed");
                    }
                    let _ = request.reply.send(outcome.map_err(|e| e.to_string()));
                }
                AdminRequest::Resume(request) => {
                    let outcome = self.resume();
                    if let Err(e) = &outcome {
                        warn!(error = %e, "resuming failed; still stopped");
                    }
                    let _ = request.reply.send(outcome.map_err(|e| e.to_string()));
                }
                AdminRequest::Assign(request) if self.stopped.load(Ordering::Relaxed) => {
                    let refusal = "stopped after a savepoint: resume first, or start new pods";
                    let _ = request.reply.send(Err(refusal.into()));
                }
                AdminRequest::Assign(request) => match self.assign(request.slot) {
                    Ok(assigned) => drop(request.reply.send(Ok(assigned))),
                    Err(e) => {
                        let _ = request.reply.send(Err(e.to_string()));
                        return Err(e);
                    }
                },
            }
        }
        Ok(())
    }

    /// Takes the slot the operator gave (operator mode): hands over the partitions the slot
    /// does not own (committed, so their next owner starts where this instance stopped),
    /// then takes the slot's, which restore like partitions assigned by a rebalance.
    fn assign(&self, slot: Option<Slot>) -> Result<Assigned, RunError> {
        if let Some(front) = &self.front {
            front.assign(slot)?;
        }
        let owned = self.consumer.assignment().map_err(kafka("reading the assignment"))?;
        let owned: Vec<i32> = owned.elements().iter().map(|e| e.partition()).collect();
        let moves = assignment::moves(&owned, slot, self.partition_count());
        if !moves.revoke.is_empty() {
            for partition in &moves.revoke {
                let _ = self.shared.metrics.consumer_lag.remove_label_values(&[&self.topic, &partition.to_string()]);
            }
            let mut table = lock(&self.table);
            table.assigned.retain(|p| !moves.revoke.contains(p));
            self.committer.hand_over(&self.consumer, &mut table, &moves.revoke)?;
            self.committer.refresh_status(&table);
            drop(table);
            let list =
                partition_list(&self.topic, &moves.revoke, Offset::Invalid).map_err(kafka("listing partitions"))?;
            self.consumer.incremental_unassign(&list).map_err(kafka("giving up partitions"))?;
        }
        if !moves.assign.is_empty() {
            // From the committed offsets; a checkpoint's position is sought once restored.
            let source = &self.settings.spec.source.kafka;
            let retries = self.shared.metrics.retries.with_label_values(&["source"]);
            // A repartitioned job's own consumer reads the internal topic from its start.
            let reset =
                start::reset_offset(if self.front.is_some() { StartOffset::Earliest } else { source.start_offset });
            let list =
                start::starting_offsets(&self.consumer, &self.topic, &moves.assign, reset, (&source.retry, &retries))
                    .map_err(kafka("reading committed offsets"))?;
            self.consumer.incremental_assign(&list).map_err(kafka("taking partitions"))?;
            info!(partitions = ?moves.assign, "partitions assigned");
            lock(&self.table).assigned.extend(moves.assign.iter().copied());
        }
        if moves != assignment::Moves::default() {
            self.shared.metrics.source_rebalances.inc();
        }
        lock(&self.shared.status).assignment = slot;
        info!(slot = slot.map(|s| s.slot), slots = slot.map(|s| s.slots), "assignment from the operator");
        Ok(slot.into())
    }

    /// Writes a savepoint of every owned partition, then commits it as a checkpoint, so the
    /// committed offsets are the savepoint's. With `stop`, consuming stops after it.
    fn savepoint(&self, id: Option<String>, stop: bool) -> Result<Savepoint, RunError> {
        let Some(checkpointer) = &self.committer.checkpointer else {
            return Err(RunError::Checkpoint("savepoints need checkpoint.storage".into()));
        };
        let id = id.unwrap_or_else(new_savepoint_id);
        if self.stopped.load(Ordering::Relaxed) {
            return self.savepoint_again(checkpointer, id);
        }
        if let Some(front) = &self.front {
            let retry = &self.settings.spec.source.kafka.retry;
            if stop { front.stop(&self.shared, retry)? } else { front.commit(&self.shared, retry)? }
        }
        self.committer.flush()?;
        let mut table = lock(&self.table);
        let snapshots = commit::snapshots(&self.topic, &table, checkpointer.next_id())?;
        let path = checkpointer
            .savepoint(&id, &self.settings.instance, &snapshots)
            .map_err(|e| RunError::Checkpoint(e.to_string()))?;
        checkpointer.write(&snapshots).map_err(|e| RunError::Checkpoint(e.to_string()))?;
        self.committer.commit_snapshots(&self.consumer, &mut table, &snapshots)?;
        drop(table);
        if stop {
            self.stopped.store(true, Ordering::Relaxed);
            self.pause_all();
            *lock(&self.stopped_with) = snapshots.clone();
            // Leave the consumer group now rather than at exit: members that all leave at
            // once while stopped can leave a broker waiting out their rebalance timeout
            // before the next pods are given partitions. Until then, partitions move to
            // instances not stopped yet, which include them in their own savepoints.
            if self.settings.assignment == AssignmentMode::Group {
                self.consumer.unsubscribe();
            }
        }
        let savepoint = Savepoint {
            id,
            path,
            completed_at: now_rfc3339(),
            stopped: stop,
            topic: self.topic.clone(),
            // The table's runs are ordered by partition, and so are the snapshots.
            partitions: snapshots.iter().map(|s| s.header.partition).collect(),
            partition_count: self.partition_count(),
        };
        info!(id = savepoint.id, path = savepoint.path, stop, partitions = snapshots.len(), "savepoint taken");
        let mut status = lock(&self.shared.status);
        status.last_savepoint = Some(savepoint.clone());
        status.stopped = self.stopped.load(Ordering::Relaxed);
        Ok(savepoint)
    }

    /// A savepoint of an instance already stopped: the state it stopped with, under `id`.
    /// Its offsets were committed at the stop, and nothing was processed since.
    fn savepoint_again(&self, checkpointer: &Checkpointer, id: String) -> Result<Savepoint, RunError> {
        let snapshots = lock(&self.stopped_with).clone();
        let path = checkpointer
            .savepoint(&id, &self.settings.instance, &snapshots)
            .map_err(|e| RunError::Checkpoint(e.to_string()))?;
        info!(id, path, partitions = snapshots.len(), "savepoint of a stopped instance taken again");
        let savepoint = Savepoint {
            id,
            path,
            completed_at: now_rfc3339(),
            stopped: true,
            topic: self.topic.clone(),
            partitions: snapshots.iter().map(|s| s.header.partition).collect(),
            partition_count: self.partition_count(),
        };
        lock(&self.shared.status).last_savepoint = Some(savepoint.clone());
        Ok(savepoint)
    }

    /// Undoes a stop-with-savepoint (the operator aborted a rollout): fetches again what was
    /// held back while stopped, resumes every assigned partition, and lets the loop process,
    /// tick and commit again. A running instance has nothing to undo.
    fn resume(&self) -> Result<Resumed, RunError> {
        if self.stopped.load(Ordering::Relaxed) {
            let seeks = self.held_back_seeks()?;
            if seeks.count() > 0 {
                let sought = self
                    .consumer
                    .seek_partitions(seeks, Duration::from_secs(30))
                    .map_err(kafka("seeking to held-back records"))?;
                for element in sought.elements() {
                    if let Err(source) = element.error() {
                        return Err(RunError::Kafka { context: "seeking to held-back records", source });
                    }
                }
            }
            let assignment = self.consumer.assignment().map_err(kafka("reading the assignment"))?;
            self.consumer.resume(&assignment).map_err(kafka("resuming partitions"))?;
            if let Some(front) = &self.front {
                front.resume()?;
            }
            lock(&self.held_back).clear();
            // Join the group again: partitions come back through a rebalance and restore
            // from the checkpoints their last owner wrote. Under the operator they stayed.
            if self.settings.assignment == AssignmentMode::Group {
                self.consumer.subscribe(&[&self.topic]).map_err(kafka("subscribing to the source topic again"))?;
            }
            let left = std::mem::take(&mut *lock(&self.stopped_with));
            for partition in left.iter().map(|s| s.header.partition) {
                let labels = [self.topic.as_str(), &partition.to_string()];
                let _ = self.shared.metrics.consumer_lag.remove_label_values(&labels);
            }
            // Nothing was produced while stopped, so the broker's transaction timer starts
            // with the next record, not at the savepoint's commit.
            *lock(&self.committer.transaction_started) = Instant::now();
            self.stopped.store(false, Ordering::Relaxed);
            info!(partitions = assignment.count(), "resumed after a stop-with-savepoint");
        }
        lock(&self.shared.status).stopped = false;
        Ok(Resumed { stopped: false })
    }

    /// Records can reach a stopped instance when partitions are assigned to it (fetching
    /// starts before they are paused). They are not processed; pausing moves librdkafka's
    /// fetch position past them, so their offsets are kept to fetch them again on resume.
    fn hold_back(&self, messages: &[BorrowedMessage<'_>]) {
        let table = lock(&self.table);
        let mut held = lock(&self.held_back);
        for message in messages {
            let partition = message.partition();
            // Not owned (the new owner replays it) or already in the partition's state.
            let Some(run) = table.partitions.get(&partition) else { continue };
            if message.offset() < run.position {
                continue;
            }
            let first = held.entry(partition).or_insert(message.offset());
            *first = (*first).min(message.offset());
        }
    }

    /// Where each owned partition with held-back records fetches again: its state's position
    /// when it is known from a commit, else (a partition never committed, whose position
    /// is a placeholder) the first record held back.
    fn held_back_seeks(&self) -> Result<TopicPartitionList, RunError> {
        let table = lock(&self.table);
        let mut seeks = TopicPartitionList::new();
        for (&partition, &first) in lock(&self.held_back).iter() {
            let Some(run) = table.partitions.get(&partition) else { continue };
            let offset = if run.committed.is_some() { run.position } else { first };
            seeks
                .add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("listing seeks"))?;
        }
        Ok(seeks)
    }

    /// A paused partition is not fetched, so librdkafka's statistics no longer see its high
    /// watermark: a stopped instance asks the broker, so that lag (and KEDA) still sees
    /// records arriving.
    fn report_stopped_lag(&self) {
        let mut owned: BTreeMap<i32, Option<i64>> =
            lock(&self.stopped_with).iter().map(|s| (s.header.partition, Some(s.header.position))).collect();
        owned.extend(lock(&self.table).partitions.iter().map(|(&p, r)| (p, r.committed)));
        let metrics = &self.shared.metrics;
        for (partition, committed) in owned {
            match self.consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(2)) {
                Ok((low, high)) => {
                    let lag = high - committed.unwrap_or(low.max(0));
                    metrics.consumer_lag.with_label_values(&[&self.topic, &partition.to_string()]).set(lag.max(0));
                }
                Err(e) => debug!(partition, error = %e, "reading the high watermark of a paused partition"),
            }
        }
    }

    /// Stops fetching every assigned partition (after a stop-with-savepoint).
    fn pause_all(&self) {
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = self.consumer.pause(&assignment) {
                    warn!(error = %e, "pausing partitions");
                }
            }
            Err(e) => warn!(error = %e, "reading the assignment"),
        }
    }

    /// Up to `batchSize` records (fewer under a rate limit), waiting at most `batchTimeout`
    /// for them; then, under a rate limit, until the limit grants them.
    fn poll_batch(&self) -> Result<Vec<BorrowedMessage<'_>>, RunError> {
        let source = &self.settings.spec.source.kafka;
        let max = self.rate.as_ref().map_or(usize::MAX, RecordRate::max_batch).min(source.batch_size as usize).max(1);
        // A repartitioned job's loop also waits for source records (the front).
        let wait = if self.front.is_some() { source.batch_timeout.get() / 2 } else { source.batch_timeout.get() };
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        // Liveness for /readyz: once per batch is enough (a batch waits at most `batchTimeout`).
        self.shared.last_poll_ms.store(now_ms(), Ordering::Relaxed);
        while messages.len() < max {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.consumer.poll(wait) {
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) if classify(&e) == Class::Transient => {
                    warn!(error = %e, "consume error; librdkafka retries")
                }
                Some(Err(e)) => return Err(RunError::Kafka { context: "consuming", source: e }),
                None => break,
            }
        }
        let metrics = &self.shared.metrics;
        metrics.source_polls.inc();
        if messages.is_empty() {
            metrics.source_empty_polls.inc();
        } else {
            metrics.source_batch_records.observe(messages.len() as f64);
            let bytes: usize = messages.iter().map(|m| m.payload_len() + m.key_len()).sum();
            metrics.source_bytes.inc_by(bytes as u64);
            if let Some(rate) = &self.rate {
                rate.acquire(messages.len());
            }
        }
        Ok(messages)
    }

    /// Stops on a failed delivery or a fatal producer error reported since the last batch.
    fn check_producers(&self) -> Result<(), RunError> {
        let front = self.front.as_ref().map(Front::producer);
        let producers = [Some(self.committer.sink.as_ref()), self.committer.dead_letters.as_deref(), front];
        for producer in producers.into_iter().flatten() {
            if let Some(failure) = lock(&producer.context().failed).clone() {
                return Err(RunError::Delivery(failure));
            }
        }
        Ok(())
    }

    /// Creates pipelines for newly assigned partitions: from their checkpoint when there is
    /// one (seeking to its position), else replaying from the committed offset.
    fn start_assigned_partitions(&self) -> Result<(), RunError> {
        let assigned = std::mem::take(&mut lock(&self.table).assigned);
        if assigned.is_empty() {
            return Ok(());
        }
        let mut partitions: std::collections::BTreeSet<i32> = assigned.iter().copied().collect();
        if self.committer.checkpointer.is_some() {
            // Exactly-once restore compares the offsets of every partition a checkpoint covered.
            partitions.extend(0..i32::try_from(self.partition_count()).unwrap_or(i32::MAX));
        }
        let mut wanted = TopicPartitionList::new();
        for &partition in &partitions {
            wanted.add_partition(&self.topic, partition);
        }
        let source_retries = self.shared.metrics.retries.with_label_values(&["source"]);
        let committed_list =
            retrying(&self.settings.spec.source.kafka.retry, &source_retries, "reading committed offsets", || {
                self.consumer.committed_offsets(wanted.clone(), Duration::from_secs(30))
            })
            .map_err(kafka("reading committed offsets"))?;
        let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut metadata: BTreeMap<i32, String> = BTreeMap::new();
        for element in committed_list.elements() {
            if let Offset::Offset(o) = element.offset() {
                committed.insert(element.partition(), o);
            }
            metadata.insert(element.partition(), element.metadata().to_owned());
        }
        let now = Instant::now();
        let mut seeks = TopicPartitionList::new();
        let mut table = lock(&self.table);
        {
            // A new run starts from its own position: what was held back before is moot.
            let mut held = lock(&self.held_back);
            for partition in &assigned {
                held.remove(partition);
            }
        }
        for &partition in &assigned {
            let restored = match &self.committer.checkpointer {
                Some(checkpointer) => {
                    let named = metadata
                        .get(&partition)
                        .and_then(|m| checkpoint::CommittedCheckpoint::from_metadata(m))
                        .map(|c| c.checkpoint);
                    checkpointer.restore(&self.topic, partition, &committed, named, self.committer.exactly_once)?
                }
                None => None,
            };
            let run = match restored {
                Some(snapshot) => {
                    let header = &snapshot.header;
                    let pipeline =
                        PartitionPipeline::restore(self.plan.clone(), header.max_event_time, &snapshot.state, now)?;
                    info!(
                        partition,
                        checkpoint = header.checkpoint,
                        position = header.position,
                        "restored from checkpoint"
                    );
                    // Always: an instance that held this partition before (a stop, then a
                    // resume) may still have a fetch position past it.
                    seeks
                        .add_partition_offset(&self.topic, partition, Offset::Offset(header.position))
                        .map_err(kafka("listing seeks"))?;
                    let mut run = OwnedPartition::new(pipeline, header.position, committed.get(&partition).copied());
                    run.upstream = header.upstream.clone();
                    run.marks = header.marks.clone();
                    run
                }
                None => {
                    let saved = metadata.get(&partition).and_then(|m| serde_json::from_str::<Progress>(m).ok());
                    if saved.is_none() && committed.contains_key(&partition) && self.plan.is_stateful() {
                        warn!(
                            partition,
                            "no checkpoint or saved progress for a committed partition: windows open at the last stop \
                             may be emitted again in part (set checkpoint.storage)"
                        );
                    }
                    let resume = Resume {
                        max_event_time: saved.and_then(|p| p.max_event_time),
                        replay_until: saved.map_or(0, |p| p.position),
                    };
                    debug!(partition, ?resume, "starting partition");
                    let pipeline = PartitionPipeline::new(self.plan.clone(), resume, now);
                    let position = committed.get(&partition).copied().unwrap_or(0);
                    let start = match committed.get(&partition) {
                        Some(&offset) => Some(Offset::Offset(offset)),
                        None if lock(&self.discovered).contains(&partition) => Some(Offset::Beginning),
                        None => self.start_from_timestamp(partition)?,
                    };
                    if let Some(start) = start {
                        seeks.add_partition_offset(&self.topic, partition, start).map_err(kafka("listing seeks"))?;
                    }
                    OwnedPartition::new(pipeline, position, committed.get(&partition).copied())
                }
            };
            table.partitions.insert(partition, run);
        }
        self.committer.refresh_status(&table);
        drop(table);
        if seeks.count() > 0 {
            self.consumer.seek_partitions(seeks, Duration::from_secs(30)).map_err(kafka("seeking to checkpoints"))?;
        }
        if self.stopped.load(Ordering::Relaxed) {
            self.pause_all();
        } else {
            // librdkafka keeps a partition's pause across a leave and a rejoin (a stop, then
            // a resume): fetch what is assigned now.
            let fresh = partition_list(&self.topic, &assigned, Offset::Invalid).map_err(kafka("listing partitions"))?;
            self.consumer.resume(&fresh).map_err(kafka("resuming assigned partitions"))?;
        }
        Ok(())
    }

    /// With `startOffset: timestamp`, where a partition without a position starts: the first
    /// offset at or after `startTimestamp`, or the end when nothing is that recent.
    fn start_from_timestamp(&self, partition: i32) -> Result<Option<Offset>, RunError> {
        let source = &self.settings.spec.source.kafka;
        let (StartOffset::Timestamp, Some(time)) = (source.start_offset, &source.start_timestamp) else {
            return Ok(None);
        };
        let millis = chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|e| RunError::Unsupported(format!("startTimestamp {time}: {e}")))?
            .timestamp_millis();
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition_offset(&self.topic, partition, Offset::Offset(millis)).map_err(kafka("listing times"))?;
        let retries = self.shared.metrics.retries.with_label_values(&["source"]);
        let found = retrying(&source.retry, &retries, "looking up offsets by time", || {
            self.consumer.offsets_for_times(wanted.clone(), Duration::from_secs(30))
        })
        .map_err(kafka("looking up offsets by time"))?;
        let offset = found.find_partition(&self.topic, partition).map(|e| e.offset());
        debug!(partition, start_timestamp = time, ?offset, "starting from a timestamp");
        Ok(Some(match offset {
            Some(Offset::Offset(o)) => Offset::Offset(o),
            _ => Offset::End,
        }))
    }

    fn process(&self, messages: &[BorrowedMessage<'_>]) -> Result<(), RunError> {
        if let Some(front) = &self.front {
            return self.process_keyed(front, messages);
        }
        let by_partition = records_by_partition(messages);
        self.shared.metrics.records_in.inc_by(messages.len() as u64);
        let mut table = lock(&self.table);
        for (partition, mut records) in by_partition {
            let Some(run) = table.partitions.get_mut(&partition) else {
                // Revoked while the batch was in flight: the new owner replays these.
                continue;
            };
            // Fetched before a seek to the partition's checkpoint: already in its state.
            if records.first().is_some_and(|r| r.offset < run.position) {
                records.retain(|r| r.offset >= run.position);
                if records.is_empty() {
                    continue;
                }
            }
            let span = self.process_span(&self.topic, partition, &records);
            self.runtime.block_on(self.decoder.prepare(&records))?;
            let decoded = self.decoder.decode(&records);
            self.dead_letters().undecoded(&records, &decoded.errors)?;
            if let Some(batch) = decoded.batch {
                match run.pipeline.process(batch, Instant::now()) {
                    Ok(processed) => {
                        self.shared.metrics.records_deduplicated.inc_by(processed.duplicates as u64);
                        self.dead_letters().rejected(&records, &processed.rejected)?;
                        self.dead_letters().rejected_results(&processed.rejected_results, partition)?;
                        self.produce_from(&processed.output, span.as_ref().map(|s| s.span_context()))?;
                        if let Some(late) = processed.late {
                            self.dead_letters().late(&late, partition)?;
                        }
                    }
                    Err(e) => {
                        // Not a record's fault (the engine's own columns are missing): the
                        // batch is dead-lettered rather than crash the job.
                        self.dead_letters().failed_batch(&records, &e)?;
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
        let mut rejected = Vec::new();
        for (&partition, run) in &mut table.partitions {
            let closed = run.pipeline.tick(now)?;
            outputs.extend(closed.output);
            rejected.extend(closed.rejected.into_iter().map(|r| (partition, r)));
            if run.pipeline.watermark().max_event_time().is_some() {
                let wm = run.pipeline.watermark().current();
                slowest = Some(slowest.map_or(wm, |s| s.min(wm)));
            }
        }
        drop(table);
        for (partition, rejected) in rejected {
            self.dead_letters().rejected_results(std::slice::from_ref(&rejected), partition)?;
        }
        if let Some(wm) = slowest {
            self.shared.metrics.watermark_lag_seconds.set((now_ms() - wm) as f64 / 1000.0);
        }
        self.produce(&outputs)
    }

    /// The partition count of the topic this job consumes.
    fn partition_count(&self) -> usize {
        self.partition_count.load(Ordering::Relaxed)
    }

    /// Notices partitions added to the source topic. Under the operator, the slot held takes
    /// those it owns, from their beginning; in a consumer group, librdkafka rebalances onto
    /// them (its metadata refresh runs as often as this) and they start from their beginning
    /// too when this instance saw them first. A repartitioned job keeps the partitions it
    /// started with: its internal topic and watermarks are sized by them.
    fn discover_partitions(&self) -> Result<(), RunError> {
        if self.front.is_some() {
            return Ok(());
        }
        let known = self.partition_count();
        let count = match partition_count(&self.consumer, &self.topic) {
            Ok(count) if count > known => count,
            Ok(_) => return Ok(()),
            Err(e) => {
                debug!(error = %e, "reading the source topic's partitions failed; trying again later");
                return Ok(());
            }
        };
        info!(topic = self.topic, from = known, to = count, "partitions were added to the source topic");
        let added: Vec<i32> =
            (i32::try_from(known).unwrap_or(i32::MAX)..i32::try_from(count).unwrap_or(i32::MAX)).collect();
        lock(&self.discovered).extend(added.iter().copied());
        self.partition_count.store(count, Ordering::Relaxed);
        lock(&self.shared.status).partition_count = count;
        let slot = lock(&self.shared.status).assignment;
        if self.settings.assignment == AssignmentMode::Operator
            && slot.is_some()
            && !self.stopped.load(Ordering::Relaxed)
        {
            self.assign(slot)?;
        }
        Ok(())
    }

    /// Exports each owned partition's state size and holds the pod to its state budget.
    fn check_state(&self) -> Result<(), RunError> {
        let table = lock(&self.table);
        let metrics = &self.shared.metrics;
        let mut held = 0;
        for (partition, run) in &table.partitions {
            let (bytes, aggregates) = (run.pipeline.state_bytes(), run.pipeline.open_aggregates());
            held += bytes;
            let label = [partition.to_string()];
            metrics.state_bytes.with_label_values(&label).set(i64::try_from(bytes).unwrap_or(i64::MAX));
            metrics.state_aggregates.with_label_values(&label).set(i64::try_from(aggregates).unwrap_or(i64::MAX));
        }
        let mut shown = lock(&self.state_shown);
        for gone in shown.iter().filter(|p| !table.partitions.contains_key(p)) {
            let label = [gone.to_string()];
            let _ = metrics.state_bytes.remove_label_values(&label);
            let _ = metrics.state_aggregates.remove_label_values(&label);
        }
        *shown = table.partitions.keys().copied().collect();
        match self.state_budget {
            Some(budget) if held as u64 > budget => Err(RunError::StateBudget { held, budget }),
            _ => Ok(()),
        }
    }

    /// The `process` span of a batch of one partition's records, when tracing is on.
    fn process_span(&self, topic: &str, partition: i32, records: &[RawRecord<'_>]) -> Option<Span> {
        let spans = self.settings.spans.as_ref()?;
        Some(spans.process(
            topic,
            Some(partition),
            records.len(),
            records.iter().filter_map(|r| telemetry::traceparent(r.headers)),
        ))
    }

    fn produce(&self, batches: &[RecordBatch]) -> Result<(), RunError> {
        self.produce_from(batches, None)
    }

    /// Produces results of the batch whose `process` span is `origin` (none for results a
    /// timer closed).
    fn produce_from(&self, batches: &[RecordBatch], origin: Option<&SpanContext>) -> Result<(), RunError> {
        let sink = &self.settings.spec.sink.kafka;
        let layout = Layout { key_field: sink.key_field.as_deref(), timestamp_field: sink.timestamp_field.as_deref() };
        let metrics = &self.shared.metrics;
        let producer = &self.committer.sink;
        self.runtime.block_on(self.encoder.prepare(batches))?;
        // With tracing on: a `send` span, and the context of records without a trace.
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let traced = self.settings.spans.as_ref().filter(|_| rows > 0).map(|spans| {
            let span = spans.send(&sink.topic, rows, origin);
            let batch = origin.cloned().unwrap_or_else(|| span.span_context().clone());
            (spans, span, batch)
        });
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            metrics.sink_batch_records.observe(batch.num_rows() as f64);
            for record in self.encoder.encode(batch, layout)? {
                let mut base = BaseRecord::with_opaque_to(&sink.topic, producer.context().sent_now())
                    .payload(record.payload.as_slice());
                if let Some(key) = &record.key {
                    base = base.key(key.as_slice());
                }
                if let Some(ts) = record.timestamp {
                    base = base.timestamp(ts);
                }
                let headers = match &traced {
                    Some((spans, _, batch)) => {
                        self.headers.headers(&record.headers, &spans.contexts(&sink.topic, batch))
                    }
                    None => self.headers.headers(&record.headers, rand::random),
                };
                if !headers.is_empty() {
                    let owned =
                        headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, (key, value)| {
                            h.insert(Header { key, value: value.as_deref() })
                        });
                    base = base.headers(owned);
                }
                let bytes = record.payload.len() + record.key.as_ref().map_or(0, Vec::len);
                let size =
                    bytes + headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len)).sum::<usize>();
                if size + RECORD_OVERHEAD > self.sink_limit {
                    self.oversize(&record, size)?;
                    continue;
                }
                match send(producer, base) {
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        self.oversize(&record, size)?;
                        continue;
                    }
                    sent => sent.map_err(kafka("producing"))?,
                }
                metrics.sink_sends.inc();
                metrics.sink_bytes.inc_by(bytes as u64);
                metrics.records_out.inc();
            }
        }
        Ok(())
    }

    /// Where this job's dead letters go.
    fn dead_letters(&self) -> DeadLetters<'_> {
        let results = if self.dead_letters_in_sink_transaction {
            Some(self.committer.sink.as_ref())
        } else {
            self.committer.dead_letters.as_deref()
        };
        let source = match &self.front {
            Some(front) if front.carries_dead_letters() => Some(front.producer()),
            Some(_) => self.committer.dead_letters.as_deref(),
            None => results,
        };
        let spec = &self.settings.spec;
        DeadLetters {
            topic: self.dead_letter_topic.as_deref(),
            source_topic: &spec.source.kafka.topic,
            source,
            results,
            late_records: spec.dead_letter.as_ref().is_some_and(|d| d.late_records),
            metrics: &self.shared.metrics,
        }
    }

    /// A result too large for the sink, as `oversizeRecords` says: counted and dead-lettered
    /// (its first [`OVERSIZE_KEPT`] bytes), or the job fails.
    fn oversize(&self, record: &codec::Encoded, size: usize) -> Result<(), RunError> {
        let reason = format!(
            "sink: a result of {size} bytes is larger than the sink topic {} takes ({} bytes)",
            self.settings.spec.sink.kafka.topic, self.sink_limit
        );
        if self.settings.spec.sink.kafka.oversize_records == OversizeRecords::Fail {
            return Err(RunError::Oversize(reason));
        }
        warn!(size, limit = self.sink_limit, "a result is larger than the sink takes; dead-lettering its start");
        self.shared.metrics.records_oversize.inc();
        let kept = &record.payload[..record.payload.len().min(OVERSIZE_KEPT)];
        let reason = format!("{reason}; the first {} bytes are kept", kept.len());
        let dead_letters = self.dead_letters();
        dead_letters.send(dead_letters.results, kept, &reason, -1, -1, record.key.as_deref())
    }
}

/// The source topic's partition count, read before the job's clients exist (they depend
/// on whether it repartitions).
fn source_partition_count(
    spec: &StreamJobSpec,
    settings: &Settings,
    token: Option<TokenSource>,
    shared: &Shared,
) -> Result<usize, RunError> {
    let source = &spec.source.kafka;
    let mut properties = config::consumer(source, &settings.group_id, &settings.secrets)?;
    // Statistics would queue ahead of the errors it is polled for.
    properties.remove("statistics.interval.ms");
    let probe: BaseConsumer<AdminContext> =
        client(&properties, AdminContext::new(token)).map_err(kafka("creating the consumer"))?;
    let retries = shared.metrics.retries.with_label_values(&["source"]);
    let count = retrying(&source.retry, &retries, "reading topic metadata", || {
        probe.context().unless_failed(&shared.shutdown, || {
            let count = partition_count(&probe, &source.topic);
            // Serves the client's queued events: a consumer's errors come with its polls.
            for _ in 0..64 {
                if let Some(Err(error)) = probe.poll(Duration::ZERO) {
                    probe.context().error(error, "polling the metadata client");
                }
            }
            count
        })
    })
    .map_err(|error| RunError::explained(probe.context(), "reading topic metadata", error))?;
    if count == 0 {
        return Err(RunError::MissingTopic(format!("the source topic {} does not exist", source.topic)));
    }
    Ok(count)
}

/// How often state sizes are exported and held to the budget: summing them walks every key.
const STATE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How much of an oversize result its dead letter keeps.
const OVERSIZE_KEPT: usize = 64 * 1024;

/// A savepoint id that sorts by time: `sp-<UTC time>-<random>`.
fn new_savepoint_id() -> String {
    format!("sp-{}-{:04x}", chrono::Utc::now().format("%Y%m%dt%H%M%S"), rand::random::<u16>())
}

//! The front of a repartitioned job (a `keyBy` the source topic is not partitioned by):
//! it consumes the source topic, runs the stateless steps before the `keyBy`, and produces
//! each row to the internal topic partition of its key, followed by watermark records, so
//! the keyed stage knows how far every source partition has come.
//!
//! The front keeps no state: its progress is the source offsets, committed once everything
//! produced before them is delivered. A record produced again after a crash carries the
//! same source offset, and the keyed stage drops what it has applied already.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Offset, Statistics, TopicPartitionList,
    client::OAuthToken,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{BaseRecord, Producer},
};
use tracing::{debug, error, info, warn};
use weir_crds::{Delivery, KafkaSink, KafkaSource, StartOffset, StreamJobSpec};

use super::{
    Job, RunError, Settings,
    commit::commit_unless_rebalancing,
    kafka,
    shared::{Shared, lock},
    source::{consumer_error, records_by_partition},
};
use crate::{
    assignment::{self, AssignmentMode, Slot},
    engine::{Plan, Watermark},
    kafka::{
        auth::TokenSource,
        clients::{Deliveries, Sink, client, oauth_token, send},
        config::{self, Side},
        lag::export_lag,
        rate::RecordRate,
        retry::{Class, classify, retrying},
        start,
        topics::{ensure_topic, partition_count, partition_list},
    },
    repartition::{self, KIND_HEADER, Mark, Marks, ROWS, UPSTREAM_HEADER, WATERMARKS},
};

/// Watermark records go out at most this often while event time moves...
const MARKS_EVERY: Duration = Duration::from_millis(100);
/// ...and at least this often, so a restarted keyed stage learns every source partition's.
const MARKS_AT_LEAST_EVERY: Duration = Duration::from_secs(5);
/// How long broker calls of a commit may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The internal topic of a job: where its front sends rows keyed for the keyed stage.
pub(super) fn internal_topic(group_id: &str) -> String {
    format!("{group_id}-repartition")
}

/// The consumer group of the keyed stage (the front uses the job's own group).
pub(super) fn keyed_group(group_id: &str) -> String {
    format!("{group_id}-keyed")
}

/// Whether the job must repartition: its `keyBy` is not covered by `partitionedBy` and the
/// source has more than one partition, so a key's records may be spread over partitions.
pub(super) fn needs_repartition(spec: &StreamJobSpec, plan: &Plan, source_partitions: usize) -> bool {
    let keys = plan.key_fields();
    let partitioned_by = &spec.source.kafka.partitioned_by;
    !keys.is_empty() && source_partitions > 1 && !keys.iter().all(|k| partitioned_by.contains(k))
}

/// How many partitions the internal topic gets: the job's maximum parallelism (the keyed
/// stage cannot use more pods than that), and at least the source's partition count.
fn internal_partition_count(spec: &StreamJobSpec, source_partitions: usize) -> i32 {
    let most = spec.autoscaling.as_ref().map_or(spec.parallelism, |a| a.max_replicas.max(spec.parallelism));
    most.max(i32::try_from(source_partitions).unwrap_or(i32::MAX)).max(1)
}

/// The producer settings of topics the job writes on the source's cluster (the internal
/// topic, dead letters): the source's connection, idempotent, no user properties.
pub(super) fn source_side_sink(spec: &StreamJobSpec, bootstrap_servers: Option<&str>) -> KafkaSink {
    let mut sink = spec.sink.kafka.clone();
    sink.bootstrap_servers =
        bootstrap_servers.map_or_else(|| spec.source.kafka.bootstrap_servers.clone(), str::to_owned);
    sink.security = spec.source.kafka.security.clone();
    sink.properties.clear();
    sink.delivery = Delivery::Idempotent;
    sink.acks = None;
    sink.headers.clear();
    sink.create_topic = None;
    sink
}

/// The keyed stage's view of the source: the internal topic, read from its start.
pub(super) fn internal_source(spec: &StreamJobSpec, internal: &str) -> KafkaSource {
    let mut source = spec.source.kafka.clone();
    source.topic = internal.to_owned();
    source.start_offset = StartOffset::Earliest;
    source.start_timestamp = None;
    source.max_records_per_second = None;
    // Exactly-once, the front's rows count once their transaction commits.
    source.isolation_level = weir_crds::IsolationLevel::ReadCommitted;
    source
}

/// A source partition the front owns.
#[derive(Debug)]
struct Owned {
    watermark: Watermark,
    /// Next offset to process, once a record was processed.
    position: Option<i64>,
    committed: Option<i64>,
}

/// Source partitions owned, shared with the rebalance callbacks.
#[derive(Debug, Default)]
struct Owners {
    owned: BTreeMap<i32, Owned>,
}

/// Client context of the front's consumer: commits what it hands over, reports lag.
struct FrontContext {
    topic: String,
    plan: Arc<Plan>,
    owners: Arc<Mutex<Owners>>,
    producer: Arc<Sink>,
    shared: Arc<Shared>,
    retry: weir_crds::Retry,
    exactly_once: bool,
    failed: Mutex<Option<RunError>>,
    token: Option<TokenSource>,
}

impl ClientContext for FrontContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        consumer_error(&self.failed, "consuming the source", error, reason);
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.token.as_ref())
    }

    fn stats(&self, statistics: Statistics) {
        let owners = lock(&self.owners);
        let owned = |partition: i32| owners.owned.get(&partition).map(|o| o.committed);
        export_lag(&self.shared.metrics, &self.topic, &statistics, true, owned);
    }
}

impl ConsumerContext for FrontContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        if let Err(e) = self.hand_over(consumer, &partitions) {
            error!(error = %e, "handing over revoked source partitions failed");
            lock(&self.failed).get_or_insert(e);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else { return };
        self.take(&assigned.elements().iter().map(|e| e.partition()).collect::<Vec<_>>());
    }
}

impl FrontContext {
    /// Commits what was delivered of `partitions` (their next owner starts at the committed
    /// offsets) and stops owning them.
    fn hand_over<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, partitions: &[i32]) -> Result<(), RunError> {
        self.shared.metrics.source_rebalances.inc();
        for partition in partitions {
            let _ = self.shared.metrics.consumer_lag.remove_label_values(&[&self.topic, &partition.to_string()]);
        }
        let mut owners = lock(&self.owners);
        let exactly_once = self.exactly_once;
        let result =
            commit(consumer, &self.producer, &self.topic, &mut owners, &self.shared, &self.retry, exactly_once);
        for partition in partitions {
            owners.owned.remove(partition);
        }
        info!(?partitions, "source partitions handed over");
        result
    }

    /// Owns `partitions` from now on.
    fn take(&self, partitions: &[i32]) {
        self.shared.metrics.source_rebalances.inc();
        let now = Instant::now();
        let mut owners = lock(&self.owners);
        for &partition in partitions {
            owners.owned.entry(partition).or_insert_with(|| Owned {
                watermark: self.plan.watermark(now),
                position: None,
                committed: None,
            });
        }
        info!(partitions = ?owners.owned.keys().collect::<Vec<_>>(), "source partitions assigned");
    }
}

/// Makes the front's progress durable: waits for everything produced to the internal topic,
/// then commits the source offsets after it; exactly-once, commits the transaction that
/// holds both (and opens the next).
fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    producer: &Sink,
    topic: &str,
    owners: &mut Owners,
    shared: &Shared,
    retry: &weir_crds::Retry,
    exactly_once: bool,
) -> Result<(), RunError> {
    if !exactly_once {
        producer.flush(TIMEOUT).map_err(kafka("flushing records to the internal topic"))?;
    }
    if let Some(failure) = lock(&producer.context().failed).clone() {
        return Err(RunError::Delivery(failure));
    }
    let mut offsets = TopicPartitionList::new();
    for (&partition, owned) in &owners.owned {
        if let Some(position) = owned.position.filter(|&p| Some(p) != owned.committed) {
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(position))
                .map_err(kafka("listing offsets"))?;
        }
    }
    let metrics = &shared.metrics;
    if exactly_once {
        if offsets.count() > 0 {
            let group = consumer
                .group_metadata()
                .ok_or_else(|| RunError::Checkpoint("no consumer group metadata for the source".into()))?;
            producer
                .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
                .map_err(kafka("adding source offsets to the internal topic's transaction"))?;
        }
        producer.commit_transaction(TIMEOUT).map_err(kafka("committing the internal topic's transaction"))?;
        producer.begin_transaction().map_err(kafka("beginning a transaction on the internal topic"))?;
        if offsets.count() > 0 {
            metrics.source_commits.inc();
        }
    } else if offsets.count() > 0
        && !commit_unless_rebalancing(consumer, &offsets, retry, metrics).map_err(kafka("committing source offsets"))?
    {
        return Ok(());
    }
    for element in offsets.elements() {
        if let (Some(owned), Offset::Offset(o)) = (owners.owned.get_mut(&element.partition()), element.offset()) {
            owned.committed = Some(o);
        }
    }
    Ok(())
}

/// The front: source consumer, internal producer, and the source partitions it owns.
pub(super) struct Front {
    /// The source topic.
    pub topic: String,
    /// The internal topic.
    pub internal: String,
    /// The source topic's partition count: the keyed stage waits for all their watermarks.
    pub source_partitions: usize,
    internal_partitions: u32,
    plan: Arc<Plan>,
    keys: Vec<String>,
    consumer: BaseConsumer<FrontContext>,
    producer: Arc<Sink>,
    owners: Arc<Mutex<Owners>>,
    rate: Option<RecordRate>,
    /// Rows, watermarks and source offsets commit in one transaction.
    exactly_once: bool,
    /// Exactly-once with the dead-letter topic on the source's cluster: dead letters of
    /// consumed records go in the same transaction.
    dead_letters_in_transaction: bool,
    /// The marks last sent and when.
    sent: Mutex<(Marks, Instant)>,
    /// Who assigns source partitions.
    assignment: AssignmentMode,
    /// Operator mode, while stopped: the source partitions given up at the stop, taken
    /// again on resume.
    parked: Mutex<Vec<i32>>,
    /// Where a source partition without a committed offset starts.
    reset: Offset,
}

impl Front {
    /// Sets up the front of the job `settings` run, creating the internal topic when it
    /// does not exist. With `transactions` (an id and a timeout), what it produces commits
    /// with the source offsets in Kafka transactions.
    pub fn start(
        settings: &Settings,
        plan: &Plan,
        shared: &Arc<Shared>,
        source_partitions: usize,
        transactions: Option<(String, Duration)>,
    ) -> Result<Self, RunError> {
        let Settings { spec, group_id, secrets, assignment, .. } = settings;
        let assignment = *assignment;
        let source = &spec.source.kafka;
        let internal = internal_topic(group_id);
        let sink = source_side_sink(spec, None);
        let mut properties = config::producer(&sink, secrets)?;
        let exactly_once = transactions.is_some();
        if let Some((id, timeout)) = &transactions {
            properties.insert("transactional.id".into(), id.clone());
            properties.insert("transaction.timeout.ms".into(), timeout.as_millis().to_string());
        }
        let token = TokenSource::for_connection(source.security.as_ref(), Side::Source, secrets)?;
        let partitions = internal_partition_count(spec, source_partitions);
        let create = weir_crds::CreateTopic { partitions, replication_factor: -1 };
        ensure_topic(&properties, token.clone(), &internal, Some(&create)).map_err(kafka("creating topics"))?;
        let deliveries = Deliveries::new("repartition", shared.metrics.clone(), token.clone());
        let producer: Arc<Sink> =
            Arc::new(client(&properties, deliveries).map_err(kafka("creating the internal topic's producer"))?);
        if exactly_once {
            // Fences an earlier instance with the same id and aborts its open transaction.
            producer.init_transactions(TIMEOUT).map_err(kafka("initialising the internal topic's transactions"))?;
            producer.begin_transaction().map_err(kafka("beginning a transaction on the internal topic"))?;
        }
        let (front_plan, _) = plan.split_at_key();
        let front_plan = Arc::new(front_plan);
        let owners = Arc::new(Mutex::new(Owners::default()));
        let context = FrontContext {
            topic: source.topic.clone(),
            plan: front_plan.clone(),
            owners: owners.clone(),
            producer: producer.clone(),
            shared: shared.clone(),
            retry: source.retry.clone(),
            exactly_once,
            failed: Mutex::default(),
            token,
        };
        let consumer: BaseConsumer<FrontContext> =
            client(&config::consumer(source, group_id, secrets)?, context).map_err(kafka("creating the consumer"))?;
        let retries = shared.metrics.retries.with_label_values(&["source"]);
        let internal_partitions =
            retrying(&source.retry, &retries, "reading the internal topic", || partition_count(&consumer, &internal))
                .map_err(kafka("reading the internal topic"))?;
        if internal_partitions == 0 {
            return Err(RunError::MissingTopic(format!("the internal topic {internal} could not be created")));
        }
        if internal_partitions != usize::try_from(partitions).unwrap_or(0) {
            warn!(
                topic = internal,
                partitions = internal_partitions,
                wanted = partitions,
                "the internal topic exists with another partition count; keeping it (keys are placed by it)"
            );
        }
        if assignment == AssignmentMode::Group {
            consumer.subscribe(&[&source.topic]).map_err(kafka("subscribing to the source topic"))?;
        }
        info!(topic = source.topic, internal, internal_partitions, "repartitioning through the internal topic");
        Ok(Self {
            topic: source.topic.clone(),
            internal,
            source_partitions,
            internal_partitions: u32::try_from(internal_partitions).unwrap_or(u32::MAX),
            keys: plan.key_fields().to_vec(),
            plan: front_plan,
            consumer,
            producer,
            owners,
            rate: source.max_records_per_second.and_then(NonZeroU32::new).map(RecordRate::new),
            exactly_once,
            dead_letters_in_transaction: exactly_once
                && spec
                    .dead_letter
                    .as_ref()
                    .is_some_and(|d| d.bootstrap_servers.as_ref().is_none_or(|b| b == &source.bootstrap_servers)),
            sent: Mutex::new((Marks::new(), Instant::now())),
            assignment,
            parked: Mutex::default(),
            reset: start::reset_offset(source.start_offset),
        })
    }

    /// The internal topic's partition count.
    pub fn internal_partitions(&self) -> usize {
        self.internal_partitions as usize
    }

    /// The producer writing the internal topic (its failures stop the job).
    pub fn producer(&self) -> &Sink {
        &self.producer
    }

    /// Whether dead letters of consumed records go through [`Self::producer`], in its
    /// transactions.
    pub fn carries_dead_letters(&self) -> bool {
        self.dead_letters_in_transaction
    }

    /// A failure inside a rebalance callback, for the loop to stop on.
    pub fn take_failure(&self) -> Option<RunError> {
        lock(&self.consumer.context().failed).take()
    }

    /// Up to `max` source records, waiting at most `wait` for them.
    fn poll(&self, max: usize, wait: Duration) -> Result<Vec<BorrowedMessage<'_>>, RunError> {
        let max = self.rate.as_ref().map_or(max, |r| r.max_batch().min(max)).max(1);
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        while messages.len() < max {
            match self.consumer.poll(deadline.saturating_duration_since(Instant::now())) {
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) if classify(&e) == Class::Transient => {
                    warn!(error = %e, "consume error; librdkafka retries")
                }
                Some(Err(e)) => return Err(RunError::Kafka { context: "consuming the source", source: e }),
                None => break,
            }
        }
        if let Some(rate) = &self.rate {
            rate.acquire(messages.len());
        }
        Ok(messages)
    }

    /// Commits the source offsets of what was delivered to the internal topic.
    pub fn commit(&self, shared: &Shared, retry: &weir_crds::Retry) -> Result<(), RunError> {
        let mut owners = lock(&self.owners);
        commit(&self.consumer, &self.producer, &self.topic, &mut owners, shared, retry, self.exactly_once)
    }

    /// Stops consuming (a stop-with-savepoint): commits, then gives up the source
    /// partitions. In a group it leaves, so they go to instances still running or wait for
    /// the next pods; under the operator it keeps them for a resume.
    pub fn stop(&self, shared: &Shared, retry: &weir_crds::Retry) -> Result<(), RunError> {
        self.commit(shared, retry)?;
        match self.assignment {
            AssignmentMode::Group => self.consumer.unsubscribe(),
            AssignmentMode::Operator => {
                let owned = self.owned();
                self.consumer
                    .incremental_unassign(
                        &partition_list(&self.topic, &owned, Offset::Stored).map_err(kafka("listing partitions"))?,
                    )
                    .map_err(kafka("giving up source partitions"))?;
                *lock(&self.parked) = owned;
            }
        }
        lock(&self.owners).owned.clear();
        Ok(())
    }

    /// Consumes again after [`Self::stop`], from the committed offsets.
    pub fn resume(&self) -> Result<(), RunError> {
        match self.assignment {
            AssignmentMode::Group => {
                self.consumer.subscribe(&[&self.topic]).map_err(kafka("subscribing to the source topic again"))
            }
            AssignmentMode::Operator => {
                let parked = std::mem::take(&mut *lock(&self.parked));
                self.consumer
                    .incremental_assign(&self.starting_offsets(&parked)?)
                    .map_err(kafka("taking source partitions again"))?;
                self.consumer.context().take(&parked);
                Ok(())
            }
        }
    }

    /// Takes the source partitions of `slot` (operator mode), handing over the ones it
    /// does not own first.
    pub fn assign(&self, slot: Option<Slot>) -> Result<(), RunError> {
        let moves = assignment::moves(&self.owned(), slot, self.source_partitions);
        let context = self.consumer.context();
        if !moves.revoke.is_empty() {
            context.hand_over(&self.consumer, &moves.revoke)?;
            self.consumer
                .incremental_unassign(
                    &partition_list(&self.topic, &moves.revoke, Offset::Stored).map_err(kafka("listing partitions"))?,
                )
                .map_err(kafka("giving up source partitions"))?;
        }
        if !moves.assign.is_empty() {
            self.consumer
                .incremental_assign(&self.starting_offsets(&moves.assign)?)
                .map_err(kafka("taking source partitions"))?;
            context.take(&moves.assign);
        }
        Ok(())
    }

    /// Source `partitions` at their committed offsets (see [`start`]).
    fn starting_offsets(&self, partitions: &[i32]) -> Result<TopicPartitionList, RunError> {
        let context = self.consumer.context();
        let retries = context.shared.metrics.retries.with_label_values(&["source"]);
        start::starting_offsets(&self.consumer, &self.topic, partitions, self.reset, (&context.retry, &retries))
            .map_err(kafka("reading committed offsets"))
    }

    /// The source partitions owned now.
    fn owned(&self) -> Vec<i32> {
        lock(&self.owners).owned.keys().copied().collect()
    }

    /// Sends watermark records to every internal partition when event time moved (at most
    /// every [`MARKS_EVERY`]) or [`MARKS_AT_LEAST_EVERY`] passed. Idle source partitions'
    /// event time moves with the clock first.
    pub fn send_marks(&self) -> Result<(), RunError> {
        let now = Instant::now();
        // Called for every batch: nothing is due this soon after the last marks.
        if now.saturating_duration_since(lock(&self.sent).1) < MARKS_EVERY {
            return Ok(());
        }
        let marks: Marks = {
            let mut owners = lock(&self.owners);
            owners
                .owned
                .iter_mut()
                .filter_map(|(&partition, owned)| {
                    owned.watermark.advance_if_idle(now);
                    match owned.watermark.max_event_time() {
                        Some(_) => Some((partition, Mark::At(owned.watermark.current()))),
                        None if owned.watermark.is_idle(now) => Some((partition, Mark::IDLE)),
                        None => None,
                    }
                })
                .collect()
        };
        let mut sent = lock(&self.sent);
        let since = now.saturating_duration_since(sent.1);
        let due = (marks != sent.0 && since >= MARKS_EVERY) || since >= MARKS_AT_LEAST_EVERY;
        if marks.is_empty() || !due {
            return Ok(());
        }
        let payload = repartition::encode_marks(&marks).map_err(|e| RunError::Unsupported(e.to_string()))?;
        for partition in 0..self.internal_partitions {
            let headers = OwnedHeaders::new().insert(Header { key: KIND_HEADER, value: Some(WATERMARKS) });
            let record = BaseRecord::with_opaque_to(&self.internal, self.producer.context().sent_now())
                .partition(i32::try_from(partition).unwrap_or(i32::MAX))
                .payload(payload.as_slice())
                .headers(headers);
            send(&self.producer, record).map_err(kafka("producing"))?;
        }
        debug!(?marks, "watermarks sent to the internal topic");
        *sent = (marks, now);
        Ok(())
    }
}

impl Job {
    /// Moves one batch of source records through the steps before the `keyBy` to the
    /// internal topic, then sends watermarks if they are due.
    pub(super) fn pump_front(&self, front: &Front, wait: Duration) -> Result<(), RunError> {
        let source = &self.settings.spec.source.kafka;
        let messages = front.poll(source.batch_size as usize, wait)?;
        if !messages.is_empty() {
            self.forward(front, &messages)?;
        }
        front.producer.poll(Duration::ZERO);
        front.send_marks()
    }

    fn forward(&self, front: &Front, messages: &[BorrowedMessage<'_>]) -> Result<(), RunError> {
        let metrics = &self.shared.metrics;
        metrics.records_in.inc_by(messages.len() as u64);
        metrics.source_bytes.inc_by(messages.iter().map(|m| m.payload_len() + m.key_len()).sum::<usize>() as u64);
        let now = Instant::now();
        for (partition, records) in records_by_partition(messages) {
            let _span = self.process_span(&self.settings.spec.source.kafka.topic, partition, &records);
            self.runtime.block_on(self.decoder.prepare(&records))?;
            let decoded = self.decoder.decode(&records);
            self.dead_letters().undecoded(&records, &decoded.errors)?;
            if let Some(batch) = decoded.batch {
                let (rows, rejected) = match front.plan.apply_front(batch.clone()) {
                    Ok(applied) => applied,
                    Err(e) => {
                        self.dead_letters().failed_batch(&records, &e)?;
                        (None, Vec::new())
                    }
                };
                self.dead_letters().rejected(&records, &rejected)?;
                let newest = crate::engine::newest_event_time_except(&batch, &rejected);
                match rows.map(|rows| self.route(front, partition, rows)) {
                    None | Some(Ok(())) => {}
                    Some(Err(RouteError::Send(e))) => return Err(e),
                    Some(Err(e)) => self.dead_letters().failed_batch(&records, &e)?,
                }
                if let (Some(newest), Some(owned)) = (newest, lock(&front.owners).owned.get_mut(&partition)) {
                    owned.watermark.observe(newest, now);
                }
            }
            if let (Some(last), Some(owned)) = (records.last(), lock(&front.owners).owned.get_mut(&partition)) {
                owned.position = Some(last.offset + 1);
            }
        }
        Ok(())
    }

    /// Produces one partition's rows, through the steps before the `keyBy`, to the internal
    /// partitions of their keys.
    fn route(&self, front: &Front, partition: i32, rows: arrow::record_batch::RecordBatch) -> Result<(), RouteError> {
        let rows = repartition::with_upstream_offsets(rows)?;
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let targets = repartition::partitions_of(&rows, &front.keys, front.internal_partitions)?;
        let upstream = partition.to_string();
        for (target, group) in repartition::split(&rows, &targets)? {
            for payload in repartition::encode_rows(&group)? {
                let headers = OwnedHeaders::new_with_capacity(2)
                    .insert(Header { key: KIND_HEADER, value: Some(ROWS) })
                    .insert(Header { key: UPSTREAM_HEADER, value: Some(&upstream) });
                let record = BaseRecord::with_opaque_to(&front.internal, front.producer.context().sent_now())
                    .partition(i32::try_from(target).unwrap_or(i32::MAX))
                    .payload(payload.as_slice())
                    .headers(headers);
                send(&front.producer, record).map_err(|e| RouteError::Send(kafka("producing")(e)))?;
            }
        }
        Ok(())
    }
}

/// Why a batch could not be routed. Data errors dead-letter the batch; a failed send stops.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Send(RunError),
}

//! The source consumer's side of the job: its client context and the consumed records.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use rdkafka::{
    ClientContext, Message, Statistics,
    client::OAuthToken,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::BorrowedMessage,
};
use tracing::{error, info, warn};

use super::{RunError, Table, commit::Committer, shared::lock};
use crate::{
    codec::RawRecord,
    kafka::{
        auth::TokenSource,
        clients::oauth_token,
        lag::export_lag,
        retry::{Class, classify_client_error},
    },
};

/// The source consumer's context: rebalances hand partitions over through the committer,
/// statistics become `weir_consumer_lag`, fatal errors stop the loop.
pub(super) struct SourceContext {
    pub table: Arc<Mutex<Table>>,
    pub committer: Arc<Committer>,
    /// A failure inside a rebalance callback, for the loop to stop on.
    pub failed: Mutex<Option<RunError>>,
    /// The job's stop-with-savepoint flag: while set, the loop reports lag itself.
    pub stopped: Arc<AtomicBool>,
    pub token: Option<TokenSource>,
}

impl ClientContext for SourceContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        consumer_error(&self.failed, "consuming", error, reason);
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.token.as_ref())
    }

    fn stats(&self, statistics: Statistics) {
        // Offsets committed in transactions do not show in the consumer's statistics: the
        // table knows what was committed.
        let table = lock(&self.table);
        // librdkafka learns high watermarks from fetch responses, and paused partitions are
        // not fetched: while stopped, the loop asks the broker instead.
        let fetching = !self.stopped.load(Ordering::Relaxed);
        let owned = |partition: i32| table.partitions.get(&partition).map(|r| r.committed);
        export_lag(&self.committer.shared.metrics, &self.committer.topic, &statistics, fetching, owned);
    }
}

/// A consumer's client error: a fatal one is kept for the job loop to stop on, others are
/// librdkafka's to retry.
pub(super) fn consumer_error(failed: &Mutex<Option<RunError>>, context: &'static str, error: KafkaError, reason: &str) {
    if classify_client_error(&error, reason) == Class::Fatal {
        error!(%error, reason, context, "fatal consumer error");
        lock(failed).get_or_insert(RunError::Client { context, source: error, reason: reason.to_owned() });
    } else {
        warn!(%error, reason, context, "consumer error; librdkafka retries");
    }
}

/// Consumed messages as records, grouped by partition in offset order.
pub(super) fn records_by_partition<'a>(messages: &'a [BorrowedMessage<'a>]) -> BTreeMap<i32, Vec<RawRecord<'a>>> {
    let mut by_partition: BTreeMap<i32, Vec<RawRecord<'a>>> = BTreeMap::new();
    for message in messages {
        by_partition.entry(message.partition()).or_default().push(RawRecord {
            payload: message.payload(),
            key: message.key(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            headers: message.headers(),
        });
    }
    by_partition
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        self.committer.shared.metrics.source_rebalances.inc();
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        // The new owner reports their lag; librdkafka's statistics may not list them again.
        let metrics = &self.committer.shared.metrics;
        for partition in &partitions {
            let _ = metrics.consumer_lag.remove_label_values(&[&self.committer.topic, &partition.to_string()]);
        }
        let mut table = lock(&self.table);
        if let Err(e) = self.committer.hand_over(consumer, &mut table, &partitions) {
            error!(error = %e, "handing over revoked partitions failed");
            lock(&self.failed).get_or_insert(e);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
            info!(?partitions, "partitions assigned");
            self.committer.shared.metrics.source_rebalances.inc();
            lock(&self.table).assigned.extend(partitions);
        }
    }
}

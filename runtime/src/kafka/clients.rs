//! Kafka clients and their contexts: how errors, deliveries, statistics and OAUTHBEARER
//! tokens reach the runtime.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message, Statistics,
    client::OAuthToken,
    consumer::ConsumerContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::DeliveryResult,
    producer::{BaseProducer, BaseRecord, ProducerContext},
};
use tracing::{error, warn};

use super::{
    auth::TokenSource,
    config,
    retry::{Class, classify_client_error},
};
use crate::{metrics::Metrics, sync::lock};

/// A producer of results or dead letters.
pub type Sink = BaseProducer<Deliveries>;

/// Delivery opaque of a dead letter, which may share a transactional producer with results.
pub const DEAD_LETTER: usize = usize::MAX;

/// A librdkafka client of `properties`, with `context`.
pub fn client<C: rdkafka::config::FromClientConfigAndContext<Ctx>, Ctx: ClientContext>(
    properties: &config::Properties,
    context: Ctx,
) -> Result<C, KafkaError> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config.create_with_context(context)
}

/// A client's OAUTHBEARER token for librdkafka's refresh callback.
pub fn oauth_token(source: Option<&TokenSource>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let source = source.ok_or("no OAUTHBEARER token source configured")?;
    source.token().map_err(|e| {
        error!(error = %e, "no OAUTHBEARER token");
        e.into()
    })
}

/// Watches a producer: counts deliveries and their latency; the first failed delivery or
/// fatal client error stops the job before its offsets are committed.
#[derive(Debug)]
pub struct Deliveries {
    component: &'static str,
    metrics: Metrics,
    token: Option<TokenSource>,
    /// Reference point of the delivery opaques (microseconds since it).
    epoch: Instant,
    /// librdkafka's retry count at the last statistics, to count retries as they happen.
    retried: AtomicU64,
    /// The first failed delivery or fatal error.
    pub failed: Mutex<Option<String>>,
}

impl Deliveries {
    pub fn new(component: &'static str, metrics: Metrics, token: Option<TokenSource>) -> Self {
        Self { component, metrics, token, epoch: Instant::now(), retried: AtomicU64::new(0), failed: Mutex::default() }
    }

    /// The opaque of a record handed to the producer now.
    pub fn sent_now(&self) -> usize {
        self.epoch.elapsed().as_micros() as usize
    }
}

impl ClientContext for Deliveries {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn stats(&self, statistics: Statistics) {
        let retried: u64 = statistics.brokers.values().map(|b| b.txretries).sum();
        let before = self.retried.swap(retried, Ordering::Relaxed);
        if retried > before {
            self.metrics.retries.with_label_values(&[self.component]).inc_by(retried - before);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if classify_client_error(&error, reason) == Class::Fatal {
            error!(%error, reason, component = self.component, "fatal producer error");
            lock(&self.failed).get_or_insert_with(|| format!("{}: {error}: {reason}", self.component));
        } else {
            warn!(%error, reason, component = self.component, "producer error; librdkafka retries");
        }
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.token.as_ref())
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: usize) {
        // The sink metrics are the sink's; dead letters have their own counter.
        let sink = self.component == "sink" && sent_at != DEAD_LETTER;
        match result {
            Ok(_) if sink => {
                let latency = self.epoch.elapsed().as_micros().saturating_sub(sent_at as u128);
                self.metrics.sink_delivery_latency.observe(latency as f64 / 1e6);
            }
            Ok(_) => {}
            Err((error, message)) => {
                if sink {
                    self.metrics.sink_errors.inc();
                }
                error!(%error, topic = message.topic(), component = self.component, "delivery failed");
                lock(&self.failed).get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// The client context of admin calls (topic creation): authentication only.
#[derive(Debug)]
pub struct AdminContext {
    token: Option<TokenSource>,
    /// A fatal client error (authentication, TLS) and its reason: librdkafka reports those
    /// here while the call that met them only times out.
    failed: Mutex<Option<(KafkaError, String)>>,
}

impl AdminContext {
    pub fn new(token: Option<TokenSource>) -> Self {
        Self { token, failed: Mutex::default() }
    }

    /// `call`, unless a fatal client error was reported (then that error, which is not
    /// retried) or the runtime is shutting down.
    pub fn unless_failed<T>(
        &self,
        shutdown: &AtomicBool,
        call: impl FnOnce() -> Result<T, KafkaError>,
    ) -> Result<T, KafkaError> {
        let fatal = || lock(&self.failed).as_ref().map(|(error, _)| error.clone());
        if let Some(error) = fatal() {
            return Err(error);
        }
        if shutdown.load(Ordering::Relaxed) {
            return Err(KafkaError::Canceled);
        }
        call().map_err(|error| fatal().unwrap_or(error))
    }

    /// The fatal client error reported, with its reason, if one was.
    pub fn fatal(&self) -> Option<(KafkaError, String)> {
        lock(&self.failed).clone()
    }
}

impl ClientContext for AdminContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        if classify_client_error(&error, reason) == Class::Fatal {
            error!(%error, reason, "fatal client error");
            lock(&self.failed).get_or_insert((error, reason.to_owned()));
        } else {
            warn!(%error, reason, "client error; librdkafka retries");
        }
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.token.as_ref())
    }
}

/// A consumer only asked for metadata (never subscribed).
impl ConsumerContext for AdminContext {}

/// Queues a record, waiting for room when the producer's queue is full.
pub fn send(producer: &Sink, mut record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(50));
                record = returned;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

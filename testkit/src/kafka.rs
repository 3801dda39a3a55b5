//! A small, independent Kafka client for tests: produce records, read a topic back, see
//! whether a topic has records of open transactions.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
    producer::{BaseProducer, BaseRecord},
};

/// A producer to `bootstrap` with librdkafka's defaults.
pub fn producer(bootstrap: &str) -> Result<BaseProducer, KafkaError> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create()
}

/// Queues `record`, serving delivery reports while the local queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Queues a keyed text record on `topic`.
pub fn send_text(producer: &BaseProducer, topic: &str, key: &str, payload: &str) -> Result<(), KafkaError> {
    send(producer, BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes()))
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Received {
    /// The record's key, if any.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub payload: Vec<u8>,
    /// Headers as text.
    pub headers: Vec<(String, String)>,
    /// The record's timestamp, epoch ms.
    pub timestamp: Option<i64>,
}

impl Received {
    /// The value as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

static READERS: AtomicU64 = AtomicU64::new(0);

/// Reads `topic` from the start until `count` records arrived (or `timeout` passed), then
/// keeps reading until 3 s pass without a record, so that extra (repeated) records show.
pub fn read_records(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Received>, KafkaError> {
    read(bootstrap, topic, count, timeout, "read_uncommitted")
}

/// [`read_records`] as a transactional reader sees them: committed records only.
pub fn read_committed_records(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Received>, KafkaError> {
    read(bootstrap, topic, count, timeout, "read_committed")
}

fn read(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
    isolation: &str,
) -> Result<Vec<Received>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("isolation.level", isolation)
        .set("bootstrap.servers", bootstrap)
        // A fresh group per read: rejoining a group a moment ago left can wait out its session.
        .set("group.id", format!("reader-{topic}-{}-{}", std::process::id(), READERS.fetch_add(1, Ordering::Relaxed)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut last_record = Instant::now();
    while Instant::now() < deadline && (records.len() < count || last_record.elapsed() < Duration::from_secs(3)) {
        let polled = consumer.poll(Duration::from_millis(200));
        if let Some(Err(e)) = &polled {
            // Shown with a failing test's output: why a topic reads back short.
            eprintln!("reading {topic}: {e}");
        }
        if let Some(Ok(message)) = polled {
            last_record = Instant::now();
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Received {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers,
                timestamp: message.timestamp().to_millis(),
            });
        }
    }
    Ok(records)
}

/// Records of open transactions in `topic`: over all partitions, the high watermark less
/// the last stable offset (what a read_committed reader may read up to). Zero once every
/// transaction that wrote to it committed or aborted.
pub fn open_transaction_records(bootstrap: &str, topic: &str) -> Result<i64, KafkaError> {
    let end = |isolation: &str| -> Result<Vec<i64>, KafkaError> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", bootstrap).set("isolation.level", isolation).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        (0..partitions)
            .map(|p| {
                let p = i32::try_from(p).unwrap_or(i32::MAX);
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|(_, high)| high)
            })
            .collect()
    };
    let (high, stable) = (end("read_uncommitted")?, end("read_committed")?);
    Ok(high.iter().zip(&stable).map(|(h, s)| h - s).sum())
}

/// The numbered click stream the stack tests run through: `{"user": "u<n % 7>", "n": n}`
/// for each `n`, keyed by user, to `topic`.
pub fn produce_clicks(bootstrap: &str, topic: &str, numbers: std::ops::Range<i64>) -> Result<(), KafkaError> {
    let producer = producer(bootstrap)?;
    for n in numbers {
        let user = format!("u{}", n % 7);
        send_text(&producer, topic, &user, &serde_json::json!({"user": user, "n": n}).to_string())?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))
}

/// The `n` of at least `count` click records read from `topic`, sorted (-1 for a record
/// without one).
pub fn read_click_numbers(bootstrap: &str, topic: &str, count: usize) -> Result<Vec<i64>, KafkaError> {
    let records = read_records(bootstrap, topic, count, Duration::from_secs(90))?;
    let mut numbers: Vec<i64> =
        records.iter().map(|r| r.json().ok().and_then(|v| v["n"].as_i64()).unwrap_or(-1)).collect();
    numbers.sort_unstable();
    Ok(numbers)
}

//! The windowed payments fixture the runtime and stack tests share: generated payments with
//! bounded disorder, their expected per-user 10 s window totals computed without the
//! runtime, and the runtime's results read back, so any test can check output exactly.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::json;

use crate::kafka::{self, Received};

/// Size of the fixture job's tumbling window.
pub const WINDOW_MS: i64 = 10_000;
/// Far beyond every test event: a record at this time closes all earlier windows.
pub const FLUSH_TS: i64 = 1_750_000_000_000;
/// Event time of the first payment.
pub const BASE_TS: i64 = 1_700_000_000_000;

/// Window results: (user, window start) → (total, count).
pub type Totals = BTreeMap<(String, i64), (i64, i64)>;

/// One generated payment.
#[derive(Debug, Clone)]
pub struct Payment {
    /// Who paid: the key.
    pub user: String,
    /// How much.
    pub amount: i64,
    /// Event time, epoch ms.
    pub ts: i64,
}

/// Payments `start..start + count` of `users` users, event times rising with up to 2 s of
/// disorder (less than the fixture job's 5 s allowance, so none is late).
pub fn payments(count: usize, users: usize, start: usize) -> Vec<Payment> {
    (start..start + count)
        .map(|i| {
            let jitter = ((i * 7919) % 2000) as i64;
            Payment {
                user: format!("user-{}", (i * 31) % users),
                amount: (i % 97) as i64 + 1,
                ts: BASE_TS + i as i64 * 50 - jitter,
            }
        })
        .collect()
}

/// The expected results of `payments`, computed without the runtime.
pub fn expected(payments: &[Payment]) -> Totals {
    let mut out = BTreeMap::new();
    for p in payments {
        let entry = out.entry((p.user.clone(), p.ts - p.ts.rem_euclid(WINDOW_MS))).or_insert((0, 0));
        entry.0 += p.amount;
        entry.1 += 1;
    }
    out
}

/// Sends `payments` to `topic` keyed by user, and waits until the broker has them.
pub fn produce(producer: &BaseProducer, topic: &str, payments: &[Payment]) -> Result<(), KafkaError> {
    for p in payments {
        let payload = json!({"user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts}).to_string();
        kafka::send_text(producer, topic, &p.user, &payload)?;
    }
    producer.flush(Duration::from_secs(30))
}

/// Sends payment `i` to partition `i % partitions`, whatever its user: every user's
/// payments are spread over all partitions, as in a topic not keyed by user.
pub fn produce_spread(
    producer: &BaseProducer,
    topic: &str,
    payments: &[Payment],
    partitions: i32,
) -> Result<(), KafkaError> {
    for (i, p) in payments.iter().enumerate() {
        let payload = json!({"user_id": p.user, "amount": p.amount, "currency": "EUR", "ts": p.ts}).to_string();
        let partition = i32::try_from(i).unwrap_or(0) % partitions.max(1);
        kafka::send(
            producer,
            BaseRecord::to(topic).key(p.user.as_bytes()).payload(payload.as_bytes()).partition(partition),
        )?;
    }
    producer.flush(Duration::from_secs(30))
}

/// One far-future record per partition, so that every window of the test data closes.
pub fn produce_flush_markers(producer: &BaseProducer, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    for partition in 0..partitions {
        let payload = json!({"user_id": "flush", "amount": 0, "currency": "EUR", "ts": FLUSH_TS}).to_string();
        kafka::send(
            producer,
            BaseRecord::to(topic).key("flush".as_bytes()).payload(payload.as_bytes()).partition(partition),
        )?;
    }
    producer.flush(Duration::from_secs(30))
}

/// Output records as window results; an error names a window emitted twice or a record
/// that is not a window result.
pub fn results(records: &[Received]) -> Result<Totals, String> {
    let mut out = BTreeMap::new();
    for record in records {
        let record = record.json().map_err(|e| format!("output is not JSON: {e}"))?;
        let time = |field: &str| {
            let text = record[field].as_str().unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{field} of {record}: {e}"))
        };
        let (start, end) = (time("window_start")?, time("window_end")?);
        if end - start != WINDOW_MS {
            return Err(format!("not a {WINDOW_MS} ms window: {record}"));
        }
        let user = record["user_id"].as_str().unwrap_or_default().to_owned();
        let value = (record["total"].as_i64().unwrap_or(-1), record["payments"].as_i64().unwrap_or(-1));
        if out.insert((user, start), value).is_some() {
            return Err(format!("window emitted twice: {record}"));
        }
    }
    Ok(out)
}

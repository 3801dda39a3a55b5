//! The reader that applies transaction markers itself (`weir_e2e::kafka::committed`),
//! against the tansu build with transactions and a librdkafka transactional producer; and
//! what that broker stores, which is why the reader exists.

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    error::KafkaError,
    producer::{BaseProducer, Producer},
};
use weir_e2e::{
    broker::Broker,
    kafka::{
        self,
        committed::{self, Connection, Isolation, Marker},
    },
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional(broker: &Broker, id: &str) -> Result<BaseProducer, KafkaError> {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("transactional.id", id).create()?;
    producer.init_transactions(TIMEOUT)?;
    Ok(producer)
}

fn send(producer: &BaseProducer, topic: &str, value: &str) -> Result<(), KafkaError> {
    kafka::send_text(producer, topic, "k", value)
}

fn shown(broker: &Broker, topic: &str) -> (Vec<String>, committed::Resolved) {
    let resolved = committed::read(&broker.bootstrap(), topic).unwrap_or_else(|e| panic!("reading {topic}: {e}"));
    let values = resolved.records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    (values, resolved)
}

/// Commits one transaction, aborts one and leaves one open, with a plain record in between.
fn commit_abort_and_leave_open(broker: &Broker, topic: &str, id: &str) -> Result<BaseProducer, KafkaError> {
    let producer = transactional(broker, id)?;
    producer.begin_transaction()?;
    send(&producer, topic, "committed-1")?;
    producer.commit_transaction(TIMEOUT)?;
    producer.begin_transaction()?;
    send(&producer, topic, "aborted-1")?;
    // Written to the log before the abort (and librdkafka wants the delivery reports served).
    producer.flush(TIMEOUT)?;
    producer.abort_transaction(TIMEOUT)?;
    let plain = kafka::producer(&broker.bootstrap())?;
    send(&plain, topic, "plain")?;
    plain.flush(TIMEOUT)?;
    producer.begin_transaction()?;
    send(&producer, topic, "open-1")?;
    producer.flush(TIMEOUT)?;
    Ok(producer)
}

#[test]
fn only_committed_and_plain_records_are_read_and_a_fenced_transaction_is_aborted() {
    let broker = Broker::start_transactional().expect("starting the broker with transactions");
    let topic = "reader";
    broker.create_topic(topic, 1).unwrap();
    let first = commit_abort_and_leave_open(&broker, topic, "reader-txn").unwrap();

    let (values, resolved) = shown(&broker, topic);
    assert_eq!(values, ["committed-1", "plain"]);
    assert_eq!((resolved.aborted, resolved.open), (1, 1), "one aborted record dropped, one open one held back");

    // A new producer with the same transactional id, as after a kill -9 and a restart:
    // its InitProducerId fences the first one and aborts the transaction it left open.
    let second = transactional(&broker, "reader-txn").unwrap();
    second.begin_transaction().unwrap();
    send(&second, topic, "committed-2").unwrap();
    second.commit_transaction(TIMEOUT).unwrap();
    let (values, resolved) = shown(&broker, topic);
    assert_eq!(values, ["committed-1", "plain", "committed-2"]);
    assert_eq!((resolved.aborted, resolved.open, resolved.commits, resolved.aborts), (2, 0, 2, 2));
    drop(first);
}

/// What this tansu build does at the protocol level. If it ever starts listing aborted
/// transactions, read_committed consumers become trustworthy on it and this fails to say so.
#[test]
fn tansu_writes_abort_markers_but_hands_aborted_records_to_read_committed_fetches() {
    let broker = Broker::start_transactional().expect("starting the broker with transactions");
    let topic = "markers";
    broker.create_topic(topic, 1).unwrap();
    let first = commit_abort_and_leave_open(&broker, topic, "markers-txn").unwrap();
    let mut connection = Connection::open(&broker.bootstrap()).unwrap();
    // Offsets: 0 committed-1, 1 COMMIT, 2 aborted-1, 3 ABORT, 4 plain, 5 open-1.
    let open = connection.fetch(topic, 0, 0, Isolation::ReadCommitted).unwrap();
    println!(
        "read_committed fetch with a transaction open: high watermark {}, last stable offset {}, \
         aborted transactions {:?}, {} batches",
        open.high_watermark,
        open.last_stable_offset,
        open.aborted_transactions,
        open.batches.len()
    );
    assert_eq!((open.high_watermark, open.last_stable_offset), (6, 5), "the open transaction holds back the LSO");
    drop(transactional(&broker, "markers-txn").unwrap());

    let batches = connection.batches(topic, 0).unwrap();
    let log: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            b.records.iter().map(move |(offset, r)| {
                let what = if b.control {
                    format!("{:?}", Marker::from_key(r.key.as_deref().unwrap_or_default()).unwrap())
                } else {
                    String::from_utf8_lossy(&r.payload).into_owned()
                };
                format!("{offset}: pid {} epoch {} txn {} {what}", b.producer_id, b.producer_epoch, b.transactional)
            })
        })
        .collect();
    println!("{}", log.join("\n"));
    let markers: Vec<Marker> = batches
        .iter()
        .filter(|b| b.control)
        .flat_map(|b| &b.records)
        .map(|(_, r)| Marker::from_key(r.key.as_deref().unwrap_or_default()).unwrap())
        .collect();
    assert_eq!(markers, [Marker::Commit, Marker::Abort, Marker::Abort], "commit, abort, abort on fencing");
    assert!(batches.iter().filter(|b| b.control).all(|b| b.transactional), "control batches are transactional");

    let read_committed = connection.fetch(topic, 0, 0, Isolation::ReadCommitted).unwrap();
    println!(
        "read_committed fetch: high watermark {}, last stable offset {}, aborted transactions {:?}",
        read_committed.high_watermark, read_committed.last_stable_offset, read_committed.aborted_transactions
    );
    assert!(
        read_committed.aborted_transactions.as_deref().unwrap_or_default().is_empty(),
        "tansu lists no aborted transactions"
    );
    let handed: Vec<String> = read_committed
        .batches
        .iter()
        .filter(|b| !b.control)
        .flat_map(|b| &b.records)
        .map(|(_, r)| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert!(handed.contains(&"aborted-1".to_owned()), "aborted records come in a read_committed fetch: {handed:?}");
    drop(first);
}

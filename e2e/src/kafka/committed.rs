//! What a read_committed consumer should see, worked out from the log itself.
//!
//! The tansu build with transactions writes COMMIT and ABORT control records but hands the
//! records of aborted transactions to read_committed consumers anyway (its Fetch answers
//! list no aborted transactions). So this reader fetches every batch read_uncommitted, over
//! the plain Kafka protocol, and applies the transaction markers itself: a transactional
//! producer's records wait for that producer's next control record, shown on COMMIT,
//! dropped on ABORT, and hidden while no marker has come. It talks to one broker (tests run
//! one) and reads whole topics: it is for checking test output, not for volume.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
        MetadataResponse, RequestHeader, ResponseHeader, TopicName,
        fetch_request::{FetchPartition, FetchTopic},
        metadata_request::MetadataRequestTopic,
    },
    protocol::{Decodable, Encodable, StrBytes},
    records::RecordBatchDecoder,
};

use super::Received;

/// Why a topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed.
    #[error("talking to {address}: {source}")]
    Io {
        /// The broker.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A message could not be encoded or decoded.
    #[error("{what}: {message}")]
    Protocol {
        /// What was being encoded or decoded.
        what: String,
        /// The codec's message.
        message: String,
    },
    /// The broker answered with an error code.
    #[error("{what}: broker error code {code}")]
    Broker {
        /// The request and the partition it concerns.
        what: String,
        /// The Kafka error code.
        code: i16,
    },
    /// The log holds something the transaction rules cannot place.
    #[error("{0}")]
    Log(String),
}

/// The type of a control record, from its key (version 0, then this type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// Type 0: the producer's open transaction is aborted.
    Abort,
    /// Type 1: the producer's open transaction is committed.
    Commit,
}

impl Marker {
    /// Parses a control record's key: `version: i16, type: i16`, big-endian.
    pub fn from_key(key: &[u8]) -> Result<Self, Error> {
        match key {
            [0, 0, 0, 0, ..] => Ok(Self::Abort),
            [0, 0, 0, 1, ..] => Ok(Self::Commit),
            other => Err(Error::Log(format!("unknown control record key {other:?}"))),
        }
    }

    /// The control record key that stands for this marker.
    pub fn key(self) -> Vec<u8> {
        vec![0, 0, 0, if self == Self::Commit { 1 } else { 0 }]
    }
}

/// A record batch as stored, reduced to what transaction semantics need.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset after the batch's last record: where the next fetch starts.
    pub next_offset: i64,
    /// The writing producer (-1 for a plain producer).
    pub producer_id: i64,
    /// The writing producer's epoch.
    pub producer_epoch: i16,
    /// Attribute bit 4: written inside a transaction.
    pub transactional: bool,
    /// Attribute bit 5: holds control records (transaction markers), not data.
    pub control: bool,
    /// The records with their offsets; a control record's key is its marker.
    pub records: Vec<(i64, Received)>,
}

/// One partition after transaction markers are applied.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// Non-transactional and committed records, in offset order.
    pub records: Vec<Received>,
    /// Records of aborted transactions, dropped.
    pub aborted: usize,
    /// Records of transactions without a marker yet, not visible.
    pub open: usize,
    /// COMMIT control records seen.
    pub commits: usize,
    /// ABORT control records seen.
    pub aborts: usize,
}

impl Resolved {
    fn extend(&mut self, other: Resolved) {
        self.records.extend(other.records);
        self.aborted += other.aborted;
        self.open += other.open;
        self.commits += other.commits;
        self.aborts += other.aborts;
    }
}

/// Applies transaction semantics to one partition's batches, in log order: the records a
/// read_committed consumer must see, with counts of what it must not.
pub fn resolve(batches: &[Batch]) -> Result<Resolved, Error> {
    #[derive(Clone, Copy)]
    enum Fate {
        Shown,
        Pending,
        Dropped,
    }
    let mut fates: Vec<(Fate, &Received)> = Vec::new();
    // Per producer id: indexes into `fates` of its records waiting for a marker.
    let mut waiting: HashMap<i64, Vec<usize>> = HashMap::new();
    let (mut commits, mut aborts) = (0, 0);
    for batch in batches {
        if batch.control {
            for (offset, record) in &batch.records {
                let key = record.key.as_deref().unwrap_or_default();
                let marker =
                    Marker::from_key(key).map_err(|e| Error::Log(format!("control record at offset {offset}: {e}")))?;
                let fate = match marker {
                    Marker::Commit => {
                        commits += 1;
                        Fate::Shown
                    }
                    Marker::Abort => {
                        aborts += 1;
                        Fate::Dropped
                    }
                };
                for index in waiting.remove(&batch.producer_id).unwrap_or_default() {
                    fates[index].0 = fate;
                }
            }
        } else if batch.transactional {
            let indexes = waiting.entry(batch.producer_id).or_default();
            for (_, record) in &batch.records {
                indexes.push(fates.len());
                fates.push((Fate::Pending, record));
            }
        } else {
            fates.extend(batch.records.iter().map(|(_, record)| (Fate::Shown, record)));
        }
    }
    let mut resolved = Resolved { commits, aborts, ..Resolved::default() };
    for (fate, record) in fates {
        match fate {
            Fate::Shown => resolved.records.push(record.clone()),
            Fate::Pending => resolved.open += 1,
            Fate::Dropped => resolved.aborted += 1,
        }
    }
    Ok(resolved)
}

/// Every partition of `topic` read now, with transaction markers applied (partitions in
/// order, each in offset order).
pub fn read(bootstrap: &str, topic: &str) -> Result<Resolved, Error> {
    let mut connection = Connection::open(bootstrap)?;
    let mut all = Resolved::default();
    for partition in connection.partitions(topic)? {
        all.extend(resolve(&connection.batches(topic, partition)?)?);
    }
    Ok(all)
}

/// Reads `topic` (see [`read`]) until at least `count` committed records are visible or
/// `timeout` passes; returns the last reading either way, so a short one shows what is missing.
pub fn read_at_least(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Result<Resolved, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let resolved = read(bootstrap, topic)?;
        if resolved.records.len() >= count || Instant::now() >= deadline {
            return Ok(resolved);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One partition's Fetch answer.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The high watermark.
    pub high_watermark: i64,
    /// The last stable offset (the end of what read_committed may read).
    pub last_stable_offset: i64,
    /// The broker's list of aborted transactions, `(producer id, first offset)`, which a
    /// read_committed consumer relies on to drop their records.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    /// The complete batches in the answer.
    pub batches: Vec<Batch>,
}

/// Kafka's `isolation_level` in Fetch requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// 0: everything in the log, control batches included.
    ReadUncommitted = 0,
    /// 1: up to the last stable offset, with the aborted transactions listed.
    ReadCommitted = 1,
}

/// A blocking connection to one broker speaking the Kafka protocol.
#[derive(Debug)]
pub struct Connection {
    address: String,
    stream: TcpStream,
    correlation: i32,
    /// Highest version the broker takes, per API key.
    versions: HashMap<i16, i16>,
}

/// The versions used, when the broker takes them: Metadata 12 and Fetch 12 are the last
/// that name topics rather than topic ids.
const METADATA_VERSION: i16 = 12;
const FETCH_VERSION: i16 = 12;

impl Connection {
    /// Connects to the first address of `bootstrap` and asks which versions it speaks.
    pub fn open(bootstrap: &str) -> Result<Self, Error> {
        let address = bootstrap.split(',').next().unwrap_or_default().trim().to_owned();
        let io = |source| Error::Io { address: address.clone(), source };
        let stream = TcpStream::connect(&address).map_err(io)?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
        let mut connection = Self { address, stream, correlation: 0, versions: HashMap::new() };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("weir-e2e"))
            .with_client_software_version(StrBytes::from_static_str("0"));
        let response: ApiVersionsResponse = connection.call(ApiKey::ApiVersions, 3, &request)?;
        if response.error_code != 0 {
            return Err(Error::Broker { what: "ApiVersions".into(), code: response.error_code });
        }
        connection.versions = response.api_keys.iter().map(|k| (k.api_key, k.max_version)).collect();
        Ok(connection)
    }

    fn version(&self, key: ApiKey, wanted: i16) -> Result<i16, Error> {
        let version = self.versions.get(&(key as i16)).map_or(-1, |&max| max.min(wanted));
        if version < key.valid_versions().min {
            return Err(Error::Protocol {
                what: format!("{key:?}"),
                message: format!("the broker offers no version in {:?}", key.valid_versions()),
            });
        }
        Ok(version)
    }

    /// The partition ids of `topic`, sorted.
    pub fn partitions(&mut self, topic: &str) -> Result<Vec<i32>, Error> {
        let version = self.version(ApiKey::Metadata, METADATA_VERSION)?;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]))
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = self.call(ApiKey::Metadata, version, &request)?;
        let found = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
        let found = found.ok_or_else(|| Error::Log(format!("topic {topic} is not in the metadata")))?;
        if found.error_code != 0 {
            return Err(Error::Broker { what: format!("Metadata of {topic}"), code: found.error_code });
        }
        let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// One Fetch of `topic`/`partition` from `offset`.
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64, isolation: Isolation) -> Result<Fetched, Error> {
        let version = self.version(ApiKey::Fetch, FETCH_VERSION)?;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(4 << 20)
            .with_isolation_level(isolation as i8)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(4 << 20),
            ])]);
        let response: FetchResponse = self.call(ApiKey::Fetch, version, &request)?;
        let what = format!("Fetch of {topic}/{partition} at {offset}");
        if response.error_code != 0 {
            return Err(Error::Broker { what, code: response.error_code });
        }
        let data = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| Error::Log(format!("{what}: the answer has no such partition")))?;
        if data.error_code != 0 {
            return Err(Error::Broker { what, code: data.error_code });
        }
        let batches = split_batches(data.records.clone().unwrap_or_default())?;
        Ok(Fetched {
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            aborted_transactions: data
                .aborted_transactions
                .as_ref()
                .map(|list| list.iter().map(|a| (a.producer_id.0, a.first_offset)).collect()),
            batches: batches.into_iter().filter(|b| b.next_offset > offset).collect(),
        })
    }

    /// Every batch of `topic`/`partition` up to its high watermark, control batches included.
    pub fn batches(&mut self, topic: &str, partition: i32) -> Result<Vec<Batch>, Error> {
        let mut batches = Vec::new();
        let mut offset = 0;
        loop {
            let fetched = self.fetch(topic, partition, offset, Isolation::ReadUncommitted)?;
            if offset >= fetched.high_watermark {
                return Ok(batches);
            }
            let Some(last) = fetched.batches.last() else {
                return Err(Error::Log(format!(
                    "{topic}/{partition}: no batch at offset {offset}, below the high watermark {}",
                    fetched.high_watermark
                )));
            };
            offset = last.next_offset;
            batches.extend(fetched.batches);
        }
    }

    /// Sends one request and decodes its answer (the frame: a 4-byte length, header, body).
    fn call<Req: Encodable, Resp: Decodable>(&mut self, key: ApiKey, version: i16, body: &Req) -> Result<Resp, Error> {
        let codec = |what: &str| {
            let what = format!("{what} {key:?} v{version}");
            move |e: anyhow::Error| Error::Protocol { what, message: format!("{e:#}") }
        };
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("weir-e2e")));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header.encode(&mut frame, key.request_header_version(version)).map_err(codec("encoding the header of"))?;
        body.encode(&mut frame, version).map_err(codec("encoding"))?;
        let length = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let io = |source| Error::Io { address: self.address.clone(), source };
        self.stream.write_all(&frame).map_err(io)?;
        let mut length = [0; 4];
        self.stream.read_exact(&mut length).map_err(io)?;
        let mut answer = vec![0; u32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut answer).map_err(io)?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
            .map_err(codec("decoding the header of"))?;
        if header.correlation_id != self.correlation {
            return Err(Error::Protocol {
                what: format!("{key:?}"),
                message: format!("answer to request {} while waiting for {}", header.correlation_id, self.correlation),
            });
        }
        Resp::decode(&mut answer, version).map_err(codec("decoding"))
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// Splits a Fetch answer's record bytes into batches, leaving out a last one the broker cut
/// short (it may end mid-batch at the size limit).
fn split_batches(mut records: Bytes) -> Result<Vec<Batch>, Error> {
    let codec =
        |e: anyhow::Error| Error::Protocol { what: "decoding a record batch".into(), message: format!("{e:#}") };
    let mut batches = Vec::new();
    // A v2 batch: base offset (8 bytes), length (4), then `length` bytes, of which partition
    // leader epoch (4), magic (1), crc (4), attributes (2), last offset delta (4).
    while records.len() >= 12 {
        let length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let end = 12 + usize::try_from(length).map_err(|_| Error::Log(format!("batch length {length}")))?;
        if records.len() < end || end < 27 {
            break;
        }
        let mut raw = records.split_to(end);
        let base_offset = i64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
        let last_delta = i32::from_be_bytes(raw[23..27].try_into().unwrap_or_default());
        let info = RecordBatchDecoder::decode_batch_info(&mut raw.clone()).map_err(codec)?;
        let info = info.first().ok_or_else(|| Error::Log(format!("no batch header at offset {base_offset}")))?;
        let set = RecordBatchDecoder::decode(&mut raw).map_err(codec)?;
        let records = set
            .records
            .into_iter()
            .map(|r| {
                let received = Received {
                    key: r.key.map(|k| k.to_vec()),
                    payload: r.value.map(|v| v.to_vec()).unwrap_or_default(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (k.to_string(), String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned())
                        })
                        .collect(),
                    timestamp: Some(r.timestamp),
                };
                (r.offset, received)
            })
            .collect();
        batches.push(Batch {
            base_offset,
            next_offset: base_offset + i64::from(last_delta) + 1,
            producer_id: info.producer_id,
            producer_epoch: info.producer_epoch,
            transactional: info.transactional,
            control: info.control,
            records,
        });
    }
    // Anything left is a batch cut short; the next fetch starts at its offset.
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds batches at consecutive offsets.
    struct Log {
        batches: Vec<Batch>,
        next: i64,
    }

    impl Log {
        fn new() -> Self {
            Self { batches: Vec::new(), next: 0 }
        }

        fn push(mut self, producer_id: i64, transactional: bool, control: bool, keys: Vec<Vec<u8>>) -> Self {
            let base = self.next;
            let records: Vec<(i64, Received)> = keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| {
                    let payload = if control { Vec::new() } else { key.clone() };
                    let record = Received { key: Some(key), payload, headers: Vec::new(), timestamp: None };
                    (base + i as i64, record)
                })
                .collect();
            self.next += records.len() as i64;
            self.batches.push(Batch {
                base_offset: base,
                next_offset: self.next,
                producer_id,
                producer_epoch: 0,
                transactional,
                control,
                records,
            });
            self
        }

        fn plain(self, values: &[&str]) -> Self {
            self.push(-1, false, false, values.iter().map(|v| v.as_bytes().to_vec()).collect())
        }

        fn txn(self, producer: i64, values: &[&str]) -> Self {
            self.push(producer, true, false, values.iter().map(|v| v.as_bytes().to_vec()).collect())
        }

        fn marker(self, producer: i64, marker: Marker) -> Self {
            self.push(producer, true, true, vec![marker.key()])
        }

        fn shown(&self) -> Vec<String> {
            let resolved = resolve(&self.batches).unwrap();
            resolved.records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()
        }
    }

    #[test]
    fn plain_records_are_shown_as_they_come() {
        assert_eq!(Log::new().plain(&["a", "b"]).plain(&["c"]).shown(), ["a", "b", "c"]);
    }

    #[test]
    fn committed_records_are_shown_and_aborted_ones_dropped() {
        let log = Log::new()
            .txn(7, &["c1", "c2"])
            .marker(7, Marker::Commit)
            .txn(7, &["a1"])
            .marker(7, Marker::Abort)
            .txn(7, &["c3"])
            .marker(7, Marker::Commit);
        assert_eq!(log.shown(), ["c1", "c2", "c3"]);
        let resolved = resolve(&log.batches).unwrap();
        assert_eq!((resolved.aborted, resolved.open, resolved.commits, resolved.aborts), (1, 0, 2, 1));
    }

    #[test]
    fn a_transaction_without_a_marker_is_not_visible() {
        let log = Log::new().txn(7, &["c"]).marker(7, Marker::Commit).txn(7, &["open1", "open2"]);
        assert_eq!(log.shown(), ["c"]);
        assert_eq!(resolve(&log.batches).unwrap().open, 2);
    }

    #[test]
    fn a_transaction_spanning_batches_ends_at_its_producers_marker_only() {
        let log = Log::new()
            .txn(1, &["p1-a"])
            .txn(2, &["p2-a"])
            .plain(&["plain"])
            .txn(1, &["p1-b"])
            .marker(2, Marker::Abort)
            .txn(2, &["p2-b"])
            .marker(1, Marker::Commit)
            .marker(2, Marker::Commit);
        assert_eq!(log.shown(), ["p1-a", "plain", "p1-b", "p2-b"], "in offset order, p2's first transaction dropped");
    }

    #[test]
    fn a_marker_without_an_open_transaction_changes_nothing() {
        let log = Log::new().marker(3, Marker::Abort).plain(&["x"]).marker(3, Marker::Commit);
        assert_eq!(log.shown(), ["x"]);
    }

    #[test]
    fn control_record_keys_are_version_then_type() {
        assert_eq!(Marker::from_key(&[0, 0, 0, 0]).unwrap(), Marker::Abort);
        assert_eq!(Marker::from_key(&[0, 0, 0, 1]).unwrap(), Marker::Commit);
        assert!(Marker::from_key(&[0, 0, 0, 2]).is_err());
        assert!(Marker::from_key(&[0, 0]).is_err());
    }

    #[test]
    fn an_unknown_control_record_is_an_error_not_a_guess() {
        let log = Log::new().txn(1, &["x"]).push(1, true, true, vec![vec![0, 0, 0, 9]]);
        assert!(resolve(&log.batches).is_err());
    }

    #[test]
    fn a_batch_cut_short_at_the_end_is_left_for_the_next_fetch() {
        use kafka_protocol::records::{
            Compression, NO_PARTITION_LEADER_EPOCH, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = |offset: i64| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: 5,
            producer_epoch: 2,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(format!("v{offset}"))),
            headers: Default::default(),
        };
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        let mut bytes = BytesMut::new();
        RecordBatchEncoder::encode(&mut bytes, &[record(10), record(11)], &options).unwrap();
        let whole = bytes.len();
        RecordBatchEncoder::encode(&mut bytes, &[record(12)], &options).unwrap();
        // The first batch whole, and the second cut short.
        let cut = bytes.freeze().slice(..whole + 20);
        let batches = split_batches(cut).unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!((batch.base_offset, batch.next_offset, batch.producer_id), (10, 12, 5));
        assert!(batch.transactional && !batch.control);
        assert_eq!(batch.records.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [10, 11]);
        assert_eq!(batch.records[1].1.payload, b"v11");
    }
}

//! Dead letters: records the job cannot use (undecodable, rejected by a step, late, or a
//! failed batch), counted and, with `deadLetter.topic`, sent there with why and where from.

use arrow::{array::AsArray, datatypes::Int64Type, record_batch::RecordBatch};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::BaseRecord,
};
use tracing::warn;

use super::{RunError, kafka};
use crate::{
    codec::{self, Layout, RawRecord},
    engine::Rejected,
    kafka::clients::{DEAD_LETTER, Sink, send},
    metrics::Metrics,
};

/// Where a job's dead letters go: the producers of the consumed records' and of the window
/// stage's dead letters (exactly-once: the transactional producers whose transactions carry
/// the offsets or results they belong with), the topic, and the counters.
#[derive(Clone, Copy)]
pub(super) struct DeadLetters<'a> {
    /// `deadLetter.topic`; without it records are only counted.
    pub topic: Option<&'a str>,
    /// The job's source topic, named in every dead letter.
    pub source_topic: &'a str,
    /// The producer of consumed records' dead letters.
    pub source: Option<&'a Sink>,
    /// The producer of the window stage's dead letters.
    pub results: Option<&'a Sink>,
    /// `deadLetter.lateRecords`: late rows are sent, not only counted.
    pub late_records: bool,
    pub metrics: &'a Metrics,
}

impl DeadLetters<'_> {
    /// Counts and dead-letters the records that did not decode (`errors` from a decoder).
    pub(super) fn undecoded(&self, records: &[RawRecord<'_>], errors: &[(usize, String)]) -> Result<(), RunError> {
        let producer = self.source;
        for (index, reason) in errors {
            self.metrics.decode_errors.inc();
            let record = &records[*index];
            let payload = record.payload.unwrap_or_default();
            let reason = format!("decode: {reason}");
            self.send(producer, payload, &reason, record.partition, record.offset, record.key)?;
        }
        Ok(())
    }

    /// Counts and dead-letters, as they were consumed, the records a pipeline step could not
    /// evaluate (`rejected` rows, found in `records` by their source offset).
    pub(super) fn rejected(&self, records: &[RawRecord<'_>], rejected: &[Rejected]) -> Result<(), RunError> {
        if let Some(first) = rejected.first() {
            warn!(records = rejected.len(), reason = %first.reason, "a pipeline step failed on records; dead-lettering them");
        }
        let producer = self.source;
        for rejected in rejected {
            let Some(offsets) =
                rejected.rows.column_by_name(crate::engine::OFFSET).and_then(|c| c.as_primitive_opt::<Int64Type>())
            else {
                continue;
            };
            let reason = format!("pipeline: {}", rejected.reason);
            for &offset in offsets.values() {
                let Some(record) = records.iter().find(|r| r.offset == offset) else { continue };
                self.metrics.pipeline_errors.inc();
                let payload = record.payload.unwrap_or_default();
                self.send(producer, payload, &reason, record.partition, record.offset, record.key)?;
            }
        }
        Ok(())
    }

    /// Counts and dead-letters, as JSON, rows (window results, or rows read back from the
    /// internal topic) a pipeline step could not evaluate.
    pub(super) fn rejected_results(&self, rejected: &[Rejected], partition: i32) -> Result<(), RunError> {
        if let Some(first) = rejected.first() {
            warn!(partition, rows = rejected.len(), reason = %first.reason, "a pipeline step failed on rows; dead-lettering them");
        }
        for rejected in rejected {
            self.metrics.pipeline_errors.inc_by(rejected.rows.num_rows() as u64);
            self.rows(&rejected.rows, &format!("pipeline: {}", rejected.reason), partition)?;
        }
        Ok(())
    }

    /// Counts late rows and dead-letters them when the job asks for it.
    pub(super) fn late(&self, late: &RecordBatch, partition: i32) -> Result<(), RunError> {
        self.metrics.records_late.inc_by(late.num_rows() as u64);
        if self.late_records {
            self.rows(late, "late: behind the watermark, after its window closed or its key was forgotten", partition)?;
        }
        Ok(())
    }

    /// What the pipeline fails on as a whole (not a record's fault) is treated like
    /// undecodable input, not as a crash: the batch's records are dead-lettered.
    pub(super) fn failed_batch(
        &self,
        records: &[RawRecord<'_>],
        error: &dyn std::fmt::Display,
    ) -> Result<(), RunError> {
        let partition = records.first().map_or(-1, |r| r.partition);
        warn!(partition, %error, "pipeline failed on a batch; dead-lettering it");
        self.metrics.decode_errors.inc_by(records.len() as u64);
        let reason = format!("pipeline: {error}");
        let producer = self.source;
        for record in records {
            let payload = record.payload.unwrap_or_default();
            self.send(producer, payload, &reason, record.partition, record.offset, record.key)?;
        }
        Ok(())
    }

    /// Sends a record the job cannot use to the dead-letter topic, with why and where from.
    pub(super) fn send(
        &self,
        producer: Option<&Sink>,
        payload: &[u8],
        reason: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
    ) -> Result<(), RunError> {
        let (Some(producer), Some(topic)) = (producer, self.topic) else {
            return Ok(());
        };
        let partition = partition.to_string();
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "weir.error", value: Some(reason) })
            .insert(Header { key: "weir.source.topic", value: Some(self.source_topic) })
            .insert(Header { key: "weir.source.partition", value: Some(&partition) })
            .insert(Header { key: "weir.source.offset", value: Some(&offset) });
        let mut base = BaseRecord::with_opaque_to(topic, DEAD_LETTER).payload(payload).headers(headers);
        if let Some(key) = key {
            base = base.key(key);
        }
        send(producer, base).map_err(kafka("producing"))?;
        self.metrics.records_dead_lettered.inc();
        Ok(())
    }

    /// Dead-letters processed rows (late records, window results) as JSON, with their
    /// source offsets.
    pub(super) fn rows(&self, rows: &RecordBatch, reason: &str, partition: i32) -> Result<(), RunError> {
        let offsets = [crate::engine::UPSTREAM_OFFSET, crate::engine::OFFSET]
            .into_iter()
            .find_map(|name| rows.column_by_name(name).and_then(|c| c.as_primitive_opt::<Int64Type>()));
        for (row, encoded) in codec::encode_json(rows, Layout::default())?.into_iter().enumerate() {
            let offset = offsets.map_or(-1, |o| o.value(row));
            self.send(self.results, &encoded.payload, reason, partition, offset, None)?;
        }
        Ok(())
    }
}

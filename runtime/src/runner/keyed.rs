//! The keyed stage of a repartitioned job: consumes the internal topic the front writes,
//! drops rows it has applied already (a front that crashed sends them again), runs the
//! window and what follows it, and closes windows on the lowest watermark of the source
//! partitions, as the front's watermark records report them.

use std::time::Instant;

use arrow::array::RecordBatch;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tracing::warn;

use super::{Job, RunError, front::Front, shared::lock};
use crate::repartition::{self, KIND_HEADER, Marks, ROWS, UPSTREAM_HEADER, WATERMARKS, WireError};

/// A record of the internal topic.
enum Internal {
    /// Rows from source partition `upstream`.
    Rows { upstream: i32, batch: RecordBatch },
    /// Source partitions' watermarks.
    Marks(Marks),
}

fn header<'a>(message: &'a BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

fn read(message: &BorrowedMessage<'_>) -> Result<Internal, WireError> {
    let payload = message.payload().unwrap_or_default();
    match header(message, KIND_HEADER) {
        Some(ROWS) => {
            let upstream = header(message, UPSTREAM_HEADER)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| WireError::Kind(Some(format!("{ROWS} without {UPSTREAM_HEADER}"))))?;
            Ok(Internal::Rows { upstream, batch: repartition::decode_rows(payload, message.offset())? })
        }
        Some(WATERMARKS) => Ok(Internal::Marks(repartition::decode_marks(payload)?)),
        other => Err(WireError::Kind(other.map(str::to_owned))),
    }
}

impl Job {
    /// Runs a batch of internal records through the keyed stage, in offset order per
    /// internal partition.
    pub(super) fn process_keyed(&self, front: &Front, messages: &[BorrowedMessage<'_>]) -> Result<(), RunError> {
        let metrics = &self.shared.metrics;
        // One span for the internal records of all partitions: rows carry no trace context here.
        let span = self.settings.spans.as_ref().map(|s| s.process(&self.topic, None, messages.len(), []));
        let mut table = lock(&self.table);
        let mut outputs = Vec::new();
        for message in messages {
            let partition = message.partition();
            let Some(run) = table.partitions.get_mut(&partition) else { continue };
            // Fetched before a seek to the partition's checkpoint: already in its state.
            if message.offset() < run.position {
                continue;
            }
            run.position = message.offset() + 1;
            match read(message) {
                Ok(Internal::Rows { upstream, batch }) => {
                    let batch = run.unseen(upstream, batch)?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    match run.pipeline.process(batch.clone(), Instant::now()) {
                        Ok(processed) => {
                            self.shared.metrics.records_deduplicated.inc_by(processed.duplicates as u64);
                            outputs.extend(processed.output);
                            self.dead_letters().rejected_results(&processed.rejected, upstream)?;
                            self.dead_letters().rejected_results(&processed.rejected_results, upstream)?;
                            if let Some(late) = processed.late {
                                self.dead_letters().late(&late, upstream)?;
                            }
                        }
                        Err(e) => {
                            warn!(partition, upstream, error = %e, "pipeline failed on a batch; dead-lettering it");
                            metrics.decode_errors.inc_by(batch.num_rows() as u64);
                            self.dead_letters().rows(&batch, &format!("pipeline: {e}"), upstream)?;
                        }
                    }
                }
                Ok(Internal::Marks(marks)) => {
                    repartition::merge(&mut run.marks, &marks);
                    if let Some(watermark) = repartition::combined(&run.marks, front.source_partitions) {
                        let closed = run.pipeline.advance_watermark(watermark)?;
                        outputs.extend(closed.output);
                        self.dead_letters().rejected_results(&closed.rejected, partition)?;
                    }
                }
                Err(e) => {
                    // Not written by a front of this job (or by a newer runtime): skip it.
                    metrics.decode_errors.inc();
                    warn!(partition, offset = message.offset(), error = %e, "unreadable record in the internal topic");
                }
            }
        }
        drop(table);
        self.produce_from(&outputs, span.as_ref().map(opentelemetry::trace::Span::span_context))
    }
}

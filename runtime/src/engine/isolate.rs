//! Finding the rows a step cannot evaluate, so that they alone are rejected.
//!
//! A step runs on whole batches; when it fails on one, the batch is halved and each half
//! tried in order, down to single rows. The rows that fail alone are rejected with their
//! reason and the rest go on, in their order. A clean batch costs one call; a batch with one
//! bad row costs about twice the batch's log₂ in calls. The step must change nothing when it
//! fails, so that retrying a part of the batch is safe.

use arrow::record_batch::RecordBatch;

/// Rows a step could not evaluate, with why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The rows (one, unless a batch of one row was given).
    pub rows: RecordBatch,
    /// The step's error.
    pub reason: String,
}

/// What a step made of the parts of a batch it could evaluate, in their order, and the rows
/// it could not.
#[derive(Debug)]
pub struct Isolated<T> {
    /// One result per part that went through.
    pub done: Vec<T>,
    /// The rows that failed alone.
    pub rejected: Vec<Rejected>,
}

/// Runs `step` on `batch`, isolating the rows it fails on (see the module doc).
pub fn isolate<T, E: std::fmt::Display>(
    batch: RecordBatch,
    mut step: impl FnMut(RecordBatch) -> Result<T, E>,
) -> Isolated<T> {
    let mut out = Isolated { done: Vec::new(), rejected: Vec::new() };
    // A stack of parts still to run, the next one on top.
    let mut pending = vec![batch];
    while let Some(part) = pending.pop() {
        match step(part.clone()) {
            Ok(result) => out.done.push(result),
            Err(e) if part.num_rows() <= 1 => out.rejected.push(Rejected { rows: part, reason: e.to_string() }),
            Err(_) => {
                let half = part.num_rows() / 2;
                pending.push(part.slice(half, part.num_rows() - half));
                pending.push(part.slice(0, half));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn batch(values: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(values.to_vec())) as ArrayRef)]).unwrap()
    }

    fn values(batch: &RecordBatch) -> Vec<i64> {
        batch.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    /// A step that fails on any batch holding a negative value, recording what it saw.
    fn run(input: &[i64]) -> (Isolated<Vec<i64>>, usize) {
        let mut calls = 0;
        let isolated = isolate(batch(input), |b| {
            calls += 1;
            let v = values(&b);
            if v.iter().any(|&x| x < 0) { Err(format!("negative in {v:?}")) } else { Ok(v) }
        });
        (isolated, calls)
    }

    #[test]
    fn a_clean_batch_runs_once_whole() {
        let (isolated, calls) = run(&[1, 2, 3]);
        assert_eq!(calls, 1);
        assert_eq!(isolated.done, [vec![1, 2, 3]]);
        assert!(isolated.rejected.is_empty());
    }

    #[test]
    fn only_the_rows_that_fail_alone_are_rejected_and_the_rest_keep_their_order() {
        let input: Vec<i64> = (0..100).map(|i| if i == 0 || i == 57 || i == 99 { -i - 1 } else { i }).collect();
        let (isolated, calls) = run(&input);
        let kept: Vec<i64> = isolated.done.concat();
        let expected: Vec<i64> = input.iter().copied().filter(|&x| x >= 0).collect();
        assert_eq!(kept, expected);
        let rejected: Vec<i64> = isolated.rejected.iter().flat_map(|r| values(&r.rows)).collect();
        assert_eq!(rejected, [-1, -58, -100]);
        assert_eq!(isolated.rejected[1].reason, "negative in [-58]");
        assert!(calls < 60, "bisection, not row by row: {calls} calls");
    }

    #[test]
    fn a_batch_of_bad_rows_rejects_each_of_them() {
        let (isolated, _) = run(&[-1, -2]);
        assert!(isolated.done.is_empty());
        assert_eq!(isolated.rejected.len(), 2);
    }

    #[test]
    fn an_empty_batch_that_fails_is_rejected_as_it_is() {
        let isolated = isolate(batch(&[]), |_| Err::<(), _>("no"));
        assert_eq!(isolated.rejected.len(), 1);
        assert_eq!(isolated.rejected[0].rows.num_rows(), 0);
    }
}

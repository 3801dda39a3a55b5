//! The event-time progress of one partition: the watermark.

use std::time::{Duration, Instant};

use super::Plan;

/// The event-time progress of one partition.
#[derive(Debug, Clone)]
pub struct Watermark {
    max_event_time: Option<i64>,
    out_of_orderness: i64,
    idle_timeout: Duration,
    last_activity: Instant,
}

impl Watermark {
    pub(super) fn new(plan: &Plan, max_event_time: Option<i64>, now: Instant) -> Self {
        Self {
            max_event_time,
            out_of_orderness: plan.out_of_orderness,
            idle_timeout: plan.idle_timeout,
            last_activity: now,
        }
    }

    /// Records with event time before this are late; windows ending at or before it close.
    pub fn current(&self) -> i64 {
        self.max_event_time.map_or(i64::MIN, |t| t.saturating_sub(self.out_of_orderness))
    }

    /// The newest event time seen (or assumed while idle).
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    /// Takes in the newest event time of a batch of the partition's records.
    pub fn observe(&mut self, newest: i64, now: Instant) {
        self.max_event_time = Some(self.max_event_time.map_or(newest, |t| t.max(newest)));
        self.last_activity = now;
    }

    /// After `idle_timeout` without records, event time is assumed to move with the clock,
    /// so the partition's last windows close. Returns whether the watermark moved.
    pub fn advance_if_idle(&mut self, now: Instant) -> bool {
        let idle_for = now.saturating_duration_since(self.last_activity);
        let Some(max) = self.max_event_time else { return false };
        if idle_for < self.idle_timeout {
            return false;
        }
        let elapsed = i64::try_from(idle_for.as_millis()).unwrap_or(i64::MAX);
        self.max_event_time = Some(max.saturating_add(elapsed));
        self.last_activity = now;
        true
    }

    /// Whether nothing has been seen for `idle_timeout`: a source partition without
    /// records must not hold back the watermark of what it feeds.
    pub fn is_idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_activity) >= self.idle_timeout
    }

    /// Moves the watermark forward to `watermark` (never back).
    pub(super) fn advance_to(&mut self, watermark: i64) -> bool {
        if watermark <= self.current() {
            return false;
        }
        self.max_event_time = Some(watermark.saturating_add(self.out_of_orderness));
        true
    }
}

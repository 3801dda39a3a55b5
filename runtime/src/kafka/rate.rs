//! `maxRecordsPerSecond`: a token bucket (governor's GCRA) in front of the source. Its burst
//! is a tenth of a second's records, so the rate holds over short spans too.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};

/// Limits how many records the source reads per second.
#[derive(Debug)]
pub struct RecordRate {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    burst: NonZeroU32,
    clock: DefaultClock,
}

impl RecordRate {
    /// A limit of `per_second` records.
    pub fn new(per_second: NonZeroU32) -> Self {
        let burst = NonZeroU32::new(per_second.get() / 10).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self { limiter: RateLimiter::direct_with_clock(quota, clock.clone()), burst, clock }
    }

    /// The largest batch one [`RecordRate::acquire`] can grant.
    pub fn max_batch(&self) -> usize {
        self.burst.get() as usize
    }

    /// How long to wait before `records` more may be read; taken from the bucket once
    /// this returns zero. `records` above [`RecordRate::max_batch`] are capped to it.
    pub fn wait(&self, records: usize) -> Duration {
        let n = u32::try_from(records.min(self.max_batch())).ok().and_then(NonZeroU32::new);
        let Some(n) = n else { return Duration::ZERO };
        match self.limiter.check_n(n) {
            Ok(Ok(())) | Err(_) => Duration::ZERO,
            Ok(Err(not_until)) => not_until.wait_time_from(self.clock.now()),
        }
    }

    /// Blocks until `records` may be read.
    pub fn acquire(&self, records: usize) {
        loop {
            let wait = self.wait(records);
            if wait.is_zero() {
                return;
            }
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_a_tenth_of_the_rate_and_at_least_one() {
        assert_eq!(RecordRate::new(NonZeroU32::new(1000).unwrap()).max_batch(), 100);
        assert_eq!(RecordRate::new(NonZeroU32::new(5).unwrap()).max_batch(), 1);
    }

    #[test]
    fn a_spent_bucket_makes_the_reader_wait() {
        let rate = RecordRate::new(NonZeroU32::new(100).unwrap());
        assert_eq!(rate.wait(10), Duration::ZERO, "a full bucket grants a burst");
        let wait = rate.wait(10);
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
    }
}

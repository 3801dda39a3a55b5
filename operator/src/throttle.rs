//! How many StreamJobs are reconciled at once, adapted to how fast the API server answers.
//!
//! A reconcile mostly waits on the API server. Once the server is saturated (thousands of
//! jobs applied at once to a small control plane), more reconciles at once do not finish
//! more work: their requests only queue inside the server, where they also slow every other
//! client (kubectl, the kubelet, other controllers). So, like TCP's congestion window, the
//! operator starts with a few reconciles at once, adds one while the server answers quickly,
//! and backs off when its answers slow down. On a control plane that keeps up, the limit
//! climbs to `--concurrency`. A reconcile talking to its pods (a savepoint, a lag scrape,
//! partition assignment) lends its slot to another meanwhile ([`Throttle::aside`]).

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

/// API answers that make one decision.
const WINDOW: usize = 20;

/// The pure part: the limit, from the answer times of the API server.
#[derive(Clone, Debug)]
pub struct Limiter {
    limit: usize,
    min: usize,
    max: usize,
    target: Duration,
    window: Vec<Duration>,
}

impl Limiter {
    /// Starts at `min` reconciles at once and stays within `min..=max`; keeps nine in ten
    /// answers of the API server within `target`.
    pub fn new(min: usize, max: usize, target: Duration) -> Self {
        let min = min.clamp(1, max.max(1));
        Self { limit: min, min, max: max.max(min), target, window: Vec::with_capacity(WINDOW) }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes the answer time of one request. After [`WINDOW`] answers, the limit goes up
    /// by one when nine in ten of them were within the target, else down by a quarter (at
    /// least one); returns the limit when it changed.
    pub fn answered(&mut self, took: Duration) -> Option<usize> {
        self.window.push(took);
        if self.window.len() < WINDOW {
            return None;
        }
        self.window.sort_unstable();
        let p90 = self.window[WINDOW * 9 / 10 - 1];
        self.window.clear();
        let next = if p90 <= self.target {
            (self.limit + 1).min(self.max)
        } else {
            (self.limit - (self.limit / 4).max(1)).max(self.min)
        };
        (next != self.limit).then(|| {
            self.limit = next;
            next
        })
    }
}

/// Slots for reconciles, as many as the [`Limiter`] allows.
#[derive(Debug)]
pub struct Throttle {
    limiter: Mutex<Limiter>,
    limit: AtomicUsize,
    busy: AtomicUsize,
    freed: Notify,
}

/// A reconcile's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    throttle: &'a Throttle,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.throttle.busy.fetch_sub(1, Ordering::AcqRel);
        self.throttle.freed.notify_one();
    }
}

impl Throttle {
    /// A throttle led by `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        let limit = AtomicUsize::new(limiter.limit());
        Self { limiter: Mutex::new(limiter), limit, busy: AtomicUsize::new(0), freed: Notify::new() }
    }

    /// Reconciles allowed at once now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Waits for a free slot.
    pub async fn slot(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let busy = self.busy.load(Ordering::Acquire);
            if busy >= self.limit() {
                freed.await;
            } else if self.busy.compare_exchange(busy, busy + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Slot { throttle: self };
            }
        }
    }

    /// Runs `work` (a wait on pods, not on the API server: a savepoint, a lag scrape) with
    /// the caller's slot given to another reconcile meanwhile. The caller takes it back at
    /// once after, even past the limit for a moment: its pods may be waiting on it (stopped
    /// by a savepoint). Only a holder of a [`Slot`] may call this.
    pub async fn aside<T>(&self, work: impl Future<Output = T>) -> T {
        /// Counts the caller's slot busy again when `work` ends, or is dropped half-way.
        struct Rejoin<'a>(&'a Throttle);
        impl Drop for Rejoin<'_> {
            fn drop(&mut self) {
                self.0.busy.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
        let _rejoin = Rejoin(self);
        work.await
    }

    /// Takes the answer time of one API request (watches excluded).
    pub fn answered(&self, took: Duration) {
        let Ok(mut limiter) = self.limiter.lock() else { return };
        if let Some(limit) = limiter.answered(took) {
            let before = self.limit.swap(limit, Ordering::AcqRel);
            for _ in before..limit {
                self.freed.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(50);

    fn feed(limiter: &mut Limiter, took: Duration) -> Option<usize> {
        (0..WINDOW).filter_map(|_| limiter.answered(took)).last()
    }

    #[test]
    fn quick_answers_add_one_reconcile_per_window_up_to_the_max() {
        let mut limiter = Limiter::new(2, 4, TARGET);
        assert_eq!(limiter.limit(), 2, "starts low");
        assert_eq!(feed(&mut limiter, Duration::from_millis(10)), Some(3));
        assert_eq!(feed(&mut limiter, Duration::from_millis(10)), Some(4));
        assert_eq!(feed(&mut limiter, Duration::from_millis(10)), None, "capped");
        assert_eq!(limiter.limit(), 4);
    }

    #[test]
    fn slow_answers_take_a_quarter_off_down_to_the_min() {
        let mut limiter = Limiter::new(2, 16, TARGET);
        for _ in 0..14 {
            feed(&mut limiter, Duration::from_millis(5));
        }
        assert_eq!(limiter.limit(), 16);
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(12));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(9));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(7));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(6));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(5));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(4));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(3));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), Some(2));
        assert_eq!(feed(&mut limiter, Duration::from_millis(80)), None, "floored");
    }

    /// One window of answers, `slow` of them past the target.
    fn window_with_slow(limiter: &mut Limiter, slow: usize) -> Option<usize> {
        (0..WINDOW)
            .filter_map(|i| {
                let took = if i < slow { Duration::from_secs(2) } else { Duration::from_millis(5) };
                limiter.answered(took)
            })
            .last()
    }

    #[test]
    fn the_ninetieth_percentile_decides() {
        let mut limiter = Limiter::new(2, 8, TARGET);
        assert_eq!(window_with_slow(&mut limiter, WINDOW / 10), Some(3), "one in ten slow is fine");
        assert_eq!(window_with_slow(&mut limiter, WINDOW / 10 + 1), Some(2), "more are not");
    }

    #[tokio::test]
    async fn slots_wait_for_the_limit_and_a_raised_limit_frees_them() {
        let throttle = Throttle::new(Limiter::new(1, 2, TARGET));
        let first = throttle.slot().await;
        let second = throttle.slot();
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending(), "one at once");
        for _ in 0..WINDOW {
            throttle.answered(Duration::from_millis(1));
        }
        assert_eq!(throttle.limit(), 2);
        let _second = tokio::time::timeout(Duration::from_secs(5), second).await.expect("a raised limit frees a slot");
        let third = throttle.slot();
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending(), "two at once");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), third).await.expect("a slot given back is taken");
    }

    #[tokio::test]
    async fn a_wait_on_pods_lends_the_slot_to_another_reconcile_meanwhile() {
        let throttle = Throttle::new(Limiter::new(1, 1, TARGET));
        let slot = throttle.slot().await;
        let (done, finish) = tokio::sync::oneshot::channel::<()>();
        let aside = throttle.aside(async {
            let _ = finish.await;
        });
        tokio::pin!(aside);
        assert!(futures::poll!(aside.as_mut()).is_pending());
        let other = tokio::time::timeout(Duration::from_secs(5), throttle.slot()).await.expect("the slot is lent");
        done.send(()).unwrap();
        assert!(futures::poll!(aside.as_mut()).is_ready(), "takes its slot back at once");
        assert_eq!(throttle.busy.load(Ordering::Acquire), 2, "past the limit for a moment");
        let next = throttle.slot();
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending(), "no slot until the count is under the limit");
        drop(other);
        assert!(futures::poll!(next.as_mut()).is_pending(), "still one busy");
        drop(slot);
        tokio::time::timeout(Duration::from_secs(5), next).await.expect("free again");
    }

    #[tokio::test]
    async fn a_wait_dropped_half_way_leaves_the_count_balanced() {
        let throttle = Throttle::new(Limiter::new(1, 1, TARGET));
        let slot = throttle.slot().await;
        let mut aside = Box::pin(throttle.aside(std::future::pending::<()>()));
        assert!(futures::poll!(aside.as_mut()).is_pending());
        drop(aside);
        drop(slot);
        assert_eq!(throttle.busy.load(Ordering::Acquire), 0);
    }
}

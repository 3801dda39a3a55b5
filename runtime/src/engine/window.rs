//! Event-time window assignment. Times are epoch milliseconds; windows are `[start, end)`.

use weir_crds::Window;

/// How records are assigned to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed windows of `size`, aligned to the epoch.
    Tumbling {
        /// Window length in ms.
        size: i64,
    },
    /// Windows of `size` starting every `slide`, aligned to the epoch.
    Sliding {
        /// Window length in ms.
        size: i64,
        /// Distance between window starts in ms.
        slide: i64,
    },
    /// Per-key windows that close after `gap` without records.
    Session {
        /// Inactivity gap in ms.
        gap: i64,
    },
}

fn millis(d: &weir_crds::Duration) -> i64 {
    i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX)
}

impl From<&Window> for WindowKind {
    fn from(window: &Window) -> Self {
        match window {
            Window::Tumbling(w) => Self::Tumbling { size: millis(&w.size).max(1) },
            Window::Sliding(w) => Self::Sliding { size: millis(&w.size).max(1), slide: millis(&w.slide).max(1) },
            Window::Session(w) => Self::Session { gap: millis(&w.gap).max(1) },
        }
    }
}

impl WindowKind {
    /// Calls `f(start)` for each fixed window containing `ts` whose end is after `watermark`
    /// (windows ending at or before the watermark have already closed), and returns how many
    /// windows it called `f` for. Not for session windows.
    #[inline]
    pub fn open_windows(self, ts: i64, watermark: i64, mut f: impl FnMut(i64)) -> usize {
        match self {
            Self::Tumbling { size } => {
                let start = ts - ts.rem_euclid(size);
                if start + size > watermark {
                    f(start);
                    1
                } else {
                    0
                }
            }
            Self::Sliding { size, slide } => {
                let last_start = ts - ts.rem_euclid(slide);
                let mut start = last_start;
                let mut count = 0;
                while start > ts - size {
                    if start + size > watermark {
                        f(start);
                        count += 1;
                    }
                    start -= slide;
                }
                count
            }
            Self::Session { .. } => 0,
        }
    }

    /// The end of the fixed window starting at `start`.
    pub fn end_of(self, start: i64) -> i64 {
        match self {
            Self::Tumbling { size } | Self::Sliding { size, .. } => start + size,
            Self::Session { gap } => start + gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(kind: WindowKind, ts: i64, watermark: i64) -> Vec<i64> {
        let mut out = Vec::new();
        kind.open_windows(ts, watermark, |s| out.push(s));
        out.sort();
        out
    }

    #[test]
    fn a_tumbling_window_is_aligned_to_the_epoch() {
        let kind = WindowKind::Tumbling { size: 60_000 };
        assert_eq!(starts(kind, 125_000, i64::MIN), [120_000]);
        assert_eq!(starts(kind, 120_000, i64::MIN), [120_000], "the start belongs to the window");
        assert_eq!(starts(kind, 179_999, i64::MIN), [120_000], "the end does not");
    }

    #[test]
    fn negative_times_fall_in_the_window_before_the_epoch() {
        assert_eq!(starts(WindowKind::Tumbling { size: 1000 }, -1, i64::MIN), [-1000]);
    }

    #[test]
    fn a_sliding_record_belongs_to_size_over_slide_windows() {
        let kind = WindowKind::Sliding { size: 300_000, slide: 60_000 };
        assert_eq!(starts(kind, 125_000, i64::MIN), [-120_000, -60_000, 0, 60_000, 120_000]);
    }

    #[test]
    fn closed_windows_are_not_assigned() {
        let kind = WindowKind::Sliding { size: 300_000, slide: 60_000 };
        // Windows ending at or before the watermark (180s) are closed: the ones starting at
        // -120s (ends 180s) and earlier.
        assert_eq!(starts(kind, 125_000, 180_000), [-60_000, 0, 60_000, 120_000]);
        assert_eq!(starts(WindowKind::Tumbling { size: 60_000 }, 125_000, 180_000), Vec::<i64>::new());
    }

    #[test]
    fn the_count_of_windows_is_returned() {
        let kind = WindowKind::Sliding { size: 10, slide: 5 };
        assert_eq!(kind.open_windows(7, i64::MIN, |_| {}), 2);
        assert_eq!(WindowKind::Tumbling { size: 10 }.open_windows(7, 10, |_| {}), 0);
    }
}

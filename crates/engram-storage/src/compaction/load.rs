//! The node's load as the background workers see it: the rate of changes over about the
//! last second, behind the merge and index deferrals.

use std::collections::VecDeque;
use std::time::Duration;

/// The node's rate of changes over about the last second, sampled once a tick: the load
/// measure of the merge and index deferrals. The window is a second, not a tick, so that one
/// slow fsync (no change for a few ticks) does not read as an idle node. Times are the
/// store clock's monotonic ones ([`crate::Clock::monotonic`]), given by the caller.
pub(crate) struct LoadMeter {
    /// (change counter, when), oldest first; never empty.
    samples: VecDeque<(u64, Duration)>,
    /// The last rate measured: what a sample taken with no time passed reads.
    last: f64,
}

impl LoadMeter {
    /// A meter whose window starts with `changes` at `now` (when its worker starts).
    pub(crate) fn new(changes: u64, now: Duration) -> Self {
        Self {
            samples: VecDeque::from([(changes, now)]),
            last: 0.0,
        }
    }

    /// Records the change counter at `now`; returns changes per second since the oldest
    /// sample of the window. With no time passed since the last sample, the last rate.
    pub(crate) fn rate(&mut self, changes: u64, now: Duration) -> f64 {
        if self.samples.back().is_some_and(|&(_, t)| now <= t) {
            return self.last;
        }
        self.samples.push_back((changes, now));
        while self.samples.len() > 2 && now - self.samples[1].1 >= Duration::from_secs(1) {
            self.samples.pop_front();
        }
        let (c0, t0) = self.samples[0];
        self.last = changes.saturating_sub(c0) as f64 / (now - t0).as_secs_f64();
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::LoadMeter;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_tick_does_not_read_as_idle() {
        let mut m = LoadMeter::new(0, Duration::ZERO);
        assert_eq!(m.rate(100, 10 * MS), 10_000.0);
        // No change for a while: still 100 changes over the window, not 0.
        assert_eq!(m.rate(100, 40 * MS), 2_500.0);
        // No time passed: the last rate.
        assert_eq!(m.rate(200, 40 * MS), 2_500.0);
    }

    #[test]
    fn the_window_is_about_a_second() {
        let mut m = LoadMeter::new(0, Duration::ZERO);
        for i in 1..=30u32 {
            m.rate(u64::from(i) * 100, i * 100 * MS);
        }
        // 100 changes every 100 ms, over the last second or so.
        assert_eq!(m.rate(3_100, 3_100 * MS), 1_000.0);
        // Quiet for two seconds: the window holds only the last sample before them.
        assert_eq!(m.rate(3_100, 5_100 * MS), 0.0);
    }
}

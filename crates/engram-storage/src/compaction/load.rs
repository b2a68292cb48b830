//! The node's load as the background workers see it: the rate of changes over about the
//! last second, behind the merge and index deferrals.

use std::time::{Duration, Instant};

/// The node's rate of changes over about the last second, sampled once a tick: the load
/// measure of the merge and index deferrals. The window is a second, not a tick, so that one
/// slow fsync (no change for a few ticks) does not read as an idle node.
#[derive(Default)]
pub(crate) struct LoadMeter {
    samples: std::collections::VecDeque<(u64, Instant)>,
}

impl LoadMeter {
    /// Records the change counter now; returns changes per second since the oldest sample of
    /// the window (0 at the first call).
    pub(crate) fn rate(&mut self, changes: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((changes, now));
        while self.samples.len() > 2
            && now.duration_since(self.samples[1].1) >= Duration::from_secs(1)
        {
            self.samples.pop_front();
        }
        let (c0, t0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        changes.saturating_sub(c0) as f64 / dt
    }
}

#[cfg(test)]
mod tests {
    use super::LoadMeter;
    use std::time::Duration;

    #[test]
    fn a_quiet_tick_does_not_read_as_idle() {
        let mut m = LoadMeter::default();
        assert_eq!(m.rate(0), 0.0);
        std::thread::sleep(Duration::from_millis(10));
        assert!(m.rate(100) > 1000.0);
        // No change for a while: still ~100 changes over the window, not 0.
        std::thread::sleep(Duration::from_millis(30));
        let r = m.rate(100);
        assert!(r > 100.0 && r < 10_000.0, "{r}");
    }
}

//! The time behind the storage engine, as TigerBeetle's `time.zig` keeps it: [`RealClock`] is
//! the machine's; tests use [`ManualClock`], which moves only when told, so that no decision
//! (is the node busy, has a deferral expired, is the WAL idle) depends on the machine's speed.
//!
//! Two kinds of time, never mixed:
//! - *monotonic* ([`Clock::monotonic`]): never goes back; for durations, deferrals and
//!   idleness;
//! - *realtime* ([`Clock::realtime_us`]): microseconds since the Unix epoch; for timestamps
//!   stored in records (it may jump when the machine's clock is set).
//!
//! Not behind the clock: the pacing of background segment writes ([`crate::segment::WritePace`]
//! sleeps to leave the device room, which is about real bandwidth), and timings kept only for
//! figures in logs and benchmarks.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the storage engine (and the engine above it) reads the time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time since an origin fixed for this clock; never goes back.
    fn monotonic(&self) -> Duration;
    /// Microseconds since the Unix epoch: a timestamp to store.
    fn realtime_us(&self) -> i64;
}

/// Microseconds since the Unix epoch on the machine's clock (0 before 1970).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The machine's clocks: monotonic from when this value was made.
#[derive(Debug, Clone, Copy)]
pub struct RealClock {
    origin: Instant,
}

impl Default for RealClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for RealClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn realtime_us(&self) -> i64 {
        now_us()
    }
}

/// A clock that moves only when told ([`ManualClock::advance`]), for tests. Both times move
/// together; the realtime starts at a fixed date.
#[derive(Debug)]
pub struct ManualClock {
    monotonic_ns: AtomicU64,
    realtime_us: AtomicI64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// 2026-01-01T00:00:00Z, the realtime a manual clock starts at.
    pub const START_REALTIME_US: i64 = 1_767_225_600_000_000;

    /// A clock at monotonic zero and [`ManualClock::START_REALTIME_US`].
    pub fn new() -> Self {
        Self {
            monotonic_ns: AtomicU64::new(0),
            realtime_us: AtomicI64::new(Self::START_REALTIME_US),
        }
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).expect("a manual clock advances by under 584 years");
        self.monotonic_ns.fetch_add(ns, Ordering::SeqCst);
        self.realtime_us
            .fetch_add((ns / 1_000) as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.monotonic_ns.load(Ordering::SeqCst))
    }

    fn realtime_us(&self) -> i64 {
        self.realtime_us.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, ManualClock, RealClock};
    use std::time::Duration;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        assert_eq!(c.monotonic(), Duration::ZERO);
        assert_eq!(c.realtime_us(), ManualClock::START_REALTIME_US);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.monotonic(), Duration::from_millis(1500));
        assert_eq!(c.realtime_us(), ManualClock::START_REALTIME_US + 1_500_000);
    }

    #[test]
    fn the_real_clock_never_goes_back() {
        let c = RealClock::default();
        let a = c.monotonic();
        assert!(c.monotonic() >= a);
        assert!(c.realtime_us() > ManualClock::START_REALTIME_US - 365 * 86_400_000_000);
    }
}

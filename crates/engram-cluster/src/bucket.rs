//! A token bucket that limits bytes per second, on a clock the caller passes in.

use std::time::Duration;

use crate::error::ClusterError;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The default rate of throttled (non-critical) moves: 10 MB/s.
pub const DEFAULT_RATE_BYTES_PER_SEC: u64 = 10_000_000;

/// Limits a byte rate. The bucket holds up to `burst` bytes and refills at `rate` bytes per
/// second. A transfer of `n` bytes may start once the bucket holds `min(n, burst)` bytes; it then
/// takes all `n` (the level may go below zero, a debt repaid before the next start), so a space
/// larger than the burst still moves, and over any interval the bytes started never exceed
/// `burst + rate * interval`.
///
/// Time is a [`Duration`] since any fixed origin, passed by the caller: the bucket reads no
/// clock, so tests and simulations drive it exactly.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Level in byte-nanoseconds (bytes * 1e9), so refills are exact.
    level: i128,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`. `rate` and `burst` must be positive.
    pub fn new(
        rate_bytes_per_sec: u64,
        burst_bytes: u64,
        now: Duration,
    ) -> Result<Self, ClusterError> {
        if rate_bytes_per_sec == 0 || burst_bytes == 0 {
            return Err(ClusterError::InvalidConfig(
                "a token bucket needs a positive rate and burst".into(),
            ));
        }
        Ok(Self {
            rate: rate_bytes_per_sec,
            burst: burst_bytes,
            level: burst_bytes as i128 * NANOS_PER_SEC as i128,
            last: now,
        })
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let dt = (now - self.last).as_nanos();
            let cap = self.burst as i128 * NANOS_PER_SEC as i128;
            let add = dt
                .saturating_mul(u128::from(self.rate))
                .min(i128::MAX as u128 / 4) as i128;
            self.level = (self.level + add).min(cap);
            self.last = now;
        }
    }

    /// Takes `bytes` if a transfer of that size may start at `now`; otherwise says how long to
    /// wait before it may.
    pub fn try_acquire(&mut self, bytes: u64, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        let need = bytes.min(self.burst) as i128 * NANOS_PER_SEC as i128;
        if self.level >= need {
            self.level -= bytes as i128 * NANOS_PER_SEC as i128;
            Ok(())
        } else {
            let missing = (need - self.level) as u128;
            let wait = missing.div_ceil(u128::from(self.rate));
            Err(Duration::from_nanos(wait.min(u128::from(u64::MAX)) as u64))
        }
    }

    /// Bytes in the bucket at `now` (negative while in debt).
    pub fn available(&mut self, now: Duration) -> i64 {
        self.refill(now);
        (self.level / NANOS_PER_SEC as i128) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn limits_the_rate() {
        let mut b = TokenBucket::new(1_000_000, 100_000, Duration::ZERO).unwrap();
        // A full burst goes at once, then the bucket is empty.
        assert!(b.try_acquire(100_000, Duration::ZERO).is_ok());
        assert_eq!(b.try_acquire(10_000, Duration::ZERO), Err(10 * MS));
        assert!(b.try_acquire(10_000, 10 * MS).is_ok());
        // Over ten simulated seconds, 1 MB/s lets through at most 10 MB + the burst.
        let mut b = TokenBucket::new(1_000_000, 100_000, Duration::ZERO).unwrap();
        let (mut now, mut sent) = (Duration::ZERO, 0u64);
        while now < Duration::from_secs(10) {
            match b.try_acquire(30_000, now) {
                Ok(()) => sent += 30_000,
                Err(wait) => now += wait,
            }
        }
        assert!(sent <= 10_000_000 + 100_000 + 30_000, "sent {sent}");
        assert!(sent >= 9_900_000, "sent {sent}");
    }

    #[test]
    fn a_transfer_larger_than_the_burst_goes_into_debt() {
        let mut b = TokenBucket::new(1_000, 1_000, Duration::ZERO).unwrap();
        assert!(b.try_acquire(5_000, Duration::ZERO).is_ok());
        assert_eq!(b.available(Duration::ZERO), -4_000);
        // The debt plus the next transfer's 1,000 bytes: five seconds.
        assert_eq!(
            b.try_acquire(1_000, Duration::ZERO),
            Err(Duration::from_secs(5))
        );
        assert!(TokenBucket::new(0, 1, Duration::ZERO).is_err());
    }
}

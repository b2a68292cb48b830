//! Hands out the moves of a plan: most urgent first, a bounded number at a time, throttled moves
//! through a token bucket.

use std::collections::VecDeque;
use std::time::Duration;

use crate::bucket::{TokenBucket, DEFAULT_RATE_BYTES_PER_SEC};
use crate::error::ClusterError;
use crate::plan::{Move, MovePriority};

/// Settings of a [`MoveScheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most moves in flight at once, all priorities together. Default 4.
    pub max_concurrent: usize,
    /// Rate of throttled (`Normal` and `Low`) moves, bytes per second. Default 10 MB/s.
    pub rate_bytes_per_sec: u64,
    /// Burst of the rate limiter, bytes. Default one second of the rate.
    pub burst_bytes: u64,
    /// Attempts of a move before it is abandoned. Default 3.
    pub max_attempts: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            rate_bytes_per_sec: DEFAULT_RATE_BYTES_PER_SEC,
            burst_bytes: DEFAULT_RATE_BYTES_PER_SEC,
            max_attempts: 3,
        }
    }
}

/// A move handed out by the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MoveId(pub usize);

/// What the scheduler says when asked for work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Start this move; report it with [`MoveScheduler::complete`] or [`MoveScheduler::fail`].
    Start(MoveId, Move),
    /// The next move is throttled: ask again after this long.
    Wait(Duration),
    /// Every slot is in use (or the rest waits on moves in flight): ask again after a move ends.
    Busy,
    /// Every move is done or abandoned.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
    Done,
    Abandoned,
}

/// Progress of one priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriorityProgress {
    /// Moves of this priority.
    pub total: usize,
    /// Moves done.
    pub done: usize,
    /// Bytes of all its moves.
    pub bytes_total: u64,
    /// Bytes of the moves done.
    pub bytes_done: u64,
}

/// Where the scheduler is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Moves in the plan.
    pub total: usize,
    /// Moves done.
    pub done: usize,
    /// Moves started and not finished.
    pub in_flight: usize,
    /// Moves waiting.
    pub queued: usize,
    /// Moves given up after `max_attempts` failures.
    pub abandoned: usize,
    /// Bytes of all moves.
    pub bytes_total: u64,
    /// Bytes of the moves done.
    pub bytes_done: u64,
    /// Per priority: `Critical`, `Normal`, `Low`.
    pub by_priority: [PriorityProgress; 3],
}

impl Progress {
    /// Fraction of the bytes moved, in `[0, 1]` (1 for an empty plan).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            if self.total == 0 {
                1.0
            } else {
                self.done as f64 / self.total as f64
            }
        } else {
            self.bytes_done as f64 / self.bytes_total as f64
        }
    }
}

fn slot(p: MovePriority) -> usize {
    match p {
        MovePriority::Critical => 0,
        MovePriority::Normal => 1,
        MovePriority::Low => 2,
    }
}

/// Hands out moves by priority (`Critical`, then `Normal`, then `Low`; in plan order within
/// one), at most `max_concurrent` at a time. `Critical` moves are never throttled; the others
/// share one [`TokenBucket`], charged each move's bytes when it starts. A failed move goes back
/// to the end of its queue until `max_attempts`. Pure state machine: the caller passes the time.
#[derive(Debug, Clone)]
pub struct MoveScheduler {
    config: SchedulerConfig,
    moves: Vec<Move>,
    state: Vec<State>,
    attempts: Vec<u32>,
    queues: [VecDeque<usize>; 3],
    bucket: TokenBucket,
    in_flight: usize,
}

impl MoveScheduler {
    /// A scheduler of `moves` starting at time `now`.
    pub fn new(
        moves: Vec<Move>,
        config: SchedulerConfig,
        now: Duration,
    ) -> Result<Self, ClusterError> {
        if config.max_concurrent == 0 || config.max_attempts == 0 {
            return Err(ClusterError::InvalidConfig(
                "max_concurrent and max_attempts must be positive".into(),
            ));
        }
        let bucket = TokenBucket::new(config.rate_bytes_per_sec, config.burst_bytes, now)?;
        let mut queues: [VecDeque<usize>; 3] = Default::default();
        for (i, m) in moves.iter().enumerate() {
            queues[slot(m.priority)].push_back(i);
        }
        Ok(Self {
            state: vec![State::Queued; moves.len()],
            attempts: vec![0; moves.len()],
            moves,
            config,
            queues,
            bucket,
            in_flight: 0,
        })
    }

    /// The next thing to do at `now`.
    pub fn poll(&mut self, now: Duration) -> Poll {
        if self.in_flight >= self.config.max_concurrent {
            return Poll::Busy;
        }
        for p in MovePriority::ALL {
            let q = slot(p);
            let Some(&i) = self.queues[q].front() else {
                continue;
            };
            if p.is_throttled() {
                if let Err(wait) = self.bucket.try_acquire(self.moves[i].bytes, now) {
                    return Poll::Wait(wait);
                }
            }
            self.queues[q].pop_front();
            self.state[i] = State::InFlight;
            self.attempts[i] += 1;
            self.in_flight += 1;
            return Poll::Start(MoveId(i), self.moves[i].clone());
        }
        if self.in_flight > 0 {
            Poll::Busy
        } else {
            Poll::Done
        }
    }

    fn finish(&mut self, id: MoveId) -> bool {
        match self.state.get(id.0) {
            Some(State::InFlight) => {
                self.in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// Move `id` finished. Unknown or not-in-flight ids are ignored (returns false).
    pub fn complete(&mut self, id: MoveId) -> bool {
        if !self.finish(id) {
            return false;
        }
        self.state[id.0] = State::Done;
        true
    }

    /// Move `id` failed: it is queued again, or abandoned after `max_attempts`. Returns false for
    /// an unknown or not-in-flight id.
    pub fn fail(&mut self, id: MoveId) -> bool {
        if !self.finish(id) {
            return false;
        }
        if self.attempts[id.0] >= self.config.max_attempts {
            self.state[id.0] = State::Abandoned;
        } else {
            self.state[id.0] = State::Queued;
            self.queues[slot(self.moves[id.0].priority)].push_back(id.0);
        }
        true
    }

    /// Counts of moves and bytes.
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.moves.len(),
            in_flight: self.in_flight,
            ..Progress::default()
        };
        for (m, s) in self.moves.iter().zip(&self.state) {
            let by = &mut p.by_priority[slot(m.priority)];
            by.total += 1;
            by.bytes_total += m.bytes;
            p.bytes_total += m.bytes;
            match s {
                State::Done => {
                    p.done += 1;
                    p.bytes_done += m.bytes;
                    by.done += 1;
                    by.bytes_done += m.bytes;
                }
                State::Queued => p.queued += 1,
                State::Abandoned => p.abandoned += 1,
                State::InFlight => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Role, SpaceKey};

    fn mv(i: u64, priority: MovePriority, bytes: u64) -> Move {
        Move {
            space: format!("s{i}"),
            key: SpaceKey(i),
            from: NodeId(1),
            to: NodeId(2),
            role: Role::Replica,
            priority,
            bytes,
            releases: None,
        }
    }

    #[test]
    fn critical_first_unthrottled_then_rate_limited() {
        let moves = vec![
            mv(1, MovePriority::Low, 6_000_000),
            mv(2, MovePriority::Critical, 50_000_000),
            mv(3, MovePriority::Low, 6_000_000),
            mv(4, MovePriority::Critical, 50_000_000),
            mv(5, MovePriority::Normal, 1_000),
        ];
        let config = SchedulerConfig {
            max_concurrent: 3,
            ..SchedulerConfig::default()
        };
        let t0 = Duration::ZERO;
        let mut s = MoveScheduler::new(moves, config, t0).unwrap();
        // Both critical moves start at once, whatever their size.
        let Poll::Start(a, m) = s.poll(t0) else {
            panic!()
        };
        assert_eq!(m.space, "s2");
        let Poll::Start(b, m) = s.poll(t0) else {
            panic!()
        };
        assert_eq!(m.space, "s4");
        // Then the normal one, then the concurrency limit.
        let Poll::Start(c, m) = s.poll(t0) else {
            panic!()
        };
        assert_eq!(m.space, "s5");
        assert_eq!(s.poll(t0), Poll::Busy);
        assert!(s.complete(a) && s.complete(b) && s.complete(c));
        assert!(!s.complete(c), "a move completes once");
        // 10 MB of burst minus 1 KB: the first 6 MB move goes, the second waits ~0.2 s.
        let Poll::Start(d, m) = s.poll(t0) else {
            panic!()
        };
        assert_eq!(m.space, "s1");
        let Poll::Wait(w) = s.poll(t0) else { panic!() };
        assert!(
            w > Duration::from_millis(150) && w < Duration::from_millis(250),
            "{w:?}"
        );
        let Poll::Start(e, _) = s.poll(t0 + w) else {
            panic!()
        };
        // A failure requeues the move; after max_attempts it is abandoned.
        assert!(s.fail(e));
        assert_eq!(s.progress().queued, 1);
        assert!(s.complete(d));
        let p = s.progress();
        assert_eq!((p.total, p.done, p.queued, p.in_flight), (5, 4, 1, 0));
        assert_eq!(p.by_priority[0].done, 2);
        assert!(p.fraction() < 1.0);
        let mut now = t0 + w;
        loop {
            match s.poll(now) {
                Poll::Start(id, _) => {
                    s.fail(id);
                }
                Poll::Wait(w) => now += w,
                Poll::Busy => unreachable!(),
                Poll::Done => break,
            }
        }
        assert_eq!(s.progress().abandoned, 1);
    }
}

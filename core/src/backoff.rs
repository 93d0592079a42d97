//! How long a worker waits before it tries the master again; the native
//! worker and the browser's follow the same rule.
//!
//! The wait starts at [`SHORTEST`] and doubles up to [`LONGEST`]. It goes back
//! to the shortest only once a master has welcomed the worker, not when a
//! socket merely opens: a master that accepts connections and then refuses
//! the worker (a tab at a master that takes no browsers), or dies at once, is
//! not tried again at the shortest wait forever. Each wait is spread by up to
//! a quarter either way, so that a crowd of tabs cut off together does not
//! come back in step.

use std::time::Duration;

pub const SHORTEST: Duration = Duration::from_millis(100);
pub const LONGEST: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    /// The spreading's state (splitmix64).
    state: u64,
}

impl Backoff {
    /// `seed` spreads the waits: any value that differs between workers
    /// (the time, a process id, a random number).
    pub fn new(seed: u64) -> Self {
        Self { next: SHORTEST, state: seed }
    }

    /// The wait before the next attempt. The one after is twice as long, up
    /// to [`LONGEST`], unless the worker is welcomed in between.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(LONGEST);
        wait.mul_f64(0.75 + 0.5 * self.fraction())
    }

    /// A master welcomed the worker: the next loss is retried soon.
    pub fn welcomed(&mut self) {
        self.next = SHORTEST;
    }

    /// A number in [0, 1), from splitmix64.
    fn fraction(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `wait` is `of`, spread by at most a quarter.
    fn within_a_quarter(wait: Duration, of: Duration) -> bool {
        wait >= of.mul_f64(0.75) && wait < of.mul_f64(1.25)
    }

    #[test]
    fn waits_double_to_the_cap_and_restart_only_once_welcomed() {
        let mut backoff = Backoff::new(7);
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        let plain = [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis);
        for (wait, plain) in waits.iter().zip(plain) {
            assert!(within_a_quarter(*wait, plain), "{wait:?} is not within a quarter of {plain:?}: {waits:?}");
        }
        backoff.welcomed();
        assert!(within_a_quarter(backoff.next_wait(), SHORTEST));
        assert!(within_a_quarter(backoff.next_wait(), SHORTEST * 2), "a loss after the welcome doubles again");
    }

    #[test]
    fn workers_seeded_apart_wait_apart() {
        let (mut one, mut two) = (Backoff::new(1), Backoff::new(2));
        let apart = (0..8).filter(|_| one.next_wait() != two.next_wait()).count();
        assert_eq!(apart, 8);
        let mut spread = Backoff::new(3);
        let firsts: Vec<Duration> = (0..64)
            .map(|_| {
                spread.welcomed();
                spread.next_wait()
            })
            .collect();
        let (low, high) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
        assert!(*low < SHORTEST.mul_f64(0.85) && *high > SHORTEST.mul_f64(1.15), "spread over the quarter either way: {low:?}..{high:?}");
    }
}

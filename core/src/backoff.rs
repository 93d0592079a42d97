//! How long a worker waits before it tries the master again; the native
//! worker and the browser's follow the same rule.
//!
//! The wait starts at [`SHORTEST`] and doubles up to [`LONGEST`]. It goes back
//! to the shortest only once a master has welcomed the worker, not when a
//! socket merely opens: a master that accepts connections and then refuses
//! the worker (a tab at a master that takes no browsers), or dies at once, is
//! not tried again at the shortest wait forever. Waits at the cap are spread
//! by up to a quarter either way, so that a crowd of tabs cut off together
//! does not keep coming back in step; the shorter ones are not, so that
//! workers started together before their master still arrive together (it
//! plans once no newcomer has come for a moment).

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
        if wait < LONGEST {
            return wait;
        }
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
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200].map(Duration::from_millis));
        assert!(within_a_quarter(backoff.next_wait(), LONGEST) && within_a_quarter(backoff.next_wait(), LONGEST));
        backoff.welcomed();
        assert_eq!(backoff.next_wait(), SHORTEST);
        assert_eq!(backoff.next_wait(), SHORTEST * 2, "a loss after the welcome doubles again");
    }

    #[test]
    fn workers_seeded_apart_wait_apart_at_the_cap() {
        let waits = |seed| {
            let mut backoff = Backoff::new(seed);
            (0..16).map(|_| backoff.next_wait()).collect::<Vec<_>>()
        };
        let (first, second) = (waits(1), waits(2));
        assert_eq!(first[..6], second[..6], "started together, they try together until the cap");
        assert!(first[6..].iter().zip(&second[6..]).all(|(a, b)| a != b));
        let (low, high) = (first[6..].iter().min().unwrap(), first[6..].iter().max().unwrap());
        assert!(*low < LONGEST.mul_f64(0.9) && *high > LONGEST.mul_f64(1.1), "spread over the quarter either way: {low:?}..{high:?}");
    }
}

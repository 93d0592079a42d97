//! Speed and ETA from measured progress: for the CLI bar, the API and the dashboard.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A job's speed and ETA from its progress over the last [`Rate::WINDOW`].
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, f64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(20);

    /// Notes that `done` flops were done by `now`.
    pub fn sample(&mut self, now: Instant, done: f64) {
        // One sample per 100 ms is plenty, however often the caller looks.
        if self.samples.back().is_some_and(|&(t, _)| now.duration_since(t) < Duration::from_millis(100)) {
            return;
        }
        // Before any progress only the latest sample counts: the wait for the
        // first panels says nothing of the speed to come.
        if done == 0.0 {
            self.samples.clear();
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Flop/s over the window, once it spans a second.
    pub fn speed(&self) -> Option<f64> {
        let (&(t0, f0), &(t1, f1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.duration_since(t0).as_secs_f64();
        (span >= 1.0 && f1 > f0).then(|| (f1 - f0) / span)
    }

    /// Seconds to do `left` flops at the recent speed.
    pub fn eta(&self, left: f64) -> Option<f64> {
        self.speed().map(|s| left / s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_recent_one_and_needs_a_second_of_history() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        rate.sample(t0, 0.0);
        rate.sample(t0 + Duration::from_millis(500), 50.0);
        assert_eq!(rate.speed(), None, "half a second says too little");
        // 100 flop/s for 30 s, then 200 flop/s for 20 s: the window sees only the latter.
        for s in 1..=30 {
            rate.sample(t0 + Duration::from_secs(s), 100.0 * s as f64);
        }
        for s in 1..=20 {
            rate.sample(t0 + Duration::from_secs(30 + s), 3000.0 + 200.0 * s as f64);
        }
        assert!((rate.speed().unwrap() - 200.0).abs() < 1e-9, "{:?}", rate.speed());
        assert!((rate.eta(1000.0).unwrap() - 5.0).abs() < 1e-9);
    }
}

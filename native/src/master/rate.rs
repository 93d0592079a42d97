//! Speed and ETA from measured progress: for the CLI bar, the API and the dashboard.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A job's speed and ETA from its recent progress.
///
/// Progress comes in steps (a tile at a time), so the speed is taken between
/// two steps: over the last half of the time since progress began, between
/// 1 s and [`Rate::WINDOW`]. A job starts slowly (a new worker holds one task
/// at first, and the master prepares its checks), so the whole history would
/// undersell the steady speed; and a window cut between steps would count
/// one step more or less than its time.
#[derive(Debug, Default)]
pub struct Rate {
    /// (when, flops done then), at the steps.
    samples: VecDeque<(Instant, f64)>,
    /// The last look with nothing done: when progress began.
    began: Option<Instant>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(20);
    /// Steps closer than this to the last one replace it: the memory stays
    /// small however many workers report.
    const MERGE: Duration = Duration::from_millis(50);

    /// Notes that `done` flops were done by `now`; call it at least whenever
    /// `done` changes.
    pub fn sample(&mut self, now: Instant, done: f64) {
        // Until the first step, the latest look is when progress began: the
        // wait for the first panels says nothing of the speed to come.
        if done == 0.0 {
            self.samples.clear();
            self.began = Some(now);
        } else if self.samples.back().is_some_and(|&(_, last)| last == done) {
            return;
        } else if self.samples.len() > 1 && self.samples.back().is_some_and(|&(t, _)| now.duration_since(t) < Self::MERGE) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) > Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Flop/s at `now` over the recent window, once it spans a second.
    pub fn speed(&self, now: Instant) -> Option<f64> {
        let (&(first, _), &(t1, f1)) = (self.samples.front()?, self.samples.back()?);
        let began = self.began.unwrap_or(first);
        let window = (t1.duration_since(began) / 2).clamp(Duration::from_secs(1), Self::WINDOW);
        // The latest step at least `window` before the last one.
        let at = self.samples.iter().rposition(|&(t, _)| t1.duration_since(t) >= window)?;
        let (t0, f0) = self.samples[at];
        let steps = (self.samples.len() - 1 - at) as u32;
        // With no step for longer than usual, the next is at best now: a
        // stalled job slows down instead of keeping its last speed.
        let gap = t1.duration_since(t0) / steps.max(1);
        let span = t1.duration_since(t0).max(now.saturating_duration_since(t0).saturating_sub(gap));
        (f1 > f0).then(|| (f1 - f0) / span.as_secs_f64())
    }

    /// Seconds to do `left` flops at the recent speed.
    pub fn eta(&self, now: Instant, left: f64) -> Option<f64> {
        self.speed(now).map(|s| left / s)
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
        assert_eq!(rate.speed(t0 + Duration::from_millis(500)), None, "half a second says too little");
        // 100 flop/s for 30 s, then 200 flop/s for 20 s: the window sees only the latter.
        for s in 1..=30 {
            rate.sample(t0 + Duration::from_secs(s), 100.0 * s as f64);
        }
        for s in 1..=20 {
            rate.sample(t0 + Duration::from_secs(30 + s), 3000.0 + 200.0 * s as f64);
        }
        let now = t0 + Duration::from_secs(50);
        assert!((rate.speed(now).unwrap() - 200.0).abs() < 1e-9, "{:?}", rate.speed(now));
        assert!((rate.eta(now, 1000.0).unwrap() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_slow_start_is_forgotten_by_mid_job() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        rate.sample(t0, 0.0);
        // 50 flop/s for 2 s, then 100 flop/s: at 6 s the last 3 s count.
        for tenth in 1..=60u32 {
            let t = f64::from(tenth) / 10.0;
            let done = if t <= 2.0 { 50.0 * t } else { 100.0 + 100.0 * (t - 2.0) };
            rate.sample(t0 + Duration::from_secs_f64(t), done);
        }
        let now = t0 + Duration::from_secs(6);
        assert!((rate.speed(now).unwrap() - 100.0).abs() < 1e-6, "{:?}", rate.speed(now));
    }

    #[test]
    fn steps_are_counted_whole_and_a_stall_slows_the_speed() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        rate.sample(t0, 0.0);
        // A step of 30 flops every 0.3 s (100 flop/s), looked at every 0.1 s.
        for tick in 1..=100u32 {
            let t = Duration::from_millis(100) * tick;
            rate.sample(t0 + t, 30.0 * f64::from(tick / 3));
            if t >= Duration::from_secs(2) {
                let speed = rate.speed(t0 + t).unwrap();
                assert!((speed - 100.0).abs() < 1e-6, "at {t:?}: {speed} flop/s");
            }
        }
        // No step for 5 s after the last one (at 9.9 s): at best one comes now.
        let speed = rate.speed(t0 + Duration::from_millis(14_900)).unwrap();
        assert!(speed < 60.0, "{speed} flop/s after a 5 s stall");
    }
}

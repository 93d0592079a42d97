//! Heartbeats, the one rule both ends of a connection follow: say something at
//! least every `interval`, and give up on a peer silent for longer than its limit.
//!
//! A cut link or a frozen peer often leaves TCP open for minutes; heartbeats
//! turn that into a bounded wait. Time comes in as `now`, like everywhere in core.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often each side sends a heartbeat.
    pub interval: Duration,
    /// How long a peer may stay silent before it is given up on.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5), timeout: Duration::from_secs(15) }
    }
}

/// One peer's clock: when we last heard it, and when our next heartbeat is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    last_heard: Duration,
    next_beat: Duration,
}

impl Liveness {
    pub fn new(now: Duration, heartbeat: &Heartbeat) -> Self {
        Self { last_heard: now, next_beat: now + heartbeat.interval }
    }

    pub fn heard(&mut self, now: Duration) {
        self.last_heard = self.last_heard.max(now);
    }

    /// Whether a heartbeat is due; if so, the next one is scheduled.
    pub fn beat_due(&mut self, now: Duration, heartbeat: &Heartbeat) -> bool {
        if now < self.next_beat {
            return false;
        }
        self.next_beat = now + heartbeat.interval;
        true
    }

    /// How long the peer has been silent, if longer than `limit`.
    pub fn silent_past(&self, now: Duration, limit: Duration) -> Option<Duration> {
        let silent = now.saturating_sub(self.last_heard);
        (silent > limit).then_some(silent)
    }

    /// When to look again: the next heartbeat, or the moment silence passes `limit`.
    pub fn next_wake(&self, limit: Duration) -> Duration {
        self.next_beat.min(self.last_heard + limit + Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_on_time_and_notices_silence() {
        let hb = Heartbeat { interval: Duration::from_secs(5), timeout: Duration::from_secs(15) };
        let s = Duration::from_secs;
        let mut l = Liveness::new(s(0), &hb);
        assert!(!l.beat_due(s(4), &hb));
        assert!(l.beat_due(s(5), &hb));
        assert!(!l.beat_due(s(6), &hb), "one beat per interval");
        assert_eq!(l.next_wake(hb.timeout), s(10));
        l.heard(s(9));
        assert_eq!(l.silent_past(s(24), hb.timeout), None);
        assert_eq!(l.silent_past(s(25), hb.timeout), Some(s(16)));
        l.heard(s(3));
        assert_eq!(l.silent_past(s(24), hb.timeout), None, "an old time never moves the clock back");
    }
}

//! The two timers every connection keeps, whatever drives it (the readiness driver,
//! io_uring, a blocking thread or process): when bytes last moved (idle timeout) and
//! when the request in progress started (request or header timeout, slowloris).
//!
//! Only timestamps: setting them on the hot path costs a store; a strategy checks them
//! when it likes (a sweep once a second, or the timeout of a blocking wait).

use std::time::{Duration, Instant};

/// Which timer ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// No bytes moved for the idle timeout.
    Idle,
    /// A request stayed incomplete (no reply produced) for the request timeout.
    Request,
}

/// A connection's idle and request clocks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timers {
    /// Last time bytes moved either way (None until the first event or check).
    active_at: Option<Instant>,
    /// When the request in progress started; cleared when a reply is produced or
    /// nothing is in progress.
    request_since: Option<Instant>,
}

impl Timers {
    /// Clocks started at `now` (for a driver that has no "first check" of its own).
    pub(crate) fn started(now: Instant) -> Self {
        Timers {
            active_at: Some(now),
            request_since: None,
        }
    }

    /// Bytes moved.
    pub(crate) fn active(&mut self, now: Instant) {
        self.active_at = Some(now);
    }

    /// A reply was produced: the request timer restarts with the next request.
    pub(crate) fn replied(&mut self) {
        self.request_since = None;
    }

    /// After input was processed: start the request clock if a request is now in
    /// progress and it is not running, stop it if none is.
    pub(crate) fn track(&mut self, now: Instant, in_request: bool) {
        if !in_request {
            self.request_since = None;
        } else if self.request_since.is_none() {
            self.request_since = Some(now);
        }
    }

    /// Which timer has run out at `now`: the request timer (only counted while the
    /// connection is `open` to requests) before the idle one. Starts the idle clock of
    /// a connection that has none yet.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        idle_timeout: Duration,
        request_timeout: Duration,
        open: bool,
    ) -> Option<Timeout> {
        let active_at = *self.active_at.get_or_insert(now);
        let request_due = self
            .request_since
            .is_some_and(|since| now.duration_since(since) >= request_timeout);
        if open && request_due {
            Some(Timeout::Request)
        } else if now.duration_since(active_at) >= idle_timeout {
            Some(Timeout::Idle)
        } else {
            None
        }
    }

    /// When the idle timer runs out (from `now` if the clock has not started).
    pub(crate) fn idle_deadline(&self, now: Instant, idle_timeout: Duration) -> Instant {
        self.active_at.unwrap_or(now) + idle_timeout
    }

    /// When the nearer of the two timers runs out.
    pub(crate) fn deadline(
        &self,
        now: Instant,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> Instant {
        let idle = self.idle_deadline(now, idle_timeout);
        match self.request_since {
            Some(since) => idle.min(since + request_timeout),
            None => idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const REQ: Duration = Duration::from_secs(10);

    #[test]
    fn request_timer_runs_from_the_start_of_a_request_until_a_reply() {
        let t0 = Instant::now();
        let mut t = Timers::started(t0);
        t.track(t0, true);
        t.active(t0 + REQ); // bytes trickle in: the request clock keeps running
        t.track(t0 + REQ, true);
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, true), Some(Timeout::Request));
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, false), None, "only while open");
        t.replied();
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, true), None);
        assert_eq!(t.deadline(t0 + REQ, IDLE, REQ), t0 + REQ + IDLE);
    }

    #[test]
    fn idle_timer_runs_from_the_last_activity_and_starts_on_first_check() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.due(t0, IDLE, REQ, true), None);
        assert_eq!(t.due(t0 + IDLE, IDLE, REQ, true), Some(Timeout::Idle));
        t.active(t0 + IDLE);
        assert_eq!(t.due(t0 + IDLE, IDLE, REQ, true), None);
        t.track(t0 + IDLE, true);
        assert_eq!(t.deadline(t0 + IDLE, IDLE, REQ), t0 + IDLE + REQ);
    }
}

//! The two timers every connection keeps, whatever drives it (the readiness driver,
//! io_uring, a blocking thread or process): when bytes last moved (idle timeout) and
//! when the request in progress started (request or header timeout, slowloris).
//!
//! Only timestamps: setting them on the hot path costs a store; a strategy checks them
//! when it likes (a sweep once a second, or the timeout of a blocking wait).

use std::time::{Duration, Instant};

/// How often an event loop sweeps its connections' timers: once a second, or a
/// quarter of the shorter timeout when that is less (at least every 10 ms).
pub(crate) fn sweep_interval(idle_timeout: Duration, header_timeout: Duration) -> Duration {
    Duration::from_secs(1)
        .min(idle_timeout / 4)
        .min(header_timeout / 4)
        .max(Duration::from_millis(10))
}

/// How long a loop may wait for `deadline`: the time left, rounded up by a
/// millisecond so that the wait does not end a hair early (`None`: no deadline).
pub(crate) fn wait_for(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
}

/// [`wait_for`] as the `timespec` `epoll_wait` takes.
pub(crate) fn wait_timespec(deadline: Option<Instant>) -> Option<rustix::time::Timespec> {
    wait_for(deadline).map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    })
}

/// Wait on the epoll instance `ep` until an event or `deadline`, with `events` cleared
/// and refilled (`EINTR` comes back as an error for the loop to go round).
pub(crate) fn epoll_wait_until(
    ep: std::os::fd::BorrowedFd<'_>,
    events: &mut Vec<rustix::event::epoll::Event>,
    deadline: Option<Instant>,
) -> rustix::io::Result<()> {
    let timeout = wait_timespec(deadline);
    events.clear();
    rustix::event::epoll::wait(ep, rustix::buffer::spare_capacity(events), timeout.as_ref())
        .map(|_| ())
}

/// When an event loop sweeps its connections' timers next (O(connections) per sweep:
/// 10,000 connections take tens of microseconds, once a second, instead of a timer per
/// connection on the hot path).
#[derive(Debug, Default)]
pub(crate) struct SweepClock {
    next: Option<Instant>,
}

impl SweepClock {
    /// Whether a sweep is due at `now`; when it is, the next one is scheduled `every`
    /// later. With no connections nothing is due and the clock stops; the first call
    /// with connections starts it.
    pub(crate) fn due(&mut self, now: Instant, has_conns: bool, every: Duration) -> bool {
        if !has_conns {
            self.next = None;
            return false;
        }
        match self.next {
            Some(t) if t <= now => {
                self.next = Some(now + every);
                true
            }
            Some(_) => false,
            None => {
                self.next = Some(now + every);
                false
            }
        }
    }

    /// When the next sweep is due, if the clock runs.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }
}

/// Which timer ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// No bytes moved for `--idle-timeout`.
    Idle,
    /// A request stayed incomplete (no reply produced) for `--header-timeout`.
    Header,
    /// The linger after our write side was shut ran out.
    Linger,
    /// The session's own timer ([`Session::poll_timer`](c10k_proto::Session::poll_timer)).
    Session,
}

/// A connection's idle and header clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// Last time bytes moved either way (the connection's start before that).
    active_at: Instant,
    /// When the request in progress started; cleared when a reply is produced or
    /// nothing is in progress.
    request_since: Option<Instant>,
}

impl Timers {
    /// Clocks started at `now` (when the connection was accepted).
    pub(crate) fn started(now: Instant) -> Self {
        Timers {
            active_at: now,
            request_since: None,
        }
    }

    /// Bytes moved.
    pub(crate) fn active(&mut self, now: Instant) {
        self.active_at = now;
    }

    /// A reply was produced: the header timer restarts with the next request.
    pub(crate) fn replied(&mut self) {
        self.request_since = None;
    }

    /// After input was processed: start the header clock if a request is now in
    /// progress and it is not running, stop it if none is.
    pub(crate) fn track(&mut self, now: Instant, in_request: bool) {
        if !in_request {
            self.request_since = None;
        } else if self.request_since.is_none() {
            self.request_since = Some(now);
        }
    }

    /// Which timer has run out at `now`: the header timer (only counted while the
    /// connection is `open` to requests) before the idle one.
    pub(crate) fn due(
        &self,
        now: Instant,
        idle_timeout: Duration,
        header_timeout: Duration,
        open: bool,
    ) -> Option<Timeout> {
        let request_due = self
            .request_since
            .is_some_and(|since| now.duration_since(since) >= header_timeout);
        if open && request_due {
            Some(Timeout::Header)
        } else if now.duration_since(self.active_at) >= idle_timeout {
            Some(Timeout::Idle)
        } else {
            None
        }
    }

    /// When the idle timer runs out.
    pub(crate) fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.active_at + idle_timeout
    }

    /// When the nearer of the two timers runs out.
    pub(crate) fn deadline(&self, idle_timeout: Duration, header_timeout: Duration) -> Instant {
        let idle = self.idle_deadline(idle_timeout);
        match self.request_since {
            Some(since) => idle.min(since + header_timeout),
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
    fn sweep_interval_follows_short_timeouts() {
        assert_eq!(sweep_interval(IDLE, REQ), Duration::from_secs(1));
        assert_eq!(
            sweep_interval(IDLE, Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(1), REQ),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn sweep_clock_starts_with_connections_and_stops_without() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1);
        let mut clock = SweepClock::default();
        assert!(!clock.due(t0, false, every));
        assert_eq!(clock.next(), None);
        // First call with connections starts the clock; nothing is due yet.
        assert!(!clock.due(t0, true, every));
        assert_eq!(clock.next(), Some(t0 + every));
        assert!(!clock.due(t0 + every / 2, true, every));
        assert!(clock.due(t0 + every, true, every));
        assert_eq!(clock.next(), Some(t0 + 2 * every));
        assert!(!clock.due(t0 + every, false, every));
        assert_eq!(clock.next(), None);
    }

    #[test]
    fn header_timer_runs_from_the_start_of_a_request_until_a_reply() {
        let t0 = Instant::now();
        let mut t = Timers::started(t0);
        t.track(t0, true);
        t.active(t0 + REQ); // bytes trickle in: the header clock keeps running
        t.track(t0 + REQ, true);
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, true), Some(Timeout::Header));
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, false), None, "only while open");
        t.replied();
        assert_eq!(t.due(t0 + REQ, IDLE, REQ, true), None);
        assert_eq!(t.deadline(IDLE, REQ), t0 + REQ + IDLE);
    }

    #[test]
    fn idle_timer_runs_from_the_last_activity() {
        let t0 = Instant::now();
        let mut t = Timers::started(t0);
        assert_eq!(t.due(t0, IDLE, REQ, true), None);
        assert_eq!(t.due(t0 + IDLE, IDLE, REQ, true), Some(Timeout::Idle));
        t.active(t0 + IDLE);
        assert_eq!(t.due(t0 + IDLE, IDLE, REQ, true), None);
        t.track(t0 + IDLE, true);
        assert_eq!(t.deadline(IDLE, REQ), t0 + IDLE + REQ);
    }
}

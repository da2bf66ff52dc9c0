//! Work per request (`c10k serve --work`): what a real handler does besides moving
//! bytes, so that a comparison measures the strategies under the work users have.
//!
//! - `cpu=200us`: burn that much CPU per request, measured on the handling thread's
//!   CPU clock (`CLOCK_THREAD_CPUTIME_ID`), so a preempted thread still does its
//!   whole share;
//! - `wait=2ms,blocking`: the handling thread sleeps, as a synchronous library call
//!   (a database driver, a file read) would: on an event loop this stalls every
//!   connection of the worker, and that is what it measures;
//! - `wait=2ms,async`: the session holds its reply back with a timer, as
//!   asynchronous code awaiting something would; the worker goes on serving the
//!   others. On the blocking strategies the connection's thread waits for the timer,
//!   which is an ordinary sleep.
//!
//! Items combine: `cpu=100us,wait=1ms,async` burns first, then waits. A request is
//! one HTTP request, one RESP command, one chat line, and for echo (which has no
//! message boundaries) what one read returned, i.e. one client write on loopback. A
//! pipelined batch of N requests handled in one call costs N times the work, and its
//! replies leave together once the last of the N waits is over: requests on one
//! connection are served one after another, as a handler awaiting each would.
//!
//! [`WorkApp`] wraps any [`App`]; with [`Work::NONE`] its sessions pass every call
//! straight through.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use c10k_proto::{App, Cx, Mailbox, Message, Peer, ProtoError, Session};

/// The most CPU a request may ask for.
pub const MAX_CPU: Duration = Duration::from_secs(1);
/// The longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// The handling thread sleeps.
    Blocking,
    /// The reply is deferred with a session timer.
    Async,
}

/// The work done per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Work {
    /// CPU burnt per request (thread CPU time).
    pub cpu: Duration,
    /// Time waited per request, and how (`None`: no wait).
    pub wait: Option<(Duration, WaitKind)>,
}

impl Work {
    /// No work: the app's own cost only.
    pub const NONE: Work = Work {
        cpu: Duration::ZERO,
        wait: None,
    };

    /// No work at all.
    pub fn is_none(&self) -> bool {
        self.cpu.is_zero() && self.wait.is_none()
    }

    /// The asynchronous wait per request (zero when the wait blocks or there is none):
    /// how much longer a request may stay in flight than without work, which the
    /// header and idle timeouts must allow for.
    pub fn async_wait(&self) -> Duration {
        match self.wait {
            Some((d, WaitKind::Async)) => d,
            _ => Duration::ZERO,
        }
    }

    /// The blocking wait per request (zero when it is asynchronous or there is none).
    pub fn blocking_wait(&self) -> Duration {
        match self.wait {
            Some((d, WaitKind::Blocking)) => d,
            _ => Duration::ZERO,
        }
    }
}

/// Formats a duration the way `--work` reads it: the largest unit that keeps it whole.
fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns % 1_000_000_000 == 0 {
        format!("{}s", ns / 1_000_000_000)
    } else if ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else if ns % 1_000 == 0 {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

impl fmt::Display for Work {
    /// The canonical spelling, which parses back to the same value: `none`,
    /// `cpu=200us`, `wait=2ms,blocking`, `cpu=100us,wait=1ms,async`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        if !self.cpu.is_zero() {
            parts.push(format!("cpu={}", format_duration(self.cpu)));
        }
        if let Some((d, kind)) = self.wait {
            let kind = match kind {
                WaitKind::Blocking => "blocking",
                WaitKind::Async => "async",
            };
            parts.push(format!("wait={},{kind}", format_duration(d)));
        }
        f.write_str(&parts.join(","))
    }
}

/// Parses `200us`, `2ms`, `1.5s`, `500ns`: a non-negative number and a unit.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!(
            "'{s}' is negative: a duration is 0 or more, e.g. 200us"
        ));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("'{s}' is not a duration such as 200us or 2ms"));
    }
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "" => return Err(format!("'{s}' needs a unit: ns, us, ms or s")),
        other => return Err(format!("'{other}' is not a unit: use ns, us, ms or s")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 200us or 2ms"))?;
    if !value.is_finite() {
        return Err(format!("'{s}' is not a duration such as 200us or 2ms"));
    }
    // Finite and not negative: only too large to represent can fail, and too large
    // is what the bounds report.
    Ok(Duration::try_from_secs_f64(value * scale).unwrap_or(Duration::MAX))
}

impl FromStr for Work {
    type Err = String;

    /// `none`, or comma-separated items: `cpu=DURATION`, `wait=DURATION` followed by
    /// `blocking` or `async`. CPU is at most 1 s, a wait at most 60 s.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "empty --work: use none, cpu=200us, wait=2ms,blocking or wait=2ms,async".into(),
            );
        }
        if s == "none" {
            return Ok(Work::NONE);
        }
        let mut work = Work::NONE;
        let mut cpu_seen = false;
        let mut wait: Option<Duration> = None;
        let mut kind: Option<WaitKind> = None;
        for item in s.split(',').map(str::trim) {
            match item.split_once('=') {
                Some(("cpu", v)) => {
                    if cpu_seen {
                        return Err(format!("'{s}' names cpu twice"));
                    }
                    cpu_seen = true;
                    let d = parse_duration(v)?;
                    if d > MAX_CPU {
                        return Err(format!("cpu={v} is more than the 1s a request may burn"));
                    }
                    work.cpu = d;
                }
                Some(("wait", v)) => {
                    if wait.is_some() {
                        return Err(format!("'{s}' names wait twice"));
                    }
                    let d = parse_duration(v)?;
                    if d > MAX_WAIT {
                        return Err(format!("wait={v} is more than the 60s a request may wait"));
                    }
                    wait = Some(d);
                }
                None if item == "blocking" || item == "async" => {
                    if kind.is_some() {
                        return Err(format!("'{s}' says how to wait twice"));
                    }
                    kind = Some(if item == "blocking" {
                        WaitKind::Blocking
                    } else {
                        WaitKind::Async
                    });
                }
                _ => {
                    return Err(format!(
                        "'{item}' is not a work item: use cpu=DURATION, wait=DURATION with \
                         blocking or async, or none"
                    ));
                }
            }
        }
        match (wait, kind) {
            (Some(d), Some(k)) => {
                if !d.is_zero() {
                    work.wait = Some((d, k));
                }
            }
            (Some(d), None) => {
                let d = format_duration(d);
                return Err(format!(
                    "say how the wait waits: wait={d},blocking (the thread sleeps) or \
                     wait={d},async (the reply is deferred)"
                ));
            }
            (None, Some(_)) => {
                return Err(format!("'{s}': blocking or async needs a wait=DURATION"));
            }
            (None, None) => {}
        }
        Ok(work)
    }
}

/// Burns `d` of this thread's CPU time.
pub fn burn_cpu(d: Duration) {
    use rustix::time::{ClockId, clock_gettime};
    if d.is_zero() {
        return;
    }
    let now = || {
        let t = clock_gettime(ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let end = now() + d;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        // About a microsecond of arithmetic between clock reads (each is a system
        // call), so that reading the clock is a small part of the burn.
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        if now() >= end {
            break;
        }
    }
}

/// How an app's requests are counted for the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUnit {
    /// The session counts them ([`Session::take_requests`]: HTTP, RESP, chat).
    Counted,
    /// Every read that the session consumed bytes from is one (echo).
    PerRead,
}

/// An [`App`] whose sessions do [`Work`] per request.
#[derive(Debug)]
pub struct WorkApp<A> {
    app: A,
    work: Work,
    unit: RequestUnit,
}

impl<A: App> WorkApp<A> {
    /// `app` doing `work` per request, counted by `unit`.
    pub fn new(app: A, work: Work, unit: RequestUnit) -> Self {
        WorkApp { app, work, unit }
    }
}

impl<A: App> App for WorkApp<A> {
    type Session = WorkSession<A::Session>;

    fn open(&self, peer: &Peer) -> Self::Session {
        WorkSession {
            inner: self.app.open(peer),
            work: self.work,
            unit: self.unit,
            held: Vec::new(),
            release_at: None,
            requests: 0,
        }
    }
}

/// A session of a [`WorkApp`].
#[derive(Debug)]
pub struct WorkSession<S> {
    inner: S,
    work: Work,
    unit: RequestUnit,
    /// Output held back until `release_at` (an asynchronous wait).
    held: Vec<u8>,
    /// When the held output leaves; `Some` while a deferred reply is pending.
    release_at: Option<Instant>,
    /// The inner session's request count, taken to count the work and passed on.
    requests: u64,
}

impl<S: Session> WorkSession<S> {
    /// Does the work of `n` requests whose replies are `out[from..]`.
    fn work_for(&mut self, cx: &Cx, n: u64, out: &mut Vec<u8>, from: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        burn_cpu(self.work.cpu.saturating_mul(n));
        match self.work.wait {
            Some((d, WaitKind::Blocking)) => std::thread::sleep(d.saturating_mul(n)),
            Some((d, WaitKind::Async)) => {
                self.held.extend_from_slice(&out[from..]);
                out.truncate(from);
                let now = cx.instant().unwrap_or_else(Instant::now);
                self.release_at = Some(now + d.saturating_mul(n));
            }
            None => {}
        }
    }
}

impl<S: Session> Session for WorkSession<S> {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        if self.work.is_none() {
            return self.inner.handle_input(cx, input, out);
        }
        if self.release_at.is_some() {
            // A reply is on its way: the next request waits for it (the core keeps
            // the bytes and offers them again after the timer).
            return Ok(0);
        }
        let from = out.len();
        let used = self.inner.handle_input(cx, input, out)?;
        let counted = self.inner.take_requests();
        self.requests += counted;
        let n = match self.unit {
            RequestUnit::Counted => counted,
            RequestUnit::PerRead => u64::from(used > 0),
        };
        if n > 0 {
            self.work_for(cx, n, out, from);
        }
        Ok(used)
    }

    fn handle_eof(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let sink = if self.release_at.is_some() {
            &mut self.held
        } else {
            out
        };
        self.inner.handle_eof(cx, sink);
    }

    fn wants_close(&self) -> bool {
        self.release_at.is_none() && self.inner.wants_close()
    }

    fn mid_request(&self) -> bool {
        self.release_at.is_some() || self.inner.mid_request()
    }

    fn start_drain(&mut self) {
        self.inner.start_drain();
    }

    fn handle_timeout(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        out.extend_from_slice(&held);
        self.release_at = None;
        self.inner.handle_timeout(cx, out);
    }

    fn take_requests(&mut self) -> u64 {
        if self.work.is_none() {
            return self.inner.take_requests();
        }
        std::mem::take(&mut self.requests)
    }

    fn wants_mailbox(&self) -> bool {
        self.inner.wants_mailbox()
    }

    fn attach_mailbox(&mut self, mailbox: Mailbox) {
        self.inner.attach_mailbox(mailbox);
    }

    fn handle_message(&mut self, cx: &Cx, msg: Message, out: &mut Vec<u8>) {
        // Output produced while a reply is held joins it, so the order is kept.
        if self.release_at.is_some() {
            self.inner.handle_message(cx, msg, &mut self.held);
        } else {
            self.inner.handle_message(cx, msg, out);
        }
    }

    fn poll_timer(&self) -> Option<Instant> {
        match (self.release_at, self.inner.poll_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timer(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let now = cx.instant().unwrap_or_else(Instant::now);
        if self.release_at.is_some_and(|t| t <= now) {
            self.release_at = None;
            out.append(&mut self.held);
        }
        if self.inner.poll_timer().is_some_and(|t| t <= now) {
            if self.release_at.is_some() {
                self.inner.handle_timer(cx, &mut self.held);
            } else {
                self.inner.handle_timer(cx, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c10k_proto::echo::EchoApp;
    use c10k_proto::http::{HttpApp, HttpConfig};
    use std::time::SystemTime;

    fn w(s: &str) -> Work {
        s.parse().unwrap()
    }

    #[test]
    fn specs_parse_and_print_canonically() {
        assert_eq!(w("none"), Work::NONE);
        assert!(w("none").is_none());
        for (spec, canon) in [
            ("cpu=200us", "cpu=200us"),
            ("wait=2ms,blocking", "wait=2ms,blocking"),
            ("async, wait=0.002s", "wait=2ms,async"),
            ("cpu=100us,wait=1ms,async", "cpu=100us,wait=1ms,async"),
            ("wait=1.5s,async,cpu=1s", "cpu=1s,wait=1500ms,async"),
            ("cpu=0us", "none"),
            ("cpu=250ns", "cpu=250ns"),
        ] {
            let work = w(spec);
            assert_eq!(work.to_string(), canon, "{spec}");
            assert_eq!(w(canon), work, "{canon} parses back");
        }
        let both = w("cpu=100us,wait=1ms,async");
        assert_eq!(both.cpu, Duration::from_micros(100));
        assert_eq!(both.async_wait(), Duration::from_millis(1));
        assert_eq!(both.blocking_wait(), Duration::ZERO);
        assert_eq!(
            w("wait=3ms,blocking").blocking_wait(),
            Duration::from_millis(3)
        );
    }

    #[test]
    fn bad_specs_say_why_in_one_line() {
        for (spec, says) in [
            ("", "empty"),
            ("cpu=2s", "1s"),
            ("cpu=1.000001s", "1s"),
            ("wait=61s,async", "60s"),
            ("wait=2ms", "blocking"),
            ("blocking", "wait=DURATION"),
            ("cpu=-1ms", "negative"),
            ("wait=-2ms,async", "negative"),
            ("cpu=5", "unit"),
            ("cpu=5 parsecs", "unit"),
            ("cpu=abcms", "duration"),
            ("cpu=NaNs", "duration"),
            ("cpu=1e999s", "unit"),
            ("cpu=99999999999999999999999999s", "1s"),
            ("sleep=1ms", "not a work item"),
            ("cpu=1ms,cpu=2ms", "twice"),
            ("wait=1ms,wait=2ms,async", "twice"),
            ("wait=1ms,async,blocking", "twice"),
        ] {
            let err = spec.parse::<Work>().unwrap_err();
            assert!(err.contains(says), "{spec:?}: {err}");
            assert!(!err.contains('\n'), "{spec:?}: one line");
        }
    }

    #[test]
    fn cpu_burn_is_thread_cpu_time() {
        use rustix::time::{ClockId, clock_gettime};
        let cpu = || {
            let t = clock_gettime(ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let before = cpu();
        burn_cpu(Duration::from_millis(20));
        assert!(cpu() - before >= Duration::from_millis(20));
    }

    fn cx_at(now: Instant) -> Cx {
        let mut cx = Cx::new(SystemTime::now());
        cx.set_instant(now);
        cx
    }

    #[test]
    fn an_async_wait_holds_the_reply_and_the_next_request_until_the_timer() {
        let app = WorkApp::new(EchoApp, w("wait=10ms,async"), RequestUnit::PerRead);
        let mut s = app.open(&Peer::unknown());
        let t0 = Instant::now();
        let mut out = Vec::new();
        assert_eq!(s.handle_input(&cx_at(t0), b"one", &mut out).unwrap(), 3);
        assert!(out.is_empty(), "held");
        assert!(s.mid_request(), "a reply is on its way");
        let due = s.poll_timer().unwrap();
        assert_eq!(due, t0 + Duration::from_millis(10));
        // The next request waits for the reply.
        assert_eq!(s.handle_input(&cx_at(t0), b"two", &mut out).unwrap(), 0);
        // Early timer call: nothing yet.
        s.handle_timer(&cx_at(t0 + Duration::from_millis(5)), &mut out);
        assert!(out.is_empty());
        s.handle_timer(&cx_at(due), &mut out);
        assert_eq!(out, b"one");
        assert!(!s.mid_request());
        assert_eq!(s.poll_timer(), None);
        assert_eq!(s.handle_input(&cx_at(due), b"two", &mut out).unwrap(), 3);
        assert_eq!(out, b"one", "the second reply is held in turn");
    }

    #[test]
    fn pipelined_requests_wait_one_after_another() {
        let app = WorkApp::new(
            HttpApp::new(HttpConfig::default()),
            w("wait=10ms,async"),
            RequestUnit::Counted,
        );
        let mut s = app.open(&Peer::unknown());
        let t0 = Instant::now();
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let three = [&req[..], req, req].concat();
        let mut out = Vec::new();
        let used = s.handle_input(&cx_at(t0), &three, &mut out).unwrap();
        assert_eq!(used, three.len());
        assert!(out.is_empty());
        assert_eq!(s.poll_timer(), Some(t0 + Duration::from_millis(30)));
        assert_eq!(s.take_requests(), 3, "the request counter is passed on");
        s.handle_timer(&cx_at(t0 + Duration::from_millis(30)), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    }

    #[test]
    fn a_close_waits_for_the_held_reply_and_eof_output_joins_it() {
        let app = WorkApp::new(
            HttpApp::new(HttpConfig::default()),
            w("wait=10ms,async"),
            RequestUnit::Counted,
        );
        let mut s = app.open(&Peer::unknown());
        let t0 = Instant::now();
        let mut out = Vec::new();
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        s.handle_input(&cx_at(t0), req, &mut out).unwrap();
        assert!(!s.wants_close(), "not before the reply left");
        s.handle_eof(&cx_at(t0), &mut out);
        assert!(out.is_empty());
        s.handle_timer(&cx_at(t0 + Duration::from_millis(10)), &mut out);
        assert!(out.starts_with(b"HTTP/1.1 200"));
        assert!(s.wants_close());
    }

    #[test]
    fn a_blocking_wait_sleeps_in_the_call_and_none_passes_through() {
        let app = WorkApp::new(EchoApp, w("wait=20ms,blocking"), RequestUnit::PerRead);
        let mut s = app.open(&Peer::unknown());
        let mut out = Vec::new();
        let start = Instant::now();
        s.handle_input(&cx_at(start), b"x", &mut out).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(out, b"x", "replied at once after the sleep");
        assert_eq!(s.poll_timer(), None);
        // Nothing consumed, nothing done.
        let start = Instant::now();
        s.handle_input(&cx_at(start), b"", &mut out).unwrap();
        assert!(start.elapsed() < Duration::from_millis(20));

        let app = WorkApp::new(EchoApp, Work::NONE, RequestUnit::PerRead);
        let mut s = app.open(&Peer::unknown());
        s.handle_input(&cx_at(Instant::now()), b"y", &mut out)
            .unwrap();
        assert_eq!(out, b"xy");
        assert!(!s.mid_request());
    }
}

//! One load thread: an edge-triggered epoll loop over its share of the connections.
//!
//! A run has three phases. **Connect**: connections are opened (paced by
//! `--connect-rate`, at most [`MAX_CONNECTS_IN_FLIGHT`] at a time) until all are up or the
//! connect budget is spent; then every thread meets at a barrier, so that the measured
//! window starts with every connection up, in every thread. **Warm-up** and **measure**:
//! - closed loop: each connection keeps `pipeline` requests outstanding; a reply's
//!   latency runs from the moment its request was queued;
//! - open loop: request `k` of a thread is due at `origin + k / rate`; when it is due it
//!   goes out on the next open connection (round robin), pipelined behind whatever that
//!   connection still has outstanding, and its latency runs from the time it was *due*,
//!   not from when the loop got round to sending it. A server that stalls therefore shows
//!   the stall in every request scheduled during it (no coordinated omission).
//!
//! A reply is recorded (counted, and its latency put in the histogram) when it arrives
//! inside the window, whenever its request was sent: at 10,000 connections a round trip
//! can take a good part of a second, and leaving out the replies to warm-up requests
//! would undercount the window's first round trip. A connection that fails (reset, closed, timeout, bad
//! reply) is counted by kind, closed, and opened again after [`RETRY_DELAY`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::event::epoll::{self, EventData, EventFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{LoadConfig, MAX_CONNECTS_IN_FLIGHT};
use crate::cpu::{CpuTimes, thread_cpu};
use crate::progress::{Phase, Progress};
use crate::report::{ErrorCounts, ErrorKind};
use crate::workload::{Expect, Workload};

/// How long a failed connection waits before it is opened again.
pub const RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest epoll wait: the loop looks at the clock, the stop switch and the
/// timeouts at least this often.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How often outstanding requests and connects are checked against the timeout.
const SCAN_EVERY: Duration = Duration::from_millis(100);

/// The read buffer of a thread.
const READ_CHUNK: usize = 64 * 1024;

/// The largest value the latency histograms hold, in nanoseconds (larger ones saturate).
pub const HIST_MAX_NS: u64 = 100_000_000_000;

/// A fresh latency histogram (nanoseconds, three significant figures).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3)
        .expect("constant bounds that hdrhistogram accepts")
}

/// What every thread of a run shares.
pub(crate) struct Shared {
    pub(crate) config: LoadConfig,
    pub(crate) workload: Workload,
    pub(crate) progress: Arc<Progress>,
    pub(crate) barrier: Barrier,
}

/// What one thread measured.
pub(crate) struct ThreadResult {
    pub(crate) latency: Histogram<u64>,
    pub(crate) connect: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) scheduled: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) connected: usize,
    pub(crate) connect_phase: Duration,
    pub(crate) window: Duration,
    pub(crate) cpu: CpuTimes,
    pub(crate) first_error: Option<String>,
}

struct Pending {
    start: Instant,
    expect: Expect,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    Connecting { since: Instant },
    Open,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    generation: u32,
    source: Option<IpAddr>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    pending: VecDeque<Pending>,
    seq: u64,
}

/// The measured window, once known.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

struct Worker<'a> {
    shared: &'a Shared,
    target: SocketAddr,
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
    conns: Vec<Conn>,
    fresh: VecDeque<usize>,
    retry: VecDeque<(Instant, usize)>,
    connecting: usize,
    open: usize,
    open_reported: usize,
    connect_interval: Option<Duration>,
    next_connect: Instant,
    /// Requests flow (after the barrier, not idle).
    loading: bool,
    /// No more reconnects (the run is over).
    finished: bool,
    window: Option<Window>,
    /// Open loop: the schedule's origin, interval and next request number.
    origin: Instant,
    interval: Option<Duration>,
    next_k: u64,
    rr: usize,
    next_scan: Instant,
    read_buf: Vec<u8>,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    requests: u64,
    scheduled: u64,
    replies_delta: u64,
    errors: ErrorCounts,
    errors_delta: u64,
    first_error: Option<String>,
}

/// Runs one load thread over connections with the given sources (one entry per
/// connection). Always meets the barrier, even after a setup error.
pub(crate) fn run_thread(
    shared: &Shared,
    sources: Vec<Option<IpAddr>>,
) -> io::Result<ThreadResult> {
    let mut worker = match Worker::new(shared, sources) {
        Ok(w) => w,
        Err(e) => {
            shared.barrier.wait();
            return Err(e);
        }
    };
    let config = &shared.config;
    let progress = &shared.progress;
    let t0 = Instant::now();
    let connect_deadline = t0 + config.connect_budget();
    let mut failure = None;
    while worker.open < worker.conns.len() && !progress.stopped() {
        let now = Instant::now();
        if now >= connect_deadline {
            break;
        }
        if let Err(e) = worker.turn(now, connect_deadline) {
            failure = Some(e);
            break;
        }
    }
    let connect_phase = t0.elapsed();
    let connected = worker.open;
    shared.barrier.wait();
    if let Some(e) = failure {
        return Err(e);
    }

    let origin = Instant::now();
    let window = Window {
        start: origin + config.warmup,
        end: origin + config.warmup + config.duration,
    };
    progress.set_phase(if config.warmup.is_zero() {
        Phase::Measuring
    } else {
        Phase::Warmup
    });
    worker.start_load(origin, window);
    let mut cpu_start = None;
    loop {
        let now = Instant::now();
        if cpu_start.is_none() && now >= window.start {
            cpu_start = Some((thread_cpu(), now));
            progress.set_phase(Phase::Measuring);
        }
        if now >= window.end || progress.stopped() {
            break;
        }
        let until = if cpu_start.is_none() {
            window.start
        } else {
            window.end
        };
        worker.turn(now, until)?;
    }
    worker.finished = true;
    worker.report_progress();
    let (cpu, measured) = match cpu_start {
        Some((before, at)) => {
            let end = Instant::now().min(window.end);
            (
                thread_cpu().since(before),
                end.saturating_duration_since(at),
            )
        }
        None => (CpuTimes::default(), Duration::ZERO),
    };
    Ok(ThreadResult {
        latency: std::mem::replace(&mut worker.latency, new_histogram()),
        connect: std::mem::replace(&mut worker.connect, new_histogram()),
        requests: worker.requests,
        scheduled: worker.scheduled,
        errors: worker.errors,
        connected,
        connect_phase,
        window: measured,
        cpu,
        first_error: worker.first_error.take(),
    })
}

/// The kind of a connect error.
fn connect_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
        io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        _ if is_fd_limit(e) => ErrorKind::FdLimit,
        _ => ErrorKind::ConnectOther,
    }
}

/// The kind of an error on an open connection.
fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

fn is_fd_limit(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(rustix::io::Errno::MFILE.raw_os_error())
        || raw == Some(rustix::io::Errno::NFILE.raw_os_error())
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Shared, sources: Vec<Option<IpAddr>>) -> io::Result<Self> {
        let config = &shared.config;
        let now = Instant::now();
        let threads = config.threads.max(1) as f64;
        let conns: Vec<Conn> = sources
            .into_iter()
            .map(|source| Conn {
                stream: None,
                state: State::Down,
                generation: 0,
                source,
                out: Vec::new(),
                out_pos: 0,
                inbuf: Vec::new(),
                pending: VecDeque::new(),
                seq: 0,
            })
            .collect();
        Ok(Worker {
            shared,
            target: config.target,
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(1024),
            fresh: (0..conns.len()).collect(),
            conns,
            retry: VecDeque::new(),
            connecting: 0,
            open: 0,
            open_reported: 0,
            connect_interval: config
                .connect_rate
                .and_then(|r| Duration::try_from_secs_f64(threads / r).ok()),
            next_connect: now,
            loading: false,
            finished: false,
            window: None,
            origin: now,
            interval: config
                .rate
                .and_then(|r| Duration::try_from_secs_f64(threads / r).ok()),
            next_k: 0,
            rr: 0,
            next_scan: now + SCAN_EVERY,
            read_buf: vec![0; READ_CHUNK],
            latency: new_histogram(),
            connect: new_histogram(),
            requests: 0,
            scheduled: 0,
            replies_delta: 0,
            errors: ErrorCounts::default(),
            errors_delta: 0,
            first_error: None,
        })
    }

    /// After the barrier: requests start flowing (unless idle).
    fn start_load(&mut self, origin: Instant, window: Window) {
        self.window = Some(window);
        self.origin = origin;
        if self.shared.config.idle {
            return;
        }
        self.loading = true;
        if self.interval.is_none() {
            for i in 0..self.conns.len() {
                if self.conns[i].state == State::Open {
                    self.fill(i, origin);
                }
            }
        }
    }

    /// One turn of the loop: connects, due requests, timeouts, one epoll wait of at most
    /// [`MAX_WAIT`] (less when something is due sooner than `until`), its events.
    fn turn(&mut self, now: Instant, until: Instant) -> io::Result<()> {
        self.start_connects(now);
        if self.loading {
            self.send_due(now);
        }
        if now >= self.next_scan {
            self.scan_timeouts(now);
            self.next_scan = now + SCAN_EVERY;
        }
        let mut wake = until.min(now + MAX_WAIT).min(self.next_scan);
        if let (true, Some(due)) = (self.loading, self.next_due()) {
            wake = wake.min(due);
        }
        if let Some(&(at, _)) = self.retry.front() {
            wake = wake.min(at);
        }
        if !self.fresh.is_empty() && self.connecting < MAX_CONNECTS_IN_FLIGHT {
            wake = wake.min(self.next_connect);
        }
        let timeout = timespec(wake.saturating_duration_since(now));
        self.events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&timeout),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for k in 0..self.events.len() {
            let ev = self.events[k];
            self.on_event(ev.data.u64(), ev.flags);
        }
        self.report_progress();
        Ok(())
    }

    fn report_progress(&mut self) {
        let p = &self.shared.progress;
        if self.replies_delta > 0 {
            p.replies
                .fetch_add(self.replies_delta, std::sync::atomic::Ordering::Relaxed);
            self.replies_delta = 0;
        }
        if self.errors_delta > 0 {
            p.errors
                .fetch_add(self.errors_delta, std::sync::atomic::Ordering::Relaxed);
            self.errors_delta = 0;
        }
        use std::sync::atomic::Ordering::Relaxed;
        if self.open > self.open_reported {
            p.open.fetch_add(self.open - self.open_reported, Relaxed);
        } else if self.open < self.open_reported {
            p.open.fetch_sub(self.open_reported - self.open, Relaxed);
        }
        self.open_reported = self.open;
    }

    fn start_connects(&mut self, now: Instant) {
        while self.connecting < MAX_CONNECTS_IN_FLIGHT && !self.finished {
            if self.connect_interval.is_some() && now < self.next_connect {
                break;
            }
            let i = match self.retry.front() {
                Some(&(at, i)) if at <= now => {
                    self.retry.pop_front();
                    i
                }
                _ => match self.fresh.pop_front() {
                    Some(i) => i,
                    None => break,
                },
            };
            if let Some(iv) = self.connect_interval {
                self.next_connect += iv;
                if self.next_connect + MAX_WAIT < now {
                    self.next_connect = now;
                }
            }
            self.connect(i, now);
        }
    }

    fn connect(&mut self, i: usize, now: Instant) {
        let socket = match Socket::new(
            Domain::for_address(self.target),
            Type::STREAM,
            Some(Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(e) => return self.connect_failed(i, now, connect_kind(&e), &e),
        };
        let setup = socket
            .set_nonblocking(true)
            .and_then(|()| socket.set_tcp_nodelay(true))
            .and_then(|()| match self.conns[i].source {
                Some(ip) => socket.bind(&SocketAddr::new(ip, 0).into()),
                None => Ok(()),
            });
        if let Err(e) = setup {
            return self.connect_failed(i, now, connect_kind(&e), &e);
        }
        let immediate = match socket.connect(&self.target.into()) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {
                false
            }
            Err(e) => return self.connect_failed(i, now, connect_kind(&e), &e),
        };
        let stream = TcpStream::from(socket);
        let c = &mut self.conns[i];
        c.generation = c.generation.wrapping_add(1);
        let token = (u64::from(c.generation) << 32) | i as u64;
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = epoll::add(
            &self.epoll,
            stream.as_fd(),
            EventData::new_u64(token),
            flags,
        ) {
            let e = io::Error::from(e);
            return self.connect_failed(i, now, ErrorKind::Other, &e);
        }
        c.stream = Some(stream);
        c.state = State::Connecting { since: now };
        self.connecting += 1;
        if immediate {
            self.on_open(i, now);
        }
    }

    fn connect_failed(&mut self, i: usize, now: Instant, kind: ErrorKind, e: &io::Error) {
        let target = self.target;
        self.note_error(kind, || format!("connect to {target}: {e}"));
        if !self.finished {
            self.retry.push_back((now + RETRY_DELAY, i));
        }
    }

    fn note_error(&mut self, kind: ErrorKind, what: impl FnOnce() -> String) {
        self.errors.add(kind);
        self.errors_delta += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    /// Closes connection `i` after an error of `kind` and schedules it to reopen.
    fn fail(&mut self, i: usize, now: Instant, kind: ErrorKind, detail: &str) {
        let target = self.target;
        self.note_error(kind, || format!("{target}: {detail}"));
        self.close(i);
        if !self.finished {
            self.retry.push_back((now + RETRY_DELAY, i));
        }
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        match c.state {
            State::Connecting { .. } => self.connecting -= 1,
            State::Open => self.open -= 1,
            State::Down => {}
        }
        c.state = State::Down;
        // Dropping the socket removes it from the epoll set.
        c.stream = None;
        c.generation = c.generation.wrapping_add(1);
        c.out.clear();
        c.out_pos = 0;
        c.inbuf.clear();
        c.pending.clear();
    }

    fn on_open(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if let State::Connecting { since } = c.state {
            let ns = now.saturating_duration_since(since).as_nanos();
            self.connect
                .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
            self.connecting -= 1;
        }
        c.state = State::Open;
        self.open += 1;
        if self.loading && self.interval.is_none() {
            self.fill(i, now);
        }
    }

    fn on_event(&mut self, token: u64, flags: EventFlags) {
        let i = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        if self.conns.get(i).is_none_or(|c| c.generation != generation) {
            return; // an event for a socket closed earlier in this batch
        }
        let now = Instant::now();
        if let State::Connecting { .. } = self.conns[i].state {
            let Some(stream) = &self.conns[i].stream else {
                return;
            };
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let kind = connect_kind(&e);
                    self.close(i);
                    return self.connect_failed(i, now, kind, &e);
                }
            }
            if !flags.intersects(EventFlags::OUT | EventFlags::ERR | EventFlags::HUP) {
                return;
            }
            self.on_open(i, now);
        }
        let hup = flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        if flags.contains(EventFlags::IN) || hup {
            self.read(i, hup);
        }
        if self.conns[i].state == State::Open && !self.conns[i].out.is_empty() {
            self.flush(i, now);
        }
    }

    /// Reads until the kernel has nothing more (a short read means empty for now, unless
    /// the event said the peer hung up: then on to the EOF).
    fn read(&mut self, i: usize, hup: bool) {
        loop {
            let Some(stream) = self.conns[i].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.read_buf) {
                Ok(0) => {
                    let now = Instant::now();
                    return self.fail(
                        i,
                        now,
                        ErrorKind::Closed,
                        "the server closed the connection",
                    );
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let now = Instant::now();
                    return self.fail(i, now, io_kind(&e), &e.to_string());
                }
            };
            let now = Instant::now();
            if !self.take_replies(i, n, now) {
                return;
            }
            if n < self.read_buf.len() && !hup {
                return;
            }
        }
    }

    /// Frames the replies in the `n` bytes just read (after what the connection had
    /// buffered), records them, and refills the pipeline. False if the connection failed.
    fn take_replies(&mut self, i: usize, n: usize, now: Instant) -> bool {
        if !self.loading {
            return true; // idle or not started: nothing was asked, nothing to frame
        }
        let workload = &self.shared.workload;
        let c = &mut self.conns[i];
        let fresh = &self.read_buf[..n];
        let from_buf = !c.inbuf.is_empty();
        if from_buf {
            c.inbuf.extend_from_slice(fresh);
        }
        let mut used = 0;
        let mut replies = 0u64;
        let mut failure = None;
        let mut close_after = false;
        {
            let input: &[u8] = if from_buf { &c.inbuf } else { fresh };
            while used < input.len() {
                let Some(p) = c.pending.front() else {
                    failure = Some((ErrorKind::BadReply, "bytes without a request".to_string()));
                    break;
                };
                match workload.take_reply(p.expect, &input[used..]) {
                    Ok(None) => break,
                    Ok(Some(taken)) => {
                        used += taken.len;
                        replies += 1;
                        close_after |= taken.close;
                        if let Some(w) = self.window {
                            if now >= w.start && now <= w.end {
                                let ns = now.saturating_duration_since(p.start).as_nanos();
                                self.latency.saturating_record(
                                    u64::try_from(ns).unwrap_or(u64::MAX).max(1),
                                );
                                self.requests += 1;
                            }
                        }
                        c.pending.pop_front();
                        if close_after {
                            break;
                        }
                    }
                    Err(bad) => {
                        failure = Some((ErrorKind::BadReply, bad.0));
                        break;
                    }
                }
            }
        }
        if failure.is_none() && !close_after && !from_buf && used < n {
            c.inbuf.extend_from_slice(&fresh[used..]);
        }
        if from_buf {
            c.inbuf.drain(..used.min(c.inbuf.len()));
        }
        self.replies_delta += replies;
        if let Some((kind, why)) = failure {
            self.fail(i, now, kind, &why);
            return false;
        }
        if close_after {
            // The server announced the close: open a new connection, no error.
            self.close(i);
            if !self.finished {
                self.retry.push_back((now, i));
            }
            return false;
        }
        if self.interval.is_none() {
            self.fill(i, now);
        }
        true
    }

    /// Closed loop: tops connection `i` up to `pipeline` outstanding requests.
    fn fill(&mut self, i: usize, now: Instant) {
        if self.window.is_some_and(|w| now >= w.end) {
            return;
        }
        let pipeline = self.shared.config.pipeline;
        let mut queued = false;
        while self.conns[i].pending.len() < pipeline {
            self.queue(i, now);
            queued = true;
        }
        if queued {
            self.flush(i, now);
        }
    }

    fn queue(&mut self, i: usize, start: Instant) {
        let c = &mut self.conns[i];
        let expect = self
            .shared
            .workload
            .write_request(c.seq, i as u64, &mut c.out);
        c.seq += 1;
        c.pending.push_back(Pending { start, expect });
    }

    fn flush(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let mut failure = None;
        while c.out_pos < c.out.len() {
            match stream.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    failure = Some((ErrorKind::Other, "write returned 0".to_string()));
                    break;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some((io_kind(&e), e.to_string()));
                    break;
                }
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        }
        if let Some((kind, why)) = failure {
            self.fail(i, now, kind, &why);
        }
    }

    /// Open loop: when the next request is due.
    fn next_due(&self) -> Option<Instant> {
        let interval = self.interval?;
        let w = self.window?;
        let due = self.origin + interval.mul_f64(self.next_k as f64);
        (due < w.end).then_some(due)
    }

    /// Open loop: sends every request that is due by `now`.
    fn send_due(&mut self, now: Instant) {
        let Some(w) = self.window else {
            return;
        };
        while let Some(due) = self.next_due() {
            if due > now {
                break;
            }
            self.next_k += 1;
            if due >= w.start {
                self.scheduled += 1;
            }
            let n = self.conns.len();
            let mut chosen = None;
            for _ in 0..n {
                self.rr = (self.rr + 1) % n;
                if self.conns[self.rr].state == State::Open {
                    chosen = Some(self.rr);
                    break;
                }
            }
            match chosen {
                Some(i) => {
                    self.queue(i, due);
                    self.flush(i, now);
                }
                None => self.note_error(ErrorKind::NoConnection, || {
                    "a request was due while no connection was open".into()
                }),
            }
        }
    }

    fn scan_timeouts(&mut self, now: Instant) {
        let timeout = self.shared.config.timeout;
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Connecting { since } if now.saturating_duration_since(since) > timeout => {
                    self.fail(i, now, ErrorKind::ConnectTimeout, "connect timed out");
                }
                State::Open => {
                    let late = self.conns[i]
                        .pending
                        .front()
                        .is_some_and(|p| now.saturating_duration_since(p.start) > timeout);
                    if late {
                        self.fail(i, now, ErrorKind::Timeout, "no reply within the timeout");
                    }
                }
                _ => {}
            }
        }
    }
}

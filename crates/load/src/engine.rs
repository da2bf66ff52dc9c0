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
//!
//! **Pub/sub** ([`crate::pubsub`]) uses the same loop with two roles. A subscriber sends
//! `SUBSCRIBE` as soon as it is open, and the connect phase lasts until every
//! subscription is confirmed; after that it only reads pushes (framed by
//! [`FrameBuffer`]), and one the server closes is counted and not reopened. Publishers
//! are the open loop above: `PUBLISH` when due, the payload stamped with the due time.
//! After the window every thread meets at the barrier again and keeps reading until
//! every delivery the server announced (the sum of the PUBLISH replies) has arrived or
//! deliveries stayed quiet for the grace period; then all meet once more, and the
//! connections stay open [`LINGER`] longer so that a watcher can read the server's CPU
//! before the closes add to it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::event::epoll::{self, EventData, EventFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{LoadConfig, MAX_CONNECTS_IN_FLIGHT};
use crate::cpu::{CpuTimes, thread_cpu};
use crate::progress::{Phase, Progress};
use crate::pubsub::{Plan, Push, Stamp, SubscriberTally, classify};
use crate::report::{ErrorCounts, ErrorKind};
use crate::resp_frame::FrameBuffer;
use crate::workload::{Expect, Workload};

/// How long a failed connection waits before it is opened again.
pub const RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest epoll wait: the loop looks at the clock, the stop switch and the
/// timeouts at least this often.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How often outstanding requests and connects are checked against the timeout.
const SCAN_EVERY: Duration = Duration::from_millis(100);

/// A connection still waiting at the end of the run for its first reply, its first
/// request sent at least this long before, counts as unanswered (reported apart from
/// the errors: it had not reached the timeout).
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(1);

/// The read buffer of a thread.
const READ_CHUNK: usize = 64 * 1024;

/// Pub/sub: how long the connections stay open after the deliveries settled.
pub const LINGER: Duration = Duration::from_millis(150);

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
    pub(crate) pubsub: Option<PubSubShared>,
    /// `--processes` child: called by one thread once every thread is done connecting;
    /// returns when the parent says go (so every process's window starts together).
    pub(crate) go: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Shared {
    /// Every thread meets here after its connect phase (then waits for `go`, if any).
    fn meet_connected(&self) {
        let leader = self.barrier.wait().is_leader();
        if let Some(go) = &self.go {
            if leader {
                go();
            }
            self.barrier.wait();
        }
    }
}

/// What the threads of a pub/sub run share.
pub(crate) struct PubSubShared {
    pub(crate) plan: Plan,
    /// Stamps count nanoseconds from here.
    pub(crate) epoch: Instant,
    /// Receivers announced by PUBLISH replies, all threads.
    receivers: AtomicU64,
    /// Messages received by subscribers, all threads.
    delivered: AtomicU64,
    /// PUBLISH commands without a reply yet, all threads.
    pending: AtomicI64,
}

impl PubSubShared {
    pub(crate) fn new(plan: Plan) -> Self {
        PubSubShared {
            plan,
            epoch: Instant::now(),
            receivers: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            pending: AtomicI64::new(0),
        }
    }

    /// Every PUBLISH answered and every receiver it announced reached.
    fn settled(&self) -> bool {
        self.pending.load(Ordering::Acquire) <= 0
            && self.delivered.load(Ordering::Acquire) >= self.receivers.load(Ordering::Acquire)
    }
}

/// What one thread of a pub/sub run measured.
pub(crate) struct PubSubResult {
    pub(crate) delivery: Histogram<u64>,
    /// Messages published (answered), per channel.
    pub(crate) published: Vec<u64>,
    pub(crate) receivers: u64,
    pub(crate) unconfirmed: u64,
    pub(crate) subscribers: Vec<SubscriberTally>,
    pub(crate) grace: Duration,
    pub(crate) settled: bool,
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
    pub(crate) pubsub: Option<PubSubResult>,
    /// Connections open at the end that never had a reply, the oldest request sent
    /// over [`UNANSWERED_AFTER`] before.
    pub(crate) unanswered: u64,
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

/// What a connection does.
enum Role {
    /// Requests and replies (echo, http, resp; pub/sub never).
    Request,
    /// Pub/sub: subscribes once, then reads pushes.
    Subscriber {
        tally: SubscriberTally,
        /// The server confirmed the subscription on the current connection.
        subscribed: bool,
    },
    /// Pub/sub: publishes when due.
    Publisher {
        id: u32,
        /// Messages sent (the next one's number).
        sent: u64,
        /// The next sequence number per channel.
        seq: Vec<u64>,
    },
}

struct Conn {
    role: Role,
    frames: FrameBuffer,
    stream: Option<TcpStream>,
    state: State,
    generation: u32,
    source: Option<IpAddr>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    pending: VecDeque<Pending>,
    /// The current connection received a reply (or push): a timeout on it is a
    /// [`ErrorKind::ReplyTimeout`], not a [`ErrorKind::FirstReplyTimeout`].
    answered: bool,
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
    ps: Option<PubSubWorker>,
}

/// A thread's pub/sub state.
struct PubSubWorker {
    /// This thread's publisher connections.
    publishers: Vec<usize>,
    rr: usize,
    /// This thread's subscriber connections, and how many are confirmed now.
    subscribers: usize,
    subscribed: usize,
    delivery: Histogram<u64>,
    published: Vec<u64>,
    receivers: u64,
    unconfirmed: u64,
    receivers_delta: u64,
    delivered_delta: u64,
    pending_delta: i64,
}

/// Runs one load thread over connections with the given sources (one entry per
/// connection). Always meets the barrier, even after a setup error.
pub(crate) fn run_thread(
    shared: &Shared,
    sources: Vec<(usize, Option<IpAddr>)>,
) -> io::Result<ThreadResult> {
    let mut worker = match Worker::new(shared, sources) {
        Ok(w) => w,
        Err(e) => {
            shared.meet_connected();
            if shared.pubsub.is_some() {
                // The two barriers after the window.
                shared.barrier.wait();
                shared.barrier.wait();
            }
            return Err(e);
        }
    };
    let config = &shared.config;
    let progress = &shared.progress;
    let t0 = Instant::now();
    let connect_deadline = t0 + config.connect_budget();
    let mut failure = None;
    while !worker.ready() && !progress.stopped() {
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
    worker.report_progress();
    shared.meet_connected();
    if let Some(e) = failure {
        if shared.pubsub.is_some() {
            shared.barrier.wait();
            shared.barrier.wait();
        }
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
    let mut fault = None;
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
        if let Err(e) = worker.turn(now, until) {
            fault = Some(e);
            break;
        }
    }
    worker.finished = true;
    worker.report_progress();
    let unanswered = worker.unanswered(Instant::now());
    let cpu_end = (thread_cpu(), Instant::now());
    let mut grace = (Duration::ZERO, false);
    if let Some(ps) = &shared.pubsub {
        // Every publish of every thread is counted in `pending` before anyone settles.
        shared.barrier.wait();
        if fault.is_none() {
            let start = Instant::now();
            match worker.settle(ps, config.grace, start + config.grace + config.timeout) {
                Ok(settled) => grace = (start.elapsed(), settled),
                Err(e) => fault = Some(e),
            }
        }
        worker.report_progress();
        shared.barrier.wait();
        progress.set_phase(Phase::Done);
        std::thread::sleep(LINGER);
    }
    if let Some(e) = fault {
        return Err(e);
    }
    let (cpu, measured) = match cpu_start {
        Some((before, at)) => {
            let end = cpu_end.1.min(window.end);
            (cpu_end.0.since(before), end.saturating_duration_since(at))
        }
        None => (CpuTimes::default(), Duration::ZERO),
    };
    let pubsub = worker.pubsub_result(grace);
    Ok(ThreadResult {
        pubsub,
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
        unanswered,
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
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::TimedOut => ErrorKind::Reset,
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
    fn new(shared: &'a Shared, sources: Vec<(usize, Option<IpAddr>)>) -> io::Result<Self> {
        let config = &shared.config;
        let now = Instant::now();
        let threads = config.threads.max(1) as f64;
        let role = |i: usize| match &shared.pubsub {
            None => Role::Request,
            Some(ps) if i < ps.plan.subscribers => Role::Subscriber {
                tally: SubscriberTally::new(ps.plan.channel_of_subscriber(i), ps.plan.publishers),
                subscribed: false,
            },
            Some(ps) => Role::Publisher {
                id: (i - ps.plan.subscribers) as u32,
                sent: 0,
                seq: vec![0; ps.plan.channels.len()],
            },
        };
        let conns: Vec<Conn> = sources
            .into_iter()
            .map(|(i, source)| Conn {
                role: role(i),
                frames: FrameBuffer::new(),
                stream: None,
                state: State::Down,
                generation: 0,
                source,
                out: Vec::new(),
                out_pos: 0,
                inbuf: Vec::new(),
                pending: VecDeque::new(),
                answered: false,
                seq: 0,
            })
            .collect();
        let ps = shared.pubsub.as_ref().map(|ps| {
            let publishers: Vec<usize> = (0..conns.len())
                .filter(|&k| matches!(conns[k].role, Role::Publisher { .. }))
                .collect();
            PubSubWorker {
                subscribers: conns.len() - publishers.len(),
                publishers,
                rr: 0,
                subscribed: 0,
                delivery: new_histogram(),
                published: vec![0; ps.plan.channels.len()],
                receivers: 0,
                unconfirmed: 0,
                receivers_delta: 0,
                delivered_delta: 0,
                pending_delta: 0,
            }
        });
        // Open loop: this thread's share of the rate. Pub/sub: only publishers send,
        // so the share is this thread's publishers' share.
        let interval = match (&ps, config.rate) {
            (Some(ps), Some(r)) if !ps.publishers.is_empty() => {
                let share = ps.publishers.len() as f64 / config.publishers.max(1) as f64;
                Duration::try_from_secs_f64(1.0 / (r * share)).ok()
            }
            (Some(_), _) => None,
            (None, r) => r.and_then(|r| Duration::try_from_secs_f64(threads / r).ok()),
        };
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
            interval,
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
            ps,
        })
    }

    /// Every connection is open (and, for pub/sub, every subscription confirmed).
    fn ready(&self) -> bool {
        self.open == self.conns.len()
            && self
                .ps
                .as_ref()
                .is_none_or(|ps| ps.subscribed == ps.subscribers)
    }

    fn is_subscriber(&self, i: usize) -> bool {
        matches!(self.conns[i].role, Role::Subscriber { .. })
    }

    /// After the barrier: requests start flowing (unless idle).
    fn start_load(&mut self, origin: Instant, window: Window) {
        self.window = Some(window);
        self.origin = origin;
        if self.shared.config.idle {
            return;
        }
        self.loading = true;
        if self.ps.is_some() {
            // Only subscribers confirmed now expect deliveries; the others are closed
            // and not reopened (they would see only part of the stream).
            for i in 0..self.conns.len() {
                if let Role::Subscriber { tally, subscribed } = &mut self.conns[i].role {
                    tally.counted = *subscribed;
                    if !*subscribed {
                        self.close(i);
                    }
                }
            }
            let conns = &self.conns;
            let publisher = |i: &usize| !matches!(conns[*i].role, Role::Subscriber { .. });
            self.fresh.retain(publisher);
            self.retry.retain(|(_, i)| publisher(i));
            return;
        }
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
        if let (Some(ps), Some(shared)) = (&mut self.ps, &self.shared.pubsub) {
            if ps.pending_delta != 0 {
                shared.pending.fetch_add(ps.pending_delta, Ordering::AcqRel);
                ps.pending_delta = 0;
            }
            if ps.receivers_delta > 0 {
                shared
                    .receivers
                    .fetch_add(ps.receivers_delta, Ordering::AcqRel);
                ps.receivers_delta = 0;
            }
            if ps.delivered_delta > 0 {
                shared
                    .delivered
                    .fetch_add(ps.delivered_delta, Ordering::AcqRel);
                ps.delivered_delta = 0;
            }
        }
    }

    /// Pub/sub, after the window: reads on until every delivery the server announced
    /// has arrived (true), or none arrived for `grace`, or `hard_end` (false).
    fn settle(
        &mut self,
        shared: &PubSubShared,
        grace: Duration,
        hard_end: Instant,
    ) -> io::Result<bool> {
        let mut last = u64::MAX;
        let mut quiet_since = Instant::now();
        loop {
            self.report_progress();
            if shared.settled() {
                return Ok(true);
            }
            let now = Instant::now();
            let delivered = shared.delivered.load(Ordering::Acquire);
            if delivered != last {
                last = delivered;
                quiet_since = now;
            }
            let end = (quiet_since + grace).min(hard_end);
            if now >= end || self.shared.progress.stopped() {
                return Ok(false);
            }
            self.turn(now, end)?;
        }
    }

    /// Pub/sub: what this thread counted, the subscribers' tallies taken out.
    fn pubsub_result(&mut self, (grace, settled): (Duration, bool)) -> Option<PubSubResult> {
        let ps = self.ps.as_mut()?;
        let mut unconfirmed = ps.unconfirmed;
        let mut subscribers = Vec::with_capacity(ps.subscribers);
        for c in &mut self.conns {
            match &mut c.role {
                Role::Subscriber { tally, .. } => subscribers.push(std::mem::take(tally)),
                Role::Publisher { .. } => unconfirmed += c.pending.len() as u64,
                Role::Request => {}
            }
        }
        Some(PubSubResult {
            delivery: std::mem::replace(&mut ps.delivery, new_histogram()),
            published: std::mem::take(&mut ps.published),
            receivers: ps.receivers,
            unconfirmed,
            subscribers,
            grace,
            settled,
        })
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
        // A subscriber lost after publishing began stays closed: it is counted as
        // disconnected, and a new subscription would see only part of the stream.
        let retire = self.loading && self.is_subscriber(i);
        if let (true, Role::Subscriber { tally, .. }) = (retire, &mut self.conns[i].role) {
            tally.disconnected = tally.counted;
        }
        self.close(i);
        if !self.finished && !retire {
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
        match &mut c.role {
            Role::Subscriber { subscribed, .. } => {
                if let (true, Some(ps)) = (*subscribed, &mut self.ps) {
                    ps.subscribed -= 1;
                }
                *subscribed = false;
            }
            Role::Publisher { .. } => {
                if let Some(ps) = &mut self.ps {
                    ps.unconfirmed += c.pending.len() as u64;
                    ps.pending_delta -= c.pending.len() as i64;
                }
            }
            Role::Request => {}
        }
        c.frames.clear();
        c.state = State::Down;
        // Dropping the socket removes it from the epoll set.
        c.stream = None;
        c.generation = c.generation.wrapping_add(1);
        c.out.clear();
        c.out_pos = 0;
        c.inbuf.clear();
        c.pending.clear();
        c.answered = false;
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
        if let (Role::Subscriber { tally, .. }, Some(ps)) = (&c.role, &self.shared.pubsub) {
            ps.plan.write_subscribe(tally.channel, &mut c.out);
            c.pending.push_back(Pending {
                start: now,
                expect: Expect::Subscribed,
            });
        }
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
        if self.is_subscriber(i) {
            return self.take_pushes(i, n, now);
        }
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
                        if let (Expect::Published(ch), Some(ps)) = (p.expect, &mut self.ps) {
                            if let Some(n) = ps.published.get_mut(ch as usize) {
                                *n += 1;
                            }
                            ps.receivers += taken.count;
                            ps.receivers_delta += taken.count;
                            ps.pending_delta -= 1;
                        }
                        if let Some(w) = self.window {
                            // Pub/sub publishes only inside the window; its replies
                            // count whenever they come (the grace period too).
                            if (now >= w.start && now <= w.end) || self.ps.is_some() {
                                let ns = now.saturating_duration_since(p.start).as_nanos();
                                self.latency.saturating_record(
                                    u64::try_from(ns).unwrap_or(u64::MAX).max(1),
                                );
                                self.requests += 1;
                            }
                        }
                        c.pending.pop_front();
                        c.answered = true;
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

    /// Pub/sub: frames the pushes in the `n` bytes just read by subscriber `i`
    /// (confirmations and messages), records each message's delivery latency. False if
    /// the connection failed.
    fn take_pushes(&mut self, i: usize, n: usize, now: Instant) -> bool {
        let (Some(shared), Some(ps)) = (&self.shared.pubsub, &mut self.ps) else {
            return true;
        };
        let c = &mut self.conns[i];
        let Role::Subscriber { tally, subscribed } = &mut c.role else {
            return true;
        };
        let pending = &mut c.pending;
        let answered = &mut c.answered;
        let name = shared.plan.channels[tally.channel as usize].as_bytes();
        let epoch = shared.epoch;
        let delivery = &mut ps.delivery;
        let mut confirmed = 0;
        let mut received = 0;
        let result = c
            .frames
            .feed(&self.read_buf[..n], |frame| match classify(&frame) {
                Push::Subscribed { channel } if channel == name && !*subscribed => {
                    if pending.pop_front().is_none() {
                        return Err("a subscribe confirmation nobody asked for".into());
                    }
                    *subscribed = true;
                    *answered = true;
                    confirmed += 1;
                    Ok(())
                }
                Push::Subscribed { .. } => Err("an unexpected subscribe confirmation".into()),
                Push::Message { channel, payload } => {
                    if channel != name {
                        return Err(format!(
                            "a message on channel {:?}, subscribed to {:?}",
                            String::from_utf8_lossy(channel),
                            String::from_utf8_lossy(name)
                        ));
                    }
                    let stamp = Stamp::read(payload).ok_or_else(|| {
                        format!("a message of {} bytes, too short", payload.len())
                    })?;
                    tally.receive(&stamp)?;
                    let sent = epoch + Duration::from_nanos(stamp.sent_ns);
                    let ns = now.saturating_duration_since(sent).as_nanos();
                    delivery.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                    received += 1;
                    Ok(())
                }
                Push::Error(e) => Err(format!("RESP error: {}", String::from_utf8_lossy(e))),
                Push::Other(what) => Err(format!("a subscriber received {what}")),
            });
        ps.subscribed += confirmed;
        ps.delivered_delta += received;
        self.replies_delta += received;
        if let Err(why) = result {
            self.fail(i, now, ErrorKind::BadReply, &why);
            return false;
        }
        true
    }

    /// Pub/sub: appends publisher `i`'s next message, due at `due`.
    fn queue_publish(&mut self, i: usize, due: Instant) {
        let (Some(shared), Some(ps)) = (&self.shared.pubsub, &mut self.ps) else {
            return;
        };
        let c = &mut self.conns[i];
        let Role::Publisher { id, sent, seq } = &mut c.role else {
            return;
        };
        let channel = shared.plan.channel_of_message(*id, *sent);
        *sent += 1;
        let Some(next) = seq.get_mut(channel as usize) else {
            return;
        };
        let stamp = Stamp {
            sent_ns: u64::try_from(due.saturating_duration_since(shared.epoch).as_nanos())
                .unwrap_or(u64::MAX),
            seq: *next,
            publisher: *id,
            channel,
        };
        *next += 1;
        shared.plan.write_publish(&stamp, &mut c.out);
        c.pending.push_back(Pending {
            start: due,
            expect: Expect::Published(channel),
        });
        ps.pending_delta += 1;
    }

    /// Open loop: the next open connection to send on, round robin (pub/sub: the next
    /// open publisher).
    fn next_sender(&mut self) -> Option<usize> {
        let conns = &self.conns;
        let (candidates, rr): (Option<&[usize]>, &mut usize) = match &mut self.ps {
            Some(ps) => (Some(&ps.publishers), &mut ps.rr),
            None => (None, &mut self.rr),
        };
        let n = candidates.map_or(conns.len(), <[usize]>::len);
        for _ in 0..n {
            *rr = (*rr + 1) % n;
            let i = candidates.map_or(*rr, |c| c[*rr]);
            if conns[i].state == State::Open {
                return Some(i);
            }
        }
        None
    }

    /// Closed loop: tops connection `i` up to `pipeline` outstanding requests.
    fn fill(&mut self, i: usize, now: Instant) {
        if self.ps.is_some() {
            return; // pub/sub is open loop only
        }
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
            match self.next_sender() {
                Some(i) => {
                    if self.ps.is_some() {
                        self.queue_publish(i, due);
                    } else {
                        self.queue(i, due);
                    }
                    self.flush(i, now);
                }
                None => self.note_error(ErrorKind::NoConnection, || {
                    "a request was due while no connection was open".into()
                }),
            }
        }
    }

    /// Connections open at `now` that never had a reply, their oldest request sent
    /// over [`UNANSWERED_AFTER`] before.
    fn unanswered(&self, now: Instant) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.state == State::Open && !c.answered)
            .filter(|c| {
                c.pending
                    .front()
                    .is_some_and(|p| now.saturating_duration_since(p.start) >= UNANSWERED_AFTER)
            })
            .count() as u64
    }

    fn scan_timeouts(&mut self, now: Instant) {
        let timeout = self.shared.config.timeout;
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Connecting { since } if now.saturating_duration_since(since) > timeout => {
                    self.fail(i, now, ErrorKind::ConnectTimeout, "connect timed out");
                }
                State::Open => {
                    let c = &self.conns[i];
                    let late = c
                        .pending
                        .front()
                        .is_some_and(|p| now.saturating_duration_since(p.start) > timeout);
                    if late && c.answered {
                        self.fail(
                            i,
                            now,
                            ErrorKind::ReplyTimeout,
                            "no reply within the timeout",
                        );
                    } else if late {
                        self.fail(
                            i,
                            now,
                            ErrorKind::FirstReplyTimeout,
                            "no reply within the timeout on a connection never answered",
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

//! The accept path shared by every strategy: binding listeners, accepting without
//! blocking, refusing beyond `--max-conns`, and surviving fd exhaustion.
//!
//! One table says what an accept error means ([`classify`]), for accept(2) and for
//! io_uring's accept completions alike; one loop ([`AcceptBatch`]) answers a readable
//! listener for every strategy that calls accept(2) itself.
//!
//! EMFILE/ENFILE (and ENOBUFS/ENOMEM) leave the pending connection in the backlog, so
//! a level-triggered loop that keeps calling accept would spin at 100% CPU. Instead the
//! strategy stops watching the listener for a back-off period (10 ms doubling to 1 s),
//! logs at most once a second, and counts the pause. Connections already open keep
//! being served, and accepting resumes by itself once descriptors free up.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SocketFlags;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::AcceptMode;
use crate::ratelog::RateLog;
use crate::stats::{OpenConns, WorkerStats};

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bind the listeners for `workers` event loops: one shared listener
/// ([`AcceptMode::Exclusive`]) or one `SO_REUSEPORT` listener per worker. With port 0
/// the first bind picks the port and the others join it.
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
    mode: AcceptMode,
    backlog: i32,
) -> io::Result<Vec<TcpListener>> {
    let reuseport = mode == AcceptMode::Reuseport;
    let first = bind_one(addr, reuseport, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    if reuseport {
        for _ in 1..workers {
            all.push(bind_one(actual, true, backlog)?);
        }
    }
    Ok(all)
}

/// One nonblocking listening socket.
pub(crate) fn bind_one(addr: SocketAddr, reuseport: bool, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// What an accept error means to an accept loop: the one table for accept(2) and
/// io_uring's accept completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorKind {
    /// Nothing is waiting (`EAGAIN`).
    Empty,
    /// A connection failed before we got it (accept(2) reports the errors already
    /// pending on the new connection), or a signal interrupted: try again.
    Retry,
    /// Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): the
    /// connection stays in the backlog, so accepting again at once would spin. Pause.
    Exhausted,
    /// Anything else (counted and logged by the caller).
    Failed,
}

/// Classify an error of accept(2) (or of an io_uring accept).
pub(crate) fn classify(errno: Errno) -> AcceptErrorKind {
    match errno {
        Errno::AGAIN => AcceptErrorKind::Empty,
        // accept(2): errors already pending on the new connection are reported here.
        Errno::INTR
        | Errno::CONNABORTED
        | Errno::PROTO
        | Errno::NOPROTOOPT
        | Errno::HOSTDOWN
        | Errno::NONET
        | Errno::HOSTUNREACH
        | Errno::OPNOTSUPP
        | Errno::NETUNREACH
        | Errno::NETDOWN
        | Errno::PERM => AcceptErrorKind::Retry,
        Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM => AcceptErrorKind::Exhausted,
        _ => AcceptErrorKind::Failed,
    }
}

/// What one accept call produced.
pub(crate) enum Accepted {
    /// A new connection, nonblocking, with `TCP_NODELAY` set.
    Conn(TcpStream, Option<SocketAddr>),
    /// Nothing is waiting.
    Empty,
    /// A connection failed before we got it, or a signal interrupted: try again.
    Retry,
    /// Out of descriptors or memory: pause accepting.
    Exhausted(io::Error),
    /// Anything else (counted and logged by the caller).
    Failed(io::Error),
}

/// Accept one connection without blocking.
pub(crate) fn accept_one(listener: &TcpListener) -> Accepted {
    match rustix::net::acceptfrom_with(
        listener.as_fd(),
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
    ) {
        Ok((fd, addr)) => {
            let stream = TcpStream::from(fd);
            // Replies are written whole; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            Accepted::Conn(stream, addr.and_then(|a| SocketAddr::try_from(a).ok()))
        }
        Err(e) => match classify(e) {
            AcceptErrorKind::Empty => Accepted::Empty,
            AcceptErrorKind::Retry => Accepted::Retry,
            AcceptErrorKind::Exhausted => Accepted::Exhausted(e.into()),
            AcceptErrorKind::Failed => Accepted::Failed(e.into()),
        },
    }
}

/// What admitting a connection counts against: the open connections, `--max-conns`,
/// and the worker's counters.
#[derive(Clone, Copy)]
pub(crate) struct Admission<'a> {
    open: &'a OpenConns,
    max_conns: usize,
    stats: &'a WorkerStats,
}

impl<'a> Admission<'a> {
    pub(crate) fn new(open: &'a OpenConns, max_conns: usize, stats: &'a WorkerStats) -> Self {
        Admission {
            open,
            max_conns,
            stats,
        }
    }
}

/// The accepts that answer one report of a readable listener: [`accept_one`] in a
/// loop, each connection admitted (or refused) by the [`AcceptGuard`], until nothing
/// is waiting, `limit` accepts were made (refused and retried ones count), or
/// accepting must stop: a failure (counted, logged), or exhaustion, which pauses the
/// guard (see [`paused`](Self::paused)).
///
/// The caller owns the loop, so its body may use the rest of its state mutably:
///
/// ```text
/// let mut batch = AcceptBatch::new(ACCEPT_BATCH);
/// while let Some((stream, addr)) = batch.next(&listener, &mut guard, now, admission) {
///     // serve it
/// }
/// if batch.paused() {
///     // stop watching the listener until `guard.resume_due`
/// }
/// ```
#[derive(Debug)]
pub(crate) struct AcceptBatch {
    left: usize,
    paused: bool,
}

impl AcceptBatch {
    /// At most `limit` accepts (`usize::MAX`: until nothing is waiting, as an
    /// edge-triggered report requires).
    pub(crate) fn new(limit: usize) -> Self {
        AcceptBatch {
            left: limit,
            paused: false,
        }
    }

    /// The next admitted connection, or `None` once the batch is over.
    pub(crate) fn next(
        &mut self,
        listener: &TcpListener,
        guard: &mut AcceptGuard,
        now: Instant,
        admission: Admission<'_>,
    ) -> Option<(TcpStream, Option<SocketAddr>)> {
        while self.left > 0 {
            self.left -= 1;
            if let Some(conn) = self.take(accept_one(listener), guard, now, admission) {
                return Some(conn);
            }
        }
        None
    }

    /// Apply one accept's result: an admitted connection is returned; a failure or
    /// exhaustion is counted and ends the batch, as does an empty backlog.
    fn take(
        &mut self,
        accepted: Accepted,
        guard: &mut AcceptGuard,
        now: Instant,
        admission: Admission<'_>,
    ) -> Option<(TcpStream, Option<SocketAddr>)> {
        let Admission {
            open,
            max_conns,
            stats,
        } = admission;
        match accepted {
            Accepted::Conn(stream, addr) => {
                if guard.admit(now, open, max_conns, stats) {
                    return Some((stream, addr));
                }
            }
            Accepted::Retry => {}
            Accepted::Empty => self.left = 0,
            Accepted::Exhausted(e) => {
                guard.exhausted(now, &e, stats, open);
                self.paused = true;
                self.left = 0;
            }
            Accepted::Failed(e) => {
                guard.failed(now, &e, stats);
                self.left = 0;
            }
        }
        None
    }

    /// Accepting was paused (out of descriptors or memory): stop watching the
    /// listener until the guard's pause is over.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }
}

/// Accept-side policy of one worker: `--max-conns` refusals and EMFILE back-off.
#[derive(Debug)]
pub(crate) struct AcceptGuard {
    backoff: Duration,
    paused_until: Option<Instant>,
    exhausted_log: RateLog,
    refused_log: RateLog,
    backend_log: RateLog,
    failed_log: RateLog,
}

impl AcceptGuard {
    pub(crate) fn new() -> Self {
        AcceptGuard {
            backoff: BACKOFF_MIN,
            paused_until: None,
            exhausted_log: RateLog::new(Duration::from_secs(1)),
            refused_log: RateLog::new(Duration::from_secs(1)),
            backend_log: RateLog::new(Duration::from_secs(1)),
            failed_log: RateLog::new(Duration::from_secs(1)),
        }
    }

    /// Take a connection slot, or refuse the connection (it is closed on drop) and
    /// count it. Returns whether the connection may be served.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        open: &OpenConns,
        max_conns: usize,
        stats: &WorkerStats,
    ) -> bool {
        self.backoff = BACKOFF_MIN;
        if open.try_acquire(max_conns) {
            WorkerStats::add(&stats.accepted, 1);
            return true;
        }
        WorkerStats::add(&stats.refused_max_conns, 1);
        if let Some(n) = self.refused_log.hit(now) {
            tracing::warn!("refused {n} connection(s): --max-conns {max_conns} reached");
        }
        false
    }

    /// An admitted connection was refused after all, for want of a thread or a
    /// process to serve it (`why`): the caller has closed it and released its slot.
    /// Counted in `refused_backend`, logged at most once a second.
    pub(crate) fn refused_backend(
        &mut self,
        now: Instant,
        why: fmt::Arguments<'_>,
        stats: &WorkerStats,
        open: &OpenConns,
    ) {
        WorkerStats::add(&stats.refused_backend, 1);
        if let Some(n) = self.backend_log.hit(now) {
            tracing::warn!("refused {n} connection(s): {why}; {} open", open.current());
        }
    }

    /// Accepting failed for lack of resources: pause, and return when to resume.
    pub(crate) fn exhausted(
        &mut self,
        now: Instant,
        err: &io::Error,
        stats: &WorkerStats,
        open: &OpenConns,
    ) -> Instant {
        WorkerStats::add(&stats.accept_pauses, 1);
        let until = now + self.backoff;
        if let Some(n) = self.exhausted_log.hit(now) {
            tracing::warn!(
                "accept failed ({err}); pausing accepts for {:?} ({n} pause(s) this second, {} connections open)",
                self.backoff,
                open.current()
            );
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.paused_until = Some(until);
        until
    }

    /// Any other accept failure: count and log.
    pub(crate) fn failed(&mut self, now: Instant, err: &io::Error, stats: &WorkerStats) {
        WorkerStats::add(&stats.accept_errors, 1);
        if let Some(n) = self.failed_log.hit(now) {
            tracing::warn!("accept failed: {err} ({n} time(s))");
        }
    }

    /// When accepting should resume, if paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Resume accepting if the pause is over; returns true when it just ended.
    pub(crate) fn resume_due(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(t) if t <= now => {
                self.paused_until = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_binds_one_listener_per_worker_on_one_port() {
        let ls =
            bind_listeners("127.0.0.1:0".parse().unwrap(), 3, AcceptMode::Reuseport, 16).unwrap();
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        let ex =
            bind_listeners("127.0.0.1:0".parse().unwrap(), 3, AcceptMode::Exclusive, 16).unwrap();
        assert_eq!(ex.len(), 1);
    }

    #[test]
    fn accept_reports_empty_then_a_connection() {
        let l = bind_one("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        assert!(matches!(accept_one(&l), Accepted::Empty));
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut got = None;
        for _ in 0..100 {
            if let Accepted::Conn(s, peer) = accept_one(&l) {
                got = Some((s, peer));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (_s, peer) = got.expect("the connection is accepted");
        assert!(peer.unwrap().ip().is_loopback());
    }

    #[test]
    fn classify_sorts_every_accept_error() {
        use AcceptErrorKind::*;
        assert_eq!(classify(Errno::AGAIN), Empty);
        assert_eq!(classify(Errno::WOULDBLOCK), Empty);
        for e in [
            Errno::INTR,
            Errno::CONNABORTED,
            Errno::PROTO,
            Errno::NOPROTOOPT,
            Errno::HOSTDOWN,
            Errno::NONET,
            Errno::HOSTUNREACH,
            Errno::OPNOTSUPP,
            Errno::NETUNREACH,
            Errno::NETDOWN,
            Errno::PERM,
        ] {
            assert_eq!(classify(e), Retry, "{e}");
        }
        for e in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            assert_eq!(classify(e), Exhausted, "{e}");
        }
        for e in [Errno::BADF, Errno::INVAL, Errno::NOTSOCK, Errno::FAULT] {
            assert_eq!(classify(e), Failed, "{e}");
        }
    }

    /// A worker's accept-side state, for driving an [`AcceptBatch`].
    struct Worker {
        stats: WorkerStats,
        open: OpenConns,
        guard: AcceptGuard,
    }

    impl Worker {
        fn new() -> Self {
            Worker {
                stats: WorkerStats::default(),
                open: OpenConns::default(),
                guard: AcceptGuard::new(),
            }
        }

        /// Run `batch` to its end with `--max-conns max`; returns how many it yielded.
        fn drain(&mut self, batch: &mut AcceptBatch, l: &TcpListener, max: usize) -> usize {
            let admission = Admission::new(&self.open, max, &self.stats);
            let mut n = 0;
            while let Some((_stream, peer)) =
                batch.next(l, &mut self.guard, Instant::now(), admission)
            {
                assert!(peer.unwrap().ip().is_loopback());
                n += 1;
            }
            n
        }

        /// Apply one accept result to `batch`.
        fn take(&mut self, batch: &mut AcceptBatch, accepted: Accepted, now: Instant) -> bool {
            let admission = Admission::new(&self.open, 10, &self.stats);
            batch
                .take(accepted, &mut self.guard, now, admission)
                .is_some()
        }

        fn count(&self, counter: fn(&WorkerStats) -> &std::sync::atomic::AtomicU64) -> u64 {
            WorkerStats::get(counter(&self.stats))
        }
    }

    /// A listener with `n` connections queued (loopback completes the handshake
    /// within connect), and the clients.
    fn queued(n: usize) -> (TcpListener, Vec<TcpStream>) {
        let l = bind_one("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        let clients = (0..n)
            .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        (l, clients)
    }

    #[test]
    fn a_batch_stops_at_its_limit_and_when_nothing_is_waiting() {
        let (l, _clients) = queued(3);
        let mut w = Worker::new();
        let mut batch = AcceptBatch::new(2);
        assert_eq!(w.drain(&mut batch, &l, 10), 2, "the limit is honoured");
        assert!(!batch.paused());
        let mut batch = AcceptBatch::new(usize::MAX);
        assert_eq!(
            w.drain(&mut batch, &l, 10),
            1,
            "it ends when nothing is waiting"
        );
        assert!(!batch.paused());
        assert_eq!(w.count(|s| &s.accepted), 3);
        assert_eq!(w.open.current(), 3);
        assert_eq!(w.count(|s| &s.accept_errors), 0);
    }

    #[test]
    fn a_batch_refuses_beyond_max_conns_and_counts_refusals_against_its_limit() {
        let (l, _clients) = queued(3);
        let mut w = Worker::new();
        let mut batch = AcceptBatch::new(2);
        // The second is refused (closed), and the limit of 2 is used up.
        assert_eq!(w.drain(&mut batch, &l, 1), 1);
        assert_eq!(w.count(|s| &s.refused_max_conns), 1);
        // Once over, a batch stays over.
        assert_eq!(w.drain(&mut batch, &l, 10), 0);
        assert_eq!(w.count(|s| &s.accepted), 1);
    }

    #[test]
    fn a_batch_on_a_broken_listener_fails_once_and_stops() {
        // Not listening: accept(2) fails with EINVAL, an error that is not a pause.
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let l: TcpListener = s.into();
        let mut w = Worker::new();
        let mut batch = AcceptBatch::new(usize::MAX);
        assert_eq!(w.drain(&mut batch, &l, 10), 0);
        assert!(!batch.paused());
        assert_eq!(w.count(|s| &s.accept_errors), 1);
        assert_eq!(w.guard.paused_until(), None);
    }

    #[test]
    fn exhaustion_pauses_the_guard_and_ends_the_batch() {
        let (l, _clients) = queued(1);
        let mut w = Worker::new();
        let mut batch = AcceptBatch::new(usize::MAX);
        let now = Instant::now();
        assert!(!w.take(&mut batch, Accepted::Exhausted(Errno::MFILE.into()), now));
        assert!(batch.paused());
        assert_eq!(w.guard.paused_until(), Some(now + BACKOFF_MIN));
        assert_eq!(w.count(|s| &s.accept_pauses), 1);
        // The queued connection stays in the backlog until the pause is over.
        assert_eq!(w.drain(&mut batch, &l, 10), 0);
        assert_eq!(w.count(|s| &s.accepted), 0);
        assert!(matches!(accept_one(&l), Accepted::Conn(..)));
    }

    #[test]
    fn a_retry_does_not_end_the_batch() {
        let mut w = Worker::new();
        let mut batch = AcceptBatch::new(3);
        let now = Instant::now();
        assert!(!w.take(&mut batch, Accepted::Retry, now));
        assert_eq!(batch.left, 3, "a retry leaves the batch going");
        assert!(!w.take(&mut batch, Accepted::Empty, now));
        assert_eq!(batch.left, 0, "an empty backlog ends it");
        assert!(!batch.paused());
        assert_eq!(w.count(|s| &s.accept_errors), 0);
    }

    #[test]
    fn back_off_doubles_to_a_ceiling_and_resets_on_success() {
        let stats = WorkerStats::default();
        let open = OpenConns::default();
        let mut g = AcceptGuard::new();
        let t0 = Instant::now();
        let err = io::Error::from_raw_os_error(24);
        assert_eq!(g.exhausted(t0, &err, &stats, &open), t0 + BACKOFF_MIN);
        assert_eq!(g.exhausted(t0, &err, &stats, &open), t0 + BACKOFF_MIN * 2);
        for _ in 0..20 {
            g.exhausted(t0, &err, &stats, &open);
        }
        assert_eq!(g.exhausted(t0, &err, &stats, &open), t0 + BACKOFF_MAX);
        assert!(!g.resume_due(t0));
        assert!(g.resume_due(t0 + BACKOFF_MAX));
        assert!(g.admit(t0, &open, 10, &stats));
        assert_eq!(g.exhausted(t0, &err, &stats, &open), t0 + BACKOFF_MIN);
        assert_eq!(WorkerStats::get(&stats.accept_pauses), 24);
    }

    #[test]
    fn admit_refuses_beyond_max_conns() {
        let stats = WorkerStats::default();
        let open = OpenConns::default();
        let mut g = AcceptGuard::new();
        let now = Instant::now();
        assert!(g.admit(now, &open, 1, &stats));
        assert!(!g.admit(now, &open, 1, &stats));
        assert_eq!(WorkerStats::get(&stats.refused_max_conns), 1);
        assert_eq!(WorkerStats::get(&stats.accepted), 1);
    }
}

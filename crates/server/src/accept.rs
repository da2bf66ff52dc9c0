//! The accept path shared by every strategy: binding listeners, accepting without
//! blocking, refusing beyond `--max-conns`, and surviving fd exhaustion.
//!
//! EMFILE/ENFILE (and ENOBUFS/ENOMEM) leave the pending connection in the backlog, so
//! a level-triggered loop that keeps calling accept would spin at 100% CPU. Instead the
//! strategy stops watching the listener for a back-off period (10 ms doubling to 1 s),
//! logs at most once a second, and counts the pause. Connections already open keep
//! being served, and accepting resumes by itself once descriptors free up.

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
        Err(Errno::AGAIN) => Accepted::Empty,
        // accept(2): errors already pending on the new connection are reported here.
        Err(
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
            | Errno::PERM,
        ) => Accepted::Retry,
        Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
            Accepted::Exhausted(e.into())
        }
        Err(e) => Accepted::Failed(e.into()),
    }
}

/// Accept-side policy of one worker: `--max-conns` refusals and EMFILE back-off.
#[derive(Debug)]
pub(crate) struct AcceptGuard {
    backoff: Duration,
    paused_until: Option<Instant>,
    exhausted_log: RateLog,
    refused_log: RateLog,
    failed_log: RateLog,
}

impl AcceptGuard {
    pub(crate) fn new() -> Self {
        AcceptGuard {
            backoff: BACKOFF_MIN,
            paused_until: None,
            exhausted_log: RateLog::new(Duration::from_secs(1)),
            refused_log: RateLog::new(Duration::from_secs(1)),
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

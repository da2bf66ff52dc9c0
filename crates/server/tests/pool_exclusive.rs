//! Behaviour tests of the `pool` strategy: a connection is owned by one worker at a
//! time, its bytes reach the session in order, no more sessions run at once than
//! there are workers, and a session that panics costs only its own connection.
//!
//! In-process servers (`Server::builder().strategy(Strategy::Pool)...spawn()`) on
//! real loopback sockets.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use c10k_proto::{App, Cx, Peer, ProtoError, Session};
use c10k_server::{Server, Strategy};

const POOL: usize = 4;
const CLIENTS: usize = 32;
const REQUESTS: u32 = 1000;
/// Time a session call spends inside, to widen the window for a second worker to
/// enter the same connection (if the strategy ever let one).
const DWELL: Duration = Duration::from_micros(200);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What every session reports.
#[derive(Default)]
struct Record {
    /// A session was entered while already in use.
    reentered: AtomicUsize,
    /// A request arrived out of order.
    out_of_order: AtomicUsize,
    /// Sessions running right now, and the most ever at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
    calls: AtomicUsize,
}

/// Each input line is a decimal sequence number, expected to be one more than the
/// last; the reply is the same line. A line `panic` panics.
struct Sequenced(Arc<Record>);

struct SequencedSession {
    record: Arc<Record>,
    in_use: AtomicBool,
    next: u32,
}

impl App for Sequenced {
    type Session = SequencedSession;
    fn open(&self, _peer: &Peer) -> SequencedSession {
        SequencedSession {
            record: Arc::clone(&self.0),
            in_use: AtomicBool::new(false),
            next: 0,
        }
    }
}

impl SequencedSession {
    /// Mark the session in use for the length of `f`, counting re-entries and how
    /// many sessions run at once.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let r = Arc::clone(&self.record);
        if self.in_use.swap(true, SeqCst) {
            r.reentered.fetch_add(1, SeqCst);
        }
        let now = r.active.fetch_add(1, SeqCst) + 1;
        r.max_active.fetch_max(now, SeqCst);
        r.calls.fetch_add(1, SeqCst);
        thread::sleep(DWELL);
        let out = f(self);
        r.active.fetch_sub(1, SeqCst);
        if !self.in_use.swap(false, SeqCst) {
            r.reentered.fetch_add(1, SeqCst);
        }
        out
    }
}

impl Session for SequencedSession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        self.guarded(|s| {
            let mut used = 0;
            while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
                let line = &input[used..used + nl];
                if line == b"panic" {
                    panic!("this session panics on purpose");
                }
                let seq: Option<u32> = std::str::from_utf8(line).ok().and_then(|t| t.parse().ok());
                if seq != Some(s.next) {
                    s.record.out_of_order.fetch_add(1, SeqCst);
                }
                s.next = seq.unwrap_or(s.next).wrapping_add(1);
                out.extend_from_slice(&input[used..=used + nl]);
                used += nl + 1;
            }
            Ok(used)
        })
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.guarded(|_| ());
    }

    fn wants_close(&self) -> bool {
        false
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A tiny seeded PRNG (xorshift64).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One client: pipelines `REQUESTS` numbered lines in bursts of 1..=16, each burst
/// written in two pieces split at a random byte (so lines arrive cut in half), and
/// checks that every burst's replies come back whole and in order.
fn client(addr: SocketAddr, seed: u64) {
    let mut s = connect(addr);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut seq = 0u32;
    while seq < REQUESTS {
        let n = (1 + rng.below(16) as u32).min(REQUESTS - seq);
        let burst: String = (seq..seq + n).map(|i| format!("{i}\n")).collect();
        let cut = rng.below(burst.len() as u64) as usize;
        s.write_all(&burst.as_bytes()[..cut]).unwrap();
        if rng.below(2) == 0 {
            thread::sleep(Duration::from_micros(100));
        }
        s.write_all(&burst.as_bytes()[cut..]).unwrap();
        let mut got = vec![0u8; burst.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("client {seed}: reading replies {seq}..: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            burst,
            "client {seed}: replies out of order or corrupted"
        );
        seq += n;
    }
}

#[test]
fn a_connection_is_served_by_one_worker_at_a_time_and_in_order() {
    let record = Arc::new(Record::default());
    let handle = Server::builder()
        .strategy(Strategy::Pool)
        .workers(POOL)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Sequenced(Arc::clone(&record)))
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    // The pool is one event loop with its own worker threads: one set of counters.
    assert_eq!(handle.stats().len(), 1);
    let addr = handle.local_addr();
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|seed| thread::spawn(move || client(addr, seed)))
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    handle.shutdown();
    let report = handle.join().unwrap();

    assert_eq!(record.reentered.load(SeqCst), 0, "a session was re-entered");
    assert_eq!(
        record.out_of_order.load(SeqCst),
        0,
        "a session saw requests out of order"
    );
    let max = record.max_active.load(SeqCst);
    assert!(
        max <= POOL,
        "{max} sessions ran at once on a pool of {POOL} workers"
    );
    // Otherwise this test would not have exercised concurrent workers at all: with
    // 32 clients waiting on 4 workers that each sleep inside the session, the queue
    // is never short of work.
    assert!(
        max >= 2,
        "sessions never ran concurrently (max {max}): the pool did not run in parallel"
    );
    assert!(record.calls.load(SeqCst) >= CLIENTS);
    assert_eq!(report.accepted_per_worker(), vec![CLIENTS as u64]);
}

#[test]
fn a_panicking_session_closes_only_its_connection() {
    let record = Arc::new(Record::default());
    let handle = Server::builder()
        .strategy(Strategy::Pool)
        .workers(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Sequenced(Arc::clone(&record)))
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = handle.local_addr();
    let mut bystander = connect(addr);
    bystander.write_all(b"0\n").unwrap();
    let mut reply = [0u8; 2];
    bystander.read_exact(&mut reply).unwrap();

    // More panics than workers: a worker survives its session's panic.
    for _ in 0..4 {
        let mut doomed = connect(addr);
        doomed.write_all(b"panic\n").unwrap();
        let mut buf = [0u8; 16];
        match doomed.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("the panicking connection should close, got {other:?}"),
        }
    }

    bystander.write_all(b"1\n2\n").unwrap();
    let mut reply = [0u8; 4];
    bystander.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"1\n2\n");
    drop(bystander);
    handle.shutdown();
    let report = handle.join().expect("the server drains and stops cleanly");
    let stats = &report.workers[0];
    assert_eq!(c10k_server::WorkerStats::get(&stats.accepted), 5);
    assert_eq!(c10k_server::WorkerStats::get(&stats.closed), 5);
    assert_eq!(record.reentered.load(SeqCst), 0);
}

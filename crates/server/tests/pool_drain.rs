//! Behaviour tests of the `pool` strategy's timers and drain, which live in the
//! reactor while the connections they concern may be with a worker: idle connections
//! are closed at once on shutdown while an in-flight request finishes; the drain
//! deadline force-closes what is left; a lingering connection whose peer never closes
//! is closed by its linger timer (set by a worker, run by the reactor).
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use c10k_proto::{App, Cx, Peer, ProtoError, Session};
use c10k_server::{LINGER, Server, ServerHandle, Strategy, WorkerStats};

mod support;

use support::assert_timed_out;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Echoes each line; the line `bye` is answered and then the session asks to close.
struct Lines;
struct LinesSession {
    close: bool,
}

impl App for Lines {
    type Session = LinesSession;
    fn open(&self, _peer: &Peer) -> LinesSession {
        LinesSession { close: false }
    }
}

impl Session for LinesSession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        let mut used = 0;
        while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&input[used..=used + nl]);
            if &input[used..used + nl] == b"bye" {
                self.close = true;
                return Ok(used + nl + 1);
            }
            used += nl + 1;
        }
        Ok(used)
    }
    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}
    fn wants_close(&self) -> bool {
        self.close
    }
}

fn start(workers: usize, drain_timeout: Duration) -> ServerHandle {
    Server::builder()
        .strategy(Strategy::Pool)
        .workers(workers)
        .drain_timeout(drain_timeout)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Lines)
        .bind()
        .unwrap()
        .spawn()
        .unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn round_trip(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line).unwrap();
    let mut got = vec![0u8; line.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, line);
}

/// Reads until the server closes; fails if it does not within `IO_TIMEOUT`.
fn expect_eof(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: expected EOF, got {e}"),
        }
    }
    panic!("{what}: expected EOF, the server kept sending");
}

/// Waits (bounded) until the server has counted `want` bytes received: it has read
/// what the client sent.
fn wait_received(h: &ServerHandle, want: u64) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let got: u64 = h
            .stats()
            .iter()
            .map(|s| WorkerStats::get(&s.bytes_in))
            .sum();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server received {got} bytes, not {want}, in {IO_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until the server has no open connection.
fn wait_all_closed(h: &ServerHandle, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if h.open_connections() == 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn drain_closes_idle_connections_at_once_and_lets_in_flight_ones_finish() {
    // A drain deadline far beyond the read timeout: an idle connection left for the
    // deadline would fail `expect_eof`.
    let h = start(2, Duration::from_secs(120));
    let addr = h.local_addr();
    let mut idle: Vec<TcpStream> = (0..8).map(|_| connect(addr)).collect();
    for s in &mut idle {
        round_trip(s, b"hello\n");
    }
    let mut busy = connect(addr);
    round_trip(&mut busy, b"first\n");
    busy.write_all(b"half a li").unwrap();
    // The server has read the partial line before draining starts: 8 x "hello\n",
    // "first\n", "half a li".
    wait_received(&h, 8 * 6 + 6 + 9);

    h.shutdown();
    for (i, s) in idle.iter_mut().enumerate() {
        expect_eof(s, &format!("idle connection {i} at drain"));
    }
    busy.write_all(b"ne\n").unwrap();
    let mut got = vec![0u8; b"half a line\n".len()];
    busy.read_exact(&mut got).unwrap();
    assert_eq!(got, b"half a line\n");
    expect_eof(&mut busy, "in-flight connection once its request is served");
    drop(busy);
    let report = h.join().unwrap();
    assert_eq!(WorkerStats::get(&report.workers[0].drain_forced), 0);
    assert_eq!(WorkerStats::get(&report.workers[0].closed), 9);
}

#[test]
fn drain_deadline_force_closes_an_unfinished_request() {
    const DRAIN: Duration = Duration::from_millis(300);
    let h = start(2, DRAIN);
    let addr = h.local_addr();
    let mut stuck = connect(addr);
    round_trip(&mut stuck, b"ok\n");
    stuck.write_all(b"never finished").unwrap();
    // The server has read the unfinished request before draining starts.
    wait_received(&h, 3 + 14);
    let t0 = Instant::now();
    h.shutdown();
    expect_eof(&mut stuck, "a request unfinished at the drain deadline");
    assert_timed_out(
        "the forced close at the drain deadline",
        t0.elapsed(),
        DRAIN,
    );
    let report = h.join().unwrap();
    assert_eq!(WorkerStats::get(&report.workers[0].drain_forced), 1);
}

#[test]
fn linger_timer_closes_a_peer_that_never_closes() {
    let h = start(2, Duration::from_secs(5));
    let addr = h.local_addr();
    let mut s = connect(addr);
    round_trip(&mut s, b"bye\n");
    // The server shut its side after the reply; we keep ours open and keep the
    // connection otherwise silent, so only the linger timer can close it.
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF after the last reply");
    let lingering = Instant::now();
    assert_eq!(h.open_connections(), 1, "lingering until the peer closes");
    assert!(
        wait_all_closed(&h, LINGER + IO_TIMEOUT),
        "the linger timer never closed the connection"
    );
    assert_timed_out("the linger timer's close", lingering.elapsed(), LINGER);
    h.shutdown();
    h.join().unwrap();
}

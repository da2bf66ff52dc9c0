//! Session timers on every strategy that runs sessions in this process: a session
//! asks to be called back at an instant (`Session::poll_timer`, the time passed in
//! through `Cx::instant`) and its `handle_timer` writes the reply, on the
//! connection's own worker, while other connections are served meanwhile.
//!
//! `fork` and `prefork` need a process's only thread (they are not run from a test
//! harness thread): they drive sessions with the same blocking adapter as `thread`,
//! whose park deadline carries the session timer. `kernel` runs no session.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use c10k_proto::{App, Cx, Peer, ProtoError, Session};
use c10k_server::{Server, Strategy};

/// A line `N` is answered `done N` N milliseconds later (a reply deferred by a
/// timer, as an asynchronous backend call would be); other lines at once.
struct Delay;

#[derive(Default)]
struct DelaySession {
    /// Replies due, earliest first.
    due: Vec<(Instant, u64)>,
}

impl App for Delay {
    type Session = DelaySession;
    fn open(&self, _peer: &Peer) -> DelaySession {
        DelaySession::default()
    }
}

impl Session for DelaySession {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        let mut used = 0;
        while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + nl];
            match std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.parse::<u64>().ok())
            {
                Some(ms) => {
                    let now = cx.instant().expect("the driver keeps a monotonic clock");
                    self.due.push((now + Duration::from_millis(ms), ms));
                    self.due.sort_unstable();
                }
                None => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
            used += nl + 1;
        }
        Ok(used)
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}

    fn wants_close(&self) -> bool {
        false
    }

    fn mid_request(&self) -> bool {
        !self.due.is_empty()
    }

    fn poll_timer(&self) -> Option<Instant> {
        self.due.first().map(|d| d.0)
    }

    fn handle_timer(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let now = cx.instant().expect("the driver keeps a monotonic clock");
        while self.due.first().is_some_and(|d| d.0 <= now) {
            let (_, ms) = self.due.remove(0);
            out.extend_from_slice(format!("done {ms}\n").as_bytes());
        }
    }
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading a line: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

fn timers(strategy: Strategy) {
    let handle = Server::builder()
        .strategy(strategy)
        .workers(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Delay)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = handle.local_addr();
    let mut a = TcpStream::connect(addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Two timers on one connection, out of order, and an answer at once meanwhile.
    let start = Instant::now();
    a.write_all(b"300\n100\n").unwrap();
    b.write_all(b"hello\n").unwrap();
    assert_eq!(
        read_line(&mut b),
        "hello",
        "{strategy}: served while a waits"
    );
    assert_eq!(read_line(&mut a), "done 100", "{strategy}");
    let first = start.elapsed();
    assert_eq!(read_line(&mut a), "done 300", "{strategy}");
    let second = start.elapsed();
    // Not before their instants; well before a sweep-based timer would fire late
    // by seconds (generous bounds: the machine is shared).
    assert!(first >= Duration::from_millis(100), "{strategy}: {first:?}");
    assert!(
        second >= Duration::from_millis(300),
        "{strategy}: {second:?}"
    );
    assert!(second < Duration::from_secs(3), "{strategy}: {second:?}");
    // A timer on the second connection too.
    b.write_all(b"50\n").unwrap();
    assert_eq!(read_line(&mut b), "done 50", "{strategy}");
    drop((a, b));
    handle.shutdown();
    handle.join().unwrap();
}

macro_rules! per_strategy {
    ($($name:ident => $strategy:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                timers($strategy);
            }
        )*

        /// Every strategy is here or named with its reason above.
        #[test]
        fn every_strategy_is_covered() {
            let here = [$($strategy),*];
            let elsewhere = [Strategy::Fork, Strategy::Prefork, Strategy::Kernel];
            for s in Strategy::ALL.map(|i| i.strategy) {
                assert!(
                    here.contains(&s) || elsewhere.contains(&s),
                    "{s} has no session-timer test and no reason for it"
                );
            }
        }
    };
}

per_strategy! {
    select => Strategy::Select,
    poll => Strategy::Poll,
    epoll_lt => Strategy::EpollLt,
    epoll_et => Strategy::EpollEt,
    uring => Strategy::Uring,
    thread => Strategy::Thread,
    pool => Strategy::Pool,
    green => Strategy::Green,
}

//! Blocking-style handlers on green threads, in process: a panicking handler closes
//! only its own connection, and a handler's wait is bounded by the idle timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use c10k_server::{Conn, Server, Strategy};

/// Echo, except that the line `boom` panics.
fn touchy(conn: &mut Conn) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].starts_with(b"boom") {
            panic!("the handler was told to panic");
        }
        conn.write_all(&buf[..n])?;
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).expect("read the echo");
    assert_eq!(got, msg);
}

#[test]
fn a_panicking_handler_closes_only_its_connection() {
    let server = Server::builder()
        .strategy(Strategy::Green)
        .workers(1)
        .listen("127.0.0.1:0".parse().unwrap())
        .handler(touchy)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = server.local_addr();
    let mut calm = connect(addr);
    round_trip(&mut calm, b"hello");
    let mut doomed = connect(addr);
    doomed.write_all(b"boom").unwrap();
    let mut rest = Vec::new();
    let _ = doomed.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no answer from a panicked handler");
    // The worker goes on: the other connection and new ones are served.
    round_trip(&mut calm, b"still here");
    round_trip(&mut connect(addr), b"new");
    drop(calm);
    server.shutdown();
    let report = server.join().unwrap();
    assert_eq!(report.accepted_per_worker(), vec![3]);
    assert!(c10k_server::WorkerStats::get(&report.workers[0].io_errors) >= 1);
}

#[test]
fn a_handler_waiting_past_the_idle_timeout_gets_timed_out() {
    let server = Server::builder()
        .strategy(Strategy::Green)
        .workers(1)
        .idle_timeout(Duration::from_millis(300))
        .listen("127.0.0.1:0".parse().unwrap())
        .handler(touchy)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let mut s = connect(server.local_addr());
    round_trip(&mut s, b"ping");
    // Then silence: the handler's read fails with TimedOut, it returns, the
    // connection closes.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.shutdown();
    let report = server.join().unwrap();
    assert_eq!(
        c10k_server::WorkerStats::get(&report.workers[0].timeouts_idle),
        1
    );
}

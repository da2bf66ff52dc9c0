//! Fairness of green threads: a connection whose reads always find data (it never
//! parks) still yields after a bounded amount of work, so that the other connections
//! of its worker are served. Without the yield budget the greedy connection finishes
//! its whole payload before the polite one is answered, and this test fails.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use c10k_server::{Conn, Server, Strategy};

/// Greedy payload, already in the server's receive queue before it is read.
const PAYLOAD: usize = 48 * 1024;

static SEQ: AtomicU64 = AtomicU64::new(1);
static GREEDY_DONE: AtomicU64 = AtomicU64::new(0);
static POLITE_SERVED: AtomicU64 = AtomicU64::new(0);

/// `G`: wait for the payload's first byte, then read the rest one byte at a time
/// (every read finds data) and answer `done`. `E`: echo, noting when first served.
fn handler(conn: &mut Conn) -> io::Result<()> {
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte)?;
    if byte[0] == b'G' {
        for _ in 0..PAYLOAD {
            conn.read_exact(&mut byte)?;
        }
        GREEDY_DONE.store(SEQ.fetch_add(1, Ordering::SeqCst), Ordering::SeqCst);
        return conn.write_all(b"done");
    }
    let mut buf = [0u8; 64];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let _ = POLITE_SERVED.compare_exchange(
            0,
            SEQ.fetch_add(1, Ordering::SeqCst),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        conn.write_all(&buf[..n])?;
    }
}

#[test]
fn a_greedy_connection_does_not_starve_its_worker() {
    let server = Server::builder()
        .strategy(Strategy::Green)
        .workers(1)
        .listen("127.0.0.1:0".parse().unwrap())
        .handler(handler)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let addr = server.local_addr();
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    };
    // Both connected and their green threads parked, waiting for a first byte.
    let mut greedy = connect();
    let mut polite = connect();
    greedy.write_all(b"G").unwrap();
    polite.write_all(b"E").unwrap();
    // The greedy payload, then at once the polite request: it arrives while the
    // greedy green thread is still reading its payload byte by byte.
    greedy.write_all(&[7u8; PAYLOAD]).unwrap();
    polite.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    polite.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    greedy.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"done");
    let (served, done) = (
        POLITE_SERVED.load(Ordering::SeqCst),
        GREEDY_DONE.load(Ordering::SeqCst),
    );
    assert!(
        served != 0 && served < done,
        "the polite connection was served (at {served}) only after the greedy one \
         finished (at {done}): starved"
    );
    drop((greedy, polite));
    server.shutdown();
    server.join().unwrap();
}

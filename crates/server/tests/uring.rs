//! Buffer ownership and leaks of the `uring` strategy, in process (its counters are
//! read straight from the server's stats):
//!
//! - connections closed mid-flight under load (unread replies, sends stuck in the
//!   kernel, resets) leave every receive buffer and every send buffer home;
//! - 10,000 connections opened and closed leave no descriptor (counted in
//!   /proc/self/fd) and no buffer behind.
//!
//! Both need io_uring: when it is not usable here they fail and say why.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use c10k_proto::echo::EchoApp;
use c10k_server::{Availability, Server, ServerHandle, Strategy, UringConfig, WorkerStats};

/// The tests count this process's descriptors: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn need_uring() {
    if let Availability::Unavailable { reason } = Strategy::Uring.availability() {
        panic!("io_uring is not usable here, so the uring tests cannot run: {reason}");
    }
}

fn spawn(workers: usize, uring: UringConfig, output_cap: usize, idle: Duration) -> ServerHandle {
    need_uring();
    Server::builder()
        .strategy(Strategy::Uring)
        .workers(workers)
        .listen("127.0.0.1:0".parse().unwrap())
        .output_cap(output_cap)
        .idle_timeout(idle)
        .uring(uring)
        .app(EchoApp)
        .bind()
        .unwrap()
        .spawn()
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Close with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Sum of one counter over the workers.
fn sum(stats: &[std::sync::Arc<WorkerStats>], f: impl Fn(&WorkerStats) -> u64) -> u64 {
    stats.iter().map(|s| f(s)).sum()
}

/// Per worker: what is out must equal what came back, and only the worker's own
/// operations may be in flight.
/// Operations a worker keeps in flight with no connection: the multishot accept, the
/// shutdown pipe's poll and the inbox's poll (messages to its connections).
const AT_REST: u64 = 3;

fn settled(h: &ServerHandle) -> bool {
    h.open_connections() == 0
        && h.stats().iter().all(|s| {
            let u = &s.uring;
            u.bufs_out.load(Relaxed) == u.bufs_in.load(Relaxed)
                && u.sends_out.load(Relaxed) == u.sends_in.load(Relaxed)
                && u.in_flight.load(Relaxed) == AT_REST
        })
}

fn wait_settled(h: &ServerHandle, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !settled(h) {
        if Instant::now() > deadline {
            let report: Vec<String> = h
                .stats()
                .iter()
                .map(|s| {
                    let u = &s.uring;
                    format!(
                        "bufs {}/{} sends {}/{} in flight {}",
                        u.bufs_out.load(Relaxed),
                        u.bufs_in.load(Relaxed),
                        u.sends_out.load(Relaxed),
                        u.sends_in.load(Relaxed),
                        u.in_flight.load(Relaxed)
                    )
                })
                .collect();
            panic!(
                "{what}: not settled after 20 s: {} open, per worker {report:?}",
                h.open_connections()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// 200 connections each push 512 KiB at an echo server with a 64 KiB output cap and
/// a pool of 32 receive buffers, read a little or nothing, and go away mid-flight
/// (half with a reset): sends are stuck in the kernel, receives are cancelled by
/// backpressure or run out of buffers, closes race completions. Then 40 more push
/// and never read, until the server's idle timeout closes them with their sends
/// stuck in flight. Afterwards every buffer handed out has come home.
#[test]
fn every_buffer_comes_home_after_mid_flight_closes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let uring = UringConfig {
        buf_count: 32,
        buf_size: 4096,
        ..UringConfig::default()
    };
    let h = spawn(2, uring, 64 * 1024, Duration::from_millis(500));
    let addr = h.local_addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let payload = vec![b'x'; 512 * 1024];
                for i in 0..25 {
                    let mut s = connect(addr);
                    // The server stops reading once its output is over the cap, so a
                    // write may block: write from a helper thread, bounded by the
                    // write timeout.
                    let mut w = s.try_clone().unwrap();
                    let p = payload.clone();
                    let writer = thread::spawn(move || {
                        let _ = w.write_all(&p);
                    });
                    let mut buf = vec![0u8; 8192];
                    let want = (t * 25 + i) % 4 * 8192;
                    let mut got = 0;
                    while got < want {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                    }
                    if i % 2 == 0 {
                        reset(s);
                    } else {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        drop(s);
                    }
                    writer.join().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_settled(&h, "after 200 mid-flight closes");
    // Clients that stop reading: the server's sends get stuck, and its idle timeout
    // closes the connections with the sends still in flight.
    let stuck: Vec<_> = (0..40)
        .map(|_| {
            let s = connect(addr);
            let mut w = s.try_clone().unwrap();
            let writer = thread::spawn(move || {
                let _ = w.write_all(&vec![b'y'; 512 * 1024]);
            });
            (s, writer)
        })
        .collect();
    let stuck: Vec<TcpStream> = stuck
        .into_iter()
        .map(|(s, writer)| {
            writer.join().unwrap();
            s
        })
        .collect();
    wait_settled(&h, "after the idle timeout closed 40 stuck connections");
    drop(stuck);
    let stats = h.stats().to_vec();
    assert_eq!(sum(&stats, |s| WorkerStats::get(&s.accepted)), 240);
    assert_eq!(sum(&stats, |s| WorkerStats::get(&s.timeouts_idle)), 40);
    assert!(
        sum(&stats, |s| s.uring.bufs_out.load(Relaxed)) > 0,
        "the load went through the buffer ring"
    );
    let parked = sum(&stats, |s| s.uring.parked_at_close.load(Relaxed));
    eprintln!(
        "ENOBUFS re-arms: {}, sends: {}, operations in flight at close: {parked}",
        sum(&stats, |s| s.uring.enobufs.load(Relaxed)),
        sum(&stats, |s| s.uring.sends_out.load(Relaxed))
    );
    assert!(
        parked > 0,
        "some connections closed with operations in flight"
    );
    h.shutdown();
    let report = h.join().unwrap();
    for s in &report.workers {
        let u = &s.uring;
        assert_eq!(u.leaked_ops.load(Relaxed), 0, "operations left at exit");
        assert_eq!(u.bufs_out.load(Relaxed), u.bufs_in.load(Relaxed));
        assert_eq!(u.sends_out.load(Relaxed), u.sends_in.load(Relaxed));
    }
}

/// 10,000 connections, in batches of 100 open at once: echoed, closed without a
/// word, or reset. Descriptors and buffers come back to where they were.
#[test]
fn ten_thousand_connections_leak_no_fd_and_no_buffer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    need_uring();
    let before_server = open_fds();
    let h = spawn(2, UringConfig::default(), 1 << 20, Duration::from_secs(60));
    let addr = h.local_addr();
    // Warm up (first accepts, buffers, the loops' own descriptors), then count.
    for _ in 0..4 {
        let mut s = connect(addr);
        s.write_all(b"warm").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
    }
    wait_settled(&h, "after the warm-up");
    let baseline = open_fds();
    for batch in 0..100 {
        let mut conns: Vec<TcpStream> = (0..100).map(|_| connect(addr)).collect();
        for (i, s) in conns.iter_mut().enumerate() {
            if i % 3 == 0 {
                s.write_all(b"ping").unwrap();
            }
        }
        for (i, mut s) in conns.into_iter().enumerate() {
            match i % 3 {
                0 => {
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).unwrap();
                    assert_eq!(&b, b"ping", "batch {batch} connection {i}");
                    drop(s);
                }
                1 => drop(s),
                _ => reset(s),
            }
        }
    }
    wait_settled(&h, "after 10,000 connections");
    let stats = h.stats().to_vec();
    assert_eq!(sum(&stats, |s| WorkerStats::get(&s.accepted)), 10_004);
    assert_eq!(sum(&stats, |s| WorkerStats::get(&s.closed)), 10_004);
    // Closes complete asynchronously: wait (bounded) for the count to come back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds() != baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_fds(), baseline, "descriptors after 10,000 connections");
    h.shutdown();
    let report = h.join().unwrap();
    for s in &report.workers {
        let u = &s.uring;
        assert_eq!(u.leaked_ops.load(Relaxed), 0);
        assert_eq!(u.bufs_out.load(Relaxed), u.bufs_in.load(Relaxed));
        assert_eq!(u.sends_out.load(Relaxed), u.sends_in.load(Relaxed));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds() != before_server && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        open_fds(),
        before_server,
        "descriptors once the server has stopped (listeners, rings, pipes)"
    );
}

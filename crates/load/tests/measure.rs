//! The load generator against small servers written here, whose behaviour is known: a
//! fixed delay per reply, a stall at the start, garbage, refusals and closes. The
//! assertions are lower bounds the measurement must include (a latency can never be
//! shorter than the delay the server adds) and error counts by kind.
//!
//! Every server here serves only 127.0.0.1, and every loop is bounded by the run's own
//! duration or by a count.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use c10k_load::{AppKind, LoadConfig, LoadReport, Progress, run};

/// A thread-per-connection test server: `handle` runs for each accepted connection.
/// Accepting stops when the returned guard is dropped.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(handle: fn(TcpStream)) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        for conn in listener.incoming() {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(conn) = conn {
                thread::spawn(move || handle(conn));
            }
        }
    });
    TestServer { addr, stop }
}

/// Echoes what it reads, `DELAY` after reading it. Ends at EOF or after a minute.
const DELAY: Duration = Duration::from_millis(20);
fn delayed_echo(mut conn: TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            return;
        }
        thread::sleep(DELAY);
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Stalls `STALL` after accepting, then echoes at once.
const STALL: Duration = Duration::from_millis(400);
fn stalled_echo(mut conn: TcpStream) {
    thread::sleep(STALL);
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn load(addr: SocketAddr, conns: usize, duration_ms: u64) -> LoadConfig {
    let mut c = LoadConfig::new(
        addr,
        AppKind::Echo,
        conns,
        Duration::from_millis(duration_ms),
    );
    c.timeout = Duration::from_secs(5);
    c
}

fn go(config: &LoadConfig) -> LoadReport {
    let report = run(config, Arc::new(Progress::new())).unwrap();
    eprintln!("{}", report.summary());
    report
}

#[test]
fn closed_loop_latency_includes_the_servers_delay() {
    let server = serve(delayed_echo);
    let mut c = load(server.addr, 4, 600);
    c.warmup = Duration::from_millis(100);
    let r = go(&c);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.connected, 4);
    assert!(r.requests > 0);
    // Every reply waited at least DELAY in the server.
    let floor = DELAY.as_micros() as f64;
    assert!(r.p50_us >= floor, "p50 {} us < {floor}", r.p50_us);
    assert!(r.p90_us >= r.p50_us && r.p99_us >= r.p90_us && r.max_us >= r.p999_us);
    // Closed loop, one outstanding per connection: at most one reply per DELAY each.
    let ceiling = 4.0 * r.window_s / DELAY.as_secs_f64() + 4.0;
    assert!(
        (r.requests as f64) <= ceiling,
        "{} requests in {} s through a {DELAY:?} server",
        r.requests,
        r.window_s
    );
}

#[test]
fn open_loop_counts_the_stall_in_every_request_sent_during_it() {
    let server = serve(stalled_echo);
    let mut c = load(server.addr, 1, 1000);
    c.rate = Some(200.0);
    let r = go(&c);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.mode, "open");
    // 200 due in the window; all but the last few answered inside it.
    assert!(
        (190..=201).contains(&r.scheduled),
        "scheduled {}",
        r.scheduled
    );
    assert!(
        r.requests * 10 >= r.scheduled * 9,
        "{} of {}",
        r.requests,
        r.scheduled
    );
    // The requests due in the first ~300 ms of the 400 ms stall waited 100 ms or more:
    // about 30% of them. A closed loop would have recorded the stall once.
    assert!(
        r.p90_us >= 100_000.0,
        "p90 {} us: the stall was omitted",
        r.p90_us
    );
    assert!(r.max_us >= 200_000.0, "max {} us", r.max_us);
}

#[test]
fn refused_connections_are_counted_as_such() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // nothing listens there any more
    let mut c = load(addr, 3, 200);
    c.timeout = Duration::from_millis(300);
    let r = go(&c);
    assert_eq!(r.connected, 0);
    assert_eq!(r.requests, 0);
    assert!(r.errors.connect_refused >= 3, "{:?}", r.errors);
    assert_eq!(r.errors.total, r.errors.connect_refused);
    assert!(
        r.warnings.iter().any(|w| w.contains("only 0 of 3")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn garbage_is_a_bad_reply_and_a_close_is_counted() {
    fn garbage(mut conn: TcpStream) {
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"this is not what was sent, not at all, no, not at all....");
        thread::sleep(Duration::from_millis(200));
    }
    let server = serve(garbage);
    let r = go(&load(server.addr, 2, 300));
    assert!(r.errors.bad_reply >= 2, "{:?}", r.errors);
    assert_eq!(r.requests, 0);

    fn closer(conn: TcpStream) {
        drop(conn);
    }
    let server = serve(closer);
    let mut c = load(server.addr, 2, 300);
    c.timeout = Duration::from_millis(500);
    let r = go(&c);
    assert!(
        r.errors.closed + r.errors.reset >= 2,
        "closed or reset: {:?}",
        r.errors
    );
    assert_eq!(r.requests, 0);
}

#[test]
fn idle_runs_hold_connections_and_stop_on_request() {
    let server = serve(delayed_echo);
    let mut c = load(server.addr, 20, 30_000);
    c.idle = true;
    let progress = Arc::new(Progress::new());
    let p = Arc::clone(&progress);
    let handle = thread::spawn(move || run(&c, p).unwrap());
    for _ in 0..500 {
        if progress.phase() >= c10k_load::Phase::Measuring {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(progress.open.load(Ordering::Relaxed), 20);
    progress.stop();
    let r = handle.join().unwrap();
    assert_eq!(r.mode, "idle");
    assert_eq!(r.connected, 20);
    assert_eq!(r.requests, 0);
    assert_eq!(r.errors.total, 0);
    assert!(r.window_s < 10.0, "stop ended the 30 s hold early");
}

#[test]
fn json_has_self_explaining_keys() {
    let server = serve(delayed_echo);
    let r = go(&load(server.addr, 2, 200));
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for key in [
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "throughput_rps",
        "requests",
        "errors",
        "cpu_user_s",
        "cpu_sys_s",
        "load_bound",
        "connect_p50_us",
        "window_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["errors"]["total"], 0);
    assert_eq!(v["app"], "echo");
}

//! `c10k serve --work`: the work per request, on every strategy. An asynchronous wait
//! defers the reply (never earlier than the wait) without holding up the worker's
//! other connections; a blocking wait holds up an event loop's other connections
//! (that is what it models) and not a thread per connection's; CPU work is charged to
//! the server; a deferred reply survives the client's half-close and the drain; real
//! clients (curl, redis-cli) see their replies. The timing checks are lower bounds
//! that physics guarantees, or upper bounds with a wide margin where overlap is the
//! point (N waits overlapping take about one wait, not N).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, connect, descendants, need_tool, read_exact_n, run_tool, strategy_tests};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "its echo runs in the kernel, with no per-request user code: serve refuses --work with it (bad_work_values_exit_2_with_one_line)"],
    tests: [
        async_waits_overlap_and_never_reply_early,
        blocking_waits_serialise_one_worker_only_where_it_is_shared,
        cpu_work_is_charged_to_the_server,
        a_deferred_reply_survives_half_close_and_drain,
    ],
}

/// Connections each test opens at once.
const CONNS: usize = 6;

/// Extra flags so that `CONNS` connections are served at once where the strategy's
/// concurrency is a count (prefork's processes).
fn sized(strategy: &str) -> Vec<&'static str> {
    if strategy == "prefork" {
        vec!["--workers", "8"]
    } else {
        vec![]
    }
}

fn serve(strategy: &str, app: &str, work: &str) -> Server {
    let mut extra = sized(strategy);
    extra.extend(["--work", work]);
    let extra: Vec<&str> = extra.iter().map(|s| &**s).collect();
    Server::start(strategy, app, &extra)
}

/// Sends one message on each of `CONNS` connections at once and reads every echo;
/// returns how long after its own send each reply came, and the whole span.
fn burst(server: &Server) -> (Vec<Duration>, Duration) {
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(server.addr())).collect();
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    let start = Instant::now();
    let mut sent = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("m{i}").as_bytes()).unwrap();
        sent.push(Instant::now());
    }
    let mut after = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let got = read_exact_n(c, 2, "the echo");
        assert_eq!(got, format!("m{i}").as_bytes(), "connection {i}");
        after.push(sent[i].elapsed());
    }
    (after, start.elapsed())
}

fn async_waits_overlap_and_never_reply_early(strategy: &str) {
    let wait = Duration::from_millis(300);
    let mut server = serve(strategy, "echo", "wait=300ms,async");
    let (after, span) = burst(&server);
    for (i, a) in after.iter().enumerate() {
        assert!(
            *a >= wait,
            "{strategy}: reply {i} after {a:?}, before the wait"
        );
    }
    // Served one after another they would take CONNS x 300 ms = 1.8 s.
    assert!(
        span < wait * CONNS as u32 * 2 / 3,
        "{strategy}: {CONNS} asynchronous waits took {span:?}: they did not overlap"
    );
    server.stop();
    server.assert_no_panic();
}

fn blocking_waits_serialise_one_worker_only_where_it_is_shared(strategy: &str) {
    let wait = Duration::from_millis(150);
    let mut server = serve(strategy, "echo", "wait=150ms,blocking");
    let (after, span) = burst(&server);
    for a in &after {
        assert!(*a >= wait, "{strategy}: a reply came before the wait");
    }
    // One worker runs every session of an event loop, green's threads, and pool's
    // single pool thread: the sleeps add up. A thread or process per connection
    // sleeps in parallel.
    let shared = !matches!(strategy, "thread" | "fork" | "prefork");
    let serial = wait * CONNS as u32;
    if shared {
        assert!(
            span >= serial,
            "{strategy}: {CONNS} blocking waits on one worker took {span:?} < {serial:?}"
        );
    } else {
        assert!(
            span < serial * 2 / 3,
            "{strategy}: {CONNS} blocking waits took {span:?}: a connection's sleep held up \
             another's"
        );
    }
    server.stop();
    server.assert_no_panic();
}

/// utime + stime of a process and of its waited-for children, seconds.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14..=17 (utime, stime, cutime, cstime); `rest` starts at field 3.
    let ticks: f64 = (11..=14)
        .filter_map(|i| rest.get(i)?.parse::<f64>().ok())
        .sum();
    // USER_HZ: 100 on Linux.
    ticks / 100.0
}

fn cpu_work_is_charged_to_the_server(strategy: &str) {
    let mut server = serve(strategy, "echo", "cpu=25ms");
    let tree = |s: &Server| -> f64 {
        let mut pids = vec![s.pid()];
        pids.extend(descendants(s.pid()));
        pids.into_iter().map(cpu_s).sum()
    };
    let before = tree(&server);
    let mut c = connect(server.addr());
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for i in 0..12 {
        let msg = format!("r{i:02}");
        c.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exact_n(&mut c, msg.len(), "the echo"), msg.as_bytes());
    }
    let during = tree(&server);
    drop(c);
    // fork's child exits with its connection: its time moves to the parent's
    // children's counters once reaped.
    std::thread::sleep(Duration::from_millis(300));
    let used = (tree(&server) - before).max(during - before);
    // 12 requests x 25 ms of thread CPU time; /proc counts in 10 ms ticks.
    assert!(
        used >= 0.29,
        "{strategy}: 12 requests of cpu=25ms cost the server only {used:.2} s of CPU"
    );
    server.stop();
    server.assert_no_panic();
}

fn a_deferred_reply_survives_half_close_and_drain(strategy: &str) {
    let mut server = serve(strategy, "echo", "wait=400ms,async");
    // Half-close: the reply still comes, then the server's close.
    let mut c = connect(server.addr());
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"half").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(
        got, b"half",
        "{strategy}: the reply deferred past the client's EOF"
    );

    // Drain: a reply in flight is finished before the server exits 0.
    let mut c = connect(server.addr());
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"late").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.sigterm();
    assert_eq!(read_exact_n(&mut c, 4, "the deferred reply"), b"late");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{strategy}: exit {status:?}");
    server.assert_no_panic();
}

/// curl's keep-alive requests each wait, and each gets its 200.
#[test]
fn http_requests_from_curl_are_deferred_and_answered() {
    let curl = need_tool("curl");
    for strategy in ["epoll-et", "thread"] {
        let mut server = serve(strategy, "http", "cpu=1ms,wait=200ms,async");
        let url = format!("http://{}/", server.addr());
        let start = Instant::now();
        let out = run_tool(
            Command::new(&curl)
                .args(["-s", "--max-time", "10"])
                .args([&url, &url, &url]),
            Duration::from_secs(15),
        );
        let took = start.elapsed();
        assert!(out.status.success(), "{strategy}: curl {out:?}");
        let body = String::from_utf8_lossy(&out.stdout);
        assert_eq!(body, "Hello, World!".repeat(3), "{strategy}");
        assert!(
            took >= Duration::from_millis(600),
            "{strategy}: three requests of 200 ms waits took {took:?}"
        );
        server.stop();
        server.assert_no_panic();
    }
}

/// redis-cli's commands each wait; a pipelined batch waits once per command.
#[test]
fn resp_commands_from_redis_cli_are_deferred_and_answered() {
    let cli = need_tool("redis-cli");
    let mut server = serve("epoll-et", "resp", "wait=100ms,async");
    let port = server.addr().port().to_string();
    let start = Instant::now();
    let out = run_tool(
        Command::new(&cli).args(["-h", "127.0.0.1", "-p", &port, "SET", "k", "v"]),
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let out = run_tool(
        Command::new(&cli).args(["-h", "127.0.0.1", "-p", &port, "GET", "k"]),
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v", "{out:?}");
    assert!(start.elapsed() >= Duration::from_millis(200));

    // Three commands in one write: three waits, replies in order.
    let mut c = connect(server.addr());
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    c.write_all(b"PING\r\nECHO a\r\nGET k\r\n").unwrap();
    let want = b"+PONG\r\n$1\r\na\r\n$1\r\nv\r\n";
    assert_eq!(read_exact_n(&mut c, want.len(), "three replies"), want);
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.stop();
    server.assert_no_panic();
}

/// Bad values exit 2 with one line that says what to do.
#[test]
fn bad_work_values_exit_2_with_one_line() {
    for bad in [
        "cpu=2s",
        "wait=61s,async",
        "wait=2ms",
        "cpu=-1ms",
        "sleep=1ms",
        "",
    ] {
        let out = Command::new(common::c10k_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--work", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--work {bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "--work {bad:?}: {err}");
        assert!(err.contains("--work"), "{err}");
    }
    let out = Command::new(common::c10k_bin())
        .args(["serve", "--strategy", "kernel", "--app", "echo"])
        .args(["--listen", "127.0.0.1:0", "--work", "cpu=1ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--work") && err.contains("epoll-et"), "{err}");
}

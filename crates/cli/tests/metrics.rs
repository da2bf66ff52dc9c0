//! `--metrics`: the Prometheus endpoint. For every strategy (one test each: event
//! loops, threads, io_uring, and both forking ones, whose children publish through
//! shared memory), make known traffic, scrape with curl, check the numbers, and
//! validate the exposition with Prometheus's own `promtool check metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Server, assert_timed_out, connect, metrics_addr, need_tool, read_http_response, read_to_eof,
    run_tool_with_input, strategy_tests,
};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "echo only, this uses http; kernel.rs: counters_come_from_the_sockets, idle_connections_time_out_and_busy_ones_do_not"],
    tests: [counts_traffic_open_connections_and_idle_timeouts],
}

/// Several workers where the strategy has them, to see one row per worker (fork has
/// one accept loop; thread is checked with one).
fn counts_traffic_open_connections_and_idle_timeouts(strategy: &str) {
    let workers = match strategy {
        "thread" | "fork" => 1,
        "prefork" => 3,
        _ => 2,
    };
    check(strategy, workers);
}

/// How long counters may take to settle after the client saw its answer (a forked
/// child publishes after its connection closed, the parent reaps later).
const SETTLE: Duration = Duration::from_secs(10);

const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// `GET /metrics` with curl: the body, after checking status and content type.
fn scrape(addr: SocketAddr) -> String {
    let curl = need_tool("curl");
    let out = run_tool_with_input(
        Command::new(curl).args([
            "-sS",
            "--max-time",
            "10",
            "-D",
            "/dev/stderr",
            &format!("http://{addr}/metrics"),
        ]),
        None,
        Duration::from_secs(15),
    );
    let head = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {head}");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Sample lines: `name{labels}` -> value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Sum of a family's samples whose labels contain `filter` (e.g. `kind="idle"`).
fn sum(m: &BTreeMap<String, f64>, name: &str, filter: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(filter)
        })
        .map(|(_, v)| *v as u64)
        .sum()
}

fn promtool_check(text: &str) {
    let promtool = need_tool("promtool");
    let out = run_tool_with_input(
        Command::new(promtool).args(["check", "metrics"]),
        Some(text.as_bytes()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scrape until `want` holds (counters settle once children have published).
fn wait_for(addr: SocketAddr, what: &str, want: impl Fn(&BTreeMap<String, f64>) -> bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = scrape(addr);
        if want(&parse(&text)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {SETTLE:?}; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One connection: send `request`, read to EOF; returns the bytes read.
fn exchange(addr: SocketAddr, request: &[u8]) -> usize {
    let mut c = connect(addr);
    c.write_all(request).unwrap();
    read_to_eof(&mut c, "response").len()
}

fn check(strategy: &str, workers: usize) {
    let w = workers.to_string();
    let server = Server::start(
        strategy,
        "http",
        &[
            "--metrics",
            "127.0.0.1:0",
            "--workers",
            &w,
            "--idle-timeout",
            "2s",
        ],
    );
    let maddr = metrics_addr(&server);
    let addr = server.addr();

    // Known traffic: 5 one-request connections, 3 pipelined requests on one, and one
    // malformed request (a protocol error): 7 connections, 8 requests.
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..5 {
        sent += GET_CLOSE.len();
        got += exchange(addr, GET_CLOSE);
    }
    let pipelined = [GET, GET, GET_CLOSE].concat();
    sent += pipelined.len();
    got += exchange(addr, &pipelined);
    let bad = b"GARBAGE\r\n\r\n";
    sent += bad.len();
    got += exchange(addr, bad);

    let text = wait_for(maddr, "counters after traffic", |m| {
        sum(m, "c10k_connections_accepted_total", "") == 7
            && sum(m, "c10k_connections_closed_total", "") == 7
            && sum(m, "c10k_requests_total", "") == 8
            && sum(m, "c10k_errors_total", "kind=\"protocol\"") == 1
            && sum(m, "c10k_received_bytes_total", "") == sent as u64
            && sum(m, "c10k_sent_bytes_total", "") == got as u64
            && sum(m, "c10k_connections_open", "") == 0
    });
    promtool_check(&text);
    let m = parse(&text);
    let rows = m
        .keys()
        .filter(|k| k.starts_with("c10k_connections_accepted_total{"))
        .count();
    // fork: one accept loop; pool: one reactor (its --workers are a thread pool that
    // shares the reactor's counters).
    let expect_rows = if matches!(strategy, "fork" | "pool") {
        1
    } else {
        workers
    };
    assert_eq!(rows, expect_rows, "one row per worker:\n{text}");
    assert_eq!(sum(&m, "c10k_workers", ""), expect_rows as u64);
    assert_eq!(
        sum(&m, "c10k_info", &format!("strategy=\"{strategy}\"")),
        1,
        "{text}"
    );
    assert_eq!(sum(&m, "c10k_connections_refused_total", ""), 0);
    assert_eq!(
        m.keys().any(|k| k.starts_with("c10k_uring_")),
        strategy == "uring",
        "uring series only for uring:\n{text}"
    );
    eprintln!(
        "{strategy} x{workers}: accepted {} in {rows} row(s), requests {}, in {sent} B, out {got} B",
        sum(&m, "c10k_connections_accepted_total", ""),
        sum(&m, "c10k_requests_total", "")
    );

    // An open connection shows in the gauge (for prefork: its worker's shared slot);
    // left idle, the idle timeout closes it and counts it. A forked process
    // publishes its request and byte counts when its connection ends, a thread
    // counts them at once.
    let forks = matches!(strategy, "fork" | "prefork");
    let held = connect(addr);
    (&held).write_all(GET).unwrap();
    let response = read_http_response(&mut BufReader::new(&held));
    let idle = Instant::now();
    assert_eq!(response.status, 200);
    wait_for(maddr, "one connection open", |m| {
        sum(m, "c10k_connections_open", "") == 1
            && sum(m, "c10k_connections_accepted_total", "") == 8
            && (forks || sum(m, "c10k_requests_total", "") == 9)
    });
    let mut held = held;
    read_to_eof(&mut held, "idle connection closed by the server");
    assert_timed_out(
        &format!("{strategy}: idle connection"),
        idle.elapsed(),
        Duration::from_secs(2),
    );
    let text = wait_for(maddr, "idle timeout counted", |m| {
        sum(m, "c10k_timeouts_total", "kind=\"idle\"") == 1
            && sum(m, "c10k_connections_open", "") == 0
            && sum(m, "c10k_connections_closed_total", "") == 8
            && sum(m, "c10k_requests_total", "") == 9
    });
    promtool_check(&text);
    server.assert_no_panic();
}

/// Anything but GET/HEAD /metrics is refused with the right status, and the
/// endpoint keeps serving.
#[test]
fn bad_requests_get_400_404_405() {
    let server = Server::start("epoll-lt", "echo", &["--metrics", "127.0.0.1:0"]);
    let maddr = metrics_addr(&server);
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        (b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400"),
        (&[0xff; 9000][..], "HTTP/1.1 400"),
    ] {
        let mut c = connect(maddr);
        c.write_all(request).unwrap();
        let reply = String::from_utf8_lossy(&read_to_eof(&mut c, "metrics reply")).into_owned();
        assert!(reply.starts_with(status), "{request:?}: {reply}");
    }
    // HEAD: headers only.
    let mut c = connect(maddr);
    c.write_all(b"HEAD /metrics HTTP/1.0\r\n\r\n").unwrap();
    let reply = String::from_utf8_lossy(&read_to_eof(&mut c, "HEAD")).into_owned();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n\r\n"),
        "{reply}"
    );
    // A client that connects and says nothing does not stop the endpoint for long.
    let _silent = connect(maddr);
    promtool_check(&scrape(maddr));
    server.assert_no_panic();
}

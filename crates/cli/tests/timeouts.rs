//! Idle and request (header) timeouts, one test per strategy: a stalled request is
//! answered (HTTP 408) and closed, an idle connection is closed, and slow clients
//! (slowloris) do not keep a normal client from being served. Each close must come
//! in the timer's window (not before the timeout, not long after it) and be counted
//! by its kind in `c10k_timeouts_total`, so that a close for another reason (the
//! idle timer instead of the request timer, an error) fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    Server, assert_timed_out, connect, metric, metrics_addr, read_http_response, read_to_eof,
    strategy_tests, wait_metric,
};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "echo only, these use http and resp; kernel.rs: idle_connections_time_out_and_busy_ones_do_not"],
    tests: [
        http_partial_head_gets_408_and_a_close,
        idle_connection_is_closed_after_the_idle_timeout,
        resp_partial_command_is_closed_after_the_request_timeout,
        slowloris_clients_are_closed_and_do_not_block_a_normal_client,
    ],
}

/// The server, and its metrics endpoint.
fn start(strategy: &str, app: &str) -> (Server, SocketAddr) {
    // prefork serves one connection per process: size its pool to the slowloris test
    // (200 slow clients and one normal one at a time).
    let workers: &[&str] = if strategy == "prefork" {
        &["--workers", "260"]
    } else {
        &[]
    };
    let mut args = vec![
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(workers);
    let server = Server::start(strategy, app, &args);
    let maddr = metrics_addr(&server);
    (server, maddr)
}

/// Waits until `c10k_timeouts_total{kind}` is `want`, and checks that no timeout of
/// the other kind fired.
fn expect_timeouts(strategy: &str, maddr: SocketAddr, kind: &str, want: u64) {
    let other = if kind == "idle" { "header" } else { "idle" };
    let text = wait_metric(
        maddr,
        "c10k_timeouts_total",
        &format!("kind=\"{kind}\""),
        want,
    );
    assert_eq!(
        metric(&text, "c10k_timeouts_total", &format!("kind=\"{other}\"")),
        0,
        "{strategy}: {other} timeouts counted:\n{text}"
    );
}

fn http_partial_head_gets_408_and_a_close(strategy: &str) {
    let (server, maddr) = start(strategy, "http");
    let mut slow = connect(server.addr());
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let stalled = Instant::now();
    // A normal client is served meanwhile.
    let mut fast = connect(server.addr());
    fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_http_response(&mut BufReader::new(&mut fast));
    assert_eq!(resp.status, 200, "{strategy}");
    let got = read_to_eof(&mut slow, "the stalled request's answer");
    assert_timed_out(
        &format!("{strategy}: stalled HTTP head"),
        stalled.elapsed(),
        HEADER_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{strategy}: {text}"
    );
    assert!(text.contains("Connection: close"), "{strategy}: {text}");
    expect_timeouts(strategy, maddr, "header", 1);
    server.assert_no_panic();
}

fn idle_connection_is_closed_after_the_idle_timeout(strategy: &str) {
    let (server, maddr) = start(strategy, "echo");
    let mut c = connect(server.addr());
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let idle = Instant::now();
    // Nothing more is sent: the server closes after ~2 s (read times out at 20 s).
    let rest = read_to_eof(&mut c, "idle close");
    assert_timed_out(
        &format!("{strategy}: idle connection"),
        idle.elapsed(),
        IDLE_TIMEOUT,
    );
    assert!(rest.is_empty(), "{strategy}");
    expect_timeouts(strategy, maddr, "idle", 1);
    server.assert_no_panic();
}

fn resp_partial_command_is_closed_after_the_request_timeout(strategy: &str) {
    let (server, maddr) = start(strategy, "resp");
    let mut c = connect(server.addr());
    c.write_all(b"*2\r\n$3\r\nGET\r\n").unwrap();
    let stalled = Instant::now();
    let rest = read_to_eof(&mut c, "stalled RESP command");
    assert_timed_out(
        &format!("{strategy}: stalled RESP command"),
        stalled.elapsed(),
        HEADER_TIMEOUT,
    );
    assert!(
        rest.is_empty(),
        "{strategy}: {:?}",
        String::from_utf8_lossy(&rest)
    );
    expect_timeouts(strategy, maddr, "header", 1);
    server.assert_no_panic();
}

fn slowloris_clients_are_closed_and_do_not_block_a_normal_client(strategy: &str) {
    const SLOW: usize = 200;
    let (server, maddr) = start(strategy, "http");
    let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n";
    let mut slow: Vec<_> = (0..SLOW).map(|_| connect(server.addr())).collect();
    // The request timer runs from a request's first byte.
    let first_byte = Instant::now();
    // Each slow client sends one header byte per round, 100 ms apart (the trickle is
    // the scenario); the header never ends.
    for round in 0..5 {
        for c in &mut slow {
            let _ = c.write_all(&head[round..=round]);
        }
        let mut fast = connect(server.addr());
        fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let resp = read_http_response(&mut BufReader::new(&mut fast));
        assert_eq!(resp.status, 200, "{strategy} round {round}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, c) in slow.iter_mut().enumerate() {
        let got = read_to_eof(c, "slow client");
        // Read in turn: a later client's close is seen no earlier than it happened.
        assert_timed_out(
            &format!("{strategy}: slow client {i}"),
            first_byte.elapsed(),
            HEADER_TIMEOUT,
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408 "),
            "{strategy} slow client {i}: {text}"
        );
    }
    expect_timeouts(strategy, maddr, "header", SLOW as u64);
    server.assert_no_panic();
}

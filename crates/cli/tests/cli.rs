//! The command-line contract of the `c10k` binary: `c10k strategies`, argument
//! errors, the single `listening on` stdout line, signals, drain timeout,
//! `--max-conns` and the per-worker accept counts logged at shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(10);

fn c10k(args: &[&str]) -> Output {
    run_tool(Command::new(c10k_bin()).args(args), RUN_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `args` must fail: non-zero exit, nothing on stdout, exactly one line on stderr
/// that mentions `mention`.
fn expect_usage_error(args: &[&str], mention: &str) {
    let out = c10k(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "c10k {args:?} should fail; stderr: {stderr}"
    );
    assert!(
        out.status.code().is_some(),
        "c10k {args:?} died of a signal: {}",
        out.status
    );
    assert_eq!(stdout, "", "c10k {args:?} printed on stdout");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "c10k {args:?}: want a one-line error, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(mention),
        "c10k {args:?}: error should mention {mention:?}: {stderr}"
    );
}

/// `serve` with an echo app on `strategy`, plus `extra`.
fn serve_args<'a>(strategy: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--strategy",
        strategy,
        "--app",
        "echo",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

fn strategies_output() -> String {
    let out = c10k(&["strategies"]);
    assert!(
        out.status.success(),
        "c10k strategies: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The `c10k strategies` line of `name`.
fn strategy_line(listing: &str, name: &str) -> String {
    let lines: Vec<&str> = listing
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .collect();
    assert_eq!(lines.len(), 1, "want one line for {name} in:\n{listing}");
    lines[0].to_owned()
}

/// Whether a `c10k strategies` line says the strategy runs here ("available", as
/// opposed to "unavailable: why" or "not built yet").
fn says_available(line: &str) -> bool {
    line.contains(" available")
}

/// One echo round trip on a new connection.
fn echo_round_trip(server: &Server, payload: &[u8]) {
    let mut stream = connect(server.addr());
    stream.write_all(payload).unwrap();
    assert_eq!(read_exact_n(&mut stream, payload.len(), "echo"), payload);
}

#[test]
fn strategies_lists_epoll_with_their_c10k_item() {
    let listing = strategies_output();
    // Dan Kegel's C10K list: item 1 is nonblocking I/O with level-triggered readiness
    // notification, item 2 readiness *change* (edge-triggered) notification.
    for (name, item) in [("epoll-lt", "1"), ("epoll-et", "2")] {
        let line = strategy_line(&listing, name);
        let words: Vec<&str> = line.split_whitespace().collect();
        let item_at = words.iter().position(|w| *w == "item");
        assert!(
            item_at.is_some_and(|i| words.get(i + 1) == Some(&item)),
            "{name} should be C10K item {item}: {line:?}"
        );
        assert!(
            says_available(&line),
            "{name} should be available: {line:?}"
        );
    }
}

#[test]
fn strategies_one_well_formed_line_each() {
    let listing = strategies_output();
    let mut names = Vec::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() >= 3,
            "a strategy line has a name, an item and a status: {line:?}"
        );
        assert!(line.contains("item"), "no C10K item in {line:?}");
        assert!(!names.contains(&words[0]), "{} listed twice", words[0]);
        names.push(words[0]);
    }
    assert!(names.len() >= 2, "too few strategies:\n{listing}");
}

strategy_tests! {
    strategies: [
        select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green, kernel,
    ],
    tests: [serves_or_fails_cleanly],
}

/// `c10k strategies` lists the strategy; it serves when listed as available, and
/// otherwise (not built, or not usable here) fails at once with a one-line error and
/// no `listening on` line.
fn serves_or_fails_cleanly(name: &str) {
    let listing = strategies_output();
    let line = strategy_line(&listing, name);
    if says_available(&line) {
        let mut server = Server::start(name, "echo", &[]);
        echo_round_trip(&server, b"hello");
        server.stop();
    } else {
        expect_usage_error(&serve_args(name, &[]), name);
    }
}

/// `c10k strategies` lists exactly the registry, `Strategy::ALL`, in its order.
#[test]
fn strategies_lists_the_registry() {
    let listing = strategies_output();
    let listed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let registry: Vec<&str> = c10k_server::Strategy::ALL.iter().map(|i| i.name).collect();
    assert_eq!(listed, registry, "c10k strategies:\n{listing}");
}

#[test]
fn unknown_subcommand_is_a_one_line_error() {
    expect_usage_error(&["frobnicate"], "frobnicate");
}

#[test]
fn unknown_flag_is_a_one_line_error() {
    expect_usage_error(&serve_args("epoll-lt", &["--bogus-flag"]), "--bogus-flag");
}

#[test]
fn unknown_strategy_is_a_one_line_error() {
    expect_usage_error(&serve_args("no-such-strategy", &[]), "no-such-strategy");
}

#[test]
fn bad_values_are_one_line_errors() {
    let cases: [(&str, &str); 9] = [
        ("--workers", "many"),
        ("--accept", "sideways"),
        ("--max-conns", "-3"),
        ("--output-cap", "lots"),
        ("--output-cap", "12XB"),
        ("--drain-timeout", "forever"),
        ("--listen", "nowhere"),
        ("--app", "gopher"),
        ("--strategy", ""),
    ];
    for (flag, bad) in cases {
        let mut args = vec!["serve"];
        for (f, good) in [
            ("--strategy", "epoll-lt"),
            ("--app", "echo"),
            ("--listen", "127.0.0.1:0"),
        ] {
            if f != flag {
                args.extend([f, good]);
            }
        }
        args.extend([flag, bad]);
        expect_usage_error(&args, if bad.is_empty() { flag } else { bad });
    }
}

#[test]
fn serve_help_documents_the_flags() {
    let out = c10k(&["serve", "--help"]);
    assert!(out.status.success(), "c10k serve --help: {}", out.status);
    let help = text(&out.stdout);
    for flag in [
        "--strategy",
        "--app",
        "--listen",
        "--workers",
        "--accept",
        "--max-conns",
        "--output-cap",
        "--drain-timeout",
    ] {
        assert!(
            help.contains(flag),
            "serve --help does not mention {flag}:\n{help}"
        );
    }
}

/// Stdout carries exactly one line, `listening on IP:PORT`, whatever happens after.
#[test]
fn listening_line_is_the_only_stdout() {
    let mut server = Server::start("epoll-et", "http", &[]);
    let mut stream = connect(server.addr());
    stream.write_all(&http_get("/")).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    assert_eq!(read_http_response(&mut reader).status, 200);
    server.stop();
    assert_eq!(
        server.stdout_rest(),
        "",
        "stdout after the `listening on` line"
    );
}

#[test]
fn sigint_drains_and_exits_zero() {
    let mut server = Server::start("epoll-lt", "echo", &[]);
    echo_round_trip(&server, b"before SIGINT");
    server.signal(rustix::process::Signal::INT);
    let status = server.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN);
    assert!(status.success(), "exit status after SIGINT: {status}");
    server.assert_no_panic();
}

/// A request that never completes does not keep the server past `--drain-timeout`:
/// it exits at the drain deadline, not before it and not long after it.
#[test]
fn drain_timeout_bounds_the_exit() {
    let drain = Duration::from_secs(1);
    let mut server = Server::start(
        "epoll-et",
        "http",
        &["--drain-timeout", "1s", "--metrics", "127.0.0.1:0"],
    );
    let maddr = metrics_addr(&server);
    let mut stream = connect(server.addr());
    let partial =
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nonly part";
    stream.write_all(partial).unwrap();
    // The server has read the partial request: it is in flight at the signal.
    wait_metric(maddr, "c10k_received_bytes_total", "", partial.len() as u64);
    let signalled = Instant::now();
    server.sigterm();
    // Exit status after a forced drain is not part of the contract; exiting is.
    let status = server.wait_exit(drain + EXIT_MARGIN);
    assert_timed_out(
        "exit after SIGTERM with a request in flight and --drain-timeout 1s",
        signalled.elapsed(),
        drain,
    );
    assert!(status.code().is_some(), "killed by a signal: {status}");
    server.assert_no_panic();
    let mut rest = Vec::new();
    // The connection is gone once the process is: EOF or a reset, not a timeout.
    if let Err(err) = stream.read_to_end(&mut rest) {
        assert!(is_reset(&err), "connection after a forced drain: {err}");
    }
    eprintln!(
        "exited {:?} after SIGTERM with --drain-timeout 1s",
        signalled.elapsed()
    );
}

/// With `--max-conns 2`, a third connection is closed without being served; once
/// one closes, a new one is served again.
#[test]
fn max_conns_refuses_the_extra_connection() {
    let mut server = Server::start("epoll-et", "echo", &["--max-conns", "2"]);
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        s.write_all(name.as_bytes()).unwrap();
        assert_eq!(read_exact_n(s, 1, name), name.as_bytes());
    }

    let mut c = connect(server.addr());
    let _ = c.write_all(b"c"); // may fail if the server already reset it
    let mut buf = [0u8; 16];
    match common::read_some(&mut c, &mut buf) {
        Ok(0) => {}
        Err(err) if is_reset(&err) => {}
        Ok(n) => panic!("connection over --max-conns 2 was served: {:?}", &buf[..n]),
        Err(err) => panic!("connection over --max-conns 2 was neither served nor closed: {err}"),
    }
    drop(c);

    drop(a);
    // The server notices the close asynchronously: retry, bounded.
    let mut served = false;
    for _ in 0..100 {
        let mut d = connect(server.addr());
        let _ = d.write_all(b"d");
        match common::read_some(&mut d, &mut buf) {
            Ok(1) if buf[0] == b'd' => {
                served = true;
                break;
            }
            Ok(0) => {}
            Err(err) if is_reset(&err) => {}
            other => panic!("unexpected result on a new connection: {other:?}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served,
        "after closing one of 2 connections, new ones are still refused"
    );
    b.write_all(b"still").unwrap();
    assert_eq!(read_exact_n(&mut b, 5, "b after the refusals"), b"still");
    server.stop();
}

/// With 2 workers, the accept counts logged at shutdown add up to the connections
/// made, one count per worker.
#[test]
fn shutdown_logs_per_worker_accept_counts() {
    const CONNS: u64 = 20;
    for accept in ["reuseport", "exclusive"] {
        let mut server = Server::start("epoll-et", "echo", &["--workers", "2", "--accept", accept]);
        for i in 0..CONNS {
            echo_round_trip(&server, format!("conn {i}").as_bytes());
        }
        server.stop();
        let log = server.stderr_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.to_ascii_lowercase().contains("accept"))
            .unwrap_or_else(|| panic!("no accept counts in the log:\n{log}"));
        let after = &line[line.to_ascii_lowercase().find("accept").unwrap()..];
        let counts: Vec<u64> = after
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(counts.len(), 2, "want one count per worker (2) in {line:?}");
        assert_eq!(
            counts.iter().sum::<u64>(),
            CONNS,
            "accept counts in {line:?} (--accept {accept})"
        );
    }
}

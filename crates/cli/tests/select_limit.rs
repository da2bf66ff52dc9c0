//! select(2)'s hard limit: descriptors at or above FD_SETSIZE (1024) cannot be watched.
//! `c10k serve --strategy select` must refuse the connections beyond it cleanly (accept,
//! close, count, log) while every connection below it keeps working; `c10k strategies`
//! states the limit. Also: select and poll refuse `--accept exclusive` (no
//! EPOLLEXCLUSIVE) with a one-line error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Connections opened at once: more than FD_SETSIZE.
const TOTAL: usize = 1100;
/// Connections that must be served whatever else the server has open (stdio, the
/// listener, the shutdown pipe...).
const MUST_FIT: usize = 1000;
/// Descriptors the server always holds besides connections: 0-2, the listener, the
/// shutdown pipe's read end.
const MIN_OTHER_FDS: usize = 5;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Served,
    Refused,
}

/// Sends `payload` and reads it back, or finds the connection closed by the server.
fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> Result<Outcome, String> {
    match stream.write_all(payload) {
        Ok(()) => {}
        Err(e) if is_reset(&e) => return Ok(Outcome::Refused),
        Err(e) => return Err(format!("write: {e}")),
    }
    let mut buf = vec![0u8; payload.len()];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(Outcome::Refused),
            Ok(0) => return Err(format!("EOF after {got} of {} bytes", payload.len())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) && got == 0 => return Ok(Outcome::Refused),
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        }
    }
    if buf != payload {
        return Err("echo differs from what was sent".into());
    }
    Ok(Outcome::Served)
}

/// The server's descriptors, for a failure message.
fn server_fds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "(cannot read /proc)".into();
    };
    let mut fds: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            (!target.starts_with("socket:") || e.file_name().len() < 2)
                .then(|| format!("{}->{target}", e.file_name().to_string_lossy()))
        })
        .collect();
    fds.sort();
    fds.join(" ")
}

#[test]
fn select_refuses_beyond_fd_setsize_and_keeps_serving_the_first_1000() {
    let mut server = Server::start("select", "echo", &[]);
    let addr = server.addr();

    // Connected one after another, so that the server accepts them in this order.
    let mut conns: Vec<TcpStream> = (0..TOTAL).map(|_| connect(addr)).collect();

    // The last one cannot fit: the server must close it. Once it has, every earlier
    // connection has been accepted too.
    expect_eof(
        &mut conns[TOTAL - 1],
        "connection 1,100 (beyond FD_SETSIZE)",
    );

    // Now a round trip on each: a prefix is served, the rest was closed.
    let mut outcomes = Vec::with_capacity(TOTAL);
    for (i, stream) in conns.iter_mut().enumerate().take(TOTAL - 1) {
        let outcome = round_trip(stream, format!("connection {i}").as_bytes())
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        outcomes.push(outcome);
    }
    outcomes.push(Outcome::Refused);
    let fit = outcomes
        .iter()
        .position(|o| *o == Outcome::Refused)
        .unwrap();
    assert!(
        outcomes[fit..].iter().all(|o| *o == Outcome::Refused),
        "connections {fit}.. should all be refused once one is: {:?}",
        outcomes[fit..]
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == Outcome::Served)
            .map(|(i, _)| i + fit)
            .collect::<Vec<_>>()
    );
    assert!(
        fit >= MUST_FIT,
        "only {fit} connections were served before refusals began; the server holds \
         too many other descriptors below 1024: {}",
        server_fds(server.pid())
    );
    assert!(
        fit <= 1024 - MIN_OTHER_FDS,
        "{fit} connections served: more than select can watch"
    );
    let refused = TOTAL - fit;
    eprintln!("select served {fit} connections and refused {refused}");
    eprintln!(
        "server descriptors (sockets 10 and up left out): {}",
        server_fds(server.pid())
    );

    let log = server.stderr_text();
    assert!(
        log.contains("FD_SETSIZE limit of 1024"),
        "the refusals should be logged with the FD_SETSIZE limit; stderr:\n{log}"
    );

    // The first 1,000 still work after the refusals, with a larger payload.
    let mut rng = XorShift::new(1024);
    for (i, stream) in conns.iter_mut().enumerate().take(MUST_FIT) {
        let len = rng.range(1, 4096);
        let payload = rng.bytes(len);
        assert_eq!(
            round_trip(stream, &payload),
            Ok(Outcome::Served),
            "connection {i}, second round"
        );
    }

    // Still healthy: once descriptors free up, new connections are served again. The
    // server closes its ends of the dropped connections when it reads their EOF, which
    // may come after the next connect: retry a few times.
    conns.truncate(fit - 10);
    let mut served_fresh = false;
    let mut fresh_refused = 0;
    for _attempt in 0..100 {
        let mut fresh = connect(addr);
        match round_trip(&mut fresh, b"a new connection") {
            Ok(Outcome::Served) => {
                served_fresh = true;
                break;
            }
            Ok(Outcome::Refused) => {
                fresh_refused += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("a new connection after freeing descriptors: {e}"),
        }
    }
    assert!(
        served_fresh,
        "no new connection was served after 10 were closed"
    );
    drop(conns);

    server.stop();
    let log = server.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("worker 0:") && l.contains("(strategy limit)"))
        .unwrap_or_else(|| panic!("no per-worker counts in the log:\n{log}"));
    let counted: usize = line
        .split("(max-conns) and ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no strategy-limit refusal count in {line:?}"));
    assert_eq!(
        counted,
        refused + fresh_refused,
        "refusals counted by the server: {line:?}"
    );
}

#[test]
fn strategies_lists_select_and_poll_with_their_limits() {
    let out = run_tool(
        Command::new(c10k_bin()).arg("strategies"),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{listing}"))
            .to_owned()
    };
    let select = line("select");
    assert!(
        select.contains("item 1 ") && select.contains(" available"),
        "{select}"
    );
    assert!(
        select.contains("1024") && select.contains("FD_SETSIZE") && select.contains("refused"),
        "select's line should state the FD_SETSIZE limit and the refusals: {select}"
    );
    let poll = line("poll");
    assert!(
        poll.contains("item 1 ") && poll.contains(" available"),
        "{poll}"
    );
    assert!(poll.contains("per wait"), "{poll}");
}

strategy_tests! {
    only: [select, poll],
    tests: [refuses_accept_exclusive_with_several_workers],
}

/// `--accept exclusive` needs EPOLLEXCLUSIVE: refused with several workers, accepted
/// (irrelevant) with one.
fn refuses_accept_exclusive_with_several_workers(strategy: &str) {
    let mut cmd = Command::new(c10k_bin());
    cmd.args(["serve", "--strategy", strategy, "--app", "echo"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--accept",
            "exclusive",
        ]);
    let out = run_tool(&mut cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{strategy}: {stderr}");
    assert!(out.stdout.is_empty(), "{strategy}: no listening line");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{strategy}: one-line error, got:\n{stderr}");
    assert!(
        lines[0].contains("EPOLLEXCLUSIVE") && lines[0].contains("--accept reuseport"),
        "{strategy}: the error should say why and what to use: {stderr}"
    );
    // With one worker there is nothing to share: the mode is irrelevant and accepted.
    let mut server = Server::start(strategy, "echo", &["--accept", "exclusive"]);
    let mut c = connect(server.addr());
    assert_eq!(round_trip(&mut c, b"one worker"), Ok(Outcome::Served));
    server.stop();
}

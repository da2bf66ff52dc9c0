//! The `uring` strategy from the command line: its flags, how `c10k strategies`
//! reports it, `--max-conns`, EMFILE survival, and small buffer rings. (The
//! conformance suite runs it for every app; crates/server/tests/uring.rs checks
//! buffer ownership and leaks.)
//!
//! These tests need io_uring. When it is not usable here they fail, saying why.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use c10k_server::{Availability, Strategy};
use common::*;

fn need_uring() {
    if let Availability::Unavailable { reason } = Strategy::Uring.availability() {
        panic!("io_uring is not usable here, so the uring tests cannot run: {reason}");
    }
}

fn c10k(args: &[&str]) -> std::process::Output {
    run_tool(Command::new(c10k_bin()).args(args), Duration::from_secs(10))
}

/// `serve --strategy uring EXTRA` must fail with one line mentioning `mention`.
fn expect_one_line_error(extra: &[&str], mention: &str) {
    let mut args = vec![
        "serve",
        "--strategy",
        "uring",
        "--app",
        "echo",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let out = c10k(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line:\n{stderr}");
    assert!(lines[0].contains(mention), "{args:?}: {stderr}");
}

#[test]
fn strategies_reports_uring_as_the_probe_found_it() {
    let out = c10k(&["strategies"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some("uring"))
        .unwrap_or_else(|| panic!("no uring line in:\n{listing}"));
    assert!(line.contains("item 3"), "{line}");
    match Strategy::Uring.availability() {
        Availability::Available => assert!(line.contains(" available:"), "{line}"),
        Availability::Unavailable { reason } => {
            eprintln!("io_uring is NOT usable here: {reason}");
            assert!(
                line.contains("unavailable") && line.contains(&reason),
                "{line}"
            );
            assert!(line.contains("use epoll-et"), "{line}");
            expect_one_line_error(&[], "use --strategy epoll-et");
        }
        other => panic!("uring is built: {other:?}"),
    }
}

#[test]
fn uring_flags_are_documented_and_checked() {
    need_uring();
    let out = c10k(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--uring-entries", "--sqpoll", "--uring-buffers"] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
    expect_one_line_error(&["--uring-buffers", "1000x4KiB"], "power of two");
    expect_one_line_error(&["--uring-buffers", "64x16"], "64 B");
    expect_one_line_error(&["--uring-buffers", "lots"], "lots");
    expect_one_line_error(&["--uring-entries", "0"], "--uring-entries");
    expect_one_line_error(&["--uring-entries", "65536"], "--uring-entries");
}

/// A pool of 4 buffers of 64 bytes: receives keep running out of buffers (ENOBUFS)
/// and are re-armed; 20 connections echo 64 KiB each, all of it, in order.
#[test]
fn tiny_buffer_ring_still_echoes_everything() {
    need_uring();
    let mut server = Server::start("uring", "echo", &["--uring-buffers", "4x64"]);
    let addr = server.addr();
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            thread::spawn(move || {
                let data = XorShift::new(i + 1).bytes(64 * 1024);
                let mut s = connect(addr);
                let mut w = s.try_clone().unwrap();
                let d = data.clone();
                let writer = thread::spawn(move || w.write_all(&d).unwrap());
                let got = read_exact_n(&mut s, data.len(), "echo through 4 buffers");
                writer.join().unwrap();
                assert_same_bytes("echo through 4 buffers", &got, &data);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.stop();
}

/// With `--max-conns 2` a third connection is closed unserved; after one closes, a
/// new one is served.
#[test]
fn max_conns_refuses_the_extra_connection() {
    need_uring();
    let mut server = Server::start("uring", "echo", &["--max-conns", "2"]);
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    for s in [&mut a, &mut b] {
        s.write_all(b"x").unwrap();
        assert_eq!(read_exact_n(s, 1, "served"), b"x");
    }
    let mut c = connect(server.addr());
    let _ = c.write_all(b"c");
    let mut buf = [0u8; 8];
    match common::read_some(&mut c, &mut buf) {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("connection over --max-conns 2: {other:?}"),
    }
    drop(a);
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
            Err(e) if is_reset(&e) => {}
            other => panic!("a new connection: {other:?}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "after a close, new connections are still refused");
    server.stop();
}

/// Out of descriptors (the server runs with a limit of 64, 100 clients connect):
/// the accept pauses with a back-off and a log line instead of failing or spinning,
/// the connections already open are served, and accepting resumes as they close.
#[test]
fn out_of_descriptors_pauses_accepting_and_resumes() {
    need_uring();
    let prlimit = need_tool("prlimit");
    let prlimit = prlimit.to_str().unwrap();
    let mut server = Server::start_under(&[prlimit, "--nofile=64:64", "--"], "uring", "echo", &[]);
    let mut conns: Vec<_> = (0..100).map(|_| connect(server.addr())).collect();
    for c in &mut conns {
        c.write_all(b"e").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr_text().contains("pausing accepts") {
        assert!(
            Instant::now() < deadline,
            "no accept pause logged with 100 connections and 64 descriptors:\n{}",
            server.stderr_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // In order: each answer and close frees a descriptor for a connection waiting
    // in the backlog.
    for (i, mut c) in conns.into_iter().enumerate() {
        assert_eq!(read_exact_n(&mut c, 1, &format!("connection {i}")), b"e");
    }
    let mut late = connect(server.addr());
    late.write_all(b"late").unwrap();
    assert_eq!(read_exact_n(&mut late, 4, "after the pause"), b"late");
    server.stop();
    let log = server.stderr_text();
    let summary = log.lines().rev().find(|l| l.contains("accept pauses"));
    eprintln!("{}", summary.unwrap_or("(no summary line)"));
}

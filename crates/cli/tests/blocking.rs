//! Behaviour of the blocking strategies beyond the conformance suite: children are
//! reaped (no zombies while running, none left after exit), a dead prefork worker is
//! replaced, `--max-conns` and thread-creation failures are refused cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{Pid, Resource, Rlimit, Signal};

/// Bound of every "wait until" loop below.
const SETTLE: Duration = Duration::from_secs(10);

/// One echo round trip.
fn round_trip(stream: &mut TcpStream, what: &str) {
    stream.write_all(b"hello").unwrap();
    assert_eq!(read_exact_n(stream, 5, what), b"hello", "{what}");
}

/// A connection the server accepted and closed without serving: EOF or a reset,
/// and no echo.
fn expect_refused(addr: SocketAddr, what: &str) {
    let mut stream = connect(addr);
    let _ = stream.write_all(b"hello");
    let mut buf = [0u8; 16];
    match common::read_some(&mut stream, &mut buf) {
        Ok(0) => {}
        Err(err) if is_reset(&err) => {}
        Ok(n) => panic!("{what}: the connection was served ({n} bytes)"),
        Err(err) => panic!("{what}: neither served nor closed: {err}"),
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`SETTLE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} (waited {SETTLE:?})");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The server's children with their state and start time.
fn children(server: &Server) -> Vec<(u32, char, u64)> {
    descendants(server.pid())
        .into_iter()
        .filter_map(|pid| proc_state(pid).map(|(state, start)| (pid, state, start)))
        .collect()
}

fn zombies(server: &Server) -> Vec<u32> {
    children(server)
        .into_iter()
        .filter(|c| c.1 == 'Z')
        .map(|c| c.0)
        .collect()
}

/// None of `seen` (pid, start time) still exists, not even as a zombie (a pid reused
/// by an unrelated process has another start time).
fn assert_all_gone(seen: &[(u32, char, u64)], what: &str) {
    for &(pid, _, start) in seen {
        if let Some((state, s)) = proc_state(pid) {
            assert_ne!(
                s, start,
                "{what}: child {pid} of the server is still there (state {state})"
            );
        }
    }
}

#[test]
fn fork_reaps_every_child_and_leaves_none_after_exit() {
    let mut server = Server::start("fork", "echo", &[]);
    let addr = server.addr();
    // 20 connections at once: 20 children.
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        round_trip(c, &format!("connection {i}"));
    }
    wait_until("20 connection processes", || children(&server).len() == 20);
    let seen = children(&server);
    drop(conns);
    // Every child exits when its client closes, and is reaped: none left, not even
    // as a zombie (a zombie stays listed until its parent reaps it).
    wait_until("the closed connections' processes reaped", || {
        children(&server).is_empty()
    });
    assert_all_gone(&seen, "after the clients closed");

    // Sequential short connections: still no zombie accumulates.
    for i in 0..30 {
        let mut c = connect(addr);
        round_trip(&mut c, &format!("short connection {i}"));
    }
    wait_until("short-lived connection processes reaped", || {
        children(&server).is_empty()
    });

    // Idle connections at SIGTERM: the children drain and exit, the parent reaps
    // them and exits 0; nothing is left behind.
    let mut idle: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for (i, c) in idle.iter_mut().enumerate() {
        round_trip(c, &format!("idle connection {i}"));
    }
    wait_until("5 idle connection processes", || {
        children(&server).len() == 5
    });
    let seen = children(&server);
    assert!(
        zombies(&server).is_empty(),
        "zombies: {:?}",
        zombies(&server)
    );
    server.stop();
    for (i, c) in idle.iter_mut().enumerate() {
        expect_eof(c, &format!("idle connection {i} after SIGTERM"));
    }
    assert_all_gone(&seen, "after the server exited");
}

#[test]
fn prefork_replaces_a_killed_worker_and_leaves_no_zombies() {
    let mut server = Server::start("prefork", "echo", &["--workers", "3"]);
    wait_until("3 prefork workers", || children(&server).len() == 3);
    let first = children(&server);
    let victim = first[0].0;
    rustix::process::kill_process(
        Pid::from_raw(i32::try_from(victim).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_until("the killed worker reaped and replaced", || {
        let now = children(&server);
        now.len() == 3 && now.iter().all(|c| c.0 != victim && c.1 != 'Z')
    });
    // The pool still serves, three connections at once.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect(server.addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        round_trip(c, &format!("connection {i}"));
    }
    drop(conns);
    let seen = children(&server);
    server.stop();
    assert_all_gone(&seen, "after the server exited");
    let log = server.stderr_text();
    assert!(
        log.contains("was killed by signal 9") && log.contains("replacing it"),
        "the replacement is logged:\n{log}"
    );
}

/// `--max-conns 2`: a third connection is accepted and closed at once; once one of
/// the two closes, a new one is served.
fn max_conns_refuses_cleanly(strategy: &str) {
    let mut server = Server::start(strategy, "echo", &["--max-conns", "2"]);
    let addr = server.addr();
    let mut a = connect(addr);
    let mut b = connect(addr);
    round_trip(&mut a, "first");
    round_trip(&mut b, "second");
    expect_refused(addr, "third, beyond --max-conns 2");
    drop(a);
    // The slot frees once the server has seen the close (thread exit or reaping).
    let mut served = false;
    for _ in 0..100 {
        let mut c = connect(addr);
        let _ = c.write_all(b"hello");
        let mut buf = [0u8; 5];
        if c.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"hello");
            served = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "no connection served after a slot was freed");
    round_trip(&mut b, "second, still open");
    server.stop();
    let log = server.stderr_text();
    assert!(log.contains("--max-conns 2 reached"), "{log}");
}

#[test]
fn thread_max_conns_refuses_cleanly() {
    max_conns_refuses_cleanly("thread");
}

#[test]
fn fork_max_conns_refuses_cleanly() {
    max_conns_refuses_cleanly("fork");
}

fn vm_size_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Thread creation fails (EAGAIN) and the server survives: the connection is closed
/// and counted, the failure logged, and the next connection is served once a thread
/// can be made again.
///
/// RLIMIT_NPROC would be the natural way to make `pthread_create` fail, but root
/// (which the tests run as in CI) ignores it. The address-space limit applies to root
/// too: with 512 MiB stacks and RLIMIT_AS set to the server's current size plus
/// 768 MiB, the first connection's thread fits and a second one's stack cannot be
/// mapped, which `pthread_create` reports as EAGAIN, like a thread limit.
#[test]
fn thread_creation_failure_is_refused_and_survived() {
    const STACK: u64 = 512 * 1024 * 1024;
    let mut server = Server::start("thread", "echo", &["--stack-size", "512MiB"]);
    let addr = server.addr();
    let pid = server.pid();
    let limit = vm_size_bytes(pid) + STACK + 256 * 1024 * 1024;
    rustix::process::prlimit(
        Pid::from_raw(i32::try_from(pid).unwrap()),
        Resource::As,
        Rlimit {
            current: Some(limit),
            maximum: None,
        },
    )
    .unwrap();
    let mut a = connect(addr);
    round_trip(&mut a, "first connection (its thread fits)");
    expect_refused(addr, "second connection (no room for its stack)");
    wait_until("the refusal logged", || {
        server.stderr_text().contains("cannot create a thread")
    });
    round_trip(&mut a, "first connection, still served");
    drop(a);
    // Once the first thread has exited and its stack is unmapped, threads can be
    // created again.
    let mut served = false;
    for _ in 0..100 {
        let mut c = connect(addr);
        let _ = c.write_all(b"hello");
        let mut buf = [0u8; 5];
        if c.read_exact(&mut buf).is_ok() {
            served = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "no connection served after the first thread exited");
    server.stop();
}

#[test]
fn stack_size_out_of_range_is_a_one_line_error() {
    let out = run_tool(
        std::process::Command::new(c10k_bin()).args([
            "serve",
            "--strategy",
            "thread",
            "--listen",
            "127.0.0.1:0",
            "--stack-size",
            "4KiB",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stack-size must be 16KiB"), "{err}");
}

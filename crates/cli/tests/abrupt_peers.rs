//! Abrupt peers on every strategy, with the echo and the HTTP app: clients that reset
//! the connection mid-request (SO_LINGER 0, then close), clients that close while a
//! large response is being written (a 16 MiB echo, a 4 MiB `POST /echo`), and
//! half-open clients (they shut their write side and never read a large reply).
//! Afterwards the server's descriptor count (its whole process tree, from
//! /proc/PID/fd) must come back to what it was before, within a bounded wait (the
//! half-open ones are closed by `--idle-timeout 2s`), and the server still serves.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use support::{tree, tree_fds, wait_fds_at_most};

/// How long the descriptors may take to come back (idle timeout 2 s + linger 2 s +
/// slack for a loaded CI machine).
const FD_DEADLINE: Duration = Duration::from_secs(15);

/// Close with a reset: SO_LINGER 0, then close.
fn reset(c: TcpStream) {
    rustix::net::sockopt::set_socket_linger(&c, Some(Duration::ZERO)).unwrap();
    drop(c);
}

/// Writes up to `total` bytes of `chunk` repeated, stopping early (no error) when
/// the peer stops reading for a while or resets.
fn write_some(mut c: TcpStream, total: usize) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            match c.write(&chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => sent += k,
            }
        }
        sent
    })
}

/// `SET big <4 MiB>` then `GET big` four times: a 16 MiB answer. (In one connection:
/// fork and prefork keep a store per process.)
fn big_resp_request() -> Vec<u8> {
    let mut req = resp_cmd(&[b"SET", b"big", &vec![b'v'; 4 << 20]]);
    req.extend_from_slice(&resp_cmd(&[b"GET", b"big"]).repeat(4));
    req
}

/// One request served on a new connection, which is returned (still open).
fn serve_one(app: &str, addr: SocketAddr, what: &str) -> TcpStream {
    let mut c = connect(addr);
    match app {
        "resp" => {
            c.write_all(&resp_cmd(&[b"PING"])).unwrap();
            let mut r = BufReader::new(&mut c);
            assert!(
                matches!(read_resp(&mut r), Resp::Simple(ref s) if s == "PONG"),
                "{what}"
            );
        }
        "echo" => {
            c.write_all(b"ping").unwrap();
            assert_eq!(read_exact_n(&mut c, 4, what), b"ping");
        }
        _ => {
            c.write_all(&http_get("/")).unwrap();
            let resp = read_http_response(&mut BufReader::new(&mut c));
            assert_eq!(resp.status, 200, "{what}");
        }
    }
    c
}

fn post_head(len: usize) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "echo only, this runs http and resp too; kernel.rs: eof_and_reset_close_the_connection"],
    tests: [abrupt_peers_leave_no_descriptor_behind],
}

const APPS: [&str; 3] = ["echo", "http", "resp"];

fn abrupt_peers_leave_no_descriptor_behind(strategy: &str) {
    // The apps run side by side (most of the time is spent waiting for timeouts).
    let runs: Vec<_> = APPS
        .iter()
        .map(|&app| {
            let strategy = strategy.to_owned();
            (app, thread::spawn(move || one_app(&strategy, app)))
        })
        .collect();
    let failed: Vec<&str> = runs
        .into_iter()
        .filter_map(|(app, run)| run.join().is_err().then_some(app))
        .collect();
    assert!(
        failed.is_empty(),
        "{strategy}: failed with {failed:?} (see above)"
    );
}

fn one_app(strategy: &str, app: &str) {
    let extra: &[&str] = &["--idle-timeout", "2s", "--header-timeout", "2s"];
    let mut server = Server::start(strategy, app, extra);
    let addr = server.addr();
    let pid = server.pid();
    server.wait_tree_settled();
    let processes = tree(pid).len();
    let warm_up = serve_one(app, addr, &format!("{strategy}/{app}: warm-up"));
    // The baseline: the warm-up connection's lazily made state included, the
    // connection itself gone (fork: its process too).
    let with_it = tree_fds(pid);
    drop(warm_up);
    let t0 = Instant::now();
    let baseline = loop {
        let n = tree_fds(pid);
        if n < with_it && tree(pid).len() <= processes {
            break n;
        }
        assert!(
            t0.elapsed() < FD_DEADLINE,
            "{strategy}/{app}: the warm-up connection still open after {FD_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let label = format!("{strategy}/{app}");

    // 1. Resets in the middle of a request.
    for _ in 0..20 {
        let mut c = connect(addr);
        match app {
            "echo" => c.write_all(&[b'r'; 1000]).unwrap(),
            "resp" => {
                c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n")
                    .unwrap();
                c.write_all(&[b'r'; 1000]).unwrap();
            }
            _ => {
                c.write_all(&post_head(100_000)).unwrap();
                c.write_all(&[b'r'; 1000]).unwrap();
            }
        }
        // The scenario: the reset comes while the server reads the request.
        thread::sleep(Duration::from_millis(2));
        reset(c);
    }

    // 2. Close while a large response is being written.
    for _ in 0..3 {
        let mut c = connect(addr);
        let (total, head) = match app {
            "echo" => (16 << 20, Vec::new()),
            "resp" => (0, big_resp_request()),
            _ => (4 << 20, post_head(4 << 20)),
        };
        c.write_all(&head).unwrap();
        let writer = write_some(c.try_clone().unwrap(), total);
        let mut got = vec![0u8; 256 * 1024];
        c.read_exact(&mut got).unwrap();
        // Close with the rest unread (the kernel resets), while the writer may
        // still be writing.
        c.shutdown(Shutdown::Both).unwrap();
        drop(c);
        writer.join().unwrap();
    }

    // 3. Half-open: shut the write side, never read the (large) reply.
    let mut half_open = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..3 {
        let mut c = connect(addr);
        match app {
            "echo" => writers.push(write_some(c.try_clone().unwrap(), 4 << 20)),
            "http" => {
                c.write_all(&post_head(4 << 20)).unwrap();
                writers.push(write_some(c.try_clone().unwrap(), 4 << 20));
            }
            _ => {
                // A small request with a 16 MiB answer: the server is stuck
                // writing to a peer that will never read.
                c.write_all(&big_resp_request()).unwrap();
            }
        }
        half_open.push(c);
    }
    for w in writers {
        w.join().unwrap();
    }
    for c in &half_open {
        let _ = c.shutdown(Shutdown::Write);
    }
    let peak = tree_fds(pid);
    let (now, took) = wait_fds_at_most(pid, baseline, FD_DEADLINE);
    println!(
        "abrupt {label}: fds baseline {baseline}, {peak} after the abrupt clients, back to {now} in {:.1}s",
        took.as_secs_f64()
    );
    if app == "resp" {
        assert!(
            peak > baseline,
            "{label}: the half-open clients were not held open at all"
        );
    }
    assert!(
        now <= baseline,
        "{label}: {now} descriptors open {FD_DEADLINE:?} after the abrupt clients, {baseline} before:\n{}",
        server.stderr_text()
    );
    drop(half_open);
    drop(serve_one(
        app,
        addr,
        &format!("{label}: after the abrupt clients"),
    ));
    server.stop();
}

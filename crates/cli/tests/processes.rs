//! `c10k serve --processes N`: the supervisor forks N copies of a threaded strategy
//! behind `SO_REUSEPORT`, sums their counters on its `/metrics`, restarts a child
//! killed mid-load without touching the other children's connections, drains them all
//! on SIGTERM (exit 0), gives up with exit 1 when children crash at start, and refuses
//! what cannot work (exit 2, one line).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Server, c10k_bin, connect, descendants, metric, metrics_addr, read_exact_n, strategy_tests,
    wait_metric,
};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, pool, green],
    except: [
        fork: "runs processes already: refuses --processes (bad_values_exit_2_with_one_line)",
        prefork: "runs processes already: refuses --processes (bad_values_exit_2_with_one_line)",
        kernel: "its echo runs in the kernel on every CPU: refuses --processes",
    ],
    tests: [two_processes_serve_and_sum_their_counters],
}

/// Live children of the supervisor (zombies excluded).
fn children(server: &Server) -> Vec<u32> {
    descendants(server.pid())
        .into_iter()
        .filter(|&p| {
            common::proc_state(p).is_some_and(|(state, _)| state != 'Z')
                && std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u32>()
                            .ok()
                    })
                    == Some(server.pid())
        })
        .collect()
}

/// Waits (at most 10 s) until the supervisor has `n` live children; returns them.
fn wait_children(server: &Server, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = children(server);
        if kids.len() == n {
            return kids;
        }
        assert!(
            Instant::now() < deadline,
            "{} children, not {n}: {}",
            kids.len(),
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) -> bool {
    if c.write_all(msg).is_err() {
        return false;
    }
    let mut got = vec![0; msg.len()];
    let mut n = 0;
    while n < msg.len() {
        match c.read(&mut got[n..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    got == msg
}

fn open_echoing(server: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = connect(server.addr());
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(
                echo_once(&mut c, format!("hello {i}").as_bytes()),
                "conn {i}"
            );
            c
        })
        .collect()
}

fn two_processes_serve_and_sum_their_counters(strategy: &str) {
    let mut server = Server::start(
        strategy,
        "echo",
        &["--processes", "2", "--metrics", "127.0.0.1:0"],
    );
    let m = metrics_addr(&server);
    wait_children(&server, 2);
    let conns = open_echoing(&server, 24);
    let text = wait_metric(m, "c10k_connections_accepted_total", "", 24);
    assert!(
        text.contains("process=\"0\"") && text.contains("process=\"1\""),
        "{text}"
    );
    assert_eq!(metric(&text, "c10k_workers", ""), 2);
    drop(conns);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    server.assert_no_panic();
}

#[test]
fn a_killed_child_is_restarted_and_the_others_connections_are_unaffected() {
    let mut server = Server::start(
        "epoll-et",
        "echo",
        &["--processes", "2", "--metrics", "127.0.0.1:0"],
    );
    let m = metrics_addr(&server);
    let mut conns = open_echoing(&server, 40);
    let text = wait_metric(m, "c10k_connections_accepted_total", "", 40);
    let per = [
        metric(&text, "c10k_connections_accepted_total", "process=\"0\""),
        metric(&text, "c10k_connections_accepted_total", "process=\"1\""),
    ];
    assert!(
        per[0] > 0 && per[1] > 0,
        "SO_REUSEPORT spread them: {per:?}"
    );
    let mut kids = wait_children(&server, 2);
    kids.sort_unstable();
    // Slot 0 forks first.
    let victim = kids[0];
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Every connection of the other child still echoes; the victim's are closed.
    let survived = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| echo_once(c, format!("again {i}").as_bytes()))
        .filter(|&ok| ok)
        .count() as u64;
    assert_eq!(
        survived, per[1],
        "the other child's {} connections all still work (per process: {per:?})",
        per[1]
    );
    // Restarted in its slot, counted; new connections are all served.
    wait_metric(m, "c10k_process_restarts_total", "", 1);
    assert!(!wait_children(&server, 2).contains(&victim));
    drop(open_echoing(&server, 20));
    assert!(server.stderr_text().contains("restarting it"));
    drop(conns);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    server.assert_no_panic();
}

#[test]
fn sigterm_drains_every_child_and_exits_0() {
    let mut server = Server::start(
        "epoll-et",
        "echo",
        &["--processes", "2", "--work", "wait=400ms,async"],
    );
    let mut conns: Vec<TcpStream> = (0..8).map(|_| connect(server.addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("r{i}").as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let kids = wait_children(&server, 2);
    server.sigterm();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            read_exact_n(c, 2, "reply in flight"),
            format!("r{i}").as_bytes()
        );
    }
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    for k in kids {
        assert!(
            common::proc_state(k).is_none(),
            "child {k} outlived the supervisor"
        );
    }
    server.assert_no_panic();
}

#[test]
fn children_crashing_at_start_make_the_supervisor_exit_1() {
    // 32,768 x 1 MiB receive buffers cannot be allocated under an 8 GiB address-space
    // limit: every uring child fails at start.
    let out = Command::new("prlimit")
        .arg("--as=8589934592")
        .arg("--")
        .arg(c10k_bin())
        .args(["serve", "--strategy", "uring", "--app", "echo"])
        .args(["--listen", "127.0.0.1:0", "--processes", "2"])
        .args(["--uring-buffers", "32768x1MiB"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("giving up"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_values_exit_2_with_one_line() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let too_many = (cpus * 64 + 1).to_string();
    for (strategy, n) in [
        ("epoll-et", "0"),
        ("epoll-et", too_many.as_str()),
        ("epoll-et", "=-1"),
        ("fork", "2"),
        ("prefork", "2"),
        ("kernel", "2"),
    ] {
        let out = Command::new(c10k_bin())
            .args(["serve", "--strategy", strategy, "--app", "echo"])
            .args(["--listen", "127.0.0.1:0"])
            .arg(match n.strip_prefix('=') {
                Some(v) => format!("--processes={v}"),
                None => format!("--processes={n}"),
            })
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{strategy} --processes {n}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("processes") || strategy == "kernel", "{err}");
    }
    // Per-address limits need one shared count.
    let out = Command::new(c10k_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--processes", "2"])
        .args(["--max-conns-per-ip", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

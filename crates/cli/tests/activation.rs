//! Socket activation: `c10k serve` started with a listening socket at fd 3 and
//! `LISTEN_FDS=1`, `LISTEN_PID` = its pid (systemd's convention) serves on it instead
//! of binding `--listen`, shares it between its workers, and marks it close-on-exec.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{Server, c10k_bin, connect, read_http_response, run_tool};

/// `requests` keep-alive requests on `conns` connections; every answer is 200.
fn serve_some(server: &Server, conns: usize, requests: usize) {
    for _ in 0..conns {
        let c = connect(server.addr());
        let mut r = BufReader::new(&c);
        for _ in 0..requests {
            (&c).write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let resp = read_http_response(&mut r);
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, b"Hello, World!");
        }
    }
}

/// The `flags:` of `/proc/PID/fdinfo/FD`, octal.
fn fd_flags(pid: u32, fd: u32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    u32::from_str_radix(flags, 8).unwrap()
}

fn check(strategy: &str, extra: &[&str]) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start_with_listener(&listener, None, strategy, "http", extra);
    // The same "listening on" line, with the inherited socket's address (not the
    // --listen 127.0.0.1:0 the harness passes).
    assert_eq!(server.addr(), addr);
    serve_some(&server, 20, 3);
    assert_eq!(
        fd_flags(server.pid(), 3) & 0o2000000,
        0o2000000,
        "fd 3 is close-on-exec in the server"
    );
    let log = server.stderr_text();
    assert!(
        log.contains("using the inherited listening socket test on"),
        "{log}"
    );
    server.assert_no_panic();
}

#[test]
fn epoll_et_two_workers_share_the_inherited_socket() {
    check("epoll-et", &["--workers", "2"]);
}

#[test]
fn epoll_reuseport_mode_still_shares_the_one_inherited_socket() {
    check("epoll-lt", &["--workers", "3", "--accept", "reuseport"]);
}

#[test]
fn uring_two_workers() {
    check("uring", &["--workers", "2"]);
}

#[test]
fn thread_strategy() {
    check("thread", &[]);
}

#[test]
fn prefork_strategy() {
    check("prefork", &["--workers", "2"]);
}

#[test]
fn select_one_worker() {
    check("select", &[]);
}

/// `LISTEN_PID` of another process: the descriptors are not ours; the server binds
/// `--listen` as usual and says why.
#[test]
fn listen_pid_of_another_process_is_ignored() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::start_with_listener(&listener, Some("1"), "epoll-et", "http", &[]);
    assert_ne!(server.addr(), listener.local_addr().unwrap());
    serve_some(&server, 1, 1);
    let log = server.stderr_text();
    assert!(log.contains("ignoring LISTEN_FDS"), "{log}");
}

/// select and poll have no EPOLLEXCLUSIVE: one inherited socket for several workers
/// is refused with a message that says what to do.
#[test]
fn select_with_two_workers_refuses_a_shared_inherited_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let copy = rustix::io::dup(&listener).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&copy);
    let script =
        format!("exec 3<&{fd} {fd}<&-; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$0\" \"$@\"");
    let out = run_tool(
        Command::new("bash")
            .args(["-c", &script])
            .arg(c10k_bin())
            .args(["serve", "--strategy", "select", "--workers", "2"]),
        Duration::from_secs(20),
    );
    drop(copy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--workers 1"), "{err}");
}

/// A descriptor that is not a listening socket is an error, not a silent bind.
#[test]
fn a_non_listening_fd_is_an_error() {
    let out = run_tool(
        Command::new("bash")
            .args([
                "-c",
                "exec 3</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$0\" \"$@\"",
            ])
            .arg(c10k_bin())
            .args(["serve", "--listen", "127.0.0.1:0"]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not a socket"), "{err}");
}

/// `/metrics` says the listener was inherited, and counts what it served.
#[test]
fn metrics_report_the_inherited_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::start_with_listener(
        &listener,
        None,
        "epoll-et",
        "http",
        &["--workers", "2", "--metrics", "127.0.0.1:0"],
    );
    serve_some(&server, 4, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let maddr = loop {
        let log = server.stderr_text();
        if let Some(rest) = log.split("metrics on http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut c = connect(maddr.parse().unwrap());
    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let text = String::from_utf8(common::read_to_eof(&mut c, "metrics")).unwrap();
    assert!(
        text.contains("c10k_info{strategy=\"epoll-et\",accept=\"inherited\""),
        "{text}"
    );
    let requests: u64 = text
        .lines()
        .filter(|l| l.starts_with("c10k_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, 8, "{text}");
}

#[test]
fn processes_share_the_inherited_socket() {
    check("epoll-et", &["--processes", "2", "--workers", "2"]);
}

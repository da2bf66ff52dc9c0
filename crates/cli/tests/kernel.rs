//! The `kernel` strategy (an eBPF verdict program echoes in the kernel): the refusal
//! paths (no privileges, other apps, the PROXY header) and the working path over real
//! loopback sockets (many connections and sizes, one byte at a time, a large payload,
//! bytes sent before the server inserted the socket, EOF and RST, idle timeout,
//! `--max-conns`, counters, backpressure, SIGTERM drain; IPv6 over `::1`, and IPv4
//! peers of a dual-stack listener). The echo cases of the conformance suite run on it
//! too (`conformance.rs`).
//!
//! These need CAP_BPF and CAP_NET_ADMIN (the tests run as root); without them the
//! working-path tests fail with the reason, they are never skipped.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Runs a command as user nobody with every capability dropped.
const UNPRIVILEGED: [&str; 7] = [
    "setpriv",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

fn kernel(extra: &[&str]) -> Server {
    let s = strategy_under_test("kernel");
    Server::start(&s, "echo", extra)
}

/// The IPv6 loopback.
const V6: &str = "[::1]:0";
/// A dual-stack listener that takes only 127.0.0.1: an `AF_INET6` socket bound to an
/// IPv4-mapped address, whose peers are IPv4 (`::ffff:127.0.0.1` to the server).
const DUAL_STACK: &str = "[::ffff:127.0.0.1]:0";

fn kernel_on(listen: &str, extra: &[&str]) -> Server {
    let s = strategy_under_test("kernel");
    Server::start_on(listen, &s, "echo", extra)
}

/// Writes `data` from a thread (64 KiB pieces) while this thread reads it all back.
fn echo_concurrently(stream: &mut TcpStream, data: &Arc<Vec<u8>>, what: &str) {
    let mut w = stream.try_clone().unwrap();
    let d = Arc::clone(data);
    let writer = thread::spawn(move || {
        for piece in d.chunks(64 * KIB) {
            w.write_all(piece).unwrap();
        }
    });
    let got = read_exact_n(stream, data.len(), what);
    writer.join().expect("writer");
    assert_same_bytes(what, &got, data);
}

fn one_line_error(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status; stderr: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "{what}: no `listening on` line"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: want one line, got:\n{stderr}");
    lines[0].to_owned()
}

fn serve_output(wrapper: &[&str], args: &[&str]) -> std::process::Output {
    let mut cmd = match wrapper.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(need_tool(p));
            c.args(rest).arg(c10k_bin());
            c
        }
        None => Command::new(c10k_bin()),
    };
    cmd.args(["serve", "--strategy", "kernel", "--listen", "127.0.0.1:0"])
        .args(args);
    run_tool(&mut cmd, Duration::from_secs(20))
}

// ------------------------------------------------------------- refusals ------

/// Without CAP_BPF/CAP_NET_ADMIN (as nobody, every capability dropped) the probe says
/// why in `c10k strategies`, and `serve` exits 2 with one line naming epoll-et.
#[test]
fn without_privileges_it_is_unavailable_and_serve_names_epoll_et() {
    let mut cmd = Command::new(need_tool("setpriv"));
    cmd.args(&UNPRIVILEGED[1..])
        .arg(c10k_bin())
        .arg("strategies");
    let out = run_tool(&mut cmd, Duration::from_secs(20));
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line:\n{listing}"));
    assert!(line.contains("unavailable: "), "{line}");
    assert!(
        line.contains("CAP_BPF"),
        "the reason names the capability: {line}"
    );
    assert!(line.contains("use epoll-et"), "{line}");

    let err = one_line_error(
        &serve_output(&UNPRIVILEGED, &["--app", "echo"]),
        "serve as nobody",
    );
    assert!(err.contains("not available"), "{err}");
    assert!(err.contains("CAP_BPF"), "{err}");
    assert!(err.contains("--strategy epoll-et"), "{err}");
}

/// With privileges the same binary lists it as available.
#[test]
fn with_privileges_it_is_available() {
    let out = run_tool(
        Command::new(c10k_bin()).arg("strategies"),
        Duration::from_secs(20),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        line.contains(" available: "),
        "the tests run with CAP_BPF and CAP_NET_ADMIN: {line}"
    );
}

#[test]
fn other_apps_are_refused_with_the_reason_and_epoll_et() {
    for app in ["http", "resp"] {
        let err = one_line_error(&serve_output(&[], &["--app", app]), app);
        assert!(err.contains("--app echo only"), "{err}");
        assert!(err.contains("cannot parse HTTP or RESP"), "{err}");
        assert!(err.contains("--strategy epoll-et"), "{err}");
    }
}

#[test]
fn the_proxy_protocol_is_refused() {
    let err = one_line_error(
        &serve_output(&[], &["--app", "echo", "--proxy-protocol", "v1"]),
        "--proxy-protocol v1",
    );
    assert!(err.contains("epoll-et"), "{err}");
}

// ---------------------------------------------------------- the echo ------

/// Bytes sent right after connecting, before the server could accept and insert the
/// socket, come back (the insert kicks the verdict for what is already queued).
#[test]
fn bytes_sent_before_the_insert_are_echoed() {
    let mut server = kernel(&[]);
    for i in 0..50u8 {
        let mut s = connect(server.addr());
        s.write_all(&[i; 100]).unwrap();
        assert_eq!(read_exact_n(&mut s, 100, "early bytes"), vec![i; 100]);
    }
    server.stop();
}

/// One byte per write, each read back before the next, then a burst of single-byte
/// writes read back at the end.
#[test]
fn one_byte_at_a_time() {
    let mut server = kernel(&[]);
    let mut s = connect(server.addr());
    let data = XorShift::new(1).bytes(2000);
    for &b in &data[..500] {
        s.write_all(&[b]).unwrap();
        assert_eq!(read_exact_n(&mut s, 1, "byte echo"), [b]);
    }
    for &b in &data[500..] {
        s.write_all(&[b]).unwrap();
    }
    let got = read_exact_n(&mut s, 1500, "burst of single bytes");
    assert_same_bytes("single bytes", &got, &data[500..]);
    server.stop();
}

/// 500 clients at once, 1 MiB of random bytes each, compared byte for byte.
#[test]
fn five_hundred_clients_with_a_mebibyte_each() {
    const CLIENTS: usize = 500;
    const THREADS: usize = 10;
    let mut server = kernel(&[]);
    let addr = server.addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut conns: Vec<(TcpStream, Arc<Vec<u8>>)> = (0..CLIENTS / THREADS)
                    .map(|i| {
                        let seed = (t * 1000 + i) as u64 + 1;
                        (connect(addr), Arc::new(XorShift::new(seed).bytes(MIB)))
                    })
                    .collect();
                for (i, (s, data)) in conns.iter_mut().enumerate() {
                    echo_concurrently(s, data, &format!("client {t}/{i}"));
                }
                conns.len()
            })
        })
        .collect();
    let served: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(served, CLIENTS);
    server.stop();
}

/// 64 MiB through one connection, written and read concurrently, then 16 MiB read
/// slowly (a reader that takes its time but keeps up within the output cap).
#[test]
fn a_large_payload_and_a_slow_reader() {
    let mut server = kernel(&["--output-cap", "64MiB"]);
    let mut s = connect(server.addr());
    let data = Arc::new(XorShift::new(64).bytes(64 * MIB));
    echo_concurrently(&mut s, &data, "64 MiB");

    let data = Arc::new(XorShift::new(16).bytes(16 * MIB));
    let mut w = s.try_clone().unwrap();
    let d = Arc::clone(&data);
    let writer = thread::spawn(move || w.write_all(&d).unwrap());
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 256 * KIB];
    while got.len() < data.len() {
        thread::sleep(Duration::from_millis(5));
        let want = (data.len() - got.len()).min(buf.len());
        let n = read_some(&mut s, &mut buf[..want]).unwrap();
        assert_ne!(n, 0, "EOF after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    assert_same_bytes("16 MiB, slow reader", &got, &data);
    server.stop();
}

/// Half-close: everything comes back, then EOF; a peer that closes, and one that
/// resets, leave no descriptor behind.
#[test]
fn eof_and_reset_close_the_connection() {
    let mut server = kernel(&["--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&server);
    let mut s = connect(server.addr());
    let data = XorShift::new(3).bytes(300 * KIB + 7);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_to_eof(&mut s, "echo after half-close");
    assert_same_bytes("half-close", &got, &data);
    drop(s);

    // Reset: SO_LINGER 0 then close.
    let s = connect(server.addr());
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
    (&s).write_all(b"bye").unwrap();
    thread::sleep(Duration::from_millis(50));
    drop(s);
    // A plain close with the echo unread.
    let mut s = connect(server.addr());
    s.write_all(&[7u8; 4096]).unwrap();
    drop(s);

    let text = wait_metric(m, "c10k_connections_closed_total", "", 3);
    assert_eq!(metric(&text, "c10k_connections_open", ""), 0, "{text}");
    server.stop();
}

/// A peer whose FIN arrives before the accept (the kernel takes only established
/// sockets into a SOCKHASH) is echoed in user space: all of it, then EOF. Twenty
/// peers send and shut their write side at once, so most reach the backlog closed.
#[test]
fn peers_that_finished_before_the_accept_get_their_echo() {
    let mut server = kernel(&[]);
    let mut conns: Vec<(TcpStream, Vec<u8>)> = (0..20u64)
        .map(|i| {
            let mut s = connect(server.addr());
            let data = XorShift::new(100 + i).bytes(10 * KIB + i as usize);
            s.write_all(&data).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            (s, data)
        })
        .collect();
    for (i, (s, data)) in conns.iter_mut().enumerate() {
        let got = read_to_eof(s, &format!("peer {i}"));
        assert_same_bytes(&format!("peer {i}"), &got, data);
    }
    server.stop();
}

/// The counters come from TCP_INFO: what was received and acknowledged back.
#[test]
fn counters_come_from_the_sockets() {
    let mut server = kernel(&["--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&server);
    let mut s = connect(server.addr());
    let data = XorShift::new(9).bytes(123_457);
    s.write_all(&data).unwrap();
    let _ = read_exact_n(&mut s, data.len(), "echo");
    wait_metric(m, "c10k_received_bytes_total", "", data.len() as u64);
    wait_metric(m, "c10k_sent_bytes_total", "", data.len() as u64);
    wait_metric(m, "c10k_connections_open", "", 1);
    drop(s);
    wait_metric(m, "c10k_connections_open", "", 0);
    server.stop();
}

#[test]
fn idle_connections_time_out_and_busy_ones_do_not() {
    let mut server = kernel(&["--idle-timeout", "1s", "--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&server);
    let mut idle = connect(server.addr());
    idle.write_all(b"once").unwrap();
    let _ = read_exact_n(&mut idle, 4, "first echo");
    let mut busy = connect(server.addr());
    let busy_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < busy_until {
        busy.write_all(b"tick").unwrap();
        assert_eq!(read_exact_n(&mut busy, 4, "busy"), b"tick");
        thread::sleep(Duration::from_millis(200));
    }
    expect_eof(&mut idle, "idle connection");
    wait_metric(m, "c10k_timeouts_total", "kind=\"idle\"", 1);
    busy.write_all(b"still").unwrap();
    assert_eq!(read_exact_n(&mut busy, 5, "busy after 3 s"), b"still");
    server.stop();
}

#[test]
fn max_conns_refuses_the_third() {
    let mut server = kernel(&["--max-conns", "2"]);
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    a.write_all(b"a").unwrap();
    b.write_all(b"b").unwrap();
    assert_eq!(read_exact_n(&mut a, 1, "a"), b"a");
    assert_eq!(read_exact_n(&mut b, 1, "b"), b"b");
    let mut c = connect(server.addr());
    let _ = c.write_all(b"c");
    let mut buf = [0u8; 1];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("the third connection should be closed, got {other:?}"),
    }
    drop(a);
    thread::sleep(Duration::from_millis(300));
    let mut d = connect(server.addr());
    d.write_all(b"d").unwrap();
    assert_eq!(read_exact_n(&mut d, 1, "after one closed"), b"d");
    server.stop();
}

/// A peer that writes and never reads: the kernel would queue its echo without limit,
/// so the server resets it once more than --output-cap is pending. The client can
/// write only a bounded amount before the reset.
#[test]
fn a_peer_that_never_reads_is_reset() {
    let mut server = kernel(&["--output-cap", "1MiB", "--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&server);
    let s = connect(server.addr());
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![0x5au8; 256 * KIB];
    let started = Instant::now();
    let mut written = 0u64;
    let reset = loop {
        match (&s).write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if is_reset(&e) || e.kind() == std::io::ErrorKind::BrokenPipe => break true,
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    let took = started.elapsed();
    eprintln!("wrote {} MiB in {took:?} before the reset", written >> 20);
    assert!(
        reset,
        "not reset after writing {written} bytes for {took:?}"
    );
    assert!(took < Duration::from_secs(3), "reset after {took:?}");
    wait_metric(m, "c10k_errors_total", "kind=\"io\"", 1);
    // The log line may land a moment after the counter: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr_text().contains("--output-cap") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stderr_text().contains("--output-cap"));
    server.stop();
}

/// SIGTERM: new connections are refused, an idle connection gets EOF at once, a
/// connection with echo pending gets all of it then EOF, one that never reads is
/// closed at --drain-timeout; exit 0.
#[test]
fn sigterm_drains_idle_busy_and_stuck_connections() {
    let mut server = kernel(&["--drain-timeout", "2s", "--output-cap", "64MiB"]);
    let addr = server.addr();
    let mut idle = connect(addr);
    idle.write_all(b"x").unwrap();
    let _ = read_exact_n(&mut idle, 1, "idle");
    let mut busy = connect(addr);
    let data = XorShift::new(5).bytes(4 * MIB);
    let mut w = busy.try_clone().unwrap();
    let d = data.clone();
    let writer = thread::spawn(move || w.write_all(&d).unwrap());
    let stuck = connect(addr);
    (&stuck).write_all(&[1u8; MIB]).unwrap();
    thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    server.sigterm();
    expect_eof(&mut idle, "idle connection at SIGTERM");
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "idle closed late"
    );
    let got = read_exact_n(&mut busy, data.len(), "busy connection drains");
    writer.join().unwrap();
    assert_same_bytes("echo across SIGTERM", &got, &data);
    expect_eof(&mut busy, "busy connection once drained");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "the stuck peer held the drain: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "drained in {took:?}");
    drop(stuck);
}

/// Two workers, each with its own map: connections spread over both, all echoed.
#[test]
fn two_workers_each_with_a_map() {
    let mut server = kernel(&["--workers", "2"]);
    let addr = server.addr();
    let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("conn {i}");
        s.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exact_n(s, msg.len(), &msg), msg.as_bytes());
    }
    server.stop();
}

// ------------------------------------------------------------- IPv6 ------

/// Eight clients over `::1` at once, 1 MiB of random bytes each, compared byte for
/// byte.
#[test]
fn ipv6_clients_with_random_payloads() {
    let mut server = kernel_on(V6, &[]);
    let addr = server.addr();
    assert!(addr.is_ipv6(), "{addr}");
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            thread::spawn(move || {
                let mut s = connect(addr);
                let data = Arc::new(XorShift::new(600 + i).bytes(MIB));
                echo_concurrently(&mut s, &data, &format!("IPv6 client {i}"));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    server.stop();
}

/// Over `::1`: one random byte per write, each read back before the next, on three
/// clients in turn.
#[test]
fn ipv6_one_byte_at_a_time() {
    let mut server = kernel_on(V6, &[]);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(server.addr())).collect();
    let data = XorShift::new(6).bytes(300);
    for &b in &data {
        for (i, s) in clients.iter_mut().enumerate() {
            s.write_all(&[b]).unwrap();
            assert_eq!(read_exact_n(s, 1, &format!("IPv6 client {i}")), [b]);
        }
    }
    server.stop();
}

/// Over `::1`: bytes sent right after connecting, before the server inserted the
/// socket, come back.
#[test]
fn ipv6_bytes_sent_before_the_insert_are_echoed() {
    let mut server = kernel_on(V6, &[]);
    for i in 0..50u8 {
        let mut s = connect(server.addr());
        s.write_all(&[i; 100]).unwrap();
        assert_eq!(
            read_exact_n(&mut s, 100, "early bytes over IPv6"),
            vec![i; 100]
        );
    }
    server.stop();
}

/// IPv4 clients of a dual-stack listener (their sockets are `AF_INET6`, their
/// addresses IPv4-mapped): early bytes, then random payloads.
#[test]
fn ipv4_peers_of_a_dual_stack_listener() {
    let mut server = kernel_on(DUAL_STACK, &[]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr().port()));
    for i in 0..20u64 {
        let mut s = connect(addr);
        let data = Arc::new(XorShift::new(700 + i).bytes(64 * KIB + i as usize));
        s.write_all(&data[..100]).unwrap();
        assert_same_bytes(
            "early bytes, IPv4-mapped",
            &read_exact_n(&mut s, 100, "early bytes, IPv4-mapped"),
            &data[..100],
        );
        echo_concurrently(&mut s, &data, &format!("IPv4-mapped client {i}"));
    }
    server.stop();
}

/// Zero-downtime restart on `kernel` (README "Zero-downtime restart", as
/// `restart.rs` runs it for the HTTP strategies): a new instance takes over the shared
/// listening socket while clients keep opening connections and echoing through them,
/// the old one drains on SIGTERM and exits 0, and no connection is refused or reset,
/// no echo comes back short or different, and every connection opened was accepted by
/// one of the two.
#[test]
fn a_restart_hands_over_the_listener_without_losing_an_echo() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    const CLIENTS: usize = 4;
    const MAX_PER_CLIENT: u64 = 20_000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut old = Server::start_with_listener(&listener, None, "kernel", "echo", &[]);
    assert_eq!(old.addr(), addr);

    let ok = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (ok, opened, failures, stop) = (
                Arc::clone(&ok),
                Arc::clone(&opened),
                Arc::clone(&failures),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                let mut rng = XorShift::new(100 + i as u64);
                for _ in 0..MAX_PER_CLIENT {
                    if stop.load(SeqCst) {
                        return;
                    }
                    let mut one = || -> Result<(), String> {
                        let mut s =
                            TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                        opened.fetch_add(1, SeqCst);
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        // One message per connection: echo has no request boundary, so a
                        // draining instance closes a connection once it has been quiet
                        // (docs/notes/kernel.md, Drain), and a client that writes again
                        // after a pause could meet that close, as an HTTP keep-alive
                        // client meets an idle close.
                        let n = rng.range(1, 4096);
                        let data = rng.bytes(n);
                        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
                        let mut got = vec![0u8; n];
                        s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                        if got != data {
                            return Err("the echo differs".into());
                        }
                        Ok(())
                    };
                    match one() {
                        Ok(()) => {
                            ok.fetch_add(1, SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    let wait_more = |from: u64, what: &str| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = ok.load(SeqCst);
            if now >= from + 200 {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: only {} echoes",
                now - from
            );
            thread::sleep(Duration::from_millis(10));
        }
    };
    let p1 = wait_more(0, "old instance alone");
    let mut new = Server::start_with_listener(&listener, None, "kernel", "echo", &[]);
    assert_eq!(new.addr(), addr);
    let p2 = wait_more(p1, "both instances");
    old.sigterm();
    let status = old.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "old instance: {status}");
    let p3 = ok.load(SeqCst);
    wait_more(p3, "new instance alone");
    stop.store(true, SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    new.sigterm();
    let status = new.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "new instance: {status}");

    let (old_log, new_log) = (old.stderr_text(), new.stderr_text());
    let (old_acc, new_acc) = (accepted_in_log(&old_log), accepted_in_log(&new_log));
    let failures = failures.lock().unwrap();
    eprintln!(
        "kernel restart: {} connections echoed ({p1} old alone, {} with both, {} after \
         the old one exited); old accepted {old_acc}, new {new_acc}; {} failures",
        ok.load(SeqCst),
        p2 - p1,
        ok.load(SeqCst) - p3,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failures: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        old_acc > 0 && new_acc > 0,
        "both served:\n{old_log}\n{new_log}"
    );
    assert_eq!(
        old_acc + new_acc,
        opened.load(SeqCst),
        "every connection opened was accepted by one instance:\n{old_log}\n{new_log}"
    );
    old.assert_no_panic();
    new.assert_no_panic();
}

//! The PROXY protocol (`--proxy-protocol`) and the per-address limit
//! (`--max-conns-per-ip`) over real sockets, on every strategy: the app and the logs
//! see the header's client; a missing, malformed or slow header closes the
//! connection without a reply; each client address gets its own ceiling, counted
//! from the header when there is one.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    IO_TIMEOUT, Server, assert_timed_out, connect, expect_eof, read_http_response, strategy_tests,
};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "refuses --proxy-protocol (kernel.rs: the_proxy_protocol_is_refused)"],
    tests: [
        headers_give_the_app_and_the_logs_the_real_client,
        a_missing_malformed_or_slow_header_closes_without_a_reply,
    ],
}

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, pool, green],
    except: [
        fork: "one count per process: refuses --max-conns-per-ip (tested below)",
        prefork: "one count per process: refuses --max-conns-per-ip (tested below)",
        kernel: "echo only, these use http",
    ],
    tests: [
        max_conns_per_ip_gives_each_source_address_its_own_ceiling,
        max_conns_per_ip_counts_the_header_client_not_the_proxy,
    ],
}

strategy_tests! {
    only: [fork, prefork],
    tests: [max_conns_per_ip_is_refused_where_processes_keep_their_own_counts],
}

/// The `--header-timeout` of the slow-header case.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

fn v2_header(command: u8, src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, 0x11, 0, 12 + 7]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    // One TLV (PP2_TYPE_AUTHORITY "a.test").
    h.extend_from_slice(&[0x02, 0, 4]);
    h.extend_from_slice(b"a.te");
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// A client socket bound to `source` (any 127.0.0.0/8 address) before connecting.
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::new(source, 0))?;
    connect(&fd, &to)?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn get_ok(stream: &mut TcpStream, what: &str) {
    stream.write_all(GET).unwrap();
    let resp = read_http_response(&mut BufReader::new(&mut *stream));
    assert_eq!(resp.status, 200, "{what}");
}

/// Waits (bounded) until the server's stderr contains `needle`.
fn wait_for_log(server: &Server, needle: &str) {
    let t0 = Instant::now();
    while !server.stderr_text().contains(needle) {
        assert!(
            t0.elapsed() < IO_TIMEOUT,
            "no log line with {needle:?}; stderr:\n{}",
            server.stderr_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn headers_give_the_app_and_the_logs_the_real_client(strategy: &str) {
    // prefork serves one connection per process: four are held open at once.
    let workers = if strategy == "prefork" { "8" } else { "2" };
    let server = Server::start(
        strategy,
        "http",
        &[
            "--proxy-protocol",
            "any",
            "--log-connections",
            "--workers",
            workers,
        ],
    );
    let what = strategy.to_string();
    // v1, then a keep-alive request on the same connection.
    let mut c = connect(server.addr());
    c.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5551 80\r\n")
        .unwrap();
    get_ok(&mut c, &what);
    get_ok(&mut c, &what);
    wait_for_log(
        &server,
        "connection from 192.0.2.1:5551 (via proxy 127.0.0.1:",
    );
    // v2 with a TLV, header and request in one write.
    let mut c2 = connect(server.addr());
    let mut bytes = v2_header(1, [198, 51, 100, 7], 5552);
    bytes.extend_from_slice(GET);
    c2.write_all(&bytes).unwrap();
    let resp = read_http_response(&mut BufReader::new(&mut c2));
    assert_eq!(resp.status, 200, "{what}");
    wait_for_log(&server, "connection from 198.51.100.7:5552 (via proxy");
    // v1 sent a byte at a time.
    let mut c3 = connect(server.addr());
    for b in b"PROXY TCP6 2001:db8::5 ::1 5553 80\r\n" {
        c3.write_all(&[*b]).unwrap();
    }
    get_ok(&mut c3, &what);
    wait_for_log(&server, "connection from [2001:db8::5]:5553");
    // A LOCAL health check is served with the socket's own address.
    let mut c4 = connect(server.addr());
    c4.write_all(&v2_local()).unwrap();
    get_ok(&mut c4, &what);
    wait_for_log(&server, "connection from 127.0.0.1:");
    drop((c, c2, c3, c4));
    server.assert_no_panic();
}

fn a_missing_malformed_or_slow_header_closes_without_a_reply(strategy: &str) {
    let server = Server::start(
        strategy,
        "http",
        &[
            "--proxy-protocol",
            "v2",
            "--header-timeout",
            "1s",
            "--workers",
            "2",
        ],
    );
    // No header: the request itself is not one.
    let mut c = connect(server.addr());
    c.write_all(GET).unwrap();
    expect_eof(&mut c, &format!("{strategy}: request without a header"));
    // A v1 header where only v2 is accepted.
    let mut c = connect(server.addr());
    c.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\r\n")
        .unwrap();
    expect_eof(&mut c, &format!("{strategy}: v1 header on a v2 listener"));
    // A v2 header with a length shorter than its address block.
    let mut c = connect(server.addr());
    let mut bad = v2_header(1, [192, 0, 2, 1], 1);
    bad[15] = 4;
    c.write_all(&bad[..20]).unwrap();
    expect_eof(&mut c, &format!("{strategy}: v2 header with a bad length"));
    // Half a header, then nothing: closed by the header timeout.
    let mut c = connect(server.addr());
    c.write_all(&v2_header(1, [192, 0, 2, 1], 1)[..10]).unwrap();
    let stalled = Instant::now();
    expect_eof(&mut c, &format!("{strategy}: slow header"));
    assert_timed_out(
        &format!("{strategy}: half a PROXY header"),
        stalled.elapsed(),
        HEADER_TIMEOUT,
    );
    // A good client is still served.
    let mut ok = connect(server.addr());
    ok.write_all(&v2_header(1, [192, 0, 2, 9], 9)).unwrap();
    get_ok(&mut ok, strategy);
    drop(ok);
    // The log says so, rate-limited to one line a second per kind.
    wait_for_log(&server, "PROXY protocol header");
    server.assert_no_panic();
}

/// Opens a connection from `source` and tells whether it is served (an echo comes
/// back) or closed at once.
fn echo_served(source: IpAddr, to: SocketAddr, header: Option<&[u8]>) -> Option<TcpStream> {
    let mut s = connect_from(source, to).unwrap();
    if let Some(h) = header {
        s.write_all(h).unwrap();
    }
    if s.write_all(b"ping").is_err() {
        return None;
    }
    let mut buf = [0u8; 4];
    match std::io::Read::read_exact(&mut s, &mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"ping");
            Some(s)
        }
        Err(_) => None,
    }
}

/// A refused connection's slot is back once the server has seen the close; wait
/// (bounded) for that.
fn served_eventually(source: IpAddr, to: SocketAddr, header: Option<&[u8]>) -> TcpStream {
    let t0 = Instant::now();
    loop {
        if let Some(s) = echo_served(source, to, header) {
            return s;
        }
        assert!(t0.elapsed() < IO_TIMEOUT, "{source} was never served again");
        thread::sleep(Duration::from_millis(20));
    }
}

fn max_conns_per_ip_gives_each_source_address_its_own_ceiling(strategy: &str) {
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let server = Server::start(
        strategy,
        "echo",
        &["--max-conns-per-ip", "2", "--workers", "2"],
    );
    let addr = server.addr();
    let a1 = echo_served(one, addr, None).expect("first from 127.0.0.1");
    let a2 = echo_served(one, addr, None).expect("second from 127.0.0.1");
    assert!(
        echo_served(one, addr, None).is_none(),
        "{strategy}: a third connection from 127.0.0.1 was served"
    );
    let b1 = echo_served(two, addr, None);
    assert!(b1.is_some(), "{strategy}: 127.0.0.2 was refused");
    drop(a1);
    let a3 = served_eventually(one, addr, None);
    wait_for_log(&server, "--max-conns-per-ip 2 reached");
    drop((a2, a3, b1));
    server.assert_no_panic();
}

fn max_conns_per_ip_counts_the_header_client_not_the_proxy(strategy: &str) {
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let server = Server::start(
        strategy,
        "echo",
        &[
            "--max-conns-per-ip",
            "1",
            "--proxy-protocol",
            "v1",
            "--workers",
            "2",
        ],
    );
    let addr = server.addr();
    let h1 = b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 80\r\n";
    let h2 = b"PROXY TCP4 192.0.2.2 127.0.0.1 1000 80\r\n";
    // Two clients through one proxy address: both served.
    let c1 = echo_served(proxy, addr, Some(h1)).expect("192.0.2.1");
    let c2 = echo_served(proxy, addr, Some(h2));
    assert!(c2.is_some(), "{strategy}: 192.0.2.2 was refused");
    // A second connection of the same client: refused.
    assert!(
        echo_served(proxy, addr, Some(h1)).is_none(),
        "{strategy}: a second connection of 192.0.2.1 was served"
    );
    drop(c1);
    let c3 = served_eventually(proxy, addr, Some(h1));
    drop((c2, c3));
    server.assert_no_panic();
}

fn max_conns_per_ip_is_refused_where_processes_keep_their_own_counts(strategy: &str) {
    let out = std::process::Command::new(common::c10k_bin())
        .args([
            "serve",
            "--strategy",
            strategy,
            "--listen",
            "127.0.0.1:0",
            "--max-conns-per-ip",
            "4",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{strategy}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-conns-per-ip"), "{strategy}: {err}");
}

#[test]
fn bad_values_exit_2_with_one_line_saying_what_to_do() {
    for (args, says) in [
        (&["--proxy-protocol", "v3"][..], "off, v1, v2 or any"),
        (&["--max-conns-per-ip", "0"][..], "at least 1"),
        (&["--max-conns-per-ip", "many"][..], "max-conns-per-ip"),
    ] {
        let out = std::process::Command::new(common::c10k_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

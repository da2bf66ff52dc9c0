//! Idle and request (header) timeouts, on every strategy: a stalled
//! request is answered (HTTP 408) and closed, an idle connection is closed, and slow
//! clients (slowloris) do not keep a normal client from being served.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::time::Duration;

use common::{Server, connect, read_http_response, read_to_eof};

const STRATEGIES: [&str; 10] = [
    "epoll-lt", "epoll-et", "poll", "select", "uring", "thread", "fork", "prefork", "pool", "green",
];

fn start(strategy: &str, app: &str) -> Server {
    // prefork serves one connection per process: size its pool to the slowloris test
    // (200 slow clients and one normal one at a time).
    let workers: &[&str] = if strategy == "prefork" {
        &["--workers", "260"]
    } else {
        &[]
    };
    let mut args = vec!["--header-timeout", "1s", "--idle-timeout", "2s"];
    args.extend_from_slice(workers);
    Server::start(strategy, app, &args)
}

#[test]
fn http_partial_head_gets_408_and_a_close() {
    for strategy in STRATEGIES {
        let server = start(strategy, "http");
        let mut slow = connect(server.addr());
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // A normal client is served meanwhile.
        let mut fast = connect(server.addr());
        fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let resp = read_http_response(&mut BufReader::new(&mut fast));
        assert_eq!(resp.status, 200, "{strategy}");
        let got = read_to_eof(&mut slow, "the stalled request's answer");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{strategy}: {text}"
        );
        assert!(text.contains("Connection: close"), "{strategy}: {text}");
    }
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout() {
    for strategy in STRATEGIES {
        let server = start(strategy, "echo");
        let mut c = connect(server.addr());
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // Nothing more is sent: the server closes after ~2 s (read times out at 20 s).
        let rest = read_to_eof(&mut c, "idle close");
        assert!(rest.is_empty(), "{strategy}");
    }
}

#[test]
fn resp_partial_command_is_closed_after_the_request_timeout() {
    for strategy in STRATEGIES {
        let server = start(strategy, "resp");
        let mut c = connect(server.addr());
        c.write_all(b"*2\r\n$3\r\nGET\r\n").unwrap();
        let rest = read_to_eof(&mut c, "stalled RESP command");
        assert!(
            rest.is_empty(),
            "{strategy}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[test]
fn slowloris_clients_are_closed_and_do_not_block_a_normal_client() {
    for strategy in STRATEGIES {
        let server = start(strategy, "http");
        let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n";
        let mut slow: Vec<_> = (0..200).map(|_| connect(server.addr())).collect();
        // Each slow client sends one header byte per round; the header never ends.
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
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 408 "),
                "{strategy} slow client {i}: {text}"
            );
        }
    }
}

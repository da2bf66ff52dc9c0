//! Which error kind a failure is counted as: a connection the server never served
//! (the kernel completed the handshake, nobody accepted it) is a
//! `first_reply_timeout`, a connection that was answered and then stalled is a
//! `reply_timeout`, and connections still waiting for their first reply when the run
//! ends are reported as unanswered even though they had not reached the timeout.
//!
//! Every server here serves only 127.0.0.1, and every loop is bounded by the run's own
//! duration.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use c10k_load::{AppKind, LoadConfig, LoadReport, Progress, run};

fn load(addr: SocketAddr, conns: usize, duration: Duration, timeout: Duration) -> LoadConfig {
    let mut c = LoadConfig::new(addr, AppKind::Echo, conns, duration);
    c.warmup = Duration::ZERO;
    c.timeout = timeout;
    c
}

fn go(config: &LoadConfig) -> LoadReport {
    let report = run(config, Arc::new(Progress::new())).unwrap();
    eprintln!("{}", report.summary());
    report
}

#[test]
fn a_connection_never_accepted_is_a_first_reply_timeout() {
    // Listening, never accepting: connects succeed (the kernel queues them), no
    // request is ever read. This is what a starved accept loop looks like.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let r = go(&load(
        addr,
        3,
        Duration::from_millis(900),
        Duration::from_millis(300),
    ));
    assert_eq!(r.connected, 3);
    assert_eq!(r.requests, 0);
    assert!(r.errors.first_reply_timeout >= 3, "{:?}", r.errors);
    assert_eq!(
        r.errors.total, r.errors.first_reply_timeout,
        "{:?}",
        r.errors
    );
    assert!(
        r.summary().contains("first_reply_timeout="),
        "{}",
        r.summary()
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("unserved")),
        "{:?}",
        r.warnings
    );
    drop(listener);
}

#[test]
fn a_connection_answered_then_stalled_is_a_reply_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Each connection: echo the first message, then read nothing for 3 s.
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if let Ok(n) = conn.read(&mut buf) {
                    let _ = conn.write_all(&buf[..n]);
                }
                thread::sleep(Duration::from_secs(3));
            });
        }
    });
    let r = go(&load(
        addr,
        2,
        Duration::from_millis(900),
        Duration::from_millis(300),
    ));
    assert!(r.errors.reply_timeout >= 2, "{:?}", r.errors);
    assert_eq!(r.errors.first_reply_timeout, 0, "{:?}", r.errors);
    assert_eq!(r.unanswered_conns, 0);
}

#[test]
fn connections_still_unserved_at_the_end_are_reported() {
    // The run (1.5 s) ends before the timeout (10 s): no error, but every connection
    // waited over a second for its first reply.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let r = go(&load(
        addr,
        4,
        Duration::from_millis(1500),
        Duration::from_secs(10),
    ));
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.unanswered_conns, 4);
    assert!(r.summary().contains("unanswered"), "{}", r.summary());
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["unanswered_conns"], 4);
    assert_eq!(v["errors"]["first_reply_timeout"], 0);
    drop(listener);
}

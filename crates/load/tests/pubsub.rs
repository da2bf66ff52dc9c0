//! `--app pubsub` against a real `redis-server`: every delivery Redis announces arrives,
//! nothing is lost, duplicated or reordered, the latency histogram fills, the JSON
//! report has its keys; a subscriber the server disconnects is counted apart.
//!
//! The tests start their own `redis-server` on 127.0.0.1 (a free port, no persistence)
//! and fail, never skip, when it is not installed: scripts/test.sh installs it. Every
//! run is bounded by its own duration and grace period.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use c10k_load::{LoadConfig, LoadReport, Progress, run};

/// A `redis-server` child, killed on drop.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server() -> String {
    for path in [
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
    ] {
        if Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return path.to_string();
        }
    }
    panic!(
        "redis-server is not installed: run scripts/test.sh, which installs it \
         (Debian package redis-server)"
    );
}

impl Redis {
    fn start() -> Redis {
        let bin = redis_server();
        // redis-server cannot be asked for port 0: take a free port and retry if another
        // process takes it first.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut redis = Redis {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = redis.child.try_wait() {
                    break; // exited: the port was taken
                }
                if command(redis.addr, &["PING"]).is_ok_and(|r| r == "+PONG") {
                    return redis;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start on 127.0.0.1");
    }
}

/// Sends one command to `addr` on a new connection; returns the reply's first line, or
/// the whole bulk string for a bulk reply.
fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
        let mut body = vec![0; len + 2];
        reader.read_exact(&mut body)?;
        body.truncate(len);
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(line)
}

fn go(config: &LoadConfig) -> LoadReport {
    let report = run(config, Arc::new(Progress::new())).unwrap();
    eprintln!("{}", report.summary());
    report
}

#[test]
fn fifty_subscribers_on_two_channels_get_every_message() {
    let redis = Redis::start();
    let mut c = LoadConfig::pubsub(redis.addr, 50, 2, 200.0, Duration::from_secs(2));
    c.channels = 2;
    let r = go(&c);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.connected, 52);
    let p = r.pubsub.as_ref().unwrap();
    assert_eq!(p.subscribed, 50);
    // About 400 due in 2 s; the publishers answered for all of them.
    assert!(
        (390..=401).contains(&p.published),
        "published {}",
        p.published
    );
    assert_eq!(p.unconfirmed_publishes, 0);
    // 25 subscribers per channel: every message is expected 25 times, Redis said so,
    // and each arrived exactly once.
    assert_eq!(p.expected, p.published * 25);
    assert_eq!(p.receivers_reported, p.expected);
    assert_eq!(p.delivered, p.expected);
    assert_eq!(p.lost, 0);
    assert_eq!((p.duplicates, p.out_of_order, p.unexpected), (0, 0, 0));
    assert_eq!(p.disconnected_subscribers, 0);
    assert!(p.settled);
    assert_eq!(p.delivery_samples, p.delivered);
    assert!(
        p.delivery_p50_us > 0.0
            && p.delivery_p50_us <= p.delivery_p99_us
            && p.delivery_p99_us <= p.delivery_p999_us
            && p.delivery_p999_us <= p.delivery_max_us,
        "{p:?}"
    );
    assert!(p.delivered_per_s > 0.0);
    // The PUBLISH round trips are the report's request figures.
    assert_eq!(r.requests, p.published);

    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["app"], "pubsub");
    for key in [
        "subscribers",
        "subscribed",
        "publishers",
        "channels",
        "message_bytes",
        "published",
        "unconfirmed_publishes",
        "receivers_reported",
        "expected",
        "delivered",
        "delivered_per_s",
        "lost",
        "duplicates",
        "out_of_order",
        "unexpected",
        "disconnected_subscribers",
        "undelivered_to_disconnected",
        "delivery_p50_us",
        "delivery_p99_us",
        "delivery_p999_us",
        "delivery_max_us",
        "grace_s",
        "settled",
    ] {
        assert!(v["pubsub"].get(key).is_some(), "no pubsub.{key} in {v}");
    }
    assert_eq!(v["pubsub"]["lost"], 0);
    assert_eq!(v["pubsub"]["delivered"], v["pubsub"]["expected"]);
    assert!(r.summary().contains("lost 0"), "{}", r.summary());
}

#[test]
fn subscribers_the_server_disconnects_are_counted_apart() {
    let redis = Redis::start();
    let mut c = LoadConfig::pubsub(redis.addr, 20, 1, 200.0, Duration::from_millis(1500));
    c.threads = 2;
    // Half way through, Redis closes 5 of the 20 subscribers.
    let killer = {
        let addr = redis.addr;
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(700));
            let list = command(addr, &["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap();
            let ids: Vec<String> = list
                .lines()
                .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(String::from))
                .take(5)
                .collect();
            for id in &ids {
                assert_eq!(command(addr, &["CLIENT", "KILL", "ID", id]).unwrap(), ":1");
            }
            ids.len()
        })
    };
    let r = go(&c);
    assert_eq!(killer.join().unwrap(), 5);
    let p = r.pubsub.as_ref().unwrap();
    assert_eq!(p.subscribed, 20);
    assert_eq!(p.disconnected_subscribers, 5);
    assert_eq!(r.errors.closed + r.errors.reset, 5, "{:?}", r.errors);
    // The other 15 got everything; the 5 missed what came after (and what Redis
    // dropped with them), reported apart from the lost.
    assert_eq!(p.lost, 0);
    assert!(
        p.undelivered_to_disconnected >= 5 * 50,
        "undelivered {}",
        p.undelivered_to_disconnected
    );
    assert_eq!(p.expected, p.published * 20);
    assert_eq!(p.delivered + p.undelivered_to_disconnected, p.expected);
    // Redis stopped counting them as receivers once they were gone.
    assert!(p.receivers_reported < p.expected);
    assert!(p.settled);
}

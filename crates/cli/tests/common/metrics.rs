//! The server's `/metrics` endpoint as a test's clock: instead of sleeping until
//! something has probably happened, a test waits (bounded) for the counter that says
//! it did.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, connect, read_http_response};

/// How long a counter may take to reach its value (a forked child publishes its
/// counters when its connection ends, the parent reaps it later).
pub const METRICS_SETTLE: Duration = Duration::from_secs(10);

/// The endpoint's address, from the server's `metrics on http://ADDR/metrics` log
/// line (waited for, at most 10 s). The server must run with `--metrics 127.0.0.1:0`.
pub fn metrics_addr(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.stderr_text();
        if let Some(rest) = text.split("metrics on http://").nth(1) {
            let addr = rest.split('/').next().unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|_| panic!("bad `metrics on` address {addr:?}"));
        }
        assert!(
            Instant::now() < deadline,
            "no `metrics on` log line (is --metrics set?):\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` over a plain socket: the exposition text.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    let mut c = connect(addr);
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|err| panic!("GET /metrics: {err}"));
    let resp = read_http_response(&mut BufReader::new(c));
    assert_eq!(resp.status, 200, "GET /metrics");
    String::from_utf8(resp.body).unwrap_or_else(|err| panic!("/metrics is not UTF-8: {err}"))
}

/// The sum of the samples of family `name` whose labels contain `filter` (e.g.
/// `kind="idle"`; "" for all of them).
pub fn metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let family = series.split('{').next().unwrap_or_default();
            family == name && series.contains(filter)
        })
        .map(|(_, value)| value.parse::<f64>().unwrap_or(0.0) as u64)
        .sum()
}

/// Scrapes until `metric(name, filter)` is `want` (at most [`METRICS_SETTLE`]);
/// returns that scrape. Fails with the last scrape otherwise.
pub fn wait_metric(addr: SocketAddr, name: &str, filter: &str, want: u64) -> String {
    let deadline = Instant::now() + METRICS_SETTLE;
    loop {
        let text = scrape_metrics(addr);
        if metric(&text, name, filter) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{filter}}} is {}, not {want}, after {METRICS_SETTLE:?}; last scrape:\n{text}",
            metric(&text, name, filter)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

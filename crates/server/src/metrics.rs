//! `/metrics`: the counters of [`WorkerStats`] in the Prometheus text exposition format
//! (version 0.0.4), served over HTTP by a small endpoint that never runs on a worker.
//!
//! - **Where it runs.** For the thread-based strategies, a dedicated thread
//!   (`c10k-metrics`) blocks in `poll(2)` on the metrics listener and the shutdown pipe.
//!   The forking strategies must stay single-threaded (see `strategy/procs.rs`), so
//!   their parent polls the metrics listener beside its own fds and answers a scrape
//!   itself, each one bounded by [`PARENT_BUDGET`]; the parent only accepts (`fork`)
//!   or supervises (`prefork`), so the workers never wait for a scrape.
//! - **Where the numbers come from.** Every series is one row of [`SERIES`], the
//!   counters' layout, which lives with the counters (`stats.rs`): a name, help text,
//!   optional `kind` label, and the [`WorkerStats`] field it reads. This module only
//!   renders it.
//! - **Forked workers.** A child's memory is a copy, so its counters are invisible to
//!   the parent. Children therefore publish what they counted into a `MAP_SHARED`
//!   mapping created before the first fork ([`SharedStats`]): `prefork` workers after
//!   every accept and every connection (one block per pool slot, so `worker` is the
//!   slot), `fork` children when their connection ends. The parent adds its own
//!   counters (fork: accepts and refusals; prefork: drain kills) to worker 0.
//! - Anything but `GET /metrics` (or `HEAD`) is answered 400, 404 or 405, and the
//!   connection is closed after every answer.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, poll};

use crate::accept::{Accepted, accept_one};
use crate::gate::GateStats;
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};
// The layout lives with the counters; re-exported for `strategy/prefork.rs`, which
// still finds a series here.
pub(crate) use crate::stats::SERIES;

/// Longest time the single-threaded parent of `fork`/`prefork` spends answering
/// scrapes per wake-up (a client that sends its request slowly gets a 400 or nothing).
pub(crate) const PARENT_BUDGET: Duration = Duration::from_millis(200);
/// Longest time the metrics thread spends answering scrapes per wake-up.
const THREAD_BUDGET: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint renders: live references to a server's counters.
pub(crate) struct Metrics {
    /// The strategy's name.
    pub(crate) strategy: &'static str,
    /// Render the io_uring series (the `uring` strategy).
    pub(crate) uring: bool,
    /// `reuseport`, `exclusive` or `inherited`.
    pub(crate) accept: &'static str,
    pub(crate) max_conns: usize,
    pub(crate) stats: Vec<Arc<WorkerStats>>,
    pub(crate) open: Arc<OpenConns>,
    /// Forking strategies: what the children counted.
    pub(crate) shared: Option<Arc<SharedStats>>,
    /// The gate's process-wide counters (PROXY headers, per-address refusals).
    pub(crate) gate: Option<Arc<GateStats>>,
    pub(crate) started: SystemTime,
    /// The label of a row: `worker`, or `process` under a supervisor.
    pub(crate) row_label: &'static str,
    /// Under a supervisor: the children it restarted.
    pub(crate) restarts: Option<Arc<AtomicU64>>,
}

impl Metrics {
    /// Per-worker values: the in-process counters, or for a forking strategy the
    /// shared blocks with the parent's own counters added to worker 0.
    fn rows(&self) -> Vec<Vec<u64>> {
        let Some(shared) = &self.shared else {
            return self.stats.iter().map(|s| s.snapshot()).collect();
        };
        let mut rows: Vec<Vec<u64>> = (0..shared.blocks()).map(|b| shared.snapshot(b)).collect();
        if let (Some(first), Some(parent)) = (rows.first_mut(), self.stats.first()) {
            for (v, p) in first.iter_mut().zip(parent.snapshot()) {
                *v += p;
            }
        }
        rows
    }

    fn open_now(&self) -> u64 {
        let shared = self.shared.as_ref().map_or(0, |s| s.open_sum());
        self.open.current() as u64 + shared
    }

    /// The whole exposition.
    pub(crate) fn render(&self) -> String {
        let rows = self.rows();
        let mut out = String::with_capacity(4096);
        let mut last = "";
        for (i, s) in SERIES.iter().enumerate() {
            if s.uring_only && !self.uring {
                continue;
            }
            if s.name != last {
                let help = if s.help.is_empty() {
                    // The family's help is on its first row.
                    SERIES
                        .iter()
                        .find(|f| f.name == s.name && !f.help.is_empty())
                        .map_or("", |f| f.help)
                } else {
                    s.help
                };
                let _ = writeln!(out, "# HELP {} {}", s.name, escape_help(help));
                let _ = writeln!(out, "# TYPE {} {}", s.name, s.kind);
                last = s.name;
            }
            for (w, row) in rows.iter().enumerate() {
                let value = row.get(i).copied().unwrap_or(0);
                match s.label {
                    Some((k, v)) => {
                        let _ = writeln!(
                            out,
                            "{}{{{}=\"{w}\",{k}=\"{v}\"}} {value}",
                            s.name, self.row_label
                        );
                    }
                    None => {
                        let _ = writeln!(out, "{}{{{}=\"{w}\"}} {value}", s.name, self.row_label);
                    }
                }
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, labels: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{labels} {value}");
        };
        gauge(
            &mut out,
            "c10k_connections_open",
            "Connections open now (all workers).",
            "",
            self.open_now().to_string(),
        );
        gauge(
            &mut out,
            "c10k_max_connections",
            "The --max-conns limit (per process).",
            "",
            self.max_conns.to_string(),
        );
        gauge(
            &mut out,
            "c10k_workers",
            "Worker rows reported: event loops, accept loops, prefork pool slots (fork: 1).",
            "",
            rows.len().to_string(),
        );
        gauge(
            &mut out,
            "c10k_info",
            "The strategy, how the listener is shared, and the version; always 1.",
            &format!(
                "{{strategy=\"{}\",accept=\"{}\",version=\"{}\"}}",
                self.strategy,
                self.accept,
                env!("CARGO_PKG_VERSION")
            ),
            "1".to_string(),
        );
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        gauge(
            &mut out,
            "c10k_start_time_seconds",
            "When the server started, in seconds since the Unix epoch.",
            "",
            format!("{}.{:03}", started.as_secs(), started.subsec_millis()),
        );
        if let Some(gate) = &self.gate {
            render_gate(&mut out, gate);
        }
        if let Some(restarts) = &self.restarts {
            let name = "c10k_process_restarts_total";
            let _ = writeln!(
                out,
                "# HELP {name} Child processes the supervisor restarted after they died (--processes)."
            );
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(
                out,
                "{name} {}",
                restarts.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        out
    }
}

/// The gate's counters: process-wide, so without a `worker` label. For fork the
/// connection processes count in their own memory, so these stay at the parent's 0.
fn render_gate(out: &mut String, gate: &GateStats) {
    let get = GateStats::get;
    /// A family: name, help, and its rows (`kind` label, counter).
    type Family<'a> = (&'a str, &'a str, &'a [(&'a str, &'a AtomicU64)]);
    let families: [Family<'_>; 3] = [
        (
            "c10k_proxy_headers_total",
            "PROXY protocol headers accepted, by command (proxy: client address taken; local: health check).",
            &[("proxy", &gate.proxy_headers), ("local", &gate.proxy_local)],
        ),
        (
            "c10k_proxy_rejected_total",
            "Connections closed for their PROXY header, by kind (malformed: missing, bad or cut short; timeout: incomplete past --header-timeout).",
            &[
                ("malformed", &gate.proxy_errors),
                ("timeout", &gate.proxy_timeouts),
            ],
        ),
        (
            "c10k_refused_per_ip_total",
            "Connections refused by --max-conns-per-ip.",
            &[("", &gate.refused_per_ip)],
        ),
    ];
    for (name, help, rows) in families {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} counter");
        for (kind, counter) in rows {
            if kind.is_empty() {
                let _ = writeln!(out, "{name} {}", get(counter));
            } else {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", get(counter));
            }
        }
    }
}

/// `# HELP` text escapes backslashes and newlines.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A bound metrics listener and what it serves.
pub(crate) struct MetricsEndpoint {
    pub(crate) listener: TcpListener,
    pub(crate) metrics: Metrics,
}

impl MetricsEndpoint {
    /// The address scrapes go to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answer the scrapes waiting in the backlog (at most 16), all within `budget`.
    pub(crate) fn serve_ready(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        for _ in 0..16 {
            if Instant::now() >= deadline {
                return;
            }
            match accept_one(&self.listener) {
                Accepted::Conn(stream, _) => {
                    if let Err(e) = answer(stream, &self.metrics, deadline) {
                        tracing::debug!("metrics request: {e}");
                    }
                }
                Accepted::Retry => {}
                Accepted::Empty => return,
                Accepted::Exhausted(e) | Accepted::Failed(e) => {
                    tracing::debug!("metrics accept: {e}");
                    return;
                }
            }
        }
    }

    /// Serve on a thread of its own until `shutdown` triggers.
    pub(crate) fn spawn(self, shutdown: Arc<Shutdown>) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("c10k-metrics".into())
            .spawn(move || {
                loop {
                    let mut fds = [
                        PollFd::from_borrowed_fd(self.listener.as_fd(), PollFlags::IN),
                        PollFd::from_borrowed_fd(shutdown.wake_fd(), PollFlags::IN),
                    ];
                    match poll(&mut fds, None) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(e) => {
                            tracing::warn!("metrics endpoint stopped: {e}");
                            return;
                        }
                    }
                    if !fds[1].revents().is_empty() || shutdown.is_requested() {
                        return;
                    }
                    if !fds[0].revents().is_empty() {
                        self.serve_ready(THREAD_BUDGET);
                    }
                }
            })
    }
}

/// Read one request head and answer it; the connection closes afterwards.
fn answer(mut stream: TcpStream, metrics: &Metrics, deadline: Instant) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(e) => return Err(e),
        }
    };
    let (status, body, head_only) = if complete {
        route(&head, metrics)
    } else {
        (
            "400 Bad Request",
            "bad request: send GET /metrics\n".to_string(),
            false,
        )
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        reply.push_str("Allow: GET, HEAD\r\n");
    }
    reply.push_str("\r\n");
    if !head_only {
        reply.push_str(&body);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
    stream.write_all(reply.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Status, body, and whether the body is left out (HEAD).
fn route(head: &[u8], metrics: &Metrics) -> (&'static str, String, bool) {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request line\n".into(), false);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || method.is_empty() || !target.starts_with('/')
    {
        return ("400 Bad Request", "bad request line\n".into(), false);
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return ("404 Not Found", "not found: try /metrics\n".into(), false);
    }
    match method {
        "GET" => ("200 OK", metrics.render(), false),
        "HEAD" => ("200 OK", metrics.render(), true),
        _ => ("405 Method Not Allowed", "use GET\n".into(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(strategy: &'static str) -> Metrics {
        let s = Arc::new(WorkerStats::default());
        WorkerStats::add(&s.accepted, 3);
        WorkerStats::add(&s.timeouts_idle, 2);
        Metrics {
            strategy,
            uring: strategy == "uring",
            accept: "reuseport",
            max_conns: 10,
            stats: vec![s, Arc::new(WorkerStats::default())],
            open: Arc::new(OpenConns::default()),
            shared: None,
            row_label: "worker",
            restarts: None,
            gate: Some(Arc::new(GateStats::default())),
            started: UNIX_EPOCH + Duration::from_millis(1500),
        }
    }

    #[test]
    fn renders_per_worker_rows_with_labels() {
        let text = metrics("epoll-et").render();
        assert!(text.contains("c10k_connections_accepted_total{worker=\"0\"} 3\n"));
        assert!(text.contains("c10k_connections_accepted_total{worker=\"1\"} 0\n"));
        assert!(text.contains("c10k_timeouts_total{worker=\"0\",kind=\"idle\"} 2\n"));
        assert!(text.contains("# TYPE c10k_timeouts_total counter\n"));
        assert!(text.contains("c10k_info{strategy=\"epoll-et\",accept=\"reuseport\""));
        assert!(text.contains("c10k_start_time_seconds 1.500\n"));
        assert!(!text.contains("uring"), "no uring series for epoll");
        assert!(metrics("uring").render().contains("c10k_uring_cqes_total"));
    }

    #[test]
    fn routes() {
        let m = metrics("poll");
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n", &m).0, "200 OK");
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &m).0, "200 OK");
        assert!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n", &m).2);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n", &m).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"garbage\r\n\r\n", &m).0, "400 Bad Request");
        assert_eq!(
            route(b"GET /metrics SPDY/9\r\n\r\n", &m).0,
            "400 Bad Request"
        );
    }
}

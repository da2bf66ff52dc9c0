//! What a load run measured: the JSON a machine reads and the text a person reads.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The kinds of error a run counts. Each says where the exchange stopped: at the
/// connect (nothing was served), on a connection that had never been answered (the
/// server had not served it yet), or on one it had been serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the connection (RST to the SYN: nothing listening, or a full
    /// accept queue with `tcp_abort_on_overflow`).
    ConnectRefused,
    /// A connect took longer than the timeout (SYNs dropped: a full SYN or accept
    /// queue, retransmitted after 1 s, 3 s...).
    ConnectTimeout,
    /// Any other connect failure.
    ConnectOther,
    /// An open connection was lost: reset by the server (ECONNRESET, ECONNABORTED,
    /// EPIPE) or given up by TCP (ETIMEDOUT).
    Reset,
    /// The server closed an open connection (EOF) it was expected to keep.
    Closed,
    /// No reply within the timeout on a connection that had received no reply yet: the
    /// handshake was done (by the kernel), but the server never served the connection
    /// (still in its accept queue, or accepted and its thread, process or task never
    /// got to run).
    FirstReplyTimeout,
    /// A reply took longer than the timeout on a connection the server had already
    /// answered.
    ReplyTimeout,
    /// A reply that is not what the request expects.
    BadReply,
    /// The load generator ran out of file descriptors.
    FdLimit,
    /// Open loop: a request was due while no connection was open.
    NoConnection,
    /// Any other I/O error.
    Other,
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorCounts {
    /// See [`ErrorKind::ConnectRefused`].
    pub connect_refused: u64,
    /// See [`ErrorKind::ConnectTimeout`].
    pub connect_timeout: u64,
    /// See [`ErrorKind::ConnectOther`].
    pub connect_other: u64,
    /// See [`ErrorKind::Reset`].
    pub reset: u64,
    /// See [`ErrorKind::Closed`].
    pub closed: u64,
    /// See [`ErrorKind::FirstReplyTimeout`].
    pub first_reply_timeout: u64,
    /// See [`ErrorKind::ReplyTimeout`].
    pub reply_timeout: u64,
    /// See [`ErrorKind::BadReply`].
    pub bad_reply: u64,
    /// See [`ErrorKind::FdLimit`].
    pub fd_limit: u64,
    /// See [`ErrorKind::NoConnection`].
    pub no_connection: u64,
    /// See [`ErrorKind::Other`].
    pub other: u64,
    /// All of the above.
    pub total: u64,
}

impl ErrorKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::ConnectOther,
        ErrorKind::Reset,
        ErrorKind::Closed,
        ErrorKind::FirstReplyTimeout,
        ErrorKind::ReplyTimeout,
        ErrorKind::BadReply,
        ErrorKind::FdLimit,
        ErrorKind::NoConnection,
        ErrorKind::Other,
    ];

    /// The kind's name: its key in the JSON and its word in the summary.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectOther => "connect_other",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::FirstReplyTimeout => "first_reply_timeout",
            ErrorKind::ReplyTimeout => "reply_timeout",
            ErrorKind::BadReply => "bad_reply",
            ErrorKind::FdLimit => "fd_limit",
            ErrorKind::NoConnection => "no_connection",
            ErrorKind::Other => "other",
        }
    }
}

impl ErrorCounts {
    /// The count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        match kind {
            ErrorKind::ConnectRefused => self.connect_refused,
            ErrorKind::ConnectTimeout => self.connect_timeout,
            ErrorKind::ConnectOther => self.connect_other,
            ErrorKind::Reset => self.reset,
            ErrorKind::Closed => self.closed,
            ErrorKind::FirstReplyTimeout => self.first_reply_timeout,
            ErrorKind::ReplyTimeout => self.reply_timeout,
            ErrorKind::BadReply => self.bad_reply,
            ErrorKind::FdLimit => self.fd_limit,
            ErrorKind::NoConnection => self.no_connection,
            ErrorKind::Other => self.other,
        }
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::ConnectRefused => &mut self.connect_refused,
            ErrorKind::ConnectTimeout => &mut self.connect_timeout,
            ErrorKind::ConnectOther => &mut self.connect_other,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Closed => &mut self.closed,
            ErrorKind::FirstReplyTimeout => &mut self.first_reply_timeout,
            ErrorKind::ReplyTimeout => &mut self.reply_timeout,
            ErrorKind::BadReply => &mut self.bad_reply,
            ErrorKind::FdLimit => &mut self.fd_limit,
            ErrorKind::NoConnection => &mut self.no_connection,
            ErrorKind::Other => &mut self.other,
        }
    }

    /// Counts one error.
    pub fn add(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
        self.total += 1;
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, o: &ErrorCounts) {
        for kind in ErrorKind::ALL {
            *self.slot(kind) += o.get(kind);
        }
        self.total += o.total;
    }

    /// The non-zero counts as `kind=n` words.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = ErrorKind::ALL
            .iter()
            .filter(|&&k| self.get(k) > 0)
            .map(|&k| format!("{}={}", k.name(), self.get(k)))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Everything a run measured. Latencies are in microseconds, CPU in seconds; the keys
/// name their unit.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// echo, http, resp or pubsub.
    pub app: String,
    /// The server's address.
    pub target: String,
    /// closed, open or idle.
    pub mode: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections open when the connect phase ended.
    pub connected: usize,
    /// Event-loop threads (with `processes`: all processes' together).
    pub threads: usize,
    /// `--processes`: the load processes the connections were spread over (absent: one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    /// Closed loop: requests outstanding per connection.
    pub pipeline: usize,
    /// Open loop: the requests per second asked for (null in a closed loop).
    pub rate_rps: Option<f64>,
    /// The request size parameter (`--size`), if given.
    pub size_bytes: Option<usize>,
    /// Source addresses bound explicitly (empty: the kernel's choice).
    pub source_addresses: Vec<String>,
    /// The measured window asked for, in seconds.
    pub duration_s: f64,
    /// The warm-up, in seconds.
    pub warmup_s: f64,
    /// The connect phase's length, in seconds.
    pub connect_phase_s: f64,
    /// The measured window as it ran, in seconds.
    pub window_s: f64,
    /// Replies received in the window.
    pub requests: u64,
    /// `requests / window_s`.
    pub throughput_rps: f64,
    /// Open loop: requests due in the window.
    pub scheduled: u64,
    /// Latency percentiles, microseconds (from the intended send time in an open loop).
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The largest latency.
    pub max_us: f64,
    /// The mean latency.
    pub mean_us: f64,
    /// Connects that completed, over the whole run.
    pub connects: u64,
    /// Connect time percentiles, microseconds.
    pub connect_p50_us: f64,
    /// 99th percentile connect time.
    pub connect_p99_us: f64,
    /// The longest connect.
    pub connect_max_us: f64,
    /// Errors by kind, over the whole run (connect phase included).
    pub errors: ErrorCounts,
    /// Connections open at the end that had never been answered, their first request
    /// sent over a second before (`UNANSWERED_AFTER`). Not errors (they had not reached
    /// the timeout), but a server that leaves connections unserved shows here even when
    /// the run is shorter than the timeout.
    pub unanswered_conns: u64,
    /// The load generator's own user CPU over the window, all its threads.
    pub cpu_user_s: f64,
    /// The load generator's own system CPU over the window.
    pub cpu_sys_s: f64,
    /// The busiest load thread's CPU use over the window, percent of one core.
    pub cpu_busiest_thread_percent: f64,
    /// True when a load thread was at 90% of a core or more: the figures may measure
    /// the load generator rather than the server.
    pub load_bound: bool,
    /// Things that make the figures less trustworthy, in words.
    pub warnings: Vec<String>,
    /// Pub/sub figures (absent for the other apps). With pub/sub, `requests`,
    /// `throughput_rps` and the latencies above are the PUBLISH round trips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubReport>,
}

/// What a pub/sub run measured: deliveries, their latency from the publish (the time
/// the message was due) to its receipt, and what went missing. See [`crate::pubsub`]
/// for how `expected` and `lost` are counted.
#[derive(Debug, Clone, Serialize)]
pub struct PubSubReport {
    /// Subscriber connections asked for.
    pub subscribers: usize,
    /// Subscribers whose SUBSCRIBE was confirmed when publishing began (only those
    /// expect deliveries).
    pub subscribed: u64,
    /// Publisher connections.
    pub publishers: usize,
    /// Channels the subscribers are spread over.
    pub channels: usize,
    /// Payload bytes per message.
    pub message_bytes: usize,
    /// Messages published (the server answered the PUBLISH).
    pub published: u64,
    /// PUBLISH commands sent that got no answer (their publisher failed, or the run
    /// ended first); not expected anywhere.
    pub unconfirmed_publishes: u64,
    /// The sum of the PUBLISH replies: receivers the server says it delivered to.
    pub receivers_reported: u64,
    /// Deliveries expected: for each channel, messages published to it x its subscribed
    /// subscribers.
    pub expected: u64,
    /// Distinct messages received, all subscribers.
    pub delivered: u64,
    /// `delivered / window_s`.
    pub delivered_per_s: f64,
    /// Expected deliveries that never reached a subscriber still connected at the end.
    pub lost: u64,
    /// Messages a subscriber received twice or more.
    pub duplicates: u64,
    /// Messages a subscriber received after a later one of the same publisher.
    pub out_of_order: u64,
    /// Received beyond what was expected (a message whose PUBLISH got no answer).
    pub unexpected: u64,
    /// Subscribers the server closed or reset after publishing began (not reopened).
    pub disconnected_subscribers: u64,
    /// Expected deliveries those did not receive (dropped with the connection, or
    /// published after it closed): reported apart, not in `lost`.
    pub undelivered_to_disconnected: u64,
    /// Delivery latency percentiles, microseconds, from the time the message was due
    /// to its receipt by a subscriber.
    pub delivery_p50_us: f64,
    /// 90th percentile.
    pub delivery_p90_us: f64,
    /// 99th percentile.
    pub delivery_p99_us: f64,
    /// 99.9th percentile.
    pub delivery_p999_us: f64,
    /// The slowest delivery.
    pub delivery_max_us: f64,
    /// The mean delivery latency.
    pub delivery_mean_us: f64,
    /// Deliveries the latency histogram holds (duplicates included).
    pub delivery_samples: u64,
    /// How long the run waited after the last publish for deliveries to arrive.
    pub grace_s: f64,
    /// True when every delivery the server announced arrived within the grace period;
    /// false when it ran out (the shortfall is then in `lost`).
    pub settled: bool,
}

/// Microseconds from a nanosecond histogram's value.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// `(p50, p90, p99, p99.9, max, mean)` in microseconds; zeros when empty.
pub fn percentiles(h: &Histogram<u64>) -> [f64; 6] {
    if h.is_empty() {
        return [0.0; 6];
    }
    [
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.90)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        h.mean() / 1000.0,
    ]
}

impl LoadReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(p) = &self.pubsub {
            self.pubsub_lines(p, &mut s);
            self.common_lines(&mut s);
            return s;
        }
        let rate = self
            .rate_rps
            .map_or_else(String::new, |r| format!(", open loop at {r:.0} req/s"));
        let procs = self
            .processes
            .map_or_else(String::new, |n| format!(" in {n} processes"));
        let _ = writeln!(
            s,
            "{} load on {}: {} connections ({} open), {} thread(s){procs}, pipeline {}{rate}, {:.1} s window",
            self.app,
            self.target,
            self.conns,
            self.connected,
            self.threads,
            self.pipeline,
            self.window_s
        );
        if self.mode != "idle" {
            let _ = writeln!(
                s,
                "  throughput   {:.0} req/s ({} requests)",
                self.throughput_rps, self.requests
            );
            let _ = writeln!(
                s,
                "  latency us   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
            );
        }
        self.common_lines(&mut s);
        s
    }

    fn pubsub_lines(&self, p: &PubSubReport, s: &mut String) {
        let _ = writeln!(
            s,
            "pubsub load on {}: {} subscribers ({} subscribed) on {} channel(s), {} \
             publisher(s) at {:.0} msg/s, {} B messages, {} thread(s), {:.1} s window",
            self.target,
            p.subscribers,
            p.subscribed,
            p.channels,
            p.publishers,
            self.rate_rps.unwrap_or(0.0),
            p.message_bytes,
            self.threads,
            self.window_s
        );
        let _ = writeln!(
            s,
            "  published    {} messages ({} unanswered); the server reported {} receivers",
            p.published, p.unconfirmed_publishes, p.receivers_reported
        );
        let _ = writeln!(
            s,
            "  delivered    {} of {} expected, {:.0} msg/s; lost {}, duplicates {}, out of \
             order {}, unexpected {}",
            p.delivered,
            p.expected,
            p.delivered_per_s,
            p.lost,
            p.duplicates,
            p.out_of_order,
            p.unexpected
        );
        let _ = writeln!(
            s,
            "  disconnected {} subscribers (not delivered to them: {})",
            p.disconnected_subscribers, p.undelivered_to_disconnected
        );
        let _ = writeln!(
            s,
            "  delivery us  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            p.delivery_p50_us,
            p.delivery_p90_us,
            p.delivery_p99_us,
            p.delivery_p999_us,
            p.delivery_max_us
        );
        let _ = writeln!(
            s,
            "  publish us   p50 {:.1}  p99 {:.1}  max {:.1} (PUBLISH round trip)",
            self.p50_us, self.p99_us, self.max_us
        );
        let _ = writeln!(
            s,
            "  grace        {:.2} s after the last publish ({})",
            p.grace_s,
            if p.settled {
                "every announced delivery arrived"
            } else {
                "ran out: what is missing counts as lost"
            }
        );
    }

    fn common_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "  connect us   p50 {:.1}  p99 {:.1}  max {:.1} ({} connects)",
            self.connect_p50_us, self.connect_p99_us, self.connect_max_us, self.connects
        );
        let _ = writeln!(s, "  errors       {}", self.errors.describe());
        if self.unanswered_conns > 0 {
            let _ = writeln!(
                s,
                "  unanswered   {} connections had no reply yet at the end (first request \
                 over 1 s old)",
                self.unanswered_conns
            );
        }
        let _ = writeln!(
            s,
            "  load CPU     user {:.2} s  sys {:.2} s  busiest thread {:.0}%{}",
            self.cpu_user_s,
            self.cpu_sys_s,
            self.cpu_busiest_thread_percent,
            if self.load_bound {
                "  LOAD-BOUND: the load generator saturated its core"
            } else {
                ""
            }
        );
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_describes_errors() {
        let mut e = ErrorCounts::default();
        assert_eq!(e.describe(), "none");
        e.add(ErrorKind::Reset);
        e.add(ErrorKind::Reset);
        e.add(ErrorKind::BadReply);
        let mut all = ErrorCounts::default();
        all.merge(&e);
        all.merge(&e);
        assert_eq!(all.total, 6);
        assert_eq!(all.describe(), "reset=4 bad_reply=2");
    }

    #[test]
    fn every_kind_has_its_own_key_in_the_json_and_the_summary() {
        for kind in ErrorKind::ALL {
            let mut e = ErrorCounts::default();
            e.add(kind);
            let json: serde_json::Value = serde_json::to_value(e).unwrap();
            let obj = json.as_object().unwrap();
            // One key per kind, plus the total.
            assert_eq!(obj.len(), ErrorKind::ALL.len() + 1);
            for other in ErrorKind::ALL {
                let want = u64::from(other == kind);
                assert_eq!(obj[other.name()], want, "{kind:?}: key {}", other.name());
                assert_eq!(e.get(other), want);
            }
            assert_eq!(obj["total"], 1);
            assert_eq!(e.describe(), format!("{}=1", kind.name()));
        }
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let [p50, p90, p99, p999, max, mean] = percentiles(&h);
        assert!((p50 - 500.0).abs() < 1.0, "{p50}");
        assert!((p90 - 900.0).abs() < 1.0, "{p90}");
        assert!((p99 - 990.0).abs() < 1.0, "{p99}");
        assert!((p999 - 999.0).abs() < 1.0, "{p999}");
        assert!((max - 1000.0).abs() < 1.0, "{max}");
        assert!((mean - 500.5).abs() < 1.0, "{mean}");
    }
}

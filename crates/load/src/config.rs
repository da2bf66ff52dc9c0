//! What a load run does: the target, the app, the connections and the schedule.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Send `size` bytes, expect the same bytes back.
    Echo,
    /// `GET /` (or `POST /echo` with a body of `size` bytes), expect a 2xx response.
    Http,
    /// `PING` (or, with `keys`, a 50/50 mix of `SET` and `GET`), expect the right reply.
    Resp,
    /// Redis pub/sub: subscribers `SUBSCRIBE`, publishers `PUBLISH` at a rate; delivery
    /// latency and lost deliveries (see [`crate::pubsub`]).
    #[serde(rename = "pubsub")]
    PubSub,
}

impl AppKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Echo => "echo",
            AppKind::Http => "http",
            AppKind::Resp => "resp",
            AppKind::PubSub => "pubsub",
        }
    }
}

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AppKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(AppKind::Echo),
            "http" => Ok(AppKind::Http),
            "resp" => Ok(AppKind::Resp),
            "pubsub" => Ok(AppKind::PubSub),
            other => Err(format!(
                "unknown app '{other}': use echo, http, resp or pubsub"
            )),
        }
    }
}

/// The echo message size when `size` is not given.
pub const DEFAULT_ECHO_SIZE: usize = 64;

/// How many connects one thread keeps in flight at most (a burst of SYNs larger than the
/// server's backlog would only be dropped and retried a second later).
pub const MAX_CONNECTS_IN_FLIGHT: usize = 256;

/// A load run (serialized: what a `--processes` parent hands each child).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadConfig {
    /// The server.
    pub target: SocketAddr,
    /// The protocol.
    pub app: AppKind,
    /// Connections held open (spread over `threads`).
    pub conns: usize,
    /// The measured window.
    pub duration: Duration,
    /// Load before the measured window (after every connection is up), not recorded.
    pub warmup: Duration,
    /// Open loop: requests per second in total, sent on schedule whatever the replies
    /// do; latency counts from the intended send time. `None`: closed loop.
    pub rate: Option<f64>,
    /// Closed loop: requests outstanding on each connection.
    pub pipeline: usize,
    /// Echo: message size (default 64). HTTP: `POST /echo` with a body this long
    /// instead of `GET /`. RESP: the `SET` value size (default 16).
    pub size: Option<usize>,
    /// RESP: with `keys > 0`, a SET/GET mix over this many keys instead of PING.
    pub keys: usize,
    /// Event-loop threads (each its own epoll and share of the connections).
    pub threads: usize,
    /// New connections per second in total (`None`: as fast as the connects complete,
    /// at most [`MAX_CONNECTS_IN_FLIGHT`] per thread at a time).
    pub connect_rate: Option<f64>,
    /// A connect or a reply that takes longer is an error (the connection is closed
    /// and opened again).
    pub timeout: Duration,
    /// Hold the connections open without sending anything (memory measurements).
    pub idle: bool,
    /// Pub/sub: subscriber connections (the first `subscribers` of `conns`).
    pub subscribers: usize,
    /// Pub/sub: publisher connections (the rest of `conns`), sharing `rate`.
    pub publishers: usize,
    /// Pub/sub: channels; subscriber `i` subscribes to channel `i % channels`.
    pub channels: usize,
    /// Pub/sub: after the last publish, how long deliveries may stay quiet before the
    /// run counts what is missing as lost (it ends sooner once every delivery the
    /// server announced has arrived, and at most `timeout` later).
    pub grace: Duration,
}

impl LoadConfig {
    /// A closed-loop run with one request outstanding per connection, one thread, no
    /// warm-up, and a 5 s timeout.
    pub fn new(target: SocketAddr, app: AppKind, conns: usize, duration: Duration) -> Self {
        LoadConfig {
            target,
            app,
            conns,
            duration,
            warmup: Duration::ZERO,
            rate: None,
            pipeline: 1,
            size: None,
            keys: 0,
            threads: 1,
            connect_rate: None,
            timeout: Duration::from_secs(5),
            idle: false,
            subscribers: 0,
            publishers: 0,
            channels: 1,
            grace: Duration::from_secs(1),
        }
    }

    /// A pub/sub run: `subscribers` on one channel, `publishers` sharing `rate`
    /// messages per second, no warm-up.
    pub fn pubsub(
        target: SocketAddr,
        subscribers: usize,
        publishers: usize,
        rate: f64,
        duration: Duration,
    ) -> Self {
        let mut c = LoadConfig::new(target, AppKind::PubSub, subscribers + publishers, duration);
        c.subscribers = subscribers;
        c.publishers = publishers;
        c.rate = Some(rate);
        c
    }

    /// Checks the values, with a message that says what to do.
    pub fn validate(&self) -> Result<(), String> {
        if self.conns == 0 {
            return Err("--conns must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.threads > self.conns {
            return Err(format!(
                "--threads {} is more than --conns {}: use at most one thread per connection",
                self.threads, self.conns
            ));
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
        }
        if let Some(rate) = self.connect_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--connect-rate must be a positive number per second".into());
            }
        }
        if self.app == AppKind::Echo && self.size == Some(0) {
            return Err("--size must be at least 1 byte for echo".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be above zero".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be above zero".into());
        }
        if self.app == AppKind::PubSub {
            self.validate_pubsub()?;
        }
        Ok(())
    }

    fn validate_pubsub(&self) -> Result<(), String> {
        use crate::pubsub::STAMP_LEN;
        if self.subscribers == 0 || self.publishers == 0 {
            return Err("pubsub needs --subscribers and --publishers of at least 1".into());
        }
        if self.conns != self.subscribers + self.publishers {
            return Err(format!(
                "pubsub holds --subscribers + --publishers connections ({}), not {}",
                self.subscribers + self.publishers,
                self.conns
            ));
        }
        if self.channels == 0 || self.channels > self.subscribers {
            return Err(format!(
                "--channels must be 1..={} (at most one per subscriber)",
                self.subscribers
            ));
        }
        if self.rate.is_none() {
            return Err(
                "pubsub publishes at a --rate (messages per second, all publishers)".into(),
            );
        }
        if self.size.is_some_and(|s| s < STAMP_LEN) {
            return Err(format!(
                "--size must be at least {STAMP_LEN} bytes for pubsub (the send time and \
                 sequence number)"
            ));
        }
        if !self.warmup.is_zero() {
            return Err(
                "pubsub has no warm-up (subscriptions are confirmed first, and every \
                 message counts): use --warmup 0s"
                    .into(),
            );
        }
        if self.idle || self.keys > 0 {
            return Err("--idle and --keys do not apply to pubsub".into());
        }
        Ok(())
    }

    /// "closed", "open" or "idle".
    pub fn mode(&self) -> &'static str {
        if self.idle {
            "idle"
        } else if self.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    /// How long the connect phase may last at most: the timeout, plus the time the
    /// connect rate needs for every connection.
    pub fn connect_budget(&self) -> Duration {
        let paced = match self.connect_rate {
            Some(rate) => Duration::try_from_secs_f64(self.conns as f64 / rate)
                .unwrap_or(Duration::from_secs(3600)),
            None => Duration::ZERO,
        };
        self.timeout + paced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoadConfig {
        LoadConfig::new(
            "127.0.0.1:1".parse().unwrap(),
            AppKind::Echo,
            10,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn validation_says_what_to_do() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.conns = 0;
        assert!(c.validate().unwrap_err().contains("--conns"));
        let mut c = cfg();
        c.threads = 11;
        assert!(c.validate().unwrap_err().contains("--threads"));
        let mut c = cfg();
        c.rate = Some(-1.0);
        assert!(c.validate().unwrap_err().contains("--rate"));
        let mut c = cfg();
        c.size = Some(0);
        assert!(c.validate().unwrap_err().contains("--size"));
    }

    #[test]
    fn modes_and_budget() {
        let mut c = cfg();
        assert_eq!(c.mode(), "closed");
        c.rate = Some(100.0);
        assert_eq!(c.mode(), "open");
        c.idle = true;
        assert_eq!(c.mode(), "idle");
        c.connect_rate = Some(10.0);
        assert_eq!(c.connect_budget(), Duration::from_secs(6));
        assert_eq!("resp".parse::<AppKind>(), Ok(AppKind::Resp));
        assert!("smtp".parse::<AppKind>().unwrap_err().contains("echo"));
    }

    #[test]
    fn pubsub_validation() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let ok = LoadConfig::pubsub(addr, 10, 2, 100.0, Duration::from_secs(1));
        assert_eq!(ok.conns, 12);
        assert!(ok.validate().is_ok());
        assert_eq!("pubsub".parse::<AppKind>(), Ok(AppKind::PubSub));
        let mut c = ok.clone();
        c.rate = None;
        assert!(c.validate().unwrap_err().contains("--rate"));
        let mut c = ok.clone();
        c.size = Some(10);
        assert!(c.validate().unwrap_err().contains("--size"));
        let mut c = ok.clone();
        c.channels = 11;
        assert!(c.validate().unwrap_err().contains("--channels"));
        let mut c = ok.clone();
        c.warmup = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().contains("--warmup"));
        let mut c = ok;
        c.conns = 5;
        assert!(c.validate().is_err());
    }
}

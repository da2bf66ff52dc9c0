//! What the load sends and what it expects back, per app.
//!
//! Requests are written by [`Workload::write_request`]; replies are framed and checked
//! by [`Workload::take_reply`], which says how many bytes the first reply at the start
//! of the input takes, or that it is wrong. The client side of RESP is the proto
//! crate's own codec; HTTP uses [`crate::http_reply`].

use c10k_proto::resp::{Reply, decode_reply, encode_command};

use crate::config::{AppKind, DEFAULT_ECHO_SIZE, LoadConfig};
use crate::http_reply::frame_response;
use crate::resp_frame::{Item, read_frame};

/// The RESP `SET` value size when `size` is not given.
pub const DEFAULT_RESP_VALUE: usize = 16;

/// What a sent request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Echo: the payload.
    Echo,
    /// HTTP: a 2xx response (with a body of this length, when known).
    Http(Option<usize>),
    /// RESP: `+PONG`.
    Pong,
    /// RESP: `+OK`.
    Ok,
    /// RESP: a bulk string or the null bulk.
    Bulk,
    /// Pub/sub: the integer reply to a `PUBLISH` to this channel.
    Published(u32),
    /// Pub/sub: a `subscribe` confirmation (framed by the subscriber, not here).
    Subscribed,
}

/// A reply that is not what the request expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

/// One framed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes it took.
    pub len: usize,
    /// The server will close the connection after it (HTTP `Connection: close`).
    pub close: bool,
    /// `PUBLISH`: the receivers the server reported (0 for every other reply).
    pub count: u64,
}

/// The requests of one run, prepared once and shared by every connection of a thread.
#[derive(Debug, Clone)]
pub struct Workload {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Echo {
        payload: Vec<u8>,
    },
    Http {
        request: Vec<u8>,
        body: Option<usize>,
    },
    Ping {
        request: Vec<u8>,
    },
    SetGet {
        keys: usize,
        value: Vec<u8>,
    },
    /// Pub/sub: the commands are written by [`crate::pubsub::Plan`]; only the
    /// PUBLISH replies are framed here.
    PubSub,
}

impl Workload {
    /// The workload `config` describes.
    pub fn new(config: &LoadConfig) -> Self {
        let kind = match config.app {
            AppKind::Echo => {
                let size = config.size.unwrap_or(DEFAULT_ECHO_SIZE);
                // Printable and position-dependent, so that a reordered or corrupted
                // echo does not compare equal.
                let payload = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
                Kind::Echo { payload }
            }
            AppKind::Http => match config.size {
                None => Kind::Http {
                    request: b"GET / HTTP/1.1\r\nHost: c10k\r\n\r\n".to_vec(),
                    body: None,
                },
                Some(n) => {
                    let mut request =
                        format!("POST /echo HTTP/1.1\r\nHost: c10k\r\nContent-Length: {n}\r\n\r\n")
                            .into_bytes();
                    request.extend((0..n).map(|i| b'a' + (i % 26) as u8));
                    Kind::Http {
                        request,
                        body: Some(n),
                    }
                }
            },
            AppKind::Resp if config.keys == 0 => {
                let mut request = Vec::new();
                encode_command(&[b"PING"], &mut request);
                Kind::Ping { request }
            }
            AppKind::Resp => Kind::SetGet {
                keys: config.keys,
                value: vec![b'v'; config.size.unwrap_or(DEFAULT_RESP_VALUE)],
            },
            AppKind::PubSub => Kind::PubSub,
        };
        Workload { kind }
    }

    /// Appends request number `seq` of a connection to `out`; returns what it expects.
    pub fn write_request(&self, seq: u64, salt: u64, out: &mut Vec<u8>) -> Expect {
        match &self.kind {
            Kind::Echo { payload } => {
                out.extend_from_slice(payload);
                Expect::Echo
            }
            Kind::Http { request, body } => {
                out.extend_from_slice(request);
                Expect::Http(*body)
            }
            Kind::Ping { request } => {
                out.extend_from_slice(request);
                Expect::Pong
            }
            // Pub/sub connections send what the plan writes; a request here is a PING.
            Kind::PubSub => {
                encode_command(&[b"PING"], out);
                Expect::Pong
            }
            Kind::SetGet { keys, value } => {
                // Spread keys over the key space: a multiplicative hash of the request
                // number and the connection.
                let n = seq.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
                let key = format!("key:{}", n % *keys as u64);
                if seq % 2 == 0 {
                    encode_command(&[b"SET", key.as_bytes(), value], out);
                    Expect::Ok
                } else {
                    encode_command(&[b"GET", key.as_bytes()], out);
                    Expect::Bulk
                }
            }
        }
    }

    /// Frames and checks the first reply in `input`: `Ok(None)` while it is incomplete.
    pub fn take_reply(&self, expect: Expect, input: &[u8]) -> Result<Option<Taken>, BadReply> {
        match (&self.kind, expect) {
            (Kind::Echo { payload }, _) => {
                let n = payload.len();
                // Check what has arrived as it arrives: a wrong first byte is an error
                // now, not after `n` bytes.
                let have = input.len().min(n);
                if input[..have] != payload[..have] {
                    return Err(BadReply("echo returned different bytes".into()));
                }
                Ok((input.len() >= n).then_some(Taken {
                    len: n,
                    close: false,
                    count: 0,
                }))
            }
            (Kind::Http { .. }, Expect::Http(body)) => match frame_response(input) {
                Ok(None) => Ok(None),
                Ok(Some(f)) if !(200..300).contains(&f.status) => {
                    Err(BadReply(format!("HTTP status {}", f.status)))
                }
                Ok(Some(f)) if body.is_some_and(|b| b != f.body_len) => Err(BadReply(format!(
                    "HTTP body of {} bytes, expected {}",
                    f.body_len,
                    body.unwrap_or(0)
                ))),
                Ok(Some(f)) => Ok(Some(Taken {
                    len: f.len,
                    close: f.close,
                    count: 0,
                })),
                Err(e) => Err(BadReply(e.to_string())),
            },
            (Kind::Ping { .. } | Kind::SetGet { .. }, _) => match decode_reply(input) {
                Ok(None) => Ok(None),
                Ok(Some((reply, len))) => {
                    let good = match (expect, &reply) {
                        (Expect::Pong, Reply::Simple(s)) => s == b"PONG",
                        (Expect::Ok, Reply::Simple(s)) => s == b"OK",
                        (Expect::Bulk, Reply::Bulk(_)) => true,
                        _ => false,
                    };
                    if good {
                        Ok(Some(Taken {
                            len,
                            close: false,
                            count: 0,
                        }))
                    } else {
                        Err(BadReply(format!("RESP reply {reply:?} to a {expect:?}")))
                    }
                }
                Err(e) => Err(BadReply(e.to_string())),
            },
            (Kind::PubSub, expect) => match read_frame(input) {
                Ok(None) => Ok(None),
                Ok(Some((f, len))) => match (expect, f.head) {
                    (Expect::Published(_), Item::Integer(n)) if n >= 0 => Ok(Some(Taken {
                        len,
                        close: false,
                        count: n as u64,
                    })),
                    (Expect::Pong, Item::Simple(b"PONG")) => Ok(Some(Taken {
                        len,
                        close: false,
                        count: 0,
                    })),
                    (_, Item::Error(e)) => Err(BadReply(format!(
                        "RESP error to a {expect:?}: {}",
                        String::from_utf8_lossy(e)
                    ))),
                    (_, other) => Err(BadReply(format!("RESP reply {other:?} to a {expect:?}"))),
                },
                Err(e) => Err(BadReply(e.to_string())),
            },
            (Kind::Http { .. }, other) => Err(BadReply(format!("HTTP reply to a {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c10k_proto::{App, Cx, Peer, Session};
    use std::time::Duration;

    fn cfg(app: AppKind) -> LoadConfig {
        LoadConfig::new(
            "127.0.0.1:1".parse().unwrap(),
            app,
            1,
            Duration::from_secs(1),
        )
    }

    /// Drives `app`'s server session with `n` requests of `w`, then frames every reply.
    fn round_trip<A: App>(app: A, w: &Workload, n: u64) {
        let mut session = app.open(&Peer::unknown());
        let cx = Cx::new(std::time::UNIX_EPOCH);
        let mut requests = Vec::new();
        let mut expects = Vec::new();
        for seq in 0..n {
            expects.push(w.write_request(seq, 7, &mut requests));
        }
        let mut replies = Vec::new();
        let used = session.handle_input(&cx, &requests, &mut replies).unwrap();
        assert_eq!(used, requests.len());
        let mut at = 0;
        for e in expects {
            // Every prefix is incomplete, the whole reply is taken.
            let taken = w.take_reply(e, &replies[at..]).unwrap().unwrap();
            for cut in 0..taken.len {
                assert_eq!(w.take_reply(e, &replies[at..at + cut]), Ok(None));
            }
            at += taken.len;
        }
        assert_eq!(at, replies.len());
    }

    #[test]
    fn every_app_round_trips_through_the_real_sessions() {
        let mut c = cfg(AppKind::Echo);
        c.size = Some(100);
        round_trip(c10k_proto::echo::EchoApp, &Workload::new(&c), 3);
        let http = || c10k_proto::http::HttpApp::new(c10k_proto::http::HttpConfig::default());
        round_trip(http(), &Workload::new(&cfg(AppKind::Http)), 3);
        let mut c = cfg(AppKind::Http);
        c.size = Some(10);
        round_trip(http(), &Workload::new(&c), 3);
        round_trip(
            c10k_proto::resp::RespApp::new(),
            &Workload::new(&cfg(AppKind::Resp)),
            3,
        );
        let mut c = cfg(AppKind::Resp);
        c.keys = 10;
        round_trip(c10k_proto::resp::RespApp::new(), &Workload::new(&c), 20);
    }

    #[test]
    fn wrong_replies_are_bad() {
        let w = Workload::new(&cfg(AppKind::Echo));
        assert!(w.take_reply(Expect::Echo, b"ab").unwrap().is_none());
        assert!(w.take_reply(Expect::Echo, b"ax").is_err());
        let w = Workload::new(&cfg(AppKind::Resp));
        assert!(w.take_reply(Expect::Pong, b"-ERR nope\r\n").is_err());
        assert!(w.take_reply(Expect::Pong, b"+OK\r\n").is_err());
        let w = Workload::new(&cfg(AppKind::PubSub));
        let t = w
            .take_reply(Expect::Published(0), b":7\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((t.len, t.count), (4, 7));
        assert_eq!(w.take_reply(Expect::Published(0), b":7\r"), Ok(None));
        assert!(
            w.take_reply(Expect::Published(0), b"-ERR unknown command\r\n")
                .unwrap_err()
                .0
                .contains("unknown command")
        );
        let w = Workload::new(&cfg(AppKind::Http));
        let r = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        assert!(
            w.take_reply(Expect::Http(None), r)
                .unwrap_err()
                .0
                .contains("500")
        );
    }
}

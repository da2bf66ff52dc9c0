//! The RESP app's pub/sub, differentially against a real `redis-server`: the same
//! command sequences, from several clients, go to a `redis-server` spawned on
//! 127.0.0.1 (a free port, no persistence) and to sessions of one `RespApp` in memory
//! ([`Harness`]); every client must see the same replies and deliveries.
//!
//! After each step every Redis client is synchronised with a `PING <token>`, the
//! client that sent the step's command first (Redis executes commands one at a time,
//! so once that client's `PING` is answered, what its command published is in every
//! subscriber's output before the answer to the subscriber's `PING`); the in-memory
//! side delivers every mailbox. Where Redis's order is its hash tables' (the channels of
//! `PUBSUB CHANNELS`, `UNSUBSCRIBE` without arguments, the `pmessage`s of several
//! matching patterns), both sides are compared as sets; everything else byte for byte.
//!
//! There is no skipping: without `redis-server` the test fails, and scripts/test.sh
//! installs it (Debian package `redis-server`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use c10k_proto::harness::Harness;
use c10k_proto::resp::{Reply, RespApp, decode_reply, encode_command};

/// A `redis-server` of our own, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    /// One redis-server at a time in this binary: two tests that picked the same free
    /// port could otherwise probe each other's server and lose it when the other
    /// test ends (seen once as a refused connection under load).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_REDIS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl RedisServer {
    fn start() -> RedisServer {
        let one_at_a_time = ONE_REDIS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut last = String::new();
        for _ in 0..5 {
            // A free port: the kernel picks one, we release it, Redis takes it (another
            // process may take it in between: then Redis exits and we try again).
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let spawned = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", &std::env::temp_dir().to_string_lossy()])
                .args(["--logfile", ""])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => panic!(
                    "cannot run redis-server ({e}): the differential pub/sub test needs it; \
                     scripts/test.sh installs it (Debian package redis-server)"
                ),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    last = format!("redis-server on port {port} exited: {status}");
                    break;
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return RedisServer {
                        child,
                        port,
                        _one_at_a_time: one_at_a_time,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!("redis-server on port {port} did not accept within 10 s");
            }
        }
        panic!("could not start redis-server: {last}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client connection to Redis.
struct RedisClient {
    stream: TcpStream,
    buf: Vec<u8>,
    at: usize,
    closed: bool,
}

impl RedisClient {
    fn connect(port: u16) -> RedisClient {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RedisClient {
            stream,
            buf: Vec::new(),
            at: 0,
            closed: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "write to redis: {e}"
            );
            self.closed = true;
        }
    }

    /// The next reply, or `None` once Redis has closed the connection.
    fn reply(&mut self) -> Option<Reply> {
        loop {
            if let Some((reply, used)) = decode_reply(&self.buf[self.at..]).unwrap() {
                self.at += used;
                if self.at > 1 << 20 {
                    self.buf.drain(..self.at);
                    self.at = 0;
                }
                return Some(reply);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.closed = true;
                    return None;
                }
                Err(e) => panic!("read from redis: {e}"),
            }
        }
    }

    /// Every reply up to the answer to `PING token` (normal or subscribed mode), which
    /// is dropped; or up to the close.
    fn sync(&mut self, token: &[u8]) -> Vec<Reply> {
        let mut ping = Vec::new();
        encode_command(&[b"PING", token], &mut ping);
        self.send(&ping);
        let plain = Reply::Bulk(Some(token.to_vec()));
        let subscribed = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"pong".to_vec())),
            Reply::Bulk(Some(token.to_vec())),
        ]));
        let mut got = Vec::new();
        while let Some(reply) = self.reply() {
            if reply == plain || reply == subscribed {
                return got;
            }
            got.push(reply);
        }
        got
    }
}

fn replies(bytes: &[u8]) -> Vec<Reply> {
    let mut all = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (reply, used) = decode_reply(&bytes[at..]).unwrap().unwrap();
        all.push(reply);
        at += used;
    }
    all
}

fn key(reply: &Reply) -> Vec<u8> {
    let mut bytes = Vec::new();
    reply.encode(&mut bytes);
    bytes
}

/// Makes the parts of a transcript whose order is Redis's hash order comparable.
fn normalize(args: &[Vec<u8>], own: bool, mut got: Vec<Reply>) -> Vec<Reply> {
    let name = args[0].to_ascii_lowercase();
    let no_args = args.len() == 1;
    if !own {
        // Deliveries: the pmessages of one publish come in pattern-table order.
        got.sort_by_key(key);
    } else if no_args && (name == b"unsubscribe" || name == b"punsubscribe") {
        // Same names, same falling counts, in any order.
        let mut names: Vec<Reply> = Vec::new();
        let mut counts: Vec<Reply> = Vec::new();
        for reply in &got {
            match reply {
                Reply::Array(Some(items)) if items.len() == 3 => {
                    names.push(items[1].clone());
                    counts.push(items[2].clone());
                }
                other => names.push(other.clone()),
            }
        }
        names.sort_by_key(key);
        names.extend(counts);
        got = names;
    } else if name == b"pubsub"
        && args
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"channels"))
    {
        for reply in &mut got {
            if let Reply::Array(Some(items)) = reply {
                items.sort_by_key(key);
            }
        }
    }
    got
}

fn show(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| {
            if a.len() > 40 {
                format!("<{} bytes>", a.len())
            } else {
                a.escape_ascii().to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn brief(replies: &[Reply]) -> String {
    let mut text = String::new();
    for reply in replies.iter().take(8) {
        let bytes = key(reply);
        let shown: Vec<u8> = bytes.iter().copied().take(120).collect();
        text.push_str(&shown.escape_ascii().to_string());
        text.push_str(" | ");
    }
    if replies.len() > 8 {
        text.push_str(&format!("... ({} replies)", replies.len()));
    }
    text
}

/// One step of a script: client index, then the command; `raw` sends an inline
/// command line instead of a multibulk.
#[derive(Clone)]
struct Step {
    client: usize,
    args: Vec<Vec<u8>>,
    inline: Option<Vec<u8>>,
}

fn step(client: usize, args: &[&[u8]]) -> Step {
    Step {
        client,
        args: args.iter().map(|a| a.to_vec()).collect(),
        inline: None,
    }
}

fn inline(client: usize, line: &[u8]) -> Step {
    let args = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut bytes = line.to_vec();
    bytes.extend_from_slice(b"\r\n");
    Step {
        client,
        args,
        inline: Some(bytes),
    }
}

/// Runs `steps` on Redis and in memory with `clients` clients; panics at the first
/// difference.
fn differential(server: &RedisServer, name: &str, clients: usize, steps: &[Step]) {
    let mut redis: Vec<RedisClient> = (0..clients)
        .map(|_| RedisClient::connect(server.port))
        .collect();
    let mut net = Harness::new(RespApp::new(), 1 << 20);
    let ids: Vec<usize> = (0..clients).map(|_| net.open()).collect();
    for (n, step) in steps.iter().enumerate() {
        let bytes = step.inline.clone().unwrap_or_else(|| {
            let refs: Vec<&[u8]> = step.args.iter().map(Vec::as_slice).collect();
            let mut bytes = Vec::new();
            encode_command(&refs, &mut bytes);
            bytes
        });
        let who = step.client;
        if redis[who].closed {
            continue;
        }
        redis[who].send(&bytes);
        net.send(ids[who], &bytes);
        net.deliver();
        let token = format!("sync-{n}").into_bytes();
        // The issuing client first: once its PING is answered its command has run, and
        // what it published is in the other clients' output before their PINGs run.
        // (Pinging a subscriber first could let Redis answer that PING before it reads
        // the PUBLISH from the other connection.)
        let order = std::iter::once(who).chain((0..clients).filter(|&c| c != who));
        for c in order {
            let want = if redis[c].closed {
                Vec::new()
            } else {
                redis[c].sync(&token)
            };
            let got = replies(&net.take_output(ids[c]));
            let own = c == who;
            let (want, got) = (
                normalize(&step.args, own, want),
                normalize(&step.args, own, got),
            );
            assert!(
                want == got,
                "{name}, step {n} (client {who}: {}), client {c}:\n  redis:  {}\n  c10k:   {}",
                show(&step.args),
                brief(&want),
                brief(&got)
            );
            assert_eq!(
                redis[c].closed,
                !net.is_open(ids[c]),
                "{name}, step {n}: client {c} closed on one side only"
            );
        }
    }
}

#[test]
fn pubsub_commands_and_errors_match_redis() {
    let server = RedisServer::start();
    let big: Vec<u8> = vec![b'n'; 1 << 20];
    let mut star_big = big.clone();
    star_big[0] = b'*';
    let steps = vec![
        // Outside subscribed mode.
        step(0, &[b"UNSUBSCRIBE"]),
        step(0, &[b"PUNSUBSCRIBE"]),
        step(0, &[b"UNSUBSCRIBE", b"never", b"subscribed"]),
        step(0, &[b"PUNSUBSCRIBE", b"never*"]),
        step(0, &[b"PUBLISH", b"nobody", b"m"]),
        step(0, &[b"SUBSCRIBE"]),
        step(0, &[b"PSUBSCRIBE"]),
        step(0, &[b"PUBLISH", b"a"]),
        step(0, &[b"PUBLISH", b"a", b"b", b"c"]),
        step(0, &[b"PUBSUB"]),
        step(0, &[b"PUBSUB", b"FOO"]),
        step(0, &[b"pubsub", b"foo", b"bar"]),
        step(0, &[b"PUBSUB", b"CHANNELS", b"a", b"b"]),
        step(0, &[b"PUBSUB", b"NUMPAT", b"x"]),
        step(0, &[b"PUBSUB", b"HELP", b"x"]),
        step(0, &[b"PUBSUB", b"HELP"]),
        step(0, &[b"PUBSUB", b"NUMSUB"]),
        step(0, &[b"PUBSUB", b"NUMSUB", b"a", b"b"]),
        step(0, &[b"PUBSUB", b"NUMPAT"]),
        step(0, &[b"PUBSUB", b"CHANNELS"]),
        step(0, &[b"PUBSUB", b"SHARDCHANNELS"]),
        step(0, &[b"PUBSUB", b"SHARDNUMSUB", b"a"]),
        step(0, &[b"RESET"]),
        step(0, &[b"RESET", b"x"]),
        step(0, &[b"PING"]),
        // Subscribed mode.
        step(1, &[b"SUBSCRIBE", b"news.x", b"other", b"news.x"]),
        step(1, &[b"PSUBSCRIBE", b"news.*", b"*", b"n[a-e]ws.?"]),
        step(2, &[b"subscribe", b"news.x"]),
        step(2, &[b"psubscribe", b"news.*"]),
        step(0, &[b"PUBSUB", b"NUMSUB", b"news.x", b"other", b"nope"]),
        step(0, &[b"PUBSUB", b"NUMPAT"]),
        step(0, &[b"PUBSUB", b"CHANNELS"]),
        step(0, &[b"PUBSUB", b"CHANNELS", b"n*"]),
        step(0, &[b"PUBLISH", b"news.x", b"hello"]),
        step(0, &[b"PUBLISH", b"other", b"o"]),
        step(0, &[b"PUBLISH", b"", b"empty channel"]),
        step(0, &[b"PUBLISH", b"news.y", b""]),
        step(1, &[b"GET", b"k"]),
        step(1, &[b"SET", b"k", b"v"]),
        step(1, &[b"PUBLISH", b"a", b"b"]),
        step(1, &[b"PUBSUB", b"NUMSUB"]),
        step(1, &[b"PUBSUB", b"numpat"]),
        step(1, &[b"PUBSUB", b"CHANNELS", b"a", b"b"]),
        step(1, &[b"PUBSUB", b"foo"]),
        step(1, &[b"CONFIG", b"GET", b"save"]),
        step(1, &[b"CONFIG", b"GET"]),
        step(1, &[b"COMMAND"]),
        step(1, &[b"COMMAND", b"DOCS"]),
        step(1, &[b"SELECT", b"0"]),
        step(1, &[b"ECHO", b"x"]),
        step(1, &[b"ECHO"]),
        step(1, &[b"GET"]),
        step(1, &[b"NOSUCH", b"x"]),
        step(1, &[b"SUBSCRIBE"]),
        step(1, &[b"PING"]),
        step(1, &[b"PING", b"msg"]),
        step(1, &[b"PING", b"a", b"b"]),
        inline(1, b"get k"),
        inline(1, b"ping"),
        step(1, &[b"UNSUBSCRIBE", b"other", b"never"]),
        step(1, &[b"PUNSUBSCRIBE"]),
        step(1, &[b"PUNSUBSCRIBE"]),
        step(1, &[b"UNSUBSCRIBE"]),
        step(1, &[b"UNSUBSCRIBE"]),
        step(1, &[b"GET", b"k"]),
        step(1, &[b"PING"]),
        step(2, &[b"RESET"]),
        step(2, &[b"GET", b"k"]),
        step(0, &[b"PUBLISH", b"news.x", b"after"]),
        // Bad inputs of issue 14.
        step(3, &[b"SUBSCRIBE", &big]),
        step(3, &[b"PSUBSCRIBE", &star_big]),
        step(0, &[b"PUBLISH", &big, b"to the big one"]),
        step(0, &[b"PUBSUB", b"NUMSUB", &big]),
        step(3, &[b"UNSUBSCRIBE", &big]),
        step(3, &[b"PUNSUBSCRIBE", &star_big]),
        step(3, &[b"PSUBSCRIBE", b"x"]),
        step(3, &[b"QUIT"]),
        step(0, &[b"PUBSUB", b"NUMPAT"]),
        step(0, &[b"QUIT"]),
    ];
    differential(&server, "commands", 4, &steps);
}

#[test]
fn a_hundred_thousand_channels_match_redis() {
    let server = RedisServer::start();
    let names: Vec<Vec<u8>> = (0..100_000)
        .map(|i| format!("ch:{i}").into_bytes())
        .collect();
    let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    subscribe.extend(names.iter().map(Vec::as_slice));
    let steps = vec![
        step(0, &subscribe),
        step(1, &[b"PUBLISH", b"ch:77777", b"m"]),
        step(
            1,
            &[b"PUBSUB", b"NUMSUB", b"ch:0", b"ch:99999", b"ch:100000"],
        ),
        step(0, &[b"UNSUBSCRIBE"]),
        step(1, &[b"PUBSUB", b"CHANNELS", b"ch:1*"]),
        step(0, &subscribe),
        step(0, &[b"QUIT"]),
        step(1, &[b"PUBSUB", b"CHANNELS"]),
    ];
    differential(&server, "100,000 channels", 2, &steps);
}

/// A small deterministic generator (xorshift64*), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }
}

#[test]
fn glob_patterns_match_redis() {
    // One client subscribes to many random patterns; publishers publish to random
    // channels; each PUBLISH's count and each delivery must be Redis's. Patterns are
    // made of the tokens where matchers differ: sets with ranges across the signed
    // byte boundary, escapes, unterminated sets, stars.
    let server = RedisServer::start();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let tokens: &[&[u8]] = &[
        b"a",
        b"b",
        b"*",
        b"**",
        b"?",
        b"[ab]",
        b"[^a]",
        b"[a-\xff]",
        b"[\x80-\x90]",
        b"[\xff-a]",
        b"[\x7f-\x80]",
        b"[a-",
        b"[^",
        b"[",
        b"]",
        b"^",
        b"-",
        b"[]]",
        b"[\\]]",
        b"\\",
        b"\\*",
        b"\\?",
        b"\\[",
        b"[a\\-z]",
        b"[z-a]",
        b"\x80",
        b"\xff",
    ];
    let channel_bytes = b"ab-z*?[]^\\\x00\x7f\x80\x85\xff";
    let mut steps = Vec::new();
    for round in 0..20 {
        let patterns: Vec<Vec<u8>> = (0..50)
            .map(|_| {
                let n = 1 + rng.below(4);
                (0..n).flat_map(|_| rng.pick(tokens).to_vec()).collect()
            })
            .collect();
        let mut psubscribe: Vec<&[u8]> = vec![b"PSUBSCRIBE"];
        psubscribe.extend(patterns.iter().map(Vec::as_slice));
        steps.push(step(0, &psubscribe));
        for _ in 0..100 {
            let channel = rng.bytes(channel_bytes, 4);
            steps.push(step(1 + round % 2, &[b"PUBLISH", &channel, b"m"]));
        }
        steps.push(step(2, &[b"PUBSUB", b"NUMPAT"]));
        let pattern: Vec<u8> = rng.pick(tokens).to_vec();
        steps.push(step(2, &[b"PUBSUB", b"CHANNELS", &pattern]));
        steps.push(step(0, &[b"PUNSUBSCRIBE"]));
    }
    // The 1,000-star limit, and the empty channel that `*` does not match.
    let a = vec![b'a'; 1001];
    let stars = b"*a".repeat(1001);
    let fewer = b"*a".repeat(1000);
    steps.push(step(0, &[b"PSUBSCRIBE", &stars, &fewer, b"*"]));
    steps.push(step(1, &[b"PUBLISH", &a, b"m"]));
    steps.push(step(1, &[b"PUBLISH", b"", b"m"]));
    differential(&server, "glob", 3, &steps);
}

#[test]
fn random_pubsub_sessions_match_redis() {
    let server = RedisServer::start();
    let channels: &[&[u8]] = &[b"a", b"b", b"ab", b"news.x", b"", b"\xff"];
    let patterns: &[&[u8]] = &[b"*", b"a*", b"?", b"[ab]", b"n*x", b"\\*", b"[^a]*", b"a"];
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut steps = Vec::new();
        for _ in 0..300 {
            let client = rng.below(4);
            let some = |rng: &mut Rng, from: &[&[u8]]| -> Vec<Vec<u8>> {
                (0..rng.below(3)).map(|_| rng.pick(from).to_vec()).collect()
            };
            let (name, rest): (&[u8], Vec<Vec<u8>>) = match rng.below(15) {
                0 | 1 => (b"SUBSCRIBE", {
                    let mut v = some(&mut rng, channels);
                    v.push(rng.pick(channels).to_vec());
                    v
                }),
                2 | 3 => (b"PSUBSCRIBE", {
                    let mut v = some(&mut rng, patterns);
                    v.push(rng.pick(patterns).to_vec());
                    v
                }),
                4 => (b"UNSUBSCRIBE", some(&mut rng, channels)),
                5 => (b"PUNSUBSCRIBE", some(&mut rng, patterns)),
                6..=8 => (
                    b"PUBLISH",
                    vec![rng.pick(channels).to_vec(), rng.bytes(b"xyz", 3)],
                ),
                9 => (b"PUBSUB", {
                    let mut v = vec![b"NUMSUB".to_vec()];
                    v.extend(some(&mut rng, channels));
                    v
                }),
                10 => (b"PUBSUB", vec![b"NUMPAT".to_vec()]),
                11 => (b"PUBSUB", {
                    let mut v = vec![b"CHANNELS".to_vec()];
                    v.extend(some(&mut rng, patterns).into_iter().take(1));
                    v
                }),
                12 => (
                    b"PING",
                    some(&mut rng, channels).into_iter().take(1).collect(),
                ),
                13 => (b"GET", vec![b"k".to_vec()]),
                _ => (b"RESET", Vec::new()),
            };
            let mut args = vec![name.to_vec()];
            args.extend(rest);
            steps.push(Step {
                client,
                args,
                inline: None,
            });
        }
        differential(&server, &format!("random, seed {seed}"), 4, &steps);
    }
}

#[test]
fn the_pubsub_bad_input_corpus_matches_redis() {
    // crates/cli/tests/corpus/resp/pubsub_*: the server tests send them to every
    // strategy; here each one's replies must be Redis's, byte for byte.
    let server = RedisServer::start();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/corpus/resp");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pubsub_")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "the pub/sub cases are missing from {}",
        dir.display()
    );
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&file).unwrap();
        let steps = vec![
            Step {
                client: 0,
                args: vec![name.clone().into_bytes()],
                inline: Some(bytes),
            },
            step(1, &[b"PUBLISH", b"a", b"after"]),
            step(0, &[b"QUIT"]),
        ];
        differential(&server, &name, 2, &steps);
    }
}

//! Redis pub/sub on every strategy, driven by the real `redis-cli`: subscribers are
//! `redis-cli subscribe` / `psubscribe` child processes whose output the test reads
//! line by line (with deadlines, never sleeps), publishers are `redis-cli publish`.
//!
//! The broker is per process. On the strategies that serve every connection in one
//! process (event loops, threads, green threads) a message reaches the subscribers
//! of every connection, and `PUBLISH` counts them. With `fork` every connection is its
//! own process, and with `prefork` a process serves one connection at a time: a
//! subscriber always sits in another process than the publisher, which therefore
//! reaches nobody (`PUBLISH` answers 0, `PUBSUB NUMSUB` counts 0), and that is what
//! is asserted there.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    IO_TIMEOUT, Resp, Server, connect, is_reset, metrics_addr, need_tool, read_resp, resp_cmd,
    run_tool, run_tool_with_input, strategy_tests, wait_metric,
};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [
        kernel: "serves --app echo only (its eBPF program cannot parse RESP or the chat protocol)",
    ],
    tests: [redis_cli_pubsub],
}

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, pool, green],
    except: [
        kernel: "serves --app echo only (its eBPF program cannot parse RESP or the chat protocol)",
        fork: "a process per connection: a publisher reaches no other connection (redis_cli_pubsub)",
        prefork: "a process per connection at a time: a publisher reaches no other connection (redis_cli_pubsub)",
    ],
    tests: [slow_subscribers_are_disconnected_and_the_others_lose_nothing],
}

/// How long a `redis-cli` run, or a line from a subscriber, may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Strategies whose broker is per process, and where a subscriber and a publisher
/// are always served by different processes.
const PER_PROCESS_BROKER: &[&str] = &["fork", "prefork"];

fn redis_cli_pubsub(strategy: &str) {
    if PER_PROCESS_BROKER.contains(&strategy) {
        per_process_broker(strategy);
    } else {
        one_broker(strategy);
    }
}

/// `redis-cli` against one server.
struct Cli {
    bin: PathBuf,
    port: String,
}

impl Cli {
    fn new(server: &Server) -> Cli {
        Cli {
            bin: need_tool("redis-cli"),
            port: server.addr().port().to_string(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["-h", "127.0.0.1", "-p", &self.port]);
        c
    }

    /// One command, one connection: its output.
    fn run(&self, args: &[&str]) -> String {
        let output = run_tool(self.command().args(args), TOOL_TIMEOUT);
        stdout_of(&output, &format!("redis-cli {}", args.join(" ")))
    }

    /// Commands read from stdin, one a line, over one connection: their output.
    fn script(&self, script: &str) -> String {
        let output =
            run_tool_with_input(&mut self.command(), Some(script.as_bytes()), TOOL_TIMEOUT);
        stdout_of(&output, "redis-cli < script")
    }

    /// `redis-cli subscribe ...` (or `psubscribe ...`) in the background.
    fn listen(&self, args: &[&str]) -> Listener {
        let what = format!("redis-cli {}", args.join(" "));
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
        let (tx, lines) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listener {
            child,
            lines,
            what,
            seen: Vec::new(),
        }
    }

    /// `PUBLISH channel payload`: the number of receivers.
    fn publish(&self, channel: &str, payload: &str) -> u64 {
        let out = self.run(&["publish", channel, payload]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("PUBLISH answered {out:?}, not an integer"))
    }

    /// `PUBSUB NUMSUB channel`: its subscriber count.
    fn numsub(&self, channel: &str) -> u64 {
        let out = self.run(&["pubsub", "numsub", channel]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "PUBSUB NUMSUB {channel}: {out:?}");
        assert_eq!(lines[0], channel, "PUBSUB NUMSUB {channel}: {out:?}");
        lines[1].parse().unwrap()
    }
}

fn stdout_of(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A `redis-cli` in subscribed mode: its output lines as they come. Killed on drop.
struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
    seen: Vec<String>,
}

impl Listener {
    /// The next lines must be `want`, each within [`TOOL_TIMEOUT`].
    fn expect(&mut self, want: &[&str]) {
        for (i, want) in want.iter().enumerate() {
            let line = match self.lines.recv_timeout(TOOL_TIMEOUT) {
                Ok(line) => line,
                Err(err) => panic!(
                    "{}: no line {i} ({want:?}) within {TOOL_TIMEOUT:?} ({err}); seen so far: {:?}",
                    self.what, self.seen
                ),
            };
            self.seen.push(line.clone());
            assert_eq!(
                &line, want,
                "{}: line {i}; seen so far: {:?}",
                self.what, self.seen
            );
        }
    }

    /// Every line it printed that was not [`expect`](Self::expect)ed yet (it must
    /// have printed them already: the caller knows nothing more is on its way).
    fn unread(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `PUBSUB NUMSUB channel` until it is `want` (a subscriber that went away is
/// unregistered when its connection closes, which the server sees a little later).
fn wait_numsub(cli: &Cli, channel: &str, want: u64) {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        let n = cli.numsub(channel);
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PUBSUB NUMSUB {channel} is still {n}, not {want}, after {TOOL_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// One broker for the whole server: subscribers on any connection (and any worker:
/// two workers where the strategy has them) receive what any connection publishes,
/// in publishing order, and PUBLISH / PUBSUB count them.
fn one_broker(strategy: &str) {
    let workers = if strategy == "thread" { "1" } else { "2" };
    let mut server = Server::start(strategy, "resp", &["--workers", workers]);
    let cli = Cli::new(&server);

    // A subscription is live once its confirmation is out: nothing to wait for after.
    let mut news = cli.listen(&["subscribe", "news", "sport"]);
    news.expect(&["subscribe", "news", "1", "subscribe", "sport", "2"]);
    let mut pattern = cli.listen(&["psubscribe", "n*"]);
    pattern.expect(&["psubscribe", "n*", "1"]);

    assert_eq!(
        cli.run(&["pubsub", "numsub", "news", "sport", "void"]),
        "news\n1\nsport\n1\nvoid\n0\n"
    );
    assert_eq!(cli.run(&["pubsub", "numpat"]), "1\n");
    let mut channels: Vec<String> = cli
        .run(&["pubsub", "channels"])
        .lines()
        .map(str::to_owned)
        .collect();
    channels.sort();
    assert_eq!(channels, ["news", "sport"]);
    assert_eq!(cli.run(&["pubsub", "channels", "n*"]), "news\n");

    // A channel subscriber plus a matching pattern: two receivers.
    assert_eq!(cli.publish("news", "hello"), 2);
    news.expect(&["message", "news", "hello"]);
    pattern.expect(&["pmessage", "n*", "news", "hello"]);
    assert_eq!(cli.publish("sport", "goal"), 1);
    news.expect(&["message", "sport", "goal"]);
    assert_eq!(cli.publish("void", "lost"), 0);

    // Many messages over one publishing connection arrive in order.
    const N: usize = 200;
    let script: String = (0..N).map(|i| format!("publish news m{i}\n")).collect();
    assert_eq!(cli.script(&script), "2\n".repeat(N));
    for i in 0..N {
        let m = format!("m{i}");
        news.expect(&["message", "news", &m]);
        pattern.expect(&["pmessage", "n*", "news", &m]);
    }
    // Nothing else came: the message published to `void` was delivered to no one.
    assert_eq!(news.unread(), Vec::<String>::new());

    // A subscriber that goes away is unregistered: the pattern alone receives.
    drop(news);
    wait_numsub(&cli, "news", 0);
    assert_eq!(
        cli.run(&["pubsub", "channels"]),
        "\n",
        "an empty list, as redis-cli prints it"
    );
    assert_eq!(cli.publish("news", "after"), 1);
    pattern.expect(&["pmessage", "n*", "news", "after"]);

    // The server drains with a subscriber still connected.
    server.stop();
}

/// One broker per process, and a subscriber and a publisher never share one: the
/// publisher reaches nobody, and the subscriber receives nothing.
fn per_process_broker(strategy: &str) {
    // prefork: two processes, so the publisher is served while the subscriber holds
    // the other one (a process serves one connection at a time).
    let extra: &[&str] = if strategy == "prefork" {
        &["--workers", "2"]
    } else {
        &[]
    };
    let mut server = Server::start(strategy, "resp", extra);
    let cli = Cli::new(&server);
    eprintln!(
        "{strategy}: the pub/sub broker is per process; a publisher reaches no subscriber of another connection"
    );

    let mut news = cli.listen(&["subscribe", "news"]);
    news.expect(&["subscribe", "news", "1"]);
    // Its own process counts it; the publisher's process does not know it.
    assert_eq!(
        cli.numsub("news"),
        0,
        "{strategy}: another process's subscriber was counted"
    );
    assert_eq!(
        cli.publish("news", "hello"),
        0,
        "{strategy}: PUBLISH reached another process"
    );
    assert_eq!(cli.run(&["pubsub", "numpat"]), "0\n");
    // PUBLISH answered 0: nothing was posted anywhere, so nothing is on its way.
    assert_eq!(news.unread(), Vec::<String>::new());
    drop(news);
    server.stop();
}

// ---------------------------------------------------------------------------------
// Slow subscribers
// ---------------------------------------------------------------------------------

/// Subscribers that never read.
const SLOW: usize = 20;
/// Bytes of each published payload (an 8-digit sequence number, then padding).
const PAYLOAD: usize = 2048;
/// The publisher stays at most this many messages ahead of the reading subscriber,
/// well under the mailbox's 4,096: however the machine schedules the test's threads,
/// the reading subscriber's mailbox cannot fill, only the slow ones' can.
const AHEAD: u64 = 1000;
/// PUBLISH commands written before their replies are read.
const BATCH: u64 = 32;
/// Bounds of the test: every slow subscriber must be gone before either.
const MAX_PUBLISHED: u64 = 100_000;
const MAX_TIME: Duration = Duration::from_secs(60);

/// A client socket whose receive buffer is small (4 KiB asked; the kernel's minimum
/// applies), so that a subscriber that does not read fills the server's side quickly
/// and the kernel holds little for it.
fn connect_small_rcvbuf(addr: std::net::SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    rustix::net::connect(&fd, &addr).unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// `SUBSCRIBE news` and its confirmation.
fn subscribe_news(stream: &TcpStream) {
    (&*stream)
        .write_all(&resp_cmd(&[b"SUBSCRIBE", b"news"]))
        .unwrap();
    // Nothing is published yet: the confirmation is all there is to read.
    let confirmation = read_resp(&mut BufReader::new(stream));
    assert_eq!(
        confirmation,
        Resp::Array(Some(vec![
            Resp::bulk(b"subscribe"),
            Resp::bulk(b"news"),
            Resp::Int(1)
        ]))
    );
}

fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!("{seq:08}").into_bytes();
    p.resize(PAYLOAD, b'x');
    p
}

/// Reads `message news <payload>` frames until the payload `end`: each must carry
/// the next sequence number. Counts them in `received` as they come.
fn read_everything(stream: TcpStream, received: Arc<AtomicU64>) -> Result<u64, String> {
    let mut r = BufReader::new(stream);
    for want in 0..=MAX_PUBLISHED {
        let frame = read_resp(&mut r);
        let Resp::Array(Some(parts)) = &frame else {
            return Err(format!("message {want}: not an array: {frame:?}"));
        };
        let [
            Resp::Bulk(Some(kind)),
            Resp::Bulk(Some(channel)),
            Resp::Bulk(Some(body)),
        ] = parts.as_slice()
        else {
            return Err(format!("message {want}: not a message frame: {frame:?}"));
        };
        if kind != b"message" || channel != b"news" {
            return Err(format!("message {want}: {frame:?}"));
        }
        if body == b"end" {
            return Ok(want);
        }
        if *body != payload(want) {
            return Err(format!(
                "message {want}: got {:?} (lost or out of order)",
                String::from_utf8_lossy(&body[..body.len().min(8)])
            ));
        }
        received.fetch_add(1, Ordering::Release);
    }
    Err(format!("no `end` after {MAX_PUBLISHED} messages"))
}

/// `SLOW` subscribers never read while a publisher publishes until they are all gone
/// (each one's socket buffers, then the server's output cap, then its mailbox of
/// 4,096 messages fill, and the next PUBLISH disconnects it). Meanwhile one subscriber
/// reads everything: it must lose nothing (count and order). PUBLISH counts fall from
/// `SLOW + 1` to 1, the slow ones see their connection closed, and
/// `c10k_mailbox_disconnects_total` counts exactly `SLOW`.
fn slow_subscribers_are_disconnected_and_the_others_lose_nothing(strategy: &str) {
    let workers = if strategy == "thread" { "1" } else { "2" };
    let mut server = Server::start(
        strategy,
        "resp",
        &[
            "--workers",
            workers,
            "--metrics",
            "127.0.0.1:0",
            "--output-cap",
            "64KiB",
        ],
    );
    let maddr = metrics_addr(&server);
    let addr = server.addr();
    let started = Instant::now();

    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let s = connect_small_rcvbuf(addr);
            subscribe_news(&s);
            s
        })
        .collect();
    let reader = connect(addr);
    subscribe_news(&reader);
    let received = Arc::new(AtomicU64::new(0));
    let reading = {
        let received = Arc::clone(&received);
        thread::spawn(move || read_everything(reader, received))
    };

    let publisher = connect(addr);
    let mut replies = BufReader::new(publisher.try_clone().unwrap());
    let mut published = 0u64;
    let mut receivers = SLOW as i64 + 1;
    let mut counts = Vec::new(); // (first publish with this count, count)
    while receivers > 1 {
        assert!(
            published < MAX_PUBLISHED && started.elapsed() < MAX_TIME,
            "{strategy}: after {published} messages and {:?}, PUBLISH still reaches {receivers} \
             subscribers: the slow ones were not disconnected (counts: {counts:?})",
            started.elapsed()
        );
        // Flow control on the reading subscriber only.
        while published - received.load(Ordering::Acquire) > AHEAD {
            assert!(
                !reading.is_finished() && started.elapsed() < MAX_TIME,
                "{strategy}: the reading subscriber stopped at {} of {published} messages",
                received.load(Ordering::Acquire)
            );
            thread::sleep(Duration::from_millis(1));
        }
        let mut batch = Vec::new();
        for seq in published..published + BATCH {
            batch.extend_from_slice(&resp_cmd(&[b"PUBLISH", b"news", &payload(seq)]));
        }
        (&publisher).write_all(&batch).unwrap();
        for seq in published..published + BATCH {
            let Resp::Int(n) = read_resp(&mut replies) else {
                panic!("{strategy}: PUBLISH {seq}: not an integer reply");
            };
            assert!(
                (1..=receivers).contains(&n),
                "{strategy}: PUBLISH {seq} reached {n} subscribers after {receivers}"
            );
            if n != receivers || counts.is_empty() {
                counts.push((seq, n));
            }
            receivers = n;
        }
        published += BATCH;
    }
    (&publisher)
        .write_all(&resp_cmd(&[b"PUBLISH", b"news", b"end"]))
        .unwrap();
    assert_eq!(
        read_resp(&mut replies),
        Resp::Int(1),
        "{strategy}: PUBLISH end"
    );

    let got = reading.join().expect("the reading subscriber panicked");
    assert_eq!(
        got,
        Ok(published),
        "{strategy}: the reading subscriber lost messages"
    );

    // Each slow subscriber is disconnected: what the kernel held for it, then the end.
    for (i, mut s) in slow.into_iter().enumerate() {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(err) if is_reset(&err) => break,
                Err(err) => panic!(
                    "{strategy}: slow subscriber {i}: not closed ({err}) after {total} bytes"
                ),
            }
            assert!(
                total <= (published as usize) * (PAYLOAD + 64),
                "{strategy}: slow subscriber {i} reads more than was published"
            );
        }
    }
    wait_metric(maddr, "c10k_mailbox_disconnects_total", "", SLOW as u64);
    eprintln!(
        "{strategy}: {published} messages in {:?}; PUBLISH counts (from message, count): {counts:?}",
        started.elapsed()
    );
    drop(publisher);
    server.stop();
}

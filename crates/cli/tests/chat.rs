//! The sans-IO chat (`c10k serve --app chat`, crates/proto/src/chat.rs) over loopback,
//! the same session on every strategy: nicknames, welcomes, joins, lines and leaves
//! arrive in order, a line is not sent back to its sender, and a bad nickname or a
//! line too long closes with an error.
//!
//! The room is per process. With `fork` each connection is its own process, and with
//! `prefork` a process serves one connection at a time, so a member is always alone:
//! there it is asserted that two members at once are each welcomed alone, and that
//! neither hears anything of the other (their lines reach nobody).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{DRAIN_TIMEOUT, EXIT_MARGIN, Server, connect, read_to_eof, strategy_tests};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [
        kernel: "serves --app echo only (its eBPF program cannot parse RESP or the chat protocol)",
    ],
    tests: [chat_room],
}

// A drained, idle member that receives a line in its drain quiet period (50 ms) must
// still close then, not at the drain deadline. Not for fork/prefork: a member is
// alone there, nobody speaks to it.
strategy_tests! {
    only: [uring, thread, green, select, poll, epoll_lt, epoll_et, pool],
    tests: [a_drained_member_that_is_spoken_to_closes_after_the_quiet_period],
}

/// Strategies where two connections at once are always in different processes.
const ROOM_PER_CONNECTION: &[&str] = &["fork", "prefork"];

fn chat_room(strategy: &str) {
    if ROOM_PER_CONNECTION.contains(&strategy) {
        alone(strategy);
    } else {
        one_room(strategy);
    }
}

/// A chat client.
struct Member {
    nick: String,
    stream: TcpStream,
    lines: BufReader<TcpStream>,
}

impl Member {
    /// Connects and sends `first` (the nickname line, and maybe more).
    fn connect(addr: SocketAddr, nick: &str, first: &str) -> Member {
        let stream = connect(addr);
        let lines = BufReader::new(stream.try_clone().unwrap());
        let mut m = Member {
            nick: nick.to_owned(),
            stream,
            lines,
        };
        m.send(first);
        m
    }

    /// Connects as `nick` and expects the welcome, with `others` others in the room.
    fn join(addr: SocketAddr, nick: &str, others: usize) -> Member {
        let mut m = Member::connect(addr, nick, &format!("{nick}\n"));
        m.expect(&format!("welcome {nick}, {others} other(s) here"));
        m
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next line must be `want` (within the socket's read timeout).
    fn expect(&mut self, want: &str) {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => panic!("{}: connection closed, expected {want:?}", self.nick),
            Ok(_) => {}
            Err(err) => panic!("{}: no line ({err}), expected {want:?}", self.nick),
        }
        assert_eq!(line.trim_end_matches('\n'), want, "{}", self.nick);
    }

    /// Closes our side, then everything the server still sends, up to its close.
    fn finish(mut self) -> String {
        // The server may have closed already (after an error).
        let _ = self.stream.shutdown(Shutdown::Write);
        let rest = read_to_eof(&mut self.lines, &self.nick);
        String::from_utf8(rest).unwrap()
    }
}

/// One room for the whole server (two workers where the strategy has them: members
/// on different workers speak through their mailboxes).
fn one_room(strategy: &str) {
    let workers = if strategy == "thread" { "1" } else { "2" };
    let mut server = Server::start(strategy, "chat", &["--workers", workers]);
    let addr = server.addr();

    let mut alice = Member::join(addr, "alice", 0);
    let mut bob = Member::join(addr, "bob", 1);
    alice.expect("* bob joined");

    alice.send("hi bob\n");
    bob.expect("alice: hi bob");
    bob.send("hi alice\r\n");
    // Alice's own line did not come back: the next thing she hears is bob's.
    alice.expect("bob: hi alice");

    // A nickname and a line in one write: the others hear the join first.
    let mut carol = Member::connect(addr, "carol", "carol\nhello all\n");
    carol.expect("welcome carol, 2 other(s) here");
    for m in [&mut alice, &mut bob] {
        m.expect("* carol joined");
        m.expect("carol: hello all");
    }
    // Lines from one member arrive in the order said, interleaved with nobody's.
    for i in 0..50 {
        carol.send(&format!("n{i}\n"));
    }
    for m in [&mut alice, &mut bob] {
        for i in 0..50 {
            m.expect(&format!("carol: n{i}"));
        }
    }
    // Carol closes her side: the others are told, and she hears nothing more.
    assert_eq!(carol.finish(), "");
    alice.expect("* carol left");
    bob.expect("* carol left");

    // A vanished connection (no goodbye) leaves too.
    drop(bob);
    alice.expect("* bob left");

    // A bad nickname, a line too long: an error and a close.
    let nameless = Member::connect(addr, "nameless", "\n");
    assert_eq!(nameless.finish(), "ERR send a nickname first\n");
    let mut dave = Member::join(addr, "dave", 1);
    alice.expect("* dave joined");
    dave.send(&"x".repeat(2000));
    dave.expect("ERR line too long");
    alice.expect("* dave left");
    assert_eq!(dave.finish(), "");

    let mut erin = Member::join(addr, "erin", 1);
    alice.expect("* erin joined");
    erin.send("bye\n");
    alice.expect("erin: bye");
    // The server drains with members connected: they see the end of the stream (and
    // then close, as clients do, which ends the server's linger).
    let waiting: Vec<_> = [alice, erin]
        .into_iter()
        .map(|mut m| {
            std::thread::spawn(move || {
                let rest = read_to_eof(&mut m.lines, &m.nick);
                (m.nick, String::from_utf8(rest).unwrap())
            })
        })
        .collect();
    server.stop();
    for w in waiting {
        let (nick, rest) = w.join().unwrap();
        // The other one's leave may reach it first (another worker drains it).
        assert!(
            rest.lines()
                .all(|l| l == "* alice left" || l == "* erin left"),
            "{nick}: after the drain: {rest:?}"
        );
    }
}

/// A room per process, one connection per process at a time: two members at once are
/// each alone, and nothing one says reaches the other.
fn alone(strategy: &str) {
    // prefork: two processes, one for each member.
    let extra: &[&str] = if strategy == "prefork" {
        &["--workers", "2"]
    } else {
        &[]
    };
    let mut server = Server::start(strategy, "chat", extra);
    let addr = server.addr();
    eprintln!("{strategy}: the chat room is per process; each member is alone");
    let mut alice = Member::join(addr, "alice", 0);
    let mut bob = Member::join(addr, "bob", 0);
    alice.send("anyone?\n");
    bob.send("hello?\n");
    // Each one's process has read its line (broadcast to nobody) before the end of
    // its stream, and nothing else was posted to either: only the welcomes came.
    assert_eq!(alice.finish(), "");
    assert_eq!(bob.finish(), "");
    server.stop();
}

fn a_drained_member_that_is_spoken_to_closes_after_the_quiet_period(strategy: &str) {
    drained_member_spoken_to(strategy);
}

/// SIGTERM with two idle members on one worker; one speaks at once, so the other is
/// delivered a line while the drain waits for it to stay quiet. Both must be closed
/// soon after (the drain closes an idle connection after 50 ms of quiet), not at the
/// drain deadline (5 s).
fn drained_member_spoken_to(strategy: &str) {
    let mut server = Server::start(
        strategy,
        "chat",
        &["--workers", "1", "--log-level", "debug"],
    );
    let addr = server.addr();
    let mut a = Member::join(addr, "a", 0);
    let b = Member::join(addr, "b", 1);
    a.expect("* b joined");
    let signalled = Instant::now();
    server.sigterm();
    // Speak once the drain has reached the members (a loop's `draining` debug line;
    // `thread` has no loop and no such line), within their quiet period.
    while strategy != "thread" && !server.stderr_text().contains("draining") {
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "{strategy}: no `draining` log line after SIGTERM:\n{}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    a.send("hi\n");
    let readers: Vec<_> = [a, b]
        .into_iter()
        .map(|mut m| {
            std::thread::spawn(move || {
                let rest = read_to_eof(&mut m.lines, &m.nick);
                (
                    m.nick,
                    signalled.elapsed(),
                    String::from_utf8(rest).unwrap(),
                )
            })
        })
        .collect();
    for r in readers {
        let (nick, after, rest) = r.join().unwrap();
        assert!(
            after < Duration::from_secs(2),
            "{strategy}: {nick} was closed {after:?} after SIGTERM (it had {rest:?}): the \
             drain held it, it should close after 50 ms of quiet"
        );
    }
    let status = server.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN);
    assert!(status.success(), "{strategy}: exit status {status}");
    let log = server.stderr_text();
    assert!(
        !log.contains("drain deadline passed"),
        "{strategy}: the drain ran to its deadline:\n{log}"
    );
}

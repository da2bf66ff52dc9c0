//! A line-based chat server written once, in blocking style, and run on OS threads or
//! green threads by the strategy argument.
//!
//! The first line a client sends is its nickname; every later line is sent to the
//! other members as `nick: line`. Joins and leaves are announced (`* nick joined`,
//! `* nick left`). Each member's handler waits for its socket *and* its mailbox at
//! once ([`Conn::wait_event`]): a line from the socket is posted to every other
//! member's mailbox, and a message from the mailbox is written to the socket. No
//! socket is shared between handlers. A member whose mailbox is full (a client that
//! stopped reading, so its handler stopped taking messages) is disconnected rather
//! than allowed to hold up the room or grow without bound.
//!
//! Run it: `cargo run -p c10k-server --example chat -- green 127.0.0.1:7200` (or
//! `thread`, `fork`... though with `fork` and `prefork` each process has its own
//! room), then connect with `nc 127.0.0.1 7200` from two terminals.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use c10k_server::{Conn, Event, Mailbox, PostError, Server, Strategy};

/// Longest line (and nickname) accepted.
const MAX_LINE: usize = 1024;

/// Everybody connected: each member's mailbox.
#[derive(Default)]
pub struct Room {
    next_id: AtomicU64,
    members: Mutex<HashMap<u64, (String, Mailbox)>>,
}

impl Room {
    /// Post `line` to every member but `from`. Never waits: a member whose mailbox
    /// is full is disconnected, a closed one forgotten.
    fn broadcast(&self, from: u64, line: &str) {
        let line: Arc<str> = Arc::from(line);
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|&id, (_, mailbox)| {
            if id == from {
                return true;
            }
            match mailbox.post(Arc::clone(&line)) {
                Ok(()) => true,
                Err(PostError::Full(_)) => {
                    mailbox.disconnect();
                    false
                }
                Err(PostError::Closed(_)) => false,
            }
        });
    }

    fn join(&self, nick: &str, mailbox: Mailbox) -> (u64, usize) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.insert(id, (nick.to_owned(), mailbox));
        (id, members.len() - 1)
    }

    fn leave(&self, id: u64) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.remove(&id);
    }
}

/// Lines read from a member's socket.
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The next complete line, if one is buffered (`Err` when it is too long).
    fn next(&mut self) -> Result<Option<String>, ()> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()))
            }
            None if self.buf.len() >= MAX_LINE => Err(()),
            None => Ok(None),
        }
    }

    /// Read what the socket has (it is readable); false at end of stream.
    fn fill(&mut self, conn: &Conn) -> io::Result<bool> {
        let mut chunk = [0u8; MAX_LINE];
        let n = (&*conn).read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }
}

/// One member's connection, from nickname to leaving.
pub fn handle(room: &Room, conn: &mut Conn) -> io::Result<()> {
    let conn = &*conn;
    let mut lines = Lines { buf: Vec::new() };
    let mut joined: Option<(u64, String)> = None;
    let result = loop {
        let line = match lines.next() {
            Ok(Some(line)) => line,
            Ok(None) => match conn.wait_event(None) {
                Ok(Event::Readable) => match lines.fill(conn) {
                    Ok(true) => continue,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                },
                Ok(Event::Message(msg)) => {
                    if let Ok(text) = msg.downcast::<Arc<str>>() {
                        if let Err(e) = (&*conn).write_all(text.as_bytes()) {
                            break Err(e);
                        }
                    }
                    continue;
                }
                Ok(Event::Timeout | Event::Draining) => break Ok(()),
                Err(e) => break Err(e),
            },
            Err(()) => {
                let _ = (&*conn).write_all(b"ERR line too long\n");
                break Ok(());
            }
        };
        match &joined {
            None if line.is_empty() => {
                let _ = (&*conn).write_all(b"ERR send a nickname first\n");
                break Ok(());
            }
            None => {
                let (id, others) = room.join(&line, conn.mailbox()?);
                // Announced before the welcome: once a client is welcomed, its own
                // join is old news to anyone who joins after it.
                room.broadcast(id, &format!("* {line} joined\n"));
                (&*conn)
                    .write_all(format!("welcome {line}, {others} other(s) here\n").as_bytes())?;
                joined = Some((id, line));
            }
            Some((id, nick)) => room.broadcast(*id, &format!("{nick}: {line}\n")),
        }
    };
    if let Some((id, nick)) = joined {
        room.leave(id);
        room.broadcast(id, &format!("* {nick} left\n"));
    }
    result
}

/// The server: `strategy` is any of `thread`, `fork`, `prefork`, `green`.
pub fn server(
    strategy: Strategy,
    listen: std::net::SocketAddr,
) -> c10k_server::ServerBuilder<
    c10k_server::Handler<impl Fn(&mut Conn) -> io::Result<()> + Send + Sync + 'static>,
> {
    let room = Arc::new(Room::default());
    Server::builder()
        .strategy(strategy)
        .listen(listen)
        .handler(move |conn: &mut Conn| handle(&room, conn))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let strategy: Strategy = args.next().unwrap_or_else(|| "green".into()).parse()?;
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7200".into())
        .parse()?;
    let server = server(strategy, listen).bind()?;
    println!("listening on {}", server.local_addr());
    server.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::time::Duration;

    struct Client {
        stream: TcpStream,
        lines: BufReader<TcpStream>,
    }

    impl Client {
        fn join(addr: std::net::SocketAddr, nick: &str) -> Client {
            let stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let lines = BufReader::new(stream.try_clone().unwrap());
            let mut c = Client { stream, lines };
            c.say(nick);
            let welcome = c.line();
            assert!(
                welcome.starts_with(&format!("welcome {nick}, ")),
                "{welcome}"
            );
            c
        }
        fn say(&mut self, text: &str) {
            self.stream
                .write_all(format!("{text}\n").as_bytes())
                .unwrap();
        }
        fn line(&mut self) -> String {
            let mut l = String::new();
            self.lines
                .read_line(&mut l)
                .unwrap_or_else(|e| panic!("no line from the chat server: {e}"));
            l.trim_end().to_owned()
        }
    }

    /// The chat server on `strategy`, two workers, on a port the kernel picks.
    fn spawn(strategy: Strategy) -> c10k_server::ServerHandle {
        server(strategy, "127.0.0.1:0".parse().unwrap())
            .workers(2)
            .bind()
            .unwrap()
            .spawn()
            .unwrap()
    }

    fn chat(strategy: Strategy) {
        let handle = spawn(strategy);
        let addr = handle.local_addr();
        let mut alice = Client::join(addr, "alice");
        let mut bob = Client::join(addr, "bob");
        assert_eq!(alice.line(), "* bob joined");
        alice.say("hi bob");
        assert_eq!(bob.line(), "alice: hi bob");
        bob.say("hi alice");
        assert_eq!(alice.line(), "bob: hi alice");
        let carol = Client::join(addr, "carol");
        assert_eq!(alice.line(), "* carol joined");
        assert_eq!(bob.line(), "* carol joined");
        drop(carol);
        assert_eq!(alice.line(), "* carol left");
        assert_eq!(bob.line(), "* carol left");
        // A line too long ends that member's session.
        bob.stream.write_all(&[b'x'; MAX_LINE]).unwrap();
        assert_eq!(bob.line(), "ERR line too long");
        assert_eq!(alice.line(), "* bob left");
        let mut rest = Vec::new();
        let _ = bob.lines.read_to_end(&mut rest);
        handle.shutdown();
        let report = handle.join().unwrap();
        assert_eq!(report.accepted_per_worker().iter().sum::<u64>(), 3);
        // Alice was idle: the drain closed her connection.
        assert_eq!(alice.lines.read(&mut [0; 16]).unwrap(), 0);
    }

    #[test]
    fn chat_on_os_threads() {
        chat(Strategy::Thread);
    }

    #[test]
    fn chat_on_green_threads() {
        chat(Strategy::Green);
    }

    /// A member that never reads: its handler blocks writing once its socket is
    /// full, its mailbox fills, and the room disconnects it; the others go on.
    fn slow_member_is_disconnected(strategy: Strategy) {
        let handle = spawn(strategy);
        let addr = handle.local_addr();
        let mut alice = Client::join(addr, "alice");
        let slow = Client::join(addr, "slow");
        assert_eq!(alice.line(), "* slow joined");
        // Enough to fill the slow member's socket buffers and its mailbox (4,096
        // messages) several times over; bounded, and alice's writer stops as soon
        // as the room has let the slow member go.
        let mut writer = alice.stream.try_clone().unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let sender = std::thread::spawn(move || {
            let line = format!("{}\n", "x".repeat(MAX_LINE - 10));
            for _ in 0..40_000 {
                if stop.load(Ordering::Relaxed) || writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        });
        alice
            .stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(alice.line(), "* slow left");
        done.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        drop(slow);
        handle.shutdown();
        handle.join().unwrap();
    }

    #[test]
    fn slow_member_is_disconnected_on_os_threads() {
        slow_member_is_disconnected(Strategy::Thread);
    }

    #[test]
    fn slow_member_is_disconnected_on_green_threads() {
        slow_member_is_disconnected(Strategy::Green);
    }
}

//! A line-based chat server written once, in blocking style, and run on OS threads or
//! green threads by the strategy argument.
//!
//! The first line a client sends is its nickname; every later line is sent to the
//! other members as `nick: line`. Joins and leaves are announced (`* nick joined`,
//! `* nick left`). A member whose socket cannot take a message at once (a client that
//! stopped reading) is disconnected rather than allowed to hold up the room.
//!
//! Run it: `cargo run -p c10k-server --example chat -- green 127.0.0.1:7200` (or
//! `thread`, `fork`... though with `fork` and `prefork` each process has its own
//! room), then connect with `nc 127.0.0.1 7200` from two terminals.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use c10k_server::{Conn, Server, Strategy};

/// Longest line (and nickname) accepted.
const MAX_LINE: usize = 1024;

/// Everybody connected: a nonblocking clone of each member's socket.
#[derive(Default)]
pub struct Room {
    next_id: AtomicU64,
    members: Mutex<HashMap<u64, (String, TcpStream)>>,
}

impl Room {
    /// Send `line` to every member but `from`. Never waits: a member whose socket is
    /// full is dropped (its own handler then reads end of stream and leaves).
    fn broadcast(&self, from: u64, line: &str) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|&id, (_, stream)| {
            if id == from {
                return true;
            }
            match stream.write(line.as_bytes()) {
                Ok(n) if n == line.len() => true,
                _ => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    false
                }
            }
        });
    }

    fn join(&self, nick: &str, stream: TcpStream) -> (u64, usize) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.insert(id, (nick.to_owned(), stream));
        (id, members.len() - 1)
    }

    fn leave(&self, id: u64) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.remove(&id);
    }
}

/// One member's connection, from nickname to leaving: plain blocking reads and
/// writes.
pub fn handle(room: &Room, conn: &mut Conn) -> io::Result<()> {
    let mut lines = BufReader::new(&*conn).take(MAX_LINE as u64);
    let mut nick = String::new();
    if lines.read_line(&mut nick)? == 0 {
        return Ok(());
    }
    let nick = nick.trim().to_owned();
    if nick.is_empty() || nick.len() >= MAX_LINE {
        (&*conn).write_all(b"ERR send a nickname first\n")?;
        return Ok(());
    }
    let (id, others) = room.join(&nick, conn.try_clone_stream()?);
    (&*conn).write_all(format!("welcome {nick}, {others} other(s) here\n").as_bytes())?;
    room.broadcast(id, &format!("* {nick} joined\n"));
    let mut line = String::new();
    let result = loop {
        line.clear();
        lines.set_limit(MAX_LINE as u64);
        match lines.read_line(&mut line) {
            Ok(0) => break Ok(()),
            Ok(_) if !line.ends_with('\n') => {
                let _ = (&*conn).write_all(b"ERR line too long\n");
                break Ok(());
            }
            Ok(_) => room.broadcast(id, &format!("{nick}: {}\n", line.trim_end())),
            Err(e) => break Err(e),
        }
    };
    room.leave(id);
    room.broadcast(id, &format!("* {nick} left\n"));
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

    fn chat(strategy: Strategy) {
        let handle = server(strategy, "127.0.0.1:0".parse().unwrap())
            .workers(2)
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
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
}

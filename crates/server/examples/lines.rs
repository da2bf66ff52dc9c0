//! A custom line protocol on any c10k strategy: each line `VERB text` is answered with
//! one line. `UPPER hello` -> `HELLO`, `REV abc` -> `cba`, `LEN abc` -> `3`,
//! `QUIT` -> `BYE` and close; anything else -> `ERR unknown verb`. Lines over 4 KiB
//! get `ERR line too long` and a close.
//!
//! Run it: `cargo run -p c10k-server --example lines -- epoll-lt 127.0.0.1:7100`, then
//! `printf 'UPPER hi\nQUIT\n' | nc 127.0.0.1 7100`.

use c10k_proto::{App, Cx, Peer, ProtoError, Session};
use c10k_server::{Server, Strategy};

/// Longest line accepted.
const MAX_LINE: usize = 4096;

/// The app: no shared state.
pub struct Lines;

/// One connection.
#[derive(Default)]
pub struct LinesSession {
    close: bool,
}

impl App for Lines {
    type Session = LinesSession;
    fn open(&self, _peer: &Peer) -> LinesSession {
        LinesSession::default()
    }
}

impl Session for LinesSession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        let mut used = 0;
        while !self.close {
            let Some(nl) = input[used..].iter().position(|&b| b == b'\n') else {
                if input.len() - used > MAX_LINE {
                    out.extend_from_slice(b"ERR line too long\n");
                    self.close = true;
                    return Err(ProtoError::Other("line too long".into()));
                }
                break;
            };
            let line = &input[used..used + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            used += nl + 1;
            self.answer(line, out);
        }
        Ok(used)
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.close = true;
    }

    fn wants_close(&self) -> bool {
        self.close
    }
}

impl LinesSession {
    fn answer(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let (verb, text) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => (&line[..sp], &line[sp + 1..]),
            None => (line, &b""[..]),
        };
        match verb {
            b"UPPER" => out.extend(text.iter().map(u8::to_ascii_uppercase)),
            b"REV" => out.extend(text.iter().rev()),
            b"LEN" => out.extend_from_slice(text.len().to_string().as_bytes()),
            b"QUIT" => {
                out.extend_from_slice(b"BYE");
                self.close = true;
            }
            _ => out.extend_from_slice(b"ERR unknown verb"),
        }
        out.push(b'\n');
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let strategy: Strategy = args.next().unwrap_or_else(|| "epoll-et".into()).parse()?;
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7100".into())
        .parse()?;
    let server = Server::builder()
        .strategy(strategy)
        .listen(listen)
        .app(Lines)
        .bind()?;
    println!("listening on {}", server.local_addr());
    server.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    fn talk(strategy: Strategy) {
        let server = Server::builder()
            .strategy(strategy)
            .listen("127.0.0.1:0".parse().unwrap())
            .app(Lines)
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        (&stream)
            .write_all(b"UPPER hello\r\nREV abc\nLEN four\nNOPE\nQUIT\nUPPER ignored\n")
            .unwrap();
        let lines: Vec<String> = BufReader::new(&stream)
            .lines()
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(lines, ["HELLO", "cba", "4", "ERR unknown verb", "BYE"]);
        server.shutdown();
        let report = server.join().unwrap();
        assert_eq!(report.accepted_per_worker(), vec![1]);
    }

    #[test]
    fn answers_lines_on_epoll_lt() {
        talk(Strategy::EpollLt);
    }

    #[test]
    fn answers_lines_on_epoll_et() {
        talk(Strategy::EpollEt);
    }

    #[test]
    fn answers_lines_on_pool() {
        talk(Strategy::Pool);
    }

    #[test]
    fn answers_lines_on_thread() {
        talk(Strategy::Thread);
    }

    #[test]
    fn answers_lines_on_green() {
        talk(Strategy::Green);
    }

    #[test]
    fn answers_lines_on_uring() {
        if let c10k_server::Availability::Unavailable { reason } = Strategy::Uring.availability() {
            panic!("io_uring is not usable here, so this test cannot run: {reason}");
        }
        talk(Strategy::Uring);
    }

    #[test]
    fn overlong_line_gets_an_error_and_a_close() {
        let mut s = Lines.open(&Peer::unknown());
        let cx = Cx::new(std::time::UNIX_EPOCH);
        let mut out = Vec::new();
        assert!(
            s.handle_input(&cx, &[b'x'; MAX_LINE + 1], &mut out)
                .is_err()
        );
        assert_eq!(out, b"ERR line too long\n");
        assert!(s.wants_close());
    }
}

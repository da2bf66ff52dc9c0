//! The echo server as a blocking-style handler: read, write it all back, repeat.
//! The same function runs on OS threads, processes or green threads.
//!
//! Run it: `cargo run -p c10k-server --example echo_blocking -- green 127.0.0.1:7300`
//! (or `thread`, `fork`, `prefork`), then `nc 127.0.0.1 7300`.

use std::io::{self, Read, Write};

use c10k_server::{Conn, Server, Strategy};

/// Echo everything until the peer closes (or the server drains).
pub fn echo(conn: &mut Conn) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let strategy: Strategy = args.next().unwrap_or_else(|| "green".into()).parse()?;
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7300".into())
        .parse()?;
    let server = Server::builder()
        .strategy(strategy)
        .listen(listen)
        .handler(echo)
        .bind()?;
    println!("listening on {}", server.local_addr());
    server.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpStream};
    use std::time::Duration;

    fn echo_on(strategy: Strategy) {
        let handle = Server::builder()
            .strategy(strategy)
            .workers(2)
            .listen("127.0.0.1:0".parse().unwrap())
            .handler(echo)
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let addr = handle.local_addr();
        // Several clients at once, each a round trip and then a large half-closed
        // transfer (the handler's writes wait while the client is not reading).
        let clients: Vec<_> = (0..8u8)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(b"ping").unwrap();
                    let mut four = [0u8; 4];
                    s.read_exact(&mut four).unwrap();
                    assert_eq!(&four, b"ping");
                    let data: Vec<u8> = (0..2_000_000u32).map(|k| (k as u8) ^ i).collect();
                    let mut w = s.try_clone().unwrap();
                    let sent = data.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&sent).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    writer.join().unwrap();
                    assert!(got == data, "client {i}: echo differs");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        handle.shutdown();
        let report = handle.join().unwrap();
        assert_eq!(report.accepted_per_worker().iter().sum::<u64>(), 8);
    }

    #[test]
    fn echoes_on_os_threads() {
        echo_on(Strategy::Thread);
    }

    #[test]
    fn echoes_on_green_threads() {
        echo_on(Strategy::Green);
    }

    #[test]
    fn a_handler_is_refused_by_an_event_loop_strategy() {
        let err = Server::builder()
            .strategy(Strategy::EpollEt)
            .listen("127.0.0.1:0".parse().unwrap())
            .handler(echo)
            .bind()
            .err()
            .unwrap();
        assert!(err.to_string().contains("green"), "{err}");
    }
}

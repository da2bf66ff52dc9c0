//! A session that panics closes only its own connection, on every strategy (one case
//! per strategy of `Strategy::ALL`, run by `support::run`): the
//! panicking client sees the connection close with no reply, a client connected
//! alongside keeps being served, new clients are served, and the panic is counted in
//! `WorkerStats::panics`.
//!
//! Threaded strategies run in this process (`Server::spawn`). `fork` and `prefork`
//! must run in a single-threaded process, so the test runs this binary again as
//! `panics --serve STRATEGY` (this test has its own `main`, `harness = false`), which
//! serves from its main thread and prints its counters after SIGTERM.
//!
//! fork: the connection process catches the panic and exits with a status the parent
//! counts. prefork: the worker process catches it and keeps serving (its pid does not
//! change), but its counters stay in the worker (prefork only reports accepted
//! connections to the parent), so the parent's `panics` stays 0 there.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c10k_proto::{App, Cx, Peer, ProtoError, Session};
use c10k_server::{Server, Strategy, WorkerStats};

mod support;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Echoes lines; the line `panic` panics in `handle_input`, the line `eofpanic`
/// arms a panic in `handle_eof`.
struct Panicky;
#[derive(Default)]
struct PanickySession {
    eof_panic: bool,
}

impl App for Panicky {
    type Session = PanickySession;
    fn open(&self, _peer: &Peer) -> PanickySession {
        PanickySession::default()
    }
}

impl Session for PanickySession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        let mut used = 0;
        while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + nl];
            match line {
                b"panic" => panic!("test: a session panicked on purpose"),
                b"eofpanic" => self.eof_panic = true,
                _ => {}
            }
            out.extend_from_slice(&input[used..=used + nl]);
            used += nl + 1;
        }
        Ok(used)
    }
    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        if self.eof_panic {
            panic!("test: a session panicked at EOF on purpose");
        }
    }
    fn wants_close(&self) -> bool {
        false
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn roundtrip(c: &mut TcpStream, line: &[u8], what: &str) {
    c.write_all(line).unwrap();
    let mut got = vec![0; line.len()];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
    assert_eq!(got, line, "{what}");
}

/// The connection ends (EOF or reset) without a byte of reply.
fn expect_closed_silently(c: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    // Bounded: each retry is a signal that interrupted the read.
    for _ in 0..100 {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!("{what}: got {:?} instead of a close", &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            // The signal handlers of the servers run in this process interrupt reads.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: no close: {e}"),
        }
    }
    panic!("{what}: no close after 100 interrupted reads");
}

/// The client side of the scenario, against a server at `addr`: returns after every
/// check passed. Two panics are provoked (one in `handle_input`, one in `handle_eof`).
fn scenario(addr: SocketAddr, name: &str) {
    let mut bystander = connect(addr);
    roundtrip(&mut bystander, b"hello\n", &format!("{name}: bystander"));

    let mut victim = connect(addr);
    roundtrip(&mut victim, b"first\n", &format!("{name}: victim"));
    victim.write_all(b"panic\nnever answered\n").unwrap();
    expect_closed_silently(&mut victim, &format!("{name}: panicking connection"));

    roundtrip(
        &mut bystander,
        b"still here\n",
        &format!("{name}: bystander"),
    );

    let mut eof = connect(addr);
    roundtrip(&mut eof, b"eofpanic\n", &format!("{name}: eof victim"));
    eof.shutdown(std::net::Shutdown::Write).unwrap();
    expect_closed_silently(&mut eof, &format!("{name}: panic at EOF"));

    // New connections are served.
    for i in 0..5 {
        let mut c = connect(addr);
        roundtrip(&mut c, b"new\n", &format!("{name}: new client {i}"));
    }
    roundtrip(&mut bystander, b"bye\n", &format!("{name}: bystander"));
}

fn in_process(strategy: Strategy) {
    let name = strategy.name();
    let handle = Server::builder()
        .strategy(strategy)
        .workers(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Panicky)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    scenario(handle.local_addr(), name);
    // The counters are updated by the worker just after it closed the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    let panics = loop {
        let n: u64 = handle
            .stats()
            .iter()
            .map(|s| WorkerStats::get(&s.panics))
            .sum();
        if n >= 2 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(panics, 2, "{name}: panics counted");
    handle.shutdown();
    handle.join().unwrap();
    println!("{name}: 2 panics caught and counted; bystander and new clients served");
}

/// Child processes of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out.sort_unstable();
    out
}

fn out_of_process(strategy: Strategy) {
    let name = strategy.name();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
    // prefork: wait for the pool, note its pids.
    let pid = child.id();
    let mut before = children(pid);
    if strategy == Strategy::Prefork {
        let deadline = Instant::now() + Duration::from_secs(10);
        while before.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            before = children(pid);
        }
        assert_eq!(before.len(), 2, "{name}: two workers");
    }
    scenario(addr, name);
    if strategy == Strategy::Prefork {
        assert_eq!(
            children(pid),
            before,
            "{name}: the workers survived their sessions' panics"
        );
    }
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(raw, rustix::process::Signal::TERM).unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{name}: exit {status}");
    let panics: u64 = rest
        .lines()
        .find_map(|l| l.strip_prefix("panics "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}: no panics line in {rest:?}"));
    // Both publish their children's counters to the parent (shared counters).
    let want = 2;
    assert_eq!(panics, want, "{name}: panics counted by the parent");
    println!("{name}: 2 panics caught (parent counted {panics}); bystander and new clients served");
}

/// `--serve STRATEGY`: serve `Panicky` in the foreground, print the counters at exit.
fn serve(name: &str) {
    let strategy: Strategy = name.parse().unwrap();
    let server = Server::builder()
        .strategy(strategy)
        .workers(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .app(Panicky)
        .bind()
        .unwrap();
    println!("listening on {}", server.local_addr());
    let report = server.run().unwrap();
    let panics: u64 = report
        .workers
        .iter()
        .map(|s| WorkerStats::get(&s.panics))
        .sum();
    println!("panics {panics}");
}

fn main() {
    // The panics provoked on purpose are expected: keep them out of the test's output
    // (the counters say they were caught); any other panic is printed as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_purpose = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.contains("on purpose"));
        if !on_purpose {
            default_hook(info);
        }
    }));
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--serve") {
        serve(&args[pos + 1]);
        return;
    }
    // One case per strategy of the registry, named after it; one that is not built
    // or cannot run here is reported as skipped, with the reason.
    let cases = Strategy::ALL
        .iter()
        .map(|info| {
            support::Case::strategy_for_sessions(
                "a_panic_closes_only_its_connection",
                info.strategy,
                |s| match s.process_model() {
                    c10k_server::ProcessModel::Threads => in_process(s),
                    c10k_server::ProcessModel::Processes => out_of_process(s),
                },
            )
        })
        .collect();
    support::run(cases);
}

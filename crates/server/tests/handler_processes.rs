//! Blocking-style handlers in real server processes: the same echo handler on
//! `fork`, `prefork`, `thread` and `green` (the forking strategies must run in a
//! process's only thread, hence a child process per case, drained with SIGTERM), and
//! a green thread's stack overflow reported instead of a silent crash.
//!
//! `harness = false`: `main` runs the cases (one per strategy of
//! `HANDLER_STRATEGIES`, named after it, through `support::run`); the child mode
//! serves one case.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c10k_server::{Conn, HANDLER_STRATEGIES, Server, Strategy};

mod support;

const CHILD_ENV: &str = "C10K_HANDLER_TEST_CHILD";

fn echo(conn: &mut Conn) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

/// Recurse without end: a frame of 1 KiB per level, kept alive by `black_box`.
fn deep(n: u64) -> u64 {
    let frame = [n as u8; 1024];
    std::hint::black_box(&frame);
    if n == u64::MAX {
        return 0;
    }
    deep(n + 1).wrapping_add(u64::from(frame[(n % 1024) as usize]))
}

fn recurse(conn: &mut Conn) -> io::Result<()> {
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte)?;
    let v = deep(0);
    conn.write_all(&v.to_le_bytes())
}

/// Child mode: serve `strategy` with `handler` until SIGTERM.
fn child(spec: &str) -> i32 {
    let (strategy, handler) = spec.split_once(':').unwrap_or((spec, "echo"));
    let Ok(strategy) = strategy.parse::<Strategy>() else {
        eprintln!("bad strategy {strategy}");
        return 2;
    };
    let builder = Server::builder()
        .strategy(strategy)
        .workers(if strategy == Strategy::Prefork { 4 } else { 2 })
        .listen("127.0.0.1:0".parse().expect("address"));
    let bound = match handler {
        "recurse" => builder.handler(recurse).bind().map(|s| {
            println!("listening on {}", s.local_addr());
            s.run()
        }),
        _ => builder.handler(echo).bind().map(|s| {
            println!("listening on {}", s.local_addr());
            s.run()
        }),
    };
    match bound {
        Ok(Ok(_)) => 0,
        Ok(Err(e)) | Err(e) => {
            eprintln!("server failed: {e}");
            1
        }
    }
}

struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// Says when the child's stderr has been read to its end.
    stderr_done: Receiver<()>,
}

fn start(spec: &str) -> Served {
    let exe = std::env::current_exe().expect("test executable");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child server");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&stderr);
    let (done_tx, stderr_done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        sink.lock().unwrap_or_else(|p| p.into_inner()).push_str(&s);
        let _ = done_tx.send(());
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{spec}: no listening line, got {line:?}"))
        .parse()
        .expect("address");
    Served {
        child,
        addr,
        stderr,
        stderr_done,
    }
}

/// Wait for the child to exit, at most 20 s (then kill it and fail).
fn wait(s: &mut Served, what: &str) -> ExitStatus {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = s.child.try_wait().expect("try_wait") {
            // The whole stderr (bounded: a straggling grandchild could hold the pipe).
            let _ = s.stderr_done.recv_timeout(Duration::from_secs(5));
            return status;
        }
        if Instant::now() > until {
            let _ = s.child.kill();
            panic!("{what}: the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

fn echo_case(strategy: &str) {
    let mut served = start(strategy);
    // Two clients at once, then a half-closed transfer larger than socket buffers.
    let mut a = connect(served.addr);
    let mut b = connect(served.addr);
    for (s, msg) in [(&mut a, &b"alpha"[..]), (&mut b, &b"beta"[..])] {
        s.write_all(msg).expect("write");
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(got, msg, "{strategy}");
    }
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut w = a.try_clone().expect("clone");
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).expect("write");
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut got = Vec::new();
    a.read_to_end(&mut got).expect("read to EOF");
    writer.join().expect("writer");
    assert!(got == data, "{strategy}: echo differs");
    // b is idle: SIGTERM drains it (EOF) and the server exits 0.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&served.child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    assert_eq!(b.read(&mut [0; 8]).expect("read"), 0, "{strategy}: drained");
    let status = wait(&mut served, strategy);
    let stderr = served
        .stderr
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(status.success(), "{strategy}: {status}\n{stderr}");
}

fn overflow_case() {
    let mut served = start("green:recurse");
    let mut s = connect(served.addr);
    s.write_all(b"x").expect("write");
    // The process aborts: the connection ends without an answer.
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "no answer from a handler that overflowed");
    let status = wait(&mut served, "overflow");
    let stderr = served
        .stderr
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(
        status.signal(),
        Some(6),
        "the server aborts (SIGABRT), not SIGSEGV: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("green thread stack overflow (stack of 65536 bytes); raise --stack-size"),
        "the overflow is reported: {stderr}"
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        std::process::exit(child(&spec));
    }
    let mut cases: Vec<support::Case> = HANDLER_STRATEGIES
        .iter()
        .map(|&strategy| support::Case::strategy("echo_handler", strategy, |s| echo_case(s.name())))
        .collect();
    cases.push(support::Case::new(
        "green_stack_overflow_is_reported",
        overflow_case,
    ));
    support::run(cases);
}

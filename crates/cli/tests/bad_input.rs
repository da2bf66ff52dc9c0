//! The bad-input corpus (crates/cli/tests/corpus/{echo,http,resp}/, written by
//! corpus/generate.py) against every strategy. Each case is sent twice, whole and in
//! small pieces, then the client shuts its write side:
//!
//! - http/ and resp/ cases are malformed: the reply must be a protocol error (HTTP 4xx
//!   or 5xx, RESP `-...`) or nothing, and the server must close the connection;
//! - echo/ cases are hostile bytes the echo app must return unchanged.
//!
//! Meanwhile a well-behaved client is served on a connection of its own, the server
//! never logs a panic, and it exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

const APPS: [&str; 3] = ["echo", "http", "resp"];

fn corpus(app: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(app);
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "empty corpus in {}", dir.display());
    cases
}

/// Sends `data` (in pieces of up to `piece` bytes), shuts the write side, and reads
/// until the server closes. A reset counts as a close; the bytes read before it are
/// returned.
fn exchange(addr: SocketAddr, data: &[u8], piece: usize, what: &str) -> Vec<u8> {
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let data = data.to_vec();
    let writer = thread::spawn(move || {
        for chunk in data.chunks(piece) {
            // The server may answer and close before it has read everything.
            if w.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = c;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => break,
            Err(e) => panic!("{what}: the server did not close the connection: {e}"),
        }
    }
    writer.join().unwrap();
    got
}

/// A `200` whose body is shorter than its `Content-Length`: `POST /echo` streams the
/// body back as it arrives, so a request body cut short by the client's EOF is
/// answered by a response cut short by the server's close.
fn cut_short(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    head.starts_with("http/1.1 200 ") && declared.is_some_and(|n| got.len() - end - 4 < n)
}

fn check(app: &str, case: &str, input: &[u8], got: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    let ok = match app {
        "echo" => got == input,
        "http" => {
            got.is_empty()
                || got.starts_with(b"HTTP/1.1 4")
                || got.starts_with(b"HTTP/1.1 5")
                || cut_short(got)
        }
        _ => got.is_empty() || got.starts_with(b"-"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{app}/{case}: unexpected reply ({} bytes): {text:?}",
            got.len()
        ))
    }
}

/// A well-behaved client on its own connection until `stop`; returns how many
/// requests it had answered.
fn well_behaved(app: &'static str, addr: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let mut c = connect(addr);
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < 100_000 {
        match app {
            "echo" => {
                c.write_all(b"hello").unwrap();
                assert_eq!(read_exact_n(&mut r, 5, "well-behaved echo"), b"hello");
            }
            "http" => {
                c.write_all(&http_get("/")).unwrap();
                assert_eq!(read_http_response(&mut r).status, 200);
            }
            _ => {
                c.write_all(&resp_cmd(&[b"PING"])).unwrap();
                assert_eq!(read_resp(&mut r), Resp::Simple("PONG".into()));
            }
        }
        n += 1;
        // Pacing: a request every 5 ms or so, not a flood.
        thread::sleep(Duration::from_millis(5));
    }
    n
}

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, fork, prefork, pool, green],
    except: [kernel: "echo only: every byte is good input"],
    tests: [the_bad_input_corpus_gets_errors_or_closes],
}

fn the_bad_input_corpus_gets_errors_or_closes(strategy: &str) {
    let sizes: Vec<_> = APPS.iter().map(|a| (a, corpus(a).len())).collect();
    println!("bad-input corpus: {sizes:?}");
    let total = Arc::new(AtomicUsize::new(0));
    // The apps run side by side.
    let runs: Vec<_> = APPS
        .iter()
        .map(|&app| {
            let (strategy, total) = (strategy.to_owned(), Arc::clone(&total));
            (app, thread::spawn(move || one_app(&strategy, app, &total)))
        })
        .collect();
    let mut failures = Vec::new();
    for (app, run) in runs {
        match run.join() {
            Ok(f) => failures.extend(f),
            Err(_) => failures.push(format!(
                "{strategy} {app}: the test thread panicked (see above)"
            )),
        }
    }
    println!(
        "bad-input {strategy}: {} exchanges",
        total.load(Ordering::Relaxed)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn one_app(strategy: &str, app: &'static str, total: &AtomicUsize) -> Vec<String> {
    let mut failures = Vec::new();
    // prefork: the well-behaved client holds a worker.
    let workers = if strategy == "prefork" { "4" } else { "1" };
    let mut server = Server::start(
        strategy,
        app,
        &["--header-timeout", "3s", "--workers", workers],
    );
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || well_behaved(app, addr, stop))
    };
    for (case, input) in corpus(app) {
        for piece in [usize::MAX, 7] {
            let what = format!("{strategy} {app}/{case} (pieces of {piece})");
            let got = exchange(addr, &input, piece, &what);
            if let Err(e) = check(app, &case, &input, &got) {
                failures.push(format!("{strategy} (pieces of {piece}): {e}"));
            }
            total.fetch_add(1, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let served = good.join().unwrap_or(0);
    if served == 0 {
        failures.push(format!(
            "{strategy} {app}: the well-behaved client was not served"
        ));
    }
    server.assert_no_panic();
    server.stop();
    failures
}

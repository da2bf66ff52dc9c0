//! A Python client from PyPI against the RESP app: redis-py (the `redis` package)
//! subscribes (`pubsub.subscribe` / `psubscribe`, `get_message` and `listen` with
//! timeouts), publishes, and asks `PUBSUB NUMSUB` / `NUMPAT` / `CHANNELS`; see
//! `python/redis_py_pubsub.py` for what it asserts.
//!
//! It runs in the virtualenv `scripts/test.sh` makes (`target/py-venv`, or
//! `$C10K_PY_VENV`): the test fails, never skips, when it is missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Server, run_tool, strategy_tests};

strategy_tests! {
    strategies: [select, poll, epoll_lt, epoll_et, uring, thread, pool, green],
    except: [
        kernel: "serves --app echo only (its eBPF program cannot parse RESP or the chat protocol)",
        fork: "a process per connection: the script's publisher and subscribers never share a broker (pubsub.rs pins that with redis-cli)",
        prefork: "a process per connection at a time: as fork",
    ],
    tests: [redis_py_pubsub],
}

/// The virtualenv holding redis-py.
fn venv() -> PathBuf {
    match std::env::var_os("C10K_PY_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"),
    }
}

/// The virtualenv's interpreter, after checking it can import redis-py.
fn python() -> PathBuf {
    let python = venv().join("bin/python");
    let how = "run scripts/test.sh, which creates it \
               (python3 -m venv target/py-venv && target/py-venv/bin/pip install redis)";
    assert!(
        python.exists(),
        "no Python virtualenv at {}: {how}",
        venv().display()
    );
    let out = run_tool(
        Command::new(&python).args(["-c", "import redis; print(redis.__version__)"]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{} cannot import redis: {how}\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

fn redis_py_pubsub(strategy: &str) {
    let python = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/redis_py_pubsub.py");
    let workers = if strategy == "thread" { "1" } else { "2" };
    let mut server = Server::start(strategy, "resp", &["--workers", workers]);
    let out = run_tool(
        Command::new(&python)
            .arg(&script)
            .arg(server.addr().port().to_string()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{strategy}: redis-py failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

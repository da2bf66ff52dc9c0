//! `c10k compare --python`: the CPython field (bench/py/field.py) serves the echo and
//! work protocols correctly before it is measured, and a tiny `--python --quick` run
//! writes the "What to use in CPython" section with its rows.
//!
//! The field runs in the test virtualenv (`scripts/py-venv.sh` makes target/py-venv,
//! or $C10K_PY_VENV, with uvloop, gevent, twisted and c10k's package). A row whose
//! package is not in it is not skipped: the test asserts it is n/a with the pip
//! command that installs it (or, for c10k's blocking handlers, that this c10k build
//! lacks `c10k.serve_blocking`), and says so on stderr.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use c10k_lab::plan::pyfield::{self, FieldPeer, Server};
use c10k_lab::server::{Launch, ServerProc};
use c10k_server::Work;
use common::*;
use serde_json::Value;

/// A tiny comparison: 12 short cells, with margin for a slow, shared machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// One at a time: the comparison pins its servers to CPU 0.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The test virtualenv's interpreter.
fn venv_python() -> PathBuf {
    let venv = match std::env::var_os("C10K_PY_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"),
    };
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python virtualenv at {}: run scripts/py-venv.sh (scripts/test.sh does)",
        venv.display()
    );
    python
}

const WORKS: [&str; 4] = ["none", "cpu=200us", "wait=2ms,blocking", "wait=2ms,async"];

/// Starts `peer` as a cell of `work` would, runs the check the compare runs before
/// measuring (echoed bytes, the wait taken), checks a second connection while the
/// first is open, and that SIGTERM ends it with status 0.
fn serves_correctly(peer: FieldPeer, python: &Path, procs: usize, work: &str) {
    let w: Work = work.parse().unwrap();
    let launch = Launch::Field {
        peer,
        python,
        procs,
        conns: 10,
        work: w,
    };
    let what = format!("{} ({procs} process(es)) under {work}", peer.name());
    let mut server = ServerProc::start(&launch, None)
        .unwrap_or_else(|why| panic!("{what} did not start: {why}"));
    let first = connect(server.addr());
    pyfield::check(server.addr(), &w).unwrap_or_else(|why| panic!("{what}: {why}"));
    // Another connection while one is open and idle: served too.
    pyfield::check(server.addr(), &w).unwrap_or_else(|why| panic!("{what}, again: {why}"));
    drop(first);
    assert!(server.stop(), "{what} exits 0 on SIGTERM");
}

#[test]
fn every_field_peer_serves_echo_and_work_or_says_what_to_install() {
    raise_nofile_limit();
    let python = venv_python();
    let mut served = Vec::new();
    let mut na = Vec::new();
    for server in Server::ALL {
        match pyfield::version(server, &python) {
            Ok(version) => {
                assert!(version.starts_with(server.name()), "{version}");
                assert!(version.contains("(python 3."), "{version}");
                for work in WORKS {
                    serves_correctly(
                        FieldPeer {
                            server,
                            procs: false,
                        },
                        &python,
                        1,
                        work,
                    );
                }
                if server.has_procs_row() {
                    // One process per core, with two: each copy serves its own
                    // listener; several connections land on both.
                    for work in ["none", "wait=2ms,async"] {
                        let peer = FieldPeer {
                            server,
                            procs: true,
                        };
                        serves_correctly(peer, &python, 2, work);
                    }
                }
                served.push(server.name());
            }
            Err(why) => {
                let pip = format!("{} -m pip install", python.display());
                let blocking = matches!(server, Server::C10kPyThread | Server::C10kPyPrefork);
                assert!(
                    why.contains(&pip)
                        || (blocking
                            && why == "c10k.serve_blocking is not available in this c10k build"),
                    "{}: {why}",
                    server.name()
                );
                na.push(format!("{}: {why}", server.name()));
            }
        }
    }
    eprintln!("served correctly: {}", served.join(", "));
    for line in &na {
        eprintln!("n/a (asserted): {line}");
    }
    // The standard library's are always there.
    for stdlib in [
        "socketserver-thread",
        "socketserver-fork",
        "selectors",
        "asyncio",
    ] {
        assert!(served.contains(&stdlib), "{stdlib}: {na:?}");
    }
}

/// Runs `c10k compare` with `args` under a timeout; returns results.json and report.md.
fn compare(tag: &str, args: &[&str]) -> (Value, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile_limit();
    let out_dir = temp_path(&format!("compare-python-{tag}"));
    let tmp = out_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(c10k_bin());
    cmd.env("TMPDIR", &tmp).arg("compare").args(args);
    let out = run_tool(cmd.arg("--out").arg(&out_dir), RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c10k compare failed: {stderr}");
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let results = serde_json::from_str(&read("results.json")).unwrap();
    let report = read("report.md");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "runners left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out_dir);
    (results, report)
}

#[test]
fn a_quick_python_compare_answers_what_to_use_in_cpython() {
    let python = need_tool("python3");
    let python = python.to_str().unwrap();
    let rows = ["asyncio", "selectors", "socketserver-thread"];
    let (results, report) = compare(
        "quick",
        &[
            "--python",
            "--quick",
            "--python-bin",
            python,
            "--python-peers",
            &rows.join(","),
            "--conns",
            "10",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
        ],
    );
    assert!(
        report.contains("## What to use in CPython\n"),
        "no CPython section:\n{report}"
    );
    assert!(
        !report.contains("## What to use\n"),
        "no c10k strategy ran, so no strategy advice:\n{report}"
    );
    let section = report
        .split("## What to use in CPython\n")
        .nth(1)
        .and_then(|r| r.split("\n## ").next())
        .unwrap();
    for work in WORKS {
        assert!(
            section.contains(&format!("(`{work}`)\n")),
            "no {work} in:\n{section}"
        );
    }
    // Under cpu=200us, with 10 connections, the handler's 200 us dominates every
    // option's CPU per request (a few tens of us of overhead at most), and the
    // section says so instead of naming a winner.
    let cpu = section.split("(`cpu=200us`)").nth(1).unwrap();
    assert!(
        cpu.contains("Python's own work dominates here"),
        "{section}"
    );
    let blocking = section.split("(`wait=2ms,blocking`)").nth(1).unwrap();
    assert!(
        blocking.contains("A blocking call holds an event loop"),
        "{section}"
    );
    assert!(section.contains("**In one line (CPython):**"), "{section}");
    assert!(section.contains("asyncio: stdlib"), "versions: {section}");
    for row in rows {
        assert!(
            report.contains(&format!("| {row} (CPython) |")),
            "no row {row}:\n{report}"
        );
    }
    let cells = results["cells"].as_array().unwrap();
    assert_eq!(cells.len(), rows.len() * WORKS.len(), "{results}");
    for c in cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["errors"], 0, "{c}");
    }
    assert_eq!(results["settings"]["python"]["interpreter"], python);
    let targets = results["targets"].as_array().unwrap();
    assert!(
        targets.iter().all(|t| t["kind"] == "peer"
            && t["summary"]
                .as_str()
                .unwrap()
                .starts_with("CPython field: ")),
        "{targets:?}"
    );
}

#[test]
fn bad_python_field_arguments_say_what_to_do() {
    let python = need_tool("python3");
    let out = run_tool(
        Command::new(c10k_bin())
            .args(["compare", "--python", "--app", "http", "--python-bin"])
            .arg(&python)
            .args(["--out", temp_path("compare-python-http").to_str().unwrap()]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--python serves --app echo only"),
        "{stderr}"
    );
    let out = run_tool(
        Command::new(c10k_bin())
            .args(["compare", "--python", "--python-peers", "trio"])
            .args(["--out", temp_path("compare-python-trio").to_str().unwrap()]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("'trio' is not in the CPython field") && stderr.contains("gevent-procs"),
        "{stderr}"
    );
    let out = run_tool(
        Command::new(c10k_bin()).args(["compare", "--python-peers", "asyncio"]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "--python-peers needs --python");
}

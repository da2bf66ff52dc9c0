//! `c10k compare --peer asyncio|uvloop|rloop|c10k-py|c10k-py-uring`: the Python loops
//! serve the echo Protocol of bench/py/echo_protocol.py through the runner compiled
//! into the binary, in the interpreter of `--python-bin`; a loop whose package that
//! interpreter cannot import is n/a with the `pip install` that installs it, and every
//! Python peer is n/a for an app other than echo. python3 must be installed
//! (scripts/test.sh installs it); stock asyncio needs nothing more.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Two short cells each, with margin for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One comparison at a time: they pin their servers to the same CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// An interpreter that sees the standard library only: python3 -S (no site-packages),
/// so that uvloop, rloop and c10k are missing whatever the machine has installed.
fn bare_python(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let python3 = need_tool("python3");
    let path = dir.join("bare-python3");
    let script = format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", python3.display());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs a tiny `c10k compare` of epoll-et and `peers` (with `--python-bin` when given);
/// returns results.json and report.md, and checks that the runners' directories are
/// gone.
fn compare(tag: &str, app: &str, peers: &[&str], python: Option<&Path>) -> (Value, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile_limit();
    let out_dir = temp_path(&format!("compare-py-{tag}"));
    // The runners' directories go under the run's own temporary directory.
    let tmp = out_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(c10k_bin());
    cmd.env("TMPDIR", &tmp)
        .args(["compare", "--app", app, "--strategies", "epoll-et"])
        .args(["--conns", "10", "--work", "none", "--rounds", "1"])
        .args(["--duration", "300ms", "--warmup", "100ms", "--no-idle"]);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    if let Some(python) = python {
        cmd.arg("--python-bin").arg(python);
    }
    let out = run_tool(cmd.arg("--out").arg(&out_dir), RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c10k compare failed: {stderr}");
    eprintln!("{stderr}");
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let results = serde_json::from_str(&read("results.json")).unwrap();
    let report = read("report.md");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        tmp.display()
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    (results, report)
}

fn row<'a>(results: &'a Value, name: &str) -> (&'a Value, &'a Value) {
    let target = results["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}: {results}"));
    let cell = results["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["target"] == name && c["conns"] == 10)
        .unwrap_or_else(|| panic!("no cell {name} x 10: {results}"));
    (target, cell)
}

#[test]
fn the_asyncio_peer_serves_echo_in_the_default_python3() {
    need_tool("python3");
    let (results, report) = compare("asyncio", "echo", &["asyncio"], None);
    let (target, cell) = row(&results, "asyncio");
    assert_eq!(target["kind"], "peer");
    let summary = target["summary"].as_str().unwrap();
    assert!(
        summary.contains("asyncio: stdlib (python 3.")
            && summary.contains("--loop asyncio serving echo_protocol.Echo"),
        "the version and what runs: {summary}"
    );
    assert_eq!(cell["status"], "ok", "{cell}");
    let m = &cell["rounds"][0]["metrics"];
    assert_eq!(m["errors"], 0, "{cell}");
    assert_eq!(m["connected"], 10, "{cell}");
    assert!(m["throughput_rps"].as_f64().unwrap() > 0.0, "{cell}");
    assert!(m["p99_us"].as_f64().unwrap() > 0.0, "{cell}");
    assert!(m["server_cpu_s"].as_f64().unwrap() > 0.0, "{cell}");
    assert!(
        m["clean_exit"].as_bool().unwrap(),
        "exits 0 on SIGTERM: {cell}"
    );
    assert!(
        report.contains("| asyncio (peer) |"),
        "report lacks the row:\n{report}"
    );
    let (_, strategy) = row(&results, "epoll-et");
    assert_eq!(strategy["status"], "ok", "{strategy}");
}

#[test]
fn a_missing_python_package_is_na_with_its_pip_install() {
    let dir = temp_path("bare-python");
    std::fs::create_dir_all(&dir).unwrap();
    let python = bare_python(&dir);
    let peers = ["uvloop", "rloop", "c10k-py", "c10k-py-uring"];
    let (results, report) = compare("missing", "echo", &peers, Some(&python));
    for (peer, install) in [
        ("uvloop", "-m pip install uvloop"),
        ("rloop", "-m pip install rloop"),
        ("c10k-py", "-m pip install ./crates/py"),
        ("c10k-py-uring", "-m pip install ./crates/py"),
    ] {
        let (target, cell) = row(&results, peer);
        assert_eq!(cell["status"], "n/a", "{cell}");
        let reason = cell["reason"].as_str().unwrap();
        let want = format!(
            "is not importable by {}: {}",
            python.display(),
            python.display()
        );
        assert!(
            reason.contains(&want) && reason.ends_with(install),
            "{peer}: {reason}"
        );
        assert!(report.contains(reason), "the report shows why:\n{report}");
        let summary = target["summary"].as_str().unwrap();
        assert!(summary.contains("(not installed)"), "{summary}");
    }
    let (_, strategy) = row(&results, "epoll-et");
    assert_eq!(
        strategy["status"], "ok",
        "the strategy still runs: {strategy}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_python_peer_is_na_for_an_app_other_than_echo() {
    need_tool("python3");
    let (results, report) = compare("http", "http", &["asyncio"], None);
    let (_, cell) = row(&results, "asyncio");
    assert_eq!(cell["status"], "n/a", "{cell}");
    let reason = cell["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "asyncio serves --app echo only (the echo Protocol of bench/py/echo_protocol.py)"
    );
    assert!(report.contains(reason), "the report shows why:\n{report}");
}

/// The venv scripts/test.sh makes, with c10k's package installed (`pip install
/// ./crates/py`); a loud failure when it is not there.
fn test_venv_python() -> PathBuf {
    let venv = std::env::var_os("C10K_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import c10k"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import c10k: run scripts/py-venv.sh (scripts/test.sh does), which \
         installs ./crates/py into it",
        python.display()
    );
    python
}

#[test]
fn c10ks_own_loop_is_measured_as_a_peer_on_epoll_et_and_uring() {
    let python = test_venv_python();
    let (results, report) = compare(
        "c10k-py",
        "echo",
        &["c10k-py", "c10k-py-uring"],
        Some(&python),
    );
    for peer in ["c10k-py", "c10k-py-uring"] {
        let (target, cell) = row(&results, peer);
        assert_eq!(cell["status"], "ok", "{peer}: {cell}");
        let m = &cell["rounds"][0]["metrics"];
        assert_eq!(m["errors"], 0, "{peer}: {cell}");
        assert_eq!(m["connected"], 10, "{peer}: {cell}");
        assert!(
            m["throughput_rps"].as_f64().unwrap() > 0.0,
            "{peer}: {cell}"
        );
        assert!(m["clean_exit"].as_bool().unwrap(), "{peer}: {cell}");
        let summary = target["summary"].as_str().unwrap();
        assert!(summary.contains("c10k"), "{peer}: {summary}");
        assert!(
            report.contains(&format!("| {peer} (peer) |")),
            "report lacks {peer}:\n{report}"
        );
    }
}

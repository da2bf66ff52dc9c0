//! `c10k compare --peer nginx` and `--peer redis`: the presets run, configured by c10k,
//! beside a strategy on the same axes, and are n/a with the reason for an app they do
//! not serve. nginx and redis-server must be installed: scripts/test.sh installs them.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use c10k_lab::plan::peers::Preset;
use common::*;
use serde_json::Value;

/// Two short cells each, with margin for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One comparison at a time: they pin their servers to the same CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The preset's binary, or a loud failure that says how to get it.
fn need_preset(preset: Preset) {
    if let Err(why) = preset.find() {
        panic!("{why}: run scripts/test.sh, which installs it");
    }
}

/// Runs a tiny `c10k compare` of epoll-et and the preset; returns results.json and
/// report.md, and checks that the preset's directories are gone.
fn compare(app: &str, preset: Preset) -> (Value, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile_limit();
    let out_dir = temp_path(&format!("compare-{}-{app}", preset.name()));
    // The presets' directories go under the run's own temporary directory.
    let tmp = out_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = run_tool(
        Command::new(c10k_bin())
            .env("TMPDIR", &tmp)
            .args(["compare", "--app", app, "--strategies", "epoll-et"])
            .args(["--peer", preset.name(), "--conns", "10"])
            .args(["--work", "none", "--rounds", "1"])
            .args([
                "--duration",
                "300ms",
                "--warmup",
                "100ms",
                "--no-idle",
                "--out",
            ])
            .arg(&out_dir),
        RUN_TIMEOUT,
    );
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

/// The preset ran: measured figures, no error, its version in the summary.
fn assert_measured(preset: Preset, app: &str, version_mark: &str) {
    need_preset(preset);
    let (results, report) = compare(app, preset);
    let (target, cell) = row(&results, preset.name());
    assert_eq!(target["kind"], "peer");
    let summary = target["summary"].as_str().unwrap();
    assert!(
        summary.contains(version_mark) && summary.contains("config written by c10k"),
        "{summary}"
    );
    assert_eq!(cell["status"], "ok", "{cell}");
    let m = &cell["rounds"][0]["metrics"];
    assert_eq!(m["errors"], 0, "{cell}");
    assert_eq!(m["connected"], 10, "{cell}");
    assert!(m["throughput_rps"].as_f64().unwrap() > 0.0, "{cell}");
    assert!(m["p99_us"].as_f64().unwrap() > 0.0, "{cell}");
    assert!(
        m["server_memory"]["pss_kib"].as_u64().unwrap() > 0,
        "{cell}"
    );
    assert!(
        m["clean_exit"].as_bool().unwrap(),
        "exits on SIGTERM: {cell}"
    );
    let name = format!("| {} (peer) |", preset.name());
    assert!(report.contains(&name), "report lacks {name}:\n{report}");
}

#[test]
fn the_nginx_preset_serves_the_http_app() {
    assert_measured(Preset::Nginx, "http", "nginx/");
}

#[test]
fn the_redis_preset_serves_the_resp_app() {
    assert_measured(Preset::Redis, "resp", "redis ");
}

#[test]
fn a_preset_is_na_for_an_app_it_does_not_serve() {
    need_preset(Preset::Nginx);
    let (results, report) = compare("echo", Preset::Nginx);
    let (_, cell) = row(&results, "nginx");
    assert_eq!(cell["status"], "n/a", "{cell}");
    let reason = cell["reason"].as_str().unwrap();
    assert_eq!(reason, "nginx serves --app http only");
    assert!(report.contains(reason), "the report shows why:\n{report}");
    let (_, strategy) = row(&results, "epoll-et");
    assert_eq!(
        strategy["status"], "ok",
        "the strategy still runs: {strategy}"
    );
}

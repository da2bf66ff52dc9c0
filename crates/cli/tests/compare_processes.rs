//! `c10k compare` at a level one process's open files limit cannot hold: the strategy
//! that runs in threads serves it with `--processes`, the load runs as several
//! processes, every connection is served, the report says so, and a server that
//! cannot split (a peer) is n/a there with the reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn a_level_beyond_one_process_runs_as_several() {
    let out_dir = temp_path("compare-processes");
    // 2,000 descriptors per process: 3,000 connections need two.
    let out = run_tool(
        Command::new("prlimit")
            .arg("--nofile=2000:2000")
            .arg("--")
            .arg(c10k_bin())
            .args(["compare", "--strategies", "epoll-et", "--conns", "3000"])
            .args(["--peer", "other=sleep 60 {port}"])
            .args(["--work", "none", "--rounds", "1", "--duration", "1s"])
            .args(["--warmup", "300ms", "--out"])
            .arg(&out_dir),
        Duration::from_secs(180),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let cells = json["cells"].as_array().unwrap();
    let cell = |name: &str| cells.iter().find(|c| c["target"] == name).unwrap();
    let et = cell("epoll-et");
    assert_eq!(et["status"], "ok", "{et}");
    assert_eq!(et["processes"], 2, "{et}");
    let round = &et["rounds"][0]["metrics"];
    assert_eq!(round["connected"], 3000, "{round}");
    assert_eq!(round["errors"], 0, "{round}");
    assert!(round["load"]["processes"].as_u64().unwrap() >= 2, "{round}");
    let peer = cell("other");
    assert_eq!(peer["status"], "n/a");
    assert!(
        peer["reason"]
            .as_str()
            .unwrap()
            .contains("several processes"),
        "{peer}"
    );
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("`--processes 2` at 3,000"), "{md}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

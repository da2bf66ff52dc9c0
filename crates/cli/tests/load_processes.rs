//! `c10k load --processes N`: the load spread over child processes against `c10k serve
//! --processes 2`, merged into one report (requests and connections summed, errors 0,
//! the JSON schema of one process plus `processes`), an `--idle` run held by the
//! children until the parent stops them, and the bad values (exit 2, one line).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use c10k_load::{AppKind, Launcher, LoadConfig, Phase, Progress, run_processes_with};
use common::*;

/// Every run here is bounded by its own --duration (a few seconds); this is the margin.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn load_json(server: &Server, args: &[&str]) -> (serde_json::Value, String) {
    let json = temp_path("load-processes.json");
    let addr = server.addr().to_string();
    let out = run_tool(
        Command::new(c10k_bin())
            .args(["load", "--connect", &addr])
            .args(args)
            .arg("--json")
            .arg(&json),
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c10k load {args:?}: {stderr}");
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    (
        serde_json::from_str(&text).unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn two_load_processes_merge_into_one_report() {
    let server = Server::start("epoll-et", "echo", &["--processes", "2"]);
    let common = [
        "--conns",
        "400",
        "--duration",
        "1500ms",
        "--warmup",
        "300ms",
    ];
    let (one, _) = load_json(&server, &common);
    let (two, text) = load_json(&server, &[&common[..], &["--processes", "2"]].concat());
    assert!(text.contains("in 2 processes"), "{text}");
    assert_eq!(two["processes"], 2);
    assert_eq!(two["errors"]["total"], 0, "{}", two["errors"]);
    assert_eq!(two["connected"], 400);
    assert_eq!(two["connects"], 400);
    assert_eq!(two["threads"], 2);
    assert!(two["requests"].as_u64().unwrap() > 0);
    let (p50, p99) = (
        two["p50_us"].as_f64().unwrap(),
        two["p99_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{p50} {p99}");
    // Disjoint sources, one per child.
    assert_eq!(
        two["source_addresses"],
        serde_json::json!(["127.0.0.2", "127.0.0.3"])
    );
    // The same schema as one process, plus `processes`.
    let mut want = keys(&one);
    want.push("processes".into());
    want.sort();
    assert_eq!(keys(&two), want);
    assert!(one.get("processes").is_none());
    assert!(two["window_s"].as_f64().unwrap() > 1.0);
}

#[test]
fn an_open_loop_rate_is_shared_and_requests_are_the_sum() {
    let server = Server::start("epoll-et", "echo", &["--processes", "2"]);
    let (v, _) = load_json(
        &server,
        &[
            "--conns",
            "300",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--rate",
            "900",
            "--processes",
            "3",
        ],
    );
    assert_eq!(v["errors"]["total"], 0, "{}", v["errors"]);
    assert_eq!(v["connected"], 300);
    assert_eq!(v["processes"], 3);
    assert_eq!(v["mode"], "open");
    let scheduled = v["scheduled"].as_u64().unwrap();
    let requests = v["requests"].as_u64().unwrap();
    assert!(
        (1_700..=1_803).contains(&scheduled),
        "{scheduled} due at 900/s for 2 s, in three shares"
    );
    assert!(
        requests + 30 >= scheduled && requests <= scheduled,
        "{requests} of {scheduled}"
    );
    assert_eq!(v["source_addresses"].as_array().unwrap().len(), 3);
}

#[test]
fn idle_children_hold_their_connections_until_stopped() {
    let server = Server::start(
        "epoll-et",
        "echo",
        &["--processes", "2", "--metrics", "127.0.0.1:0"],
    );
    let m = metrics_addr(&server);
    let mut config = LoadConfig::new(server.addr(), AppKind::Echo, 300, Duration::from_secs(60));
    config.idle = true;
    let progress = Arc::new(Progress::new());
    let launcher = Launcher::c10k(c10k_bin());
    let run = {
        let progress = Arc::clone(&progress);
        std::thread::spawn(move || run_processes_with(&config, 2, &launcher, progress))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.phase() < Phase::Warmup && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(progress.phase() >= Phase::Warmup, "never connected");
    // Held: the server sees them all for a while, and the progress is the children's sum.
    wait_metric(m, "c10k_connections_open", "", 300);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&scrape_metrics(m), "c10k_connections_open", ""), 300);
    assert_eq!(progress.open.load(Ordering::Relaxed), 300);
    let stopped = Instant::now();
    progress.stop();
    let report = run.join().unwrap().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        stopped.elapsed()
    );
    assert_eq!(report.connected, 300);
    assert_eq!(report.mode, "idle");
    assert_eq!(report.processes, Some(2));
    assert_eq!(report.errors.total, 0, "{:?}", report.errors);
    assert_eq!(progress.phase(), Phase::Done);
}

#[test]
fn an_idle_run_from_the_command_line_lasts_its_duration() {
    let server = Server::start("epoll-et", "echo", &["--processes", "2"]);
    let start = Instant::now();
    let (v, _) = load_json(
        &server,
        &[
            "--conns",
            "200",
            "--duration",
            "1500ms",
            "--idle",
            "--processes",
            "2",
        ],
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(v["mode"], "idle");
    assert_eq!(v["connected"], 200);
    assert_eq!(v["requests"], 0);
    assert_eq!(v["errors"]["total"], 0);
}

#[test]
fn bad_process_counts_exit_2_with_one_line() {
    let too_many =
        (std::thread::available_parallelism().map_or(1, usize::from) * 64 + 1).to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--conns", "10", "--processes", "0"],
            "--processes must be 1..=",
        ),
        (
            &["--conns", "10", "--processes", "11"],
            "more than --conns 10",
        ),
        (
            &["--conns", "100000", "--processes", &too_many],
            "CPUs x 64",
        ),
        (
            &["--conns", "10", "--processes", "2", "--threads", "6"],
            "--threads 6",
        ),
        (&["--conns", "10", "--processes", "x"], "--processes"),
    ];
    for (args, want) in cases {
        let out = run_tool(
            Command::new(c10k_bin())
                .args(["load", "--connect", "127.0.0.1:9"])
                .args(args),
            RUN_TIMEOUT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let out = run_tool(
        Command::new(c10k_bin()).args([
            "load",
            "--connect",
            "127.0.0.1:9",
            "--app",
            "pubsub",
            "--rate",
            "10",
            "--processes",
            "2",
        ]),
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pubsub"), "{stderr}");
    // The child flag is not for a person: it says so and exits 2.
    let out = run_tool_with_input(
        Command::new(c10k_bin()).args(["load", "--processes-child"]),
        Some(b"hello\n"),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not for a person"));
}

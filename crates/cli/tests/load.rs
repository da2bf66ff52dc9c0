//! `c10k load` against `c10k serve`, for each app, closed and open loop: zero errors,
//! sane counts, the JSON report's keys; and its argument errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Every run here is bounded by its own --duration (about 2 s); this is the margin.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn load(server: &Server, args: &[&str]) -> serde_json::Value {
    let json = temp_path("load.json");
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "c10k load {args:?}: {stderr}");
    assert!(stdout.contains("throughput"), "summary on stdout: {stdout}");
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).unwrap()
}

fn check(v: &serde_json::Value, conns: u64, what: &str) {
    assert_eq!(v["errors"]["total"], 0, "{what}: {}", v["errors"]);
    assert_eq!(v["connected"], conns, "{what}");
    assert!(v["requests"].as_u64().unwrap() > 0, "{what}: no requests");
    assert!(v["throughput_rps"].as_f64().unwrap() > 0.0, "{what}");
    let p50 = v["p50_us"].as_f64().unwrap();
    let p99 = v["p99_us"].as_f64().unwrap();
    let max = v["max_us"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= max,
        "{what}: {p50} {p99} {max}"
    );
    for key in [
        "p90_us",
        "p999_us",
        "cpu_user_s",
        "cpu_sys_s",
        "load_bound",
        "connect_p99_us",
    ] {
        assert!(v.get(key).is_some(), "{what}: no {key}");
    }
}

fn closed_and_open(app: &str, extra: &[&str]) {
    let mut server = Server::start("epoll-et", app, &[]);
    let mut args = vec!["--app", app, "--conns", "20", "--duration", "1s"];
    args.extend_from_slice(&["--warmup", "200ms", "--pipeline", "2"]);
    args.extend_from_slice(extra);
    let v = load(&server, &args);
    check(&v, 20, &format!("{app} closed loop"));
    assert_eq!(v["mode"], "closed");

    let mut args = vec!["--app", app, "--conns", "4", "--duration", "1s"];
    args.extend_from_slice(&["--warmup", "0s", "--rate", "400", "--threads", "2"]);
    args.extend_from_slice(extra);
    let v = load(&server, &args);
    check(&v, 4, &format!("{app} open loop"));
    assert_eq!(v["mode"], "open");
    let scheduled = v["scheduled"].as_u64().unwrap();
    let requests = v["requests"].as_u64().unwrap();
    assert!(
        (380..=401).contains(&scheduled),
        "{app}: {scheduled} due at 400/s for 1 s"
    );
    assert!(
        requests <= scheduled && requests * 10 >= scheduled * 9,
        "{requests} of {scheduled}"
    );
    server.stop();
    server.assert_no_panic();
}

#[test]
fn echo() {
    closed_and_open("echo", &["--size", "100"]);
}

#[test]
fn http_get_and_post() {
    closed_and_open("http", &[]);
    closed_and_open("http", &["--size", "300"]);
}

#[test]
fn resp_ping_and_set_get() {
    closed_and_open("resp", &[]);
    closed_and_open("resp", &["--keys", "100", "--size", "32"]);
}

#[test]
fn bad_arguments_fail_with_one_line() {
    for (args, mention) in [
        (&["load", "--connect", "nowhere"][..], "nowhere"),
        (
            &["load", "--connect", "127.0.0.1:1", "--app", "smtp"][..],
            "smtp",
        ),
        (
            &["load", "--connect", "127.0.0.1:1", "--conns", "0"][..],
            "--conns",
        ),
        (
            &["load", "--connect", "127.0.0.1:1", "--rate=-5"][..],
            "--rate",
        ),
    ] {
        let out = run_tool(Command::new(c10k_bin()).args(args), RUN_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(mention), "{args:?}: {stderr}");
    }
}

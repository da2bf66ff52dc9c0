//! `c10k compare --quick` on two strategies, a peer and the n/a paths: report.md,
//! results.json and SVG charts whose numbers agree with each other.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use c10k_server::{Availability, Strategy};
use common::*;
use serde_json::Value;

/// Six cells of about 2 s each, with margin for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The `<desc>` data of a chart: `name -> [(conns, value)]`.
fn chart_data(svg: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let start = svg.find("<desc>").expect("a <desc> with the data") + 6;
    let end = svg.find("</desc>").unwrap();
    svg[start..end]
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap().to_string();
            let points = words
                .map(|w| {
                    let (x, y) = w.split_once('=').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            (name, points)
        })
        .collect()
}

#[test]
fn quick_compare_writes_a_consistent_report() {
    raise_nofile_limit();
    let out_dir = temp_path("compare");
    let unavailable = Strategy::ALL
        .iter()
        .find(|i| i.strategy.availability() != Availability::Available)
        .map(|i| i.name);
    let mut strategies = "epoll-lt,epoll-et".to_string();
    match unavailable {
        Some(name) => strategies.push_str(&format!(",{name}")),
        None => eprintln!(
            "every strategy is available here: the n/a row of an unavailable strategy is \
             covered by c10k-lab's plan tests only"
        ),
    }
    let bin = c10k_bin();
    let peer = format!(
        "peer-echo={} serve --strategy epoll-et --app echo --listen 127.0.0.1:{{port}}",
        bin.display()
    );
    let out = run_tool(
        Command::new(&bin)
            .args(["compare", "--quick", "--strategies", &strategies])
            .args(["--conns", "10,50", "--duration", "1s", "--warmup", "200ms"])
            .args(["--peer", &peer, "--peer", "broken=false", "--out"])
            .arg(&out_dir),
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c10k compare failed: {stderr}");
    eprintln!("{stderr}");

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let cells = results["cells"].as_array().unwrap();
    let cell = |t: &str, c: u64| {
        cells
            .iter()
            .find(|x| x["target"] == t && x["conns"] == c)
            .unwrap_or_else(|| panic!("no cell {t} x {c}"))
    };
    let mut rows = vec!["epoll-lt", "epoll-et"];
    rows.extend(unavailable);
    rows.extend(["peer-echo", "broken"]);
    let names: Vec<&str> = results["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, rows);
    assert_eq!(cells.len(), rows.len() * 2);

    for t in ["epoll-lt", "epoll-et", "peer-echo"] {
        for c in [10, 50] {
            let x = cell(t, c);
            assert_eq!(x["status"], "ok", "{t} x {c}: {x}");
            let m = &x["metrics"];
            assert_eq!(m["errors"], 0, "{t} x {c}");
            assert_eq!(m["connected"], c, "{t} x {c}");
            let tput = m["throughput_rps"].as_f64().unwrap();
            assert!(tput > 0.0);
            assert!(
                m["server_cpu_per_request_us"].as_f64().unwrap() > 0.0,
                "{t} x {c}"
            );
            assert!(m["server_memory"]["pss_kib"].as_u64().unwrap() > 0);
            assert_eq!(m["idle"]["open"], c, "{t} x {c}: idle phase");
            // The report's throughput table shows the same figure.
            let shown = format!("| {} ", group(tput));
            assert!(
                report.contains(&shown),
                "report lacks {shown} for {t} x {c}"
            );
        }
    }
    if let Some(name) = unavailable {
        let x = cell(name, 10);
        assert_eq!(x["status"], "n/a");
        let reason = x["reason"].as_str().unwrap();
        assert!(
            reason.contains("not built") || reason.contains("unavailable"),
            "{reason}"
        );
        assert!(report.contains(reason), "report shows the reason: {reason}");
    }
    let broken = cell("broken", 10);
    assert_eq!(broken["status"], "n/a");
    assert!(
        broken["reason"].as_str().unwrap().contains("did not start"),
        "{broken}"
    );

    assert!(report.contains("## What to use"), "{report}");
    assert!(report.contains("**Use `"), "{report}");
    assert!(report.contains("Where each one loses"), "{report}");
    assert!(report.contains(results["machine"]["kernel"].as_str().unwrap()));
    assert!(report.contains("Pinning:"));

    // Each chart's data is results.json's.
    for (file, key) in [
        ("throughput.svg", "throughput_rps"),
        ("p99_latency.svg", "p99_us"),
        ("cpu_per_request.svg", "server_cpu_per_request_us"),
    ] {
        let svg = std::fs::read_to_string(out_dir.join(file)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{file}"
        );
        let data = chart_data(&svg);
        let drawn: Vec<&str> = data.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(drawn, ["epoll-lt", "epoll-et", "peer-echo"], "{file}");
        for (name, points) in &data {
            assert!(
                svg.contains(&format!(">\n{name}\n<")) || svg.contains(name),
                "{file}"
            );
            for &(c, v) in points {
                let want = cell(name, c as u64)["metrics"][key].as_f64().unwrap();
                assert!(
                    (v - want).abs() <= want.abs() * 1e-9,
                    "{file} {name} {c}: {v} != {want}"
                );
            }
        }
    }
    assert!(out_dir.join("memory_per_conn.svg").exists());
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn compare_argument_errors_are_one_line() {
    for (args, mention) in [
        (&["compare", "--strategies", "nope"][..], "nope"),
        (
            &["compare", "--conns", "0", "--strategies", "epoll-et"][..],
            "--conns",
        ),
        (&["compare", "--peer", "nocommand"][..], "NAME=COMMAND"),
        (&["compare", "--server-cpus", "x"][..], "CPU list"),
    ] {
        let out = run_tool(Command::new(c10k_bin()).args(args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(mention), "{args:?}: {stderr}");
    }
}

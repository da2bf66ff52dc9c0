//! `c10k compare` on two strategies, a peer and the n/a paths, under two workloads
//! (none and a 2 ms blocking call) in two rounds: report.md, results.json and SVG
//! charts whose numbers agree with each other, and servers that did the work.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use c10k_server::{Availability, Strategy};
use common::*;
use serde_json::Value;

/// Twenty cells of about a second each, with margin for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

const BLOCKING: &str = "wait=2ms,blocking";

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

/// The `<desc>` data of a chart: `(work, name) -> [(conns, value)]`.
type ChartData = Vec<((String, String), Vec<(f64, f64)>)>;

fn chart_data(svg: &str) -> ChartData {
    let start = svg.find("<desc>").expect("a <desc> with the data") + 6;
    let end = svg.find("</desc>").unwrap();
    svg[start..end]
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let work = words.next().unwrap().to_string();
            let name = words.next().unwrap().to_string();
            let points = words
                .map(|w| {
                    let (x, y) = w.split_once('=').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            ((work, name), points)
        })
        .collect()
}

#[test]
fn compare_with_workloads_and_rounds_writes_a_consistent_report() {
    raise_nofile_limit();
    let out_dir = temp_path("compare");
    let unavailable = Strategy::ALL
        .iter()
        .find(|i| i.strategy.availability() != Availability::Available)
        .map(|i| i.name);
    let mut strategies = "epoll-et,thread".to_string();
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
            .args(["compare", "--strategies", &strategies])
            .args(["--work", "none", "--work", BLOCKING, "--rounds", "2"])
            .args([
                "--conns",
                "10,50",
                "--duration",
                "500ms",
                "--warmup",
                "200ms",
            ])
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
    let settings = &results["settings"];
    assert_eq!(settings["rounds"], 2);
    assert_eq!(settings["workers"], 1, "one per server CPU");
    let works: Vec<&str> = settings["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["work"].as_str().unwrap())
        .collect();
    assert_eq!(works, ["none", BLOCKING]);
    let cells = results["cells"].as_array().unwrap();
    let cell = |work: &str, t: &str, c: u64| {
        cells
            .iter()
            .find(|x| x["work"] == work && x["target"] == t && x["conns"] == c)
            .unwrap_or_else(|| panic!("no cell {t} x {c} under {work}"))
    };
    let mut rows = vec!["epoll-et", "thread"];
    rows.extend(unavailable);
    rows.extend(["peer-echo", "broken"]);
    let names: Vec<&str> = results["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, rows);
    assert_eq!(cells.len(), rows.len() * 2 * 2);

    for (work, t) in [
        ("none", "epoll-et"),
        ("none", "thread"),
        ("none", "peer-echo"),
        (BLOCKING, "epoll-et"),
        (BLOCKING, "thread"),
    ] {
        for c in [10, 50] {
            let x = cell(work, t, c);
            assert_eq!(x["status"], "ok", "{t} x {c} under {work}: {x}");
            assert_eq!(x["errors"], 0, "{t} x {c} under {work}");
            let rounds = x["rounds"].as_array().unwrap();
            assert_eq!(rounds.len(), 2, "{t} x {c} under {work}: every round kept");
            // A round can fail on a machine busy enough (it says why); the cell
            // stands on the rounds that ran.
            let mut tputs = Vec::new();
            for (i, round) in rounds.iter().enumerate() {
                assert_eq!(round["round"], i + 1);
                if round["status"] != "ok" {
                    eprintln!("{t} x {c} under {work}, round {}: {round}", i + 1);
                    assert!(round["reason"].is_string(), "{round}");
                    continue;
                }
                let m = &round["metrics"];
                assert_eq!(m["errors"], 0, "{t} x {c} under {work}");
                assert_eq!(m["connected"], c, "{t} x {c} under {work}");
                tputs.push(m["throughput_rps"].as_f64().unwrap());
                assert!(m["server_memory"]["pss_kib"].as_u64().unwrap() > 0);
                // The whole machine's CPU: read inside the server CPU's window, over
                // the same replies.
                let mc = &m["machine_cpu"];
                assert!(mc["busy_s"].as_f64().unwrap() > 0.0, "{mc}");
                assert!(mc["cpus"].as_u64().unwrap() >= 1, "{mc}");
                assert_eq!(mc["requests"], m["server_cpu_requests"], "{m}");
                let wall = mc["wall_s"].as_f64().unwrap();
                assert!(
                    wall > 0.0 && wall <= m["server_cpu_window_s"].as_f64().unwrap(),
                    "{m}"
                );
                assert!(
                    mc["per_request_us"].is_number() || mc["note"].is_string(),
                    "{mc}"
                );
                // Idle memory: round 1 of none only.
                if work == "none" && i == 0 {
                    assert_eq!(m["idle"]["open"], c, "{t} x {c}: idle phase");
                } else {
                    assert!(m["idle"].is_null(), "{t} x {c} under {work} round {i}");
                }
                if work == BLOCKING {
                    // The server did the work: every reply waited 2 ms in the server.
                    assert!(m["p50_us"].as_f64().unwrap() >= 1_990.0, "{t} x {c}: {m}");
                }
            }
            assert!(!tputs.is_empty(), "{t} x {c} under {work}: {x}");
            let lo = tputs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = tputs.iter().copied().fold(0.0, f64::max);
            let median = x["median"]["throughput_rps"].as_f64().unwrap();
            assert!((median - (lo + hi) / 2.0).abs() < 1e-6 * hi, "{x}");
            assert_eq!(x["spread"]["throughput_rps"][0].as_f64().unwrap(), lo);
            assert_eq!(x["spread"]["throughput_rps"][1].as_f64().unwrap(), hi);
            // The report's throughput table shows the median and the range.
            let shown = if group(lo) == group(hi) {
                format!("| {} ", group(median))
            } else {
                format!("| {} ({}-{})", group(median), group(lo), group(hi))
            };
            assert!(
                report.contains(&shown),
                "report lacks {shown} for {t} x {c} under {work}"
            );
        }
    }
    // One event-loop worker that sleeps 2 ms per request serves at most 500 a second.
    for c in [10, 50] {
        let m = &cell(BLOCKING, "epoll-et", c)["median"];
        let tput = m["throughput_rps"].as_f64().unwrap();
        assert!(
            tput < 700.0,
            "epoll-et x {c} with a 2 ms blocking call: {tput}"
        );
    }
    assert_eq!(cell(BLOCKING, "epoll-et", 10)["workers"], 1);

    if let Some(name) = unavailable {
        let x = cell("none", name, 10);
        assert_eq!(x["status"], "n/a");
        let reason = x["reason"].as_str().unwrap();
        assert!(
            reason.contains("not built") || reason.contains("unavailable"),
            "{reason}"
        );
        assert!(report.contains(reason), "report shows the reason: {reason}");
    }
    let broken = cell("none", "broken", 10);
    assert_eq!(broken["status"], "n/a");
    assert!(
        broken["reason"].as_str().unwrap().contains("did not start"),
        "{broken}"
    );
    assert_eq!(
        broken["rounds"].as_array().unwrap().len(),
        2,
        "tried each round"
    );
    // A peer does no per-request work: not tried under the blocking workload.
    let idle_peer = cell(BLOCKING, "peer-echo", 10);
    assert_eq!(idle_peer["status"], "n/a");
    assert!(
        idle_peer["reason"]
            .as_str()
            .unwrap()
            .contains("does no per-request work"),
        "{idle_peer}"
    );
    assert_eq!(idle_peer["rounds"], serde_json::json!([]));

    assert!(report.contains("## What to use"), "{report}");
    assert!(
        report.contains("### With no work per request (`none`)"),
        "{report}"
    );
    assert!(
        report.contains("### With a 2 ms blocking call per request (`wait=2ms,blocking`)"),
        "{report}"
    );
    assert!(report.contains("**Use `"), "{report}");
    assert!(report.contains("**In one line:** If your handler does little per request, use"));
    assert!(
        report.contains("An event loop serves at most 500 requests/s per worker here"),
        "{report}"
    );
    assert!(report.contains("Where each one loses"), "{report}");
    assert!(
        report.contains("## Whole-machine CPU per request"),
        "{report}"
    );
    assert!(report.contains("- Rounds: 2, interleaved"), "{report}");
    assert!(report.contains(results["machine"]["kernel"].as_str().unwrap()));
    assert!(report.contains("Pinning:"));

    // Each chart's data is results.json's medians.
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
        // Drawn: every row with a median of the figure at some level (a CPU reading
        // below resolution has none), and nothing else.
        let mut drawn: Vec<(&str, &str)> = data
            .iter()
            .map(|((w, n), _)| (w.as_str(), n.as_str()))
            .collect();
        let mut expected: Vec<(&str, &str)> = cells
            .iter()
            .filter(|c| c["median"][key].is_number())
            .map(|c| (c["work"].as_str().unwrap(), c["target"].as_str().unwrap()))
            .collect();
        drawn.sort_unstable();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(drawn, expected, "{file}");
        if key != "server_cpu_per_request_us" {
            for row in [
                ("none", "epoll-et"),
                ("none", "thread"),
                ("none", "peer-echo"),
                (BLOCKING, "thread"),
            ] {
                assert!(drawn.contains(&row), "{file}: {drawn:?}");
            }
        }
        assert!(
            !drawn.contains(&(BLOCKING, "peer-echo")),
            "{file}: {drawn:?}"
        );
        for ((work, name), points) in &data {
            assert!(
                svg.contains(&format!(">\n{name}\n<")),
                "{file}: legend {name}"
            );
            for &(c, v) in points {
                let want = cell(work, name, c as u64)["median"][key].as_f64().unwrap();
                assert!(
                    (v - want).abs() <= want.abs() * 1e-9,
                    "{file} {work} {name} {c}: {v} != {want}"
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
        (&["compare", "--work", "bogus"][..], "--work"),
        (&["compare", "--work", "cpu=2s"][..], "cpu=2s"),
        (&["compare", "--work", "wait=-1ms,async"][..], "--work"),
        (&["compare", "--rounds", "0"][..], "--rounds"),
        (&["compare", "--rounds", "x"][..], "--rounds"),
        (&["compare", "--workers", "0"][..], "--workers"),
    ] {
        let out = run_tool(Command::new(c10k_bin()).args(args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(mention), "{args:?}: {stderr}");
    }
}

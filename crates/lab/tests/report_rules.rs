//! The report's rules, on synthetic results: a peer is never the advice, a figure below
//! its reading's resolution (memory per idle connection, a CPU reading of a few clock
//! ticks) is never printed as a number, and losses are stated against a stable
//! reference rather than the best single cell.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use c10k_lab::machine::Machine;
use c10k_lab::proctree::TreeMemory;
use c10k_lab::report::{self, Reference};
use c10k_lab::resolution::{CpuWindow, cpu_resolution_s};
use c10k_lab::results::{
    Cell, IdleMemory, Metrics, ResolutionSettings, Results, Settings, TargetInfo,
};
use c10k_load::{AppKind, LoadConfig, LoadReport, Progress};

const PAGE: i64 = 4096;
const NOISE: u64 = 64 * 4096;
const TICK: f64 = 0.01;

/// A real load report to hang the synthetic figures on (the report reads none of it):
/// 50 ms of echo against a thread that echoes.
fn load_report() -> LoadReport {
    static REPORT: OnceLock<LoadReport> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut stream, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
            });
            let config = LoadConfig::new(addr, AppKind::Echo, 1, Duration::from_millis(50));
            c10k_load::run(&config, Arc::new(Progress::new())).unwrap()
        })
        .clone()
}

/// One synthetic cell's readings.
#[derive(Clone, Copy)]
struct Spec {
    /// Requests per second.
    tput: f64,
    /// Server CPU per request, microseconds (the window's CPU follows from it).
    cpu_us: f64,
    /// PSS growth of the idle phase, bytes.
    idle_growth: i64,
    /// Whole-tick counters in the CPU readings.
    tick_fields: usize,
    /// Overrides the window's CPU reading, seconds.
    cpu_s: Option<f64>,
}

fn spec(tput: f64, cpu_us: f64, idle_per_conn: i64, conns: usize) -> Spec {
    Spec {
        tput,
        cpu_us,
        idle_growth: idle_per_conn * conns as i64,
        tick_fields: 0,
        cpu_s: None,
    }
}

/// A cell measured as `c10k compare` would have read it, through the same rules.
fn cell(name: &str, conns: usize, s: Spec) -> Cell {
    let window = 5.0;
    let requests = (s.tput * window) as u64;
    let cpu = CpuWindow {
        cpu_s: s.cpu_s.unwrap_or(s.cpu_us * requests as f64 / 1e6),
        resolution_s: cpu_resolution_s(s.tick_fields, 1, TICK),
        wall_s: window,
        requests,
    };
    let figures = cpu.figures();
    let before = TreeMemory {
        pss_kib: 2048,
        rss_kib: 4096,
        processes: 1,
    };
    let after_kib = |k: u64| (k as i64 + s.idle_growth / 1024) as u64;
    let after = TreeMemory {
        pss_kib: after_kib(before.pss_kib),
        rss_kib: after_kib(before.rss_kib),
        processes: 1,
    };
    Cell {
        target: name.into(),
        conns,
        status: "ok".into(),
        reason: None,
        metrics: Some(Metrics {
            throughput_rps: s.tput,
            p50_us: 100.0,
            p90_us: 150.0,
            p99_us: 200.0,
            p999_us: 300.0,
            max_us: 400.0,
            errors: 0,
            connected: conns,
            server_cpu_s: cpu.cpu_s,
            server_cpu_resolution_s: cpu.resolution_s,
            server_cpu_window_s: cpu.wall_s,
            server_busy_percent: figures.busy_percent,
            server_cpu_requests: requests,
            server_cpu_per_request_us: figures.per_request_us,
            server_cpu_note: figures.note,
            server_memory: after,
            idle: Some(IdleMemory::new(conns, before, after, NOISE)),
            load_bound: false,
            clean_exit: true,
            load: load_report(),
        }),
    }
}

/// `(name, C10K item or None for a peer)`.
fn results(rows: &[(&str, Option<&str>)], conns: &[usize], cells: Vec<Cell>) -> Results {
    Results {
        machine: Machine {
            cpu_model: "synthetic".into(),
            cpus: 2,
            kernel: "6.0-test".into(),
            os: "test".into(),
            memory_mib: 1024,
            commit: None,
            c10k_version: "0".into(),
            date: "Thu, 01 Jan 2026 00:00:00 GMT".into(),
        },
        settings: Settings {
            app: "echo".into(),
            conns: conns.to_vec(),
            duration_s: 5.0,
            warmup_s: 1.0,
            pipeline: 1,
            size_bytes: None,
            load_threads: 1,
            idle_phase: true,
            server_cpus: Some(vec![0]),
            load_cpus: Some(vec![1]),
            pinning: "server on CPU 0, load on CPU 1".into(),
            quick: false,
            resolution: ResolutionSettings {
                page_bytes: PAGE as u64,
                idle_noise_bytes: NOISE,
                cpu_tick_s: TICK,
                cpu_min_resolutions: 10.0,
            },
        },
        targets: rows
            .iter()
            .map(|(name, item)| TargetInfo {
                name: (*name).into(),
                kind: if item.is_some() { "strategy" } else { "peer" }.into(),
                item: item.map(Into::into),
                summary: String::new(),
            })
            .collect(),
        cells,
        elapsed_s: 1.0,
    }
}

/// The body rows of the table under `## {title}`: `(row name, cells)`.
fn table(report: &str, title: &str) -> Vec<(String, Vec<String>)> {
    let at = report
        .find(&format!("## {title}"))
        .unwrap_or_else(|| panic!("no table {title}"));
    report[at..]
        .lines()
        .skip_while(|l| !l.starts_with("| strategy"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let mut cols = l.trim_matches('|').split('|').map(|c| c.trim().to_string());
            let name = cols.next().unwrap();
            (name, cols.collect())
        })
        .collect()
}

/// The "where each one loses" line of `name`.
fn loss_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("- `{name}`:")))
        .unwrap_or_else(|| panic!("no loss line for {name}:\n{report}"))
}

const STRATEGIES: [(&str, Option<&str>); 7] = [
    ("select", Some("1")),
    ("poll", Some("1")),
    ("epoll-lt", Some("1")),
    ("epoll-et", Some("2")),
    ("uring", Some("3")),
    ("thread", Some("4")),
    ("pool", Some("answer 5")),
];

#[test]
fn a_peer_is_never_recommended() {
    let levels = [10, 1_000];
    let mut rows = vec![("epoll-et", Some("2")), ("thread", Some("4"))];
    rows.push(("c-epoll", None));
    let mut cells = Vec::new();
    for &c in &levels {
        cells.push(cell("epoll-et", c, spec(150_000.0, 6.0, 200, c)));
        cells.push(cell("thread", c, spec(80_000.0, 12.0, 14_336, c)));
        // The peer beats every strategy on every figure.
        cells.push(cell("c-epoll", c, spec(200_000.0, 4.0, 0, c)));
    }
    let r = results(&rows, &levels, cells);
    let report = report::render(&r);
    let advice = report::advice(&r);
    assert!(advice.starts_with("**Use `epoll-et`.**"), "{advice}");
    assert!(!advice.contains("Use `c-epoll`"), "{advice}");
    // The peer is in the tables and gets its one sentence, but no loss line and no
    // "either will do".
    assert!(report.contains("| c-epoll (peer) |"), "{report}");
    let against: Vec<&str> = advice
        .lines()
        .filter(|l| l.starts_with("Against `c-epoll`"))
        .collect();
    assert_eq!(against.len(), 1, "{advice}");
    assert!(
        against[0].contains("`epoll-et`'s CPU per request was 1.50x the peer's"),
        "{}",
        against[0]
    );
    assert!(!advice.contains("- `c-epoll`:"), "{advice}");
    assert!(
        !advice.contains("`c-epoll` is within the noise"),
        "{advice}"
    );
    // Among the strategies only: epoll-et had the highest throughput.
    assert!(
        advice.contains("Highest throughput at 10 and 1,000"),
        "{advice}"
    );

    // Only the peer ran: nothing is recommended.
    let only_peer = results(
        &rows,
        &levels,
        levels
            .iter()
            .map(|&c| cell("c-epoll", c, spec(200_000.0, 4.0, 0, c)))
            .collect(),
    );
    let advice = report::advice(&only_peer);
    assert!(!advice.contains("**Use"), "{advice}");
    assert!(advice.starts_with("No c10k strategy ran"), "{advice}");
}

#[test]
fn negative_or_sub_resolution_memory_is_never_printed_as_a_number() {
    let levels = [10, 100, 10_000];
    let rows = [
        ("select", Some("1")),
        ("epoll-et", Some("2")),
        ("thread", Some("4")),
    ];
    let mut cells = Vec::new();
    for &c in &levels {
        let mut sel = spec(150_000.0, 6.0, 200, c);
        let mut et = spec(150_000.0, 6.0, 163, c);
        if c == 10 {
            // The run: the tree shrank by 5 pages ("select: -2,048 B").
            sel.idle_growth = -5 * PAGE;
            // 8 pages over 10 connections: "3,277 B" before.
            et.idle_growth = 8 * PAGE;
        }
        cells.push(cell("select", c, sel));
        cells.push(cell("epoll-et", c, et));
        cells.push(cell("thread", c, spec(80_000.0, 12.0, 14_336, c)));
    }
    let r = results(&rows, &levels, cells);
    let report = report::render(&r);
    let mem = table(&report, "Server memory per idle connection");
    for (name, cols) in &mem {
        for (c, text) in levels.iter().zip(cols) {
            assert!(!text.contains('-'), "{name} x {c}: {text}");
        }
    }
    let row = |n: &str| &mem.iter().find(|(name, _)| name == n).unwrap().1;
    // 256 KiB over 10 connections: 25.6 KiB.
    assert_eq!(row("`select`")[0], "< 25.6 KiB");
    assert_eq!(row("`epoll-et`")[0], "< 25.6 KiB");
    // 163 B x 100 is under the noise too (2,621.44 B, printed rounded up); at 10,000
    // it is a figure.
    assert_eq!(row("`epoll-et`")[1], "< 2,622 B");
    assert_eq!(row("`epoll-et`")[2], "163 B");
    // 14 KiB x 10 is under it as well; x 100 is not.
    assert_eq!(row("`thread`")[0], "< 25.6 KiB");
    assert_eq!(row("`thread`")[1], "14.0 KiB");
    assert!(
        report.contains("at N connections the figure resolves 256.0 KiB / N"),
        "the table states the resolution:\n{report}"
    );
    assert!(
        !report.contains("-2,048") && !report.contains("3,277"),
        "{report}"
    );

    // The JSON says why the figure is missing.
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    let idle = &json["cells"][0]["metrics"]["idle"];
    assert_eq!(json["cells"][0]["target"], "select");
    assert!(idle["pss_bytes_per_conn"].is_null(), "{idle}");
    assert_eq!(idle["pss_growth_bytes"], -5 * PAGE);
    let note = idle["pss_bytes_per_conn_note"].as_str().unwrap();
    assert!(
        note.starts_with("below resolution") && note.contains("shrank"),
        "{note}"
    );
    assert_eq!(json["settings"]["resolution"]["idle_noise_bytes"], NOISE);

    // The chart draws only figures.
    let svg = c10k_lab::chart::render(&c10k_lab::chart::CHARTS[3], &r);
    let desc = &svg[svg.find("<desc>").unwrap()..svg.find("</desc>").unwrap()];
    assert!(desc.contains("select 10000=199.98"), "{desc}");
    assert!(
        !desc.contains("select 10=") && !desc.contains("select 100="),
        "{desc}"
    );
    assert!(desc.contains("\nthread 100=14336 10000=14336"), "{desc}");
    assert!(!desc.contains("=-"), "{desc}");

    // The advice uses the largest level with a figure: thread's 14 KiB against the
    // event-loop median there.
    assert!(
        loss_line(&report, "thread").contains(
            "an idle connection cost 14.0 KiB of server memory at 10,000 connections \
             (the event-loop median: 182 B)"
        ),
        "{report}"
    );
}

#[test]
fn a_sub_resolution_cpu_reading_is_flagged() {
    let levels = [10, 1_000];
    let rows = [("epoll-et", Some("2")), ("fork", Some("4"))];
    let mut cells = Vec::new();
    for &c in &levels {
        cells.push(cell("epoll-et", c, spec(150_000.0, 6.0, 200, c)));
        let mut fork = spec(90_000.0, 11.0, 96_000, c);
        if c == 10 {
            // Five clock ticks of CPU, read by a root that reaps its children (two
            // whole-tick counters) on one server CPU: resolution 30 ms.
            fork.tick_fields = 2;
            fork.cpu_s = Some(0.05);
        }
        cells.push(cell("fork", c, fork));
    }
    let r = results(&rows, &levels, cells);
    let m = r.metrics("fork", 10).unwrap();
    assert_eq!(m.server_cpu_per_request_us, None);
    assert_eq!(m.server_busy_percent, None);
    assert!((m.server_cpu_resolution_s - 0.03).abs() < 1e-12);
    let note = m.server_cpu_note.as_deref().unwrap();
    assert!(note.starts_with("below resolution"), "{note}");
    assert!(note.contains("resolution of 30.0 ms"), "{note}");

    let report = report::render(&r);
    let cpu = table(&report, "Server CPU per request");
    let fork = &cpu.iter().find(|(n, _)| n == "`fork`").unwrap().1;
    // At most (50 + 30) ms over 450,000 replies: 0.18 us, flagged, not a number.
    assert_eq!(fork[0], "< 0.18");
    assert_eq!(fork[1], "11.00");
    let busy = table(&report, "Server busy");
    assert_eq!(
        busy.iter().find(|(n, _)| n == "`fork`").unwrap().1[0],
        "< 2%"
    );
    assert!(
        report.contains("was under 10 times its resolution"),
        "{report}"
    );
    // The advice does not count the flagged reading: fork would have had the lowest
    // CPU per request at 10 connections.
    let advice = report::advice(&r);
    assert!(advice.starts_with("**Use `epoll-et`.**"), "{advice}");
    assert!(advice.contains("at every level it ran"), "{advice}");
    // Nor does the chart.
    let svg = c10k_lab::chart::render(&c10k_lab::chart::CHARTS[2], &r);
    assert!(svg.contains("fork 1000=11"), "{svg}");
    assert!(!svg.contains("fork 10="), "{svg}");
}

#[test]
fn losses_use_the_stable_reference() {
    let levels = [10, 100, 1_000];
    let mut cells = Vec::new();
    for &c in &levels {
        for (name, _) in STRATEGIES {
            let (tput, cpu) = match name {
                "thread" => (60_000.0, 12.0),
                "pool" => (85_000.0, 9.0),
                _ => (150_000.0, 6.0),
            };
            let mut s = spec(tput, cpu, 300, c);
            // One lucky cell: select at 100 connections, three times better than the
            // rest of its family.
            if name == "select" && c == 100 {
                s.cpu_us = 2.0;
                s.tput = 300_000.0;
            }
            cells.push(cell(name, c, s));
        }
    }
    let r = results(&STRATEGIES, &levels, cells);
    let reference = Reference::of(&r).unwrap();
    assert_eq!(
        reference.members,
        ["select", "poll", "epoll-lt", "epoll-et", "uring"]
    );
    assert_eq!(reference.at(&r, 100, report::cpu_shown), Some((6.0, false)));
    let report = report::render(&r);
    assert!(
        report.contains(
            "Where each one loses. Each is held against the event-loop median: at each level"
        ),
        "{report}"
    );
    // Against the best single cell, poll "lost" 3x at 100 connections and thread 6x.
    assert!(
        loss_line(&report, "poll").contains("no clear loss"),
        "{report}"
    );
    let thread = loss_line(&report, "thread");
    assert!(
        thread
            .contains("used 2.0x the CPU per request of the event-loop median (12.00 vs 6.00 us)"),
        "{thread}"
    );
    assert!(
        thread.contains(
            "served 60% fewer requests per second than the event-loop median (60,000 vs \
             150,000)"
        ),
        "{thread}"
    );
    assert!(
        !thread.contains("6.0x") && !thread.contains("`select`"),
        "{thread}"
    );
    assert!(loss_line(&report, "pool").contains("1.5x"), "{report}");

    // Without the event-loop family, the reference is every strategy's median.
    let rows = [("thread", Some("4")), ("pool", Some("answer 5"))];
    let few = results(
        &rows,
        &levels,
        r.cells
            .iter()
            .filter(|c| c.target == "thread" || c.target == "pool")
            .cloned()
            .collect(),
    );
    let reference = Reference::of(&few).unwrap();
    assert_eq!(reference.name, "the strategies' median");
    assert_eq!(
        reference.at(&few, 10, report::cpu_shown),
        Some((10.5, false))
    );
}

#[test]
fn a_strategy_that_runs_in_the_kernel_is_never_ranked_by_server_cpu() {
    let levels = [10, 1_000];
    let rows = vec![("epoll-et", Some("2")), ("kernel", Some("5"))];
    let mut cells = Vec::new();
    for &c in &levels {
        cells.push(cell("epoll-et", c, spec(150_000.0, 6.0, 200, c)));
        // Almost no server CPU: the echo runs in softirq, charged to no process.
        cells.push(cell("kernel", c, spec(80_000.0, 0.1, 200, c)));
    }
    let r = results(&rows, &levels, cells);
    let advice = report::advice(&r);
    assert!(advice.starts_with("**Use `epoll-et`.**"), "{advice}");
    assert!(advice.contains("`kernel` is not ranked"), "{advice}");
}

//! Synthetic results, measured as `c10k compare` would have read them, through the
//! same rules: cells of one or more rounds under one or more workloads.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use c10k_lab::machine::Machine;
use c10k_lab::machine_cpu::{BUSY_FIELDS, MachineCpu};
use c10k_lab::proctree::TreeMemory;
use c10k_lab::resolution::{CpuWindow, cpu_resolution_s};
use c10k_lab::results::{
    Cell, IdleMemory, Metrics, ResolutionSettings, Results, Round, Settings, TargetInfo,
    WorkloadSettings,
};
use c10k_load::{AppKind, LoadConfig, LoadReport, Progress};
use c10k_server::Work;

pub const PAGE: i64 = 4096;
pub const NOISE: u64 = 64 * 4096;
pub const TICK: f64 = 0.01;

/// A real load report to hang the synthetic figures on (the report reads none of it):
/// 50 ms of echo against a thread that echoes.
pub fn load_report() -> LoadReport {
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

/// One synthetic round's readings.
#[derive(Clone, Copy)]
pub struct Spec {
    /// Requests per second.
    pub tput: f64,
    /// Server CPU per request, microseconds (the window's CPU follows from it).
    pub cpu_us: f64,
    /// PSS growth of the idle phase, bytes.
    pub idle_growth: i64,
    /// Whole-tick counters in the CPU readings.
    pub tick_fields: usize,
    /// Overrides the window's CPU reading, seconds.
    pub cpu_s: Option<f64>,
    /// Errors of the load.
    pub errors: u64,
    /// The load saturated its core.
    pub load_bound: bool,
    /// p99 latency, microseconds.
    pub p99_us: f64,
    /// Whole-machine CPU per request, microseconds (`None`: no /proc/stat reading).
    pub machine_us: Option<f64>,
}

pub fn spec(tput: f64, cpu_us: f64, idle_per_conn: i64, conns: usize) -> Spec {
    Spec {
        tput,
        cpu_us,
        idle_growth: idle_per_conn * conns as i64,
        tick_fields: 0,
        cpu_s: None,
        errors: 0,
        load_bound: false,
        p99_us: 200.0,
        machine_us: None,
    }
}

/// A round measured as `c10k compare` would have read it.
pub fn metrics(conns: usize, s: Spec) -> Metrics {
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
    Metrics {
        throughput_rps: s.tput,
        p50_us: 100.0,
        p90_us: 150.0,
        p99_us: s.p99_us,
        p999_us: 300.0,
        max_us: 400.0,
        errors: s.errors,
        connected: conns,
        server_cpu_s: cpu.cpu_s,
        server_cpu_resolution_s: cpu.resolution_s,
        server_cpu_window_s: cpu.wall_s,
        server_busy_percent: figures.busy_percent,
        server_cpu_requests: requests,
        server_cpu_per_request_us: figures.per_request_us,
        server_cpu_note: figures.note,
        machine_cpu: s.machine_us.map(|us| {
            MachineCpu::of(
                CpuWindow {
                    cpu_s: us * requests as f64 / 1e6,
                    resolution_s: cpu_resolution_s(BUSY_FIELDS, 2, TICK),
                    wall_s: window,
                    requests,
                },
                2,
            )
        }),
        load_cpu_per_request_us: None,
        server_memory: after,
        idle: Some(IdleMemory::new(conns, before, after, NOISE)),
        load_bound: s.load_bound,
        clean_exit: true,
        load: load_report(),
    }
}

/// A cell of workload `work` from its rounds.
pub fn cell_rounds(work: &str, name: &str, conns: usize, rounds: &[Spec]) -> Cell {
    let workers = (name == "pool" && work.contains("blocking"))
        .then_some(64)
        .or(Some(1));
    Cell::from_rounds(
        work,
        name,
        conns,
        workers,
        rounds
            .iter()
            .enumerate()
            .map(|(i, s)| Round::ok(i + 1, metrics(conns, *s)))
            .collect(),
    )
}

/// A cell of one round under `none`.
pub fn cell(name: &str, conns: usize, s: Spec) -> Cell {
    cell_rounds("none", name, conns, &[s])
}

/// A workload's settings as `c10k compare` writes them (one server CPU).
pub fn workload(work: &str, conns: &[usize]) -> WorkloadSettings {
    let w: Work = work.parse().unwrap();
    WorkloadSettings {
        work: w.to_string(),
        description: c10k_lab::workload::describe(&w),
        cpu_us: w.cpu.as_secs_f64() * 1e6,
        blocking_wait_us: w.blocking_wait().as_secs_f64() * 1e6,
        async_wait_us: w.async_wait().as_secs_f64() * 1e6,
        conns: conns.to_vec(),
        pool_workers: c10k_lab::workload::pool_workers(&w, 1),
        idle_phase: w.is_none(),
        warmup_s: conns
            .iter()
            .map(|&c| {
                c10k_lab::workload::warmup(std::time::Duration::from_secs(1), &w, c, 1)
                    .as_secs_f64()
            })
            .collect(),
        reply_timeout_s: 5.0,
    }
}

/// `(name, C10K item or None for a peer)`, under the workloads given, `rounds` rounds.
pub fn results_of(
    rows: &[(&str, Option<&str>)],
    workloads: &[(&str, &[usize])],
    rounds: usize,
    cells: Vec<Cell>,
) -> Results {
    let workloads: Vec<WorkloadSettings> = workloads.iter().map(|(w, c)| workload(w, c)).collect();
    let mut conns: Vec<usize> = workloads.iter().flat_map(|w| w.conns.clone()).collect();
    conns.sort_unstable();
    conns.dedup();
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
            conns,
            workloads,
            rounds,
            workers: 1,
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
            python: None,
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

/// One round under `none` at `conns`.
pub fn results(rows: &[(&str, Option<&str>)], conns: &[usize], cells: Vec<Cell>) -> Results {
    results_of(rows, &[("none", conns)], 1, cells)
}

/// The body rows of the first table under `## {title}`: `(row name, cells)`.
pub fn table(report: &str, title: &str) -> Vec<(String, Vec<String>)> {
    table_of(report, title, None)
}

/// The body rows of the table under `## {title}`, in the workload `work`'s
/// subsection when given.
pub fn table_of(report: &str, title: &str, work: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut at = report
        .find(&format!("## {title}"))
        .unwrap_or_else(|| panic!("no table {title}"));
    if let Some(work) = work {
        at += report[at..]
            .find(&format!("### `{work}`"))
            .unwrap_or_else(|| panic!("no table {title} for {work}"));
    }
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

/// The "where each one loses" line of `name` (the first in the report).
pub fn loss_line<'a>(report: &'a str, name: &str) -> &'a str {
    // A line of its own, or the shared "no clear loss" line that names it.
    report
        .lines()
        .find(|l| {
            l.starts_with("- `")
                && l.split_once(": ")
                    .is_some_and(|(who, _)| who.contains(&format!("`{name}`")))
        })
        .unwrap_or_else(|| panic!("no loss line for {name}:\n{report}"))
}

/// The section of the workload `work` in the "What to use" text.
pub fn section<'a>(advice: &'a str, work: &str) -> &'a str {
    let start = advice
        .find(&format!("(`{work}`)\n"))
        .unwrap_or_else(|| panic!("no section for {work}:\n{advice}"));
    let rest = &advice[start..];
    let end = rest[1..]
        .find("\n### ")
        .or_else(|| rest.find("**In one line:**"))
        .unwrap_or(rest.len());
    &rest[..end]
}

//! c10k-lab: `c10k compare`, the measured answer to "which strategy should I use?".
//!
//! For every strategy of the registry (and any `--peer`) at every concurrency level, a
//! cell starts the server as its own process pinned to the server CPUs, opens idle
//! connections to measure memory per connection, runs the load (in this process, on a
//! thread pinned to the load CPUs), reads the server's whole process tree's CPU time at
//! the edges of the measured window, and stops the server with SIGTERM. A cell that
//! cannot run (strategy not available here, beyond its connection limit, server did not
//! start) is "n/a" with the reason; the run goes on.
//!
//! The output is `results.json` (every figure), `report.md` (tables, a "what to use"
//! section derived from the figures, the machine) and SVG charts.

pub mod cell;
pub mod chart;
pub mod kernel_memory;
pub mod machine;
pub mod pin;
pub mod plan;
pub mod proctree;
pub mod report;
pub mod resolution;
pub mod results;
pub mod server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use c10k_load::AppKind;

use machine::Machine;
use plan::{Target, cannot_run, targets};
use results::{Cell, ResolutionSettings, Results, Settings, TargetInfo};

/// Default concurrency levels.
pub const DEFAULT_CONNS: [usize; 4] = [10, 100, 1_000, 10_000];

/// Concurrency levels of `--quick`.
pub const QUICK_CONNS: [usize; 2] = [10, 1_000];

/// A comparison.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The `c10k` binary that serves the strategies (`c10k compare` passes its own path).
    pub server_bin: PathBuf,
    /// Strategy names (`None`: every strategy in the registry).
    pub strategies: Option<Vec<String>>,
    /// External servers: `(name, command with {port})`.
    pub peers: Vec<(String, String)>,
    /// Concurrency levels.
    pub conns: Vec<usize>,
    /// The app.
    pub app: AppKind,
    /// Output directory.
    pub out: PathBuf,
    /// CPUs for the server (`None`: not pinned).
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs for the load (`None`: not pinned).
    pub load_cpus: Option<Vec<usize>>,
    /// Measured window per cell.
    pub duration: Duration,
    /// Warm-up per cell.
    pub warmup: Duration,
    /// Requests outstanding per connection.
    pub pipeline: usize,
    /// Request size parameter (see `c10k load --size`).
    pub size: Option<usize>,
    /// Load threads.
    pub load_threads: usize,
    /// Measure memory per idle connection in each cell.
    pub idle_phase: bool,
    /// `--quick` (recorded in the report).
    pub quick: bool,
}

impl CompareConfig {
    /// The default matrix: every strategy, 10 to 10,000 connections, echo, 5 s cells
    /// after 1 s of warm-up, server on CPU 0 and load on CPU 1.
    pub fn new(server_bin: PathBuf) -> Self {
        CompareConfig {
            server_bin,
            strategies: None,
            peers: Vec::new(),
            conns: DEFAULT_CONNS.to_vec(),
            app: AppKind::Echo,
            out: PathBuf::from("report"),
            server_cpus: Some(vec![0]),
            load_cpus: Some(vec![1]),
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            pipeline: 1,
            size: None,
            load_threads: 1,
            idle_phase: true,
            quick: false,
        }
    }

    /// `--quick`: two concurrency levels, 1 s cells after 0.3 s of warm-up.
    pub fn quick(mut self) -> Self {
        self.conns = QUICK_CONNS.to_vec();
        self.duration = Duration::from_secs(1);
        self.warmup = Duration::from_millis(300);
        self.quick = true;
        self
    }
}

/// Something a comparison could not get past (bad arguments, unwritable output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareError(pub String);

impl std::fmt::Display for CompareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompareError {}

/// Shows which cell runs and how long is left: a bar on a terminal, a line per cell
/// otherwise.
struct Ticker {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    start: Instant,
}

impl Ticker {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "cell {pos}/{len} {bar:30} {elapsed} elapsed, ~{eta} left: {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Ticker {
            bar,
            total,
            start: Instant::now(),
        }
    }

    fn starting(&self, k: usize, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => eprintln!(
                "c10k compare: cell {}/{} ({:.0} s elapsed): {what}",
                k + 1,
                self.total,
                self.start.elapsed().as_secs_f64()
            ),
        }
    }

    fn done(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None => eprintln!("c10k compare:   {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn one_line(cell: &Cell) -> String {
    match &cell.metrics {
        Some(m) => format!(
            "{} x {}: {:.0} req/s, p99 {:.0} us, server CPU {} us/req (busy {}), {} errors{}",
            cell.target,
            cell.conns,
            m.throughput_rps,
            m.p99_us,
            m.server_cpu_per_request_us
                .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
            m.server_busy_percent
                .map_or_else(|| "?".into(), |v| format!("{v:.0}%")),
            m.errors,
            if m.load_bound { " (load-bound)" } else { "" }
        ),
        None => format!(
            "{} x {}: n/a ({})",
            cell.target,
            cell.conns,
            cell.reason.as_deref().unwrap_or("")
        ),
    }
}

/// Runs the comparison and writes `report.md`, `results.json` and the charts into
/// `config.out`.
pub fn compare(config: &CompareConfig) -> Result<Results, CompareError> {
    let mut rows = targets(config.strategies.as_deref(), &config.peers).map_err(CompareError)?;
    plan::only_serving(&mut rows, config.app.name());
    if config.conns.is_empty() || config.conns.contains(&0) {
        return Err(CompareError(
            "--conns needs positive numbers, e.g. 10,100,1000".into(),
        ));
    }
    std::fs::create_dir_all(&config.out)
        .map_err(|e| CompareError(format!("cannot create {}: {e}", config.out.display())))?;
    let machine = Machine::detect();
    let max_conns = config.conns.iter().copied().max().unwrap_or(1);
    let fd_limit = match c10k_load::limits::check_fd_limit(max_conns) {
        Ok(n) => n,
        Err(warning) => {
            eprintln!("c10k compare: warning: {warning}");
            let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            lim.current.unwrap_or(u64::MAX)
        }
    };

    // Pin this thread to the load CPUs for the whole run (the load threads inherit it);
    // each server is spawned with the thread briefly pinned to the server CPUs.
    let mut cfg = config.clone();
    let mut pinning = match (&cfg.server_cpus, &cfg.load_cpus) {
        (Some(s), Some(l)) => format!(
            "server on CPU {}, load on CPU {}",
            pin::format_cpus(s),
            pin::format_cpus(l)
        ),
        (Some(s), None) => format!("server on CPU {}, load not pinned", pin::format_cpus(s)),
        (None, Some(l)) => format!("server not pinned, load on CPU {}", pin::format_cpus(l)),
        (None, None) => "none".into(),
    };
    let mut restore = None;
    if let Some(l) = &cfg.load_cpus {
        match pin::pin_current_thread(l) {
            Ok(before) => restore = Some(before),
            Err(why) => {
                eprintln!("c10k compare: warning: {why}; running unpinned");
                pinning = format!("none ({why})");
                cfg.load_cpus = None;
                cfg.server_cpus = None;
            }
        }
    }
    if let Some(s) = cfg.server_cpus.clone() {
        if let Err(why) = pin::with_pinned(Some(&s), || ()) {
            eprintln!("c10k compare: warning: {why}; the server runs unpinned");
            pinning = format!("server not pinned ({why}); {pinning}");
            cfg.server_cpus = None;
        }
    }

    let cells = run_matrix(&cfg, &rows, fd_limit);
    if let Some(before) = restore {
        pin::restore(&before);
    }

    let results = Results {
        machine,
        settings: Settings {
            app: cfg.app.name().into(),
            conns: cfg.conns.clone(),
            duration_s: cfg.duration.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            pipeline: cfg.pipeline,
            size_bytes: cfg.size,
            load_threads: cfg.load_threads,
            idle_phase: cfg.idle_phase,
            server_cpus: cfg.server_cpus.clone(),
            load_cpus: cfg.load_cpus.clone(),
            pinning,
            quick: cfg.quick,
            resolution: ResolutionSettings::detect(),
        },
        targets: rows
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                kind: t.kind_name().into(),
                item: t.item.clone(),
                summary: t.summary.clone(),
            })
            .collect(),
        cells: cells.0,
        elapsed_s: cells.1.as_secs_f64(),
    };
    write_outputs(&cfg, &results)?;
    Ok(results)
}

fn run_matrix(cfg: &CompareConfig, rows: &[Target], fd_limit: u64) -> (Vec<Cell>, Duration) {
    let start = Instant::now();
    let runnable = rows
        .iter()
        .flat_map(|t| cfg.conns.iter().map(move |&c| (t, c)))
        .filter(|(t, c)| cannot_run(t, *c, fd_limit).is_none())
        .count();
    let ticker = Ticker::new(runnable);
    let mut k = 0;
    let mut cells = Vec::new();
    // Level by level, every row in turn: a burst of noise from a neighbour on a shared
    // machine then lands on one column across rows rather than on one row.
    for (li, &conns) in cfg.conns.iter().enumerate() {
        for (ti, target) in rows.iter().enumerate() {
            let cell = match cannot_run(target, conns, fd_limit) {
                Some(why) => Cell::na(&target.name, conns, why),
                None => {
                    ticker.starting(k, &format!("{} x {conns}", target.name));
                    k += 1;
                    let cell = cell::run_cell(cfg, target, conns);
                    ticker.done(&one_line(&cell));
                    cell
                }
            };
            cells.push(((ti, li), cell));
        }
    }
    ticker.finish();
    cells.sort_by_key(|(key, _)| *key);
    let cells = cells.into_iter().map(|(_, c)| c).collect();
    (cells, start.elapsed())
}

fn write_outputs(cfg: &CompareConfig, results: &Results) -> Result<(), CompareError> {
    let write = |name: &str, text: String| {
        let path = cfg.out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| CompareError(format!("cannot write {}: {e}", path.display())))
    };
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| CompareError(format!("cannot encode the results: {e}")))?;
    write("results.json", json + "\n")?;
    for chart in &chart::CHARTS {
        write(chart.file, chart::render(chart, results))?;
    }
    write("report.md", report::render(results))?;
    Ok(())
}

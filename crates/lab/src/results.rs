//! Every figure a comparison produced, as written to `results.json`.

use serde::Serialize;

use crate::machine::Machine;
use crate::proctree::TreeMemory;

/// The settings of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// echo, http or resp.
    pub app: String,
    /// The concurrency levels (columns).
    pub conns: Vec<usize>,
    /// The measured window per cell, seconds.
    pub duration_s: f64,
    /// The warm-up per cell, seconds.
    pub warmup_s: f64,
    /// Requests outstanding per connection (closed loop).
    pub pipeline: usize,
    /// The request size parameter, if given.
    pub size_bytes: Option<usize>,
    /// Load threads.
    pub load_threads: usize,
    /// Whether the idle-memory phase ran.
    pub idle_phase: bool,
    /// The server's CPUs, or null when not pinned.
    pub server_cpus: Option<Vec<usize>>,
    /// The load's CPUs, or null when not pinned.
    pub load_cpus: Option<Vec<usize>>,
    /// The pinning, in words (or why there is none).
    pub pinning: String,
    /// `--quick`.
    pub quick: bool,
}

/// A row of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// "strategy" or "peer".
    pub kind: String,
    /// How it works.
    pub summary: String,
}

/// The idle phase of a cell: memory before and after opening the idle connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    /// Idle connections that were open when memory was read.
    pub open: usize,
    /// The server's tree before.
    pub before: TreeMemory,
    /// The server's tree with the connections open.
    pub after: TreeMemory,
    /// `(after.pss - before.pss) / open`, bytes.
    pub pss_bytes_per_conn: f64,
    /// `(after.rss - before.rss) / open`, bytes.
    pub rss_bytes_per_conn: f64,
}

/// What a cell that ran measured.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Requests per second over the window.
    pub throughput_rps: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The largest latency.
    pub max_us: f64,
    /// Errors of the load phase (all kinds).
    pub errors: u64,
    /// Connections open when the measured window began.
    pub connected: usize,
    /// Server CPU (user+sys of its whole process tree) over the window, seconds.
    pub server_cpu_s: f64,
    /// `server_cpu_s` over the wall time it was measured in, percent of one core (below
    /// 100% per server CPU with a load that is not load-bound: something else held the
    /// server back, such as a neighbour on a shared CPU).
    pub server_busy_percent: f64,
    /// Replies counted over the same interval as `server_cpu_s`.
    pub server_cpu_requests: u64,
    /// `server_cpu_s / server_cpu_requests`, microseconds (null without replies).
    pub server_cpu_per_request_us: Option<f64>,
    /// The server's tree memory in the middle of the window.
    pub server_memory: TreeMemory,
    /// The idle phase (null when it did not run or failed).
    pub idle: Option<IdleMemory>,
    /// The load generator saturated its core in this cell.
    pub load_bound: bool,
    /// The server exited by itself after SIGTERM.
    pub clean_exit: bool,
    /// The load generator's full report.
    pub load: c10k_load::LoadReport,
}

/// One strategy (or peer) at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The row's name.
    pub target: String,
    /// Connections.
    pub conns: usize,
    /// "ok" or "n/a".
    pub status: String,
    /// Why it did not run (for "n/a").
    pub reason: Option<String>,
    /// The figures (for "ok").
    pub metrics: Option<Metrics>,
}

impl Cell {
    /// A cell that did not run.
    pub fn na(target: &str, conns: usize, reason: String) -> Cell {
        Cell {
            target: target.to_string(),
            conns,
            status: "n/a".into(),
            reason: Some(reason),
            metrics: None,
        }
    }
}

/// Everything a comparison produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The machine and code.
    pub machine: Machine,
    /// The settings.
    pub settings: Settings,
    /// The rows, in order.
    pub targets: Vec<TargetInfo>,
    /// The cells, row by row.
    pub cells: Vec<Cell>,
    /// How long the comparison took, seconds.
    pub elapsed_s: f64,
}

impl Results {
    /// The cell of `target` at `conns`.
    pub fn cell(&self, target: &str, conns: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.target == target && c.conns == conns)
    }

    /// The figures of `target` at `conns`, when it ran.
    pub fn metrics(&self, target: &str, conns: usize) -> Option<&Metrics> {
        self.cell(target, conns)?.metrics.as_ref()
    }
}

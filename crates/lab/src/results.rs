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
    /// What the readings behind the figures can resolve.
    pub resolution: ResolutionSettings,
}

/// The resolution rules of a comparison (see [`crate::resolution`]).
#[derive(Debug, Clone, Serialize)]
pub struct ResolutionSettings {
    /// The page size, bytes.
    pub page_bytes: u64,
    /// PSS growth under this is allocator noise: memory per idle connection resolves
    /// this over the connections, bytes.
    pub idle_noise_bytes: u64,
    /// A clock tick of /proc's CPU counters, seconds.
    pub cpu_tick_s: f64,
    /// A CPU reading is a measurement from this many times its resolution up.
    pub cpu_min_resolutions: f64,
}

impl ResolutionSettings {
    /// This machine's.
    pub fn detect() -> Self {
        ResolutionSettings {
            page_bytes: crate::resolution::page_bytes(),
            idle_noise_bytes: crate::resolution::idle_noise_bytes(),
            cpu_tick_s: 1.0 / c10k_load::cpu::ticks_per_second(),
            cpu_min_resolutions: crate::resolution::CPU_MIN_RESOLUTIONS,
        }
    }
}

/// A row of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// "strategy" or "peer".
    pub kind: String,
    /// Its item in the C10K list (null for a peer).
    pub item: Option<String>,
    /// How it works.
    pub summary: String,
}

impl TargetInfo {
    /// A c10k strategy (not a peer): only these are recommended.
    pub fn is_strategy(&self) -> bool {
        self.kind == "strategy"
    }

    /// Its work runs in the kernel (C10K item 5): charged to softirq on whichever CPU,
    /// not to the server's processes, so its server CPU per request is not comparable
    /// and it is never ranked by it.
    pub fn runs_in_kernel(&self) -> bool {
        self.item.as_deref() == Some("5")
    }

    /// One of the event-loop strategies, C10K items 1 to 3 (one thread serves many
    /// connections from readiness or completion events: `select`, `poll`, `epoll-lt`,
    /// `epoll-et`, `uring`): the family whose median is the report's reference.
    pub fn is_event_loop(&self) -> bool {
        self.is_strategy() && matches!(self.item.as_deref(), Some("1" | "2" | "3"))
    }
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
    /// `after.pss - before.pss`, bytes (negative: the tree shrank).
    pub pss_growth_bytes: i64,
    /// `after.rss - before.rss`, bytes.
    pub rss_growth_bytes: i64,
    /// The smallest memory per connection this level resolves: `idle_noise_bytes /
    /// open` (see `settings.resolution`), bytes.
    pub resolution_bytes_per_conn: f64,
    /// `pss_growth_bytes / open`, bytes; null when the growth is below resolution
    /// (under `idle_noise_bytes`, or negative).
    pub pss_bytes_per_conn: Option<f64>,
    /// Why `pss_bytes_per_conn` is null ("below resolution: ...").
    pub pss_bytes_per_conn_note: Option<String>,
    /// `rss_growth_bytes / open`, bytes, by the same rule.
    pub rss_bytes_per_conn: Option<f64>,
}

impl IdleMemory {
    /// The idle phase's figures from its two readings.
    pub fn new(open: usize, before: TreeMemory, after: TreeMemory, noise_bytes: u64) -> Self {
        let growth = |a: u64, b: u64| (a as i64 - b as i64) * 1024;
        let pss_growth_bytes = growth(after.pss_kib, before.pss_kib);
        let rss_growth_bytes = growth(after.rss_kib, before.rss_kib);
        let pss = crate::resolution::per_conn(pss_growth_bytes, open, noise_bytes);
        let rss = crate::resolution::per_conn(rss_growth_bytes, open, noise_bytes);
        IdleMemory {
            open,
            before,
            after,
            pss_growth_bytes,
            rss_growth_bytes,
            resolution_bytes_per_conn: pss.resolution,
            pss_bytes_per_conn: pss.bytes,
            pss_bytes_per_conn_note: pss.note,
            rss_bytes_per_conn: rss.bytes,
        }
    }
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
    /// The resolution of `server_cpu_s`: whole-tick counters in the readings, plus a
    /// tick per server CPU for a running thread's time not yet counted, seconds.
    pub server_cpu_resolution_s: f64,
    /// The wall time `server_cpu_s` was measured over, seconds.
    pub server_cpu_window_s: f64,
    /// `server_cpu_s` over `server_cpu_window_s`, percent of one core (below 100% per
    /// server CPU with a load that is not load-bound: something else held the server
    /// back, such as a neighbour on a shared CPU); null when the reading is below
    /// resolution.
    pub server_busy_percent: Option<f64>,
    /// Replies counted over the same interval as `server_cpu_s`.
    pub server_cpu_requests: u64,
    /// `server_cpu_s / server_cpu_requests`, microseconds; null without replies or when
    /// the reading is below resolution (under `cpu_min_resolutions` times
    /// `server_cpu_resolution_s`).
    pub server_cpu_per_request_us: Option<f64>,
    /// Why `server_cpu_per_request_us` or `server_busy_percent` is null.
    pub server_cpu_note: Option<String>,
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

impl Metrics {
    /// The window's CPU reading.
    pub fn cpu_window(&self) -> crate::resolution::CpuWindow {
        crate::resolution::CpuWindow {
            cpu_s: self.server_cpu_s,
            resolution_s: self.server_cpu_resolution_s,
            wall_s: self.server_cpu_window_s,
            requests: self.server_cpu_requests,
        }
    }
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

//! Every figure a comparison produced, as written to `results.json`.

use serde::Serialize;

use crate::aggregate::Stat;
use crate::machine::Machine;
use crate::machine_cpu::MachineCpu;
use crate::proctree::TreeMemory;

/// The settings of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// echo, http or resp.
    pub app: String,
    /// Every concurrency level of any workload (each workload has its own).
    pub conns: Vec<usize>,
    /// The workloads, in order: the work per request and its levels.
    pub workloads: Vec<WorkloadSettings>,
    /// Rounds: each round runs every cell once, strategies in turn at each level.
    pub rounds: usize,
    /// `--workers` given to every strategy (the server CPUs' worth), except `prefork`
    /// (as many processes as connections) and `pool` under a blocking wait (see
    /// `workloads[].pool_workers`).
    pub workers: usize,
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
    /// Whether the idle-memory phase ran (in round 1 of one workload only: see
    /// `workloads[].idle_phase`).
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
    /// `--python`: the interpreter of the CPython field (null without it).
    pub python: Option<PythonSettings>,
}

/// The CPython field of a `--python` comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PythonSettings {
    /// `--python-bin`.
    pub interpreter: String,
    /// What it says to `--version`.
    pub version: String,
    /// The processes of a `-procs` row (the server CPUs).
    pub procs: usize,
}

/// One workload of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSettings {
    /// The work per request, as `c10k serve --work` spells it (`none`, `cpu=200us`,
    /// `wait=2ms,blocking`...).
    pub work: String,
    /// In words ("a 2 ms blocking call per request").
    pub description: String,
    /// CPU burnt per request, microseconds.
    pub cpu_us: f64,
    /// Blocking wait per request, microseconds.
    pub blocking_wait_us: f64,
    /// Asynchronous wait per request, microseconds.
    pub async_wait_us: f64,
    /// Its concurrency levels (columns).
    pub conns: Vec<usize>,
    /// `--workers` given to `pool` (its pool size): larger under a blocking wait.
    pub pool_workers: usize,
    /// Whether its first round measured memory per idle connection.
    pub idle_phase: bool,
    /// The warm-up at each level (as `conns`), seconds: `settings.warmup_s`, or one
    /// pass through the longest queue the work can cause on one event-loop worker when
    /// that is longer.
    pub warmup_s: Vec<f64>,
    /// The reply timeout of the load, seconds (a slower reply is an error).
    pub reply_timeout_s: f64,
}

impl WorkloadSettings {
    /// Whether it is the trivial request.
    pub fn is_none(&self) -> bool {
        self.work == "none"
    }
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
    /// The kernel's socket memory before and after, per connection (machine-wide: both
    /// ends of each loopback connection; see [`crate::kernel_memory`]).
    pub kernel: Option<crate::kernel_memory::KernelMemoryGrowth>,
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
            kernel: None,
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
    /// The whole machine's busy time over the same window and replies (every CPU, from
    /// `/proc/stat`: the server, the load generator, the kernel's softirq work for
    /// both and anything else that ran; see [`crate::machine_cpu`]), with its CPU per
    /// request; null when `/proc/stat` could not be read. Results written before it
    /// existed lack it: a reader takes a missing field as null.
    pub machine_cpu: Option<MachineCpu>,
    /// The load generator's own CPU (user+system of its threads over its window, as
    /// `load.cpu_user_s + load.cpu_sys_s`) per reply it counted, microseconds; null
    /// without replies or when the reading is below resolution (a tick per counter and
    /// per load thread). Missing in older results, like `machine_cpu`.
    pub load_cpu_per_request_us: Option<f64>,
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

/// One round of a cell.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Which round (from 1).
    pub round: usize,
    /// "ok" or "n/a".
    pub status: String,
    /// Why it did not run (for "n/a").
    pub reason: Option<String>,
    /// The figures (for "ok").
    pub metrics: Option<Metrics>,
}

impl Round {
    /// A round that ran.
    pub fn ok(round: usize, metrics: Metrics) -> Round {
        Round {
            round,
            status: "ok".into(),
            reason: None,
            metrics: Some(metrics),
        }
    }

    /// A round that did not run.
    pub fn na(round: usize, reason: String) -> Round {
        Round {
            round,
            status: "n/a".into(),
            reason: Some(reason),
            metrics: None,
        }
    }
}

/// The medians over a cell's rounds of its main figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Requests per second.
    pub throughput_rps: f64,
    /// p99 latency, microseconds.
    pub p99_us: f64,
    /// Server CPU per request, microseconds; null when a round's reading was below
    /// resolution (that round says why).
    pub server_cpu_per_request_us: Option<f64>,
    /// Whole-machine CPU per request, microseconds; null as above, or when a round has
    /// no machine reading.
    pub machine_cpu_per_request_us: Option<f64>,
}

/// The min-max over a cell's rounds of its main figures: `[min, max]`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Requests per second.
    pub throughput_rps: [f64; 2],
    /// p99 latency, microseconds.
    pub p99_us: [f64; 2],
    /// Server CPU per request, microseconds (null as in the median).
    pub server_cpu_per_request_us: Option<[f64; 2]>,
    /// Whole-machine CPU per request, microseconds (null as in the median).
    pub machine_cpu_per_request_us: Option<[f64; 2]>,
}

/// One strategy (or peer) at one concurrency under one workload, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The workload's work (`settings.workloads[].work`).
    pub work: String,
    /// The row's name.
    pub target: String,
    /// Connections.
    pub conns: usize,
    /// `--workers` the server got (null for a peer, or a cell that never started).
    pub workers: Option<usize>,
    /// `--processes` the server got, and the load's processes, when one process's open
    /// files limit could not hold the level (null: one process each).
    pub processes: Option<usize>,
    /// "ok" (at least one round ran) or "n/a".
    pub status: String,
    /// Why it did not run (for "n/a": the first round's reason, or why no round was
    /// tried).
    pub reason: Option<String>,
    /// Errors of the load over every round.
    pub errors: u64,
    /// The medians over the rounds that ran.
    pub median: Option<Summary>,
    /// The min-max over the rounds that ran.
    pub spread: Option<Spread>,
    /// Every round, in order (empty when no round was tried).
    pub rounds: Vec<Round>,
}

impl Cell {
    /// A cell that is not tried in any round.
    pub fn na(work: &str, target: &str, conns: usize, reason: String) -> Cell {
        Cell {
            work: work.to_string(),
            target: target.to_string(),
            conns,
            workers: None,
            processes: None,
            status: "n/a".into(),
            reason: Some(reason),
            errors: 0,
            median: None,
            spread: None,
            rounds: Vec::new(),
        }
    }

    /// A cell from its rounds, with the medians and spreads.
    pub fn from_rounds(
        work: &str,
        target: &str,
        conns: usize,
        workers: Option<usize>,
        rounds: Vec<Round>,
    ) -> Cell {
        let ran: Vec<&Metrics> = rounds.iter().filter_map(|r| r.metrics.as_ref()).collect();
        let stat = |f: fn(&Metrics) -> f64| Stat::of(&ran.iter().map(|m| f(m)).collect::<Vec<_>>());
        let tput = stat(|m| m.throughput_rps);
        let p99 = stat(|m| m.p99_us);
        let cpu: Option<Vec<f64>> = ran.iter().map(|m| m.server_cpu_per_request_us).collect();
        let cpu = cpu.and_then(|v| Stat::of(&v));
        let machine: Option<Vec<f64>> = ran
            .iter()
            .map(|m| m.machine_cpu.as_ref()?.per_request_us)
            .collect();
        let machine = machine.and_then(|v| Stat::of(&v));
        let (median, spread) = match (tput, p99) {
            (Some(t), Some(p)) => (
                Some(Summary {
                    throughput_rps: t.median,
                    p99_us: p.median,
                    server_cpu_per_request_us: cpu.map(|c| c.median),
                    machine_cpu_per_request_us: machine.map(|c| c.median),
                }),
                Some(Spread {
                    throughput_rps: [t.min, t.max],
                    p99_us: [p.min, p.max],
                    server_cpu_per_request_us: cpu.map(|c| [c.min, c.max]),
                    machine_cpu_per_request_us: machine.map(|c| [c.min, c.max]),
                }),
            ),
            _ => (None, None),
        };
        let ok = !ran.is_empty();
        Cell {
            work: work.to_string(),
            target: target.to_string(),
            conns,
            workers,
            processes: None,
            status: if ok { "ok" } else { "n/a" }.into(),
            reason: if ok {
                None
            } else {
                rounds
                    .iter()
                    .find_map(|r| r.reason.clone())
                    .or_else(|| Some("no round ran".into()))
            },
            errors: ran.iter().map(|m| m.errors).sum(),
            median,
            spread,
            rounds,
        }
    }

    /// The figures of every round that ran.
    pub fn ran(&self) -> impl Iterator<Item = &Metrics> {
        self.rounds.iter().filter_map(|r| r.metrics.as_ref())
    }

    /// Whether any round ran.
    pub fn is_ok(&self) -> bool {
        self.ran().next().is_some()
    }

    /// Whether the load saturated its own core in any round.
    pub fn load_bound(&self) -> bool {
        self.ran().any(|m| m.load_bound)
    }

    /// The round whose throughput is the median (the lower of the middle two for an
    /// even count): one real round to read the figures that have no median.
    pub fn median_round(&self) -> Option<&Metrics> {
        let mut ran: Vec<&Metrics> = self.ran().collect();
        ran.sort_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps));
        ran.get(ran.len().saturating_sub(1) / 2).copied()
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
    /// The cell of `target` at `conns` under `work`.
    pub fn cell(&self, work: &str, target: &str, conns: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.work == work && c.target == target && c.conns == conns)
    }

    /// The workload of `work`.
    pub fn workload(&self, work: &str) -> Option<&WorkloadSettings> {
        self.settings.workloads.iter().find(|w| w.work == work)
    }

    /// The row of `name`.
    pub fn target(&self, name: &str) -> Option<&TargetInfo> {
        self.targets.iter().find(|t| t.name == name)
    }
}

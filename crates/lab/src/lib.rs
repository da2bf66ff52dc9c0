//! c10k-lab: `c10k compare`, the measured answer to "which strategy should I use?".
//!
//! For every workload (the work per request, `--work`), every strategy of the registry
//! (and any `--peer`) at every concurrency level, a cell starts the server as its own
//! process pinned to the server CPUs, opens idle connections to measure memory per
//! connection (in round 1 of one workload), runs the load (in this process, on a
//! thread pinned to the load CPUs), reads the server's whole process tree's CPU time and
//! the whole machine's busy time ([`machine_cpu`]) at the edges of the measured window,
//! and stops the server with SIGTERM. A cell that cannot run (strategy not available
//! here, beyond its connection limit, a peer asked to do work, server did not start)
//! is "n/a" with the reason; the run goes on. The matrix runs `--rounds` times,
//! interleaved, and each cell reports the median and the min-max of its rounds
//! ([`aggregate`]).
//!
//! The output is `results.json` (every figure of every round), `report.md` (tables, a
//! "what to use" section per workload derived from the figures, the machine) and SVG
//! charts.

pub mod aggregate;
pub mod cell;
pub mod chart;
pub mod kernel_memory;
pub mod machine;
pub mod machine_cpu;
pub mod pin;
pub mod plan;
pub mod proctree;
pub mod report;
pub mod resolution;
pub mod results;
pub mod server;
pub mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use c10k_load::AppKind;
use c10k_server::Work;

use cell::{CELL_TIMEOUT, CellPlan};
use machine::Machine;
use plan::{Target, cannot_run, targets};
use results::{
    Cell, Metrics, PythonSettings, ResolutionSettings, Results, Round, Settings, TargetInfo,
    WorkloadSettings,
};
use workload::Workload;

/// Rounds of the full run.
pub const DEFAULT_ROUNDS: usize = 3;

/// A comparison.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The `c10k` binary that serves the strategies (`c10k compare` passes its own path).
    pub server_bin: PathBuf,
    /// Strategy names (`None`: every strategy in the registry).
    pub strategies: Option<Vec<String>>,
    /// External servers: `(name, command with {port})`.
    pub peers: Vec<(String, String)>,
    /// The interpreter of the Python peers (`--peer asyncio`...).
    pub python_bin: PathBuf,
    /// The workloads, each with its concurrency levels.
    pub workloads: Vec<Workload>,
    /// Rounds of the whole matrix.
    pub rounds: usize,
    /// `--workers` for every strategy (`None`: one per server CPU).
    pub workers: Option<usize>,
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
    /// Measure memory per idle connection (round 1 of one workload).
    pub idle_phase: bool,
    /// `--quick` (recorded in the report).
    pub quick: bool,
    /// `--python`: the CPython field ([`plan::pyfield`]) as rows, answering "what to
    /// use in CPython".
    pub python: bool,
    /// The rows of the field to run (`None`: all of it).
    pub python_peers: Option<Vec<String>>,
}

impl CompareConfig {
    /// The default matrix: every strategy under the workloads `none` (100 to 10,000
    /// connections), `cpu=200us`, `wait=2ms,blocking` and `wait=2ms,async` (100 and
    /// 1,000), echo, 3 rounds of 2 s cells after 0.5 s of warm-up, server on CPU 0 and
    /// load on CPU 1: about 15 minutes on a 2-CPU machine.
    pub fn new(server_bin: PathBuf) -> Self {
        let mut cfg = CompareConfig {
            server_bin,
            strategies: None,
            peers: Vec::new(),
            python_bin: PathBuf::from(plan::python::DEFAULT_PYTHON),
            workloads: Vec::new(),
            rounds: DEFAULT_ROUNDS,
            workers: None,
            app: AppKind::Echo,
            out: PathBuf::from("report"),
            server_cpus: Some(vec![0]),
            load_cpus: Some(vec![1]),
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            pipeline: 1,
            size: None,
            load_threads: 1,
            idle_phase: true,
            quick: false,
            python: false,
            python_peers: None,
        };
        cfg.set_works(&workload::default_works());
        cfg
    }

    /// `--quick`: one round of 1 s cells after 0.3 s of warm-up, `none` at 10 and 1,000
    /// connections and `wait=2ms,blocking` at 100.
    pub fn quick(mut self) -> Self {
        self.quick = true;
        self.set_works(&workload::quick_works());
        self.rounds = 1;
        self.duration = Duration::from_secs(1);
        self.warmup = Duration::from_millis(300);
        self
    }

    /// `--python`: the CPython field under the four workloads of the full run, at
    /// [`plan::pyfield::LEVELS`] (with `--quick`, [`plan::pyfield::QUICK_LEVELS`]);
    /// no c10k strategy unless `--strategies` names some.
    pub fn python_field(mut self) -> Self {
        self.python = true;
        self.set_works(&workload::default_works());
        self
    }

    /// The workloads, each at its default levels (`--quick`'s when set), duplicates
    /// left out.
    pub fn set_works(&mut self, works: &[Work]) {
        self.workloads.clear();
        for w in works {
            if !self.workloads.iter().any(|x| x.work == *w) {
                let conns = match (self.python, self.quick) {
                    (true, false) => plan::pyfield::LEVELS.to_vec(),
                    (true, true) => plan::pyfield::QUICK_LEVELS.to_vec(),
                    (false, _) => workload::default_levels(w, self.quick),
                };
                self.workloads.push(Workload { work: *w, conns });
            }
        }
    }

    /// The same levels for every workload.
    pub fn set_conns(&mut self, conns: &[usize]) {
        for w in &mut self.workloads {
            w.conns = conns.to_vec();
        }
    }

    /// Every level of any workload, in order.
    pub fn all_conns(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .workloads
            .iter()
            .flat_map(|w| w.conns.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
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

fn one_line(what: &str, outcome: &Result<Metrics, String>) -> String {
    match outcome {
        Ok(m) => format!(
            "{what}: {:.0} req/s, p99 {:.0} us, server CPU {} us/req (busy {}), machine \
             {} us/req, {} errors{}",
            m.throughput_rps,
            m.p99_us,
            m.server_cpu_per_request_us
                .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
            m.server_busy_percent
                .map_or_else(|| "?".into(), |v| format!("{v:.0}%")),
            m.machine_cpu
                .as_ref()
                .and_then(|c| c.per_request_us)
                .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
            m.errors,
            if m.load_bound { " (load-bound)" } else { "" }
        ),
        Err(why) => format!("{what}: n/a ({why})"),
    }
}

/// Checks what the command line cannot (an empty or zero level, no workload).
fn check(config: &CompareConfig) -> Result<(), CompareError> {
    if config.workloads.is_empty() {
        return Err(CompareError(
            "no workload: give --work, e.g. --work none --work wait=2ms,blocking".into(),
        ));
    }
    if config
        .workloads
        .iter()
        .any(|w| w.conns.is_empty() || w.conns.contains(&0))
    {
        return Err(CompareError(
            "--conns needs positive numbers, e.g. 10,100,1000".into(),
        ));
    }
    if config.rounds == 0 {
        return Err(CompareError("--rounds must be at least 1".into()));
    }
    if config.python && config.app != AppKind::Echo {
        return Err(CompareError(
            "--python serves --app echo only (bench/py/field.py is an echo server)".into(),
        ));
    }
    if config.workers.is_some_and(|n| n == 0 || n > 1024) {
        return Err(CompareError("--workers must be 1..=1024".into()));
    }
    Ok(())
}

/// Runs the comparison and writes `report.md`, `results.json` and the charts into
/// `config.out`.
pub fn compare(config: &CompareConfig) -> Result<Results, CompareError> {
    let peers = plan::python::with_interpreter(&config.peers, &config.python_bin);
    // With --python alone, the field is the matrix.
    let mut rows = if config.python && config.strategies.is_none() && peers.is_empty() {
        Vec::new()
    } else {
        targets(config.strategies.as_deref(), &peers).map_err(CompareError)?
    };
    plan::only_serving_load(&mut rows, config.app.name(), config.size);
    check(config)?;
    std::fs::create_dir_all(&config.out)
        .map_err(|e| CompareError(format!("cannot create {}: {e}", config.out.display())))?;
    let machine = Machine::detect();
    let max_conns = config.all_conns().into_iter().max().unwrap_or(1);
    let fd_limit = match c10k_load::limits::check_fd_limit(max_conns) {
        Ok(n) => n,
        Err(_) => {
            let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            let n = lim.current.unwrap_or(u64::MAX);
            eprintln!(
                "c10k compare: the open files limit ({n}) is below the largest level: there \
                 the servers that run in threads serve from several processes (--processes) \
                 and the load runs as several processes; the others are n/a"
            );
            n
        }
    };
    // The servers' CPUs' worth of workers, as given (whether or not pinning works).
    let workers = config.workers.unwrap_or_else(|| {
        config.server_cpus.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            Vec::len,
        )
    });

    if config.python {
        let field =
            plan::pyfield::targets(config.python_peers.as_deref(), &config.python_bin, workers)
                .map_err(CompareError)?;
        for row in field {
            if rows.iter().any(|r| r.name == row.name) {
                return Err(CompareError(format!(
                    "the peer name '{}' is taken by the CPython field: choose another",
                    row.name
                )));
            }
            rows.push(row);
        }
    }

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

    let idle_at = idle_workload(&cfg);
    let workloads: Vec<WorkloadSettings> = cfg
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| WorkloadSettings {
            work: w.work.to_string(),
            description: workload::describe(&w.work),
            cpu_us: w.work.cpu.as_secs_f64() * 1e6,
            blocking_wait_us: w.work.blocking_wait().as_secs_f64() * 1e6,
            async_wait_us: w.work.async_wait().as_secs_f64() * 1e6,
            conns: w.conns.clone(),
            pool_workers: workload::pool_workers(&w.work, workers),
            idle_phase: idle_at == Some(i),
            warmup_s: w
                .conns
                .iter()
                .map(|&c| workload::warmup(cfg.warmup, &w.work, c, workers).as_secs_f64())
                .collect(),
            reply_timeout_s: w
                .conns
                .iter()
                .map(|&c| workload::reply_timeout(CELL_TIMEOUT, &w.work, c, workers))
                .max()
                .unwrap_or(CELL_TIMEOUT)
                .as_secs_f64(),
        })
        .collect();
    let matrix = Matrix {
        cfg: &cfg,
        rows: &rows,
        fd_limit,
        workers,
        idle_at,
    };
    let (cells, elapsed) = matrix.run();
    if let Some(before) = restore {
        pin::restore(&before);
    }

    let results = Results {
        machine,
        settings: Settings {
            app: cfg.app.name().into(),
            conns: cfg.all_conns(),
            workloads,
            rounds: cfg.rounds,
            workers,
            duration_s: cfg.duration.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            pipeline: cfg.pipeline,
            size_bytes: cfg.size,
            load_threads: cfg.load_threads,
            idle_phase: idle_at.is_some(),
            server_cpus: cfg.server_cpus.clone(),
            load_cpus: cfg.load_cpus.clone(),
            pinning,
            quick: cfg.quick,
            resolution: ResolutionSettings::detect(),
            python: cfg.python.then(|| PythonSettings {
                interpreter: cfg.python_bin.display().to_string(),
                version: plan::pyfield::interpreter_version(&cfg.python_bin),
                procs: workers,
            }),
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
        cells,
        elapsed_s: elapsed.as_secs_f64(),
    };
    write_outputs(&cfg, &results)?;
    Ok(results)
}

/// The workload whose first round measures memory per idle connection: the first
/// `none`, else the first (the idle connections do no work, so one workload is enough).
fn idle_workload(cfg: &CompareConfig) -> Option<usize> {
    if !cfg.idle_phase {
        return None;
    }
    cfg.workloads
        .iter()
        .position(|w| w.work.is_none())
        .or((!cfg.workloads.is_empty()).then_some(0))
}

/// A matrix to run: the rows, and what every cell needs.
struct Matrix<'a> {
    cfg: &'a CompareConfig,
    rows: &'a [Target],
    fd_limit: u64,
    workers: usize,
    idle_at: Option<usize>,
}

/// A cell being measured: its rounds so far, or why it is not tried.
struct Slot {
    work: usize,
    level: usize,
    row: usize,
    na: Option<String>,
    workers: Option<usize>,
    processes: Option<usize>,
    rounds: Vec<Round>,
}

impl Matrix<'_> {
    /// Round by round; in each round workload by workload, level by level, every row
    /// in turn (starting one row further each round): a burst of noise from a
    /// neighbour on a shared machine then lands on one level of one round, across
    /// rows, and the other rounds outvote it.
    fn run(&self) -> (Vec<Cell>, Duration) {
        let cfg = self.cfg;
        let start = Instant::now();
        let mut slots = Vec::new();
        for (wi, w) in cfg.workloads.iter().enumerate() {
            for (li, &conns) in w.conns.iter().enumerate() {
                for (ti, t) in self.rows.iter().enumerate() {
                    let na = workload::cannot_work(t, &w.work)
                        .or_else(|| plan::pyfield::cannot_serve(t, conns))
                        .or_else(|| cannot_run(t, conns, self.fd_limit));
                    slots.push(Slot {
                        work: wi,
                        level: li,
                        row: ti,
                        workers: workload::workers_for(t, &w.work, conns, self.workers),
                        processes: plan::processes_for(t, conns, self.fd_limit),
                        na,
                        rounds: Vec::new(),
                    });
                }
            }
        }
        let runnable = slots.iter().filter(|s| s.na.is_none()).count();
        let ticker = Ticker::new(runnable * cfg.rounds);
        let mut k = 0;
        let n_rows = self.rows.len().max(1);
        for round in 1..=cfg.rounds {
            // Slots are laid out workload, level, row: each chunk of `n_rows` is one
            // (workload, level).
            for chunk in slots.chunks_mut(n_rows) {
                let len = chunk.len();
                for i in 0..len {
                    let slot = &mut chunk[(i + round - 1) % len];
                    if slot.na.is_some() {
                        continue;
                    }
                    let w = &cfg.workloads[slot.work];
                    let conns = w.conns[slot.level];
                    let target = &self.rows[slot.row];
                    let what = format!(
                        "{} x {conns} [{}]{}",
                        target.name,
                        w.work,
                        if cfg.rounds > 1 {
                            format!(" round {round}/{}", cfg.rounds)
                        } else {
                            String::new()
                        }
                    );
                    ticker.starting(k, &what);
                    k += 1;
                    let plan = CellPlan {
                        work: w.work,
                        workers: slot.workers,
                        processes: slot.processes,
                        idle: round == 1 && self.idle_at == Some(slot.work),
                        timeout: workload::reply_timeout(
                            CELL_TIMEOUT,
                            &w.work,
                            conns,
                            self.workers,
                        ),
                        warmup: workload::warmup(cfg.warmup, &w.work, conns, self.workers),
                    };
                    let outcome = cell::run_cell(cfg, target, conns, &plan);
                    ticker.done(&one_line(&what, &outcome));
                    slot.rounds.push(match outcome {
                        Ok(m) => Round::ok(round, m),
                        Err(why) => Round::na(round, why),
                    });
                }
            }
        }
        ticker.finish();
        // Report order: workload, row, level.
        slots.sort_by_key(|s| (s.work, s.row, s.level));
        let cells = slots
            .into_iter()
            .map(|s| {
                let w = &cfg.workloads[s.work];
                let work = w.work.to_string();
                let conns = w.conns[s.level];
                let name = &self.rows[s.row].name;
                match s.na {
                    Some(why) => Cell::na(&work, name, conns, why),
                    None => {
                        let mut cell = Cell::from_rounds(&work, name, conns, s.workers, s.rounds);
                        cell.processes = s.processes;
                        cell
                    }
                }
            })
            .collect();
        (cells, start.elapsed())
    }
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

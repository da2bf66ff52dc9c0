//! Running one cell: start the server pinned, measure idle memory, run the load while
//! reading the server tree's CPU and the whole machine's at the edges of the measured
//! window, stop the server.

use c10k_server::Work;

use crate::kernel_memory::{KernelMemory, KernelMemoryGrowth};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c10k_load::processes::Launcher;
use c10k_load::{LoadConfig, LoadError, LoadReport, Phase, Progress};

use crate::CompareConfig;
use crate::machine_cpu::{self, BusyReading, MachineCpu};
use crate::plan::pyfield::{self, FieldPeer};
use crate::plan::{Target, TargetKind};
use crate::proctree::{tree_cpu_reading, tree_memory};
use crate::resolution::{CpuWindow, cpu_resolution_s, idle_noise_bytes};
use crate::results::{IdleMemory, Metrics};
use crate::server::{Launch, ServerProc};

/// How often the window's edges are watched for.
const POLL: Duration = Duration::from_millis(2);

/// How long idle connections settle before memory is read (the server finishes
/// accepting; thread and fork strategies start their threads and processes).
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// Slack on top of a load's own bounds before the lab gives up waiting for it.
const LOAD_SLACK: Duration = Duration::from_secs(30);

/// A reply or connect slower than this is an error in a cell (longer when the work can
/// queue requests for longer: [`crate::workload::reply_timeout`]).
pub const CELL_TIMEOUT: Duration = Duration::from_secs(5);

/// How one round of a cell runs beyond its row and level.
#[derive(Debug, Clone, Copy)]
pub struct CellPlan {
    /// The work per request a strategy's server does (`--work`).
    pub work: Work,
    /// `--workers` for a strategy.
    pub workers: Option<usize>,
    /// `--processes` for a strategy whose connections need more descriptors than one
    /// process has ([`crate::plan::processes_for`]); the load then runs as that many
    /// processes too.
    pub processes: Option<usize>,
    /// Measure memory per idle connection first.
    pub idle: bool,
    /// A reply or connect slower than this is an error.
    pub timeout: Duration,
    /// The warm-up before the measured window.
    pub warmup: Duration,
}

fn spawn_load(
    cfg: &CompareConfig,
    plan: &CellPlan,
    config: LoadConfig,
    progress: Arc<Progress>,
) -> Result<JoinHandle<Result<LoadReport, LoadError>>, String> {
    // The calling thread is pinned to the load CPUs: this thread and the load's own
    // threads (or processes) inherit that.
    let split = plan.processes.map(|n| (n, Launcher::c10k(&cfg.server_bin)));
    std::thread::Builder::new()
        .name("c10k-lab-load".into())
        .spawn(move || match split {
            Some((n, launcher)) => c10k_load::run_processes_with(&config, n, &launcher, progress),
            None => c10k_load::run(&config, progress),
        })
        .map_err(|e| format!("cannot start the load thread: {e}"))
}

fn join_load(handle: JoinHandle<Result<LoadReport, LoadError>>) -> Result<LoadReport, String> {
    match handle.join() {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("load failed: {e}")),
        Err(_) => Err("the load thread panicked".into()),
    }
}

fn load_config(
    cfg: &CompareConfig,
    server: &ServerProc,
    conns: usize,
    plan: &CellPlan,
) -> LoadConfig {
    let mut lc = LoadConfig::new(server.addr(), cfg.app, conns, cfg.duration);
    lc.warmup = plan.warmup;
    lc.pipeline = cfg.pipeline;
    lc.size = cfg.size;
    lc.threads = cfg.load_threads.min(conns).max(1);
    lc.timeout = plan.timeout;
    lc
}

/// Opens `conns` idle connections and reads the server tree's memory before and after.
fn measure_idle(
    cfg: &CompareConfig,
    server: &ServerProc,
    conns: usize,
    plan: &CellPlan,
) -> Result<IdleMemory, String> {
    let pid = server.pid();
    let before = tree_memory(pid);
    let kernel_before = KernelMemory::read();
    let mut lc = load_config(cfg, server, conns, plan);
    lc.idle = true;
    lc.warmup = Duration::ZERO;
    // Held until stopped below; the duration only bounds it.
    lc.duration = Duration::from_secs(60);
    let budget = lc.connect_budget() + LOAD_SLACK;
    let progress = Arc::new(Progress::new());
    let handle = spawn_load(cfg, plan, lc, Arc::clone(&progress))?;
    let start = Instant::now();
    while progress.phase() == Phase::Connecting && start.elapsed() < budget {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(IDLE_SETTLE);
    let open = progress.open.load(Ordering::Relaxed);
    let after = tree_memory(pid);
    let kernel_after = KernelMemory::read();
    progress.stop();
    join_load(handle)?;
    if open == 0 {
        return Err("no idle connection could be opened".into());
    }
    let mut idle = IdleMemory::new(open, before, after, idle_noise_bytes());
    idle.kernel = Some(KernelMemoryGrowth::new(kernel_before, kernel_after, open));
    Ok(idle)
}

/// What the load phase measured.
struct LoadPhase {
    report: LoadReport,
    cpu: CpuWindow,
    machine: Option<MachineCpu>,
    memory: crate::proctree::TreeMemory,
}

/// One edge of the measured window: when, the server tree's CPU, the replies so far,
/// and the whole machine's busy time with when it was read.
type Edge = (
    Instant,
    crate::proctree::CpuReading,
    u64,
    Option<(BusyReading, Instant)>,
);

/// The machine's busy time now, with when it was read.
fn machine_now() -> Option<(BusyReading, Instant)> {
    machine_cpu::read().map(|r| (r, Instant::now()))
}

/// The load phase: server CPU and replies are read when the window opens and when the
/// load is done, so that CPU and requests cover the same interval. The whole machine's
/// busy time is read beside the tree's, inside it (after it at the opening, before it
/// at the close), so the lab's own walk of /proc at the edges is not in the machine's
/// figure; it is divided by the same replies.
fn measure_load(
    cfg: &CompareConfig,
    server: &ServerProc,
    conns: usize,
    plan: &CellPlan,
) -> Result<LoadPhase, String> {
    let pid = server.pid();
    let lc = load_config(cfg, server, conns, plan);
    let bound = lc.connect_budget() + lc.warmup + lc.duration + LOAD_SLACK;
    let half = lc.duration / 2;
    let progress = Arc::new(Progress::new());
    let handle = spawn_load(cfg, plan, lc, Arc::clone(&progress))?;
    let start = Instant::now();
    let mut opened: Option<Edge> = None;
    let mut memory = None;
    let mut closed: Option<Edge> = None;
    while start.elapsed() < bound {
        let phase = progress.phase();
        if opened.is_none() && phase >= Phase::Measuring {
            let r = progress.replies.load(Ordering::Relaxed);
            let at = Instant::now();
            let tree = tree_cpu_reading(pid);
            opened = Some((at, tree, r, machine_now()));
        }
        if memory.is_none() && opened.is_some_and(|(at, ..)| at.elapsed() >= half) {
            memory = Some(tree_memory(pid));
        }
        if phase == Phase::Done {
            let machine = machine_now();
            let tree = tree_cpu_reading(pid);
            let r = progress.replies.load(Ordering::Relaxed);
            closed = Some((Instant::now(), tree, r, machine));
            break;
        }
        std::thread::sleep(POLL);
    }
    if closed.is_none() {
        progress.stop();
    }
    let report = join_load(handle)?;
    let server_cpus = cfg.server_cpus.as_ref().map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        Vec::len,
    );
    let tick_s = 1.0 / c10k_load::cpu::ticks_per_second();
    let machine = match (opened, closed) {
        (Some((_, _, r0, Some((m0, t0)))), Some((_, _, r1, Some((m1, t1))))) => {
            Some(MachineCpu::over(
                m0,
                m1,
                t1.saturating_duration_since(t0).as_secs_f64(),
                r1.saturating_sub(r0),
                tick_s,
            ))
        }
        _ => None,
    };
    let cpu = match (opened, closed) {
        (Some((t0, c0, r0, _)), Some((t1, c1, r1, _))) => CpuWindow {
            cpu_s: (c1.times.total() - c0.times.total()).max(0.0),
            resolution_s: cpu_resolution_s(c0.tick_fields.max(c1.tick_fields), server_cpus, tick_s),
            wall_s: t1.saturating_duration_since(t0).as_secs_f64(),
            requests: r1.saturating_sub(r0),
        },
        _ => CpuWindow {
            cpu_s: 0.0,
            resolution_s: cpu_resolution_s(0, server_cpus, tick_s),
            wall_s: 0.0,
            requests: 0,
        },
    };
    let memory = memory.unwrap_or_else(|| tree_memory(pid));
    Ok(LoadPhase {
        report,
        cpu,
        machine,
        memory,
    })
}

/// The load generator's own CPU per reply over its window, microseconds: null without
/// replies or below resolution (each load thread reads its user and system time in
/// whole clock ticks, and may be running as it is read).
pub fn load_cpu_per_request_us(report: &LoadReport) -> Option<f64> {
    let threads = report.threads.max(1);
    CpuWindow {
        cpu_s: report.cpu_user_s + report.cpu_sys_s,
        resolution_s: cpu_resolution_s(
            2 * threads,
            threads,
            1.0 / c10k_load::cpu::ticks_per_second(),
        ),
        wall_s: report.window_s,
        requests: report.requests,
    }
    .figures()
    .per_request_us
}

/// Runs one round of `target` at `conns` connections (the caller checked that it
/// can): its figures, or why there are none.
pub fn run_cell(
    cfg: &CompareConfig,
    target: &Target,
    conns: usize,
    plan: &CellPlan,
) -> Result<Metrics, String> {
    let field = match &target.kind {
        TargetKind::Peer { command } => FieldPeer::parse_command(command),
        TargetKind::Strategy => None,
    };
    let launch = match (&target.kind, &field) {
        (_, Some((peer, procs, python))) => Launch::Field {
            peer: *peer,
            python,
            procs: *procs,
            conns,
            work: plan.work,
        },
        (TargetKind::Strategy, None) => Launch::C10k {
            bin: &cfg.server_bin,
            work: plan.work,
            strategy: &target.name,
            app: cfg.app.name(),
            workers: plan.workers,
            processes: plan.processes,
        },
        (TargetKind::Peer { command }, None) => Launch::Peer { command },
    };
    let mut server = ServerProc::start(&launch, cfg.server_cpus.as_deref())
        .map_err(|why| format!("did not start: {why}"))?;
    if field.is_some() {
        // Before it is measured: it echoes, and does its wait.
        if let Err(why) = pyfield::check(server.addr(), &plan.work) {
            let tail = server.stderr_tail();
            server.stop();
            return Err(format!("the peer check failed: {why}; server: {tail}"));
        }
    }
    let idle = if plan.idle {
        measure_idle(cfg, &server, conns, plan).ok()
    } else {
        None
    };
    let measured = measure_load(cfg, &server, conns, plan);
    let tail = server.stderr_tail();
    let clean_exit = server.stop();
    let LoadPhase {
        report,
        cpu,
        machine,
        memory,
    } = measured.map_err(|why| format!("{why}; server: {tail}"))?;
    if report.requests == 0 {
        return Err(match report.warnings.last() {
            Some(why) => format!("no reply in the window: {why}"),
            None => "no reply in the window".into(),
        });
    }
    let figures = cpu.figures();
    Ok(Metrics {
        throughput_rps: report.throughput_rps,
        p50_us: report.p50_us,
        p90_us: report.p90_us,
        p99_us: report.p99_us,
        p999_us: report.p999_us,
        max_us: report.max_us,
        errors: report.errors.total,
        connected: report.connected,
        server_cpu_s: cpu.cpu_s,
        server_cpu_resolution_s: cpu.resolution_s,
        server_cpu_window_s: cpu.wall_s,
        server_busy_percent: figures.busy_percent,
        server_cpu_requests: cpu.requests,
        server_cpu_per_request_us: figures.per_request_us,
        server_cpu_note: figures.note,
        machine_cpu: machine,
        load_cpu_per_request_us: load_cpu_per_request_us(&report),
        server_memory: memory,
        idle,
        load_bound: report.load_bound,
        clean_exit,
        load: report,
    })
}

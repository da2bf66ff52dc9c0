//! Running one cell: start the server pinned, measure idle memory, run the load while
//! reading the server tree's CPU at the edges of the measured window, stop the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c10k_load::{LoadConfig, LoadError, LoadReport, Phase, Progress};

use crate::CompareConfig;
use crate::plan::{Target, TargetKind};
use crate::proctree::{tree_cpu, tree_memory};
use crate::results::{Cell, IdleMemory, Metrics};
use crate::server::{Launch, ServerProc};

/// How often the window's edges are watched for.
const POLL: Duration = Duration::from_millis(2);

/// How long idle connections settle before memory is read (the server finishes
/// accepting; thread and fork strategies start their threads and processes).
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// Slack on top of a load's own bounds before the lab gives up waiting for it.
const LOAD_SLACK: Duration = Duration::from_secs(30);

/// A reply or connect slower than this is an error in a cell.
const CELL_TIMEOUT: Duration = Duration::from_secs(5);

fn spawn_load(
    config: LoadConfig,
    progress: Arc<Progress>,
) -> Result<JoinHandle<Result<LoadReport, LoadError>>, String> {
    // The calling thread is pinned to the load CPUs: this thread and the load's own
    // threads inherit that.
    std::thread::Builder::new()
        .name("c10k-lab-load".into())
        .spawn(move || c10k_load::run(&config, progress))
        .map_err(|e| format!("cannot start the load thread: {e}"))
}

fn join_load(handle: JoinHandle<Result<LoadReport, LoadError>>) -> Result<LoadReport, String> {
    match handle.join() {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("load failed: {e}")),
        Err(_) => Err("the load thread panicked".into()),
    }
}

fn load_config(cfg: &CompareConfig, server: &ServerProc, conns: usize) -> LoadConfig {
    let mut lc = LoadConfig::new(server.addr(), cfg.app, conns, cfg.duration);
    lc.warmup = cfg.warmup;
    lc.pipeline = cfg.pipeline;
    lc.size = cfg.size;
    lc.threads = cfg.load_threads.min(conns).max(1);
    lc.timeout = CELL_TIMEOUT;
    lc
}

/// Opens `conns` idle connections and reads the server tree's memory before and after.
fn measure_idle(
    cfg: &CompareConfig,
    server: &ServerProc,
    conns: usize,
) -> Result<IdleMemory, String> {
    let pid = server.pid();
    let before = tree_memory(pid);
    let mut lc = load_config(cfg, server, conns);
    lc.idle = true;
    lc.warmup = Duration::ZERO;
    // Held until stopped below; the duration only bounds it.
    lc.duration = Duration::from_secs(60);
    let budget = lc.connect_budget() + LOAD_SLACK;
    let progress = Arc::new(Progress::new());
    let handle = spawn_load(lc, Arc::clone(&progress))?;
    let start = Instant::now();
    while progress.phase() == Phase::Connecting && start.elapsed() < budget {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(IDLE_SETTLE);
    let open = progress.open.load(Ordering::Relaxed);
    let after = tree_memory(pid);
    progress.stop();
    join_load(handle)?;
    if open == 0 {
        return Err("no idle connection could be opened".into());
    }
    let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / open as f64;
    Ok(IdleMemory {
        open,
        before,
        after,
        pss_bytes_per_conn: per(after.pss_kib, before.pss_kib),
        rss_bytes_per_conn: per(after.rss_kib, before.rss_kib),
    })
}

/// The load phase: server CPU and replies are read when the window opens and when the
/// load is done, so that CPU and requests cover the same interval.
fn measure_load(
    cfg: &CompareConfig,
    server: &ServerProc,
    conns: usize,
) -> Result<(LoadReport, f64, f64, u64, crate::proctree::TreeMemory), String> {
    let pid = server.pid();
    let lc = load_config(cfg, server, conns);
    let bound = lc.connect_budget() + lc.warmup + lc.duration + LOAD_SLACK;
    let half = lc.duration / 2;
    let progress = Arc::new(Progress::new());
    let handle = spawn_load(lc, Arc::clone(&progress))?;
    let start = Instant::now();
    let mut opened: Option<(Instant, f64, u64)> = None;
    let mut memory = None;
    let mut closed = None;
    while start.elapsed() < bound {
        let phase = progress.phase();
        if opened.is_none() && phase >= Phase::Measuring {
            let r = progress.replies.load(Ordering::Relaxed);
            opened = Some((Instant::now(), tree_cpu(pid).total(), r));
        }
        if memory.is_none() && opened.is_some_and(|(at, _, _)| at.elapsed() >= half) {
            memory = Some(tree_memory(pid));
        }
        if phase == Phase::Done {
            let r = progress.replies.load(Ordering::Relaxed);
            closed = Some((tree_cpu(pid).total(), r, Instant::now()));
            break;
        }
        std::thread::sleep(POLL);
    }
    if closed.is_none() {
        progress.stop();
    }
    let report = join_load(handle)?;
    let (cpu, wall, requests) = match (opened, closed) {
        (Some((t0, c0, r0)), Some((c1, r1, t1))) => (
            (c1 - c0).max(0.0),
            t1.saturating_duration_since(t0).as_secs_f64(),
            r1.saturating_sub(r0),
        ),
        _ => (0.0, 0.0, 0),
    };
    let memory = memory.unwrap_or_else(|| tree_memory(pid));
    Ok((report, cpu, wall, requests, memory))
}

/// Runs `target` at `conns` connections (the caller checked that it can).
pub fn run_cell(cfg: &CompareConfig, target: &Target, conns: usize) -> Cell {
    let launch = match &target.kind {
        TargetKind::Strategy => Launch::C10k {
            bin: &cfg.server_bin,
            strategy: &target.name,
            app: cfg.app.name(),
            workers: (target.name == c10k_server::Strategy::Prefork.name()).then_some(conns),
        },
        TargetKind::Peer { command } => Launch::Peer { command },
    };
    let mut server = match ServerProc::start(&launch, cfg.server_cpus.as_deref()) {
        Ok(s) => s,
        Err(why) => return Cell::na(&target.name, conns, format!("did not start: {why}")),
    };
    let idle = if cfg.idle_phase {
        measure_idle(cfg, &server, conns).ok()
    } else {
        None
    };
    let measured = measure_load(cfg, &server, conns);
    let tail = server.stderr_tail();
    let clean_exit = server.stop();
    let (report, cpu, wall, requests, memory) = match measured {
        Ok(m) => m,
        Err(why) => return Cell::na(&target.name, conns, format!("{why}; server: {tail}")),
    };
    if report.requests == 0 {
        let why = report
            .warnings
            .last()
            .cloned()
            .unwrap_or_else(|| "no reply in the window".into());
        return Cell::na(&target.name, conns, format!("no reply: {why}"));
    }
    Cell {
        target: target.name.clone(),
        conns,
        status: "ok".into(),
        reason: None,
        metrics: Some(Metrics {
            throughput_rps: report.throughput_rps,
            p50_us: report.p50_us,
            p90_us: report.p90_us,
            p99_us: report.p99_us,
            p999_us: report.p999_us,
            max_us: report.max_us,
            errors: report.errors.total,
            connected: report.connected,
            server_cpu_s: cpu,
            server_busy_percent: if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
            server_cpu_requests: requests,
            server_cpu_per_request_us: (requests > 0).then(|| cpu / requests as f64 * 1e6),
            server_memory: memory,
            idle,
            load_bound: report.load_bound,
            clean_exit,
            load: report,
        }),
    }
}

//! Workloads: the work a server does per request in a comparison (`--work`), the
//! concurrency levels each one runs at, the workers each strategy gets for it, and how
//! the server is told.
//!
//! The answer to "which strategy?" depends on the work per request: CPU-heavy work is
//! bound by cores, a blocking call stalls an event loop's every connection, an
//! asynchronous wait does not. So the matrix runs once per workload.

use std::time::Duration;

use c10k_server::Work;

use crate::plan::{Target, TargetKind};

/// Concurrency levels of the full run for the workload `none` (the trivial request; at
/// 10 connections the load generator is the bottleneck, so that level is left to
/// `--quick` and `--conns`).
pub const NONE_CONNS: [usize; 3] = [100, 1_000, 10_000];

/// Concurrency levels of the full run for a workload with work.
pub const WORK_CONNS: [usize; 2] = [100, 1_000];

/// Concurrency levels of `--quick` for `none`.
pub const QUICK_NONE_CONNS: [usize; 2] = [10, 1_000];

/// Concurrency levels of `--quick` for a workload with work.
pub const QUICK_WORK_CONNS: [usize; 1] = [100];

/// `pool`'s size per server CPU under a blocking wait: a pool sized for blocking calls,
/// as a user would size it (each call holds a thread for its whole wait).
pub const POOL_PER_CPU_FOR_BLOCKING: usize = 64;

/// The workloads of the full run.
pub fn default_works() -> Vec<Work> {
    ["none", "cpu=200us", "wait=2ms,blocking", "wait=2ms,async"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The workloads of `--quick`.
pub fn quick_works() -> Vec<Work> {
    ["none", "wait=2ms,blocking"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The levels a workload runs at when `--conns` does not say.
pub fn default_levels(work: &Work, quick: bool) -> Vec<usize> {
    match (work.is_none(), quick) {
        (true, false) => NONE_CONNS.to_vec(),
        (false, false) => WORK_CONNS.to_vec(),
        (true, true) => QUICK_NONE_CONNS.to_vec(),
        (false, true) => QUICK_WORK_CONNS.to_vec(),
    }
}

/// One workload of a comparison: the work and its concurrency levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The work per request.
    pub work: Work,
    /// The concurrency levels (columns).
    pub conns: Vec<usize>,
}

/// `--workers` for a row under a workload: `prefork` gets its process count sized to
/// the cell (its concurrency), `pool` under a blocking wait a pool sized for blocking
/// calls, every other strategy `workers`; a peer gets none.
pub fn workers_for(target: &Target, work: &Work, conns: usize, workers: usize) -> Option<usize> {
    if target.kind != TargetKind::Strategy {
        return None;
    }
    let name = target.name.as_str();
    Some(if name == c10k_server::Strategy::Prefork.name() {
        conns
    } else if name == c10k_server::Strategy::Pool.name() {
        pool_workers(work, workers)
    } else {
        workers
    })
}

/// `pool`'s size under `work`, with `workers` the server CPUs' worth of workers.
pub fn pool_workers(work: &Work, workers: usize) -> usize {
    if work.blocking_wait().is_zero() {
        workers
    } else {
        (POOL_PER_CPU_FOR_BLOCKING * workers).min(1024)
    }
}

/// Why `target` cannot do `work`, if it cannot: an external server does no
/// per-request work, and a strategy that runs in the kernel runs no code of ours per
/// request.
pub fn cannot_work(target: &Target, work: &Work) -> Option<String> {
    if work.is_none() {
        return None;
    }
    match &target.kind {
        // The CPython field does the work itself (bench/py/field.py --work).
        TargetKind::Peer { command }
            if crate::plan::pyfield::FieldPeer::parse_command(command).is_some() =>
        {
            None
        }
        TargetKind::Peer { .. } => Some(
            "a peer (an external server) does no per-request work: --work applies to c10k's \
             strategies"
                .into(),
        ),
        TargetKind::Strategy if target.item.as_deref() == Some("5") => Some(
            "its echo runs in the kernel, as an eBPF program: no user-space code runs per \
             request to do the work"
                .into(),
        ),
        TargetKind::Strategy => None,
    }
}

/// The longest a request can wait behind the others on one event-loop worker: every
/// request of a worker waits for the blocking work (CPU and blocking wait) of the
/// others, `conns x work / workers` (1,000 x 2 ms = 2 s with one worker).
pub fn worst_queue(work: &Work, conns: usize, workers: usize) -> Duration {
    let holds = work.cpu + work.blocking_wait();
    holds.saturating_mul(u32::try_from(conns).unwrap_or(u32::MAX))
        / u32::try_from(workers.max(1)).unwrap_or(u32::MAX)
}

/// The longest a reply may take before the load counts an error: `base`, or twice the
/// worst queue plus the asynchronous wait, when that is longer.
pub fn reply_timeout(base: Duration, work: &Work, conns: usize, workers: usize) -> Duration {
    base.max((worst_queue(work, conns, workers) + work.async_wait()).saturating_mul(2))
}

/// The warm-up of a cell: `base`, or one pass through the worst queue when that is
/// longer, so that the window opens in the steady state (a stalled event loop's
/// first replies come back in order over that pass).
pub fn warmup(base: Duration, work: &Work, conns: usize, workers: usize) -> Duration {
    base.max(worst_queue(work, conns, workers))
}

/// `2ms` as "2 ms", `200us` as "200 us", `1.5s` as "1.5 s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "us")
    } else {
        (s * 1e9, "ns")
    };
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

/// The work in words: "no work per request", "200 us of CPU per request", "a 2 ms
/// blocking call per request", "200 us of CPU and a 1 ms asynchronous wait per request".
pub fn describe(work: &Work) -> String {
    if work.is_none() {
        return "no work per request".into();
    }
    let mut parts = Vec::new();
    if !work.cpu.is_zero() {
        parts.push(format!("{} of CPU", fmt_duration(work.cpu)));
    }
    if !work.blocking_wait().is_zero() {
        parts.push(format!(
            "a {} blocking call",
            fmt_duration(work.blocking_wait())
        ));
    }
    if !work.async_wait().is_zero() {
        parts.push(format!(
            "a {} asynchronous wait",
            fmt_duration(work.async_wait())
        ));
    }
    format!("{} per request", parts.join(" and "))
}

/// What a handler with this work is like, for the one-line advice: "does little per
/// request", "burns CPU", "calls a blocking library", "awaits asynchronous I/O".
pub fn situation(work: &Work) -> String {
    match (
        work.is_none(),
        !work.cpu.is_zero(),
        !work.blocking_wait().is_zero(),
        !work.async_wait().is_zero(),
    ) {
        (true, ..) => "does little per request".into(),
        (_, true, false, false) => format!("burns CPU ({} a request)", fmt_duration(work.cpu)),
        (_, false, true, false) => format!(
            "calls a blocking library ({} a call)",
            fmt_duration(work.blocking_wait())
        ),
        (_, false, false, true) => format!(
            "awaits asynchronous I/O ({} a request)",
            fmt_duration(work.async_wait())
        ),
        _ => format!("does {}", describe(work).trim_end_matches(" per request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::strategy_target;
    use c10k_server::Strategy;

    fn w(s: &str) -> Work {
        s.parse().unwrap()
    }

    #[test]
    fn defaults() {
        let names: Vec<String> = default_works().iter().map(Work::to_string).collect();
        assert_eq!(
            names,
            ["none", "cpu=200us", "wait=2ms,blocking", "wait=2ms,async"]
        );
        assert_eq!(quick_works().len(), 2);
        assert_eq!(default_levels(&w("none"), false), NONE_CONNS);
        assert_eq!(default_levels(&w("cpu=200us"), false), [100, 1_000]);
        assert_eq!(default_levels(&w("wait=2ms,blocking"), true), [100]);
    }

    #[test]
    fn words() {
        assert_eq!(describe(&w("none")), "no work per request");
        assert_eq!(describe(&w("cpu=200us")), "200 us of CPU per request");
        assert_eq!(
            describe(&w("wait=2ms,blocking")),
            "a 2 ms blocking call per request"
        );
        assert_eq!(
            describe(&w("cpu=100us,wait=1500us,async")),
            "100 us of CPU and a 1.5 ms asynchronous wait per request"
        );
        assert_eq!(
            situation(&w("wait=2ms,async")),
            "awaits asynchronous I/O (2 ms a request)"
        );
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2 s");
    }

    #[test]
    fn workers_per_row() {
        let et = strategy_target(Strategy::EpollEt);
        let pool = strategy_target(Strategy::Pool);
        let prefork = strategy_target(Strategy::Prefork);
        let blocking = w("wait=2ms,blocking");
        assert_eq!(workers_for(&et, &blocking, 1_000, 2), Some(2));
        assert_eq!(workers_for(&pool, &blocking, 1_000, 1), Some(64));
        assert_eq!(workers_for(&pool, &w("wait=2ms,async"), 1_000, 1), Some(1));
        assert_eq!(workers_for(&prefork, &w("none"), 100, 1), Some(100));
    }

    #[test]
    fn peers_and_the_kernel_do_no_work() {
        let kernel = strategy_target(Strategy::Kernel);
        assert!(cannot_work(&kernel, &w("none")).is_none());
        assert!(
            cannot_work(&kernel, &w("cpu=1us"))
                .unwrap()
                .contains("kernel")
        );
        let mut peer = strategy_target(Strategy::EpollEt);
        peer.kind = TargetKind::Peer {
            command: "x".into(),
        };
        assert!(
            cannot_work(&peer, &w("wait=1ms,async"))
                .unwrap()
                .contains("peer")
        );
        assert!(cannot_work(&strategy_target(Strategy::Thread), &w("cpu=1us")).is_none());
    }

    /// The default workloads queue at most 1,000 x 2 ms = 2 s behind a blocking event
    /// loop: the lab's 5 s reply timeout holds; a longer wait raises it.
    #[test]
    fn the_reply_timeout_covers_the_queueing() {
        let base = Duration::from_secs(5);
        for work in default_works() {
            for &c in &default_levels(&work, false) {
                assert_eq!(reply_timeout(base, &work, c, 1), base, "{work} x {c}");
            }
        }
        assert_eq!(
            reply_timeout(base, &w("wait=10ms,blocking"), 1_000, 1),
            Duration::from_secs(20)
        );
        // The warm-up covers one pass through the queue.
        let half = Duration::from_millis(500);
        assert_eq!(
            warmup(half, &w("wait=2ms,blocking"), 1_000, 1),
            Duration::from_secs(2)
        );
        assert_eq!(warmup(half, &w("wait=2ms,blocking"), 100, 1), half);
        assert_eq!(warmup(half, &w("wait=2ms,blocking"), 1_000, 4), half);
        assert_eq!(warmup(half, &w("cpu=200us"), 1_000, 1), half);
    }
}

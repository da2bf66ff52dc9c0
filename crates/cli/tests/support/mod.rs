//! Helpers of the hostile-client tests (emfile, abrupt_peers, slowloris): what they
//! measure of a server's process tree from /proc (CPU time, open descriptors). Their
//! strategy lists are `strategy_tests!` invocations (common/strategies.rs).
#![allow(dead_code)] // each test crate uses a different subset

use std::time::{Duration, Instant};

use crate::common::descendants;

/// The process and its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

/// CPU time (nanoseconds on a CPU, from `/proc/P/task/T/schedstat`) of every thread
/// of the process tree rooted at `pid`. Processes that exit in between are lost, so a
/// difference of two readings can only under-count what exited.
pub fn tree_cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for p in tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
                continue;
            };
            total += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU used by the tree over `window`, as a fraction of one core.
pub fn tree_cpu_share(pid: u32, window: Duration) -> f64 {
    let before = tree_cpu_ns(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = tree_cpu_ns(pid);
    let spent = after.saturating_sub(before) as f64;
    spent / t0.elapsed().as_nanos() as f64
}

/// Open descriptors of the whole process tree.
pub fn tree_fds(pid: u32) -> usize {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count())
        .sum()
}

/// Waits (at most `limit`) until the tree's descriptor count is at most `baseline`;
/// returns the last count and how long it took.
pub fn wait_fds_at_most(pid: u32, baseline: usize, limit: Duration) -> (usize, Duration) {
    let t0 = Instant::now();
    loop {
        let n = tree_fds(pid);
        if n <= baseline || t0.elapsed() > limit {
            return (n, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

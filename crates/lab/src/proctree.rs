//! A server's whole process tree, read from /proc: its CPU time and its memory.
//!
//! The fork and prefork strategies serve from child processes, so the root's own
//! figures would miss most of the work. The tree is every process whose parent chain
//! leads to the root. CPU time is the run time of each live process in it (all its
//! threads: the scheduler's nanosecond counters, since `utime + stime` round each
//! process down to whole clock ticks), plus `cutime + cstime` (the children each one
//! has already reaped, in whole clock ticks), so a child that exits during the window
//! is still counted. A reading says how many of its parts were whole clock ticks
//! ([`CpuReading::tick_fields`]): that is its resolution. Memory is the sum of PSS
//! (`/proc/PID/smaps_rollup`: shared pages divided among the processes that share
//! them, so forked children are not counted many times over), and of RSS for
//! comparison.

use std::collections::HashMap;

use c10k_load::cpu::{CpuTimes, stat_fields, ticks_per_second};

/// One process of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Its id.
    pub pid: u32,
    /// Its start time (clock ticks after boot), to tell it from a later process that
    /// reuses the id.
    pub start: u64,
}

fn read_stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// One process's line of a tree: its parent, its CPU with its reaped children, its
/// start time, and how many of the CPU's parts were read in whole clock ticks.
struct Parsed {
    ppid: u32,
    cpu: CpuTimes,
    start: u64,
    tick_fields: usize,
}

/// A process's [`Parsed`] from its stat line, with the live part taken from the
/// scheduler's nanosecond counters when they say more.
fn parse(pid: u32, stat: &str) -> Option<Parsed> {
    let f = stat_fields(stat)?;
    let num = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
    // Index 0 is field 3 (state): ppid is field 4, utime..cstime 14..17, start 22.
    let ppid = u32::try_from(num(1)?).ok()?;
    let tick = ticks_per_second();
    let live = CpuTimes {
        user: num(11)? as f64 / tick,
        sys: num(12)? as f64 / tick,
    };
    let reaped = CpuTimes {
        user: num(13)? as f64 / tick,
        sys: num(14)? as f64 / tick,
    };
    // utime and stime are each rounded down to a tick, and so are cutime and cstime
    // (kept in nanoseconds, reported in ticks); a process that reaped nothing reads an
    // exact zero there.
    let mut tick_fields = 0;
    let live = match precise_runtime(pid) {
        Some(precise) if precise >= live.user + live.sys => rescale(live, precise),
        _ => {
            tick_fields += 2;
            live
        }
    };
    if reaped.user + reaped.sys > 0.0 {
        tick_fields += 2;
    }
    Some(Parsed {
        ppid,
        cpu: live + reaped,
        start: num(19)?,
        tick_fields,
    })
}

/// CPU seconds of all threads of a live process, from `/proc/PID/task/*/schedstat`
/// (nanoseconds). `utime`/`stime` are whole clock ticks per process, so a thousand
/// prefork workers that each ran 5 ms read as zero: the sum of the precise counters
/// does not lose them.
fn precise_runtime(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// `ticks` with its total replaced by `total`, keeping its user/system split (all
/// user when the ticks saw nothing). Never less than the ticks said.
fn rescale(ticks: CpuTimes, total: f64) -> CpuTimes {
    let sum = ticks.user + ticks.sys;
    if total <= sum {
        return ticks;
    }
    if sum <= 0.0 {
        return CpuTimes {
            user: total,
            sys: 0.0,
        };
    }
    CpuTimes {
        user: total * ticks.user / sum,
        sys: total * ticks.sys / sum,
    }
}

/// The processes of the tree rooted at `root` (the root first), with their CPU time
/// and how many of its parts were whole clock ticks.
fn tree_parsed(root: u32) -> Vec<(Proc, CpuTimes, usize)> {
    let mut children: HashMap<u32, Vec<(Proc, CpuTimes, usize)>> = HashMap::new();
    let mut root_entry = None;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(parsed) = read_stat(pid).as_deref().and_then(|st| parse(pid, st)) else {
                continue;
            };
            let p = (
                Proc {
                    pid,
                    start: parsed.start,
                },
                parsed.cpu,
                parsed.tick_fields,
            );
            if pid == root {
                root_entry = Some(p);
            } else {
                children.entry(parsed.ppid).or_default().push(p);
            }
        }
    }
    let Some(root_entry) = root_entry else {
        return Vec::new();
    };
    let mut out = vec![root_entry];
    let mut at = 0;
    // Bounded: every process is visited once (a pid has one parent).
    while at < out.len() {
        if let Some(kids) = children.remove(&out[at].0.pid) {
            out.extend(kids);
        }
        at += 1;
    }
    out
}

/// The processes of the tree rooted at `root` (the root first), with their CPU time.
pub fn tree(root: u32) -> Vec<(Proc, CpuTimes)> {
    tree_parsed(root)
        .into_iter()
        .map(|(p, c, _)| (p, c))
        .collect()
}

/// A reading of a tree's CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuReading {
    /// User+system seconds, reaped children included.
    pub times: CpuTimes,
    /// How many of the summed counters were whole clock ticks (each rounded down by
    /// less than one tick): the reading's resolution is this many ticks, plus what the
    /// scheduler has not yet added for a thread running as it is read.
    pub tick_fields: usize,
}

/// The tree's CPU time, with its resolution.
pub fn tree_cpu_reading(root: u32) -> CpuReading {
    tree_parsed(root)
        .into_iter()
        .fold(CpuReading::default(), |acc, (_, c, t)| CpuReading {
            times: acc.times + c,
            tick_fields: acc.tick_fields + t,
        })
}

/// User+system CPU seconds of the tree, reaped children included.
pub fn tree_cpu(root: u32) -> CpuTimes {
    tree_cpu_reading(root).times
}

/// Memory of a tree, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeMemory {
    /// Proportional set size: shared pages divided among their sharers.
    pub pss_kib: u64,
    /// Resident set size, summed (counts shared pages once per process).
    pub rss_kib: u64,
    /// Processes in the tree.
    pub processes: usize,
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// PSS and RSS of the tree rooted at `root`.
pub fn tree_memory(root: u32) -> TreeMemory {
    let mut m = TreeMemory::default();
    for (p, _) in tree(root) {
        let rss = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
            .ok()
            .and_then(|s| field_kib(&s, "VmRSS:"))
            .unwrap_or(0);
        let pss = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid))
            .ok()
            .and_then(|s| field_kib(&s, "Pss:"))
            .unwrap_or(rss);
        m.rss_kib += rss;
        m.pss_kib += pss;
        m.processes += 1;
    }
    m
}

/// Whether `p` is still the same live process.
pub fn alive(p: Proc) -> bool {
    read_stat(p.pid)
        .as_deref()
        .and_then(|st| parse(p.pid, st))
        .is_some_and(|parsed| parsed.start == p.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A thousand prefork workers that each ran a few milliseconds read as zero CPU
    /// when only whole clock ticks were summed (`prefork x 1,000` showed 0 us/request).
    #[test]
    fn regression_sub_tick_processes_are_counted() {
        let zero = CpuTimes {
            user: 0.0,
            sys: 0.0,
        };
        let r = rescale(zero, 0.005);
        assert!((r.user + r.sys - 0.005).abs() < 1e-12);
        let split = rescale(
            CpuTimes {
                user: 0.01,
                sys: 0.03,
            },
            0.08,
        );
        assert!((split.user - 0.02).abs() < 1e-12 && (split.sys - 0.06).abs() < 1e-12);
        let never_less = rescale(
            CpuTimes {
                user: 0.02,
                sys: 0.0,
            },
            0.01,
        );
        assert_eq!(never_less.user, 0.02);
        // This test process has run: its precise counter says so.
        assert!(precise_runtime(std::process::id()).is_some_and(|s| s > 0.0));
    }

    #[test]
    fn a_tree_counts_its_children() {
        // sh forks a sleeping child and waits for it.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        let root = child.id();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = tree(root);
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(found.len() >= 2, "sh and its sleep: {found:?}");
        assert!(found.iter().all(|(p, _)| alive(*p)));
        let mem = tree_memory(root);
        assert!(
            mem.processes >= 2 && mem.rss_kib > 0 && mem.pss_kib > 0,
            "{mem:?}"
        );
        for (p, _) in &found[1..] {
            let pid = rustix::process::Pid::from_raw(p.pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(found[0].0));
        assert!(tree(root).is_empty());
        assert!(tree_cpu(std::process::id()).total() >= 0.0);
    }
}

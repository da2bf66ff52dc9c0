//! CPU pinning: the server on its CPUs, the load on others, so that neither steals the
//! other's core (`taskset` without the tool).
//!
//! A child process inherits the affinity of the thread that forks it, and threads
//! inherit it from the thread that spawns them. So the server is pinned by pinning the
//! spawning thread around `Command::spawn` (every thread and process the server ever
//! creates inherits it, fork and prefork children included), and the load by pinning
//! its thread before it starts its event-loop threads.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Parses a CPU list such as `0`, `1,3` or `0-3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("'{part}' is not a CPU list: use e.g. 0, 1,3 or 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b >= CpuSet::MAX_CPU {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                if n >= CpuSet::MAX_CPU {
                    return Err(bad());
                }
                cpus.push(n);
            }
        }
    }
    if cpus.is_empty() {
        return Err("an empty CPU list: use e.g. 0 or 0-3".into());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats a CPU list the way [`parse_cpus`] reads it.
pub fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins the calling thread to `cpus`. Returns the previous affinity.
pub fn pin_current_thread(cpus: &[usize]) -> Result<CpuSet, String> {
    let before = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    sched_setaffinity(None, &set).map_err(|e| {
        format!(
            "cannot pin to CPU {}: {e} (this machine has {} CPUs available)",
            format_cpus(cpus),
            before.count()
        )
    })?;
    Ok(before)
}

/// Restores an affinity returned by [`pin_current_thread`].
pub fn restore(before: &CpuSet) {
    let _ = sched_setaffinity(None, before);
}

/// Runs `f` with the calling thread pinned to `cpus` (when given), then restores the
/// affinity. `Err` when pinning failed (then `f` did not run).
pub fn with_pinned<T>(cpus: Option<&[usize]>, f: impl FnOnce() -> T) -> Result<T, String> {
    match cpus {
        None => Ok(f()),
        Some(cpus) => {
            let before = pin_current_thread(cpus)?;
            let out = f();
            restore(&before);
            Ok(out)
        }
    }
}

/// The CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0"), Ok(vec![0]));
        assert_eq!(parse_cpus("3,1,1"), Ok(vec![1, 3]));
        assert_eq!(parse_cpus("0-2"), Ok(vec![0, 1, 2]));
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("").is_err());
        assert_eq!(format_cpus(&[0, 2]), "0,2");
    }

    #[test]
    fn pins_a_child_by_inheritance() {
        let cpus = available_cpus();
        let one = [cpus[0]];
        let seen = std::thread::spawn(move || {
            with_pinned(Some(&one), || {
                std::process::Command::new("cat")
                    .arg("/proc/self/status")
                    .output()
                    .unwrap()
            })
            .unwrap()
        })
        .join()
        .unwrap();
        let text = String::from_utf8_lossy(&seen.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some(&*cpus[0].to_string()));
        assert!(pin_current_thread(&[CpuSet::MAX_CPU - 1]).is_err());
    }
}

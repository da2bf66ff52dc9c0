//! CPU time from /proc: one thread's own (the load generator measures itself) and a
//! whole process's.

/// User and system CPU seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// User-mode seconds.
    pub user: f64,
    /// Kernel-mode seconds.
    pub sys: f64,
}

impl CpuTimes {
    /// User plus system.
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    /// `self - earlier`, never negative.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: (self.user - earlier.user).max(0.0),
            sys: (self.sys - earlier.sys).max(0.0),
        }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + o.user,
            sys: self.sys + o.sys,
        }
    }
}

/// Clock ticks per second of the `stat` files.
pub fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// The fields of a `/proc/.../stat` line after the command name, which is in
/// parentheses and may itself contain spaces and parentheses.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 1..)?.split_whitespace().collect())
}

/// `utime` and `stime` (fields 14 and 15 of `stat`) of a stat line, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<CpuTimes> {
    let f = stat_fields(stat)?;
    // After the name, field 3 (state) is index 0; utime (14) is index 11.
    let user: u64 = f.get(11)?.parse().ok()?;
    let sys: u64 = f.get(12)?.parse().ok()?;
    let tick = ticks_per_second();
    Some(CpuTimes {
        user: user as f64 / tick,
        sys: sys as f64 / tick,
    })
}

/// The calling thread's CPU time (`/proc/thread-self/stat`).
pub fn thread_cpu() -> CpuTimes {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .unwrap_or_default()
}

/// This process's CPU time, all threads (`/proc/self/stat`).
pub fn process_cpu() -> CpuTimes {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        let t = parse_stat_cpu(line).unwrap();
        let tick = ticks_per_second();
        assert!((t.user - 250.0 / tick).abs() < 1e-9);
        assert!((t.sys - 50.0 / tick).abs() < 1e-9);
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let before = thread_cpu();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(thread_cpu().since(before).total() > 0.0);
        assert!(process_cpu().total() > 0.0);
    }
}

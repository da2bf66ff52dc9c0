//! The whole machine's CPU: every CPU's busy time, read from `/proc/stat`.
//!
//! A server's process tree does not hold all the CPU a request costs: softirq work
//! (the TCP stack, and all of a strategy whose work runs in the kernel, such as
//! `kernel`'s sockmap redirect) is charged to whichever CPU takes the interrupt (on
//! loopback usually the sending one, the load's) and to no process of the server.
//! The first line of `/proc/stat` sums every CPU's time by state, in clock ticks; busy
//! is `user + nice + system + irq + softirq + steal` (`guest` and `guest_nice` are
//! already in `user` and `nice`; `idle` and `iowait` are not busy). Over a window it
//! holds the server, the load generator, the kernel's work for both, and anything
//! else the machine ran meanwhile: fair to every strategy, and the only figure that
//! sees a strategy whose work runs in the kernel.
//!
//! Each of the six fields is printed rounded down to a tick, and a CPU's current tick
//! is charged whole when it ends, so a window's reading is good to
//! `(6 + CPUs)` ticks ([`crate::resolution::cpu_resolution_s`]).

use serde::Serialize;

use crate::resolution::{CpuWindow, cpu_resolution_s};

/// The fields of `/proc/stat`'s `cpu` line summed as busy.
pub const BUSY_FIELDS: usize = 6;

/// One reading of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyReading {
    /// All CPUs' busy time, clock ticks.
    pub busy_ticks: u64,
    /// The CPUs listed (`cpuN` lines).
    pub cpus: usize,
}

/// The busy ticks and CPUs of a `/proc/stat` text.
pub fn parse(stat: &str) -> Option<BusyReading> {
    let mut lines = stat.lines();
    let first = lines.next()?;
    let mut words = first.split_whitespace();
    if words.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = v[..] else {
        return None;
    };
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(BusyReading {
        busy_ticks: user + nice + system + irq + softirq + steal,
        cpus: cpus.max(1),
    })
}

/// `/proc/stat` now (`None` when it cannot be read).
pub fn read() -> Option<BusyReading> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The whole machine's CPU over a cell's measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineCpu {
    /// All CPUs' busy seconds over the window.
    pub busy_s: f64,
    /// The reading's resolution: a tick per field ([`BUSY_FIELDS`]) and per CPU,
    /// seconds.
    pub resolution_s: f64,
    /// The CPUs counted.
    pub cpus: usize,
    /// The window's wall time, seconds.
    pub wall_s: f64,
    /// Replies counted over the window (the server CPU's count).
    pub requests: u64,
    /// `busy_s / requests`, microseconds; null below resolution or without replies.
    pub per_request_us: Option<f64>,
    /// `busy_s / wall_s`, percent of one CPU (up to 100 per CPU); null below
    /// resolution.
    pub busy_percent: Option<f64>,
    /// Why `per_request_us` or `busy_percent` is null.
    pub note: Option<String>,
}

impl MachineCpu {
    /// The figures of two readings `wall_s` apart, over `requests` replies.
    pub fn over(
        before: BusyReading,
        after: BusyReading,
        wall_s: f64,
        requests: u64,
        tick_s: f64,
    ) -> MachineCpu {
        let cpus = before.cpus.max(after.cpus);
        MachineCpu::of(
            CpuWindow {
                cpu_s: after.busy_ticks.saturating_sub(before.busy_ticks) as f64 * tick_s,
                resolution_s: cpu_resolution_s(BUSY_FIELDS, cpus, tick_s),
                wall_s,
                requests,
            },
            cpus,
        )
    }

    /// The figures of a window's reading of `cpus` CPUs.
    pub fn of(window: CpuWindow, cpus: usize) -> MachineCpu {
        let figures = window.figures();
        MachineCpu {
            busy_s: window.cpu_s,
            resolution_s: window.resolution_s,
            cpus,
            wall_s: window.wall_s,
            requests: window.requests,
            per_request_us: figures.per_request_us,
            busy_percent: figures.busy_percent,
            note: figures.note,
        }
    }

    /// The window's reading, for the rules of [`crate::resolution`].
    pub fn window(&self) -> CpuWindow {
        CpuWindow {
            cpu_s: self.busy_s,
            resolution_s: self.resolution_s,
            wall_s: self.wall_s,
            requests: self.requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 40 9000 30 2 20 3 7 0\n\
                        cpu0 50 5 20 4500 15 1 10 2 7 0\n\
                        cpu1 50 0 20 4500 15 1 10 1 0 0\n\
                        intr 12345 0 0\n\
                        ctxt 999\n\
                        cpus_allowed_is_no_line_here 1\n";

    #[test]
    fn busy_is_everything_but_idle_and_iowait() {
        let r = parse(STAT).unwrap();
        // user+nice+system+irq+softirq+steal; guest is already in user.
        assert_eq!(r.busy_ticks, 100 + 5 + 40 + 2 + 20 + 3);
        assert_eq!(r.cpus, 2);
        assert_eq!(parse("intr 1 2\n"), None);
        assert_eq!(parse("cpu 1 2 3\n"), None, "too few fields");
        assert_eq!(parse("cpu 1 2 x 4 5 6 7 8\n"), None);
        // An old kernel without guest fields still has the eight.
        assert_eq!(parse("cpu 1 1 1 9 9 1 1 1\n").unwrap().busy_ticks, 6);
        // This machine's.
        let now = read().unwrap();
        assert!(now.cpus >= 1 && now.busy_ticks > 0, "{now:?}");
    }

    #[test]
    fn a_window_per_request_and_below_resolution() {
        let at = |busy_ticks| BusyReading {
            busy_ticks,
            cpus: 2,
        };
        // 300 ticks of 10 ms over 2 s: 3 s busy, 150% of one CPU.
        let m = MachineCpu::over(at(1_000), at(1_300), 2.0, 100_000, 0.01);
        assert!((m.busy_s - 3.0).abs() < 1e-9);
        assert!((m.resolution_s - 0.08).abs() < 1e-12, "6 fields + 2 CPUs");
        assert!((m.per_request_us.unwrap() - 30.0).abs() < 1e-9);
        assert!((m.busy_percent.unwrap() - 150.0).abs() < 1e-9);
        assert_eq!(m.note, None);
        assert_eq!(m.window().requests, 100_000);
        // 50 ticks: under ten times the 8-tick resolution.
        let few = MachineCpu::over(at(1_000), at(1_050), 2.0, 100_000, 0.01);
        assert_eq!((few.per_request_us, few.busy_percent), (None, None));
        assert!(few.note.unwrap().starts_with("below resolution"));
        // A counter that went backwards reads as nothing, never negative.
        assert_eq!(MachineCpu::over(at(9), at(5), 1.0, 10, 0.01).busy_s, 0.0);
    }
}

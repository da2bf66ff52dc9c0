//! What a reading can resolve, and the figures that fall below it.
//!
//! Two of a cell's figures come from readings much coarser than the figure:
//!
//! - **Memory per idle connection** is the growth of the server tree's PSS while the
//!   connections open, divided by the connections. PSS moves in whole pages, and the
//!   allocator grows and trims its arenas by pages whatever the connections do (the
//!   first connections of a fresh server also grow its tables and thread caches):
//!   runs on a 2-CPU VM read from -5 to +54 pages of growth, at 10 and 100
//!   connections, for event loops whose connections cost about 200 B each (5 pages
//!   at 100). So a growth under [`IDLE_NOISE_PAGES`] pages is no measurement: at N
//!   connections the figure resolves `IDLE_NOISE_PAGES x page / N` per connection,
//!   and below that (a shrinking tree included) it is "below resolution", never a
//!   number.
//! - **Server CPU** is read from /proc at the window's edges. Some counters are whole
//!   clock ticks (a tree's reaped children, or a process without per-thread
//!   counters), and the scheduler adds a running thread's time only at its next tick:
//!   a reading is good to [`CpuWindow::resolution_s`]. One under [`CPU_MIN_RESOLUTIONS`]
//!   times its resolution (a few clock ticks) is "below resolution" too, and so are the
//!   CPU per request and the busy share computed from it.
//!
//! A figure below resolution is `None` in `results.json`, with a `_note` field that says
//! why and what the resolution was; the report prints it as `< X`, the most it can
//! have been.

/// Pages of PSS growth that are the allocator's own noise (256 KiB with 4 KiB pages).
pub const IDLE_NOISE_PAGES: u64 = 64;

/// A CPU reading is a measurement from this many times its resolution (10%) up.
pub const CPU_MIN_RESOLUTIONS: f64 = 10.0;

/// The page size (4 KiB when the system does not say).
pub fn page_bytes() -> u64 {
    match rustix::param::page_size() {
        0 => 4096,
        n => n as u64,
    }
}

/// The PSS growth under which memory per connection is not measured, bytes.
pub fn idle_noise_bytes() -> u64 {
    IDLE_NOISE_PAGES * page_bytes()
}

/// Memory per idle connection from one idle phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PerConn {
    /// Bytes per connection, when the growth is a measurement.
    pub bytes: Option<f64>,
    /// The smallest figure this level can resolve: the noise floor over the
    /// connections, bytes.
    pub resolution: f64,
    /// Why `bytes` is missing.
    pub note: Option<String>,
}

/// The figure for a tree that grew by `growth_bytes` (negative: it shrank) while
/// `open` connections were open, with `noise_bytes` of noise (see
/// [`idle_noise_bytes`]).
pub fn per_conn(growth_bytes: i64, open: usize, noise_bytes: u64) -> PerConn {
    let open = open.max(1);
    let resolution = noise_bytes as f64 / open as f64;
    let kib = |b: f64| format!("{:.0} KiB", b / 1024.0);
    if growth_bytes < 0 {
        return PerConn {
            bytes: None,
            resolution,
            note: Some(format!(
                "below resolution: the tree shrank by {} while {open} connections opened \
                 (allocator noise); this level resolves {resolution:.0} B per connection \
                 ({} over {open})",
                kib(-growth_bytes as f64),
                kib(noise_bytes as f64)
            )),
        };
    }
    if (growth_bytes as u64) < noise_bytes {
        return PerConn {
            bytes: None,
            resolution,
            note: Some(format!(
                "below resolution: the tree grew by {} for {open} connections, under the \
                 {} of allocator noise; this level resolves {resolution:.0} B per \
                 connection ({} over {open})",
                kib(growth_bytes as f64),
                kib(noise_bytes as f64),
                kib(noise_bytes as f64)
            )),
        };
    }
    PerConn {
        bytes: Some(growth_bytes as f64 / open as f64),
        resolution,
        note: None,
    }
}

/// The server CPU of a measured window: what was read and how fine it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuWindow {
    /// CPU seconds read over the window (user+system, whole tree).
    pub cpu_s: f64,
    /// The reading's resolution, seconds.
    pub resolution_s: f64,
    /// The window's wall time, seconds.
    pub wall_s: f64,
    /// Replies counted over the same interval.
    pub requests: u64,
}

/// The resolution of a window's CPU: each whole-tick counter of the readings (the
/// larger count of the two edges) rounds by up to a tick, and each CPU the server may
/// run on can hold a running thread whose last tick is not counted yet.
pub fn cpu_resolution_s(tick_fields: usize, server_cpus: usize, tick_s: f64) -> f64 {
    (tick_fields + server_cpus.max(1)) as f64 * tick_s
}

/// The figures of a window's CPU reading.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFigures {
    /// Microseconds per reply.
    pub per_request_us: Option<f64>,
    /// Percent of one core.
    pub busy_percent: Option<f64>,
    /// Why they are missing.
    pub note: Option<String>,
}

impl CpuWindow {
    /// Whether the reading is under [`CPU_MIN_RESOLUTIONS`] times its resolution.
    pub fn below_resolution(&self) -> bool {
        self.cpu_s < CPU_MIN_RESOLUTIONS * self.resolution_s
    }

    /// The most the window's CPU can have been.
    pub fn cpu_bound_s(&self) -> f64 {
        self.cpu_s.max(0.0) + self.resolution_s
    }

    /// CPU per request and busy share, or why not.
    pub fn figures(&self) -> CpuFigures {
        if self.wall_s <= 0.0 {
            return CpuFigures {
                per_request_us: None,
                busy_percent: None,
                note: Some("the window's edges were not seen".into()),
            };
        }
        if self.below_resolution() {
            return CpuFigures {
                per_request_us: None,
                busy_percent: None,
                note: Some(format!(
                    "below resolution: {:.1} ms of CPU read with a resolution of {:.1} ms \
                     (whole clock ticks); a reading needs {CPU_MIN_RESOLUTIONS:.0}x its \
                     resolution",
                    self.cpu_s * 1e3,
                    self.resolution_s * 1e3
                )),
            };
        }
        let busy = Some(self.cpu_s / self.wall_s * 100.0);
        if self.requests == 0 {
            return CpuFigures {
                per_request_us: None,
                busy_percent: busy,
                note: Some("no reply in the window".into()),
            };
        }
        CpuFigures {
            per_request_us: Some(self.cpu_s / self.requests as f64 * 1e6),
            busy_percent: busy,
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOISE: u64 = 64 * 4096;

    #[test]
    fn memory_growth_under_the_noise_is_below_resolution() {
        // 8 pages over 10 connections printed as "3,277 B" before.
        let f = per_conn(8 * 4096, 10, NOISE);
        assert_eq!(f.bytes, None);
        assert!((f.resolution - 26214.4).abs() < 1e-9);
        let note = f.note.unwrap();
        assert!(note.starts_with("below resolution"), "{note}");
        assert!(note.contains("26214 B per connection"), "{note}");
        assert!(note.contains("256 KiB over 10"), "{note}");
    }

    /// `select: -2,048 B` of memory per idle connection at 10 connections.
    #[test]
    fn regression_a_shrinking_tree_is_never_a_negative_figure() {
        let f = per_conn(-5 * 4096, 10, NOISE);
        assert_eq!(f.bytes, None);
        assert!(f.note.unwrap().contains("shrank by 20 KiB"));
        // Even far beyond the noise, a shrinking tree is no figure.
        assert_eq!(per_conn(-100 * 4096, 10_000, NOISE).bytes, None);
    }

    #[test]
    fn memory_growth_over_the_noise_is_a_figure() {
        let f = per_conn(1_630_000, 10_000, NOISE);
        assert_eq!(f.bytes, Some(163.0));
        assert_eq!(f.note, None);
        assert_eq!(per_conn(NOISE as i64, 10, NOISE).bytes, Some(26214.4));
    }

    #[test]
    fn a_cpu_reading_of_a_few_ticks_is_below_resolution() {
        let tick = 0.01;
        // The root of a fork tree reaped children (2 tick fields), server on 1 CPU.
        let res = cpu_resolution_s(2, 1, tick);
        assert!((res - 0.03).abs() < 1e-12);
        let few = CpuWindow {
            cpu_s: 0.05,
            resolution_s: res,
            wall_s: 5.0,
            requests: 1_000,
        };
        assert!(few.below_resolution());
        let f = few.figures();
        assert_eq!((f.per_request_us, f.busy_percent), (None, None));
        assert!(f.note.unwrap().contains("resolution of 30.0 ms"));
        assert!((few.cpu_bound_s() - 0.08).abs() < 1e-12);

        let busy = CpuWindow { cpu_s: 4.9, ..few };
        let f = busy.figures();
        assert!((f.per_request_us.unwrap() - 4900.0).abs() < 1e-9);
        assert!((f.busy_percent.unwrap() - 98.0).abs() < 1e-9);
        assert_eq!(f.note, None);
    }
}

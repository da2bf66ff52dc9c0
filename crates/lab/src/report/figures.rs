//! A cell's figures as the report reads them: a measurement or a bound below
//! resolution ([`Shown`]), over the rounds ([`Agg`]), within one workload ([`View`]);
//! and the tables.

use std::fmt::Write as _;

use crate::aggregate::{Stat, median};
use crate::resolution::CpuWindow;
use crate::results::{Cell, Metrics, ResolutionSettings, Results, WorkloadSettings};

use super::format::{ceil_to, fmt_bytes, fmt_bytes_bound, fmt_conns, fmt_cpu, fmt_us, group};

/// What a cell shows for a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shown {
    /// A measurement.
    Value(f64),
    /// Below the reading's resolution: at most this much.
    Below(f64),
    /// Nothing to show.
    Missing,
}

impl Shown {
    /// The measurement, if it is one.
    pub fn value(self) -> Option<f64> {
        match self {
            Shown::Value(v) => Some(v),
            Shown::Below(_) | Shown::Missing => None,
        }
    }
}

/// Throughput, requests per second.
pub fn tput_shown(m: &Metrics) -> Shown {
    Shown::Value(m.throughput_rps)
}

/// Memory per idle connection: a measurement, or below the level's resolution.
pub fn idle_shown(m: &Metrics) -> Shown {
    match &m.idle {
        Some(i) => match i.pss_bytes_per_conn {
            Some(v) => Shown::Value(v),
            None => Shown::Below(i.resolution_bytes_per_conn),
        },
        None => Shown::Missing,
    }
}

/// The kernel's socket memory per idle connection (both ends of loopback).
pub fn kernel_idle_shown(m: &Metrics) -> Shown {
    match m
        .idle
        .as_ref()
        .and_then(|i| i.kernel.as_ref())
        .and_then(|k| k.bytes_per_conn)
    {
        Some(v) => Shown::Value(v),
        None => Shown::Missing,
    }
}

/// CPU per request from a window's reading: the figure when it is one, else (a
/// reading of a few clock ticks) at most what the reading plus its resolution allows.
fn per_request_shown(figure: Option<f64>, w: &CpuWindow) -> Shown {
    match figure {
        Some(v) => Shown::Value(v),
        None if w.below_resolution() && w.requests > 0 => {
            Shown::Below(w.cpu_bound_s() / w.requests as f64 * 1e6)
        }
        None => Shown::Missing,
    }
}

/// Server CPU per request: a measurement, or (a reading of a few clock ticks) at most
/// what the reading plus its resolution allows.
pub fn cpu_shown(m: &Metrics) -> Shown {
    per_request_shown(m.server_cpu_per_request_us, &m.cpu_window())
}

/// Whole-machine CPU per request, by the same rule (missing without a reading of
/// `/proc/stat`).
pub fn machine_cpu_shown(m: &Metrics) -> Shown {
    match &m.machine_cpu {
        Some(mc) => per_request_shown(mc.per_request_us, &mc.window()),
        None => Shown::Missing,
    }
}

/// The server's busy share of one core.
pub fn busy_shown(m: &Metrics) -> Shown {
    match m.server_busy_percent {
        Some(v) => Shown::Value(v),
        None => {
            let w = m.cpu_window();
            if w.below_resolution() && w.wall_s > 0.0 {
                Shown::Below(w.cpu_bound_s() / w.wall_s * 100.0)
            } else {
                Shown::Missing
            }
        }
    }
}

/// A figure of a cell over its rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    /// The median of the rounds' readings.
    pub median: f64,
    /// The median is a bound (a reading it is taken from was below resolution).
    pub bound: bool,
    /// The measurements' median and min-max (the bounds' when no round measured).
    pub stat: Stat,
}

impl Agg {
    /// The figure over the rounds of `cell` that ran (`None`: no round has it).
    pub fn of(cell: &Cell, read: fn(&Metrics) -> Shown) -> Option<Agg> {
        let shown: Vec<Shown> = cell.ran().map(read).collect();
        let readings: Vec<(f64, bool)> = shown
            .iter()
            .filter_map(|s| match *s {
                Shown::Value(v) => Some((v, false)),
                Shown::Below(b) => Some((b, true)),
                Shown::Missing => None,
            })
            .collect();
        let (median, bound) = median(readings.clone())?;
        let values: Vec<f64> = shown.iter().filter_map(|s| s.value()).collect();
        let stat = Stat::of(&values)
            .or_else(|| Stat::of(&readings.iter().map(|r| r.0).collect::<Vec<_>>()))?;
        Some(Agg {
            median,
            bound,
            stat,
        })
    }

    /// The median, when it is a measurement.
    pub fn value(&self) -> Option<f64> {
        (!self.bound).then_some(self.median)
    }
}

/// One workload of a comparison: its cells, levels and labels.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// Every figure.
    pub results: &'a Results,
    /// The workload.
    pub workload: &'a WorkloadSettings,
}

impl<'a> View<'a> {
    /// Every workload of `results`, in order.
    pub fn all(results: &'a Results) -> impl Iterator<Item = View<'a>> {
        results
            .settings
            .workloads
            .iter()
            .map(move |workload| View { results, workload })
    }

    /// The workload's work (`none`, `cpu=200us`...).
    pub fn work(&self) -> &'a str {
        &self.workload.work
    }

    /// Its levels.
    pub fn levels(&self) -> &'a [usize] {
        &self.workload.conns
    }

    /// The cell of `target` at `conns`.
    pub fn cell(&self, target: &str, conns: usize) -> Option<&'a Cell> {
        self.results.cell(self.work(), target, conns)
    }

    /// `target`'s figure at `conns` over the rounds.
    pub fn agg(&self, target: &str, conns: usize, read: fn(&Metrics) -> Shown) -> Option<Agg> {
        Agg::of(self.cell(target, conns)?, read)
    }

    /// Whether `target` ran at some level.
    pub fn ran(&self, target: &str) -> bool {
        self.levels()
            .iter()
            .any(|&c| self.cell(target, c).is_some_and(Cell::is_ok))
    }

    /// `target` as the advice names it, in backticks: `pool --workers 64` when the pool
    /// got more workers than the others under this workload.
    pub fn label(&self, target: &str) -> String {
        if target == c10k_server::Strategy::Pool.name()
            && self.workload.pool_workers != self.results.settings.workers
        {
            format!("`{target} --workers {}`", self.workload.pool_workers)
        } else {
            format!("`{target}`")
        }
    }

    /// A heading: "`wait=2ms,blocking`: a 2 ms blocking call per request".
    pub fn heading(&self) -> String {
        format!("`{}`: {}", self.work(), self.workload.description)
    }
}

/// A figure of a cell: how to read it from the metrics and how to print it.
pub struct Figure {
    /// The section's title.
    pub title: &'static str,
    /// What it is, under the title.
    pub note: &'static str,
    /// Said under the tables when a cell of it is below resolution.
    pub below_note: Option<fn(&ResolutionSettings) -> String>,
    /// Its chart, if it has one.
    pub chart: Option<&'static str>,
    /// Read from one round.
    pub read: fn(&Metrics) -> Shown,
    /// Print a measurement.
    pub show: fn(f64) -> String,
    /// How a bound prints (rounded up).
    pub show_bound: fn(f64) -> String,
    /// The table shows the rounds' min-max beside the median.
    pub spread: bool,
    /// Only the workload that measured idle memory has it.
    pub idle_only: bool,
}

fn cpu_below_note(r: &ResolutionSettings) -> String {
    format!(
        "`< X`: the server's CPU reading in that cell was under {:.0} times its \
         resolution (/proc counts reaped child processes, and processes without \
         per-thread counters, in whole clock ticks of {:.0} ms, and a running thread's \
         last tick is not yet counted), so it is no measurement: X is the most it can \
         have been.",
        r.cpu_min_resolutions,
        r.cpu_tick_s * 1e3
    )
}

fn machine_cpu_below_note(r: &ResolutionSettings) -> String {
    format!(
        "`< X`: the whole machine's busy time in that cell was under {:.0} times its \
         resolution (/proc/stat counts each CPU state in whole clock ticks of {:.0} ms, \
         and a CPU's current tick is charged whole when it ends), so it is no \
         measurement: X is the most it can have been.",
        r.cpu_min_resolutions,
        r.cpu_tick_s * 1e3
    )
}

/// The figures with a table each, in order.
pub const FIGURES: [Figure; 8] = [
    Figure {
        title: "Throughput (requests/s, higher is better)",
        note: "Replies received in the measured window, divided by its length.",
        below_note: None,
        chart: Some("throughput.svg"),
        read: tput_shown,
        show: group,
        show_bound: group,
        spread: true,
        idle_only: false,
    },
    Figure {
        title: "p99 latency (microseconds, lower is better)",
        note: "From the moment a request was queued to its reply, over the measured window.",
        below_note: None,
        chart: Some("p99_latency.svg"),
        read: |m| Shown::Value(m.p99_us),
        show: fmt_us,
        show_bound: fmt_us,
        spread: true,
        idle_only: false,
    },
    Figure {
        title: "Server CPU per request (microseconds, lower is better)",
        note: "User+system CPU of the server's whole process tree (threads and child \
               processes, reaped ones included) over the window, divided by the replies \
               counted in the same interval. The steadiest figure on a shared machine.",
        below_note: Some(cpu_below_note),
        chart: Some("cpu_per_request.svg"),
        read: cpu_shown,
        show: fmt_cpu,
        show_bound: |v| format!("{:.2}", ceil_to(v, 0.01)),
        spread: true,
        idle_only: false,
    },
    Figure {
        title: "Whole-machine CPU per request (microseconds, lower is better)",
        note: "Every CPU's busy time (/proc/stat: user, nice, system, irq, softirq, steal) \
               over the same window, divided by the same replies. It includes the load \
               generator, the kernel's work for both ends (softirq is charged to whichever \
               CPU takes the interrupt, on loopback usually the sender's) and any other \
               work on the machine, so it is fair to every strategy, and it is the figure \
               for a strategy whose work runs in the kernel (`kernel`), whose server CPU is \
               near zero. Neighbours on a shared machine move it.",
        below_note: Some(machine_cpu_below_note),
        chart: None,
        read: machine_cpu_shown,
        show: fmt_cpu,
        show_bound: |v| format!("{:.2}", ceil_to(v, 0.01)),
        spread: true,
        idle_only: false,
    },
    Figure {
        title: "Server busy (% of one core over the window)",
        note: "The server tree's CPU time over the wall time of the window. Well under 100% \
               (per server CPU) while the load is not load-bound means the server was not \
               the bottleneck: round trips at low concurrency, a wait per request, or \
               neighbours taking the CPU on a shared machine. Throughput is then a floor; \
               CPU per request still holds.",
        below_note: Some(cpu_below_note),
        chart: None,
        read: busy_shown,
        show: |v| format!("{v:.0}%"),
        show_bound: |v| format!("{:.0}%", v.ceil()),
        spread: false,
        idle_only: false,
    },
    Figure {
        title: "Server memory per idle connection (PSS, lower is better)",
        note: "Before the load, the connections are opened and left idle; the server tree's \
               PSS growth divided by the connections open. User-space memory only: the \
               kernel's socket buffers are not in a process's PSS. Measured in the first \
               round of one workload (idle connections do no work).",
        below_note: Some(|r| {
            format!(
                "`< X`: below this measurement's resolution. PSS moves in pages of {} B; \
                 the allocator grows and trims its arenas by pages, and a fresh server's \
                 first connections grow its tables and caches, whatever an idle \
                 connection itself costs. So a growth under {} ({} pages), or a \
                 shrinking tree, is noise and no figure: at N connections the figure \
                 resolves {} / N per connection, and X is that. The advice uses only the \
                 figures shown as numbers.",
                r.page_bytes,
                fmt_bytes(r.idle_noise_bytes as f64),
                r.idle_noise_bytes / r.page_bytes.max(1),
                fmt_bytes(r.idle_noise_bytes as f64),
            )
        }),
        chart: Some("memory_per_conn.svg"),
        read: idle_shown,
        show: fmt_bytes,
        show_bound: fmt_bytes_bound,
        spread: false,
        idle_only: true,
    },
    Figure {
        title: "Kernel memory per idle connection (both ends on loopback, lower is better)",
        note: "The kernel's part, which user-space PSS does not show: TCP socket buffers \
               (`/proc/net/sockstat` mem) and the slab objects of a connection (the TCP \
               socket, its inode, file, dentry and epoll registration: `/proc/slabinfo`), \
               read machine-wide before and after the idle connections opened, divided \
               by them. Both ends of each connection live in this kernel, so the server's \
               share is about half. It hardly depends on the strategy; the whole cost of a \
               connection is this plus the row above. Machine-wide readings: other \
               processes opening files move them.",
        below_note: None,
        chart: None,
        read: kernel_idle_shown,
        show: fmt_bytes,
        show_bound: fmt_bytes,
        spread: false,
        idle_only: true,
    },
    Figure {
        title: "Server memory under load (PSS of the whole tree)",
        note: "Read in the middle of the measured window.",
        below_note: None,
        chart: None,
        read: |m| Shown::Value(m.server_memory.pss_kib as f64 * 1024.0),
        show: fmt_bytes,
        show_bound: fmt_bytes,
        spread: false,
        idle_only: false,
    },
];

/// Numbers the n/a reasons of a report, in order of first appearance.
#[derive(Default)]
pub struct Notes {
    /// The reasons, in order.
    pub reasons: Vec<String>,
}

impl Notes {
    /// The number of `reason`.
    pub fn mark(&mut self, reason: &str) -> usize {
        match self.reasons.iter().position(|r| r == reason) {
            Some(i) => i + 1,
            None => {
                self.reasons.push(reason.to_string());
                self.reasons.len()
            }
        }
    }
}

/// What a table shows for `cell`, and whether it is a bound below resolution.
fn cell_text(view: &View<'_>, fig: &Figure, cell: &Cell, notes: &mut Notes) -> (String, bool) {
    if !cell.is_ok() {
        let why = cell.reason.as_deref().unwrap_or("n/a");
        return (format!("n/a [{}]", notes.mark(why)), false);
    }
    let rounds = view.results.settings.rounds;
    let mut below = false;
    let mut v = match Agg::of(cell, fig.read) {
        Some(a) if a.bound => {
            below = true;
            format!("< {}", (fig.show_bound)(a.median))
        }
        Some(a) => {
            let mut t = (fig.show)(a.median);
            if fig.spread && a.stat.n > 1 && (fig.show)(a.stat.min) != (fig.show)(a.stat.max) {
                let _ = write!(
                    t,
                    " ({}-{})",
                    (fig.show)(a.stat.min),
                    (fig.show)(a.stat.max)
                );
            }
            t
        }
        None => "?".into(),
    };
    if cell.errors > 0 {
        let _ = write!(v, " ({} err)", cell.errors);
    }
    if cell.load_bound() {
        v.push_str(" \\*");
    }
    let ran = cell.ran().count();
    if ran < rounds && !cell.rounds.is_empty() {
        let why = cell.rounds.iter().find_map(|r| r.reason.as_deref());
        match why {
            Some(why) => {
                let _ = write!(v, " [{ran} of {rounds} rounds; {}]", notes.mark(why));
            }
            None => {
                let _ = write!(v, " [{ran} of {rounds} rounds]");
            }
        }
    }
    (v, below)
}

/// The table of a figure for one workload, and whether a cell of it is below
/// resolution.
pub fn table(view: &View<'_>, fig: &Figure, notes: &mut Notes) -> (String, bool) {
    let mut s = String::new();
    let mut below = false;
    let levels = view.levels();
    let _ = write!(s, "| strategy |");
    for &c in levels {
        let _ = write!(s, " {} |", fmt_conns(c));
    }
    let _ = write!(s, "\n|---|");
    for _ in levels {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for t in &view.results.targets {
        let name = if t.is_strategy() {
            view.label(&t.name)
        } else if super::cpython::field_rows(view.results).contains(&t.name.as_str()) {
            format!("{} (CPython)", t.name)
        } else {
            format!("{} (peer)", t.name)
        };
        let _ = write!(s, "| {name} |");
        for &c in levels {
            let text = match view.cell(&t.name, c) {
                Some(cell) => {
                    let (text, b) = cell_text(view, fig, cell, notes);
                    below |= b;
                    text
                }
                None => "-".into(),
            };
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
    (s, below)
}

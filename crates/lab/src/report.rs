//! `report.md`: the machine, one table per figure (rows: strategies and peers,
//! columns: connections), and a "what to use" section derived from the figures.
//!
//! The advice follows three rules. It chooses among c10k's strategies only: a peer is
//! a yardstick, shown in every table and chart and given one sentence ("Against
//! `c-epoll` ..."), never the recommendation. A figure below its reading's resolution
//! ([`crate::resolution`]) prints as `< X`, the most it can have been, and the advice
//! leaves it out. Each strategy's losses are stated against a [`Reference`], the
//! median of the event-loop family at each level, which one noisy cell cannot move far,
//! rather than against whichever cell happened to be best.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::{Metrics, ResolutionSettings, Results};

/// Differences smaller than this factor are called a tie (a shared machine's noise).
pub const TIE: f64 = 1.15;

/// `98123.4` as `98,123`.
pub fn group(v: f64) -> String {
    let n = v.round();
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// Throughput as the table shows it.
pub fn fmt_throughput(m: &Metrics) -> String {
    group(m.throughput_rps)
}

fn fmt_us(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        group(v)
    }
}

fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{} B", group(b))
    }
}

fn fmt_conns(c: usize) -> String {
    group(c as f64)
}

/// `v` rounded up to a multiple of `step`: a bound printed never below itself.
fn ceil_to(v: f64, step: f64) -> f64 {
    (v / step).ceil() * step
}

/// A bound on bytes, printed rounded up.
fn fmt_bytes_bound(b: f64) -> String {
    if b >= 10.0 * 1024.0 {
        fmt_bytes(ceil_to(b, 102.4))
    } else {
        fmt_bytes(b.ceil())
    }
}

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

/// Server CPU per request: a measurement, or (a reading of a few clock ticks) at most
/// what the reading plus its resolution allows.
pub fn cpu_shown(m: &Metrics) -> Shown {
    match m.server_cpu_per_request_us {
        Some(v) => Shown::Value(v),
        None => {
            let w = m.cpu_window();
            if w.below_resolution() && w.requests > 0 {
                Shown::Below(w.cpu_bound_s() / w.requests as f64 * 1e6)
            } else {
                Shown::Missing
            }
        }
    }
}

fn busy_shown(m: &Metrics) -> Shown {
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

/// A figure of a cell: how to read it from the metrics and how to print it.
struct Figure {
    title: &'static str,
    note: &'static str,
    /// Said under the table when a cell of it is below resolution.
    below_note: Option<fn(&ResolutionSettings) -> String>,
    chart: Option<&'static str>,
    read: fn(&Metrics) -> Shown,
    show: fn(f64) -> String,
    /// How a bound prints (rounded up).
    show_bound: fn(f64) -> String,
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

const FIGURES: [Figure; 6] = [
    Figure {
        title: "Throughput (requests/s, higher is better)",
        note: "Replies received in the measured window, divided by its length.",
        below_note: None,
        chart: Some("throughput.svg"),
        read: |m| Shown::Value(m.throughput_rps),
        show: group,
        show_bound: group,
    },
    Figure {
        title: "p99 latency (microseconds, lower is better)",
        note: "From the moment a request was queued to its reply, over the measured window.",
        below_note: None,
        chart: Some("p99_latency.svg"),
        read: |m| Shown::Value(m.p99_us),
        show: fmt_us,
        show_bound: fmt_us,
    },
    Figure {
        title: "Server CPU per request (microseconds, lower is better)",
        note: "User+system CPU of the server's whole process tree (threads and child \
               processes, reaped ones included) over the window, divided by the replies \
               counted in the same interval. The steadiest figure on a shared machine.",
        below_note: Some(cpu_below_note),
        chart: Some("cpu_per_request.svg"),
        read: cpu_shown,
        show: |v| format!("{v:.2}"),
        show_bound: |v| format!("{:.2}", ceil_to(v, 0.01)),
    },
    Figure {
        title: "Server busy (% of one core over the window)",
        note: "The server tree's CPU time over the wall time of the window. Well under 100% \
               (per server CPU) while the load is not load-bound means the server was not \
               the bottleneck: round trips at low concurrency, or neighbours taking the CPU \
               on a shared machine. Throughput is then a floor; CPU per request still holds.",
        below_note: Some(cpu_below_note),
        chart: None,
        read: busy_shown,
        show: |v| format!("{v:.0}%"),
        show_bound: |v| format!("{:.0}%", v.ceil()),
    },
    Figure {
        title: "Server memory per idle connection (PSS, lower is better)",
        note: "Before the load, the connections are opened and left idle; the server tree's \
               PSS growth divided by the connections open. User-space memory only: the \
               kernel's socket buffers are not in a process's PSS.",
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
    },
    Figure {
        title: "Server memory under load (PSS of the whole tree)",
        note: "Read in the middle of the measured window.",
        below_note: None,
        chart: None,
        read: |m| Shown::Value(m.server_memory.pss_kib as f64 * 1024.0),
        show: fmt_bytes,
        show_bound: fmt_bytes,
    },
];

/// Numbers the n/a reasons of a report, in order of first appearance.
#[derive(Default)]
struct Notes {
    reasons: Vec<String>,
}

impl Notes {
    fn mark(&mut self, reason: &str) -> usize {
        match self.reasons.iter().position(|r| r == reason) {
            Some(i) => i + 1,
            None => {
                self.reasons.push(reason.to_string());
                self.reasons.len()
            }
        }
    }
}

/// The table of a figure, and whether a cell of it is below resolution.
fn table(results: &Results, fig: &Figure, notes: &mut Notes) -> (String, bool) {
    let mut s = String::new();
    let mut below = false;
    let levels = &results.settings.conns;
    let _ = write!(s, "| strategy |");
    for &c in levels {
        let _ = write!(s, " {} |", fmt_conns(c));
    }
    let _ = write!(s, "\n|---|");
    for _ in levels {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for t in &results.targets {
        let name = if t.kind == "peer" {
            format!("{} (peer)", t.name)
        } else {
            format!("`{}`", t.name)
        };
        let _ = write!(s, "| {name} |");
        for &c in levels {
            let text = match results.cell(&t.name, c) {
                Some(cell) => match (&cell.metrics, &cell.reason) {
                    (Some(m), _) => {
                        let mut v = match (fig.read)(m) {
                            Shown::Value(v) => (fig.show)(v),
                            Shown::Below(b) => {
                                below = true;
                                format!("< {}", (fig.show_bound)(b))
                            }
                            Shown::Missing => "?".into(),
                        };
                        if m.errors > 0 {
                            let _ = write!(v, " ({} err)", m.errors);
                        }
                        if m.load_bound {
                            v.push_str(" \\*");
                        }
                        v
                    }
                    (None, Some(why)) => format!("n/a [{}]", notes.mark(why)),
                    (None, None) => "n/a".into(),
                },
                None => "-".into(),
            };
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
    (s, below)
}

fn cpu(m: &Metrics) -> Option<f64> {
    cpu_shown(m).value()
}

fn tput(m: &Metrics) -> Option<f64> {
    Some(m.throughput_rps)
}

fn idle_mem(m: &Metrics) -> Option<f64> {
    idle_shown(m).value()
}

/// The best measured value at each level among `rows`, with who had it.
fn best_by_level(
    results: &Results,
    rows: &[&str],
    value: fn(&Metrics) -> Option<f64>,
    lower_is_better: bool,
) -> BTreeMap<usize, (String, f64)> {
    let mut best: BTreeMap<usize, (String, f64)> = BTreeMap::new();
    for cell in results
        .cells
        .iter()
        .filter(|c| rows.contains(&c.target.as_str()))
    {
        let Some(v) = cell.metrics.as_ref().and_then(value) else {
            continue;
        };
        if !(v.is_finite() && v > 0.0) {
            continue;
        }
        let better = match best.get(&cell.conns) {
            None => true,
            Some((_, b)) if lower_is_better => v < *b,
            Some((_, b)) => v > *b,
        };
        if better {
            best.insert(cell.conns, (cell.target.clone(), v));
        }
    }
    best
}

fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

fn quoted(names: &[&str]) -> String {
    list(&names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>())
}

/// The median of readings, each `(value, is an upper bound)`; it is a bound when a
/// reading it is taken from is one.
pub fn median(mut xs: Vec<(f64, bool)>) -> Option<(f64, bool)> {
    xs.retain(|(v, _)| v.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = xs.len();
    let (a, b) = (xs[(n - 1) / 2], xs[n / 2]);
    Some(((a.0 + b.0) / 2.0, a.1 || b.1))
}

/// What the losses are stated against: at each level, the median of a fixed family of
/// c10k strategies, which one noisy cell cannot move far.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The family's members that ran.
    pub members: Vec<String>,
    /// Its name in a sentence ("the event-loop median").
    pub name: &'static str,
    /// How it is made, in words.
    pub definition: String,
}

impl Reference {
    /// The reference for `results`: the event-loop strategies (C10K items 1 to 3) that
    /// ran, or, when none of them ran, every c10k strategy that ran. Never a peer.
    pub fn of(results: &Results) -> Option<Reference> {
        let ran = |t: &&crate::results::TargetInfo| {
            results
                .settings
                .conns
                .iter()
                .any(|&c| results.metrics(&t.name, c).is_some())
        };
        let family: Vec<String> = results
            .targets
            .iter()
            .filter(|t| t.is_event_loop())
            .filter(ran)
            .map(|t| t.name.clone())
            .collect();
        if !family.is_empty() {
            let names: Vec<&str> = family.iter().map(String::as_str).collect();
            return Some(Reference {
                definition: format!(
                    "at each level, the median of the event-loop strategies that ran there \
                     ({}; C10K items 1 to 3, one thread serving many connections from \
                     readiness or completion events)",
                    quoted(&names)
                ),
                members: family,
                name: "the event-loop median",
            });
        }
        let all: Vec<String> = results
            .targets
            .iter()
            .filter(|t| t.is_strategy())
            .filter(ran)
            .map(|t| t.name.clone())
            .collect();
        (!all.is_empty()).then(|| Reference {
            definition: "at each level, the median of the c10k strategies that ran there \
                         (no event-loop strategy ran)"
                .into(),
            members: all,
            name: "the strategies' median",
        })
    }

    /// The reference's reading of a figure at `conns`.
    pub fn at(
        &self,
        results: &Results,
        conns: usize,
        read: fn(&Metrics) -> Shown,
    ) -> Option<(f64, bool)> {
        median(
            self.members
                .iter()
                .filter_map(|n| match read(results.metrics(n, conns)?) {
                    Shown::Value(v) => Some((v, false)),
                    Shown::Below(b) => Some((b, true)),
                    Shown::Missing => None,
                })
                .collect(),
        )
    }
}

fn fmt_ref(v: (f64, bool), show: fn(f64) -> String) -> String {
    if v.1 {
        format!("< {}", show(v.0))
    } else {
        show(v.0)
    }
}

/// The level where `name` is furthest behind the reference on a figure, as
/// `(conns, ratio, its value, the reference's)`; the ratio is above 1 when it is
/// behind.
fn worst_against(
    results: &Results,
    name: &str,
    reference: &Reference,
    read: fn(&Metrics) -> Shown,
    lower_is_better: bool,
) -> Option<(usize, f64, f64, (f64, bool))> {
    results
        .settings
        .conns
        .iter()
        .filter_map(|&c| {
            let mine = read(results.metrics(name, c)?).value()?;
            let r = reference.at(results, c, read)?;
            if !(mine > 0.0 && r.0 > 0.0) {
                return None;
            }
            let ratio = if lower_is_better {
                mine / r.0
            } else {
                r.0 / mine
            };
            Some((c, ratio, mine, r))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// How `pick` stands against `peer` on one figure, as a clause: the ratio
/// `pick / peer` at each level both measured, ties within the noise grouped.
fn versus(
    results: &Results,
    pick: &str,
    peer: &str,
    read: fn(&Metrics) -> Shown,
) -> Option<String> {
    let mut apart = Vec::new();
    let mut ties = Vec::new();
    for &c in &results.settings.conns {
        let (Some(a), Some(b)) = (
            results.metrics(pick, c).and_then(|m| read(m).value()),
            results.metrics(peer, c).and_then(|m| read(m).value()),
        ) else {
            continue;
        };
        if !(a > 0.0 && b > 0.0) {
            continue;
        }
        let r = a / b;
        if r >= TIE || r <= 1.0 / TIE {
            apart.push((c, r));
        } else {
            ties.push(fmt_conns(c));
        }
    }
    if apart.is_empty() && ties.is_empty() {
        return None;
    }
    if apart.is_empty() {
        return Some(format!(
            "within the noise of the peer's (under {:.0}% apart) at every level both ran",
            (TIE - 1.0) * 100.0
        ));
    }
    let mut parts: Vec<String> = apart
        .iter()
        .enumerate()
        .map(|(i, (c, r))| {
            if i == 0 {
                format!("{r:.2}x the peer's at {} connections", fmt_conns(*c))
            } else {
                format!("{r:.2}x at {}", fmt_conns(*c))
            }
        })
        .collect();
    if !ties.is_empty() {
        parts.push(format!(
            "within the noise of it at {} connections",
            list(&ties)
        ));
    }
    let clause = list(&parts);
    Some(clause)
}

/// The sentence about a peer: how the recommendation stands against it.
fn against_peer(results: &Results, pick: Option<&str>, peer: &str) -> String {
    let levels = &results.settings.conns;
    let ran = levels.iter().any(|&c| results.metrics(peer, c).is_some());
    let head = format!("Against `{peer}` (a peer: shown for scale, never the advice)");
    if !ran {
        let why = levels
            .iter()
            .find_map(|&c| results.cell(peer, c)?.reason.clone())
            .unwrap_or_else(|| "n/a".into());
        return format!("{head}: it did not run ({why}).");
    }
    let Some(pick) = pick else {
        return format!("{head}: no c10k strategy ran to compare with it.");
    };
    let cpu_clause = versus(results, pick, peer, cpu_shown);
    let tput_clause = versus(results, pick, peer, |m| Shown::Value(m.throughput_rps));
    match (cpu_clause, tput_clause) {
        (None, None) => format!("{head}: no level where both it and `{pick}` ran."),
        (Some(c), Some(t)) => {
            format!("{head}, `{pick}`'s CPU per request was {c}; its throughput was {t}.")
        }
        (Some(c), None) => format!("{head}, `{pick}`'s CPU per request was {c}."),
        (None, Some(t)) => format!("{head}, `{pick}`'s throughput was {t}."),
    }
}

/// The "what to use" section: a recommendation among the c10k strategies that ran,
/// a sentence per peer, and, per strategy, where it loses against the reference.
pub fn advice(results: &Results) -> String {
    let mut s = String::new();
    let levels = &results.settings.conns;
    let ran_any = |name: &str| levels.iter().any(|&c| results.metrics(name, c).is_some());
    let strategies: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| t.is_strategy())
        .map(|t| t.name.as_str())
        .collect();
    let peers: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| !t.is_strategy())
        .map(|t| t.name.as_str())
        .collect();
    let ran: Vec<&str> = strategies.iter().copied().filter(|n| ran_any(n)).collect();
    if ran.is_empty() {
        s.push_str(
            "No c10k strategy ran, so there is nothing to recommend (a peer is a yardstick, \
             never the advice): see the reasons below.\n",
        );
        for peer in &peers {
            let _ = writeln!(s, "\n{}", against_peer(results, None, peer));
        }
        return s;
    }
    // A strategy whose work runs in the kernel is not ranked by server CPU.
    let in_kernel: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| t.is_strategy() && t.runs_in_kernel() && ran.contains(&t.name.as_str()))
        .map(|t| t.name.as_str())
        .collect();
    let ranked: Vec<&str> = ran
        .iter()
        .copied()
        .filter(|n| !in_kernel.contains(n))
        .collect();
    let ran = if ranked.is_empty() { ran } else { ranked };
    let best_cpu = best_by_level(results, &ran, cpu, true);
    let best_tput = best_by_level(results, &ran, tput, false);
    // Score: the geometric mean, over the levels a strategy ran, of its CPU per request
    // relative to the best strategy at that level.
    let score = |name: &str| -> (usize, f64) {
        let mut n = 0;
        let mut log_sum = 0.0;
        for &c in levels {
            let (Some(v), Some((_, b))) =
                (results.metrics(name, c).and_then(cpu), best_cpu.get(&c))
            else {
                continue;
            };
            if v > 0.0 {
                n += 1;
                log_sum += (v / b).ln();
            }
        }
        let ran_levels = levels
            .iter()
            .filter(|&&c| results.metrics(name, c).is_some())
            .count();
        (
            ran_levels,
            if n > 0 {
                (log_sum / n as f64).exp()
            } else {
                f64::MAX
            },
        )
    };
    let full: Vec<&str> = ran
        .iter()
        .copied()
        .filter(|n| score(n).0 == levels.len())
        .collect();
    let pool = if full.is_empty() { &ran } else { &full };
    let pick = pool
        .iter()
        .copied()
        .min_by(|a, b| score(a).1.total_cmp(&score(b).1))
        .unwrap_or(ran[0]);
    let (_, pick_ratio) = score(pick);
    let wins = |best: &BTreeMap<usize, (String, f64)>| -> Vec<String> {
        best.iter()
            .filter(|(_, (who, _))| who == pick)
            .map(|(c, _)| fmt_conns(*c))
            .collect()
    };
    let cpu_wins = wins(&best_cpu);
    let tput_wins = wins(&best_tput);
    let _ = write!(s, "**Use `{pick}`.** ");
    if ran.len() == 1 {
        s.push_str(
            "It is the only c10k strategy that ran here, so this is no comparison: add \
             strategies to the matrix.",
        );
    } else {
        if pick_ratio == f64::MAX {
            let _ = write!(
                s,
                "Of the {} c10k strategies that ran, none has a CPU per request to rank by \
                 (below resolution), so this is the first that ran",
                ran.len()
            );
        } else if cpu_wins.len() == best_cpu.len() {
            let _ = write!(
                s,
                "Of the {} c10k strategies that ran, it needed the least server CPU per \
                 request at every level it ran",
                ran.len()
            );
        } else {
            let _ = write!(
                s,
                "Of the {} c10k strategies that ran, it needed the least server CPU per \
                 request overall (on average {:.1}% above the best strategy of each level)",
                ran.len(),
                (pick_ratio - 1.0) * 100.0
            );
        }
        if full.contains(&pick) {
            let _ = write!(
                s,
                " and it ran every level from {} to {} connections",
                fmt_conns(levels.iter().copied().min().unwrap_or(0)),
                fmt_conns(levels.iter().copied().max().unwrap_or(0))
            );
        }
        s.push('.');
        if !cpu_wins.is_empty() {
            let _ = write!(
                s,
                " Lowest CPU per request at {} connections.",
                list(&cpu_wins)
            );
        }
        if !tput_wins.is_empty() {
            let _ = write!(
                s,
                " Highest throughput at {} connections.",
                list(&tput_wins)
            );
        }
        // Strategies that are as good within the noise.
        let close: Vec<&str> = pool
            .iter()
            .copied()
            .filter(|n| *n != pick && score(n).1 <= pick_ratio * TIE)
            .collect();
        if !close.is_empty() {
            let _ = write!(
                s,
                " {} {} within the noise of it overall (under {:.0}% apart): either will do.",
                quoted(&close),
                if close.len() == 1 { "is" } else { "are" },
                (TIE - 1.0) * 100.0
            );
        }
    }
    for k in in_kernel.iter().filter(|k| **k != pick) {
        let _ = write!(
            s,
            " `{k}` is not ranked: its work runs in the kernel (softirq, charged to no \
             process), so its server CPU per request is not comparable; judge it by \
             whole-machine CPU (`bench/kernel.sh`, docs/notes/kernel.md)."
        );
    }
    s.push('\n');
    for peer in &peers {
        let _ = writeln!(s, "\n{}", against_peer(results, Some(pick), peer));
    }

    let reference = Reference::of(results);
    match &reference {
        Some(r) => {
            let _ = writeln!(
                s,
                "\nWhere each one loses. Each is held against {}: {}. A reference one \
                 noisy cell cannot move far, rather than whichever cell happened to be best \
                 at a level:\n",
                r.name, r.definition
            );
        }
        None => s.push_str("\nWhere each one loses:\n\n"),
    }
    for t in results.targets.iter().filter(|t| t.is_strategy()) {
        let mut losses = Vec::new();
        let na: Vec<String> = levels
            .iter()
            .filter_map(|&c| {
                let cell = results.cell(&t.name, c)?;
                cell.metrics.is_none().then(|| {
                    format!(
                        "{} ({})",
                        fmt_conns(c),
                        cell.reason.as_deref().unwrap_or("n/a")
                    )
                })
            })
            .collect();
        if na.len() == levels.len() {
            let why = results
                .cell(&t.name, levels[0])
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(s, "- `{}`: did not run: {why}.", t.name);
            continue;
        }
        if !na.is_empty() {
            losses.push(format!("could not run {} connections", list(&na)));
        }
        if let Some(reference) = &reference {
            if let Some((c, r, mine, of)) =
                worst_against(results, &t.name, reference, cpu_shown, true).filter(|w| w.1 >= TIE)
            {
                losses.push(format!(
                    "at {} connections it used {r:.1}x the CPU per request of {} ({} vs {} \
                     us)",
                    fmt_conns(c),
                    reference.name,
                    format_args!("{mine:.2}"),
                    fmt_ref(of, |v| format!("{v:.2}"))
                ));
            }
            let tput_read: fn(&Metrics) -> Shown = |m| Shown::Value(m.throughput_rps);
            if let Some((c, r, mine, of)) =
                worst_against(results, &t.name, reference, tput_read, false).filter(|w| w.1 >= TIE)
            {
                losses.push(format!(
                    "at {} connections it served {:.0}% fewer requests per second than {} \
                     ({} vs {})",
                    fmt_conns(c),
                    (1.0 - 1.0 / r) * 100.0,
                    reference.name,
                    group(mine),
                    fmt_ref(of, group)
                ));
            }
            // Idle memory at the largest level where it is a measurement and the
            // reference has a reading.
            if let Some((c, mine, of)) = levels
                .iter()
                .filter_map(|&c| {
                    let mine = results.metrics(&t.name, c).and_then(idle_mem)?;
                    Some((c, mine, reference.at(results, c, idle_shown)?))
                })
                .max_by_key(|(c, _, _)| *c)
            {
                if mine > 1024.0 && mine > 2.0 * of.0.max(1.0) {
                    losses.push(format!(
                        "an idle connection cost {} of server memory at {} connections ({}: \
                         {})",
                        fmt_bytes(mine),
                        fmt_conns(c),
                        reference.name,
                        fmt_ref(of, fmt_bytes_bound)
                    ));
                }
            }
        }
        let errors: Vec<String> = levels
            .iter()
            .filter_map(|&c| {
                let m = results.metrics(&t.name, c)?;
                (m.errors > 0).then(|| format!("{} at {}", m.errors, fmt_conns(c)))
            })
            .collect();
        if !errors.is_empty() {
            losses.push(format!("it had errors ({} connections)", list(&errors)));
        }
        if losses.is_empty() {
            let _ = writeln!(
                s,
                "- `{}`: no clear loss here: within {:.0}% of {} or better on CPU per \
                 request and throughput wherever it ran.",
                t.name,
                (TIE - 1.0) * 100.0,
                reference.as_ref().map_or("the others", |r| r.name)
            );
        } else {
            let _ = writeln!(s, "- `{}`: {}.", t.name, losses.join("; "));
        }
    }
    let bound = results
        .cells
        .iter()
        .filter(|c| c.metrics.as_ref().is_some_and(|m| m.load_bound))
        .count();
    if bound > 0 {
        let _ = writeln!(
            s,
            "\n\\* In {bound} cell(s) the load generator saturated its own core: there the \
             throughput is what the load could drive, a floor of the server's capacity, and \
             CPU per request is the figure to compare."
        );
    }
    let _ = writeln!(
        s,
        "\nDifferences under {:.0}% are within this machine's run-to-run noise. Throughput \
         swings most between runs on a shared machine; CPU per request holds best. A figure \
         shown as `< X` was below its measurement's resolution (see its table) and is not \
         used here.",
        (TIE - 1.0) * 100.0
    );
    s
}

/// The whole `report.md`.
pub fn render(results: &Results) -> String {
    let mut s = String::new();
    let st = &results.settings;
    let m = &results.machine;
    let _ = writeln!(s, "# c10k compare: {} app\n", st.app);
    let _ = writeln!(s, "- Date: {}", m.date);
    let _ = writeln!(s, "- Machine: {}", m.describe());
    let _ = writeln!(
        s,
        "- Code: c10k {}, commit {}",
        m.c10k_version,
        m.commit
            .as_deref()
            .unwrap_or("unknown (not a git checkout)")
    );
    let _ = writeln!(s, "- Pinning: {}", st.pinning);
    let _ = writeln!(
        s,
        "- Load: c10k load in-process, {} epoll thread(s), closed loop, {} request(s) \
         outstanding per connection{}; {:.1} s measured per cell after {:.1} s of warm-up{}",
        st.load_threads,
        st.pipeline,
        st.size_bytes
            .map_or_else(String::new, |b| format!(", size {b} bytes")),
        st.duration_s,
        st.warmup_s,
        if st.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(
        s,
        "- The whole comparison took {:.0} s\n",
        results.elapsed_s
    );
    s.push_str("## What to use\n\n");
    s.push_str(&advice(results));
    let mut notes = Notes::default();
    for fig in &FIGURES {
        let _ = writeln!(s, "\n## {}\n\n{}\n", fig.title, fig.note);
        let (text, below) = table(results, fig, &mut notes);
        s.push_str(&text);
        if let (true, Some(note)) = (below, fig.below_note) {
            let _ = writeln!(s, "\n{}", note(&st.resolution));
        }
        if let Some(chart) = fig.chart {
            let _ = writeln!(s, "\n![{}]({chart})", fig.title);
        }
    }
    if !notes.reasons.is_empty() {
        s.push_str("\n## Cells that did not run\n\n");
        for (i, r) in notes.reasons.iter().enumerate() {
            let _ = writeln!(s, "{}. {r}", i + 1);
        }
    }
    s.push_str(
        "\n## How this was measured\n\n\
         Each cell starts its server as a separate process (`c10k serve --strategy NAME`, \
         or the peer's command) pinned to the server CPUs, so that fork and prefork trees \
         are measured whole. It first opens the cell's connections idle and reads the \
         tree's memory, then closes them and runs the load (closed loop, every connection \
         opened before the window starts, then the warm-up, then the measured window), \
         reading the tree's CPU time from /proc when the window opens and when the load \
         ends; then SIGTERM. \"(N err)\" marks a cell whose load saw errors (all kinds, \
         connect phase included). A figure below its reading's resolution (memory per \
         idle connection from a growth within the allocator's page noise, a CPU reading \
         of a few clock ticks) shows as `< X`, the most it can have been, and the advice \
         leaves it out; in `results.json` it is null, with a `_note` field that says why \
         (`pss_bytes_per_conn_note`, `server_cpu_note`) beside the raw readings, and \
         `settings.resolution` holds the rules. `results.json` holds every figure, the \
         load generator's full report per cell included; each chart carries its data in \
         its `<desc>` element and leaves out figures below resolution. Peers are measured \
         the same way and shown in every table and chart, but never recommended: the \
         advice chooses among c10k's strategies.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(98_123.4), "98,123");
        assert_eq!(group(1_234_567.0), "1,234,567");
        assert_eq!(group(-1234.0), "-1,234");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(65536.0), "64.0 KiB");
        assert_eq!(fmt_bytes(1.5 * 1024.0 * 1024.0), "1.50 MiB");
        assert_eq!(list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(fmt_bytes_bound(6553.6), "6,554 B");
        assert_eq!(fmt_bytes_bound(10.0 * 1024.0 + 1.0), "10.1 KiB");
    }

    #[test]
    fn medians_of_values_and_bounds() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![(3.0, false)]), Some((3.0, false)));
        let five = vec![
            (8.4, false),
            (9.0, false),
            (2.0, false),
            (9.5, false),
            (6.4, false),
        ];
        assert_eq!(median(five), Some((8.4, false)));
        assert_eq!(
            median(vec![(1.0, false), (4.0, false), (2.0, true), (9.0, false)]),
            Some((3.0, true))
        );
        assert_eq!(
            median(vec![(1.0, true), (4.0, false), (5.0, false)]),
            Some((4.0, false))
        );
    }
}

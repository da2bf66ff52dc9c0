//! `report.md`: the machine, one table per figure (rows: strategies and peers,
//! columns: connections), and a "what to use" section derived from the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::{Metrics, Results};

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

/// A figure of a cell: how to read it from the metrics and how to print it.
struct Figure {
    title: &'static str,
    note: &'static str,
    chart: Option<&'static str>,
    value: fn(&Metrics) -> Option<f64>,
    show: fn(f64) -> String,
}

const FIGURES: [Figure; 6] = [
    Figure {
        title: "Throughput (requests/s, higher is better)",
        note: "Replies received in the measured window, divided by its length.",
        chart: Some("throughput.svg"),
        value: |m| Some(m.throughput_rps),
        show: group,
    },
    Figure {
        title: "p99 latency (microseconds, lower is better)",
        note: "From the moment a request was queued to its reply, over the measured window.",
        chart: Some("p99_latency.svg"),
        value: |m| Some(m.p99_us),
        show: fmt_us,
    },
    Figure {
        title: "Server CPU per request (microseconds, lower is better)",
        note: "User+system CPU of the server's whole process tree (threads and child \
               processes, reaped ones included) over the window, divided by the replies \
               counted in the same interval. The steadiest figure on a shared machine.",
        chart: Some("cpu_per_request.svg"),
        value: |m| m.server_cpu_per_request_us,
        show: |v| format!("{v:.2}"),
    },
    Figure {
        title: "Server busy (% of one core over the window)",
        note: "The server tree's CPU time over the wall time of the window. Well under 100% \
               (per server CPU) while the load is not load-bound means the server was not \
               the bottleneck: round trips at low concurrency, or neighbours taking the CPU \
               on a shared machine. Throughput is then a floor; CPU per request still holds.",
        chart: None,
        value: |m| Some(m.server_busy_percent),
        show: |v| format!("{v:.0}%"),
    },
    Figure {
        title: "Server memory per idle connection (PSS, lower is better)",
        note: "Before the load, the connections are opened and left idle; the server tree's \
               PSS growth divided by the connections open. Small levels are noisy (a few \
               pages of allocator growth spread over few connections); the largest level \
               is the one to read. User-space memory only: the kernel's socket buffers \
               are not in a process's PSS.",
        chart: Some("memory_per_conn.svg"),
        value: |m| m.idle.as_ref().map(|i| i.pss_bytes_per_conn),
        show: fmt_bytes,
    },
    Figure {
        title: "Server memory under load (PSS of the whole tree)",
        note: "Read in the middle of the measured window.",
        chart: None,
        value: |m| Some(m.server_memory.pss_kib as f64 * 1024.0),
        show: fmt_bytes,
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

fn table(results: &Results, fig: &Figure, notes: &mut Notes) -> String {
    let mut s = String::new();
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
                        let mut v = (fig.value)(m).map_or_else(|| "?".into(), fig.show);
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
    s
}

/// The best value at each level among the cells that ran, with who had it.
fn best_by_level(
    results: &Results,
    value: fn(&Metrics) -> Option<f64>,
    lower_is_better: bool,
) -> BTreeMap<usize, (String, f64)> {
    let mut best: BTreeMap<usize, (String, f64)> = BTreeMap::new();
    for cell in &results.cells {
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

fn cpu(m: &Metrics) -> Option<f64> {
    m.server_cpu_per_request_us
}

fn tput(m: &Metrics) -> Option<f64> {
    Some(m.throughput_rps)
}

fn idle_mem(m: &Metrics) -> Option<f64> {
    m.idle.as_ref().map(|i| i.pss_bytes_per_conn)
}

fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// The "what to use" section: a recommendation and, per row, where it loses.
pub fn advice(results: &Results) -> String {
    let mut s = String::new();
    let levels = &results.settings.conns;
    let best_cpu = best_by_level(results, cpu, true);
    let best_tput = best_by_level(results, tput, false);
    let best_mem = best_by_level(results, idle_mem, true);
    let ran: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| {
            levels
                .iter()
                .any(|&c| results.metrics(&t.name, c).is_some())
        })
        .map(|t| t.name.as_str())
        .collect();
    if ran.is_empty() {
        s.push_str("No cell ran, so there is nothing to recommend: see the reasons below.\n");
        return s;
    }
    // Score: the geometric mean, over the levels a row ran, of its CPU per request
    // relative to the best at that level.
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
        let _ = writeln!(
            s,
            "It is the only one that ran here, so this is no comparison: add strategies or \
             peers to the matrix."
        );
    } else {
        if cpu_wins.len() == best_cpu.len() {
            let _ = write!(
                s,
                "Of the {} that ran, it needed the least server CPU per request at every \
                 level it ran",
                ran.len()
            );
        } else {
            let _ = write!(
                s,
                "Of the {} that ran, it needed the least server CPU per request overall \
                 (on average {:.1}% above the best of each level)",
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
        // Rows that are as good within the noise.
        let close: Vec<String> = pool
            .iter()
            .filter(|n| **n != pick && score(n).1 <= pick_ratio * TIE)
            .map(|n| format!("`{n}`"))
            .collect();
        if !close.is_empty() {
            let _ = write!(
                s,
                " {} {} within the noise of it overall (under {:.0}% apart): either will do.",
                list(&close),
                if close.len() == 1 { "is" } else { "are" },
                (TIE - 1.0) * 100.0
            );
        }
        // Where someone else was clearly faster.
        for (c, (who, v)) in &best_tput {
            if who == pick {
                continue;
            }
            if let Some(mine) = results.metrics(pick, *c).map(|m| m.throughput_rps) {
                if *v > mine * TIE {
                    let _ = write!(
                        s,
                        " At {} connections `{who}` served {:.0}% more requests per second.",
                        fmt_conns(*c),
                        (v / mine - 1.0) * 100.0
                    );
                }
            }
        }
        s.push('\n');
    }

    s.push_str("\nWhere each one loses:\n\n");
    for t in &results.targets {
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
        // The worst level for CPU and for throughput, against the best there.
        let worst = |best: &BTreeMap<usize, (String, f64)>,
                     value: fn(&Metrics) -> Option<f64>,
                     lower: bool|
         -> Option<(usize, String, f64)> {
            levels
                .iter()
                .filter_map(|&c| {
                    let v = results.metrics(&t.name, c).and_then(value)?;
                    let (who, b) = best.get(&c)?;
                    if who == &t.name || v <= 0.0 {
                        return None;
                    }
                    let ratio = if lower { v / b } else { b / v };
                    Some((c, who.clone(), ratio))
                })
                .max_by(|a, b| a.2.total_cmp(&b.2))
        };
        if let Some((c, who, r)) = worst(&best_cpu, cpu, true).filter(|w| w.2 >= TIE) {
            losses.push(format!(
                "at {} connections it used {r:.1}x the CPU per request of `{who}`",
                fmt_conns(c)
            ));
        }
        if let Some((c, who, r)) = worst(&best_tput, tput, false).filter(|w| w.2 >= TIE) {
            losses.push(format!(
                "at {} connections it served {:.0}% fewer requests per second than `{who}`",
                fmt_conns(c),
                (1.0 - 1.0 / r) * 100.0
            ));
        }
        // Idle memory at the largest level it ran.
        if let Some(&c) = levels
            .iter()
            .filter(|&&c| results.metrics(&t.name, c).and_then(idle_mem).is_some())
            .max()
        {
            let mine = results
                .metrics(&t.name, c)
                .and_then(idle_mem)
                .unwrap_or(0.0);
            if let Some((who, b)) = best_mem.get(&c) {
                if who != &t.name && mine > 1024.0 && mine > 2.0 * b.max(1.0) {
                    losses.push(format!(
                        "an idle connection cost {} of server memory at {} connections \
                         (`{who}`: {})",
                        fmt_bytes(mine),
                        fmt_conns(c),
                        fmt_bytes(*b)
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
                "- `{}`: no clear loss here: within {:.0}% of the best on CPU per request and \
                 throughput wherever it ran.",
                t.name,
                (TIE - 1.0) * 100.0
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
         swings most between runs on a shared machine; CPU per request holds best.",
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
        s.push_str(&table(results, fig, &mut notes));
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
         connect phase included). `results.json` holds every figure, the load \
         generator's full report per cell included; each chart carries its data in its \
         `<desc>` element.\n",
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
    }
}

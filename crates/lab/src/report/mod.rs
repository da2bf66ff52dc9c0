//! `report.md`: the machine and settings, "What to use" per workload, one table per
//! figure and workload (rows: strategies and peers, columns: connections), the charts.
//!
//! The advice follows these rules. It chooses among c10k's strategies only: a peer is
//! a yardstick, shown in every table and chart and given one sentence ("Against
//! `c-epoll` ..."), never the recommendation. It claims a difference only where the
//! min-max ranges over the rounds do not overlap ([`crate::aggregate`]); otherwise the
//! strategies are "indistinguishable here". A cell with errors is never recommended. A
//! figure below its reading's resolution ([`crate::resolution`]) prints as `< X`, the
//! most it can have been, and the advice leaves it out; a strategy whose work runs in
//! the kernel is never ranked by server CPU, but held against the user-space strategy
//! that needed the least whole-machine CPU per request, in a sentence of its own. Each
//! strategy's losses are stated against a [`Reference`], the median of the event-loop
//! family at each level, rather than against whichever cell happened to be best.

mod cpython;
mod figures;
mod format;
mod losses;
mod verdict;

use std::fmt::Write as _;

pub use crate::aggregate::{TIE, median};
pub use cpython::{DOMINATES, field_rows};
pub use figures::{
    Agg, FIGURES, Figure, Shown, View, busy_shown, cpu_shown, idle_shown, machine_cpu_shown,
    tput_shown,
};
pub use format::{fmt_conns, group, list};
pub use losses::Reference;
pub use verdict::{Level, Standing, judge, one_line, pick_words, recommended, section};

use crate::results::Results;
use figures::{Notes, table};

/// The heading of a workload's section: "With a 2 ms blocking call per request
/// (`wait=2ms,blocking`)".
fn workload_heading(view: &View<'_>) -> String {
    format!("With {} (`{}`)", view.workload.description, view.work())
}

/// The "What to use" section: how a pick is made, a section per workload, and the
/// one line that maps a situation to a row.
pub fn advice(results: &Results) -> String {
    let mut s = String::new();
    let st = &results.settings;
    let _ = writeln!(
        s,
        "At each level, the strategies that served the most requests per second and, among \
         those, the ones that needed the least server CPU per request (CPU per request alone \
         where the load generator saturated its core, as throughput is then a floor); a \
         strategy picked at every level is the recommendation. {} A cell with errors is \
         never recommended, nor is a peer; a figure below its resolution (`< X` in the \
         tables) is left out.",
        if st.rounds > 1 {
            format!(
                "Two strategies differ only where their min-max ranges over the {} rounds do \
                 not overlap; otherwise they are indistinguishable here.",
                st.rounds
            )
        } else {
            format!(
                "With one round no spread is measured: strategies under {:.0}% apart are \
                 indistinguishable here (run `--rounds 3` for spreads).",
                (TIE - 1.0) * 100.0
            )
        }
    );
    for view in View::all(results) {
        let _ = writeln!(s, "\n### {}\n", workload_heading(&view));
        s.push_str(&section(&view));
    }
    if let Some(line) = one_line(results) {
        let _ = writeln!(s, "\n{line}");
    }
    s
}

fn settings_lines(results: &Results) -> String {
    let st = &results.settings;
    let mut s = String::new();
    let works: Vec<String> = st
        .workloads
        .iter()
        .map(|w| {
            format!(
                "`{}` ({}) at {} connections",
                w.work,
                w.description,
                format::levels(&w.conns)
            )
        })
        .collect();
    let _ = writeln!(s, "- Workloads (`--work`): {}", works.join("; "));
    let mut workers = format!(
        "- Workers: `--workers {}` for every strategy (one per server CPU unless \
         `--workers` says otherwise); `prefork` runs as many processes as connections (its \
         concurrency)",
        st.workers
    );
    for w in st.workloads.iter().filter(|w| w.pool_workers != st.workers) {
        let _ = write!(
            workers,
            "; under `{}`, `pool --workers {}` (a pool sized for blocking calls, {} per \
             server CPU, as a user would size it: each call holds a thread for its whole \
             wait)",
            w.work,
            w.pool_workers,
            w.pool_workers / st.workers.max(1)
        );
    }
    let _ = writeln!(s, "{workers}");
    let mut split: Vec<(usize, usize)> = results
        .cells
        .iter()
        .filter_map(|c| c.processes.map(|p| (c.conns, p)))
        .collect();
    split.sort_unstable();
    split.dedup();
    if !split.is_empty() {
        let levels: Vec<String> = split
            .iter()
            .map(|(conns, p)| format!("`--processes {p}` at {}", format::group(*conns as f64)))
            .collect();
        let _ = writeln!(
            s,
            "- One process's open files limit cannot hold every level: the strategies that \
             run in threads served {} (one `SO_REUSEPORT` listener per process), and the \
             load ran as as many processes; `fork`, `prefork`, `kernel` and the peers are \
             n/a there",
            levels.join(", ")
        );
    }
    let field = cpython::field_rows(results);
    if let Some(py) = &st.python {
        let rows: Vec<String> = results
            .targets
            .iter()
            .filter(|t| field.contains(&t.name.as_str()))
            .map(|t| format!("`{}` ({})", t.name, t.summary))
            .collect();
        let _ = writeln!(
            s,
            "- The CPython field (`--python`, {} at {}; `NAME-procs` rows run {} \
             process(es), one per server CPU): {}",
            py.version,
            py.interpreter,
            py.procs,
            rows.join("; ")
        );
    }
    let peers: Vec<String> = results
        .targets
        .iter()
        .filter(|t| !t.is_strategy() && !field.contains(&t.name.as_str()))
        .map(|t| format!("`{}` ({})", t.name, t.summary))
        .collect();
    if !peers.is_empty() {
        let _ = writeln!(
            s,
            "- Peers (external servers, measured on the same axes, never recommended): {}",
            peers.join("; ")
        );
    }
    let idle = st.workloads.iter().find(|w| w.idle_phase).map_or_else(
        || "not measured (`--no-idle`)".to_string(),
        |w| format!("measured in round 1 of `{}` only", w.work),
    );
    let _ = writeln!(
        s,
        "- Rounds: {}{}; memory per idle connection {idle}",
        st.rounds,
        if st.rounds > 1 {
            ", interleaved: each round runs every cell once, the strategies in turn at each \
             level (starting one further each round); the tables show the median over the \
             rounds and, for throughput, p99 and CPU per request, the min-max in brackets"
        } else {
            " (no spread measured)"
        }
    );
    let timeouts: Vec<String> = st
        .workloads
        .iter()
        .filter(|w| (w.reply_timeout_s - crate::cell::CELL_TIMEOUT.as_secs_f64()).abs() > 1e-9)
        .map(|w| format!("{:.0} s under `{}`", w.reply_timeout_s, w.work))
        .collect();
    let _ = writeln!(
        s,
        "- A reply slower than {:.0} s is an error{}",
        crate::cell::CELL_TIMEOUT.as_secs_f64(),
        if timeouts.is_empty() {
            String::new()
        } else {
            format!(
                " ({}: twice the longest queue the work can cause)",
                timeouts.join(", ")
            )
        }
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
    let longer: Vec<String> = st
        .workloads
        .iter()
        .flat_map(|w| {
            w.conns
                .iter()
                .zip(&w.warmup_s)
                .filter(|(_, secs)| **secs > st.warmup_s + 1e-9)
                .map(move |(&c, secs)| {
                    format!(
                        "{secs:.1} s under `{}` at {} connections",
                        w.work,
                        format::fmt_conns(c)
                    )
                })
        })
        .collect();
    if !longer.is_empty() {
        let _ = writeln!(
            s,
            "- Longer warm-ups: {} (one pass through the queue the work causes on one \
             event-loop worker, so the window opens in the steady state)",
            list(&longer)
        );
    }
    s.push_str(&settings_lines(results));
    let _ = writeln!(
        s,
        "- The whole comparison took {:.0} s\n",
        results.elapsed_s
    );
    if let Some(text) = cpython::advice(results) {
        s.push_str("## What to use in CPython\n\n");
        s.push_str(&text);
        s.push('\n');
    }
    // With --python alone there is no c10k strategy to advise on.
    if st.python.is_none() || results.targets.iter().any(|t| t.is_strategy()) {
        s.push_str("## What to use\n\n");
        s.push_str(&advice(results));
    }
    let mut notes = Notes::default();
    for fig in &FIGURES {
        let views: Vec<View<'_>> = View::all(results)
            .filter(|v| !fig.idle_only || v.workload.idle_phase)
            .collect();
        if views.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n## {}\n\n{}", fig.title, fig.note);
        let mut below = false;
        for view in &views {
            let (text, b) = table(view, fig, &mut notes);
            below |= b;
            let _ = writeln!(s, "\n### {}\n\n{text}", view.heading());
            s.pop();
        }
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
         Each cell starts its server as a separate process (`c10k serve --strategy NAME \
         --workers N --work SPEC`, or the peer's command) pinned to the server CPUs, so \
         that fork and prefork trees are measured whole. In the round that measures idle \
         memory it first opens the cell's connections idle and reads the tree's memory, \
         then closes them; then it runs the load (closed loop, every connection opened \
         before the window starts, then the warm-up, then the measured window), reading \
         the tree's CPU time from /proc when the window opens and when the load ends; then \
         SIGTERM. Beside the tree's CPU it reads every CPU's busy time from /proc/stat at \
         the same two edges: that whole-machine CPU per request includes the load \
         generator and any other work on the machine, so it is fair to every strategy, \
         and it is the figure for a strategy whose work runs in the kernel. The work per request (`--work`) runs in the server: CPU burnt on the \
         handling thread's clock, a blocking wait that holds the handling thread, or an \
         asynchronous wait that defers the reply with a timer. The whole matrix runs once \
         per round, the rounds one after another, so a burst of noise on a shared machine \
         lands on one round of a cell and the median outvotes it. \"(N err)\" marks a cell \
         whose load saw errors in its rounds (all kinds, connect phase included). A figure \
         below its reading's resolution (memory per idle connection from a growth within \
         the allocator's page noise, a CPU reading of a few clock ticks) shows as `< X`, \
         the most it can have been, and the advice leaves it out; in `results.json` it is \
         null, with a `_note` field that says why (`pss_bytes_per_conn_note`, \
         `server_cpu_note`, `machine_cpu.note`) beside the raw readings, and `settings.resolution` holds the \
         rules. `results.json` holds every round of every cell (`rounds[].metrics`, with \
         the load generator's full report) beside each cell's `median` and `spread` \
         (`[min, max]`); each chart carries its data in its `<desc>` element and leaves \
         out figures below resolution. Peers are measured the same way under `none` and \
         shown in every table and chart, but never recommended: the advice chooses among \
         c10k's strategies.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::format::*;

    #[test]
    fn lists() {
        assert_eq!(list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(fmt_conns(10_000), "10,000");
    }
}

//! "What to use in CPython" (`c10k compare --python`): the original question, "which
//! strategy should I use in CPython?", answered per workload in words computed from
//! the figures of the CPython field ([`crate::plan::pyfield`]).
//!
//! The pick follows the rules of "What to use" ([`super::verdict`]), among the field's
//! rows instead of c10k's strategies: the most requests per second, then the least
//! server CPU per request, "indistinguishable here" where the min-max ranges overlap,
//! never a cell with errors. Where the handler's own CPU is most of every option's
//! server CPU per request, the section says Python's own work dominates instead of
//! naming a winner. The caveats are stated only where a figure of the run shows them:
//! a blocking call holding an event loop, the GIL, memory per connection, errors.

use std::fmt::Write as _;

use crate::plan::pyfield::{FieldPeer, Server};
use crate::results::Results;
use crate::workload::fmt_duration;

use super::figures::{Agg, View, cpu_shown, idle_shown, tput_shown};
use super::format::{fmt_bytes, fmt_conns, fmt_cpu, list};
use super::verdict::{Level, judge_among, level_line, per_second, pick_words, recommended};

/// The share of server CPU per request the handler's own CPU must have in the best
/// cells for the section to say that Python's own work dominates.
pub const DOMINATES: f64 = 0.5;

/// The field's rows that are in `results` (peers named as a row of the field, in a
/// `--python` comparison only: `--peer asyncio` alone is a peer of its own).
pub fn field_rows(results: &Results) -> Vec<&str> {
    if results.settings.python.is_none() {
        return Vec::new();
    }
    results
        .targets
        .iter()
        .filter(|t| !t.is_strategy() && FieldPeer::from_name(&t.name).is_some())
        .map(|t| t.name.as_str())
        .collect()
}

fn server_of(name: &str) -> Option<Server> {
    FieldPeer::from_name(name).map(|p| p.server)
}

/// Served on c10k's engine (c10k's loop or blocking handlers).
fn c10k_backed(name: &str) -> bool {
    server_of(name).is_some_and(Server::c10k_backed)
}

/// One connection's handler owns a thread (or a process): a blocking call stalls
/// that connection only.
fn owns_its_thread(name: &str) -> bool {
    matches!(
        server_of(name),
        Some(
            Server::SocketserverThread
                | Server::SocketserverFork
                | Server::C10kPyThread
                | Server::C10kPyPrefork
        )
    )
}

/// Runs its handlers as threads of one interpreter (the GIL is theirs to share).
fn threads_of_one_interpreter(name: &str) -> bool {
    matches!(
        FieldPeer::from_name(name),
        Some(FieldPeer {
            server: Server::SocketserverThread | Server::C10kPyThread,
            procs: false
        })
    )
}

/// The best of `names` by median throughput at `conns`, without errors.
fn best_tput<'a>(view: &View<'_>, names: &[&'a str], conns: usize) -> Option<(&'a str, f64)> {
    names
        .iter()
        .filter_map(|&n| {
            let cell = view.cell(n, conns).filter(|c| c.is_ok() && c.errors == 0)?;
            Some((n, Agg::of(cell, tput_shown)?.median))
        })
        .fold(None, |best, x| match best {
            Some(b) if b.1 >= x.1 => Some(b),
            _ => Some(x),
        })
}

/// The least of `names` by median server CPU per request at `conns`, without errors.
fn least_cpu<'a>(view: &View<'_>, names: &[&'a str], conns: usize) -> Option<(&'a str, f64)> {
    names
        .iter()
        .filter_map(|&n| {
            let cell = view.cell(n, conns).filter(|c| c.is_ok() && c.errors == 0)?;
            Some((n, Agg::of(cell, cpu_shown)?.value()?))
        })
        .fold(None, |best, x| match best {
            Some(b) if b.1 <= x.1 => Some(b),
            _ => Some(x),
        })
}

/// Where the handler's CPU is most of the server CPU per request of the least costly
/// options at every level that has them: `Some(share)` (the smallest such share).
fn work_dominates(view: &View<'_>, judged: &[Level]) -> Option<f64> {
    let cpu_us = view.workload.cpu_us;
    if cpu_us <= 0.0 {
        return None;
    }
    // The median option's CPU per request: one reading cannot move it far.
    let shares: Vec<f64> = judged
        .iter()
        .filter_map(|l| {
            let m =
                crate::aggregate::median(l.cpu.iter().map(|s| (s.agg.median, false)).collect())?;
            Some(cpu_us / m.0)
        })
        .collect();
    let least = shares.iter().copied().fold(f64::INFINITY, f64::min);
    (!shares.is_empty() && least >= DOMINATES).then_some(least)
}

/// The section of one workload.
fn workload_section(view: &View<'_>, rows: &[&str]) -> String {
    let mut s = String::new();
    let judged = judge_among(view, rows, view.workload.cpu_us);
    let w = view.workload;
    let dominated = work_dominates(view, &judged);
    match (dominated, pick_words(view, &judged)) {
        (_, None) => s.push_str(
            "No option of the field ran without errors under this workload: nothing to \
             recommend.\n",
        ),
        (Some(share), Some(_)) => {
            // The overhead left to choose: the least CPU per request at every level.
            let judged_levels: Vec<&Level> = judged.iter().filter(|l| !l.cpu.is_empty()).collect();
            let least: Vec<String> = rows
                .iter()
                .filter(|n| {
                    judged_levels
                        .iter()
                        .all(|l| l.cpu_top.iter().any(|t| t == *n))
                })
                .map(|n| format!("`{n}`"))
                .collect();
            let overhead = match least.len() {
                0 => "no option's overhead is least at every level".to_string(),
                1 => format!("the least overhead is {}'s", least[0]),
                _ => format!(
                    "the least overhead is indistinguishable here between {}",
                    list(&least)
                ),
            };
            let _ = writeln!(
                s,
                "**Python's own work dominates here: no option wins.** The handler's {} of \
                 CPU is at least {:.0}% of the median option's server CPU per request at \
                 every level, so the way of serving changes little ({overhead}). \
                 Make the handler cheaper, or run it on more cores (one process per core).",
                fmt_duration(std::time::Duration::from_secs_f64(w.cpu_us / 1e6)),
                share * 100.0
            );
        }
        (None, Some(words)) => {
            let every = recommended(view, &judged);
            let _ = writeln!(
                s,
                "**Use {words}.** {}",
                if every.is_some() {
                    "Best at every level where any option ran without errors, by the rule \
                     above."
                } else {
                    "No option is best at every level: the best depends on the concurrency."
                }
            );
        }
    }
    s.push('\n');
    for l in &judged {
        let _ = writeln!(s, "{}", level_line(view, l, "no option"));
    }
    for line in caveats(view, rows, &judged) {
        let _ = writeln!(s, "\n{line}");
    }
    s
}

/// c10k-backed against the best other option, per level, on server CPU per request.
fn c10k_against_others(view: &View<'_>, rows: &[&str]) -> Option<String> {
    let (ours, others): (Vec<&str>, Vec<&str>) = rows.iter().partition(|n| c10k_backed(n));
    let parts: Vec<String> = view
        .levels()
        .iter()
        .filter_map(|&c| {
            let (a, x) = least_cpu(view, &ours, c)?;
            let (b, y) = least_cpu(view, &others, c)?;
            Some(format!(
                "{:.2}x at {} connections (`{a}` {} against `{b}` {})",
                x / y,
                fmt_conns(c),
                fmt_cpu(x),
                fmt_cpu(y)
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "c10k-backed against the rest: the least server CPU per request of a c10k-backed \
             option over the least of the others (us; below 1 is cheaper): {}.",
            list(&parts)
        )
    })
}

/// The caveats the figures of this workload show.
fn caveats(view: &View<'_>, rows: &[&str], judged: &[Level]) -> Vec<String> {
    let w = view.workload;
    let mut out = Vec::new();
    let largest = view.levels().iter().rev().copied().find(|&c| {
        rows.iter()
            .any(|n| view.cell(n, c).is_some_and(|cell| cell.is_ok()))
    });
    if w.blocking_wait_us > 0.0 {
        let holds = w.blocking_wait_us + w.cpu_us;
        let loops: Vec<&str> = rows
            .iter()
            .copied()
            .filter(|n| !owns_its_thread(n))
            .collect();
        let threads: Vec<&str> = rows
            .iter()
            .copied()
            .filter(|n| owns_its_thread(n))
            .collect();
        let mut line = format!(
            "A blocking call holds an event loop: in `selectors`, `asyncio`, `uvloop`, \
             `gevent` (not monkey-patched), `twisted` and c10k's loop the {} call stalls \
             every connection of the process, so one process serves at most {} requests/s",
            fmt_duration(std::time::Duration::from_secs_f64(w.blocking_wait_us / 1e6)),
            per_second(1e6 / holds)
        );
        if let Some(c) = largest {
            if let Some((n, v)) = best_tput(view, &loops, c) {
                let _ = write!(
                    line,
                    "; measured at {} connections: `{n}` {} requests/s",
                    fmt_conns(c),
                    per_second(v)
                );
            }
            if let Some((n, v)) = best_tput(view, &threads, c) {
                let _ = write!(
                    line,
                    ", against `{n}` {} requests/s with a thread or process per connection",
                    per_second(v)
                );
            }
        }
        line.push_str(". That is the honest cost of calling a blocking library from a loop.");
        out.push(line);
    }
    if w.cpu_us > 0.0 {
        let cpus = view
            .results
            .settings
            .server_cpus
            .as_ref()
            .map_or(view.results.machine.cpus, Vec::len)
            .max(1);
        let cap = cpus as f64 * 1e6 / w.cpu_us;
        let mut line = format!(
            "Each request burns {} of CPU: {cpus} server CPU{} serve{} at most {} \
             requests/s, whatever the way of serving",
            fmt_duration(std::time::Duration::from_secs_f64(w.cpu_us / 1e6)),
            if cpus == 1 { "" } else { "s" },
            if cpus == 1 { "s" } else { "" },
            per_second(cap)
        );
        if let Some((c, best)) = largest.and_then(|c| Some((c, best_tput(view, rows, c)?))) {
            let _ = write!(
                line,
                "; measured best: `{}` {} requests/s at {} connections ({:.0}% of it)",
                best.0,
                per_second(best.1),
                fmt_conns(c),
                best.1 / cap * 100.0
            );
        }
        line.push('.');
        out.push(line);
        out.push(gil_caveat(view, rows, largest));
    }
    if w.cpu_us > 0.0 {
        // Less CPU per request than the handler burns: the reading missed CPU.
        let low: Vec<String> = rows
            .iter()
            .filter_map(|&n| {
                let at: Vec<String> = view
                    .levels()
                    .iter()
                    .filter_map(|&c| {
                        let a = view.agg(n, c, cpu_shown)?;
                        (a.value()? < w.cpu_us)
                            .then(|| format!("{} at {}", fmt_cpu(a.median), fmt_conns(c)))
                    })
                    .collect();
                (!at.is_empty()).then(|| format!("`{n}` ({})", list(&at)))
            })
            .collect();
        if !low.is_empty() {
            out.push(format!(
                "Left out of the CPU ranking: {} read less server CPU per request than the \
                 handler itself burns, so the reading missed CPU (a process tree's many or \
                 short-lived children are read in whole clock ticks).",
                list(&low)
            ));
        }
    }
    if w.async_wait_us > 0.0 {
        let owned: Vec<&str> = rows
            .iter()
            .copied()
            .filter(|n| owns_its_thread(n) && view.ran(n))
            .collect();
        if !owned.is_empty() {
            out.push(format!(
                "Where the handler owns its thread or process ({}), the asynchronous wait is \
                 an ordinary sleep: each waiting connection holds a thread or a whole \
                 interpreter.",
                list(&owned.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>())
            ));
        }
    }
    if let Some(line) = c10k_against_others(view, rows) {
        out.push(line);
    }
    let errored: Vec<String> = rows
        .iter()
        .filter_map(|n| {
            let at: Vec<String> = judged
                .iter()
                .filter_map(|l| {
                    let (_, e) = l.errored.iter().find(|(x, _)| x == n)?;
                    Some(format!("{e} at {}", fmt_conns(l.conns)))
                })
                .collect();
            (!at.is_empty()).then(|| format!("`{n}` ({} connections)", list(&at)))
        })
        .collect();
    if !errored.is_empty() {
        out.push(format!(
            "Errors (a cell with errors is never recommended): {}.",
            list(&errored)
        ));
    }
    let na: Vec<String> = rows
        .iter()
        .filter(|n| row_wide_na(view.results, n).is_none())
        .filter_map(|n| {
            let levels: Vec<(usize, String)> = view
                .levels()
                .iter()
                .filter_map(|&c| {
                    let cell = view.cell(n, c)?;
                    (!cell.is_ok()).then(|| (c, cell.reason.clone().unwrap_or_default()))
                })
                .collect();
            let (_, why) = levels.first()?;
            let at: Vec<String> = levels.iter().map(|(c, _)| fmt_conns(*c)).collect();
            Some(format!("`{n}` at {} ({why})", list(&at)))
        })
        .collect();
    if !na.is_empty() {
        out.push(format!("Did not run: {}.", na.join("; ")));
    }
    out
}

/// Why `name` ran nowhere, when every cell of it says the same.
fn row_wide_na(results: &Results, name: &str) -> Option<String> {
    let mut cells = results.cells.iter().filter(|c| c.target == name);
    let first = cells.next()?;
    let why = first.reason.clone().filter(|_| !first.is_ok())?;
    cells
        .all(|c| !c.is_ok() && c.reason.as_deref() == Some(why.as_str()))
        .then_some(why)
}

/// The GIL under CPU work, from the figures where they show it.
fn gil_caveat(view: &View<'_>, rows: &[&str], largest: Option<usize>) -> String {
    let threaded: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|n| threads_of_one_interpreter(n))
        .collect();
    let procs: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|n| FieldPeer::from_name(n).is_some_and(|p| p.procs) && view.ran(n))
        .collect();
    let base = "GIL: the threads of one interpreter run Python one at a time, so a \
                process's handlers use one core at most";
    let Some(c) = largest else {
        return format!("{base}.");
    };
    match (best_tput(view, &threaded, c), best_tput(view, &procs, c)) {
        (Some((t, tv)), Some((p, pv))) => format!(
            "{base}: at {} connections `{t}` served {} requests/s, `{p}` (one process per \
             server CPU) {} ({:.2}x).",
            fmt_conns(c),
            per_second(tv),
            per_second(pv),
            pv / tv
        ),
        _ if procs.is_empty() => format!(
            "{base}; this run gave the servers {} CPU{}, so the one-process-per-core rows \
             (`NAME-procs`) did not run and cannot show what more cores would buy.",
            view.results.settings.python.as_ref().map_or(1, |p| p.procs),
            if view.results.settings.python.as_ref().map_or(1, |p| p.procs) == 1 {
                ""
            } else {
                "s"
            }
        ),
        _ => format!("{base}."),
    }
}

/// Memory per idle connection of the field, at the largest level measured.
fn memory_line(results: &Results, rows: &[&str]) -> Option<String> {
    let view = View::all(results).find(|v| v.workload.idle_phase)?;
    let c = view.levels().iter().rev().copied().find(|&c| {
        rows.iter().any(|n| {
            view.agg(n, c, idle_shown)
                .is_some_and(|a| a.value().is_some())
        })
    })?;
    let mut measured: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|&n| Some((n, view.agg(n, c, idle_shown)?.value()?)))
        .collect();
    measured.sort_by(|a, b| a.1.total_cmp(&b.1));
    let first = measured.first()?;
    let last = measured.last()?;
    let mut line = format!(
        "Memory per idle connection (server PSS growth, user space) at {} connections: \
         least `{}` {}",
        fmt_conns(c),
        first.0,
        fmt_bytes(first.1)
    );
    if measured.len() > 1 {
        let _ = write!(line, ", most `{}` {}", last.0, fmt_bytes(last.1));
        if owns_its_thread(last.0) {
            line.push_str(" (a thread stack or a whole process per connection)");
        }
    }
    line.push_str("; the kernel's socket memory comes on top for every option.");
    Some(line)
}

/// The versions of the field, from the rows' summaries.
fn versions(results: &Results, rows: &[&str]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for t in results
        .targets
        .iter()
        .filter(|t| rows.contains(&t.name.as_str()))
    {
        let v = t
            .summary
            .strip_prefix("CPython field: ")
            .and_then(|r| r.split("; bench/py").next())
            .and_then(|r| r.split(" (python ").next())
            .unwrap_or(&t.summary)
            .to_string();
        if !seen.contains(&v) && !t.name.ends_with("-procs") {
            seen.push(v);
        }
    }
    let python = results
        .settings
        .python
        .as_ref()
        .map_or_else(String::new, |p| {
            format!("{} ({}); ", p.version, p.interpreter)
        });
    format!("Versions: {python}{}.", seen.join("; "))
}

/// The whole "What to use in CPython" section (without its heading), or `None`
/// when the comparison has no row of the field.
pub fn advice(results: &Results) -> Option<String> {
    let rows = field_rows(results);
    if rows.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "The question: which way of serving many connections should a CPython program \
         use? Each option of the field is a small echo server (bench/py/field.py) doing \
         the same work per request as `c10k serve --work`. At each level the options that \
         served the most requests per second and, among those, the ones that needed the \
         least server CPU per request are picked; {}. A cell with errors is never picked.",
        if results.settings.rounds > 1 {
            format!(
                "two options differ only where their min-max ranges over the {} rounds do not \
                 overlap, otherwise they are indistinguishable here",
                results.settings.rounds
            )
        } else {
            "with one round no spread is measured: options under 15% apart are \
             indistinguishable here"
                .to_string()
        }
    );
    let _ = writeln!(s, "\n{}", versions(results, &rows));
    let mut one_line = Vec::new();
    for view in View::all(results) {
        let _ = writeln!(
            s,
            "\n### In CPython, with {} (`{}`)\n",
            view.workload.description,
            view.work()
        );
        s.push_str(&workload_section(&view, &rows));
        let judged = judge_among(&view, &rows, view.workload.cpu_us);
        let Ok(work) = view.work().parse::<c10k_server::Work>() else {
            continue;
        };
        let situation = crate::workload::situation(&work);
        if work_dominates(&view, &judged).is_some() {
            one_line.push(format!(
                "{situation}, Python's own work dominates: use more cores, not another loop"
            ));
        } else if let Some(words) = pick_words(&view, &judged) {
            one_line.push(format!("{situation}, use {words}"));
        }
    }
    let nowhere: Vec<String> = rows
        .iter()
        .filter_map(|n| Some(format!("`{n}` ({})", row_wide_na(results, n)?)))
        .collect();
    if !nowhere.is_empty() {
        let _ = writeln!(s, "\nDid not run at all: {}.", nowhere.join("; "));
    }
    if let Some(line) = memory_line(results, &rows) {
        let _ = writeln!(s, "\n{line}");
    }
    if !one_line.is_empty() {
        let text: Vec<String> = one_line
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i == 0 {
                    format!("If your handler {t}")
                } else {
                    format!("if it {t}")
                }
            })
            .collect();
        let _ = writeln!(s, "\n**In one line (CPython):** {}.", text.join("; "));
    }
    Some(s)
}

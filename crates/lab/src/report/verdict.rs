//! "What to use" under one workload, in words computed from the figures.
//!
//! At each level the strategies that ran without errors are ranked by throughput; the
//! best and every strategy whose min-max over the rounds overlaps the best's are
//! indistinguishable here (with one round, no spread is measured, and under
//! [`TIE`](crate::aggregate::TIE) apart is a tie). Among those, the ones needing the least
//! server CPU per request (by the same rule) are the level's pick; where the load
//! generator saturated its core in the best cells, throughput is a floor and CPU per
//! request alone decides. A strategy picked at every level is the recommendation.
//! Never a peer, never a cell with errors, never a CPU figure below resolution, and a
//! strategy that runs in the kernel is never ranked by server CPU: a sentence of its own
//! holds it against the user-space strategy that needed the least whole-machine CPU per
//! request at each level.

use std::fmt::Write as _;

use crate::aggregate::TIE;
use crate::results::Metrics;

use super::figures::{Agg, Shown, View, cpu_shown, machine_cpu_shown, tput_shown};
use super::format::{either, fmt_conns, fmt_cpu, group, levels, list};
use super::losses::{against_peer, could_not_run, losses};
use crate::workload::fmt_duration;

/// A strategy's figure at one level, over the rounds.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The strategy.
    pub name: String,
    /// Its figure.
    pub agg: Agg,
    /// The load saturated its core in a round of this cell.
    pub load_bound: bool,
}

/// One level of a workload, judged.
#[derive(Debug, Clone)]
pub struct Level {
    /// Connections.
    pub conns: usize,
    /// The strategies that ran without errors, by throughput, best first (one that
    /// runs in the kernel left out).
    pub tput: Vec<Standing>,
    /// Those indistinguishable from the best on throughput (the best first).
    pub tput_top: Vec<String>,
    /// The same strategies by server CPU per request, least first (measured figures
    /// only; a strategy that runs in the kernel left out).
    pub cpu: Vec<Standing>,
    /// Those indistinguishable from the least on CPU per request.
    pub cpu_top: Vec<String>,
    /// The load saturated its core in a cell of `tput_top`: throughput is a floor.
    pub load_bound: bool,
    /// The level's pick.
    pub pick: Vec<String>,
    /// Strategies that ran with errors here: `(name, errors over the rounds)`.
    pub errored: Vec<(String, u64)>,
}

/// The strategies of `ranked` indistinguishable from its first.
fn top(ranked: &[Standing]) -> Vec<String> {
    let Some(best) = ranked.first() else {
        return Vec::new();
    };
    ranked
        .iter()
        .filter(|s| s.name == best.name || !best.agg.stat.apart(&s.agg.stat))
        .map(|s| s.name.clone())
        .collect()
}

/// `names` ranked on a figure, best first (measured figures only).
fn rank(
    view: &View<'_>,
    conns: usize,
    names: &[&str],
    read: fn(&Metrics) -> Shown,
    lower_is_better: bool,
) -> Vec<Standing> {
    let mut ranked: Vec<Standing> = names
        .iter()
        .filter_map(|&n| {
            let cell = view.cell(n, conns)?;
            let agg = Agg::of(cell, read)?;
            (agg.value()? > 0.0).then(|| Standing {
                name: n.to_string(),
                agg,
                load_bound: cell.load_bound(),
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        let o = a.agg.median.total_cmp(&b.agg.median);
        if lower_is_better { o } else { o.reverse() }
    });
    ranked
}

/// Judges every level of a workload among c10k's strategies.
pub fn judge(view: &View<'_>) -> Vec<Level> {
    let strategies: Vec<&str> = view
        .results
        .targets
        .iter()
        .filter(|t| t.is_strategy())
        .map(|t| t.name.as_str())
        .collect();
    judge_among(view, &strategies, 0.0)
}

/// Judges every level of a workload among the rows `names` (the CPython field's, for
/// "What to use in CPython"), by the same rules; a server CPU per request below
/// `min_cpu_us` (less than the work itself burns: a reading that missed CPU) is left
/// out of the CPU ranking.
pub fn judge_among(view: &View<'_>, names: &[&str], min_cpu_us: f64) -> Vec<Level> {
    view.levels()
        .iter()
        .map(|&conns| {
            let mut clean = Vec::new();
            let mut errored = Vec::new();
            for &name in names {
                let Some(cell) = view.cell(name, conns).filter(|c| c.is_ok()) else {
                    continue;
                };
                if cell.errors > 0 {
                    errored.push((name.to_string(), cell.errors));
                } else {
                    clean.push(name);
                }
            }
            let comparable: Vec<&str> = clean
                .iter()
                .copied()
                .filter(|n| !view.results.target(n).is_some_and(|t| t.runs_in_kernel()))
                .collect();
            // A strategy that runs in the kernel is not ranked at all (its server CPU
            // is not comparable, so the tie-break could not hold it).
            let tput = rank(view, conns, &comparable, tput_shown, false);
            let tput_top = top(&tput);
            let mut cpu = rank(view, conns, &comparable, cpu_shown, true);
            cpu.retain(|s| s.agg.median >= min_cpu_us);
            let cpu_top = top(&cpu);
            let load_bound = tput
                .iter()
                .any(|s| s.load_bound && tput_top.contains(&s.name));
            let pick = if load_bound && !cpu_top.is_empty() {
                cpu_top.clone()
            } else {
                // Ties on throughput broken by CPU per request.
                let among: Vec<&str> = comparable
                    .iter()
                    .copied()
                    .filter(|n| tput_top.iter().any(|t| t == n))
                    .collect();
                let mut by_cpu = rank(view, conns, &among, cpu_shown, true);
                by_cpu.retain(|s| s.agg.median >= min_cpu_us);
                let narrowed = top(&by_cpu);
                if narrowed.is_empty() {
                    tput_top.clone()
                } else {
                    narrowed
                }
            };
            Level {
                conns,
                tput,
                tput_top,
                cpu,
                cpu_top,
                load_bound,
                pick,
                errored,
            }
        })
        .collect()
}

/// The recommendation: the strategies picked at every level where any was picked
/// (in the rows' order), or, when none is, `None`.
pub fn recommended(view: &View<'_>, judged: &[Level]) -> Option<Vec<String>> {
    let picked: Vec<&Level> = judged.iter().filter(|l| !l.pick.is_empty()).collect();
    if picked.is_empty() {
        return None;
    }
    let every: Vec<String> = view
        .results
        .targets
        .iter()
        .filter(|t| picked.iter().all(|l| l.pick.contains(&t.name)))
        .map(|t| t.name.clone())
        .collect();
    (!every.is_empty()).then_some(every)
}

/// The recommendation in words: "`a` or `b`", or per level when no strategy is picked
/// at every level ("`a` at 100 connections, `b` or `c` at 1,000").
pub fn pick_words(view: &View<'_>, judged: &[Level]) -> Option<String> {
    let label = |names: &[String]| -> String {
        either(&names.iter().map(|n| view.label(n)).collect::<Vec<_>>())
    };
    if let Some(every) = recommended(view, judged) {
        return Some(label(&every));
    }
    let parts: Vec<String> = judged
        .iter()
        .filter(|l| !l.pick.is_empty())
        .map(|l| format!("{} at {} connections", label(&l.pick), fmt_conns(l.conns)))
        .collect();
    (!parts.is_empty()).then(|| list(&parts))
}

fn standing(view: &View<'_>, s: &Standing, show: fn(f64) -> String) -> String {
    let a = &s.agg;
    if a.stat.n > 1 && show(a.stat.min) != show(a.stat.max) {
        format!(
            "{} {} ({}-{})",
            view.label(&s.name),
            show(a.median),
            show(a.stat.min),
            show(a.stat.max)
        )
    } else {
        format!("{} {}", view.label(&s.name), show(a.median))
    }
}

/// "most throughput: `a` 31,000 (30,100-31,900), ahead of `b` ..." or the tie.
pub(super) fn ranking_clause(
    view: &View<'_>,
    ranked: &[Standing],
    top: &[String],
    what: &str,
    show: fn(f64) -> String,
) -> Option<String> {
    let best = ranked.first()?;
    if ranked.len() == 1 {
        return Some(format!(
            "{what}: only {} has a figure",
            standing(view, best, show)
        ));
    }
    let spread_known = ranked.iter().all(|s| s.agg.stat.n > 1);
    if top.len() == 1 {
        let second = &ranked[1];
        return Some(format!(
            "{what}: {}, ahead of {} ({})",
            standing(view, best, show),
            standing(view, second, show),
            if spread_known {
                "their min-max ranges are apart".to_string()
            } else {
                format!(
                    "over {:.0}% apart; one round, no spread measured",
                    (TIE - 1.0) * 100.0
                )
            }
        ));
    }
    let why = if spread_known {
        "their min-max ranges overlap the best's".to_string()
    } else {
        format!(
            "under {:.0}% apart; one round, no spread measured",
            (TIE - 1.0) * 100.0
        )
    };
    let tied: Vec<&Standing> = ranked.iter().filter(|s| top.contains(&s.name)).collect();
    let mut clause = if tied.len() <= 3 {
        let tied: Vec<String> = tied.iter().map(|s| standing(view, s, show)).collect();
        format!(
            "{what}: indistinguishable here between {} ({why})",
            list(&tied)
        )
    } else {
        // Many alike: the best's figure, the others by name.
        let others: Vec<String> = tied[1..].iter().map(|s| view.label(&s.name)).collect();
        format!(
            "{what}: {} and, indistinguishable here ({}), {}",
            standing(view, tied[0], show),
            why.replace("the best's", "its"),
            list(&others)
        )
    };
    if let Some(next) = ranked.iter().find(|s| !top.contains(&s.name)) {
        let _ = write!(clause, "; next {}", standing(view, next, show));
    }
    Some(clause)
}

pub(super) fn per_second(v: f64) -> String {
    group(v)
}

/// The sentence on a strategy whose work runs in the kernel: never ranked by server
/// CPU, it is held against the user-space strategy that needed the least whole-machine
/// CPU per request at each level (among those that ran without errors), as a ratio,
/// with the usual rule for a difference. It stays out of the picks: the two figures are
/// never mixed in one ranking.
fn in_kernel_sentence(view: &View<'_>, judged: &[Level], name: &str) -> String {
    let head = format!(
        "`{name}` is not ranked by server CPU: its work runs in the kernel (softirq, charged \
         to no process), so its server CPU per request is not comparable"
    );
    let parts: Vec<String> = judged
        .iter()
        .filter_map(|l| {
            let cell = view
                .cell(name, l.conns)
                .filter(|c| c.is_ok() && c.errors == 0)?;
            let mine = Standing {
                name: name.to_string(),
                agg: Agg::of(cell, machine_cpu_shown).filter(|a| a.value().is_some())?,
                load_bound: cell.load_bound(),
            };
            let user_space: Vec<&str> = l.tput.iter().map(|s| s.name.as_str()).collect();
            // Measured figures above zero only, least first.
            let best = rank(view, l.conns, &user_space, machine_cpu_shown, true)
                .into_iter()
                .next()?;
            let why = match (
                mine.agg.stat.apart(&best.agg.stat),
                mine.agg.stat.n > 1 && best.agg.stat.n > 1,
            ) {
                (true, true) => "their min-max ranges are apart".to_string(),
                (false, true) => "indistinguishable here: their min-max ranges overlap".into(),
                (true, false) => format!(
                    "over {:.0}% apart; one round, no spread measured",
                    (TIE - 1.0) * 100.0
                ),
                (false, false) => format!(
                    "indistinguishable here: under {:.0}% apart; one round, no spread measured",
                    (TIE - 1.0) * 100.0
                ),
            };
            Some(format!(
                "at {} connections {} against {}, {:.2}x ({why})",
                fmt_conns(l.conns),
                standing(view, &mine, fmt_cpu),
                standing(view, &best, fmt_cpu),
                mine.agg.median / best.agg.median
            ))
        })
        .collect();
    if parts.is_empty() {
        return format!(
            "{head}; no level has a whole-machine figure for both it and a user-space \
             strategy here, so judge it by `bench/kernel.sh` (docs/notes/kernel.md)."
        );
    }
    format!(
        "{head}. On whole-machine CPU per request (us: every CPU's busy time, which holds \
         the kernel's work, the load generator and anything else the machine ran), against \
         the user-space strategy that needed the least at each level: {}.",
        list(&parts)
    )
}

/// The bound the work sets, in words, against what was measured.
fn bounds(view: &View<'_>, judged: &[Level]) -> Vec<String> {
    let w = view.workload;
    let settings = &view.results.settings;
    let workers = settings.workers.max(1);
    let mut out = Vec::new();
    let holds_us = w.cpu_us + w.blocking_wait_us;
    let largest = judged
        .iter()
        .rev()
        .find(|l| !l.tput.is_empty())
        .or(judged.last());
    if w.blocking_wait_us > 0.0 {
        let per_worker = 1e6 / holds_us;
        let loops: Vec<&str> = view
            .results
            .targets
            .iter()
            .filter(|t| t.is_event_loop())
            .map(|t| t.name.as_str())
            .collect();
        // The event loop that served the most at the largest level (the first of
        // equals).
        let measured = largest.and_then(|l| {
            loops
                .iter()
                .filter_map(|n| Some((n, view.agg(n, l.conns, tput_shown)?.median, l.conns)))
                .fold(None, |best: Option<(&&str, f64, usize)>, x| match best {
                    Some(b) if b.1 >= x.1 => Some(b),
                    _ => Some(x),
                })
        });
        let mut line = format!(
            "An event loop serves at most {} requests/s per worker here: each request holds \
             the loop's thread for its {} blocking call, and every other connection of that \
             worker waits (so does `green`: a blocking call stalls every green thread of its \
             worker)",
            per_second(per_worker),
            fmt_duration(std::time::Duration::from_secs_f64(w.blocking_wait_us / 1e6))
        );
        if let Some((n, v, c)) = measured {
            let _ = write!(
                line,
                "; measured with `--workers {workers}`: `{n}` {} requests/s at {} connections",
                per_second(v),
                fmt_conns(c)
            );
        }
        line.push('.');
        if view.ran("pool") {
            let _ = write!(
                line,
                " {} waits on {} threads: at most {} requests/s.",
                view.label("pool"),
                w.pool_workers,
                per_second(per_worker * w.pool_workers as f64)
            );
        }
        out.push(line);
    } else if w.cpu_us > 0.0 {
        let cpus = settings
            .server_cpus
            .as_ref()
            .map_or(view.results.machine.cpus, Vec::len)
            .max(1);
        let cap = cpus as f64 * 1e6 / w.cpu_us;
        let mut line = format!(
            "Each request burns {} of CPU: {} server CPU{} serve{} at most {} requests/s, \
             whatever the strategy",
            fmt_duration(std::time::Duration::from_secs_f64(w.cpu_us / 1e6)),
            cpus,
            if cpus == 1 { "" } else { "s" },
            if cpus == 1 { "s" } else { "" },
            per_second(cap)
        );
        if let Some(best) = largest.and_then(|l| l.tput.first().map(|s| (s, l.conns))) {
            let _ = write!(
                line,
                "; measured best: {} {} requests/s at {} connections ({:.0}% of it)",
                view.label(&best.0.name),
                per_second(best.0.agg.median),
                fmt_conns(best.1),
                best.0.agg.median / cap * 100.0
            );
        }
        line.push('.');
        out.push(line);
    }
    let wait_us = w.blocking_wait_us + w.async_wait_us;
    if w.async_wait_us > 0.0 {
        let parts: Vec<String> = judged
            .iter()
            .map(|l| {
                let bound = l.conns as f64 * 1e6 / (wait_us + w.cpu_us);
                match l.tput.first() {
                    Some(best) => format!(
                        "{} at {} connections (best measured {}, {:.0}% of it)",
                        per_second(bound),
                        fmt_conns(l.conns),
                        per_second(best.agg.median),
                        best.agg.median / bound * 100.0
                    ),
                    None => format!(
                        "{} at {} connections",
                        per_second(bound),
                        fmt_conns(l.conns)
                    ),
                }
            })
            .collect();
        out.push(format!(
            "The wait is asynchronous: an event loop serves its other connections meanwhile. \
             A closed loop of N connections sends at most N / {} requests/s: {}. Where the \
             best comes near that bound the wait, not the server, sets throughput, and CPU \
             per request tells the strategies apart.",
            fmt_duration(std::time::Duration::from_secs_f64(
                (wait_us + w.cpu_us) / 1e6
            )),
            list(&parts)
        ));
    }
    out
}

/// The section of one workload: the recommendation, the evidence per level, the
/// bound the work sets, what is not recommended and why, peers, and (without a
/// blocking wait) where each strategy loses.
pub fn section(view: &View<'_>) -> String {
    let mut s = String::new();
    let judged = judge(view);
    let clean: Vec<&str> = {
        let mut names: Vec<&str> = judged
            .iter()
            .flat_map(|l| l.tput.iter().map(|t| t.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    let spread = view.results.settings.rounds > 1;
    match (recommended(view, &judged), pick_words(view, &judged)) {
        (_, None) => s.push_str(
            "No c10k strategy ran without errors under this workload, so there is nothing \
             to recommend (a peer is a yardstick, never the advice).\n",
        ),
        (Some(every), Some(words)) => {
            let _ = write!(s, "**Use {words}.** ");
            if clean.len() == 1 {
                s.push_str(
                    "It is the only c10k strategy that ran without errors here, so this is no \
                     comparison: add strategies to the matrix.\n",
                );
            } else {
                // Alone at the top of every level, or among others somewhere.
                let alone = judged
                    .iter()
                    .filter(|l| !l.pick.is_empty())
                    .all(|l| l.pick == every);
                let _ = writeln!(
                    s,
                    "{} at every level ({} connections){}.",
                    match (every.len() == 1, alone) {
                        (true, true) => "Best",
                        (true, false) => "Among the best",
                        (false, true) => "Indistinguishable here from each other, and best",
                        (false, false) => {
                            "Indistinguishable here from each other, and among the best"
                        }
                    },
                    levels(
                        &judged
                            .iter()
                            .filter(|l| !l.pick.is_empty())
                            .map(|l| l.conns)
                            .collect::<Vec<_>>()
                    ),
                    if spread {
                        ", by the rule above"
                    } else {
                        ", by the rule above (one round: no spread measured)"
                    }
                );
            }
        }
        (None, Some(words)) => {
            let _ = writeln!(
                s,
                "**Use {words}.** No strategy is best at every level: the best depends on \
                 the concurrency."
            );
        }
    }
    s.push('\n');
    for l in &judged {
        let _ = writeln!(s, "{}", level_line(view, l, "nothing"));
    }
    for line in bounds(view, &judged) {
        let _ = writeln!(s, "\n{line}");
    }
    // Not recommended, and why.
    let errored: Vec<String> = view
        .results
        .targets
        .iter()
        .filter_map(|t| {
            let at: Vec<String> = judged
                .iter()
                .filter_map(|l| {
                    let (_, e) = l.errored.iter().find(|(n, _)| *n == t.name)?;
                    Some(format!("{e} at {}", fmt_conns(l.conns)))
                })
                .collect();
            (!at.is_empty()).then(|| format!("{} ({} connections)", view.label(&t.name), list(&at)))
        })
        .collect();
    if !errored.is_empty() {
        let _ = writeln!(
            s,
            "\nNot recommended where it had errors (a cell with errors never is): {}.",
            list(&errored)
        );
    }
    let in_kernel: Vec<&str> = view
        .results
        .targets
        .iter()
        .filter(|t| t.is_strategy() && t.runs_in_kernel() && view.ran(&t.name))
        .map(|t| t.name.as_str())
        .collect();
    for k in in_kernel {
        let _ = writeln!(s, "\n{}", in_kernel_sentence(view, &judged, k));
    }
    let peers: Vec<&str> = view
        .results
        .targets
        .iter()
        .filter(|t| !t.is_strategy())
        .map(|t| t.name.as_str())
        .collect();
    let pick = recommended(view, &judged).and_then(|r| r.into_iter().next());
    let (ran, idle): (Vec<&str>, Vec<&str>) = peers.iter().partition(|p| view.ran(p));
    for peer in ran.iter().chain(if view.workload.is_none() {
        &idle[..]
    } else {
        &[]
    }) {
        let _ = writeln!(s, "\n{}", against_peer(view, pick.as_deref(), peer));
    }
    if !view.workload.is_none() && !idle.is_empty() {
        let names: Vec<String> = idle.iter().map(|p| format!("`{p}`")).collect();
        let _ = writeln!(
            s,
            "\n{} did not run here: a peer does no per-request work.",
            list(&names)
        );
    }
    if view.workload.blocking_wait_us > 0.0 {
        // Against the event-loop median, an event loop would never "lose" here: the
        // bound above says where it does. Only what did not run is listed.
        let na: Vec<String> = view
            .results
            .targets
            .iter()
            .filter(|t| t.is_strategy())
            .filter_map(|t| {
                if view.ran(&t.name) {
                    could_not_run(view, &t.name).map(|w| format!("`{}` {w}", t.name))
                } else {
                    let why = view
                        .levels()
                        .iter()
                        .find_map(|&c| view.cell(&t.name, c)?.reason.clone())?;
                    Some(format!("`{}` did not run ({why})", t.name))
                }
            })
            .collect();
        if !na.is_empty() {
            let _ = writeln!(s, "\n{}.", na.join("; "));
        }
    } else {
        let _ = write!(s, "\n{}", losses(view));
    }
    let cells = view
        .results
        .cells
        .iter()
        .filter(|c| c.work == view.work() && c.load_bound())
        .count();
    if cells > 0 {
        let _ = writeln!(
            s,
            "\n\\* In {cells} cell(s) here the load generator saturated its own core in a \
             round: there the throughput is what the load could drive, a \
             floor of the server's capacity, and CPU per request is the figure to compare."
        );
    }
    s
}

/// The one line that maps a user's situation to a row: "If your handler calls a
/// blocking library, use ...; if it awaits ..., ...".
pub fn one_line(results: &crate::results::Results) -> Option<String> {
    let parts: Vec<(String, String)> = View::all(results)
        .filter_map(|v| {
            let words = pick_words(&v, &judge(&v))?;
            let work: c10k_server::Work = v.work().parse().ok()?;
            Some((crate::workload::situation(&work), words))
        })
        .collect();
    let text: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, (situation, words))| {
            let who = if i == 0 { "If your handler" } else { "if it" };
            format!("{who} {situation}, use {words}")
        })
        .collect();
    (!text.is_empty()).then(|| format!("**In one line:** {}.", text.join("; ")))
}
/// A level's line of a verdict: throughput's ranking, the load-bound caveat, server
/// CPU's ranking; `nobody` names what ran without errors when nothing did ("nothing",
/// "no option").
pub(super) fn level_line(view: &View<'_>, l: &Level, nobody: &str) -> String {
    let mut clauses = Vec::new();
    if let Some(c) = ranking_clause(view, &l.tput, &l.tput_top, "throughput", per_second) {
        clauses.push(c);
    }
    if l.load_bound {
        clauses.push(
            "the load generator saturated its core in the best cells, so their throughput \
             is a floor and CPU per request decides"
                .into(),
        );
    }
    if let Some(c) = ranking_clause(
        view,
        &l.cpu,
        &l.cpu_top,
        "least server CPU per request (us)",
        fmt_cpu,
    ) {
        clauses.push(c);
    }
    if clauses.is_empty() {
        format!(
            "- At {} connections: {nobody} ran without errors.",
            fmt_conns(l.conns)
        )
    } else {
        format!(
            "- At {} connections: {}.",
            fmt_conns(l.conns),
            clauses.join("; ")
        )
    }
}

//! Where each strategy loses, held against a stable [`Reference`] (the median of the
//! event-loop family at each level, which one noisy cell cannot move far), and how the
//! recommendation stands against each peer.

use std::fmt::Write as _;

use crate::aggregate::{TIE, median};
use crate::results::Metrics;

use super::figures::{Shown, View, cpu_shown, idle_shown, tput_shown};
use super::format::{fmt_bytes, fmt_bytes_bound, fmt_conns, group, list, quoted};

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
    /// The reference of a workload: the event-loop strategies (C10K items 1 to 3) that
    /// ran under it, or, when none of them ran, every c10k strategy that ran. Never a
    /// peer.
    pub fn of(view: &View<'_>) -> Option<Reference> {
        let family: Vec<String> = view
            .results
            .targets
            .iter()
            .filter(|t| t.is_event_loop() && view.ran(&t.name))
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
        let all: Vec<String> = view
            .results
            .targets
            .iter()
            .filter(|t| t.is_strategy() && view.ran(&t.name))
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

    /// The reference's reading of a figure at `conns`: the median of its members'
    /// medians over the rounds, `(value, is a bound)`.
    pub fn at(
        &self,
        view: &View<'_>,
        conns: usize,
        read: fn(&Metrics) -> Shown,
    ) -> Option<(f64, bool)> {
        median(
            self.members
                .iter()
                .filter_map(|n| view.agg(n, conns, read))
                .map(|a| (a.median, a.bound))
                .collect(),
        )
    }
}

/// A bound prints as `< X`.
pub fn fmt_ref(v: (f64, bool), show: fn(f64) -> String) -> String {
    if v.1 {
        format!("< {}", show(v.0))
    } else {
        show(v.0)
    }
}

/// The level where `name` is furthest behind the reference on a figure, as
/// `(conns, ratio, its value, the reference's)`; the ratio is above 1 when it is
/// behind. A level counts only where the rounds' min-max of `name` leaves the
/// reference out (with rounds to go by): a loss within the spread is no loss.
fn worst_against(
    view: &View<'_>,
    name: &str,
    reference: &Reference,
    read: fn(&Metrics) -> Shown,
    lower_is_better: bool,
) -> Option<(usize, f64, f64, (f64, bool))> {
    view.levels()
        .iter()
        .filter_map(|&c| {
            let agg = view.agg(name, c, read)?;
            let mine = agg.value()?;
            let r = reference.at(view, c, read)?;
            if !(mine > 0.0 && r.0 > 0.0) {
                return None;
            }
            if agg.stat.n > 1 && (agg.stat.min..=agg.stat.max).contains(&r.0) {
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

/// The levels a strategy could not run, grouped by reason: "at 10,000 connections
/// (beyond its limit of 1024 connections)".
pub fn could_not_run(view: &View<'_>, name: &str) -> Option<String> {
    let mut by_reason: Vec<(String, Vec<usize>)> = Vec::new();
    for &c in view.levels() {
        let Some(cell) = view.cell(name, c) else {
            continue;
        };
        if cell.is_ok() {
            continue;
        }
        let why = cell.reason.clone().unwrap_or_else(|| "n/a".into());
        match by_reason.iter_mut().find(|(r, _)| *r == why) {
            Some((_, cs)) => cs.push(c),
            None => by_reason.push((why, vec![c])),
        }
    }
    let parts: Vec<String> = by_reason
        .into_iter()
        .map(|(why, cs)| {
            let cs: Vec<String> = cs.iter().map(|&c| fmt_conns(c)).collect();
            format!("at {} connections ({why})", list(&cs))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("could not run {}", parts.join(" or ")))
}

/// Per strategy, where it loses against the workload's reference.
pub fn losses(view: &View<'_>) -> String {
    let mut s = String::new();
    let levels = view.levels();
    let reference = Reference::of(view);
    match &reference {
        Some(r) => {
            let _ = writeln!(
                s,
                "Where each one loses. Each is held against {}: {}. A reference one noisy \
                 cell cannot move far, rather than whichever cell happened to be best at a \
                 level; a loss within the strategy's own min-max over the rounds is no \
                 loss:\n",
                r.name, r.definition
            );
        }
        None => s.push_str("Where each one loses:\n\n"),
    }
    let mut clear = Vec::new();
    for t in view.results.targets.iter().filter(|t| t.is_strategy()) {
        if !view.ran(&t.name) {
            let why = levels
                .iter()
                .find_map(|&c| view.cell(&t.name, c)?.reason.clone())
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(s, "- `{}`: did not run: {why}.", t.name);
            continue;
        }
        let mut losses = Vec::new();
        if let Some(na) = could_not_run(view, &t.name) {
            losses.push(na);
        }
        if let Some(reference) = &reference {
            let ran_in_kernel = t.runs_in_kernel();
            if let Some((c, r, mine, of)) = worst_against(view, &t.name, reference, cpu_shown, true)
                .filter(|w| w.1 >= TIE && !ran_in_kernel)
            {
                losses.push(format!(
                    "at {} connections it used {r:.1}x the CPU per request of {} ({mine:.2} \
                     vs {} us)",
                    fmt_conns(c),
                    reference.name,
                    fmt_ref(of, |v| format!("{v:.2}"))
                ));
            }
            if let Some((c, r, mine, of)) =
                worst_against(view, &t.name, reference, tput_shown, false).filter(|w| w.1 >= TIE)
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
                    let mine = view.agg(&t.name, c, idle_shown)?.value()?;
                    Some((c, mine, reference.at(view, c, idle_shown)?))
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
                let cell = view.cell(&t.name, c)?;
                (cell.errors > 0).then(|| format!("{} at {}", cell.errors, fmt_conns(c)))
            })
            .collect();
        if !errors.is_empty() {
            losses.push(format!("it had errors ({} connections)", list(&errors)));
        }
        if losses.is_empty() {
            clear.push(format!("`{}`", t.name));
        } else {
            let _ = writeln!(s, "- `{}`: {}.", t.name, losses.join("; "));
        }
    }
    if !clear.is_empty() {
        let _ = writeln!(
            s,
            "- {}: no clear loss here: within {:.0}% of {} or better on CPU per request and \
             throughput wherever {} ran.",
            list(&clear),
            (TIE - 1.0) * 100.0,
            reference.as_ref().map_or("the others", |r| r.name),
            if clear.len() == 1 { "it" } else { "they" }
        );
    }
    s
}

/// How `pick` stands against `peer` on one figure, as a clause: the ratio
/// `pick / peer` at each level both measured, ties within the noise grouped.
fn versus(view: &View<'_>, pick: &str, peer: &str, read: fn(&Metrics) -> Shown) -> Option<String> {
    let mut apart = Vec::new();
    let mut ties = Vec::new();
    for &c in view.levels() {
        let (Some(a), Some(b)) = (
            view.agg(pick, c, read).and_then(|a| a.value()),
            view.agg(peer, c, read).and_then(|a| a.value()),
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
    Some(list(&parts))
}

/// The sentence about a peer: how the recommendation stands against it.
pub fn against_peer(view: &View<'_>, pick: Option<&str>, peer: &str) -> String {
    let head = format!("Against `{peer}` (a peer: shown for scale, never the advice)");
    if !view.ran(peer) {
        let why = view
            .levels()
            .iter()
            .find_map(|&c| view.cell(peer, c)?.reason.clone())
            .unwrap_or_else(|| "n/a".into());
        return format!("{head}: it did not run ({why}).");
    }
    let Some(pick) = pick else {
        return format!("{head}: no c10k strategy ran to compare with it.");
    };
    let cpu_clause = versus(view, pick, peer, cpu_shown);
    let tput_clause = versus(view, pick, peer, tput_shown);
    match (cpu_clause, tput_clause) {
        (None, None) => format!("{head}: no level where both it and `{pick}` ran."),
        (Some(c), Some(t)) => {
            format!("{head}, `{pick}`'s CPU per request was {c}; its throughput was {t}.")
        }
        (Some(c), None) => format!("{head}, `{pick}`'s CPU per request was {c}."),
        (None, Some(t)) => format!("{head}, `{pick}`'s throughput was {t}."),
    }
}

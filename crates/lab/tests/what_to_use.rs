//! "What to use" per workload, from synthetic results of three rounds: the words are
//! computed from the figures, a difference is claimed only where the rounds' min-max
//! ranges are apart, a cell with errors is never recommended; and the JSON keeps every
//! round beside the medians and spreads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use c10k_lab::report;
use c10k_lab::results::{Cell, Round};
use common::*;

const ROWS: [(&str, Option<&str>); 12] = [
    ("select", Some("1")),
    ("poll", Some("1")),
    ("epoll-lt", Some("1")),
    ("epoll-et", Some("2")),
    ("uring", Some("3")),
    ("thread", Some("4")),
    ("fork", Some("4")),
    ("prefork", Some("4")),
    ("pool", Some("answer 5")),
    ("green", Some("answers 3, 4")),
    ("kernel", Some("5")),
    ("c-epoll", None),
];

const EVENT_LOOPS: [&str; 5] = ["select", "poll", "epoll-lt", "epoll-et", "uring"];

/// Three rounds: `(throughput, CPU per request)` each.
fn three(work: &str, name: &str, conns: usize, rounds: [(f64, f64); 3]) -> Cell {
    let specs: Vec<Spec> = rounds
        .iter()
        .map(|&(t, c)| spec(t, c, 300, conns))
        .collect();
    cell_rounds(work, name, conns, &specs)
}

/// Around `t` and `c`, by `d` (a fraction) either way.
fn around(t: f64, c: f64, d: f64) -> [(f64, f64); 3] {
    [
        (t * (1.0 - d), c * (1.0 + d)),
        (t, c),
        (t * (1.0 + d), c * (1.0 - d)),
    ]
}

const NONE: &str = "none";
const CPU: &str = "cpu=200us";
const BLOCKING: &str = "wait=2ms,blocking";
const ASYNC: &str = "wait=2ms,async";
const LEVELS: [usize; 2] = [100, 1_000];

fn four_workloads() -> c10k_lab::results::Results {
    let mut cells = Vec::new();
    for &c in &LEVELS {
        // none: the event loops alike on throughput; epoll-et and uring need the
        // least CPU, and their ranges overlap; the others' are apart.
        for n in EVENT_LOOPS {
            let cpu = if matches!(n, "epoll-et" | "uring") {
                6.0
            } else {
                7.5
            };
            cells.push(three(NONE, n, c, around(150_000.0, cpu, 0.02)));
        }
        cells.push(three(NONE, "thread", c, around(60_000.0, 14.0, 0.03)));
        let mut fork = around(45_000.0, 20.0, 0.03).map(|(t, u)| spec(t, u, 90_000, c));
        if c == 1_000 {
            fork[1].errors = 7;
        }
        cells.push(cell_rounds(NONE, "fork", c, &fork));
        cells.push(three(NONE, "prefork", c, around(50_000.0, 18.0, 0.03)));
        cells.push(three(NONE, "pool", c, around(80_000.0, 11.0, 0.03)));
        cells.push(three(NONE, "green", c, around(140_000.0, 7.0, 0.02)));
        cells.push(three(NONE, "kernel", c, around(80_000.0, 0.1, 0.02)));
        cells.push(three(NONE, "c-epoll", c, around(160_000.0, 5.0, 0.02)));

        // cpu=200us: bound by the core for all: every range overlaps but fork's.
        for n in ROWS
            .iter()
            .map(|r| r.0)
            .filter(|n| !matches!(*n, "kernel" | "c-epoll"))
        {
            let (t, u) = if n == "fork" {
                (3_900.0, 250.0)
            } else {
                (4_700.0, 210.0)
            };
            cells.push(three(CPU, n, c, around(t, u, 0.03)));
        }
        for n in ["kernel", "c-epoll"] {
            cells.push(Cell::na(CPU, n, c, "does no work".into()));
        }

        // wait=2ms,blocking: the event loops and green stall at ~500/s; thread and
        // the big pool tie; fork would beat them at 1,000 but had errors.
        for n in EVENT_LOOPS.iter().chain(&["green"]) {
            cells.push(three(BLOCKING, n, c, around(480.0, 9.0, 0.02)));
        }
        let (thread, pool, prefork) = if c == 100 {
            (42_000.0, 41_000.0, 31_000.0)
        } else {
            (30_000.0, 30_500.0, 16_000.0)
        };
        cells.push(three(BLOCKING, "thread", c, around(thread, 27.0, 0.05)));
        cells.push(three(BLOCKING, "pool", c, around(pool, 25.0, 0.05)));
        cells.push(three(BLOCKING, "prefork", c, around(prefork, 40.0, 0.05)));
        let mut fork = around(36_000.0, 45.0, 0.02).map(|(t, u)| spec(t, u, 300, c));
        if c == 1_000 {
            fork[0].errors = 120;
        }
        cells.push(cell_rounds(BLOCKING, "fork", c, &fork));
        for n in ["kernel", "c-epoll"] {
            cells.push(Cell::na(BLOCKING, n, c, "does no work".into()));
        }

        // wait=2ms,async: at 100 connections the wait bounds everyone (50,000/s) and
        // CPU decides; at 1,000 epoll-et serves clearly more.
        for n in ROWS
            .iter()
            .map(|r| r.0)
            .filter(|n| !matches!(*n, "kernel" | "c-epoll"))
        {
            let (t, u) = match (n, c) {
                ("epoll-et", 100) => (47_000.0, 7.0),
                (_, 100) if EVENT_LOOPS.contains(&n) || n == "green" => (47_000.0, 8.5),
                (_, 100) => (40_000.0, 15.0),
                ("epoll-et", _) => (125_000.0, 7.0),
                (_, _) if EVENT_LOOPS.contains(&n) || n == "green" => (110_000.0, 8.0),
                _ => (50_000.0, 16.0),
            };
            cells.push(three(ASYNC, n, c, around(t, u, 0.02)));
        }
        for n in ["kernel", "c-epoll"] {
            cells.push(Cell::na(ASYNC, n, c, "does no work".into()));
        }
    }
    results_of(
        &ROWS,
        &[
            (NONE, &LEVELS),
            (CPU, &LEVELS),
            (BLOCKING, &LEVELS),
            (ASYNC, &LEVELS),
        ],
        3,
        cells,
    )
}

#[test]
fn a_section_per_workload_with_words_from_the_figures() {
    let r = four_workloads();
    let advice = report::advice(&r);

    let none = section(&advice, NONE);
    assert!(none.contains("**Use `epoll-et` or `uring`.**"), "{none}");
    // Throughput tied among the event loops: the rule says so, with the figures.
    assert!(
        none.contains(
            "- At 100 connections: throughput: `select` 150,000 (147,000-153,000) and, \
             indistinguishable here (their min-max ranges overlap its), `poll`, `epoll-lt`, \
             `epoll-et` and `uring`; next `green` 140,000 (137,200-142,800)"
        ),
        "{none}"
    );
    assert!(
        none.contains(
            "least server CPU per request (us): indistinguishable here between `epoll-et` 6.00 \
             (5.88-6.12) and `uring` 6.00 (5.88-6.12) (their min-max ranges overlap the best's)"
        ),
        "{none}"
    );
    assert!(
        none.contains("`kernel` is not ranked by server CPU"),
        "{none}"
    );
    assert!(none.contains("Against `c-epoll` (a peer"), "{none}");
    assert!(none.contains("Where each one loses"), "{none}");
    assert!(
        none.contains("Not recommended where it had errors (a cell with errors never is): `fork` (7 at 1,000 connections)"),
        "{none}"
    );

    let cpu = section(&advice, CPU);
    assert!(
        cpu.contains(
            "**Use `select`, `poll`, `epoll-lt`, `epoll-et`, `uring`, `thread`, `prefork`, \
             `pool` or `green`.** Indistinguishable here from each other"
        ),
        "{cpu}"
    );
    assert!(
        cpu.contains(
            "Each request burns 200 us of CPU: 1 server CPU serves at most 5,000 requests/s, \
             whatever the strategy; measured best:"
        ),
        "{cpu}"
    );
    assert!(cpu.contains("next `fork` 3,900 (3,783-4,017)"), "{cpu}");
    assert!(
        cpu.contains("`c-epoll` did not run here: a peer does no per-request work."),
        "{cpu}"
    );
    assert!(!cpu.contains("Against `c-epoll`"), "{cpu}");

    let blocking = section(&advice, BLOCKING);
    assert!(
        blocking.contains("**Use `thread` or `pool --workers 64`.**"),
        "{blocking}"
    );
    assert!(
        blocking.contains(
            "An event loop serves at most 500 requests/s per worker here: each request holds \
             the loop's thread for its 2 ms blocking call"
        ),
        "{blocking}"
    );
    assert!(
        blocking
            .contains("measured with `--workers 1`: `select` 480 requests/s at 1,000 connections"),
        "{blocking}"
    );
    assert!(
        blocking.contains("`pool --workers 64` waits on 64 threads: at most 32,000 requests/s"),
        "{blocking}"
    );
    // fork served the most at 1,000 connections, with errors: never the advice.
    assert!(
        blocking.contains("`fork` (120 at 1,000 connections)"),
        "{blocking}"
    );
    assert!(!blocking.contains("Where each one loses"), "{blocking}");

    let asynch = section(&advice, ASYNC);
    assert!(asynch.contains("**Use `epoll-et`.**"), "{asynch}");
    assert!(
        asynch.contains(
            "A closed loop of N connections sends at most N / 2 ms requests/s: 50,000 at 100 \
             connections (best measured 47,000, 94% of it) and 500,000 at 1,000 connections \
             (best measured 125,000, 25% of it)"
        ),
        "{asynch}"
    );
    assert!(
        asynch.contains(
            "throughput: `epoll-et` 125,000 (122,500-127,500), ahead of `select` 110,000 \
             (107,800-112,200) (their min-max ranges are apart)"
        ),
        "{asynch}"
    );

    assert!(
        advice.contains(
            "**In one line:** If your handler does little per request, use `epoll-et` or \
             `uring`; if it burns CPU (200 us a request), use `select`, `poll`, `epoll-lt`, \
             `epoll-et`, `uring`, `thread`, `prefork`, `pool` or `green`; if it calls a \
             blocking library (2 ms a call), use `thread` or `pool --workers 64`; if it awaits \
             asynchronous I/O (2 ms a request), use `epoll-et`."
        ),
        "{advice}"
    );

    // The report: a table per workload, the settings in words.
    let md = report::render(&r);
    let t = table_of(&md, "Throughput", Some(BLOCKING));
    let pool = &t
        .iter()
        .find(|(n, _)| n == "`pool --workers 64`")
        .unwrap()
        .1;
    assert_eq!(pool[1], "30,500 (28,975-32,025)");
    let fork = &t.iter().find(|(n, _)| n == "`fork`").unwrap().1;
    assert_eq!(fork[1], "36,000 (35,280-36,720) (120 err)");
    assert!(
        md.contains(
            "under `wait=2ms,blocking`, `pool --workers 64` (a pool sized for blocking calls"
        ),
        "{md}"
    );
    assert!(md.contains("- Rounds: 3, interleaved"), "{md}");
    assert!(
        md.contains("- Longer warm-ups: 2.0 s under `wait=2ms,blocking` at 1,000 connections"),
        "{md}"
    );
    // Idle memory only where it was measured.
    assert_eq!(
        md.matches("### `none`: no work per request").count(),
        8,
        "{md}"
    );
}

#[test]
fn overlapping_ranges_are_indistinguishable_and_apart_ones_are_claimed() {
    let rows = [("epoll-et", Some("2")), ("uring", Some("3"))];
    let levels = [1_000];
    // Overlapping throughput ranges, apart CPU ranges.
    let r = results_of(
        &rows,
        &[(NONE, &levels)],
        3,
        vec![
            three(
                NONE,
                "epoll-et",
                1_000,
                [(100_000.0, 6.0), (110_000.0, 6.1), (120_000.0, 6.2)],
            ),
            three(
                NONE,
                "uring",
                1_000,
                [(115_000.0, 6.5), (125_000.0, 6.6), (130_000.0, 6.7)],
            ),
        ],
    );
    let advice = report::advice(&r);
    assert!(
        advice.contains(
            "throughput: indistinguishable here between `uring` 125,000 (115,000-130,000) and \
             `epoll-et` 110,000 (100,000-120,000) (their min-max ranges overlap the best's)"
        ),
        "{advice}"
    );
    assert!(
        advice.contains(
            "least server CPU per request (us): `epoll-et` 6.10 (6.00-6.20), ahead of `uring` \
             6.60 (6.50-6.70) (their min-max ranges are apart)"
        ),
        "{advice}"
    );
    assert!(advice.contains("**Use `epoll-et`.**"), "{advice}");

    // Both overlap: no claim, both named.
    let tied = results_of(
        &rows,
        &[(NONE, &levels)],
        3,
        vec![
            three(
                NONE,
                "epoll-et",
                1_000,
                [(100_000.0, 6.0), (110_000.0, 6.3), (120_000.0, 6.6)],
            ),
            three(
                NONE,
                "uring",
                1_000,
                [(115_000.0, 6.5), (125_000.0, 6.6), (130_000.0, 6.7)],
            ),
        ],
    );
    let advice = report::advice(&tied);
    assert!(
        advice.contains("**Use `epoll-et` or `uring`.** Indistinguishable here from each other"),
        "{advice}"
    );
}

#[test]
fn no_strategy_best_everywhere_is_said_per_level() {
    let rows = [("epoll-et", Some("2")), ("thread", Some("4"))];
    let r = results_of(
        &rows,
        &[(BLOCKING, &LEVELS)],
        3,
        vec![
            three(BLOCKING, "epoll-et", 100, around(40_000.0, 9.0, 0.01)),
            three(BLOCKING, "epoll-et", 1_000, around(480.0, 9.0, 0.01)),
            three(BLOCKING, "thread", 100, around(30_000.0, 9.0, 0.01)),
            three(BLOCKING, "thread", 1_000, around(30_000.0, 30.0, 0.01)),
        ],
    );
    let advice = report::advice(&r);
    assert!(
        advice.contains(
            "**Use `epoll-et` at 100 connections and `thread` at 1,000 connections.** No \
             strategy is best at every level"
        ),
        "{advice}"
    );
}

#[test]
fn tied_at_one_level_and_alone_at_another_is_among_the_best() {
    let rows = [("epoll-et", Some("2")), ("uring", Some("3"))];
    let r = results_of(
        &rows,
        &[(NONE, &LEVELS)],
        3,
        vec![
            three(NONE, "epoll-et", 100, around(100_000.0, 6.0, 0.05)),
            three(NONE, "epoll-et", 1_000, around(100_000.0, 6.0, 0.01)),
            three(NONE, "uring", 100, around(98_000.0, 6.1, 0.05)),
            three(NONE, "uring", 1_000, around(80_000.0, 7.0, 0.01)),
        ],
    );
    let advice = report::advice(&r);
    assert!(
        advice.contains(
            "**Use `epoll-et`.** Among the best at every level (100 and 1,000 connections)"
        ),
        "{advice}"
    );
}

#[test]
fn a_cell_with_errors_is_never_recommended() {
    let rows = [("epoll-et", Some("2")), ("thread", Some("4"))];
    let mut bad = spec(200_000.0, 3.0, 300, 100);
    bad.errors = 1;
    let r = results_of(
        &rows,
        &[(NONE, &[100])],
        1,
        vec![
            cell_rounds(NONE, "thread", 100, &[bad]),
            cell_rounds(NONE, "epoll-et", 100, &[spec(150_000.0, 6.0, 300, 100)]),
        ],
    );
    let advice = report::advice(&r);
    assert!(advice.contains("**Use `epoll-et`.**"), "{advice}");
    assert!(
        advice.contains("only c10k strategy that ran without errors here"),
        "{advice}"
    );
    assert!(
        advice.contains("Not recommended where it had errors (a cell with errors never is): `thread` (1 at 100 connections)"),
        "{advice}"
    );
}

#[test]
fn a_cell_is_the_median_and_spread_of_its_rounds() {
    let mut s = [
        spec(12_000.0, 10.0, 300, 10),
        spec(10_000.0, 30.0, 300, 10),
        spec(11_000.0, 20.0, 300, 10),
    ];
    s[0].p99_us = 900.0;
    s[2].errors = 4;
    let mut c = cell_rounds(NONE, "epoll-et", 10, &s);
    let m = c.median.unwrap();
    assert_eq!(m.throughput_rps, 11_000.0);
    assert!((m.server_cpu_per_request_us.unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(m.p99_us, 200.0);
    let sp = c.spread.unwrap();
    assert_eq!(sp.throughput_rps, [10_000.0, 12_000.0]);
    assert_eq!(sp.p99_us, [200.0, 900.0]);
    assert_eq!(c.errors, 4);
    assert_eq!(c.median_round().unwrap().throughput_rps, 11_000.0);

    // A round that did not run leaves the others; the table says how many ran.
    c.rounds.push(Round::na(4, "did not start: x".into()));
    let c = Cell::from_rounds(NONE, "epoll-et", 10, Some(1), c.rounds);
    assert_eq!(c.status, "ok");
    assert_eq!(c.median.unwrap().throughput_rps, 11_000.0);
    let r = results_of(&[("epoll-et", Some("2"))], &[(NONE, &[10])], 4, vec![c]);
    let md = report::render(&r);
    let t = table(&md, "Throughput");
    assert_eq!(
        t[0].1[0],
        "11,000 (10,000-12,000) (4 err) [3 of 4 rounds; 1]"
    );
    assert!(
        md.contains("## Cells that did not run\n\n1. did not start: x\n"),
        "{md}"
    );

    // No round ran: n/a with the first round's reason.
    let none = Cell::from_rounds(
        NONE,
        "epoll-et",
        10,
        Some(1),
        vec![
            Round::na(1, "did not start: a".into()),
            Round::na(2, "b".into()),
        ],
    );
    assert_eq!(none.status, "n/a");
    assert_eq!(none.reason.as_deref(), Some("did not start: a"));
    assert!(none.median.is_none() && none.spread.is_none());
}

#[test]
fn results_json_keeps_every_round_and_the_aggregates() {
    let r = four_workloads();
    let json = serde_json::to_value(&r).unwrap();
    let st = &json["settings"];
    assert_eq!(st["rounds"], 3);
    assert_eq!(st["workers"], 1);
    let works: Vec<&str> = st["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["work"].as_str().unwrap())
        .collect();
    assert_eq!(works, [NONE, CPU, BLOCKING, ASYNC]);
    assert_eq!(st["workloads"][2]["pool_workers"], 64);
    assert_eq!(st["workloads"][2]["blocking_wait_us"], 2000.0);
    assert_eq!(st["workloads"][0]["conns"], serde_json::json!([100, 1000]));

    let cells = json["cells"].as_array().unwrap();
    let cell = cells
        .iter()
        .find(|c| c["work"] == BLOCKING && c["target"] == "pool" && c["conns"] == 1000)
        .unwrap();
    assert_eq!(cell["status"], "ok");
    assert_eq!(cell["workers"], 64);
    let rounds = cell["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (i, round) in rounds.iter().enumerate() {
        assert_eq!(round["round"], i + 1);
        assert_eq!(round["status"], "ok");
        assert!(round["metrics"]["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(round["metrics"]["load"]["p99_us"].is_number());
    }
    assert_eq!(cell["median"]["throughput_rps"], 30_500.0);
    let spread = cell["spread"]["throughput_rps"].as_array().unwrap();
    assert_eq!(spread.len(), 2);
    assert!(spread[0].as_f64().unwrap() < spread[1].as_f64().unwrap());
    assert!(cell["median"]["server_cpu_per_request_us"].is_number());
    assert!(cell["spread"]["p99_us"].is_array());

    let na = cells
        .iter()
        .find(|c| c["work"] == CPU && c["target"] == "kernel")
        .unwrap();
    assert_eq!(na["status"], "n/a");
    assert_eq!(na["rounds"], serde_json::json!([]));
    assert!(na["median"].is_null());
}

/// "could not run 10,000 (beyond its limit of 1024 connections) connections" read
/// badly.
#[test]
fn regression_a_level_that_could_not_run_reads_as_a_sentence() {
    let rows = [("select", Some("1")), ("epoll-et", Some("2"))];
    let levels = [1_000, 10_000];
    let r = results_of(
        &rows,
        &[(NONE, &levels)],
        1,
        vec![
            cell("select", 1_000, spec(100_000.0, 7.0, 300, 1_000)),
            Cell::na(
                NONE,
                "select",
                10_000,
                "beyond its limit of 1024 connections".into(),
            ),
            cell("epoll-et", 1_000, spec(100_000.0, 7.0, 300, 1_000)),
            cell("epoll-et", 10_000, spec(90_000.0, 8.0, 300, 10_000)),
        ],
    );
    let md = report::render(&r);
    assert!(
        loss_line(&md, "select")
            .contains("could not run at 10,000 connections (beyond its limit of 1024 connections)"),
        "{md}"
    );
    assert!(!md.contains("could not run 10,000"), "{md}");
}

#[test]
fn charts_have_a_panel_per_workload() {
    let r = four_workloads();
    let svg = c10k_lab::chart::render(&c10k_lab::chart::CHARTS[0], &r);
    let desc = &svg[svg.find("<desc>").unwrap()..svg.find("</desc>").unwrap()];
    for w in [NONE, CPU, BLOCKING, ASYNC] {
        assert!(
            desc.contains(&format!("\n{w} epoll-et 100="))
                || desc.contains(&format!(">{w} epoll-et 100=")),
            "{w}: {desc}"
        );
    }
    assert!(
        desc.contains("wait=2ms,blocking pool 100=41000 1000=30500"),
        "{desc}"
    );
    // Every panel's caption, and one legend entry per row that has a line.
    assert!(svg.contains("wait=2ms,blocking: a 2 ms blocking call per request"));
    assert_eq!(svg.matches(">\nc-epoll\n<").count(), 1, "one legend entry");
    // The memory chart has the one workload that measured it.
    let mem = c10k_lab::chart::render(&c10k_lab::chart::CHARTS[3], &r);
    assert!(!mem.contains("cpu=200us"), "{mem}");
}

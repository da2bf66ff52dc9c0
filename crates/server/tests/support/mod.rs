//! A small runner for the `harness = false` tests (their strategies that fork must
//! run in a process's only thread, so they have their own `main`): each case is
//! reported by name like a `#[test]` (`test NAME ... ok`), a case that cannot run
//! here is reported as skipped with the reason, never as passed, and the process
//! fails if any case failed.
//!
//! Understands the arguments `cargo test` passes on: `--list`, name filters
//! (substrings; `--exact` for whole names), `--skip NAME` and `--ignored` (runs
//! nothing: no case is ignored). Other flags are accepted and ignored.
#![allow(dead_code)] // each test binary uses a different subset

use std::panic::{AssertUnwindSafe, catch_unwind};

use c10k_server::{Availability, Strategy};

/// What a case did, when it did not panic.
pub enum Outcome {
    /// It ran and every check passed.
    Passed,
    /// It cannot run here (the reason is printed).
    Skipped(String),
}

/// A named case.
pub struct Case {
    name: String,
    run: Box<dyn FnOnce() -> Outcome>,
}

impl Case {
    /// A case that always runs.
    pub fn new(name: impl Into<String>, run: impl FnOnce() + 'static) -> Case {
        Case {
            name: name.into(),
            run: Box::new(move || {
                run();
                Outcome::Passed
            }),
        }
    }

    /// A case of `strategy` for a session app: skipped, saying why, when the strategy
    /// serves one app only (`kernel`: echo, in the kernel), else as [`Case::strategy`].
    pub fn strategy_for_sessions(
        prefix: &str,
        strategy: Strategy,
        run: impl FnOnce(Strategy) + 'static,
    ) -> Case {
        match strategy.serves_app("a custom session app") {
            Ok(()) => Case::strategy(prefix, strategy, run),
            Err(why) => Case {
                name: format!("{prefix}::{}", strategy.name().replace('-', "_")),
                run: Box::new(move || Outcome::Skipped(format!("{strategy} {why}"))),
            },
        }
    }

    /// A case of `strategy`, named `{prefix}::{strategy}` (with `_` for `-`, as the
    /// generated `#[test]`s of the other test files): skipped, saying why, when the
    /// strategy is not built or cannot run on this machine.
    pub fn strategy(
        prefix: &str,
        strategy: Strategy,
        run: impl FnOnce(Strategy) + 'static,
    ) -> Case {
        Case {
            name: format!("{prefix}::{}", strategy.name().replace('-', "_")),
            run: Box::new(move || match strategy.availability() {
                Availability::Available => {
                    run(strategy);
                    Outcome::Passed
                }
                Availability::NotBuilt { planned } => {
                    Outcome::Skipped(format!("{strategy} is not built yet ({planned})"))
                }
                Availability::Unavailable { reason } => {
                    Outcome::Skipped(format!("{strategy} cannot run on this machine: {reason}"))
                }
            }),
        }
    }
}

/// Runs the cases the arguments select, one after another on this (the main)
/// thread, and exits: status 1 if any failed.
pub fn run(cases: Vec<Case>) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    // libtest's flags that take a value as the next argument.
    const WITH_VALUE: [&str; 7] = [
        "--test-threads",
        "--skip",
        "--color",
        "--format",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            if let Some(value) = rest.next()
                && arg == "--skip"
            {
                skips.push(value.as_str());
            }
        } else if !arg.starts_with('-') {
            filters.push(arg.as_str());
        }
    }
    let matches = |name: &str, f: &str| if exact { name == f } else { name.contains(f) };
    let selected = |name: &str| {
        (filters.is_empty() || filters.iter().any(|f| matches(name, f)))
            && !skips.iter().any(|f| matches(name, f))
    };
    if args.iter().any(|a| a == "--list") {
        for case in cases.iter().filter(|c| selected(&c.name)) {
            println!("{}: test", case.name);
        }
        std::process::exit(0);
    }
    let ignored_only = args.iter().any(|a| a == "--ignored");
    let (mut passed, mut failed, mut skipped, mut filtered) = (0, Vec::new(), 0, 0);
    for case in cases {
        if ignored_only || !selected(&case.name) {
            filtered += 1;
            continue;
        }
        // The result line comes after the case, whose own output comes first.
        match catch_unwind(AssertUnwindSafe(case.run)) {
            Ok(Outcome::Passed) => {
                passed += 1;
                println!("test {} ... ok", case.name);
            }
            Ok(Outcome::Skipped(why)) => {
                skipped += 1;
                println!("test {} ... SKIPPED: {why}", case.name);
            }
            Err(_) => {
                println!("test {} ... FAILED", case.name);
                failed.push(case.name);
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {skipped} skipped; {filtered} filtered out",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    std::process::exit(i32::from(!failed.is_empty()));
}

/// How much earlier than its timeout a timer may fire, as the client measures it
/// (clock granularity: the client starts its clock before the server stamps).
pub const TIMER_EARLY: std::time::Duration = std::time::Duration::from_millis(100);

/// Fails unless `elapsed` falls in the window of a timer of `timeout`: not before it
/// (less [`TIMER_EARLY`]), and before three times it, or a second past it, whichever
/// is later (timers are swept every quarter of the shortest timeout, at most a
/// second, and the machine is small and busy).
pub fn assert_timed_out(what: &str, elapsed: std::time::Duration, timeout: std::time::Duration) {
    let late = (timeout * 3).max(timeout + std::time::Duration::from_secs(1));
    assert!(
        elapsed + TIMER_EARLY >= timeout && elapsed < late,
        "{what}: after {elapsed:?}; the timeout is {timeout:?} (allowed {:?} to {late:?})",
        timeout.saturating_sub(TIMER_EARLY)
    );
}

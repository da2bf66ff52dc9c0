//! One `#[test]` per strategy, from a list checked against `Strategy::ALL`, and the
//! timing helpers of the tests that measure (time windows, one-at-a-time runs).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use c10k_server::{Availability, Strategy};

/// One `#[test]` per strategy and test function, so that a failure names both:
///
/// ```ignore
/// strategy_tests! {
///     strategies: [select, poll, epoll_lt, ...],
///     except: [prefork: "why it does not apply"],   // optional
///     tests: [idle_close, partial_head],
/// }
/// ```
///
/// expands to a module per test function, holding one test per strategy:
/// `idle_close::epoll_lt` calls `idle_close("epoll-lt")` (the name is the identifier
/// with `-` for `_`). Each module also gets `every_strategy_is_listed`, which fails
/// when the list and [`Strategy::ALL`] part ways: every strategy that is built must be
/// listed, or named in `except` with the reason. (A macro cannot iterate
/// `Strategy::ALL`; this test keeps the written list honest.)
///
/// `only: [fork, prefork]` instead of `strategies`/`except`: a behaviour that only
/// those strategies have. There is no coverage test then; each name must still be a
/// strategy of `Strategy::ALL`.
///
/// `ignore: "why",` before `tests` marks every generated per-strategy test
/// `#[ignore = "why"]` (a known bug, pinned until it is fixed): the test harness
/// lists them as ignored with the reason, and `-- --ignored` runs them.
///
/// A strategy that is built but cannot run on this machine (io_uring disabled) fails
/// its tests, saying why; it is never skipped silently. A test may list a strategy
/// that is not built when that is what it checks (`cli.rs`: it fails cleanly).
macro_rules! strategy_tests {
    (strategies: $strategies:tt, tests: $tests:tt $(,)?) => {
        $crate::common::strategy_tests!(@all $strategies, [], [], $tests);
    };
    (strategies: $strategies:tt, except: $except:tt, tests: $tests:tt $(,)?) => {
        $crate::common::strategy_tests!(@all $strategies, $except, [], $tests);
    };
    (strategies: $strategies:tt, ignore: $why:literal, tests: $tests:tt $(,)?) => {
        $crate::common::strategy_tests!(@all $strategies, [], [$why], $tests);
    };
    (
        strategies: $strategies:tt,
        except: $except:tt,
        ignore: $why:literal,
        tests: $tests:tt $(,)?
    ) => {
        $crate::common::strategy_tests!(@all $strategies, $except, [$why], $tests);
    };
    (only: $strategies:tt, tests: $tests:tt $(,)?) => {
        $crate::common::strategy_tests!(@only $strategies, [], $tests);
    };
    (only: $strategies:tt, ignore: $why:literal, tests: $tests:tt $(,)?) => {
        $crate::common::strategy_tests!(@only $strategies, [$why], $tests);
    };
    (@all $strategies:tt, $except:tt, $ignore:tt, [$($test:ident),* $(,)?]) => {
        $(
            mod $test {
                $crate::common::strategy_tests!(@each $test, $ignore, $strategies);

                #[test]
                fn every_strategy_is_listed() {
                    $crate::common::assert_lists_every_strategy(
                        stringify!($test),
                        &$crate::common::strategy_tests!(@names $strategies),
                        &$crate::common::strategy_tests!(@except $except),
                    );
                }
            }
        )*
    };
    (@only $strategies:tt, $ignore:tt, [$($test:ident),* $(,)?]) => {
        $(
            mod $test {
                $crate::common::strategy_tests!(@each $test, $ignore, $strategies);
            }
        )*
    };
    (@each $test:ident, $ignore:tt, [$($strategy:ident),* $(,)?]) => {
        $($crate::common::strategy_tests!(@one $test, $ignore, $strategy);)*
    };
    (@one $test:ident, [$($why:literal)?], $strategy:ident) => {
        #[test]
        $(#[ignore = $why])?
        fn $strategy() {
            super::$test(&$crate::common::strategy_under_test(stringify!($strategy)));
        }
    };
    (@names [$($strategy:ident),* $(,)?]) => {
        [$(stringify!($strategy)),*]
    };
    (@except [$($strategy:ident: $why:literal),* $(,)?]) => {
        [$((stringify!($strategy), $why)),*]
    };
}
pub(crate) use strategy_tests;

/// `epoll_lt` (an identifier) or `epoll-lt` (a name): the command-line name.
fn name_of(listed: &str) -> String {
    listed.replace('_', "-")
}

/// The strategy a generated test runs: its command-line name, after checking that it
/// is one of [`Strategy::ALL`]. When it cannot run here (not built, or io_uring
/// disabled) this says why on stderr: the test's server then fails to start, with the
/// reason, unless the test expects exactly that.
pub fn strategy_under_test(listed: &str) -> String {
    let name = name_of(listed);
    let strategy = Strategy::from_name(&name).unwrap_or_else(|| {
        panic!("{listed}: no strategy of that name in Strategy::ALL (rename or remove it)")
    });
    match strategy.availability() {
        Availability::Available => {}
        Availability::Unavailable { reason } => {
            eprintln!("strategy {name} cannot run on this machine: {reason}");
        }
        Availability::NotBuilt { planned } => {
            eprintln!("strategy {name} is not built yet ({planned})");
        }
    }
    name
}

/// Fails unless `listed` and `except` together name every built strategy of
/// [`Strategy::ALL`], each once. Strategies not built yet are left out, and printed.
pub fn assert_lists_every_strategy(test: &str, listed: &[&str], except: &[(&str, &str)]) {
    let listed: Vec<String> = listed.iter().map(|s| name_of(s)).collect();
    let except: Vec<String> = except.iter().map(|(s, _)| name_of(s)).collect();
    let mut problems = Vec::new();
    for name in listed.iter().chain(&except) {
        if Strategy::from_name(name).is_none() {
            problems.push(format!("{name} is not in Strategy::ALL"));
        }
        if listed.iter().chain(&except).filter(|n| *n == name).count() > 1 {
            problems.push(format!("{name} is listed twice"));
        }
    }
    for info in Strategy::ALL {
        if let Availability::NotBuilt { planned } = info.strategy.availability() {
            eprintln!(
                "{test}: {} is not built yet ({planned}): not tested",
                info.name
            );
            continue;
        }
        let name = info.name.to_owned();
        if !listed.contains(&name) && !except.contains(&name) {
            problems.push(format!(
                "{name} is not tested: add it to the strategy_tests! list of {test}, or to \
                 its except list with the reason"
            ));
        }
    }
    problems.sort_unstable();
    problems.dedup();
    assert!(problems.is_empty(), "{test}:\n  {}", problems.join("\n  "));
}

/// Tests that measure time or CPU take this lock, so that they run one at a time (as
/// they did when one test looped over the strategies): on a 2-core machine two
/// 1,000-connection scenarios side by side would measure each other.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How much earlier than its timeout a timer may fire, as the client measures it:
/// the client starts its clock before the server stamps the connection, so this only
/// covers clock granularity.
pub const TIMER_EARLY: Duration = Duration::from_millis(100);

/// The latest a timer may fire after its `timeout`: three times the timeout (timers
/// are swept every quarter of the shortest timeout, at most a second), and at least a
/// second past it (the machine is small and busy).
pub fn timer_late(timeout: Duration) -> Duration {
    (timeout * 3).max(timeout + Duration::from_secs(1))
}

/// Fails unless `elapsed` (from the client's last byte to the close it saw) falls in
/// the window of a timer of `timeout`: not before it, and not much after it.
pub fn assert_timed_out(what: &str, elapsed: Duration, timeout: Duration) {
    assert!(
        elapsed + TIMER_EARLY >= timeout,
        "{what}: closed {elapsed:?} after the last byte, before the timeout of {timeout:?}"
    );
    let late = timer_late(timeout);
    assert!(
        elapsed < late,
        "{what}: closed {elapsed:?} after the last byte: the timeout is {timeout:?}, \
         allowed up to {late:?}"
    );
}

//! `--processes N`: one load spread over N child processes, each under its own
//! descriptor limit and its own source addresses, merged into one report.
//!
//! The parent re-executes a `c10k` binary once per child (`c10k load --processes-child`,
//! see [`Launcher`]) and speaks to each over its stdin and stdout (`processes/wire.rs`):
//! it writes the child's share (connections, rate and connect-rate shares, source
//! addresses 127.0.0.x disjoint from every other child's, at most half the ephemeral port
//! range each), each child connects and says `ready`, and once all are ready the parent
//! says `go` to all of them, so the warm-up and the measured windows start together
//! (within a pipe write) after every connection of every child is up. Children send their
//! live counters every 20 ms (the parent's [`Progress`] is their sum, so a progress bar
//! or `c10k compare` watches one run) and, at the end, every thread's histograms and
//! counters, which the parent merges exactly as one process merges its threads. `stop`
//! (the parent's [`Progress::stop`]), or EOF on stdin (the parent died), ends a child
//! early; an `--idle` run holds its connections until then or the end of the duration.

mod child;
mod wire;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use child::child_main;

use crate::config::{AppKind, LoadConfig};
use crate::engine::ThreadResult;
use crate::limits::{PORT_MARGIN, SourcePlan, port_range};
use crate::progress::{Phase, Progress};
use crate::report::LoadReport;
use crate::{LoadError, merge};
use wire::{ChildResult, ChildSpec, GO, STOP, ToParent};

/// The hidden flag of `c10k load` that makes it a child.
pub const CHILD_FLAG: &str = "--processes-child";

/// Processes per CPU beyond which `--processes` is refused (as for `c10k serve`).
pub const MAX_PER_CPU: usize = 64;

/// How long a child may take to start, beyond its connect budget.
const STARTUP: Duration = Duration::from_secs(10);

/// How long the children may take to report after the window, beyond the timeout.
const FINISH_SLACK: Duration = Duration::from_secs(30);

/// How long a child may take to exit after its report before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How often the parent looks at its stop switch and the window's edges.
const POLL: Duration = Duration::from_millis(2);

/// The highest last octet a source address may have (127.0.0.2 ..= 127.0.0.252).
const LAST_SOURCE: usize = 252;

/// How a child is started: `program args... ` (then the protocol on its stdin).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `c10k` binary.
    pub program: PathBuf,
    /// Its arguments: `load --processes-child`.
    pub args: Vec<OsString>,
}

impl Launcher {
    /// A `c10k` binary at `program`.
    pub fn c10k(program: impl Into<PathBuf>) -> Self {
        Launcher {
            program: program.into(),
            args: vec!["load".into(), CHILD_FLAG.into()],
        }
    }

    /// This executable, which must be `c10k` (the CLI, or `c10k compare` calling the
    /// lab).
    pub fn current_exe() -> Result<Self, LoadError> {
        std::env::current_exe()
            .map(Launcher::c10k)
            .map_err(|e| LoadError(format!("cannot find this executable to re-run: {e}")))
    }
}

/// Whether `processes` can carry `config`, with a message that says what to do.
pub fn check(config: &LoadConfig, processes: usize) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if processes == 0 || processes > cpus * MAX_PER_CPU {
        return Err(format!(
            "--processes must be 1..={} ({cpus} CPUs x {MAX_PER_CPU}), not {processes}",
            cpus * MAX_PER_CPU
        ));
    }
    if processes > config.conns {
        return Err(format!(
            "--processes {processes} is more than --conns {}: each process needs a connection",
            config.conns
        ));
    }
    if config.app == AppKind::PubSub {
        return Err(
            "--processes does not apply to pubsub (deliveries are tallied in one process): \
             drop it"
                .into(),
        );
    }
    Ok(())
}

/// Connections per explicitly bound source address (see [`SourcePlan::new`]).
fn bind_per_source(ports: usize) -> usize {
    crate::limits::bound_per_source(ports)
}

/// Each child's share: `conns` split evenly, the rates in proportion, and source
/// addresses of its own (from 127.0.0.2 up, against a loopback target).
fn split(config: &LoadConfig, processes: usize, ports: usize) -> Result<Vec<ChildSpec>, String> {
    let loopback = config.target.is_ipv4() && config.target.ip().is_loopback();
    if !loopback {
        let kernel = ports.saturating_sub(PORT_MARGIN).max(1);
        if config.conns > kernel {
            return Err(format!(
                "{} connections need more than one source address ({kernel} ports each), \
                 which only works against a 127.x.y.z target: use --conns {kernel}",
                config.conns
            ));
        }
    }
    let per_source = bind_per_source(ports);
    let mut next = 2;
    let mut specs = Vec::with_capacity(processes);
    for index in 0..processes {
        let conns = config.conns / processes + usize::from(index < config.conns % processes);
        let share = conns as f64 / config.conns as f64;
        let mut c = config.clone();
        c.conns = conns;
        c.rate = config.rate.map(|r| r * share);
        c.connect_rate = config.connect_rate.map(|r| r * share);
        c.validate()
            .map_err(|e| format!("process {index} ({conns} connections): {e}"))?;
        let sources = if loopback {
            let n = conns.div_ceil(per_source);
            if next + n - 1 > LAST_SOURCE {
                return Err(format!(
                    "{} connections would need more than {} source addresses: use fewer",
                    config.conns,
                    LAST_SOURCE - 1
                ));
            }
            let s = (next..next + n)
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8)))
                .collect();
            next += n;
            s
        } else {
            Vec::new()
        };
        specs.push(ChildSpec {
            index,
            config: c,
            per_source,
            sources,
        });
    }
    Ok(specs)
}

/// Runs `config` over `processes` children of this executable (which must be `c10k`),
/// and merges what they measured into one report (`processes: Some(n)`, `threads` the
/// total). Blocks like [`crate::run`]; [`Progress`] is the children's sum, and
/// [`Progress::stop`] stops them all.
pub fn run_processes(
    config: &LoadConfig,
    processes: usize,
    progress: Arc<Progress>,
) -> Result<LoadReport, LoadError> {
    run_processes_with(config, processes, &Launcher::current_exe()?, progress)
}

/// [`run_processes`] with the `c10k` binary given (a test, or a program that is not
/// `c10k` itself).
pub fn run_processes_with(
    config: &LoadConfig,
    processes: usize,
    launcher: &Launcher,
    progress: Arc<Progress>,
) -> Result<LoadReport, LoadError> {
    config.validate().map_err(LoadError)?;
    check(config, processes).map_err(LoadError)?;
    let (lo, hi) = port_range();
    let specs = split(config, processes, usize::from(hi - lo) + 1).map_err(LoadError)?;
    let result = Children::start(launcher, &specs, &progress)
        .and_then(|mut kids| kids.coordinate(config, &progress));
    progress.set_phase(Phase::Done);
    let (results, warnings) = result?;
    let plan = SourcePlan {
        per_source: specs.first().map_or(1, |s| s.per_source),
        sources: specs.iter().flat_map(|s| s.sources.clone()).collect(),
    };
    let mut report = merge(config, &plan, None, results, warnings);
    report.threads = config.threads * processes;
    report.processes = Some(processes);
    Ok(report)
}

/// What a child's stdout reader passes on.
enum Event {
    Said(ToParent),
    /// The child's stdout closed (it exited).
    Gone,
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
}

/// The children, killed and reaped on drop whatever happened.
struct Children {
    kids: Vec<Kid>,
    events: Receiver<(usize, Event)>,
}

impl Children {
    fn start(
        launcher: &Launcher,
        specs: &[ChildSpec],
        progress: &Arc<Progress>,
    ) -> Result<Self, LoadError> {
        let (tx, events) = mpsc::channel();
        let mut children = Children {
            kids: Vec::with_capacity(specs.len()),
            events,
        };
        for spec in specs {
            let mut child = Command::new(&launcher.program)
                .args(&launcher.args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| {
                    LoadError(format!(
                        "cannot start load process {} ({}): {e}",
                        spec.index,
                        launcher.program.display()
                    ))
                })?;
            let mut stdin = child.stdin.take();
            let stdout = child.stdout.take();
            let line = serde_json::to_string(spec).map_err(|e| LoadError(e.to_string()))?;
            if let Some(w) = stdin.as_mut() {
                // A child that died at once shows up as Gone below.
                let _ = writeln!(w, "{line}").and_then(|()| w.flush());
            }
            let reader = stdout.map(|out| {
                let (tx, progress, i) = (tx.clone(), Arc::clone(progress), spec.index);
                std::thread::spawn(move || read_child(i, out, &tx, &progress))
            });
            children.kids.push(Kid {
                child,
                stdin,
                reader,
            });
        }
        Ok(children)
    }

    /// Writes `word` to every child (one that is gone shows up as Gone).
    fn say(&mut self, word: &str) {
        for k in &mut self.kids {
            if let Some(w) = k.stdin.as_mut() {
                let _ = writeln!(w, "{word}").and_then(|()| w.flush());
            }
        }
    }

    fn gone(&mut self, i: usize) -> LoadError {
        let status = self.kids[i]
            .child
            .try_wait()
            .ok()
            .flatten()
            .map_or_else(String::new, |s| format!(" ({s})"));
        LoadError(format!(
            "load process {i} exited{status} before reporting (see its errors above)"
        ))
    }

    /// Connect, go, window, reports: every thread's result and the children's warnings.
    fn coordinate(
        &mut self,
        config: &LoadConfig,
        progress: &Progress,
    ) -> Result<(Vec<ThreadResult>, Vec<String>), LoadError> {
        let n = self.kids.len();
        let mut ready = vec![false; n];
        let mut done: Vec<Option<ChildResult>> = (0..n).map(|_| None).collect();
        let mut stopping = false;
        let connect_end = Instant::now() + config.connect_budget() + STARTUP;
        while ready.contains(&false) {
            if progress.stopped() && !stopping {
                self.say(STOP);
                stopping = true;
            }
            if Instant::now() >= connect_end {
                return Err(LoadError(format!(
                    "{} of {n} load processes were not done connecting after {:?}",
                    ready.iter().filter(|r| !**r).count(),
                    config.connect_budget() + STARTUP
                )));
            }
            match self.events.recv_timeout(POLL) {
                Ok((i, Event::Said(ToParent::Ready { .. }))) => ready[i] = true,
                Ok((i, Event::Said(ToParent::Done(r)))) => {
                    ready[i] = true;
                    done[i] = Some(r);
                }
                Ok((i, Event::Said(ToParent::Failed(e)))) => {
                    return Err(LoadError(format!("load process {i}: {e}")));
                }
                Ok((i, Event::Gone)) => return Err(self.gone(i)),
                Ok((_, Event::Said(ToParent::Progress { .. })))
                | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LoadError("every load process is gone".into()));
                }
            }
        }
        self.say(GO);
        let go = Instant::now();
        let measuring = go + config.warmup;
        progress.set_phase(Phase::Warmup);
        let end = measuring + config.duration + config.timeout + FINISH_SLACK;
        while done.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= measuring {
                progress.set_phase(Phase::Measuring);
            }
            if progress.stopped() && !stopping {
                self.say(STOP);
                stopping = true;
            }
            if now >= end {
                return Err(LoadError(format!(
                    "{} of {n} load processes did not report in time",
                    done.iter().filter(|d| d.is_none()).count()
                )));
            }
            match self.events.recv_timeout(POLL) {
                Ok((i, Event::Said(ToParent::Done(r)))) => done[i] = Some(r),
                Ok((i, Event::Said(ToParent::Failed(e)))) => {
                    return Err(LoadError(format!("load process {i}: {e}")));
                }
                Ok((i, Event::Gone)) if done[i].is_none() => return Err(self.gone(i)),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LoadError("every load process is gone".into()));
                }
            }
        }
        let mut threads = Vec::new();
        let mut warnings = Vec::new();
        for (i, r) in done.into_iter().flatten().enumerate() {
            threads.extend(r.threads.into_iter().map(ThreadResult::from));
            warnings.extend(r.warnings.into_iter().map(|w| format!("process {i}: {w}")));
        }
        Ok((threads, warnings))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for k in &mut self.kids {
            // EOF: a child still running stops within a loop turn.
            k.stdin = None;
        }
        let deadline = Instant::now() + EXIT_GRACE;
        for k in &mut self.kids {
            while Instant::now() < deadline && matches!(k.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(k.child.try_wait(), Ok(None)) {
                let _ = k.child.kill();
            }
            let _ = k.child.wait();
            if let Some(r) = k.reader.take() {
                let _ = r.join();
            }
        }
    }
}

/// Reads child `i`'s lines until its stdout closes: counters go straight into the
/// parent's `progress` (as differences, so the parent's counters are the sum), the rest
/// to the coordinator.
fn read_child(
    i: usize,
    out: std::process::ChildStdout,
    tx: &Sender<(usize, Event)>,
    progress: &Progress,
) {
    let (mut open, mut replies, mut errors) = (0usize, 0u64, 0u64);
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else {
            break;
        };
        match serde_json::from_str::<ToParent>(&line) {
            Ok(ToParent::Progress {
                open: o,
                replies: r,
                errors: e,
            }) => {
                if o >= open {
                    progress.open.fetch_add(o - open, Ordering::Relaxed);
                } else {
                    progress.open.fetch_sub(open - o, Ordering::Relaxed);
                }
                progress
                    .replies
                    .fetch_add(r.saturating_sub(replies), Ordering::Relaxed);
                progress
                    .errors
                    .fetch_add(e.saturating_sub(errors), Ordering::Relaxed);
                (open, replies, errors) = (o, r.max(replies), e.max(errors));
            }
            Ok(msg) => {
                let _ = tx.send((i, Event::Said(msg)));
            }
            Err(e) => {
                let _ = tx.send((
                    i,
                    Event::Said(ToParent::Failed(format!("unreadable message: {e}"))),
                ));
            }
        }
    }
    let _ = tx.send((i, Event::Gone));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(conns: usize) -> LoadConfig {
        LoadConfig::new(
            "127.0.0.1:7000".parse().unwrap(),
            AppKind::Echo,
            conns,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn bad_counts_are_refused_with_what_to_do() {
        let c = cfg(10);
        assert!(
            check(&c, 0)
                .unwrap_err()
                .contains("--processes must be 1..=")
        );
        assert!(check(&c, 11).unwrap_err().contains("more than --conns 10"));
        assert!(
            check(&cfg(1_000_000), 100_000)
                .unwrap_err()
                .contains("CPUs x 64")
        );
        let ps = LoadConfig::pubsub(c.target, 10, 2, 100.0, Duration::from_secs(1));
        assert!(check(&ps, 2).unwrap_err().contains("pubsub"));
        assert!(check(&c, 2).is_ok());
    }

    #[test]
    fn children_share_conns_and_rates_with_disjoint_sources() {
        let mut c = cfg(100_000);
        c.rate = Some(10_000.0);
        c.connect_rate = Some(5_000.0);
        let specs = split(&c, 6, 28_232).unwrap();
        assert_eq!(specs.iter().map(|s| s.config.conns).sum::<usize>(), 100_000);
        assert_eq!(specs[0].config.conns, 16_667);
        assert_eq!(specs[5].config.conns, 16_666);
        let rate: f64 = specs.iter().filter_map(|s| s.config.rate).sum();
        assert!((rate - 10_000.0).abs() < 1e-6, "{rate}");
        // 13,604 connections per address (half the range): two addresses each.
        assert_eq!(specs[0].per_source, 13_604);
        let mut all: Vec<IpAddr> = specs.iter().flat_map(|s| s.sources.clone()).collect();
        assert_eq!(all.first(), Some(&"127.0.0.2".parse().unwrap()));
        assert_eq!(all.len(), 12, "two addresses each: {all:?}");
        all.dedup();
        assert_eq!(all.len(), 12);
        let specs = split(&cfg(100_000), 2, 28_232).unwrap();
        assert_eq!(specs[0].sources.len(), 4);
        assert_eq!(specs[1].sources[0], "127.0.0.6".parse::<IpAddr>().unwrap());
        // A small share binds one address.
        assert_eq!(split(&cfg(400), 2, 28_232).unwrap()[1].sources.len(), 1);
    }

    #[test]
    fn threads_are_per_process_and_remote_targets_cannot_spread() {
        let mut c = cfg(10);
        c.threads = 4;
        let err = split(&c, 3, 28_232).unwrap_err();
        assert!(err.contains("--threads 4"), "{err}");
        let mut remote = cfg(60_000);
        remote.target = "192.0.2.1:80".parse().unwrap();
        assert!(split(&remote, 3, 28_232).unwrap_err().contains("127.x.y.z"));
        remote.conns = 100;
        assert!(split(&remote, 3, 28_232).unwrap()[0].sources.is_empty());
    }
}

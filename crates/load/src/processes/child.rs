//! A `--processes` child: reads its [`ChildSpec`] from stdin, connects, says `ready`,
//! waits for `go`, runs its window, and writes what its threads measured to stdout.
//! EOF on stdin (the parent is gone) or `stop` ends it early, like
//! [`Progress::stop`](crate::Progress::stop) in one process.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::STARTUP;
use super::wire::{ChildResult, ChildSpec, GO, STOP, ToParent, WireThread};
use crate::limits::{SourcePlan, check_fd_limit};
use crate::progress::Progress;
use crate::{LoadError, run_threads};

/// How often the child sends its live counters.
const RELAY_EVERY: Duration = Duration::from_millis(20);

/// The parent's go (or stop): a flag and a condition variable.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = true;
        }
        self.cv.notify_all();
    }

    /// Waits until opened or `until`; false on the deadline.
    fn wait(&self, until: Instant) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        while !*open {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.cv.wait_timeout(open, left) {
                Ok((guard, _)) => open = guard,
                Err(_) => return false,
            }
        }
        true
    }
}

/// One line to the parent (a parent that is gone is not an error here: stdin's EOF
/// stops the run).
fn send(out: &Mutex<io::Stdout>, msg: &ToParent) {
    let Ok(line) = serde_json::to_string(msg) else {
        return;
    };
    if let Ok(mut out) = out.lock() {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn counters(progress: &Progress) -> ToParent {
    ToParent::Progress {
        open: progress.open.load(Ordering::Relaxed),
        replies: progress.replies.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
    }
}

/// Runs this process as child of a `--processes` load (`c10k load --processes-child`):
/// the protocol is on stdin and stdout, which must carry nothing else.
pub fn child_main() -> Result<(), LoadError> {
    let mut line = String::new();
    io::stdin()
        .read_line(&mut line)
        .map_err(|e| LoadError(format!("reading the child spec: {e}")))?;
    let spec: ChildSpec = serde_json::from_str(&line).map_err(|e| {
        LoadError(format!(
            "{} is for c10k load --processes to start, not for a person: {e}",
            super::CHILD_FLAG
        ))
    })?;
    // A parent killed outright takes its children with it (stdin's EOF would too,
    // within a loop turn).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let out = Arc::new(Mutex::new(io::stdout()));
    let progress = Arc::new(Progress::new());
    let gate = Arc::new(Gate::default());
    {
        let (progress, gate) = (Arc::clone(&progress), Arc::clone(&gate));
        // Detached: it ends with the process (blocked on stdin until the parent's EOF).
        std::thread::Builder::new()
            .name("c10k-load-parent".into())
            .spawn(move || {
                for line in io::stdin().lines() {
                    match line.as_deref().map(str::trim) {
                        Ok(GO) => gate.open(),
                        Ok(STOP) => {
                            progress.stop();
                            gate.open();
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                progress.stop();
                gate.open();
            })
            .map_err(|e| LoadError(format!("cannot start the stdin thread: {e}")))?;
    }
    let finished = Arc::new(AtomicBool::new(false));
    let relay = {
        let (out, progress, finished) = (
            Arc::clone(&out),
            Arc::clone(&progress),
            Arc::clone(&finished),
        );
        std::thread::Builder::new()
            .name("c10k-load-relay".into())
            .spawn(move || {
                // Bounded: the run sets `finished` when its threads are joined.
                while !finished.load(Ordering::Acquire) {
                    std::thread::sleep(RELAY_EVERY);
                    send(&out, &counters(&progress));
                }
            })
            .map_err(|e| LoadError(format!("cannot start the relay thread: {e}")))?
    };
    let mut warnings = Vec::new();
    if let Err(w) = check_fd_limit(spec.config.conns) {
        warnings.push(w);
    }
    let go = {
        let (out, progress, gate) = (Arc::clone(&out), Arc::clone(&progress), gate);
        // The parent says go (or stop) within its own connect deadline, or is gone.
        let bound = spec.config.connect_budget() + STARTUP;
        Box::new(move || {
            send(
                &out,
                &ToParent::Ready {
                    open: progress.open.load(Ordering::Relaxed),
                },
            );
            if !gate.wait(Instant::now() + bound) {
                progress.stop();
            }
        })
    };
    let plan = SourcePlan {
        per_source: spec.per_source,
        sources: spec.sources,
    };
    let result = run_threads(&spec.config, &progress, &plan, Some(go));
    finished.store(true, Ordering::Release);
    let _ = relay.join();
    send(&out, &counters(&progress));
    match result {
        Ok((threads, _)) => send(
            &out,
            &ToParent::Done(ChildResult {
                threads: threads.iter().map(WireThread::from).collect(),
                warnings,
            }),
        ),
        Err(e) => send(&out, &ToParent::Failed(e.0)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_or_times_out() {
        let g = Arc::new(Gate::default());
        assert!(!g.wait(Instant::now() + Duration::from_millis(20)));
        let g2 = Arc::clone(&g);
        let t = std::thread::spawn(move || g2.wait(Instant::now() + Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        g.open();
        assert!(t.join().unwrap_or(false));
    }
}

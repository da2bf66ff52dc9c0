//! Counters: per worker (uncontended, relaxed atomics) plus the process-wide number
//! of open connections that `--max-conns` is checked against.
//!
//! [`SERIES`] is their layout: every per-worker counter as a named series, in one
//! order. The Prometheus exporter (`metrics.rs`) renders it; forked children publish
//! their counters in that order (`shared_stats.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters of one worker. Read them at any time (metrics); only the worker writes.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections accepted and closed at once because `--max-conns` was reached.
    pub refused_max_conns: AtomicU64,
    /// Connections accepted and closed at once because the strategy could not serve
    /// them (select's FD_SETSIZE, a thread or process that could not be created).
    pub refused_backend: AtomicU64,
    /// Connections closed (any reason).
    pub closed: AtomicU64,
    /// Accept failures other than "nothing to accept".
    pub accept_errors: AtomicU64,
    /// Times accepting was paused because of EMFILE/ENFILE/ENOBUFS/ENOMEM.
    pub accept_pauses: AtomicU64,
    /// Sessions that ended with a protocol error (an error reply was sent).
    pub proto_errors: AtomicU64,
    /// Connections that ended with an I/O error (reset, broken pipe...).
    pub io_errors: AtomicU64,
    /// Connections closed by the idle timeout.
    pub timeouts_idle: AtomicU64,
    /// Connections closed because a request stayed incomplete for `--header-timeout`.
    pub timeouts_header: AtomicU64,
    /// Connections force-closed at the drain deadline.
    pub drain_forced: AtomicU64,
    /// Sessions that panicked (caught; only their connection was closed).
    pub panics: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Requests answered (HTTP requests, RESP commands; echo has none).
    pub requests: AtomicU64,
    /// Messages delivered to sessions through their mailboxes.
    pub messages_delivered: AtomicU64,
    /// Connections closed because their mailbox overflowed (a consumer that did not
    /// keep up; the poster asked for the disconnect).
    pub mailbox_disconnects: AtomicU64,
    /// io_uring counters (the `uring` strategy only).
    pub uring: UringStats,
}

/// Counters of one worker's io_uring, refreshed on every loop iteration: what the
/// integrator reads to see syscalls and completions per message, and what the leak
/// tests check (every buffer handed out came home).
#[derive(Debug, Default)]
pub struct UringStats {
    /// Submit-and-wait calls (at most one `io_uring_enter` each).
    pub enters: AtomicU64,
    /// Of those, the ones that had to wait for a completion (the rest found some
    /// waiting and only submitted).
    pub waits: AtomicU64,
    /// Loop iterations that reaped at least one completion (`cqes / batches`: the
    /// batch size).
    pub batches: AtomicU64,
    /// Submission entries queued.
    pub sqes: AtomicU64,
    /// Completions reaped.
    pub cqes: AtomicU64,
    /// Receive completions.
    pub recv_cqes: AtomicU64,
    /// Send completions.
    pub send_cqes: AtomicU64,
    /// Multishot receives ended by an empty buffer ring (re-armed).
    pub enobufs: AtomicU64,
    /// Receive buffers handed out by completions.
    pub bufs_out: AtomicU64,
    /// Receive buffers given back to the kernel.
    pub bufs_in: AtomicU64,
    /// Send buffers handed to the kernel.
    pub sends_out: AtomicU64,
    /// Send buffers that came back.
    pub sends_in: AtomicU64,
    /// Operations in flight when their connection was closed (cancelled; their
    /// buffers came back with the completions).
    pub parked_at_close: AtomicU64,
    /// Operations in flight.
    pub in_flight: AtomicU64,
    /// Operations still in flight when the ring was torn down (memory leaked on
    /// purpose; should stay 0).
    pub leaked_ops: AtomicU64,
}

impl WorkerStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// The values of [`SERIES`], in order.
    pub(crate) fn snapshot(&self) -> Vec<u64> {
        SERIES.iter().map(|s| Self::get((s.get)(self))).collect()
    }
}

/// One counter of [`WorkerStats`] as a time series per worker: a row of the
/// exposition, and a slot of a forked child's published block.
pub(crate) struct Series {
    /// Metric family name (`*_total` for counters).
    pub(crate) name: &'static str,
    /// `# HELP` text (the same for every row of a family).
    pub(crate) help: &'static str,
    /// `counter` or `gauge`.
    pub(crate) kind: &'static str,
    /// An extra label, e.g. `("kind", "idle")`.
    pub(crate) label: Option<(&'static str, &'static str)>,
    /// Only meaningful for the `uring` strategy (hidden otherwise).
    pub(crate) uring_only: bool,
    /// The counter it reads.
    pub(crate) get: fn(&WorkerStats) -> &AtomicU64,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    get: fn(&WorkerStats) -> &AtomicU64,
) -> Series {
    Series {
        name,
        help,
        kind: "counter",
        label,
        uring_only: false,
        get,
    }
}

const fn uring(
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    get: fn(&WorkerStats) -> &AtomicU64,
) -> Series {
    Series {
        name,
        help,
        kind,
        label: None,
        uring_only: true,
        get,
    }
}

/// Every per-worker series, families contiguous. Add a row to expose a new counter
/// (and to have forked children publish it).
pub(crate) const SERIES: &[Series] = &[
    counter(
        "c10k_connections_accepted_total",
        "Connections accepted and served.",
        None,
        |s| &s.accepted,
    ),
    counter(
        "c10k_connections_closed_total",
        "Connections closed, for any reason.",
        None,
        |s| &s.closed,
    ),
    counter(
        "c10k_connections_refused_total",
        "Connections accepted and closed at once: kind=max_conns (--max-conns reached) or kind=backend (the strategy could not serve it: FD_SETSIZE, no thread or process).",
        Some(("kind", "max_conns")),
        |s| &s.refused_max_conns,
    ),
    counter(
        "c10k_connections_refused_total",
        "",
        Some(("kind", "backend")),
        |s| &s.refused_backend,
    ),
    counter(
        "c10k_session_panics_total",
        "Sessions that panicked: caught, only their connection closed (fork and prefork: published by the child process).",
        None,
        |s| &s.panics,
    ),
    counter(
        "c10k_requests_total",
        "Requests answered (HTTP requests, RESP commands; echo counts none).",
        None,
        |s| &s.requests,
    ),
    counter(
        "c10k_received_bytes_total",
        "Bytes read from clients.",
        None,
        |s| &s.bytes_in,
    ),
    counter(
        "c10k_sent_bytes_total",
        "Bytes written to clients.",
        None,
        |s| &s.bytes_out,
    ),
    counter(
        "c10k_errors_total",
        "Errors: kind=accept (accept failures other than running out of fds), kind=protocol (sessions ended by a protocol error reply), kind=io (connections ended by an I/O error).",
        Some(("kind", "accept")),
        |s| &s.accept_errors,
    ),
    counter("c10k_errors_total", "", Some(("kind", "protocol")), |s| {
        &s.proto_errors
    }),
    counter("c10k_errors_total", "", Some(("kind", "io")), |s| {
        &s.io_errors
    }),
    counter(
        "c10k_accept_pauses_total",
        "Times accepting paused for lack of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
        None,
        |s| &s.accept_pauses,
    ),
    counter(
        "c10k_timeouts_total",
        "Connections closed by a timeout: kind=idle (--idle-timeout) or kind=header (--header-timeout).",
        Some(("kind", "idle")),
        |s| &s.timeouts_idle,
    ),
    counter("c10k_timeouts_total", "", Some(("kind", "header")), |s| {
        &s.timeouts_header
    }),
    counter(
        "c10k_messages_delivered_total",
        "Messages delivered to sessions through their mailboxes (pub/sub, chat).",
        None,
        |s| &s.messages_delivered,
    ),
    counter(
        "c10k_mailbox_disconnects_total",
        "Connections closed because they did not keep up with their messages (mailbox full).",
        None,
        |s| &s.mailbox_disconnects,
    ),
    counter(
        "c10k_drain_forced_total",
        "Connections (or processes) force-closed at the drain deadline.",
        None,
        |s| &s.drain_forced,
    ),
    uring(
        "c10k_uring_enters_total",
        "io_uring submit-and-wait calls.",
        "counter",
        |s| &s.uring.enters,
    ),
    uring(
        "c10k_uring_sqes_total",
        "io_uring submission entries queued.",
        "counter",
        |s| &s.uring.sqes,
    ),
    uring(
        "c10k_uring_cqes_total",
        "io_uring completions reaped.",
        "counter",
        |s| &s.uring.cqes,
    ),
    uring(
        "c10k_uring_enobufs_total",
        "Multishot receives ended by an empty buffer ring.",
        "counter",
        |s| &s.uring.enobufs,
    ),
    uring(
        "c10k_uring_in_flight",
        "io_uring operations in flight.",
        "gauge",
        |s| &s.uring.in_flight,
    ),
    uring(
        "c10k_uring_leaked_ops",
        "Operations still in flight when a ring was torn down (should stay 0).",
        "gauge",
        |s| &s.uring.leaked_ops,
    ),
];

/// The process-wide open-connection count, shared by all workers.
#[derive(Debug, Default)]
pub struct OpenConns {
    open: AtomicUsize,
}

impl OpenConns {
    /// Take a slot if fewer than `max` are open.
    pub(crate) fn try_acquire(&self, max: usize) -> bool {
        let prev = self.open.fetch_add(1, Relaxed);
        if prev >= max {
            self.open.fetch_sub(1, Relaxed);
            false
        } else {
            true
        }
    }

    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    /// Connections open right now.
    pub fn current(&self) -> usize {
        self.open.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_stops_at_the_limit_and_release_frees_a_slot() {
        let open = OpenConns::default();
        assert!(open.try_acquire(2));
        assert!(open.try_acquire(2));
        assert!(!open.try_acquire(2));
        assert_eq!(open.current(), 2);
        open.release();
        assert!(open.try_acquire(2));
    }

    #[test]
    fn families_are_contiguous_and_counters_end_in_total() {
        let mut seen = Vec::new();
        let mut last = "";
        for s in SERIES {
            if s.name != last {
                assert!(!seen.contains(&s.name), "{} is split", s.name);
                assert!(!s.help.is_empty(), "{} has help on its first row", s.name);
                seen.push(s.name);
                last = s.name;
            }
            assert_eq!(
                s.kind == "counter",
                s.name.ends_with("_total"),
                "{}",
                s.name
            );
        }
    }
}

//! Counters: per worker (uncontended, relaxed atomics) plus the process-wide number
//! of open connections that `--max-conns` is checked against.

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
    /// Connections closed because a request stayed incomplete too long.
    pub timeouts_request: AtomicU64,
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
}

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
}

//! The connection threads of `thread` waiting for their next connection: a thread
//! whose connection ended waits here, up to [`IDLE_KEEP`], instead of exiting, and the
//! accept loop hands a new connection to the thread that waited last (a cached thread
//! pool, as Java's `newCachedThreadPool`).
//!
//! Why: thread creation and exit take process-wide locks (the address space's
//! `mmap_lock` for the stack, glibc's stack cache, malloc arenas). Connection threads
//! run below the accept loop ([`accept_priority`](super::super::accept_priority)), so a
//! preempted one holding such a lock stalls the accept loop until the scheduler gets
//! back to it: priority inversion. Measured (debug build) with 1,000 busy
//! connections on one CPU, while the 1,000 threads of the connections just closed
//! exited: the accept loop waited 2.3 s in the `mmap` of a new stack, then on a malloc
//! arena lock, and 400 connections went unserved for 5 s. A reused thread neither
//! exits nor is created.
//!
//! **The hand-off never waits for a connection thread.** The accept loop only
//! `try_lock`s the list and `try_send`s into the waiting thread's own channel: if the
//! list is busy or empty, it starts a thread instead.
//!
//! **Drain**: [`Idle::close`] empties the list and refuses new waiters; the waiting
//! threads see their channel closed and exit.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// How long a connection thread whose connection ended waits for another before it
/// exits.
pub(crate) const IDLE_KEEP: Duration = Duration::from_secs(10);

/// The waiting threads.
pub(crate) struct Idle<J> {
    list: Mutex<List<J>>,
}

struct List<J> {
    /// The server drains: no thread waits any more.
    closed: bool,
    /// The waiting threads, the one that waited last at the end.
    waiting: Vec<Waiter<J>>,
    next_id: u64,
}

struct Waiter<J> {
    id: u64,
    tx: SyncSender<J>,
}

impl<J> Default for Idle<J> {
    fn default() -> Self {
        Idle {
            list: Mutex::new(List {
                closed: false,
                waiting: Vec::new(),
                next_id: 0,
            }),
        }
    }
}

impl<J> Idle<J> {
    fn lock(&self) -> MutexGuard<'_, List<J>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accept loop: give `job` to the thread that waited last. Never waits: if the
    /// list is locked (by a connection thread, which may be preempted) or empty, the
    /// job comes back and the caller starts a thread for it.
    pub(crate) fn hand_off(&self, job: J) -> Result<(), J> {
        let waiter = match self.list.try_lock() {
            Ok(mut list) => list.waiting.pop(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().waiting.pop(),
            Err(TryLockError::WouldBlock) => None,
        };
        let Some(waiter) = waiter else {
            return Err(job);
        };
        // The channel holds one job and this is its only send: never full. The thread
        // keeps its receiver until it has its job or finds itself off the list, so
        // never disconnected either; the job would come back if it were.
        waiter.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// A connection thread: wait up to `keep` for the next job. `None`: exit (nothing
    /// came, or the server drains).
    pub(crate) fn wait(&self, keep: Duration) -> Option<J> {
        let (id, rx) = self.enlist()?;
        match rx.recv_timeout(keep) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let mut list = self.lock();
                if let Some(i) = list.waiting.iter().position(|w| w.id == id) {
                    list.waiting.swap_remove(i);
                    return None;
                }
                drop(list);
                // The accept loop took this thread off the list: its job is on the way
                // (or the list was closed, and the channel with it).
                rx.recv().ok()
            }
        }
    }

    fn enlist(&self) -> Option<(u64, Receiver<J>)> {
        let mut list = self.lock();
        if list.closed {
            return None;
        }
        let (tx, rx) = sync_channel(1);
        let id = list.next_id;
        list.next_id = list.next_id.wrapping_add(1);
        list.waiting.push(Waiter { id, tx });
        Some((id, rx))
    }

    /// Drain: the waiting threads exit, and the threads still serving exit when done.
    pub(crate) fn close(&self) {
        let mut list = self.lock();
        list.closed = true;
        list.waiting.clear();
    }

    /// How many threads wait.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    use super::*;

    const LONG: Duration = Duration::from_secs(20);

    /// Waits (bounded) until `n` threads wait.
    fn until_waiting(idle: &Idle<u32>, n: usize) {
        let deadline = Instant::now() + LONG;
        while idle.waiting() != n {
            assert!(
                Instant::now() < deadline,
                "{} waiting, not {n}",
                idle.waiting()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn nobody_waits_so_the_job_comes_back() {
        let idle = Idle::default();
        assert_eq!(idle.hand_off(7), Err(7));
    }

    #[test]
    fn a_waiting_thread_gets_the_job_the_last_one_first() {
        let idle = Arc::new(Idle::default());
        let first = thread::spawn({
            let idle = Arc::clone(&idle);
            move || idle.wait(LONG)
        });
        until_waiting(&idle, 1);
        let second = thread::spawn({
            let idle = Arc::clone(&idle);
            move || idle.wait(LONG)
        });
        until_waiting(&idle, 2);
        assert_eq!(idle.hand_off(1), Ok(()));
        assert_eq!(second.join().unwrap(), Some(1), "the one that waited last");
        assert_eq!(idle.hand_off(2), Ok(()));
        assert_eq!(first.join().unwrap(), Some(2));
        assert_eq!(idle.hand_off(3), Err(3));
    }

    #[test]
    fn a_thread_that_waited_long_enough_leaves_the_list() {
        let idle: Idle<u32> = Idle::default();
        assert_eq!(idle.wait(Duration::from_millis(10)), None);
        assert_eq!(idle.waiting(), 0);
        assert_eq!(idle.hand_off(1), Err(1));
    }

    #[test]
    fn the_hand_off_does_not_wait_for_a_locked_list() {
        let idle: Idle<u32> = Idle::default();
        let _held = idle.lock();
        assert_eq!(idle.hand_off(1), Err(1));
    }

    #[test]
    fn close_sends_the_waiting_threads_away_and_admits_no_more() {
        let idle = Arc::new(Idle::default());
        let waiter = thread::spawn({
            let idle = Arc::clone(&idle);
            move || idle.wait(LONG)
        });
        until_waiting(&idle, 1);
        idle.close();
        assert_eq!(waiter.join().unwrap(), None);
        assert_eq!(idle.wait(LONG), None, "no waiting once closed");
        assert_eq!(idle.hand_off(1), Err(1));
    }

    #[test]
    fn a_job_taken_at_the_timeout_still_arrives() {
        // The accept loop takes the waiter off the list, then sends: a thread whose
        // wait ends in between finds itself off the list and takes the job.
        let idle = Arc::new(Idle::default());
        let waiter = thread::spawn({
            let idle = Arc::clone(&idle);
            move || idle.wait(Duration::from_millis(50))
        });
        until_waiting(&idle, 1);
        let mut list = idle.lock();
        let taken = list.waiting.pop().unwrap();
        // Its wait ends meanwhile, and it blocks on the list.
        thread::sleep(Duration::from_millis(200));
        taken.tx.try_send(9).unwrap();
        drop(list);
        assert_eq!(waiter.join().unwrap(), Some(9));
    }
}

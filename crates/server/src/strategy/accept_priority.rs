//! Accept priority for the strategies with one flow of control per connection
//! (`thread`, `fork`): every connection thread or process runs at a lower scheduling
//! priority (a higher nice value) than the accept loop that made it.
//!
//! **Why.** The scheduler (CFS, EEVDF) shares a CPU among its runnable threads by
//! weight, and the accept loop is one thread among them. With 1,000 busy connections
//! on one CPU, most connection threads (fork: processes) are runnable at any moment,
//! so the accept loop gets about 1/N of the CPU. Measured (`c10k compare` at 1,000
//! connections, server pinned to one CPU; the cell's idle phase had just closed its
//! 1,000 connections): the accept loop was runnable the whole time yet ran 5 ms a
//! second (`thread`; the `fork` parent 10 ms), its run-queue wait in
//! `/proc/PID/task/TID/schedstat` growing by a second per second, while accepting
//! costs 25 to 80 us per connection with a new thread and about 150 us with a fork.
//! The accept queue drained at 160 (`thread`) and 55 (`fork`) connections a second:
//! 300 to 750 connections were still in it after 4 s, their first requests timed out
//! (240 to 260 errors for `thread`, 610 to 680 for `fork`, every run), while the
//! connections already accepted were served at full speed. Nothing overflowed
//! (`ListenOverflows` and `ListenDrops` stayed 0, no SYN was retransmitted): the
//! backlog was large enough, and a bigger one or larger accept batches would not
//! have helped, since the loop was not idle but waiting for the CPU.
//!
//! **What.** Each connection flow lowers its own priority by [`CONN_NICE`] as it
//! starts (on Linux a nice value belongs to a thread, and raising it needs no
//! privilege). The accept loop keeps the server's priority, and its weight is then
//! 68 times a connection's (1024 against 15 at a difference of 19): while it has
//! connections to admit it gets most of the CPU it needs, and it sleeps otherwise.
//! Among themselves the connections share the CPU as before, and the accept loop only
//! ever takes what accepting costs. Measured after the change, same runs: `thread`
//! hands the 1,000 new connections to waiting threads within half a second (see
//! `thread/idle.rs`), `fork` forks them within 1.2 s, and no request times out.
//!
//! **Limits.** The accept loop's share is 1024/(1024 + 15 x busy connections): about
//! 6% with 1,000 busy. Admitting another 1,000 connections at once *while* 1,000 are
//! busy therefore still takes seconds: `fork` needs 1,000 forks at 150 to 250 us
//! (measured: 4.7 s), and a new thread's creation takes locks (`mmap_lock` for its
//! stack, a malloc arena) that a preempted low-priority connection thread may hold:
//! priority inversion: stalls of 1.5 to 2.3 s measured. Both are inherent to one thread or
//! process per connection on one CPU; the event loops accept within their loop.
//!
//! **The price.** The nice value weighs against every thread in the same scheduling
//! group: with autogroup (one group per session) or a cgroup with the CPU controller,
//! that is the server and what was started with it; the server's share against other
//! groups is unchanged. On a machine with neither, a lightly loaded connection thread
//! yields more readily to an unrelated CPU-bound process than it did.

/// How much lower than its accept loop a connection thread or process runs (nice
/// increments; the kernel caps the result at 19, the lowest normal priority).
pub(crate) const CONN_NICE: i32 = 19;

/// Lower the calling thread's priority by [`CONN_NICE`]: called first thing by a
/// connection thread (`thread`) or process (`fork`). Never fails the connection: if
/// the priority cannot be changed, the connection runs at the server's priority.
pub(crate) fn yield_to_accept_loop() {
    // `nice(2)` is `setpriority(PRIO_PROCESS, 0, ..)`: on Linux, the calling thread.
    if let Err(e) = rustix::process::nice(CONN_NICE) {
        tracing::debug!("cannot lower a connection's priority: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_the_calling_thread_only() {
        let mine = rustix::process::getpriority_process(None).unwrap();
        let theirs = std::thread::spawn(|| {
            yield_to_accept_loop();
            rustix::process::getpriority_process(None).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (mine + CONN_NICE).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), mine);
    }
}

//! Accept priority for the strategies with one flow of control per connection
//! (`thread`, `fork`): every connection thread or process runs at a lower scheduling
//! priority (a higher nice value) than the accept loop that made it.
//!
//! **Why.** The scheduler (CFS, EEVDF) shares a CPU among its runnable threads by
//! weight, and the accept loop is one thread among them. With 1,000 busy connections
//! on one CPU, most connection threads (fork: processes) are runnable at any moment,
//! so the accept loop gets about 1/N of the CPU. Measured (`c10k compare` at 1,000
//! connections, server pinned to one CPU, after the idle phase had closed its 1,000
//! connections): the accept loop was runnable the whole time yet ran about 2 ms a
//! second (its run-queue wait in `/proc/PID/task/TID/schedstat` grew by a second per
//! second), while accepting and spawning cost 25 to 80 us per connection for a thread
//! and about 150 us per fork. So 350 to 750 connections stayed in the accept queue
//! for over 5 s and their first requests timed out, while the connections already
//! accepted were served at full speed. Nothing overflowed (`ListenOverflows` and
//! `ListenDrops` stayed 0, no SYN was retransmitted): the backlog was large enough,
//! and a bigger one or larger accept batches would not have helped, since the loop
//! was not idle but waiting for the CPU.
//!
//! **What.** Each connection flow lowers its own priority by [`CONN_NICE`] as it
//! starts (on Linux a nice value belongs to a thread, and raising it needs no
//! privilege). The accept loop keeps the server's priority, and its weight is then
//! 68 times a connection's (1024 against 15 at a difference of 19): while it has
//! connections to admit it gets the CPU it needs, and it sleeps otherwise. Among
//! themselves the connections share the CPU as before, and the accept loop only ever
//! takes what accepting costs. Measured after the change, same runs: the accept
//! queue (sampled every 50 ms) held at most 8 connections for `thread` and 73 for
//! `fork`, every connection was being served within a second of the burst (fork:
//! 2,000 forks in 0.6 s), and no request timed out.
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

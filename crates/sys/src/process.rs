//! Processes: `fork(2)` made safe by refusing it unless the process is
//! single-threaded, and `_exit(2)` for the child's way out.
//!
//! rustix offers `waitpid`, `kill` and `prctl(PR_SET_PDEATHSIG)` safely; use those
//! directly. What it does not offer safely is `fork` (only as an `unsafe` runtime
//! primitive), because a fork is sound only in a process with one thread.
#![allow(unsafe_code)]

use std::io;

pub use rustix::process::Pid;

/// Which side of a [`fork`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The original process; the value is the new child's id.
    Parent(Pid),
    /// The new process, a copy of the parent with only the calling thread.
    Child,
}

/// The number of threads of this process: the entries of `/proc/self/task`.
pub fn thread_count() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// `fork(2)`, refused unless the calling process has exactly one thread.
///
/// # Why this is a safe function
///
/// After `fork` in a multi-threaded process the child holds a copy of all memory but
/// only the calling thread: a lock that another thread held (the allocator's, stdout's,
/// a `Mutex` of the program) stays locked forever, and data another thread was in the
/// middle of changing stays half-changed. The child can deadlock or observe broken
/// invariants, which Rust counts as undefined behaviour. In a process with a single
/// thread there is no other thread, so the child starts from a consistent copy.
///
/// This function therefore counts the threads (`/proc/self/task`) first and returns
/// an error if there is more than one, or if it cannot tell. No thread can appear
/// between that check and the fork: the only thread that could create one is the
/// caller. The one sound place to fork in a server is thus the main thread, before
/// any other thread was spawned (a logging or signal library that spawns a helper
/// thread makes every later fork fail here, loudly, instead of corrupting the child).
///
/// File descriptors are shared by both processes after the fork: each side should
/// close what it does not need (an fd left open in the child keeps, say, a client
/// connection from seeing EOF).
///
/// # Errors
///
/// An error of kind [`io::ErrorKind::Other`] without an OS error code when the
/// process has more than one thread (or `/proc` cannot be read); the OS error
/// (`EAGAIN`, `ENOMEM`) when the kernel refuses to create a process.
pub fn fork() -> io::Result<Fork> {
    let threads = thread_count().map_err(|e| {
        io::Error::other(format!(
            "fork refused: cannot count this process's threads ({e})"
        ))
    })?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork refused: the process has {threads} threads; fork only before any thread is spawned"
        )));
    }
    // SAFETY: the process has exactly one thread (checked just above, and only this
    // thread could have created another since), so the child is a consistent copy of
    // the parent: no lock is held by a thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Pid::from_raw(pid)
            .map(Fork::Parent)
            .ok_or_else(|| io::Error::other(format!("fork returned a bad pid {pid}"))),
    }
}

/// `_exit(2)`: end the process at once with `code`, without running destructors,
/// `atexit` handlers or flushing stdio buffers.
///
/// This is how a forked child ends: the buffers and handlers it would run are copies
/// of the parent's, and running them twice (flushing the same buffered output again,
/// say) would be wrong.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and is async-signal-safe; it never returns.
    // Skipping destructors is allowed in Rust (like `mem::forget`).
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_is_refused_while_another_thread_runs() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().unwrap() >= 2);
        let err = fork().unwrap_err();
        assert!(err.raw_os_error().is_none(), "{err}");
        assert!(err.to_string().contains("threads"), "{err}");
        tx.send(()).unwrap();
        t.join().unwrap().unwrap();
    }
}

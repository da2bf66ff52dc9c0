//! `fork` where it is sound: this test binary has no harness (`harness = false`), so
//! it runs in a process with one thread, like the `fork` and `prefork` servers.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use c10k_sys::process::{Fork, exit_immediately, fork, thread_count};
use rustix::process::{WaitOptions, waitpid};

/// Forks a child that exits with `code`; returns the status the parent reaps.
fn fork_and_reap(code: i32) -> Option<i32> {
    match fork().unwrap() {
        Fork::Child => exit_immediately(code),
        Fork::Parent(pid) => {
            let (reaped, status) = waitpid(Some(pid), WaitOptions::empty()).unwrap().unwrap();
            assert_eq!(reaped, pid);
            status.exit_status()
        }
    }
}

fn single_threaded_process_forks() {
    assert_eq!(thread_count().unwrap(), 1);
    assert_eq!(fork_and_reap(7), Some(7));
    assert_eq!(fork_and_reap(0), Some(0));
}

fn fork_is_refused_with_a_second_thread_and_allowed_after_it_ends() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    let err = fork().unwrap_err();
    assert!(err.to_string().contains("2 threads"), "{err}");
    tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    // The kernel may take a moment to remove the thread's /proc entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    while thread_count().unwrap() != 1 {
        assert!(Instant::now() < deadline, "the thread did not go away");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fork_and_reap(3), Some(3));
}

fn main() {
    let tests: [(&str, fn()); 2] = [
        (
            "single_threaded_process_forks",
            single_threaded_process_forks,
        ),
        (
            "fork_is_refused_with_a_second_thread_and_allowed_after_it_ends",
            fork_is_refused_with_a_second_thread_and_allowed_after_it_ends,
        ),
    ];
    // Run in order, in this (main) thread; a failure panics and exits non-zero.
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", tests.len());
}

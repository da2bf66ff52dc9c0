//! c10k-sys: the only crate of the workspace with `unsafe` code.
//!
//! Each module wraps a syscall that rustix does not offer safely in the shape the
//! strategies need, and checks whatever makes the call sound before making it, so that
//! callers stay in safe Rust. `unsafe` is allowed per file, never crate-wide; every
//! `unsafe` block carries a `// SAFETY:` comment.
//!
//! - [`select`](select::select) over a fixed-size [`FdSet`] that refuses any descriptor
//!   at or above [`FD_SETSIZE`] instead of writing outside the set;
//! - [`poll`](poll::poll) over a long-lived array of raw [`PollFd`]s, which rustix's
//!   `poll` (whose `PollFd` borrows each descriptor) cannot hold across loop iterations.
//!   Both only ask the kernel about descriptors: one that is not open yields `EBADF`
//!   (select) or `POLLNVAL` (poll), never memory unsafety;
//! - [`process`]: `fork`, refused unless the process is single-threaded;
//! - [`uring`]: an io_uring whose operations own their buffers until their completions
//!   return (provided-buffer ring, multishot accept/recv, sends that hand their `Vec`
//!   back, closes through the ring);
//! - [`shm`]: counters in a `MAP_SHARED` mapping that forked children share with
//!   their parent;
//! - [`activation`]: taking the listening sockets a service manager passed
//!   (`LISTEN_FDS`, systemd's socket activation).
//! - [`bpf`]: the `kernel` strategy's in-kernel echo (an `sk_skb` verdict program on a
//!   `SOCKHASH`, assembled here and loaded through bpf(2)) and `TCP_INFO` counters;
//! - [`epoll`]: an epoll wait whose buffer is `Send` (waited on with an interpreter's
//!   lock released), with nanosecond timeouts;
//! - [`fd`]: a descriptor of Rust's own for a socket an interpreter names by number;
//! - [`stack_guard`]: a green thread's stack overflow (a hit on its guard page) is
//!   reported on stderr before the process aborts, instead of a bare SIGSEGV;
//! - [`thread_bound`]: a single-threaded value an interpreter's garbage collector may
//!   free on another thread, dropped later on its own thread instead of there.

pub mod activation;
pub mod bpf;
pub mod epoll;
pub mod fd;
pub mod poll;
pub mod process;
pub mod select;
pub mod shm;
pub mod stack_guard;
pub mod thread_bound;
pub mod uring;

pub use poll::{PollFd, poll};
pub use select::{FD_SETSIZE, FdSet, select};

//! The only crate of c10k allowed `unsafe`: safe wrappers for the system calls that
//! rustix cannot offer safely in the shape the strategies need.
//!
//! - [`select`](select::select) over a fixed-size [`FdSet`] that refuses
//!   any descriptor at or above [`FD_SETSIZE`] instead of writing
//!   outside the set;
//! - [`poll`](poll::poll) over a long-lived array of raw [`PollFd`]s, which
//!   rustix's `poll` (whose `PollFd` borrows each descriptor) cannot hold across loop
//!   iterations.
//!
//! Both calls only ask the kernel about descriptors; they never read, write or close
//! them. A descriptor that is not open yields an error (`EBADF` for select) or a flag
//! (`POLLNVAL` for poll), never memory unsafety, which is why the wrappers are safe
//! functions. Each `unsafe` block carries a `// SAFETY:` comment.

pub mod poll;
pub mod select;

pub use poll::{PollFd, poll};
pub use select::{FD_SETSIZE, FdSet, select};

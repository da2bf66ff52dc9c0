//! The server side of [`Mailbox`]: where posted messages wait until the worker that
//! owns the connection takes them, and how that worker is woken.
//!
//! One [`Inbox`] per event loop (per connection for the blocking strategies): a
//! queue of `(key, serial, letter)` under a mutex and an eventfd. Posting pushes and,
//! when the queue was empty, writes the eventfd; the loop watches the eventfd like any
//! other descriptor (epoll, poll, select, a ring poll, a blocking thread's `poll`),
//! takes the whole queue at once and hands each letter to its connection's
//! [`ConnCore`](super::ConnCore), which delivers it to the session on that worker.
//!
//! Each connection's [`MailSlot`] counts the messages posted and not yet delivered:
//! at `capacity` a post fails with [`PostError::Full`] (the core stops delivering
//! while the connection's unsent output is over `--output-cap`, so a consumer that
//! does not read its socket fills its mailbox). Once the connection is closed, posts
//! fail with [`PostError::Closed`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use c10k_proto::mailbox::Post;
use c10k_proto::{Mailbox, Message, PostError};
use rustix::event::{EventfdFlags, eventfd};

/// Messages a connection's mailbox holds before posts fail with `Full`.
pub(crate) const MAILBOX_CAPACITY: usize = 4096;

/// What travels through an inbox.
pub(crate) enum Letter {
    /// A message for the session.
    Message(Message),
    /// The poster gave up on a slow consumer: close the connection at once.
    Disconnect,
}

/// A worker's (or a blocking connection's) inbox.
pub(crate) struct Inbox {
    queue: Mutex<Vec<(usize, u64, Letter)>>,
    wake: OwnedFd,
}

impl Inbox {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Inbox {
            queue: Mutex::new(Vec::new()),
            wake: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        }))
    }

    /// The descriptor that becomes readable when letters wait.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn push(&self, key: usize, serial: u64, letter: Letter) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = q.is_empty();
            q.push((key, serial, letter));
            was_empty
        };
        if was_empty {
            // A full counter (never, at one per batch) still leaves it readable.
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Take every waiting letter (appended to `into`, oldest first) and reset the
    /// wake-up.
    pub(crate) fn take(&self, into: &mut Vec<(usize, u64, Letter)>) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if into.is_empty() {
            std::mem::swap(&mut *q, into);
        } else {
            into.append(&mut q);
        }
    }

    /// A mailbox for the connection at `key` with `serial`.
    pub(crate) fn mailbox(self: &Arc<Self>, key: usize, serial: u64) -> (Mailbox, Arc<MailSlot>) {
        let slot = Arc::new(MailSlot {
            inbox: Arc::clone(self),
            key,
            serial,
            capacity: MAILBOX_CAPACITY,
            pending: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        (Mailbox::new(Arc::clone(&slot) as Arc<dyn Post>), slot)
    }
}

impl AsFd for Inbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// One connection's end of its mailbox.
pub(crate) struct MailSlot {
    inbox: Arc<Inbox>,
    key: usize,
    serial: u64,
    capacity: usize,
    /// Posted and not delivered yet.
    pending: AtomicUsize,
    closed: AtomicBool,
}

impl MailSlot {
    /// One message reached the session (or was dropped with the connection).
    pub(crate) fn delivered(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// The connection closed: later posts fail.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl Post for MailSlot {
    fn post(&self, msg: Message) -> Result<(), PostError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PostError::Closed(msg));
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(PostError::Full(msg));
        }
        self.inbox.push(self.key, self.serial, Letter::Message(msg));
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn disconnect(&self) {
        // Closed from now on (the poster counts a slow consumer once); the letter
        // closes the connection on its own worker.
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.inbox.push(self.key, self.serial, Letter::Disconnect);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_wake_the_inbox_once_per_batch_and_are_bounded_per_connection() {
        let inbox = Inbox::new().unwrap();
        let (mb, slot) = inbox.mailbox(3, 7);
        mb.post(1u8).unwrap();
        mb.post(2u8).unwrap();
        let mut counter = [0u8; 8];
        let n = rustix::io::read(&inbox.wake, &mut counter).unwrap();
        assert_eq!(
            (n, u64::from_ne_bytes(counter)),
            (8, 1),
            "one wake for the batch"
        );
        let _ = rustix::io::write(&inbox.wake, &1u64.to_ne_bytes());
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(k, s, _)| (*k, *s) == (3, 7)));
        assert!(
            rustix::io::read(&inbox.wake, &mut counter).is_err(),
            "the wake-up is reset"
        );
        for _ in 2..MAILBOX_CAPACITY {
            mb.post(0u8).unwrap();
        }
        assert!(matches!(mb.post(0u8), Err(PostError::Full(_))));
        slot.delivered();
        mb.post(0u8).unwrap();
        slot.close();
        assert!(matches!(mb.post(0u8), Err(PostError::Closed(_))));
        assert!(mb.is_closed());
    }
}

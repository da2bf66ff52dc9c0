//! Messages to a connection: the session side of push.
//!
//! A session that asks for one ([`Session::wants_mailbox`](crate::Session::wants_mailbox))
//! is given a [`Mailbox`] right after the call in which it asked (so a session that
//! never subscribes costs nothing). Anyone holding a clone (another
//! session, a broker, any thread) can [`post`](Mailbox::post) a [`Message`] to it; the
//! driver wakes the connection's own worker, which calls
//! [`Session::handle_message`](crate::Session::handle_message) there, in posting order,
//! never concurrently with the session's input handling.
//!
//! The delivery side is the server's business (an eventfd for an event loop, a park for
//! a blocking thread); this crate only defines the contract, through [`Post`], plus an
//! in-memory implementation ([`Mailbox::memory`]) for tests and in-memory drivers.
//!
//! Every mailbox is bounded, and a driver takes no message from it while the
//! connection's unsent output is over `--output-cap` (a consumer that does not read
//! its socket stops taking messages): a post to a full mailbox fails with
//! [`PostError::Full`] and gives the message back, and the poster applies its own
//! policy (the pub/sub broker [`disconnect`](Mailbox::disconnect)s such a subscriber,
//! as Redis's `client-output-buffer-limit pubsub` does). A post to a closed
//! connection fails with [`PostError::Closed`].

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A message posted to a connection: any value the receiving session understands
/// (it downcasts). A broker that fans one message out to many connections posts a
/// cheap clone of a shared value (an `Arc`).
pub type Message = Box<dyn Any + Send>;

/// Why a post failed; the message comes back.
pub enum PostError {
    /// The connection is closed (or closing): nobody will read this.
    Closed(Message),
    /// The mailbox holds as many messages as it may: the receiver is not keeping up.
    Full(Message),
}

impl fmt::Debug for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::Closed(_) => f.write_str("PostError::Closed"),
            PostError::Full(_) => f.write_str("PostError::Full"),
        }
    }
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::Closed(_) => f.write_str("the connection is closed"),
            PostError::Full(_) => f.write_str("the connection's mailbox is full"),
        }
    }
}

impl std::error::Error for PostError {}

/// The delivery side of a mailbox, implemented by whoever drives the session.
pub trait Post: Send + Sync {
    /// Queue `msg` for the connection and wake its worker.
    fn post(&self, msg: Message) -> Result<(), PostError>;
    /// Whether the connection is closed (a post would fail with `Closed`).
    fn is_closed(&self) -> bool;
    /// Close the connection at once, dropping what it has not sent: the policy for
    /// a consumer too slow to keep its mailbox from filling. Counted by the server.
    fn disconnect(&self);
}

/// A handle that posts messages to one connection. Cheap to clone; compares equal to
/// its clones (by [`id`](Mailbox::id)).
#[derive(Clone)]
pub struct Mailbox {
    id: u64,
    inner: Arc<dyn Post>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox").field("id", &self.id).finish()
    }
}

impl PartialEq for Mailbox {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Mailbox {}

impl std::hash::Hash for Mailbox {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Process-wide mailbox ids: unique for the life of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Mailbox {
    /// A mailbox delivering through `inner`.
    pub fn new(inner: Arc<dyn Post>) -> Self {
        Mailbox {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            inner,
        }
    }

    /// This mailbox's id, unique in the process (a broker keys subscribers by it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Post `msg`. Fails cleanly, giving the message back, when the connection is
    /// closed or its mailbox is full.
    pub fn post<M: Any + Send>(&self, msg: M) -> Result<(), PostError> {
        self.inner.post(Box::new(msg))
    }

    /// Post an already boxed message.
    pub fn post_boxed(&self, msg: Message) -> Result<(), PostError> {
        self.inner.post(msg)
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Close the connection at once, dropping what it has not sent yet (for a
    /// consumer that does not keep up: a post failed with [`PostError::Full`]).
    pub fn disconnect(&self) {
        self.inner.disconnect();
    }

    /// An in-memory mailbox holding at most `capacity` messages, and its receiving
    /// end (for tests and in-memory drivers).
    pub fn memory(capacity: usize) -> (Mailbox, MemoryInbox) {
        let shared = Arc::new(MemoryBox {
            capacity,
            state: Mutex::new(MemoryState {
                queue: VecDeque::new(),
                closed: false,
            }),
        });
        (
            Mailbox::new(Arc::clone(&shared) as Arc<dyn Post>),
            MemoryInbox(shared),
        )
    }
}

struct MemoryState {
    queue: VecDeque<Message>,
    closed: bool,
}

struct MemoryBox {
    capacity: usize,
    state: Mutex<MemoryState>,
}

impl Post for MemoryBox {
    fn post(&self, msg: Message) -> Result<(), PostError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.closed {
            return Err(PostError::Closed(msg));
        }
        if s.queue.len() >= self.capacity {
            return Err(PostError::Full(msg));
        }
        s.queue.push_back(msg);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    fn disconnect(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed = true;
        s.queue.clear();
    }
}

/// The receiving end of [`Mailbox::memory`].
pub struct MemoryInbox(Arc<MemoryBox>);

impl MemoryInbox {
    /// Take every queued message, oldest first.
    pub fn take_all(&self) -> Vec<Message> {
        let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.queue.drain(..).collect()
    }

    /// Close the mailbox: later posts fail with `Closed`; queued messages are dropped.
    pub fn close(&self) {
        self.0.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_mailbox_is_bounded_ordered_and_fails_cleanly_once_closed() {
        let (mb, inbox) = Mailbox::memory(2);
        let other = mb.clone();
        assert_eq!(mb, other);
        mb.post(1u32).unwrap();
        other.post(2u32).unwrap();
        match mb.post(3u32) {
            Err(PostError::Full(m)) => assert_eq!(m.downcast_ref::<u32>(), Some(&3)),
            other => panic!("expected Full, got {other:?}"),
        }
        let got: Vec<u32> = inbox
            .take_all()
            .into_iter()
            .map(|m| *m.downcast::<u32>().unwrap())
            .collect();
        assert_eq!(got, vec![1, 2]);
        inbox.close();
        assert!(mb.is_closed());
        assert!(matches!(mb.post(4u32), Err(PostError::Closed(_))));
        let (second, _) = Mailbox::memory(1);
        assert_ne!(mb, second);
    }
}

//! The pub/sub broker: channels and patterns to subscribers' mailboxes, one per
//! [`RespApp`](super::RespApp) (so one per process: with `fork` and `prefork` each process
//! has its own, and a message reaches the subscribers of the publisher's process only).
//!
//! A subscriber is its connection's [`Mailbox`], keyed by [`Mailbox::id`]. `PUBLISH`
//! encodes the `message` frame once (and each matching pattern's `pmessage` frame once),
//! and posts every subscriber a clone of one `Arc`: fan-out to 10,000 subscribers copies
//! no payload and allocates only the mailbox's box for the `Arc`. The receiving session
//! copies the frame into its output on its own worker.
//!
//! # Slow and closed subscribers
//!
//! A driver stops taking messages from a mailbox while its connection's unsent output is
//! over the output cap, so a subscriber that does not read fills its mailbox. `PUBLISH`
//! then applies Redis's `client-output-buffer-limit pubsub` policy at once:
//!
//! - a post that fails with [`PostError::Full`]: the subscriber is
//!   [disconnected](Mailbox::disconnect), removed from the broker, counted in
//!   [`PubSubStats::slow_disconnects`], and not counted as a receiver;
//! - a post that fails with [`PostError::Closed`] (the connection is closing): the
//!   subscriber is removed and not counted as a receiver ([`PubSubStats::closed`]).
//!
//! A session also unregisters everything when it closes or is dropped, so the broker
//! never holds a dead subscriber for long.
//!
//! # Ordering
//!
//! The broker is one `RwLock`: publishers share it (and post under it), subscribing and
//! unsubscribing take it alone. A driver's [`Post::post`](crate::mailbox::Post::post)
//! therefore runs under the read lock: it must be quick (queue and wake) and must not
//! call into a session; [`Mailbox::disconnect`] is called after the lock is released. Each `PUBLISH` takes the next sequence number under the
//! lock, and each (un)subscription records the sequence number it saw; a session uses
//! them to drop a message that was posted before an `UNSUBSCRIBE` it has already
//! confirmed (the message was in its mailbox when the client unsubscribed). After the
//! confirmation of `UNSUBSCRIBE ch` a client receives nothing more from `ch` (until it
//! subscribes again, and then only messages published after that), which a client
//! leaving subscribed mode relies on. Such dropped messages are counted in
//! [`PubSubStats::stale`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::codec::{write_array_header, write_bulk};
use super::glob::glob_match;
use crate::{Mailbox, PostError};

/// Whether a subscription is to a channel or to a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SUBSCRIBE`.
    Channel,
    /// `PSUBSCRIBE`.
    Pattern,
}

/// What `PUBLISH` posts to each subscriber (as an `Arc<Delivery>`): one frame encoded
/// once for all of them.
pub(crate) struct Delivery {
    /// The publish's sequence number.
    pub(crate) seq: u64,
    /// Whether it came through a channel or a pattern subscription.
    pub(crate) kind: Kind,
    /// The channel, or the pattern, that it came through.
    pub(crate) name: Arc<[u8]>,
    /// `*3 message <channel> <payload>` or `*4 pmessage <pattern> <channel> <payload>`.
    pub(crate) frame: Box<[u8]>,
}

/// Pub/sub counters of one app (one process), since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubSubStats {
    /// `PUBLISH` commands executed.
    pub published: u64,
    /// Messages accepted by subscribers' mailboxes (a `message` or `pmessage` each).
    pub delivered: u64,
    /// Subscribers disconnected because their mailbox was full.
    pub slow_disconnects: u64,
    /// Posts that found the subscriber's connection closed (it was removed).
    pub closed: u64,
    /// Messages a session dropped because the subscription they came through had
    /// ended (its `UNSUBSCRIBE` confirmed) before they arrived.
    pub stale: u64,
    /// Channels with at least one subscriber, now.
    pub channels: u64,
    /// Distinct patterns with at least one subscriber, now.
    pub patterns: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    slow_disconnects: AtomicU64,
    closed: AtomicU64,
    stale: AtomicU64,
}

/// Lists longer than this get an index from mailbox id to position.
const INDEX_FROM: usize = 16;

/// The subscribers of one channel or pattern: a list to post to, fast to iterate,
/// with an id index once it is long enough that a linear search would hurt.
struct Subscribers {
    /// The channel or pattern (the broker's copy, shared with the sessions).
    name: Arc<[u8]>,
    list: Vec<Mailbox>,
    index: Option<HashMap<u64, usize>>,
}

impl Subscribers {
    fn new(name: Arc<[u8]>) -> Self {
        Subscribers {
            name,
            list: Vec::new(),
            index: None,
        }
    }

    fn position(&self, id: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|m| m.id() == id),
        }
    }

    /// Adds `mailbox` unless it is there already.
    fn insert(&mut self, mailbox: &Mailbox) {
        if self.position(mailbox.id()).is_some() {
            return;
        }
        self.list.push(mailbox.clone());
        if let Some(index) = &mut self.index {
            index.insert(mailbox.id(), self.list.len() - 1);
        } else if self.list.len() > INDEX_FROM {
            let index = self.list.iter().enumerate().map(|(i, m)| (m.id(), i));
            self.index = Some(index.collect());
        }
    }

    /// Removes the mailbox `id`, if present.
    fn remove(&mut self, id: u64) {
        let Some(at) = self.position(id) else {
            return;
        };
        self.list.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.list.get(at) {
                index.insert(moved.id(), at);
            }
            if self.list.len() <= INDEX_FROM / 2 {
                self.index = None;
            }
        }
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<Arc<[u8]>, Subscribers>,
    patterns: HashMap<Arc<[u8]>, Subscribers>,
}

impl State {
    fn map(&mut self, kind: Kind) -> &mut HashMap<Arc<[u8]>, Subscribers> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
        }
    }
}

/// The channels and patterns of one app, and who listens to them. Shared by the app's
/// sessions; see the module docs.
#[derive(Default)]
pub struct Broker {
    state: RwLock<State>,
    /// The sequence number of the latest `PUBLISH` (incremented under the read lock).
    seq: AtomicU64,
    counters: Counters,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Subscribers a `PUBLISH` found dead or too slow, dealt with once the read lock is
/// released.
#[derive(Default)]
struct Casualties {
    /// `(kind, name, mailbox id)` to remove.
    remove: Vec<(Kind, Arc<[u8]>, u64)>,
    /// Mailboxes that were full: disconnect each once.
    slow: Vec<Mailbox>,
    /// Posts that found the connection closed.
    closed: u64,
}

impl Broker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the broker alone to change subscriptions. Every update leaves the state
    /// consistent, so a lock poisoned by a panic elsewhere is used as it is.
    pub(crate) fn registry(&self) -> Registry<'_> {
        let state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Publishers increment `seq` under the read lock: it is stable now.
        let seq = self.seq.load(Ordering::SeqCst);
        Registry { state, seq }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PubSubStats {
        let (channels, patterns) = {
            let state = self.read();
            (state.channels.len(), state.patterns.len())
        };
        let c = &self.counters;
        PubSubStats {
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            slow_disconnects: c.slow_disconnects.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            channels: channels as u64,
            patterns: patterns as u64,
        }
    }

    /// Counts a message a session dropped as stale.
    pub(crate) fn count_stale(&self) {
        self.counters.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// `PUBLISH channel payload`: posts a `message` to each subscriber of `channel` and
    /// a `pmessage` to each subscriber of each matching pattern. Returns the number of
    /// receivers, counted as Redis counts them (a client subscribed to the channel and
    /// to two matching patterns is three), not counting subscribers that were closed or
    /// too slow (see the module docs).
    pub fn publish(&self, channel: &[u8], payload: &[u8]) -> u64 {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let mut receivers = 0u64;
        let mut casualties = Casualties::default();
        {
            let state = self.read();
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(subscribers) = state.channels.get(channel) {
                let mut frame = Vec::with_capacity(channel.len() + payload.len() + 40);
                write_array_header(&mut frame, 3);
                write_bulk(&mut frame, b"message");
                write_bulk(&mut frame, channel);
                write_bulk(&mut frame, payload);
                let delivery = Arc::new(Delivery {
                    seq,
                    kind: Kind::Channel,
                    name: Arc::clone(&subscribers.name),
                    frame: frame.into(),
                });
                receivers += post_all(&delivery, subscribers, &mut casualties);
            }
            for (pattern, subscribers) in &state.patterns {
                if !glob_match(pattern, channel) {
                    continue;
                }
                let mut frame =
                    Vec::with_capacity(pattern.len() + channel.len() + payload.len() + 60);
                write_array_header(&mut frame, 4);
                write_bulk(&mut frame, b"pmessage");
                write_bulk(&mut frame, pattern);
                write_bulk(&mut frame, channel);
                write_bulk(&mut frame, payload);
                let delivery = Arc::new(Delivery {
                    seq,
                    kind: Kind::Pattern,
                    name: Arc::clone(pattern),
                    frame: frame.into(),
                });
                receivers += post_all(&delivery, subscribers, &mut casualties);
            }
        }
        self.counters
            .delivered
            .fetch_add(receivers, Ordering::Relaxed);
        if !casualties.remove.is_empty() {
            self.counters
                .closed
                .fetch_add(casualties.closed, Ordering::Relaxed);
            self.bury(casualties);
        }
        receivers
    }

    /// Disconnects the slow subscribers (outside the lock: a driver may do anything
    /// in `disconnect`) and removes the dead ones.
    fn bury(&self, casualties: Casualties) {
        let mut seen: Vec<u64> = Vec::new();
        for mailbox in &casualties.slow {
            if seen.contains(&mailbox.id()) {
                continue;
            }
            seen.push(mailbox.id());
            // Another publisher may have disconnected it already.
            if !mailbox.is_closed() {
                mailbox.disconnect();
                self.counters
                    .slow_disconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut registry = self.registry();
        for (kind, name, id) in casualties.remove {
            registry.remove(kind, &name, id);
        }
    }

    /// `PUBSUB CHANNELS [pattern]`: the channels with subscribers that match.
    pub(crate) fn channels(&self, pattern: Option<&[u8]>) -> Vec<Arc<[u8]>> {
        let state = self.read();
        state
            .channels
            .keys()
            .filter(|name| pattern.is_none_or(|p| glob_match(p, name)))
            .cloned()
            .collect()
    }

    /// `PUBSUB NUMSUB`: the number of subscribers of `channel` (patterns not counted).
    pub(crate) fn numsub(&self, channel: &[u8]) -> usize {
        self.read()
            .channels
            .get(channel)
            .map_or(0, |s| s.list.len())
    }

    /// `PUBSUB NUMPAT`: the number of distinct patterns with subscribers.
    pub(crate) fn numpat(&self) -> usize {
        self.read().patterns.len()
    }
}

/// Posts `delivery` to each subscriber; returns how many took it.
fn post_all(
    delivery: &Arc<Delivery>,
    subscribers: &Subscribers,
    casualties: &mut Casualties,
) -> u64 {
    let mut taken = 0;
    for mailbox in &subscribers.list {
        match mailbox.post(Arc::clone(delivery)) {
            Ok(()) => taken += 1,
            Err(PostError::Closed(_)) => {
                casualties.closed += 1;
                casualties
                    .remove
                    .push((delivery.kind, Arc::clone(&delivery.name), mailbox.id()));
            }
            Err(PostError::Full(_)) => {
                casualties
                    .remove
                    .push((delivery.kind, Arc::clone(&delivery.name), mailbox.id()));
                casualties.slow.push(mailbox.clone());
            }
        }
    }
    taken
}

/// The broker, taken alone to change subscriptions (see [`Broker::registry`]).
pub(crate) struct Registry<'a> {
    state: RwLockWriteGuard<'a, State>,
    seq: u64,
}

impl Registry<'_> {
    /// The sequence number of the latest `PUBLISH`: messages posted through a
    /// subscription made now have greater ones, messages posted through one removed
    /// now have this one or less.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Adds `mailbox` to `name`'s subscribers; returns the broker's copy of the name,
    /// for the session to share.
    pub(crate) fn add(&mut self, kind: Kind, name: &[u8], mailbox: &Mailbox) -> Arc<[u8]> {
        let map = self.state.map(kind);
        if let Some(subscribers) = map.get_mut(name) {
            subscribers.insert(mailbox);
            return Arc::clone(&subscribers.name);
        }
        let key: Arc<[u8]> = Arc::from(name);
        let mut subscribers = Subscribers::new(Arc::clone(&key));
        subscribers.insert(mailbox);
        map.insert(Arc::clone(&key), subscribers);
        key
    }

    /// Removes the mailbox `id` from `name`'s subscribers, and `name` once it has none.
    pub(crate) fn remove(&mut self, kind: Kind, name: &[u8], id: u64) {
        let map = self.state.map(kind);
        if let Some(subscribers) = map.get_mut(name) {
            subscribers.remove(id);
            if subscribers.list.is_empty() {
                map.remove(name);
            }
        }
    }
}

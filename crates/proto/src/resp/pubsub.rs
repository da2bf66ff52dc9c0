//! Pub/sub on a RESP connection: its subscriptions, the commands that change them, and
//! the deliveries it receives (Redis 7 semantics, RESP2).
//!
//! The connection asks for a [`Mailbox`] with its first `SUBSCRIBE` or `PSUBSCRIBE`
//! ([`Session::wants_mailbox`](crate::Session::wants_mailbox)). The driver gives it right
//! after that call, before writing the call's output: the subscriptions made before
//! it arrives are kept here and registered with the [`Broker`] in
//! [`attach`](Subscriptions::attach), so by the time the client reads a confirmation
//! the subscription is live. From then on each (un)subscription goes to the broker at
//! once. A connection that is never given a mailbox (a driver without mailboxes)
//! confirms its subscriptions and receives nothing.
//!
//! While a connection has at least one subscription it is in subscribed mode: only
//! `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE`, `PING`, `QUIT` and `RESET`
//! run; anything else gets Redis's `Can't execute` error, and `PING` answers
//! `*2 pong <arg or "">`.
//!
//! `UNSUBSCRIBE` / `PUNSUBSCRIBE` without arguments go through the subscriptions in
//! byte order (Redis goes through a hash table: its order is arbitrary).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::broker::{Broker, Delivery, Kind, Registry};
use super::codec::{write_array_header, write_bulk, write_integer, write_nil};
use crate::{Mailbox, Message};

/// One connection's subscriptions: name -> the broker sequence number when it was
/// registered (0 while no mailbox has been attached).
type Subs = BTreeMap<Arc<[u8]>, u64>;

/// The pub/sub state of one connection.
pub(crate) struct Subscriptions {
    broker: Arc<Broker>,
    mailbox: Option<Mailbox>,
    /// A `(P)SUBSCRIBE` has run: the connection wants a mailbox.
    wanted: bool,
    /// The connection is closing: nothing is registered any more.
    left: bool,
    channels: Subs,
    patterns: Subs,
    /// The broker sequence number at the latest unsubscription that reached the
    /// broker: deliveries numbered up to it may be for a subscription that ended.
    last_unsubscribe: u64,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("mailbox", &self.mailbox)
            .field("channels", &self.channels.len())
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

/// The words of the confirmations.
fn confirmation(kind: Kind, subscribe: bool) -> &'static [u8] {
    match (kind, subscribe) {
        (Kind::Channel, true) => b"subscribe",
        (Kind::Channel, false) => b"unsubscribe",
        (Kind::Pattern, true) => b"psubscribe",
        (Kind::Pattern, false) => b"punsubscribe",
    }
}

/// `*3 <word> <name or nil> :<count>`.
fn confirm(out: &mut Vec<u8>, word: &[u8], name: Option<&[u8]>, count: usize) {
    write_array_header(out, 3);
    write_bulk(out, word);
    match name {
        Some(name) => write_bulk(out, name),
        None => write_nil(out),
    }
    write_integer(out, i64::try_from(count).unwrap_or(i64::MAX));
}

impl Subscriptions {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Subscriptions {
            broker,
            mailbox: None,
            wanted: false,
            left: false,
            channels: Subs::new(),
            patterns: Subs::new(),
            last_unsubscribe: 0,
        }
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Subscribed mode: at least one channel or pattern.
    pub(crate) fn active(&self) -> bool {
        self.count() > 0
    }

    /// Channels plus patterns, the count in every confirmation.
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    pub(crate) fn wants_mailbox(&self) -> bool {
        self.wanted && self.mailbox.is_none() && !self.left
    }

    /// Takes the connection's mailbox and registers the subscriptions made so far.
    pub(crate) fn attach(&mut self, mailbox: Mailbox) {
        if self.mailbox.is_some() {
            return;
        }
        if !self.left && self.active() {
            let mut registry = self.broker.registry();
            for (kind, subs) in [
                (Kind::Channel, &mut self.channels),
                (Kind::Pattern, &mut self.patterns),
            ] {
                let seq = registry.seq();
                *subs = std::mem::take(subs)
                    .into_keys()
                    .map(|name| (registry.add(kind, &name, &mailbox), seq))
                    .collect();
            }
        }
        self.mailbox = Some(mailbox);
    }

    /// `SUBSCRIBE` / `PSUBSCRIBE name...`: one confirmation per name, in order.
    pub(crate) fn subscribe<'n>(
        &mut self,
        kind: Kind,
        names: impl Iterator<Item = &'n [u8]>,
        out: &mut Vec<u8>,
    ) {
        self.wanted = true;
        let word = confirmation(kind, true);
        let Subscriptions {
            broker,
            mailbox,
            channels,
            patterns,
            left,
            ..
        } = self;
        let (subs, others) = match kind {
            Kind::Channel => (channels, patterns.len()),
            Kind::Pattern => (patterns, channels.len()),
        };
        let mut registry: Option<Registry<'_>> = None;
        for name in names {
            if !subs.contains_key(name) {
                let entry = match mailbox {
                    Some(mailbox) if !*left => {
                        let registry = registry.get_or_insert_with(|| broker.registry());
                        (registry.add(kind, name, mailbox), registry.seq())
                    }
                    _ => (Arc::from(name), 0),
                };
                subs.insert(entry.0, entry.1);
            }
            confirm(out, word, Some(name), subs.len() + others);
        }
    }

    /// `UNSUBSCRIBE` / `PUNSUBSCRIBE [name...]`: one confirmation per name, or per
    /// subscription of that kind when no name is given, or `nil` when there is none.
    pub(crate) fn unsubscribe<'n>(
        &mut self,
        kind: Kind,
        mut names: impl Iterator<Item = &'n [u8]> + Clone,
        out: &mut Vec<u8>,
    ) {
        let word = confirmation(kind, false);
        let Subscriptions {
            broker,
            mailbox,
            channels,
            patterns,
            last_unsubscribe,
            ..
        } = self;
        let (subs, others) = match kind {
            Kind::Channel => (channels, patterns.len()),
            Kind::Pattern => (patterns, channels.len()),
        };
        let mut registry: Option<Registry<'_>> = None;
        let mut forget = |name: &Arc<[u8]>| {
            if let Some(mailbox) = mailbox {
                let registry = registry.get_or_insert_with(|| broker.registry());
                registry.remove(kind, name, mailbox.id());
                *last_unsubscribe = registry.seq();
            }
        };
        if names.clone().next().is_none() {
            if subs.is_empty() {
                confirm(out, word, None, others);
            }
            let all = std::mem::take(subs);
            let mut left = all.len();
            for name in all.into_keys() {
                forget(&name);
                left -= 1;
                confirm(out, word, Some(&name), left + others);
            }
        } else {
            for name in names.by_ref() {
                if let Some((name, _)) = subs.remove_entry(name) {
                    forget(&name);
                }
                confirm(out, word, Some(name), subs.len() + others);
            }
        }
    }

    /// Drops every subscription without a confirmation (`RESET`, closing).
    pub(crate) fn clear(&mut self) {
        let channels = std::mem::take(&mut self.channels);
        let patterns = std::mem::take(&mut self.patterns);
        let Some(mailbox) = &self.mailbox else {
            return;
        };
        if channels.is_empty() && patterns.is_empty() {
            return;
        }
        let mut registry = self.broker.registry();
        for (kind, subs) in [(Kind::Channel, channels), (Kind::Pattern, patterns)] {
            for name in subs.into_keys() {
                registry.remove(kind, &name, mailbox.id());
            }
        }
        self.last_unsubscribe = registry.seq();
    }

    /// The connection is closing: unregister everything, now and from now on.
    pub(crate) fn leave(&mut self) {
        self.left = true;
        self.clear();
    }

    /// A message from the mailbox: a delivery is appended to `out` unless the
    /// subscription it came through has ended since it was posted (see the broker's
    /// docs on ordering). Anything else is ignored.
    pub(crate) fn deliver(&mut self, message: Message, out: &mut Vec<u8>) {
        let Ok(delivery) = message.downcast::<Arc<Delivery>>() else {
            return;
        };
        if self.left {
            return;
        }
        if delivery.seq <= self.last_unsubscribe {
            let subs = match delivery.kind {
                Kind::Channel => &self.channels,
                Kind::Pattern => &self.patterns,
            };
            let live = subs
                .get(&delivery.name[..])
                .is_some_and(|&since| since < delivery.seq);
            if !live {
                self.broker.count_stale();
                return;
            }
        }
        out.extend_from_slice(&delivery.frame);
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.leave();
    }
}

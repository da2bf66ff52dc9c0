//! Pub/sub load: what publishers send, what subscribers check, and how the counts add up.
//!
//! Subscriber `i` subscribes to channel `i % channels`. Publisher `p` sends its `m`-th
//! message to channel `(m + p) % channels`, so every channel gets every publisher's
//! messages in turn. Each payload starts with a [`Stamp`]: the publisher, the channel,
//! a sequence number (per publisher and channel, from 0, no gaps) and the time the
//! message was due (nanoseconds since the run's epoch, on the load generator's
//! monotonic clock: publishers and subscribers live in the same process). The rest of
//! the payload is filler up to `--size`.
//!
//! A subscriber follows each publisher's sequence on its channel ([`SeqTrack`]), so it
//! tells a message it never got from one that came late (out of order) or twice
//! (duplicate).
//!
//! **Accounting** (done once the run has settled, see [`tally`]): a message is
//! *published* when the server answered its PUBLISH (`:n`). A subscriber that was
//! subscribed when publishing began *expects* every message published to its channel:
//! `expected = sum over channels of published(channel) x subscribers(channel)`. Its
//! shortfall (expected minus the distinct messages it received) is **lost** if it is
//! still connected at the end; if the server disconnected it during the run, the
//! shortfall is reported apart as *undelivered to disconnected subscribers* (what the
//! server dropped with the connection, and everything published after). The sum of the
//! PUBLISH replies (the receivers the server claims) is reported beside, as a
//! cross-check.

use std::ops::Range;

use crate::resp_frame::{Frame, Item};

/// The payload bytes a [`Stamp`] takes; `--size` must be at least this.
pub const STAMP_LEN: usize = 24;

/// The message size when `--size` is not given.
pub const DEFAULT_MESSAGE_SIZE: usize = 64;

/// Gaps a subscriber remembers per publisher (messages skipped that may still come);
/// beyond it the oldest gap is forgotten, and a message that fills it later counts as a
/// duplicate.
pub const MAX_GAPS: usize = 64;

/// The name of channel `k`.
pub fn channel_name(k: usize) -> String {
    format!("c10k:{k}")
}

/// What a message carries at the start of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the message was due, nanoseconds since the run's epoch.
    pub sent_ns: u64,
    /// The publisher's sequence number on this channel.
    pub seq: u64,
    /// The publisher.
    pub publisher: u32,
    /// The channel's index.
    pub channel: u32,
}

impl Stamp {
    /// Appends the stamp's [`STAMP_LEN`] bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sent_ns.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.publisher.to_le_bytes());
        out.extend_from_slice(&self.channel.to_le_bytes());
    }

    /// The stamp at the start of `payload`, if it is long enough.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b = payload.get(..STAMP_LEN)?;
        let u64_at = |k: usize| b.get(k..k + 8)?.try_into().ok().map(u64::from_le_bytes);
        let u32_at = |k: usize| b.get(k..k + 4)?.try_into().ok().map(u32::from_le_bytes);
        Some(Stamp {
            sent_ns: u64_at(0)?,
            seq: u64_at(8)?,
            publisher: u32_at(16)?,
            channel: u32_at(20)?,
        })
    }
}

/// The commands of a pub/sub run, prepared once.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Channel names.
    pub channels: Vec<String>,
    /// `SUBSCRIBE channel` for each channel, encoded.
    subscribe: Vec<Vec<u8>>,
    /// Payload bytes per message.
    pub size: usize,
    /// Subscribers and publishers.
    pub subscribers: usize,
    /// Publishers.
    pub publishers: usize,
}

impl Plan {
    /// A plan for `channels` channels and messages of `size` bytes (at least
    /// [`STAMP_LEN`]).
    pub fn new(subscribers: usize, publishers: usize, channels: usize, size: usize) -> Self {
        let channels: Vec<String> = (0..channels.max(1)).map(channel_name).collect();
        let subscribe = channels
            .iter()
            .map(|c| {
                let mut out = Vec::new();
                c10k_proto::resp::encode_command(&[b"SUBSCRIBE", c.as_bytes()], &mut out);
                out
            })
            .collect();
        Plan {
            channels,
            subscribe,
            size: size.max(STAMP_LEN),
            subscribers,
            publishers,
        }
    }

    /// The channel of subscriber `i`.
    pub fn channel_of_subscriber(&self, i: usize) -> u32 {
        (i % self.channels.len()) as u32
    }

    /// The channel of publisher `p`'s `m`-th message.
    pub fn channel_of_message(&self, p: u32, m: u64) -> u32 {
        ((m + u64::from(p)) % self.channels.len() as u64) as u32
    }

    /// Subscribers of channel `c` (subscriber `i` takes channel `i % channels`).
    pub fn subscribers_of(&self, c: usize) -> usize {
        let n = self.channels.len();
        self.subscribers / n + usize::from(c < self.subscribers % n)
    }

    /// Appends `SUBSCRIBE` for channel `c`.
    pub fn write_subscribe(&self, c: u32, out: &mut Vec<u8>) {
        if let Some(cmd) = self.subscribe.get(c as usize) {
            out.extend_from_slice(cmd);
        }
    }

    /// Appends `PUBLISH channel payload`, the payload starting with `stamp`.
    pub fn write_publish(&self, stamp: &Stamp, out: &mut Vec<u8>) {
        let name = self.channels[stamp.channel as usize % self.channels.len()].as_bytes();
        out.reserve(self.size + name.len() + 40);
        out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n$");
        out.extend_from_slice(name.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name);
        out.extend_from_slice(b"\r\n$");
        out.extend_from_slice(self.size.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        stamp.write(out);
        out.resize(out.len() + self.size - STAMP_LEN, b'x');
        out.extend_from_slice(b"\r\n");
    }
}

/// A frame a subscriber receives, as pub/sub sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push<'a> {
    /// `subscribe` confirmation: the channel and the connection's subscription count.
    Subscribed {
        /// The channel.
        channel: &'a [u8],
    },
    /// `message` (or `pmessage`): the channel and the payload.
    Message {
        /// The channel.
        channel: &'a [u8],
        /// The payload.
        payload: &'a [u8],
    },
    /// `-ERR ...`.
    Error(&'a [u8]),
    /// Anything else (described).
    Other(&'static str),
}

/// What a frame means to a subscriber.
pub fn classify<'a>(f: &Frame<'a>) -> Push<'a> {
    let bulk = |k| match f.item(k) {
        Some(Item::Bulk(Some(b))) => Some(b),
        _ => None,
    };
    match f.head {
        Item::Error(e) => Push::Error(e),
        Item::Array(Some(3)) => match (bulk(0), bulk(1)) {
            (Some(b"message"), Some(channel)) => match bulk(2) {
                Some(payload) => Push::Message { channel, payload },
                None => Push::Other("message without a bulk payload"),
            },
            (Some(b"subscribe"), Some(channel)) => Push::Subscribed { channel },
            _ => Push::Other("an array that is not a message or a subscribe confirmation"),
        },
        Item::Array(Some(4)) => match (bulk(0), bulk(2), bulk(3)) {
            (Some(b"pmessage"), Some(channel), Some(payload)) => Push::Message { channel, payload },
            _ => Push::Other("a 4-element array that is not a pmessage"),
        },
        _ => Push::Other("a frame that is not a pub/sub push"),
    }
}

/// How a received sequence number relates to those seen before from its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one.
    InOrder,
    /// Beyond the next: the ones between are missing (for now).
    Ahead,
    /// One that was missing: it came late.
    Late,
    /// Already received.
    Duplicate,
}

/// One publisher's sequence as one subscriber receives it.
#[derive(Debug, Clone, Default)]
pub struct SeqTrack {
    next: u64,
    gaps: Vec<Range<u64>>,
}

impl SeqTrack {
    /// Notes `seq`.
    pub fn see(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            if self.gaps.len() == MAX_GAPS {
                self.gaps.remove(0);
            }
            self.gaps.push(self.next..seq);
            self.next = seq + 1;
            return Seen::Ahead;
        }
        let Some(k) = self.gaps.iter().position(|g| g.contains(&seq)) else {
            return Seen::Duplicate;
        };
        let g = self.gaps[k].clone();
        match (seq == g.start, seq + 1 == g.end) {
            (true, true) => {
                self.gaps.remove(k);
            }
            (true, false) => self.gaps[k].start += 1,
            (false, true) => self.gaps[k].end -= 1,
            (false, false) => {
                self.gaps[k].end = seq;
                self.gaps.insert(k + 1, seq + 1..g.end);
            }
        }
        Seen::Late
    }
}

/// What one subscriber received.
#[derive(Debug, Clone, Default)]
pub struct SubscriberTally {
    /// Its channel.
    pub channel: u32,
    /// It was subscribed when publishing began (only those expect anything).
    pub counted: bool,
    /// The server closed or reset it after publishing began.
    pub disconnected: bool,
    /// Distinct messages received.
    pub distinct: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages that came after a later one from the same publisher.
    pub out_of_order: u64,
    per_publisher: Vec<SeqTrack>,
}

impl SubscriberTally {
    /// A subscriber of `channel` with `publishers` publishers to follow.
    pub fn new(channel: u32, publishers: usize) -> Self {
        SubscriberTally {
            channel,
            per_publisher: vec![SeqTrack::default(); publishers],
            ..Self::default()
        }
    }

    /// Notes a message; `Err` if its stamp cannot be from this run.
    pub fn receive(&mut self, stamp: &Stamp) -> Result<Seen, String> {
        if stamp.channel != self.channel {
            return Err(format!(
                "a message stamped for channel {} on a subscriber of channel {}",
                stamp.channel, self.channel
            ));
        }
        let Some(track) = self.per_publisher.get_mut(stamp.publisher as usize) else {
            return Err(format!(
                "a message from unknown publisher {}",
                stamp.publisher
            ));
        };
        let seen = track.see(stamp.seq);
        match seen {
            Seen::InOrder | Seen::Ahead => self.distinct += 1,
            Seen::Late => {
                self.distinct += 1;
                self.out_of_order += 1;
            }
            Seen::Duplicate => self.duplicates += 1,
        }
        Ok(seen)
    }
}

/// The run's delivery figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages published (PUBLISH answered).
    pub published: u64,
    /// Subscribers subscribed when publishing began.
    pub counted_subscribers: u64,
    /// Deliveries expected: published to a channel x its counted subscribers.
    pub expected: u64,
    /// Distinct messages received, by every subscriber.
    pub delivered: u64,
    /// Expected but not received by subscribers still connected at the end.
    pub lost: u64,
    /// Subscribers the server disconnected after publishing began.
    pub disconnected: u64,
    /// Expected but not received by those (dropped with the connection, or published
    /// after it closed).
    pub undelivered_to_disconnected: u64,
    /// Received beyond what was expected (messages whose PUBLISH got no answer).
    pub unexpected: u64,
    /// Messages received twice or more.
    pub duplicates: u64,
    /// Messages received after a later one from the same publisher.
    pub out_of_order: u64,
}

/// Adds up the subscribers against `published_per_channel`.
pub fn tally<'a>(
    published_per_channel: &[u64],
    subscribers: impl IntoIterator<Item = &'a SubscriberTally>,
) -> Tally {
    let mut t = Tally {
        published: published_per_channel.iter().sum(),
        ..Tally::default()
    };
    for s in subscribers {
        t.duplicates += s.duplicates;
        t.out_of_order += s.out_of_order;
        t.delivered += s.distinct;
        if !s.counted {
            continue;
        }
        t.counted_subscribers += 1;
        let expected = published_per_channel
            .get(s.channel as usize)
            .copied()
            .unwrap_or(0);
        t.expected += expected;
        let short = expected.saturating_sub(s.distinct);
        t.unexpected += s.distinct.saturating_sub(expected);
        if s.disconnected {
            t.disconnected += 1;
            t.undelivered_to_disconnected += short;
        } else {
            t.lost += short;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp_frame::read_frame;

    #[test]
    fn a_published_message_reads_back() {
        let plan = Plan::new(10, 2, 3, 64);
        let stamp = Stamp {
            sent_ns: 123_456_789,
            seq: 7,
            publisher: 1,
            channel: 2,
        };
        let mut out = Vec::new();
        plan.write_publish(&stamp, &mut out);
        let (f, len) = read_frame(&out).unwrap().unwrap();
        assert_eq!(len, out.len());
        assert_eq!(f.head, Item::Array(Some(3)));
        assert_eq!(f.item(0), Some(Item::Bulk(Some(&b"PUBLISH"[..]))));
        assert_eq!(f.item(1), Some(Item::Bulk(Some(&b"c10k:2"[..]))));
        let Some(Item::Bulk(Some(payload))) = f.item(2) else {
            panic!("no payload")
        };
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(payload), Some(stamp));
        assert_eq!(Stamp::read(&payload[..STAMP_LEN - 1]), None);
        // As the server pushes it back.
        let mut push = b"*3\r\n$7\r\nmessage\r\n$6\r\nc10k:2\r\n$64\r\n".to_vec();
        push.extend_from_slice(payload);
        push.extend_from_slice(b"\r\n");
        let (f, _) = read_frame(&push).unwrap().unwrap();
        assert_eq!(
            classify(&f),
            Push::Message {
                channel: b"c10k:2",
                payload
            }
        );
    }

    #[test]
    fn channels_are_shared_out_evenly() {
        let plan = Plan::new(10, 2, 3, 64);
        assert_eq!(
            (0..3).map(|c| plan.subscribers_of(c)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        let by_sub: Vec<u32> = (0..10).map(|i| plan.channel_of_subscriber(i)).collect();
        for c in 0..3 {
            let n = by_sub.iter().filter(|&&x| x == c as u32).count();
            assert_eq!(n, plan.subscribers_of(c));
        }
        assert_eq!(plan.channel_of_message(0, 0), 0);
        assert_eq!(plan.channel_of_message(1, 0), 1);
        assert_eq!(plan.channel_of_message(1, 2), 0);
        let mut sub = Vec::new();
        plan.write_subscribe(1, &mut sub);
        assert_eq!(sub, b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nc10k:1\r\n");
    }

    #[test]
    fn sequences_tell_missing_late_and_duplicate() {
        let mut t = SeqTrack::default();
        assert_eq!(t.see(0), Seen::InOrder);
        assert_eq!(t.see(1), Seen::InOrder);
        assert_eq!(t.see(5), Seen::Ahead); // 2, 3, 4 missing
        assert_eq!(t.see(3), Seen::Late);
        assert_eq!(t.see(3), Seen::Duplicate);
        assert_eq!(t.see(2), Seen::Late);
        assert_eq!(t.see(4), Seen::Late);
        assert_eq!(t.see(4), Seen::Duplicate);
        assert_eq!(t.see(1), Seen::Duplicate);
        assert_eq!(t.see(6), Seen::InOrder);
        assert!(t.gaps.is_empty());
    }

    #[test]
    fn the_counts_add_up() {
        let stamp = |publisher, seq| Stamp {
            sent_ns: 0,
            seq,
            publisher,
            channel: 0,
        };
        // Channel 0 got 4 messages (2 per publisher), channel 1 got 3.
        let published = [4, 3];
        let mut full = SubscriberTally::new(0, 2);
        full.counted = true;
        for s in [
            stamp(0, 0),
            stamp(1, 0),
            stamp(1, 1),
            stamp(0, 1),
            stamp(0, 1),
        ] {
            full.receive(&s).unwrap();
        }
        assert_eq!((full.distinct, full.duplicates), (4, 1));
        let mut short = SubscriberTally::new(0, 2);
        short.counted = true;
        short.receive(&stamp(0, 1)).unwrap();
        short.receive(&stamp(0, 0)).unwrap();
        assert_eq!(short.out_of_order, 1);
        let mut gone = SubscriberTally::new(1, 2);
        gone.counted = true;
        gone.disconnected = true;
        gone.distinct = 1;
        let never = SubscriberTally::new(1, 2);
        let t = tally(&published, [&full, &short, &gone, &never]);
        assert_eq!(t.published, 7);
        assert_eq!(t.counted_subscribers, 3);
        assert_eq!(t.expected, 4 + 4 + 3);
        assert_eq!(t.delivered, 4 + 2 + 1);
        assert_eq!(t.lost, 2);
        assert_eq!((t.disconnected, t.undelivered_to_disconnected), (1, 2));
        assert_eq!((t.duplicates, t.out_of_order, t.unexpected), (1, 1, 0));
        assert_eq!(
            t.expected,
            t.delivered + t.lost + t.undelivered_to_disconnected - t.unexpected
        );
        assert!(
            full.receive(&Stamp {
                channel: 1,
                ..stamp(0, 2)
            })
            .is_err()
        );
        assert!(full.receive(&stamp(2, 0)).is_err());
    }
}

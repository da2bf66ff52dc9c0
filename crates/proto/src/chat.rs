//! A line chat room, sans-IO: the same session on every strategy (`c10k serve --app
//! chat`), driven by its input and by its [`Mailbox`].
//!
//! The protocol, one line at a time (LF or CRLF, at most [`MAX_LINE`] bytes):
//!
//! - the first line a client sends is its nickname; the client is then welcomed with
//!   `welcome NICK, N other(s) here` and the others are told `* NICK joined`;
//! - every later line goes to every other member as `NICK: line` (not back to its
//!   sender);
//! - when a member leaves (closes, is closed, or is disconnected) the others are told
//!   `* NICK left`;
//! - an empty nickname gets `ERR send a nickname first`, a longer line `ERR line too
//!   long`, and the connection closes.
//!
//! # How it uses the mailbox
//!
//! A [`Room`] is a registry of the members' mailboxes. A line is broadcast by posting
//! one `Arc`'d copy of it to each other member's mailbox; each member's session copies
//! it into its output on its own worker ([`Session::handle_message`]). Posting never
//! waits: a member whose mailbox is full (a client that stopped reading: its driver
//! stops taking messages while its unsent output is over the cap) is
//! [disconnected](Mailbox::disconnect) and leaves the room, as the pub/sub broker
//! does with a slow subscriber; a member found closed is forgotten.
//!
//! The session asks for its mailbox ([`Session::wants_mailbox`]) once it has read a
//! nickname, and consumes nothing more until the mailbox arrives (the driver gives it
//! right after that call). Joining happens in [`Session::attach_mailbox`], under the
//! room's lock: the member is registered, its welcome is posted to its own mailbox (so
//! it comes before any line from the room), and its `joined` line to everyone else.
//! So a member that has been welcomed was announced to everyone who was there, and
//! anyone who joins later counts it and is not told it joined. Each member receives
//! the lines of any other member in the order they were said.
//!
//! The room belongs to the [`ChatApp`]: one per process. With `fork` each connection is
//! its own process, so its own room; with `prefork` a process serves one connection at
//! a time: a member is always alone there (welcomed with `0 other(s) here`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{App, Cx, Mailbox, Message, Peer, PostError, ProtoError, Session};

/// Longest line, and nickname, accepted (without its line ending).
pub const MAX_LINE: usize = 1024;

/// Why a chat connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The first line was empty.
    #[error("empty nickname")]
    NoNickname,
    /// A line longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// The welcome a joining member posts to itself, delivered before any line from the
/// room.
struct Welcome {
    others: usize,
}

/// Everybody in the chat: each member's mailbox, by mailbox id.
#[derive(Default)]
pub struct Room {
    members: Mutex<HashMap<u64, Mailbox>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("members", &self.len())
            .finish()
    }
}

impl Room {
    /// Members now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No member now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Mailbox>> {
        // Every update leaves the map consistent: a poisoned lock is used as it is.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `mailbox`, posts it its welcome, and tells the others `line`. False
    /// if the mailbox was closed already (the member is then not registered).
    fn join(&self, mailbox: Mailbox, line: &[u8]) -> bool {
        let mut slow = Vec::new();
        let joined = {
            let mut members = self.lock();
            let welcome = Welcome {
                others: members.len(),
            };
            if mailbox.post(welcome).is_ok() {
                post_others(&mut members, mailbox.id(), line, &mut slow);
                members.insert(mailbox.id(), mailbox);
                true
            } else {
                false
            }
        };
        disconnect(slow);
        joined
    }

    /// Posts `line` to every member but `from`.
    fn broadcast(&self, from: u64, line: &[u8]) {
        let mut slow = Vec::new();
        post_others(&mut self.lock(), from, line, &mut slow);
        disconnect(slow);
    }

    /// Removes `id` (unless a broadcast already did, finding it full or closed) and
    /// tells the others `line`.
    fn leave(&self, id: u64, line: &[u8]) {
        let mut slow = Vec::new();
        {
            let mut members = self.lock();
            members.remove(&id);
            post_others(&mut members, id, line, &mut slow);
        }
        disconnect(slow);
    }
}

/// Posts one shared copy of `line` to every member but `from`; a full mailbox's
/// member is removed and collected in `slow` (disconnected once the lock is released:
/// a driver may do anything in `disconnect`), a closed one is removed.
fn post_others(
    members: &mut HashMap<u64, Mailbox>,
    from: u64,
    line: &[u8],
    slow: &mut Vec<Mailbox>,
) {
    let line: Arc<[u8]> = Arc::from(line);
    members.retain(|&id, mailbox| {
        if id == from {
            return true;
        }
        match mailbox.post(Arc::clone(&line)) {
            Ok(()) => true,
            Err(PostError::Full(_)) => {
                slow.push(mailbox.clone());
                false
            }
            Err(PostError::Closed(_)) => false,
        }
    });
}

fn disconnect(slow: Vec<Mailbox>) {
    for mailbox in slow {
        mailbox.disconnect();
    }
}

/// Opens [`ChatSession`]s, all in one [`Room`] (clones share it).
#[derive(Debug, Clone, Default)]
pub struct ChatApp {
    room: Arc<Room>,
}

impl ChatApp {
    /// A chat with an empty room.
    pub fn new() -> Self {
        Self::default()
    }

    /// The room.
    pub fn room(&self) -> &Room {
        &self.room
    }
}

impl App for ChatApp {
    type Session = ChatSession;
    fn open(&self, _peer: &Peer) -> ChatSession {
        ChatSession {
            room: Arc::clone(&self.room),
            state: State::Nameless,
            close: false,
            requests: 0,
        }
    }
}

#[derive(Debug)]
enum State {
    /// No nickname yet.
    Nameless,
    /// A nickname, waiting for the mailbox to join with.
    Joining(Box<[u8]>),
    /// In the room as mailbox `id`.
    Joined { id: u64, nick: Box<[u8]> },
    /// Left the room (or never could join): nothing more happens.
    Gone,
}

/// One chat connection; see the module docs.
#[derive(Debug)]
pub struct ChatSession {
    room: Arc<Room>,
    state: State,
    close: bool,
    /// Lines said since [`take_requests`](Session::take_requests).
    requests: u64,
}

impl ChatSession {
    /// Leaves the room, telling the others.
    fn leave(&mut self) {
        if let State::Joined { id, nick } = std::mem::replace(&mut self.state, State::Gone) {
            let mut line = b"* ".to_vec();
            line.extend_from_slice(&nick);
            line.extend_from_slice(b" left\n");
            self.room.leave(id, &line);
        }
        self.state = State::Gone;
    }

    fn fail(&mut self, reply: &[u8], out: &mut Vec<u8>, err: ChatError) -> ProtoError {
        out.extend_from_slice(reply);
        self.close = true;
        self.leave();
        ProtoError::Other(Box::new(err))
    }
}

impl Session for ChatSession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        let mut used = 0;
        while !self.close {
            let rest = &input[used..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE + 1 {
                    return Err(self.fail(b"ERR line too long\n", out, ChatError::LineTooLong));
                }
                break;
            };
            let mut line = &rest[..end];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            if line.len() > MAX_LINE {
                return Err(self.fail(b"ERR line too long\n", out, ChatError::LineTooLong));
            }
            match &self.state {
                State::Nameless if line.is_empty() => {
                    return Err(self.fail(
                        b"ERR send a nickname first\n",
                        out,
                        ChatError::NoNickname,
                    ));
                }
                State::Nameless => {
                    self.state = State::Joining(line.into());
                    // Nothing more until the mailbox has come and the member joined.
                    return Ok(used + end + 1);
                }
                State::Joining(_) => return Ok(used),
                State::Joined { id, nick } => {
                    let mut said = Vec::with_capacity(nick.len() + line.len() + 3);
                    said.extend_from_slice(nick);
                    said.extend_from_slice(b": ");
                    said.extend_from_slice(line);
                    said.push(b'\n');
                    self.room.broadcast(*id, &said);
                    self.requests += 1;
                }
                State::Gone => {}
            }
            used += end + 1;
        }
        Ok(if self.close { input.len() } else { used })
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.close = true;
        self.leave();
    }

    fn wants_close(&self) -> bool {
        self.close
    }

    fn take_requests(&mut self) -> u64 {
        std::mem::take(&mut self.requests)
    }

    fn wants_mailbox(&self) -> bool {
        matches!(self.state, State::Joining(_)) && !self.close
    }

    fn attach_mailbox(&mut self, mailbox: Mailbox) {
        let State::Joining(nick) = std::mem::replace(&mut self.state, State::Gone) else {
            return;
        };
        let mut joined = b"* ".to_vec();
        joined.extend_from_slice(&nick);
        joined.extend_from_slice(b" joined\n");
        let id = mailbox.id();
        if self.room.join(mailbox, &joined) {
            self.state = State::Joined { id, nick };
        } else {
            self.close = true;
        }
    }

    fn handle_message(&mut self, _cx: &Cx, msg: Message, out: &mut Vec<u8>) {
        let msg = match msg.downcast::<Arc<[u8]>>() {
            Ok(line) => return out.extend_from_slice(&line),
            Err(msg) => msg,
        };
        if let (Ok(welcome), State::Joined { nick, .. }) = (msg.downcast::<Welcome>(), &self.state)
        {
            out.extend_from_slice(b"welcome ");
            out.extend_from_slice(nick);
            out.extend_from_slice(format!(", {} other(s) here\n", welcome.others).as_bytes());
        }
    }
}

impl Drop for ChatSession {
    /// A connection closed without an end of stream (reset, disconnected, drained):
    /// the others are told it left all the same.
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// Opens a member, sends its nickname, delivers; returns its id.
    fn join(net: &mut Harness<ChatApp>, nick: &str) -> usize {
        let id = net.open();
        net.send(id, format!("{nick}\n").as_bytes());
        net.deliver();
        id
    }

    #[test]
    fn join_broadcast_and_leave_in_order() {
        let mut net = Harness::new(ChatApp::new(), 16);
        let alice = join(&mut net, "alice");
        assert_eq!(
            text(net.take_output(alice)),
            "welcome alice, 0 other(s) here\n"
        );
        let bob = join(&mut net, "bob");
        assert_eq!(text(net.take_output(bob)), "welcome bob, 1 other(s) here\n");
        assert_eq!(text(net.take_output(alice)), "* bob joined\n");

        net.send(alice, b"hi bob\r\nhow are you?\n");
        net.deliver();
        assert_eq!(
            text(net.take_output(bob)),
            "alice: hi bob\nalice: how are you?\n"
        );
        assert_eq!(text(net.take_output(alice)), "", "a line is not sent back");

        // A nickname and a line in one packet: the line waits for the join.
        let carol = net.open();
        net.send(carol, b"carol\nhello all\npartial");
        assert_eq!(net.pending(carol), b"partial");
        net.deliver();
        assert_eq!(
            text(net.take_output(carol)),
            "welcome carol, 2 other(s) here\n"
        );
        for id in [alice, bob] {
            assert_eq!(
                text(net.take_output(id)),
                "* carol joined\ncarol: hello all\n"
            );
        }
        assert_eq!(net.app().room().len(), 3);

        net.eof(carol);
        net.deliver();
        assert!(!net.is_open(carol));
        for id in [alice, bob] {
            assert_eq!(text(net.take_output(id)), "* carol left\n");
        }
        // A connection that vanishes (no end of stream) leaves too.
        net.close(bob);
        net.deliver();
        assert_eq!(text(net.take_output(alice)), "* bob left\n");
        assert_eq!(net.app().room().len(), 1);
    }

    #[test]
    fn a_bad_nickname_or_a_long_line_closes_with_an_error() {
        let mut net = Harness::new(ChatApp::new(), 16);
        let nobody = net.open();
        net.send(nobody, b"\r\nlater\n");
        assert_eq!(text(net.take_output(nobody)), "ERR send a nickname first\n");
        assert!(!net.is_open(nobody));
        assert_eq!(net.error(nobody), Some("empty nickname"));

        let alice = join(&mut net, "alice");
        let bob = join(&mut net, "bob");
        net.take_output(alice);
        net.take_output(bob);
        // No line end yet, but already too long.
        net.send(bob, &[b'x'; MAX_LINE + 2]);
        assert_eq!(text(net.take_output(bob)), "ERR line too long\n");
        assert!(!net.is_open(bob));
        net.deliver();
        assert_eq!(text(net.take_output(alice)), "* bob left\n");
        // Exactly MAX_LINE, with CRLF, is fine.
        let carol = join(&mut net, "carol");
        net.take_output(alice);
        let mut line = vec![b'y'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        net.send(carol, &line);
        net.deliver();
        let got = net.take_output(alice);
        assert_eq!(got.len(), "carol: ".len() + MAX_LINE + 1);
        assert!(net.is_open(carol));
    }

    #[test]
    fn a_member_whose_mailbox_is_full_is_disconnected_and_the_others_go_on() {
        let mut net = Harness::new(ChatApp::new(), 4);
        let alice = join(&mut net, "alice");
        let slow = join(&mut net, "slow");
        let carol = join(&mut net, "carol");
        for id in [alice, slow, carol] {
            net.take_output(id);
        }
        net.pause(slow, true);
        // Four lines fill the slow member's mailbox; the fifth disconnects it. Carol
        // takes her messages as they come.
        let mut carol_got = Vec::new();
        for i in 0..5 {
            net.send(alice, format!("line {i}\n").as_bytes());
            net.deliver();
            carol_got.extend(net.take_output(carol));
        }
        assert!(!net.is_open(slow));
        assert_eq!(net.app().room().len(), 2);
        let want: String = (0..5).map(|i| format!("alice: line {i}\n")).collect();
        assert_eq!(text(carol_got), format!("{want}* slow left\n"));
        assert_eq!(text(net.take_output(alice)), "* slow left\n");
        assert_eq!(text(net.take_output(slow)), "", "paused: it took nothing");
    }
}

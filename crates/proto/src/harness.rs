//! An in-memory driver: many sessions of one [`App`], their mailboxes delivered in
//! memory, no sockets. Tests and fuzz targets drive sessions that speak to each other
//! (pub/sub, chat) through it, the way a server would:
//!
//! - input is offered as a driver offers it (unconsumed bytes again, with more), and a
//!   session may stop early on a large batch;
//! - after every session call, [`Session::wants_mailbox`] is asked until it says yes;
//!   the mailbox ([`Mailbox::memory`]) is attached right after that call, before the
//!   call's output is made visible;
//! - [`deliver`](Harness::deliver) runs [`Session::handle_message`] for each posted
//!   message, connection by connection, in posting order; a [paused](Harness::pause)
//!   connection takes none (a server does that while the connection's unsent output is
//!   over the cap), so its mailbox fills;
//! - a session that wants to close, or whose mailbox was
//!   [disconnected](Mailbox::disconnect), is dropped and its mailbox closed, as a server
//!   closes the connection; its output so far stays readable.
//!
//! ```
//! use c10k_proto::harness::Harness;
//! use c10k_proto::resp::{RespApp, encode_command};
//!
//! let mut net = Harness::new(RespApp::new(), 16);
//! let (sub, publisher) = (net.open(), net.open());
//! let mut input = Vec::new();
//! encode_command(&[b"SUBSCRIBE", b"news"], &mut input);
//! net.send(sub, &input);
//! input.clear();
//! encode_command(&[b"PUBLISH", b"news", b"hi"], &mut input);
//! net.send(publisher, &input);
//! assert_eq!(net.take_output(publisher), b":1\r\n");
//! net.deliver();
//! assert_eq!(
//!     net.take_output(sub),
//!     &b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"[..]
//! );
//! ```

use crate::mailbox::MemoryInbox;
use crate::{App, Cx, Mailbox, Peer, Session};

/// One connection of a [`Harness`].
struct Conn<S> {
    /// `None` once the connection is closed.
    session: Option<S>,
    mailbox: Option<(Mailbox, MemoryInbox)>,
    pending: Vec<u8>,
    out: Vec<u8>,
    paused: bool,
    error: Option<String>,
}

/// Sessions of one app in memory; see the module docs.
pub struct Harness<A: App> {
    app: A,
    cx: Cx,
    capacity: usize,
    conns: Vec<Conn<A::Session>>,
}

impl<A: App> Harness<A> {
    /// A harness whose mailboxes hold at most `mailbox_capacity` messages, at a fixed
    /// time (November 2023).
    pub fn new(app: A, mailbox_capacity: usize) -> Self {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        Harness {
            app,
            cx: Cx::new(at),
            capacity: mailbox_capacity,
            conns: Vec::new(),
        }
    }

    /// The app.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// Opens a connection; returns its index.
    pub fn open(&mut self) -> usize {
        let session = self.app.open(&Peer::unknown());
        self.conns.push(Conn {
            session: Some(session),
            mailbox: None,
            pending: Vec::new(),
            out: Vec::new(),
            paused: false,
            error: None,
        });
        let id = self.conns.len() - 1;
        self.after_call(id);
        id
    }

    /// Whether connection `id` is still open (not closed, not disconnected).
    pub fn is_open(&self, id: usize) -> bool {
        self.conns[id].session.is_some() && !self.disconnected(id)
    }

    /// The session of connection `id`, while it is open.
    pub fn session(&self, id: usize) -> Option<&A::Session> {
        self.conns[id].session.as_ref()
    }

    /// The protocol error that closed connection `id`, if one did.
    pub fn error(&self, id: usize) -> Option<&str> {
        self.conns[id].error.as_deref()
    }

    /// Bytes received on `id` and not consumed yet.
    pub fn pending(&self, id: usize) -> &[u8] {
        &self.conns[id].pending
    }

    /// Takes what connection `id` has written so far.
    pub fn take_output(&mut self, id: usize) -> Vec<u8> {
        std::mem::take(&mut self.conns[id].out)
    }

    /// Stops (`true`) or resumes taking messages from `id`'s mailbox.
    pub fn pause(&mut self, id: usize, paused: bool) {
        self.conns[id].paused = paused;
    }

    /// Bytes arrive on connection `id`. Ignored once it is closed.
    pub fn send(&mut self, id: usize, bytes: &[u8]) {
        self.reap(id);
        let (cx, capacity) = (self.cx.clone(), self.capacity);
        let conn = &mut self.conns[id];
        let Some(session) = conn.session.as_mut() else {
            return;
        };
        if session.wants_close() {
            return;
        }
        conn.pending.extend_from_slice(bytes);
        loop {
            let mut out = Vec::new();
            let result = session.handle_input(&cx, &conn.pending, &mut out);
            // The mailbox is attached before the call's output is written.
            attach_if_wanted(&mut conn.mailbox, session, capacity);
            conn.out.extend_from_slice(&out);
            match result {
                Ok(used) => {
                    assert!(used <= conn.pending.len(), "consumed more than offered");
                    conn.pending.drain(..used);
                    if used == 0 || conn.pending.is_empty() || session.wants_close() {
                        break;
                    }
                }
                Err(err) => {
                    assert!(session.wants_close(), "an error must ask to close");
                    conn.error = Some(err.to_string());
                    break;
                }
            }
        }
        self.after_call(id);
    }

    /// The peer of `id` closed its write side.
    pub fn eof(&mut self, id: usize) {
        self.reap(id);
        let cx = self.cx.clone();
        let conn = &mut self.conns[id];
        if let Some(session) = conn.session.as_mut() {
            session.handle_eof(&cx, &mut conn.out);
            assert!(session.wants_close(), "EOF must ask to close");
        }
        self.after_call(id);
    }

    /// Closes connection `id` at once (the peer vanished): the session is dropped.
    pub fn close(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        conn.session = None;
        if let Some((_, inbox)) = &conn.mailbox {
            inbox.close();
        }
    }

    /// Delivers every posted message to every connection that is not paused, until
    /// none is left; returns how many were delivered.
    pub fn deliver(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            let mut round = 0;
            for id in 0..self.conns.len() {
                round += self.deliver_to(id);
            }
            if round == 0 {
                return delivered;
            }
            delivered += round;
        }
    }

    /// Delivers the messages posted to `id` (unless it is paused); returns how many.
    pub fn deliver_to(&mut self, id: usize) -> usize {
        self.reap(id);
        let cx = self.cx.clone();
        let conn = &mut self.conns[id];
        if conn.paused {
            return 0;
        }
        let (Some(session), Some((_, inbox))) = (conn.session.as_mut(), &conn.mailbox) else {
            return 0;
        };
        let messages = inbox.take_all();
        let n = messages.len();
        for message in messages {
            if session.wants_close() {
                break;
            }
            session.handle_message(&cx, message, &mut conn.out);
        }
        self.after_call(id);
        n
    }

    /// After a call to session `id`: attach a mailbox if it wants one; close the
    /// connection if the session wants that.
    fn after_call(&mut self, id: usize) {
        let capacity = self.capacity;
        let conn = &mut self.conns[id];
        if let Some(session) = conn.session.as_mut() {
            attach_if_wanted(&mut conn.mailbox, session, capacity);
            if session.wants_close() {
                self.close(id);
            }
        }
        self.reap(id);
    }

    /// Whether `id`'s mailbox was disconnected (by a poster that found it full).
    fn disconnected(&self, id: usize) -> bool {
        let conn = &self.conns[id];
        conn.mailbox.as_ref().is_some_and(|(m, _)| m.is_closed())
    }

    /// Closes `id` if its mailbox was disconnected: a call to one session (a
    /// `PUBLISH`) may disconnect another, which its own driver then closes.
    fn reap(&mut self, id: usize) {
        if self.conns[id].session.is_some() && self.disconnected(id) {
            self.close(id);
        }
    }
}

fn attach_if_wanted<S: Session>(
    slot: &mut Option<(Mailbox, MemoryInbox)>,
    session: &mut S,
    capacity: usize,
) {
    if slot.is_none() && session.wants_mailbox() {
        let (mailbox, inbox) = Mailbox::memory(capacity);
        session.attach_mailbox(mailbox.clone());
        *slot = Some((mailbox, inbox));
    }
}

//! The gate every connection passes before the app sees it: the PROXY protocol header
//! (`--proxy-protocol`) and the per-address limit (`--max-conns-per-ip`).
//!
//! It is an [`App`] wrapped around the real one, so every strategy gets it without a
//! line of its own: [`GateApp::open`] returns a [`GateSession`] that first consumes
//! the header (reporting "consumed nothing" until it is complete, so the driver keeps
//! the bytes, and its request clock runs: a slow header is closed by the header
//! timeout like a slow request), then checks the client's address against the limit,
//! and only then opens the inner app's session with the client's address, handing it
//! the bytes that followed the header.
//!
//! Without a header the address is the socket's peer and the limit is checked at
//! open; a refused connection's session wants to close from the start, and the
//! drivers close such a connection at once, before reading from it.
//!
//! A missing or malformed header, a header that stays incomplete past the header
//! timeout and a per-address refusal all close the connection without a reply; each
//! is counted in [`GateStats`] and logged at most once a second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use c10k_proto::proxy::{Command, Decoded, ProxyProtocol, decode};
use c10k_proto::{App, Cx, Peer, ProtoError, Session};

use crate::per_ip::{IpSlot, PerIpLimit};
use crate::ratelog::RateLog;

/// Process-wide counters of the gate (all workers together).
#[derive(Debug, Default)]
pub struct GateStats {
    /// PROXY headers accepted with the `PROXY` command (v1, or v2 `PROXY`).
    pub proxy_headers: AtomicU64,
    /// v2 `LOCAL` headers (the proxy's health checks): served with the socket's own
    /// addresses.
    pub proxy_local: AtomicU64,
    /// Connections closed because the header was missing, malformed, too long, of a
    /// version not accepted, or cut short by EOF.
    pub proxy_errors: AtomicU64,
    /// Connections closed because the header stayed incomplete past the header timeout.
    pub proxy_timeouts: AtomicU64,
    /// Connections refused by `--max-conns-per-ip`.
    pub refused_per_ip: AtomicU64,
}

impl GateStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// Logs that could fire on every connection, each at most once a second.
#[derive(Debug)]
struct Logs {
    errors: RateLog,
    timeouts: RateLog,
    refused: RateLog,
}

#[derive(Debug)]
struct Gate<A> {
    app: A,
    proxy: ProxyProtocol,
    per_ip: Option<Arc<PerIpLimit>>,
    log_connections: bool,
    stats: Arc<GateStats>,
    logs: Mutex<Logs>,
}

/// An [`App`] with the gate in front of it.
#[derive(Debug)]
pub struct GateApp<A> {
    gate: Arc<Gate<A>>,
}

impl<A: App> GateApp<A> {
    /// Wrap `app`: expect a header of the `proxy` versions (none with
    /// [`ProxyProtocol::Off`]), allow at most `max_per_ip` connections per client
    /// address (`None`: no limit), and log each connection's client address at info
    /// level when `log_connections`.
    pub fn new(
        app: A,
        proxy: ProxyProtocol,
        max_per_ip: Option<usize>,
        log_connections: bool,
    ) -> Self {
        let every = Duration::from_secs(1);
        GateApp {
            gate: Arc::new(Gate {
                app,
                proxy,
                per_ip: max_per_ip.map(PerIpLimit::new),
                log_connections,
                stats: Arc::default(),
                logs: Mutex::new(Logs {
                    errors: RateLog::new(every),
                    timeouts: RateLog::new(every),
                    refused: RateLog::new(every),
                }),
            }),
        }
    }

    /// The gate's counters.
    pub fn stats(&self) -> &Arc<GateStats> {
        &self.gate.stats
    }
}

/// Log the gate's counters once (at shutdown), when the gate had anything to do.
pub(crate) fn log_summary(proxy: ProxyProtocol, max_conns_per_ip: Option<usize>, s: &GateStats) {
    if proxy != ProxyProtocol::Off {
        tracing::info!(
            "PROXY protocol {}: {} header(s) accepted, {} LOCAL, {} bad, {} timed out",
            proxy,
            GateStats::get(&s.proxy_headers),
            GateStats::get(&s.proxy_local),
            GateStats::get(&s.proxy_errors),
            GateStats::get(&s.proxy_timeouts),
        );
    }
    if let Some(limit) = max_conns_per_ip {
        tracing::info!(
            "max-conns-per-ip {limit}: refused {} connection(s)",
            GateStats::get(&s.refused_per_ip)
        );
    }
}

impl<A: App> App for GateApp<A> {
    type Session = GateSession<A::Session>;

    fn open(&self, peer: &Peer) -> GateSession<A::Session> {
        if self.gate.proxy == ProxyProtocol::Off {
            return GateSession::opened(self.gate.admit(*peer, None));
        }
        let awaiting: Box<dyn HeaderStep<A::Session>> = Box::new(Awaiting {
            opener: Arc::clone(&self.gate),
            socket: *peer,
            draining: false,
            seen: false,
        });
        GateSession {
            inner: None,
            extra: Some(Box::new(Extra::Awaiting(awaiting))),
        }
    }
}

impl<A: App> Gate<A> {
    /// Check the limit for `peer` and open the inner session (`None`: refused).
    fn admit(&self, peer: Peer, via: Option<SocketAddr>) -> Option<(A::Session, Option<IpSlot>)> {
        let slot = match (&self.per_ip, peer.addr) {
            (Some(limit), Some(addr)) => match limit.acquire(addr.ip()) {
                Some(slot) => Some(slot),
                None => {
                    GateStats::add(&self.stats.refused_per_ip);
                    let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(n) = logs.refused.hit(Instant::now()) {
                        tracing::warn!(
                            "refused {n} connection(s) (the last from {}): --max-conns-per-ip {} reached",
                            addr.ip(),
                            limit.max()
                        );
                    }
                    return None;
                }
            },
            _ => None,
        };
        if self.log_connections {
            match (peer.addr, via) {
                (Some(client), Some(proxy)) => {
                    tracing::info!("connection from {client} (via proxy {proxy})")
                }
                (Some(client), None) => tracing::info!("connection from {client}"),
                (None, _) => tracing::info!("connection from an unknown address"),
            }
        }
        Some((self.app.open(&peer), slot))
    }

    fn header_failed(&self, what: &dyn std::fmt::Display, peer: &Peer, timeout: bool) {
        let counter = if timeout {
            &self.stats.proxy_timeouts
        } else {
            &self.stats.proxy_errors
        };
        GateStats::add(counter);
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = if timeout {
            &mut logs.timeouts
        } else {
            &mut logs.errors
        };
        if let Some(n) = rate.hit(Instant::now()) {
            let from = peer
                .addr
                .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            tracing::warn!("closed {n} connection(s): {what} (the last from {from})");
        }
    }
}

/// What a gated connection holds besides the inner session; boxed, so that a
/// connection with neither a header to wait for nor a per-address slot pays one
/// pointer for the gate.
enum Extra<S> {
    /// Waiting for the PROXY header (the inner session is not open yet).
    Awaiting(Box<dyn HeaderStep<S>>),
    /// The client's share of its address's count (`--max-conns-per-ip`).
    Slot(#[allow(dead_code)] IpSlot),
}

/// Waiting for the PROXY header.
struct Awaiting<A> {
    opener: Arc<Gate<A>>,
    /// The socket's own endpoints (the proxy's, or the client's without a proxy).
    socket: Peer,
    /// The server started draining while the header was arriving.
    draining: bool,
    /// Some header bytes arrived.
    seen: bool,
}

/// A session behind the gate (see the module documentation).
///
/// `inner` is the app's session once open; without it the connection is either
/// waiting for its header (`extra` holds the header step) or refused/failed (wants
/// to close).
pub struct GateSession<S> {
    inner: Option<S>,
    extra: Option<Box<Extra<S>>>,
}

/// The header step, with the app's type erased so that [`GateSession`] depends on the
/// session type only.
trait HeaderStep<S>: Send {
    /// `Ok(Some((admitted, len)))` once the header (`len` bytes) is complete;
    /// `admitted` is `None` when the client was refused.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        input: &[u8],
    ) -> Result<Option<(Option<(S, Option<IpSlot>)>, usize)>, ProtoError>;
    fn drain(&mut self);
    fn draining(&self) -> bool;
    fn timed_out(&self);
    fn eof(&self);
}

impl<A: App> HeaderStep<A::Session> for Awaiting<A> {
    fn step(
        &mut self,
        input: &[u8],
    ) -> Result<Option<(Option<(A::Session, Option<IpSlot>)>, usize)>, ProtoError> {
        self.seen |= !input.is_empty();
        let gate = &self.opener;
        match decode(input, gate.proxy) {
            Ok(Decoded::Incomplete) => Ok(None),
            Ok(Decoded::Complete { header, len }) => {
                let peer = match (header.command, header.source) {
                    (Command::Proxy, Some(source)) => {
                        GateStats::add(&gate.stats.proxy_headers);
                        Peer {
                            addr: Some(source),
                            local: header.destination.or(self.socket.local),
                        }
                    }
                    (Command::Proxy, None) => {
                        GateStats::add(&gate.stats.proxy_headers);
                        self.socket
                    }
                    (Command::Local, _) => {
                        GateStats::add(&gate.stats.proxy_local);
                        self.socket
                    }
                };
                let via = (peer.addr != self.socket.addr)
                    .then_some(self.socket.addr)
                    .flatten();
                Ok(Some((gate.admit(peer, via), len)))
            }
            Err(e) => {
                gate.header_failed(&e, &self.socket, false);
                Err(ProtoError::Other(Box::new(e)))
            }
        }
    }

    fn drain(&mut self) {
        self.draining = true;
    }

    fn draining(&self) -> bool {
        self.draining
    }

    fn timed_out(&self) {
        self.opener.header_failed(
            &"PROXY protocol header incomplete at the header timeout",
            &self.socket,
            true,
        );
    }

    fn eof(&self) {
        if self.seen {
            self.opener.header_failed(
                &"PROXY protocol header cut short by the peer's EOF",
                &self.socket,
                false,
            );
        }
    }
}

impl<S> GateSession<S> {
    fn opened(admitted: Option<(S, Option<IpSlot>)>) -> Self {
        match admitted {
            Some((session, slot)) => GateSession {
                inner: Some(session),
                extra: slot.map(|s| Box::new(Extra::Slot(s))),
            },
            None => GateSession {
                inner: None,
                extra: None,
            },
        }
    }

    fn awaiting(&mut self) -> Option<&mut Box<dyn HeaderStep<S>>> {
        match self.extra.as_deref_mut() {
            Some(Extra::Awaiting(a)) => Some(a),
            _ => None,
        }
    }

    /// Stop waiting for the header; returns the header step if it was waiting.
    fn take_awaiting(&mut self) -> Option<Box<dyn HeaderStep<S>>> {
        match self.extra.take().map(|b| *b) {
            Some(Extra::Awaiting(a)) => Some(a),
            other => {
                self.extra = other.map(Box::new);
                None
            }
        }
    }
}

impl<S: Session> Session for GateSession<S> {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        if let Some(session) = &mut self.inner {
            return session.handle_input(cx, input, out);
        }
        let Some(awaiting) = self.awaiting() else {
            return Ok(input.len()); // refused or failed: closing
        };
        let (admitted, len) = match awaiting.step(input) {
            Ok(Some(done)) => done,
            Ok(None) => return Ok(0),
            Err(e) => {
                // Neither waiting nor open: the session wants to close.
                self.extra = None;
                return Err(e);
            }
        };
        let draining = awaiting.draining();
        *self = GateSession::opened(admitted);
        let Some(session) = &mut self.inner else {
            return Ok(input.len());
        };
        // The bytes after the header belong to the app; a drain that began while the
        // header arrived applies once they are offered.
        let used = session.handle_input(cx, &input[len..], out);
        if draining {
            session.start_drain();
        }
        Ok(len + used?)
    }

    fn handle_eof(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        if let Some(session) = &mut self.inner {
            session.handle_eof(cx, out);
        } else if let Some(awaiting) = self.take_awaiting() {
            awaiting.eof();
        }
    }

    fn wants_close(&self) -> bool {
        match (&self.inner, self.extra.as_deref()) {
            (Some(session), _) => session.wants_close(),
            (None, Some(Extra::Awaiting(_))) => false,
            (None, _) => true,
        }
    }

    fn mid_request(&self) -> bool {
        // While the header arrives, the driver holds its bytes (unconsumed input),
        // which already counts as a request in progress.
        self.inner.as_ref().is_some_and(|s| s.mid_request())
    }

    fn start_drain(&mut self) {
        if let Some(session) = &mut self.inner {
            session.start_drain();
        } else if let Some(awaiting) = self.awaiting() {
            awaiting.drain();
        }
    }

    fn handle_timeout(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        if let Some(session) = &mut self.inner {
            session.handle_timeout(cx, out);
        } else if let Some(awaiting) = self.take_awaiting() {
            awaiting.timed_out();
        }
    }

    fn take_requests(&mut self) -> u64 {
        self.inner.as_mut().map_or(0, |s| s.take_requests())
    }

    fn wants_mailbox(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.wants_mailbox())
    }

    fn attach_mailbox(&mut self, mailbox: c10k_proto::Mailbox) {
        if let Some(session) = &mut self.inner {
            session.attach_mailbox(mailbox);
        }
    }

    fn handle_message(&mut self, cx: &Cx, msg: c10k_proto::Message, out: &mut Vec<u8>) {
        if let Some(session) = &mut self.inner {
            session.handle_message(cx, msg, out);
        }
    }

    fn poll_timer(&self) -> Option<std::time::Instant> {
        self.inner.as_ref().and_then(|s| s.poll_timer())
    }

    fn handle_timer(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        if let Some(session) = &mut self.inner {
            session.handle_timer(cx, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c10k_proto::proxy::V2_SIGNATURE;

    /// Answers every input with the peer it was opened for, and records drains.
    struct PeerApp;
    struct PeerSession {
        peer: Peer,
        draining: bool,
    }
    impl App for PeerApp {
        type Session = PeerSession;
        fn open(&self, peer: &Peer) -> PeerSession {
            PeerSession {
                peer: *peer,
                draining: false,
            }
        }
    }
    impl Session for PeerSession {
        fn handle_input(
            &mut self,
            _cx: &Cx,
            input: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<usize, ProtoError> {
            if !input.is_empty() {
                out.extend_from_slice(
                    format!("{:?}/{:?}", self.peer.addr, self.peer.local).as_bytes(),
                );
            }
            Ok(input.len())
        }
        fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}
        fn wants_close(&self) -> bool {
            self.draining
        }
        fn start_drain(&mut self) {
            self.draining = true;
        }
    }

    fn socket_peer(ip: &str) -> Peer {
        Peer {
            addr: Some(format!("{ip}:40000").parse().unwrap()),
            local: Some("10.0.0.9:7000".parse().unwrap()),
        }
    }

    fn v2_inet(command: u8, src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 9]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&7000u16.to_be_bytes());
        h
    }

    fn cx() -> Cx {
        Cx::new(std::time::UNIX_EPOCH)
    }

    #[test]
    fn the_app_sees_the_header_client_at_every_byte_boundary() {
        let app = GateApp::new(PeerApp, ProxyProtocol::Any, None, false);
        let mut input = v2_inet(1, [192, 0, 2, 1], 5555);
        let header_len = input.len();
        input.extend_from_slice(b"hi");
        for cut in 0..header_len {
            let mut s = app.open(&socket_peer("127.0.0.1"));
            let mut out = Vec::new();
            assert_eq!(s.handle_input(&cx(), &input[..cut], &mut out).unwrap(), 0);
            assert!(!s.wants_close() && out.is_empty());
            // The driver offers the bytes again with the rest appended.
            assert_eq!(
                s.handle_input(&cx(), &input, &mut out).unwrap(),
                input.len()
            );
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "Some(192.0.2.1:5555)/Some(10.0.0.9:7000)"
            );
        }
        assert_eq!(
            GateStats::get(&app.stats().proxy_headers),
            header_len as u64
        );
    }

    #[test]
    fn local_and_unknown_use_the_socket_addresses() {
        let app = GateApp::new(PeerApp, ProxyProtocol::Any, None, false);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        for header in [local, b"PROXY UNKNOWN\r\n".to_vec()] {
            let mut s = app.open(&socket_peer("127.0.0.3"));
            let mut out = Vec::new();
            let mut input = header.clone();
            input.push(b'x');
            assert_eq!(
                s.handle_input(&cx(), &input, &mut out).unwrap(),
                input.len()
            );
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "Some(127.0.0.3:40000)/Some(10.0.0.9:7000)"
            );
        }
        assert_eq!(GateStats::get(&app.stats().proxy_local), 1);
        assert_eq!(GateStats::get(&app.stats().proxy_headers), 1);
    }

    #[test]
    fn a_missing_header_closes_without_a_reply_and_is_counted() {
        let app = GateApp::new(PeerApp, ProxyProtocol::V2, None, false);
        let mut s = app.open(&socket_peer("127.0.0.1"));
        let mut out = Vec::new();
        assert!(
            s.handle_input(&cx(), b"GET / HTTP/1.1\r\n", &mut out)
                .is_err()
        );
        assert!(s.wants_close() && out.is_empty());
        assert_eq!(GateStats::get(&app.stats().proxy_errors), 1);
    }

    #[test]
    fn a_slow_header_is_closed_by_the_timeout_and_counted() {
        let app = GateApp::new(PeerApp, ProxyProtocol::V1, None, false);
        let mut s = app.open(&socket_peer("127.0.0.1"));
        let mut out = Vec::new();
        assert_eq!(
            s.handle_input(&cx(), b"PROXY TCP4 1.2", &mut out).unwrap(),
            0
        );
        s.handle_timeout(&cx(), &mut out);
        assert!(s.wants_close() && out.is_empty());
        assert_eq!(GateStats::get(&app.stats().proxy_timeouts), 1);
        // EOF in the middle of a header is an error too.
        let mut s = app.open(&socket_peer("127.0.0.1"));
        assert_eq!(s.handle_input(&cx(), b"PROXY ", &mut out).unwrap(), 0);
        s.handle_eof(&cx(), &mut out);
        assert!(s.wants_close());
        assert_eq!(GateStats::get(&app.stats().proxy_errors), 1);
    }

    #[test]
    fn a_drain_during_the_header_applies_after_the_first_bytes() {
        let app = GateApp::new(PeerApp, ProxyProtocol::V1, None, false);
        let mut s = app.open(&socket_peer("127.0.0.1"));
        let mut out = Vec::new();
        let input = b"PROXY TCP4 192.0.2.1 10.0.0.9 1 2\r\nreq";
        assert_eq!(s.handle_input(&cx(), &input[..10], &mut out).unwrap(), 0);
        s.start_drain();
        assert!(!s.wants_close());
        assert_eq!(s.handle_input(&cx(), input, &mut out).unwrap(), input.len());
        assert!(!out.is_empty(), "the request after the header was served");
        assert!(s.wants_close(), "then the drain closes it");
    }

    #[test]
    fn per_ip_limit_without_a_header_refuses_at_open() {
        let app = GateApp::new(PeerApp, ProxyProtocol::Off, Some(2), false);
        let a1 = app.open(&socket_peer("127.0.0.1"));
        let a2 = app.open(&socket_peer("127.0.0.1"));
        let a3 = app.open(&socket_peer("127.0.0.1"));
        let b1 = app.open(&socket_peer("127.0.0.2"));
        assert!(!a1.wants_close() && !a2.wants_close() && !b1.wants_close());
        assert!(a3.wants_close());
        drop(a1);
        assert!(!app.open(&socket_peer("127.0.0.1")).wants_close());
        assert_eq!(GateStats::get(&app.stats().refused_per_ip), 1);
        // Unknown addresses are not limited.
        let _u: Vec<_> = (0..5).map(|_| app.open(&Peer::unknown())).collect();
        assert!(_u.iter().all(|s| !s.wants_close()));
    }

    #[test]
    fn per_ip_limit_with_a_header_counts_the_header_client() {
        let app = GateApp::new(PeerApp, ProxyProtocol::V2, Some(1), false);
        let mut out = Vec::new();
        let mut first = app.open(&socket_peer("127.0.0.1"));
        let h = v2_inet(1, [192, 0, 2, 1], 1);
        assert_eq!(first.handle_input(&cx(), &h, &mut out).unwrap(), h.len());
        assert!(!first.wants_close());
        // Same proxy, same client: refused; same proxy, another client: served.
        let mut second = app.open(&socket_peer("127.0.0.1"));
        assert_eq!(second.handle_input(&cx(), &h, &mut out).unwrap(), h.len());
        assert!(second.wants_close());
        let mut other = app.open(&socket_peer("127.0.0.1"));
        let h2 = v2_inet(1, [192, 0, 2, 2], 1);
        other.handle_input(&cx(), &h2, &mut out).unwrap();
        assert!(!other.wants_close());
        assert_eq!(GateStats::get(&app.stats().refused_per_ip), 1);
    }

    #[test]
    fn the_gate_costs_an_open_connection_at_most_two_words() {
        use std::mem::size_of;
        assert!(
            size_of::<GateSession<PeerSession>>()
                <= size_of::<PeerSession>() + 2 * size_of::<usize>()
        );
    }
}

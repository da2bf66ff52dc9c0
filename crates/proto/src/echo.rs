//! The echo protocol: every byte comes back, in order.

use crate::{App, Cx, Peer, ProtoError, Session};

/// Opens [`EchoSession`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoApp;

/// An echo connection: no state beyond whether the peer has finished.
#[derive(Debug, Default)]
pub struct EchoSession {
    eof: bool,
}

impl App for EchoApp {
    type Session = EchoSession;
    fn open(&self, _peer: &Peer) -> EchoSession {
        EchoSession::default()
    }
}

impl Session for EchoSession {
    fn handle_input(
        &mut self,
        _cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        out.extend_from_slice(input);
        Ok(input.len())
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.eof = true;
    }

    fn wants_close(&self) -> bool {
        self.eof
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_split_at_every_boundary() {
        let msg: Vec<u8> = (0..=255u8).collect();
        let cx = Cx::new(std::time::UNIX_EPOCH);
        for cut in 0..=msg.len() {
            let mut s = EchoApp.open(&Peer::unknown());
            let mut out = Vec::new();
            assert_eq!(s.handle_input(&cx, &msg[..cut], &mut out).unwrap(), cut);
            assert_eq!(
                s.handle_input(&cx, &msg[cut..], &mut out).unwrap(),
                msg.len() - cut
            );
            assert_eq!(out, msg);
            assert!(!s.wants_close());
            s.handle_eof(&cx, &mut out);
            assert!(s.wants_close());
        }
    }
}

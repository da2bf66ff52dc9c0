// Shared by the session targets: feed the input to a session the way a driver does,
// in pieces whose sizes come from the input itself, re-offering unconsumed bytes,
// and check the driver's side of the contract.

use c10k_proto::{Cx, Session};

pub fn drive<S: Session>(mut session: S, data: &[u8]) {
    let cx = Cx::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
    // First byte picks the piece size (1..=256), the rest is the stream.
    let Some((&step, stream)) = data.split_first() else { return };
    let step = usize::from(step) + 1;
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in stream.chunks(step) {
        if session.wants_close() {
            return;
        }
        pending.extend_from_slice(piece);
        match session.handle_input(&cx, &pending, &mut out) {
            Ok(used) => {
                assert!(used <= pending.len(), "consumed more than offered");
                pending.drain(..used);
            }
            Err(_) => {
                assert!(session.wants_close(), "an error must ask for close");
                assert!(!out.is_empty(), "an error must leave its reply in out");
                return;
            }
        }
        out.clear();
    }
    session.handle_eof(&cx, &mut out);
    assert!(session.wants_close(), "EOF must ask for close");
}

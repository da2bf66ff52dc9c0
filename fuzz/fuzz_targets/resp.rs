//! RESP2 session: no panic, no over-consumption, protocol errors reply and close,
//! whatever the bytes and however they are split. Then the same input as operations
//! on several sessions speaking pub/sub to each other through in-memory mailboxes
//! (see pubsub.rs).
#![no_main]
use c10k_proto::resp::RespApp;
use c10k_proto::{App, Peer};
use libfuzzer_sys::fuzz_target;

mod drive;
mod pubsub;

fuzz_target!(|data: &[u8]| {
    let app = RespApp::new();
    drive::drive(app.open(&Peer::unknown()), data);
    pubsub::run(data);
});

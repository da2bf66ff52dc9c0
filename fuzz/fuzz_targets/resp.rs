//! RESP2 session: no panic, no over-consumption, protocol errors reply and close,
//! whatever the bytes and however they are split.
#![no_main]
use c10k_proto::resp::RespApp;
use c10k_proto::{App, Peer};
use libfuzzer_sys::fuzz_target;

mod drive;

fuzz_target!(|data: &[u8]| {
    let app = RespApp::new();
    drive::drive(app.open(&Peer::unknown()), data);
});

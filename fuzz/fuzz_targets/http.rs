//! HTTP/1.x session: no panic, no over-consumption, errors reply and close, whatever
//! the bytes and however they are split.
#![no_main]
use c10k_proto::http::{HttpApp, HttpConfig};
use c10k_proto::{App, Peer};
use libfuzzer_sys::fuzz_target;

mod drive;

fuzz_target!(|data: &[u8]| {
    let app = HttpApp::new(HttpConfig { max_body: 64 * 1024 });
    drive::drive(app.open(&Peer::unknown()), data);
});

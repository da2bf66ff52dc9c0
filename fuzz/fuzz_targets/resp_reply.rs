//! RESP2 reply decoder (the load generator's side): no panic; what decodes re-encodes
//! to the bytes it consumed.
#![no_main]
use c10k_proto::resp::decode_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((reply, used))) = decode_reply(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        reply.encode(&mut again);
        let (back, n) = decode_reply(&again).expect("re-encoded reply decodes").expect("complete");
        assert_eq!(n, again.len());
        assert_eq!(back, reply);
    }
});

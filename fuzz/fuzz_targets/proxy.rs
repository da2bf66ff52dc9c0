#![no_main]
// The PROXY protocol header decoder: no panic; a complete header never claims more
// bytes than offered or than the limits allow, and decodes the same from exactly its
// own bytes; a prefix of a complete header is never an error (no early rejection of a
// valid header) and an error stays an error whatever follows.

use c10k_proto::proxy::{Decoded, ProxyProtocol, V1_MAX_LEN, V2_MAX_LEN, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let accept = match mode % 4 {
        0 => ProxyProtocol::Off,
        1 => ProxyProtocol::V1,
        2 => ProxyProtocol::V2,
        _ => ProxyProtocol::Any,
    };
    let whole = decode(input, accept);
    // A cut somewhere inside the input, chosen by the mode byte.
    let cut = if input.is_empty() { 0 } else { usize::from(mode) % (input.len() + 1) };
    let prefix = decode(&input[..cut], accept);
    match &whole {
        Ok(Decoded::Complete { header, len }) => {
            assert!(*len <= input.len(), "claimed more than offered");
            assert!(*len <= V1_MAX_LEN.max(V2_MAX_LEN));
            assert!(header.version == 1 || header.version == 2);
            assert!(header.version != 1 || *len <= V1_MAX_LEN);
            let again = decode(&input[..*len], accept);
            assert_eq!(again, whole, "the header's own bytes decode differently");
            assert!(prefix.is_ok(), "a prefix of a valid header was rejected");
            if *len > 0 {
                assert_eq!(decode(&input[..*len - 1], accept), Ok(Decoded::Incomplete));
            }
        }
        Ok(Decoded::Incomplete) => {
            assert!(input.len() < V2_MAX_LEN);
            assert!(prefix.is_ok(), "a prefix of a possible header was rejected");
        }
        Err(_) => {}
    }
    if prefix.is_err() {
        assert!(whole.is_err(), "more bytes turned an error into a header");
    }
});

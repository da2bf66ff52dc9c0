//! RESP2 wire helpers: integer parsing and formatting, the server's reply writers, and
//! the client side (a command encoder and a reply decoder).

use super::{MAX_BULK_LEN, RespError};

/// How deeply [`decode_reply`] lets arrays nest before it calls the reply malformed.
pub const MAX_REPLY_DEPTH: usize = 128;

/// The longest header line a reply decoder accepts for `:`, `$` and `*` (an `i64` in
/// decimal with its sign is at most 20 bytes).
const MAX_NUMBER_LINE: usize = 24;

/// Parses a decimal `i64` the way Redis does: an optional `-`, then digits with no
/// leading zero (except `0` itself), nothing else. `-0`, `+1`, ` 1` and `01` are
/// rejected, as is anything outside the `i64` range.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if magnitude == 1u64 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(magnitude).ok().map(|m| -m)
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        // `rest % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in decimal.
pub(crate) fn push_usize(out: &mut Vec<u8>, n: usize) {
    match i64::try_from(n) {
        Ok(n) => push_i64(out, n),
        // Unreachable on any real length, but never silently wrong.
        Err(_) => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

/// Appends `bytes` with `\r` and `\n` replaced by spaces, so that it cannot break out
/// of a one-line reply (Redis does the same to error messages).
pub(crate) fn push_line_safe(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(
        bytes
            .iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

/// Appends a simple string reply, `+text\r\n`.
pub(crate) fn write_simple(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'+');
    push_line_safe(out, text);
    out.extend_from_slice(b"\r\n");
}

/// Appends `+OK\r\n`.
pub(crate) fn write_ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Appends an error reply, `-message\r\n`; `message` starts with its code (`ERR ...`).
pub(crate) fn write_error(out: &mut Vec<u8>, message: &[u8]) {
    out.push(b'-');
    push_line_safe(out, message);
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply, `:n\r\n`.
pub(crate) fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply, `$len\r\nbytes\r\n`.
pub(crate) fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 16);
    out.push(b'$');
    push_usize(out, bytes.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk reply, `$-1\r\n`.
pub(crate) fn write_nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header, `*n\r\n`; the caller appends the `n` elements.
pub(crate) fn write_array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_usize(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Encodes one command as a RESP multibulk request (`*N\r\n` then `$len\r\narg\r\n`
/// per argument), binary-safe, appended to `out`.
///
/// ```
/// let mut out = Vec::new();
/// c10k_proto::resp::encode_command(&[b"SET", b"k", b"v"], &mut out);
/// assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
/// ```
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    let payload: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(payload + 16);
    write_array_header(out, args.len());
    for arg in args {
        write_bulk(out, arg);
    }
}

/// One RESP2 reply, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`: a status such as `OK` or `PONG`.
    Simple(Vec<u8>),
    /// `-message`: an error, its code included (`ERR unknown command ...`).
    Error(Vec<u8>),
    /// `:n`.
    Integer(i64),
    /// `$len` and the bytes, or `None` for the null bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` and its elements, or `None` for the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Encodes the reply in RESP2, appended to `out`.
    ///
    /// Simple strings and errors are single lines: a `\r` or `\n` inside one is sent as
    /// a space.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => write_simple(out, text),
            Reply::Error(message) => write_error(out, message),
            Reply::Integer(n) => write_integer(out, *n),
            Reply::Bulk(Some(bytes)) => write_bulk(out, bytes),
            Reply::Bulk(None) => write_nil(out),
            Reply::Array(Some(items)) => {
                write_array_header(out, items.len());
                for item in items {
                    item.encode(out);
                }
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        }
    }
}

/// Decodes the first reply in `input`.
///
/// Returns `Ok(Some((reply, used)))` with the number of bytes the reply took,
/// `Ok(None)` when `input` holds only the beginning of a reply (call again with more
/// bytes appended), or an error when the bytes cannot be a RESP2 reply.
///
/// The decoder keeps no state: each call parses from the start of `input`, so a client
/// should call it when new bytes arrive rather than once per byte.
///
/// ```
/// use c10k_proto::resp::{Reply, decode_reply};
/// assert_eq!(decode_reply(b"+PONG\r\n").unwrap(), Some((Reply::Simple(b"PONG".to_vec()), 7)));
/// assert_eq!(decode_reply(b"$5\r\nhel").unwrap(), None);
/// ```
pub fn decode_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    decode_at(input, 0, 0)
}

/// Decodes the reply starting at `pos`; on success returns it with the position just
/// past it.
fn decode_at(input: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&kind) = input.get(pos) else {
        return Ok(None);
    };
    let numeric = matches!(kind, b':' | b'$' | b'*');
    let Some((line, next)) = reply_line(input, pos + 1, numeric)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(line.to_vec()), next))),
        b'-' => Ok(Some((Reply::Error(line.to_vec()), next))),
        b':' => {
            let n = parse_i64(line).ok_or(RespError::InvalidReply("bad integer"))?;
            Ok(Some((Reply::Integer(n), next)))
        }
        b'$' => {
            let len = parse_i64(line).ok_or(RespError::InvalidReply("bad bulk length"))?;
            if len == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_BULK_LEN)
                .ok_or(RespError::InvalidReply("bad bulk length"))?;
            let end = next + len;
            let Some(tail) = input.get(end..end + 2) else {
                return Ok(None);
            };
            if tail != b"\r\n" {
                return Err(RespError::InvalidReply("bulk not followed by CRLF"));
            }
            Ok(Some((
                Reply::Bulk(Some(input[next..end].to_vec())),
                end + 2,
            )))
        }
        b'*' => {
            let count = parse_i64(line).ok_or(RespError::InvalidReply("bad array length"))?;
            if count == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let count =
                usize::try_from(count).map_err(|_| RespError::InvalidReply("bad array length"))?;
            if depth >= MAX_REPLY_DEPTH {
                return Err(RespError::InvalidReply("arrays nested too deeply"));
            }
            // Every element takes at least three bytes, so a count larger than what is
            // left cannot complete yet: never reserve more than the input can fill.
            let mut items = Vec::with_capacity(count.min((input.len() - next) / 3));
            let mut at = next;
            for _ in 0..count {
                match decode_at(input, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(RespError::InvalidReply("unknown reply type")),
    }
}

/// The `\r\n`-terminated line starting at `start`: its content and the position after
/// the terminator, `None` when the terminator has not arrived.
fn reply_line(
    input: &[u8],
    start: usize,
    numeric: bool,
) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = input.get(start..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Err(RespError::InvalidReply("line not terminated by CRLF"));
            }
            let line = &rest[..nl - 1];
            // RESP lines cannot carry CR (found by fuzzing: `+\r\r\n` decoded to a
            // simple string that no encoder can produce).
            if line.contains(&b'\r') {
                return Err(RespError::InvalidReply("CR inside a line"));
            }
            Ok(Some((line, start + nl + 1)))
        }
        None if numeric && rest.len() > MAX_NUMBER_LINE => {
            Err(RespError::InvalidReply("number line too long"))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn regression_fuzz_cr_inside_a_simple_string_is_invalid() {
        assert!(decode_reply(b"+\r\r\n").is_err());
        assert!(decode_reply(b"-E\rR\r\n").is_err());
        assert!(decode_reply(b"+OK\r\n").is_ok());
    }

    #[test]
    fn parses_integers_like_redis() {
        for (text, want) in [
            (&b"0"[..], Some(0)),
            (b"1", Some(1)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"99999999999999999999999", None),
            (b"", None),
            (b"-", None),
            (b"-0", None),
            (b"01", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"1a", None),
            (b"1.5", None),
        ] {
            assert_eq!(parse_i64(text), want, "{}", text.escape_ascii());
        }
    }

    #[test]
    fn formats_integers() {
        for n in [0, 1, -1, 10, -10, 1234567890, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&[b"GET", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n");
        out.clear();
        encode_command(&[], &mut out);
        assert_eq!(out, b"*0\r\n");
        out.clear();
        encode_command(&[b""], &mut out);
        assert_eq!(out, b"*1\r\n$0\r\n\r\n");
    }

    #[test]
    fn decodes_each_reply_type() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Simple(b"OK".to_vec())),
            (b"-ERR no\r\n", Reply::Error(b"ERR no".to_vec())),
            (b":-42\r\n", Reply::Integer(-42)),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
            (b"$4\r\na\r\nb\r\n", Reply::Bulk(Some(b"a\r\nb".to_vec()))),
            (b"*-1\r\n", Reply::Array(None)),
            (b"*0\r\n", Reply::Array(Some(Vec::new()))),
            (
                b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n",
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_reply(bytes).unwrap(), Some((want, bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(decode_reply(&bytes[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn decodes_only_the_first_of_several_replies() {
        let (reply, used) = decode_reply(b":1\r\n:2\r\n").unwrap().unwrap();
        assert_eq!((reply, used), (Reply::Integer(1), 4));
    }

    #[test]
    fn rejects_malformed_replies() {
        for bytes in [
            &b"?x\r\n"[..],
            b"+OK\n",
            b":x\r\n",
            b":1.0\r\n",
            b"$-2\r\n",
            b"$536870913\r\n",
            b"$1\r\nab\r\n",
            b"*-2\r\n",
            b"*x\r\n",
            b":1111111111111111111111111111111",
        ] {
            assert!(decode_reply(bytes).is_err(), "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn bounds_nesting_and_preallocation() {
        let mut deep = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        deep.extend_from_slice(b":1\r\n");
        assert!(decode_reply(&deep).is_err());
        let mut ok = b"*1\r\n".repeat(MAX_REPLY_DEPTH);
        ok.extend_from_slice(b":1\r\n");
        assert!(decode_reply(&ok).unwrap().is_some());
        // A huge declared array with nothing behind it is merely incomplete.
        assert_eq!(decode_reply(b"*9223372036854775807\r\n").unwrap(), None);
    }

    fn arb_line() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..24,
        )
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            arb_line().prop_map(Reply::Simple),
            arb_line().prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Integer),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(Reply::Bulk),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            proptest::option::of(proptest::collection::vec(inner, 0..8)).prop_map(Reply::Array)
        })
    }

    proptest! {
        #[test]
        fn replies_round_trip(reply in arb_reply(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            let len = bytes.len();
            for cut in 0..len {
                prop_assert_eq!(decode_reply(&bytes[..cut]).unwrap(), None);
            }
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(decode_reply(&bytes).unwrap(), Some((reply, len)));
        }
    }
}

//! Framing RESP2 replies and pushes on the client side, without copying.
//!
//! A pub/sub subscriber receives a stream of frames that no request announced
//! (`*3 $7 message $ch $payload`), many per read at high rates and split anywhere
//! between reads. [`read_frame`] frames the first one at the start of its input and
//! hands back borrowed slices (no allocation per message, unlike the proto crate's
//! [`c10k_proto::resp::decode_reply`], which builds a tree); [`FrameBuffer`] is the
//! incremental reader on top: it frames straight out of each read and keeps only an
//! incomplete tail for the next one.

/// A top-level array's first elements kept in a [`Frame`] (pub/sub pushes have 3 or 4;
/// later elements are framed and skipped).
pub const MAX_KEPT: usize = 4;

/// Arrays nested deeper than this are refused (their elements are skipped, not kept).
pub const MAX_DEPTH: usize = 32;

/// The longest bulk string accepted (Redis's `proto-max-bulk-len` default).
pub const MAX_BULK: usize = 512 * 1024 * 1024;

/// The longest simple string or error line accepted.
pub const MAX_LINE: usize = 1024 * 1024;

/// Digits and sign of the longest number line.
const MAX_NUMBER: usize = 24;

/// One RESP2 value; for an array, its length only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `+text`.
    Simple(&'a [u8]),
    /// `-message`.
    Error(&'a [u8]),
    /// `:n`.
    Integer(i64),
    /// `$len` and the bytes, `None` for `$-1`.
    Bulk(Option<&'a [u8]>),
    /// `*n` (`None` for `*-1`): the elements are in [`Frame::item`] for a top-level
    /// array, skipped for a nested one.
    Array(Option<usize>),
}

/// One complete frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's own value.
    pub head: Item<'a>,
    kept: [Item<'a>; MAX_KEPT],
}

impl<'a> Frame<'a> {
    /// Element `k` of a top-level array (the first [`MAX_KEPT`]), else `None`.
    pub fn item(&self, k: usize) -> Option<Item<'a>> {
        match self.head {
            Item::Array(Some(n)) if k < n.min(MAX_KEPT) => Some(self.kept[k]),
            _ => None,
        }
    }
}

/// Bytes that cannot be RESP2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed RESP: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Frames the first frame in `input`: `Ok(None)` while it is incomplete, else the
/// frame and the bytes it takes.
pub fn read_frame(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some((head, mut at)) = item_at(input, 0, 0)? else {
        return Ok(None);
    };
    let mut kept = [Item::Integer(0); MAX_KEPT];
    if let Item::Array(Some(n)) = head {
        for k in 0..n {
            let Some((item, next)) = item_at(input, at, 1)? else {
                return Ok(None);
            };
            if let Some(slot) = kept.get_mut(k) {
                *slot = item;
            }
            at = next;
        }
    }
    Ok(Some((Frame { head, kept }, at)))
}

/// The value at `pos` and the position after it (a nested array's elements skipped).
fn item_at(
    input: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(Item<'_>, usize)>, FrameError> {
    let Some(&kind) = input.get(pos) else {
        return Ok(None);
    };
    let numeric = matches!(kind, b':' | b'$' | b'*');
    if !numeric && !matches!(kind, b'+' | b'-') {
        return Err(FrameError("unknown type byte"));
    }
    let Some((line, next)) = line_at(input, pos + 1, numeric)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Item::Simple(line), next))),
        b'-' => Ok(Some((Item::Error(line), next))),
        b':' => Ok(Some((Item::Integer(number(line)?), next))),
        b'$' => match number(line)? {
            -1 => Ok(Some((Item::Bulk(None), next))),
            len => {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_BULK)
                    .ok_or(FrameError("bad bulk length"))?;
                let end = next + len;
                match input.get(end..end + 2) {
                    None => Ok(None),
                    Some(b"\r\n") => Ok(Some((Item::Bulk(Some(&input[next..end])), end + 2))),
                    Some(_) => Err(FrameError("bulk not followed by CRLF")),
                }
            }
        },
        _ => match number(line)? {
            -1 => Ok(Some((Item::Array(None), next))),
            n => {
                let n = usize::try_from(n).map_err(|_| FrameError("bad array length"))?;
                if depth == 0 {
                    // The caller frames a top-level array's elements itself.
                    return Ok(Some((Item::Array(Some(n)), next)));
                }
                if depth >= MAX_DEPTH {
                    return Err(FrameError("arrays nested too deeply"));
                }
                let mut at = next;
                for _ in 0..n {
                    match item_at(input, at, depth + 1)? {
                        Some((_, after)) => at = after,
                        None => return Ok(None),
                    }
                }
                Ok(Some((Item::Array(Some(n)), at)))
            }
        },
    }
}

/// The CRLF-terminated line starting at `start` and the position after it.
fn line_at(
    input: &[u8],
    start: usize,
    numeric: bool,
) -> Result<Option<(&[u8], usize)>, FrameError> {
    let rest = input.get(start..).unwrap_or_default();
    let limit = if numeric { MAX_NUMBER } else { MAX_LINE };
    match rest.iter().take(limit + 2).position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => {
            let line = &rest[..nl - 1];
            if line.contains(&b'\r') {
                return Err(FrameError("CR inside a line"));
            }
            Ok(Some((line, start + nl + 1)))
        }
        Some(_) => Err(FrameError("line not terminated by CRLF")),
        None if rest.len() > limit + 1 => Err(FrameError("line too long")),
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, FrameError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or(FrameError("bad number"))
}

/// The incremental reader: frames each read as it comes, keeping an incomplete frame's
/// beginning for the next read.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    tail: Vec<u8>,
}

impl FrameBuffer {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of an incomplete frame waiting for the rest.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Forgets what is buffered (the connection closed).
    pub fn clear(&mut self) {
        self.tail.clear();
    }

    /// Frames `fresh` after whatever the last call left incomplete, calling `each` with
    /// every complete frame in order, and keeps an incomplete end for the next call.
    /// Returns the frames seen; stops at the first malformed frame or at the first
    /// error `each` returns (the connection is then beyond use: nothing is kept).
    pub fn feed(
        &mut self,
        fresh: &[u8],
        mut each: impl FnMut(Frame<'_>) -> Result<(), String>,
    ) -> Result<u64, String> {
        let buffered = !self.tail.is_empty();
        if buffered {
            self.tail.extend_from_slice(fresh);
        }
        let input: &[u8] = if buffered { &self.tail } else { fresh };
        let mut used = 0;
        let mut frames = 0;
        let result = loop {
            match read_frame(&input[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    frames += 1;
                    if let Err(e) = each(frame) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(frames),
                Err(e) => break Err(e.to_string()),
            }
        };
        if result.is_err() {
            self.tail.clear();
        } else if buffered {
            self.tail.drain(..used);
        } else {
            self.tail.extend_from_slice(&fresh[used..]);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a subscriber sees: confirmations, messages (one binary, with CRLF inside),
    /// a PUBLISH reply, a null bulk, a nested array, an error, a status.
    const STREAM: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
        *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n\
        *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n\
        :42\r\n$-1\r\n*-1\r\n*0\r\n\
        *5\r\n:1\r\n*2\r\n+a\r\n*1\r\n:2\r\n$1\r\nx\r\n-E\r\n:5\r\n\
        -ERR unknown command 'SUBSCRIBE'\r\n+PONG\r\n";

    /// A readable summary of one frame.
    fn show(f: &Frame<'_>) -> String {
        let one = |i: Item<'_>| match i {
            Item::Simple(s) => format!("+{}", String::from_utf8_lossy(s)),
            Item::Error(s) => format!("-{}", String::from_utf8_lossy(s)),
            Item::Integer(n) => format!(":{n}"),
            Item::Bulk(Some(b)) => format!("${}", String::from_utf8_lossy(b)),
            Item::Bulk(None) => "$nil".into(),
            Item::Array(Some(n)) => format!("*{n}"),
            Item::Array(None) => "*nil".into(),
        };
        let mut s = one(f.head);
        for k in 0..MAX_KEPT {
            if let Some(i) = f.item(k) {
                s.push(' ');
                s.push_str(&one(i));
            }
        }
        s
    }

    fn want() -> Vec<String> {
        [
            "*3 $subscribe $ch :1",
            "*3 $message $ch $hello",
            "*3 $message $ch $a\r\nb",
            ":42",
            "$nil",
            "*nil",
            "*0",
            "*5 :1 *2 $x -E",
            "-ERR unknown command 'SUBSCRIBE'",
            "+PONG",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Feeds `parts` in order through one reader and returns every frame seen.
    fn feed_all(parts: &[&[u8]]) -> Vec<String> {
        let mut reader = FrameBuffer::new();
        let mut seen = Vec::new();
        for part in parts {
            reader
                .feed(part, |f| {
                    seen.push(show(&f));
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(reader.pending(), 0, "an incomplete tail is left");
        seen
    }

    #[test]
    fn many_frames_in_one_read() {
        assert_eq!(feed_all(&[STREAM]), want());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(feed_all(&[a, b]), want(), "split at {cut}");
        }
        // And in three pieces, every pair of cuts.
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let got = feed_all(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(got, want(), "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let parts: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(feed_all(&parts), want());
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(read_frame(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let (f, len) = read_frame(msg).unwrap().unwrap();
        assert_eq!(len, msg.len());
        assert_eq!(f.item(2), Some(Item::Bulk(Some(&b"hello"[..]))));
        assert_eq!(f.item(3), None);
    }

    #[test]
    fn refuses_what_is_not_resp() {
        for bad in [
            &b"hello\r\n"[..],
            b":12x\r\n",
            b":+1\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"+a\rb\r\n",
            b"+a\n",
            b"*1\r\n?\r\n",
        ] {
            assert!(
                read_frame(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; 100];
        let mut line = b":".to_vec();
        line.extend_from_slice(&long);
        assert!(read_frame(&line).is_err());
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        assert!(read_frame(&deep).is_err());
    }

    #[test]
    fn stops_at_the_callers_error_and_keeps_nothing() {
        let mut reader = FrameBuffer::new();
        let mut n = 0;
        let r = reader.feed(&STREAM[..STREAM.len() - 3], |_| {
            n += 1;
            if n == 2 { Err("enough".into()) } else { Ok(()) }
        });
        assert_eq!(r, Err("enough".to_string()));
        assert_eq!(reader.pending(), 0);
        assert!(reader.feed(b"?x\r\n", |_| Ok(())).is_err());
    }
}

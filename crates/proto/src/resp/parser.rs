//! The incremental request parser: multibulk and inline requests, offered in pieces.
//!
//! The parser keeps the arguments of the command being received in one arena
//! (`buf`, with `spans` marking each argument), so the bytes of a completed argument
//! are copied once and reported consumed; a bulk arriving in pieces is appended piece
//! by piece. Header lines (`*N`, `$len`, inline commands) are left unconsumed until
//! their newline arrives; `scanned` remembers how far the unconsumed line was already
//! searched, so a line trickling in byte by byte is scanned once, not once per byte.

use super::{MAX_BULK_LEN, MAX_INLINE_LEN, MAX_MULTIBULK_LEN, MAX_REQUEST_LEN, RespError};
use crate::resp::codec::parse_i64;

/// How far ahead of the received bytes a partial bulk may reserve.
const PREALLOC_AHEAD: usize = 64 * 1024;

/// An argument arena larger than this is released after its command instead of being
/// kept for the next one, so an idle connection does not pin a large buffer.
const ARENA_KEEP: usize = 64 * 1024;

/// Span lists longer than this are released after their command.
const SPANS_KEEP: usize = 1024;

/// Whether the parser should go on with the next command in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Parse and dispatch the next command.
    Continue,
    /// Return now; the rest of the input stays unconsumed.
    Stop,
}

/// Where the parser is within a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests.
    Idle,
    /// Inside a multibulk, expecting a `$len` line; `left` bulks remain, this one
    /// included.
    Header { left: usize },
    /// Receiving a bulk: `need` data bytes remain, then `\r\n`; `left` bulks follow.
    Bulk { left: usize, need: usize },
}

/// The arguments of one complete command: borrowed views into the parser's arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Args<'a> {
    buf: &'a [u8],
    spans: &'a [(usize, usize)],
}

impl<'a> Args<'a> {
    /// The number of arguments, the command name included.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Argument `i` (0 is the command name); empty when out of range.
    pub(crate) fn get(&self, i: usize) -> &'a [u8] {
        self.spans
            .get(i)
            .and_then(|&(start, end)| self.buf.get(start..end))
            .unwrap_or_default()
    }

    /// All arguments from `from` on.
    pub(crate) fn iter_from(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + Clone {
        let this = *self;
        (from..self.len()).map(move |i| this.get(i))
    }
}

/// The request parser of one connection.
pub(crate) struct RequestParser {
    state: State,
    /// The arguments of the command being received, back to back.
    buf: Vec<u8>,
    /// `(start, end)` of each completed argument in `buf`.
    spans: Vec<(usize, usize)>,
    /// Bytes at the front of the unconsumed input already searched for a newline.
    scanned: usize,
}

impl std::fmt::Debug for RequestParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParser")
            .field("state", &self.state)
            .field("args", &self.spans.len())
            .field("arg_bytes", &self.buf.len())
            .field("scanned", &self.scanned)
            .finish()
    }
}

/// What a search for the end of a header line found.
enum Line {
    /// The newline is at this index.
    Newline(usize),
    /// No newline yet, and the line may still end within the limit.
    Pending,
    /// The line is longer than [`MAX_INLINE_LEN`].
    TooLong,
}

impl RequestParser {
    /// A parser between requests.
    pub(crate) fn new() -> Self {
        RequestParser {
            state: State::Idle,
            buf: Vec::new(),
            spans: Vec::new(),
            scanned: 0,
        }
    }

    /// True while a request has started but not completed: a multibulk or bulk is
    /// partially received, or the start of a header line awaits its newline.
    pub(crate) fn mid_request(&self) -> bool {
        self.state != State::Idle || self.scanned > 0
    }

    /// True when no part of a request has been consumed.
    pub(crate) fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Capacity of the argument arena (tests check it does not follow declared sizes).
    #[cfg(test)]
    pub(crate) fn arena_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Parses `input`, calling `on_command` with each complete, non-empty command.
    /// Returns the number of bytes consumed: everything up to where more bytes are
    /// needed, or up to the end of the command for which `on_command` said
    /// [`Flow::Stop`].
    ///
    /// `input` must start with the bytes not consumed by the previous call.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut on_command: impl FnMut(Args<'_>) -> Flow,
    ) -> Result<usize, RespError> {
        let mut pos = 0;
        // Only valid for a line starting at the very front of `input`.
        let skip = std::mem::take(&mut self.scanned);
        loop {
            let skip = if pos == 0 { skip } else { 0 };
            match self.state {
                State::Idle => {
                    if pos == input.len() {
                        return Ok(pos);
                    }
                    let multibulk = input[pos] == b'*';
                    let nl = match find_line(input, pos, skip) {
                        Line::Newline(nl) => nl,
                        Line::Pending => {
                            self.scanned = input.len() - pos;
                            return Ok(pos);
                        }
                        Line::TooLong if multibulk => {
                            return Err(RespError::TooBigMultibulkCount);
                        }
                        Line::TooLong => return Err(RespError::TooBigInlineRequest),
                    };
                    if multibulk {
                        let count = header_number(&input[pos + 1..nl])
                            .ok_or(RespError::InvalidMultibulkLength)?;
                        pos = nl + 1;
                        if count <= 0 {
                            // `*0` and `*-1`: an empty command, ignored like Redis does.
                            continue;
                        }
                        let count = usize::try_from(count)
                            .ok()
                            .filter(|&n| n <= MAX_MULTIBULK_LEN)
                            .ok_or(RespError::InvalidMultibulkLength)?;
                        self.spans.reserve(count.min(SPANS_KEEP));
                        self.state = State::Header { left: count };
                    } else {
                        let end = if nl > pos && input[nl - 1] == b'\r' {
                            nl - 1
                        } else {
                            nl
                        };
                        let split = split_inline(&input[pos..end], &mut self.buf, &mut self.spans);
                        if let Err(err) = split {
                            self.reset_command();
                            return Err(err);
                        }
                        pos = nl + 1;
                        if !self.spans.is_empty() && self.dispatch(&mut on_command) == Flow::Stop {
                            return Ok(pos);
                        }
                    }
                }
                State::Header { left } => {
                    let Some(&first) = input.get(pos) else {
                        return Ok(pos);
                    };
                    if first != b'$' {
                        return Err(RespError::ExpectedBulk(first));
                    }
                    let nl = match find_line(input, pos, skip) {
                        Line::Newline(nl) => nl,
                        Line::Pending => {
                            self.scanned = input.len() - pos;
                            return Ok(pos);
                        }
                        Line::TooLong => return Err(RespError::TooBigBulkCount),
                    };
                    let len = header_number(&input[pos + 1..nl])
                        .and_then(|len| usize::try_from(len).ok())
                        .filter(|&len| len <= MAX_BULK_LEN)
                        .ok_or(RespError::InvalidBulkLength)?;
                    if self.buf.len() + len > MAX_REQUEST_LEN {
                        return Err(RespError::RequestTooLarge);
                    }
                    pos = nl + 1;
                    self.state = State::Bulk {
                        left: left - 1,
                        need: len,
                    };
                }
                State::Bulk { left, need } => {
                    if need > 0 {
                        let available = input.len() - pos;
                        if available == 0 {
                            return Ok(pos);
                        }
                        let take = need.min(available);
                        self.grow_for(take, need);
                        self.buf.extend_from_slice(&input[pos..pos + take]);
                        pos += take;
                        self.state = State::Bulk {
                            left,
                            need: need - take,
                        };
                        if take < need {
                            return Ok(pos);
                        }
                    }
                    let Some(terminator) = input.get(pos..pos + 2) else {
                        return Ok(pos);
                    };
                    if terminator != b"\r\n" {
                        return Err(RespError::MissingBulkTerminator);
                    }
                    pos += 2;
                    let start = self.spans.last().map_or(0, |&(_, end)| end);
                    self.spans.push((start, self.buf.len()));
                    if left > 0 {
                        self.state = State::Header { left };
                    } else {
                        self.state = State::Idle;
                        if self.dispatch(&mut on_command) == Flow::Stop {
                            return Ok(pos);
                        }
                    }
                }
            }
        }
    }

    /// Makes room to append `take` bytes of a bulk that still needs `need` bytes
    /// (`take` included). Grows with the bytes that actually arrived, never with the
    /// declared length: at most [`PREALLOC_AHEAD`] beyond them, or doubling.
    fn grow_for(&mut self, take: usize, need: usize) {
        let ahead = (need - take).min(PREALLOC_AHEAD);
        if self.buf.capacity() - self.buf.len() < take {
            // `Vec::reserve` doubles when that is more, which keeps appends amortized
            // O(1) over many arguments; doubling is bounded by the bytes received.
            self.buf.reserve(take + ahead);
        }
    }

    /// Hands the completed command to `on_command` and clears it.
    fn dispatch(&mut self, on_command: &mut impl FnMut(Args<'_>) -> Flow) -> Flow {
        let flow = on_command(Args {
            buf: &self.buf,
            spans: &self.spans,
        });
        self.reset_command();
        flow
    }

    /// Forgets the current command's arguments, releasing oversized buffers.
    fn reset_command(&mut self) {
        if self.buf.capacity() > ARENA_KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        if self.spans.capacity() > SPANS_KEEP {
            self.spans = Vec::new();
        } else {
            self.spans.clear();
        }
    }
}

/// Finds the newline ending the line that starts at `start`, skipping the first `skip`
/// bytes already searched. A line's content (without `\r\n` or `\n`) may be at most
/// [`MAX_INLINE_LEN`] bytes; the verdict does not depend on how the input was split.
fn find_line(input: &[u8], start: usize, skip: usize) -> Line {
    // The newline of a line within the limit is at most this far from `start`.
    let window_end = input.len().min(start + MAX_INLINE_LEN + 2);
    let from = (start + skip).min(window_end);
    match input[from..window_end].iter().position(|&b| b == b'\n') {
        Some(offset) => {
            let nl = from + offset;
            let mut content = nl - start;
            if content > 0 && input[nl - 1] == b'\r' {
                content -= 1;
            }
            if content > MAX_INLINE_LEN {
                Line::TooLong
            } else {
                Line::Newline(nl)
            }
        }
        None => {
            let available = input.len() - start;
            let over = available > MAX_INLINE_LEN + 1
                || (available == MAX_INLINE_LEN + 1 && input[input.len() - 1] != b'\r');
            if over { Line::TooLong } else { Line::Pending }
        }
    }
}

/// Parses the number of a `*N` or `$len` header line (`line` is what follows the type
/// byte, up to the `\n`), which must end in `\r`.
fn header_number(line: &[u8]) -> Option<i64> {
    parse_i64(line.strip_suffix(b"\r")?)
}

/// Whitespace between arguments: C's `isspace`, plus NUL.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0)
}

/// Bytes that end an unquoted argument.
fn ends_word(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0)
}

/// The value of an ASCII hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line into arguments appended to `buf` and `spans`.
///
/// Arguments are separated by whitespace. Double quotes allow `\"`, `\\`, `\n`, `\r`,
/// `\t`, `\b`, `\a` and `\xHH` escapes (any other escaped byte stands for itself);
/// single quotes allow `\'`. A closing quote must be followed by whitespace or the end
/// of the line; a quote left open, or closed and followed by anything else, is
/// [`RespError::UnbalancedQuotes`].
pub(crate) fn split_inline(
    line: &[u8],
    buf: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize)>,
) -> Result<(), RespError> {
    let n = line.len();
    let mut i = 0;
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i == n {
            return Ok(());
        }
        let start = buf.len();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            if in_double {
                let Some(&c) = line.get(i) else {
                    return Err(RespError::UnbalancedQuotes);
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hi = line.get(i + 2).copied().and_then(hex_value);
                    let lo = line.get(i + 3).copied().and_then(hex_value);
                    if let (Some(hi), Some(lo)) = (hi, lo) {
                        buf.push(hi << 4 | lo);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    buf.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if line.get(i + 1).is_some_and(|&next| !is_space(next)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    buf.push(c);
                    i += 1;
                }
            } else if in_single {
                let Some(&c) = line.get(i) else {
                    return Err(RespError::UnbalancedQuotes);
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    buf.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&next| !is_space(next)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    buf.push(c);
                    i += 1;
                }
            } else {
                let Some(&c) = line.get(i) else {
                    break;
                };
                i += 1;
                match c {
                    c if ends_word(c) => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    c => buf.push(c),
                }
            }
        }
        spans.push((start, buf.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        split_inline(line, &mut buf, &mut spans)?;
        Ok(spans.iter().map(|&(s, e)| buf[s..e].to_vec()).collect())
    }

    fn words(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|w| w.to_vec()).collect()
    }

    #[test]
    fn splits_inline_commands() {
        let cases: Vec<(&[u8], Vec<Vec<u8>>)> = vec![
            (b"", vec![]),
            (b"   \t ", vec![]),
            (b"PING", words(&[b"PING"])),
            (b"  set  a\tb  ", words(&[b"set", b"a", b"b"])),
            (b"set \"a b\" 'c d'", words(&[b"set", b"a b", b"c d"])),
            (
                b"echo \"\\\"q\\\\\\n\\r\\t\\x41\\x7a\\xzz\\q\"",
                words(&[b"echo", b"\"q\\\n\r\tAzxzzq"]),
            ),
            (b"echo 'it\\'s' '\\n'", words(&[b"echo", b"it's", b"\\n"])),
            (b"echo \"\" ''", words(&[b"echo", b"", b""])),
            (b"echo a\"b c\"", words(&[b"echo", b"ab c"])),
            (b"echo \"\\x00\\xff\"", words(&[b"echo", b"\x00\xff"])),
            (b"a\x00b", words(&[b"a", b"b"])),
            (b"\x00a\x0b\x00", words(&[b"a\x0b"])),
        ];
        for (line, want) in cases {
            assert_eq!(split(line).unwrap(), want, "{}", line.escape_ascii());
        }
    }

    #[test]
    fn rejects_unbalanced_quotes() {
        for line in [
            &b"echo \"abc"[..],
            b"echo 'abc",
            b"echo \"abc\"def",
            b"echo 'abc'def",
            b"echo \"abc\\\"",
            b"echo \"\\",
            b"\"",
        ] {
            assert_eq!(
                split(line),
                Err(RespError::UnbalancedQuotes),
                "{}",
                line.escape_ascii()
            );
        }
    }

    /// The commands parsed from one input, each a list of arguments.
    type Commands = Vec<Vec<Vec<u8>>>;

    fn parse_all(input: &[u8]) -> Result<(Commands, usize), RespError> {
        let mut parser = RequestParser::new();
        let mut commands = Vec::new();
        let used = parser.feed(input, |args| {
            commands.push(args.iter_from(0).map(<[u8]>::to_vec).collect());
            Flow::Continue
        })?;
        Ok((commands, used))
    }

    #[test]
    fn parses_multibulk_and_inline() {
        let (commands, used) =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING x\r\n*0\r\n\r\n").unwrap();
        assert_eq!(used, 34);
        assert_eq!(
            commands,
            vec![words(&[b"GET", b"k"]), words(&[b"PING", b"x"])]
        );
    }

    #[test]
    fn leaves_incomplete_requests_unconsumed() {
        let (commands, used) = parse_all(b"PING\r\nECHO").unwrap();
        assert_eq!((commands.len(), used), (1, 6));
        let (commands, used) = parse_all(b"*2\r\n$4\r\nECHO\r\n$3\r\nab").unwrap();
        assert_eq!((commands.len(), used), (0, 20));
        // The bulk's data was consumed; its terminator needs both bytes.
        let (_, used) = parse_all(b"*1\r\n$1\r\na\r").unwrap();
        assert_eq!(used, 9);
    }

    #[test]
    fn line_limit_does_not_depend_on_splitting() {
        for (content, ok) in [(MAX_INLINE_LEN, true), (MAX_INLINE_LEN + 1, false)] {
            for ending in [&b"\r\n"[..], b"\n"] {
                let mut line = vec![b'a'; content];
                line.extend_from_slice(ending);
                let whole = parse_all(&line);
                assert_eq!(whole.is_ok(), ok);
                for cut in [0, 1, content - 1, content, content + 1] {
                    let mut parser = RequestParser::new();
                    let first = parser.feed(&line[..cut], |_| Flow::Continue);
                    let all = first.and_then(|used| parser.feed(&line[used..], |_| Flow::Continue));
                    assert_eq!(all.is_ok(), ok, "content {content} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn stop_returns_after_the_command() {
        let mut parser = RequestParser::new();
        let used = parser.feed(b"PING\r\nPING\r\n", |_| Flow::Stop).unwrap();
        assert_eq!(used, 6);
    }

    fn quote(arg: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in arg {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                0x20..=0x7e => out.push(b),
                _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        out.push(b'"');
        out
    }

    proptest! {
        #[test]
        fn multibulk_round_trips(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut input = Vec::new();
            crate::resp::encode_command(&refs, &mut input);
            let cut = cut.index(input.len() + 1);
            let mut parser = RequestParser::new();
            let mut got = Vec::new();
            let mut collect = |a: Args<'_>| {
                got.push(a.iter_from(0).map(<[u8]>::to_vec).collect::<Vec<_>>());
                Flow::Continue
            };
            let used = parser.feed(&input[..cut], &mut collect).unwrap();
            let rest = parser.feed(&input[used..], &mut collect).unwrap();
            prop_assert_eq!(used + rest, input.len());
            prop_assert_eq!(got, vec![args]);
            prop_assert!(!parser.mid_request());
        }

        #[test]
        fn quoted_inline_round_trips(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6),
        ) {
            let mut line = Vec::new();
            for arg in &args {
                line.extend_from_slice(&quote(arg));
                line.push(b' ');
            }
            prop_assert_eq!(split(&line).unwrap(), args);
        }
    }
}

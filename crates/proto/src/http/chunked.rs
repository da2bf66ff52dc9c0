//! Incremental decoding of the chunked transfer coding (RFC 9112 §7.1).
//!
//! The decoder is a byte-level state machine: every byte offered is consumed (up to
//! the end of the body), so nothing is ever scanned twice and the driver need not
//! keep partial chunk-size lines around. Chunk extensions and trailer fields are
//! read and ignored. Line endings must be CRLF.

use super::{HttpError, MAX_HEAD};

/// Longest chunk-size line accepted (size, extensions and CRLF).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// Where the decoder is in the chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size: `digits` of them so far.
    Size { value: u64, digits: usize },
    /// After the size: optional whitespace, then `;` extensions until CR.
    /// `in_ext` once a `;` was seen.
    AfterSize { size: u64, in_ext: bool },
    /// The CR ending the chunk-size line was seen; LF expected.
    SizeLf { size: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data: CR expected.
    DataCr,
    /// After chunk data and CR: LF expected.
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// A trailer line's CR was seen; LF expected.
    TrailerLf,
    /// The final empty line's CR was seen; LF expected.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decodes one chunked body, fed in pieces.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// Bytes of the current chunk-size line so far.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
    /// Body bytes announced by the chunk sizes so far.
    total: u64,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_len: 0,
            trailer_len: 0,
            total: 0,
        }
    }

    /// Whether the whole body, trailers included, has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing chunk data to `sink`. Returns how many bytes were
    /// consumed: all of `input` unless the body ends within it. Fails when the framing
    /// is malformed, or when the chunk sizes add up past `max_body` (checked as soon
    /// as a size is known, before its data arrives).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        max_body: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let avail = input.len() - pos;
                    let n = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    sink(&input[pos..pos + n]);
                    pos += n;
                    // n <= remaining, so this cannot underflow.
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                }
                state => {
                    self.state = self.step(state, input[pos], max_body)?;
                    pos += 1;
                }
            }
        }
        Ok(pos)
    }

    /// The state after byte `b` in a framing (non-data) state.
    fn step(&mut self, state: State, b: u8, max_body: u64) -> Result<State, HttpError> {
        match state {
            State::Size { .. } | State::AfterSize { .. } | State::SizeLf { .. } => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err(HttpError::BadChunk("chunk-size line too long"));
                }
            }
            State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_HEAD {
                    return Err(HttpError::TrailersTooLarge);
                }
            }
            State::Data { .. } | State::DataCr | State::DataLf | State::Done => {}
        }
        let next = match state {
            State::Size { value, digits } => match hex_value(b) {
                Some(d) => {
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(d))
                        .ok_or(HttpError::BadChunk("chunk size overflows"))?;
                    State::Size {
                        value,
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(HttpError::BadChunk("missing chunk size")),
                None => after_size(value, false, b)?,
            },
            State::AfterSize { size, in_ext } => after_size(size, in_ext, b)?,
            State::SizeLf { size } => {
                if b != b'\n' {
                    return Err(HttpError::BadChunk("chunk-size line not ended by CRLF"));
                }
                self.line_len = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    self.total = self
                        .total
                        .checked_add(size)
                        .filter(|&t| t <= max_body)
                        .ok_or(HttpError::BodyTooLarge)?;
                    State::Data { remaining: size }
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size {
                value: 0,
                digits: 0,
            },
            State::DataCr | State::DataLf => {
                return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
            }
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                _ if is_line_byte(b) => State::TrailerLine,
                _ => return Err(HttpError::BadChunk("invalid trailer line")),
            },
            State::TrailerLine => match b {
                b'\r' => State::TrailerLf,
                _ if is_line_byte(b) => State::TrailerLine,
                _ => return Err(HttpError::BadChunk("invalid trailer line")),
            },
            State::TrailerLf | State::EndLf if b != b'\n' => {
                return Err(HttpError::BadChunk("trailer line not ended by CRLF"));
            }
            State::TrailerLf => State::TrailerStart,
            State::EndLf => State::Done,
            // `decode` handles these itself.
            State::Data { .. } | State::Done => state,
        };
        Ok(next)
    }
}

/// The state after byte `b` following a chunk size (`in_ext` once in extensions).
fn after_size(size: u64, in_ext: bool, b: u8) -> Result<State, HttpError> {
    match b {
        b'\r' => Ok(State::SizeLf { size }),
        b';' => Ok(State::AfterSize { size, in_ext: true }),
        b' ' | b'\t' => Ok(State::AfterSize { size, in_ext }),
        _ if in_ext && is_line_byte(b) => Ok(State::AfterSize { size, in_ext }),
        _ if in_ext => Err(HttpError::BadChunk("invalid chunk extension")),
        _ => Err(HttpError::BadChunk("invalid chunk size")),
    }
}

/// Whether `b` may appear inside a line: visible ASCII, space, tab or obs-text.
fn is_line_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn hex_value(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one call; returns (consumed, body, done).
    fn decode_all(input: &[u8], max: u64) -> Result<(usize, Vec<u8>, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        let n = d.decode(input, max, |data| body.extend_from_slice(data))?;
        Ok((n, body, d.is_done()))
    }

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let input = b"5;name=value\r\nhello\r\n1 ; a ; b=\"q\"\r\n \r\nA\r\n0123456789\r\n0;last\r\nX-Trailer: 1\r\nY: 2\r\n\r\nNEXT";
        let (n, body, done) = decode_all(input, 100).unwrap();
        assert!(done);
        assert_eq!(body, b"hello 0123456789");
        assert_eq!(&input[n..], b"NEXT");
    }

    #[test]
    fn byte_at_a_time_matches() {
        let input = b"3\r\nabc\r\nf\r\n0123456789abcde\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        for &b in input {
            assert!(!d.is_done());
            let n = d
                .decode(&[b], 100, |data| body.extend_from_slice(data))
                .unwrap();
            assert_eq!(n, 1);
        }
        assert!(d.is_done());
        assert_eq!(body, b"abc0123456789abcde");
    }

    #[test]
    fn rejects_bad_framing() {
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"x\r\n",
            b"5x\r\nhello\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\r",
            b"5;a\nb\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"0\r\n\rX",
            b"0\r\nT: 1\rX",
            b"ffffffffffffffffff\r\n",
            b"10000000000000000\r\n",
        ];
        for input in bad {
            match decode_all(input, u64::MAX) {
                Err(HttpError::BadChunk(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn limits() {
        assert_eq!(
            decode_all(b"b\r\n", 10).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            decode_all(b"5\r\nhello\r\n6\r\n", 10).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert!(
            decode_all(b"5\r\nhello\r\n5\r\nhello\r\n0\r\n\r\n", 10)
                .unwrap()
                .2
        );
        assert!(decode_all(b"ffffffffffffffff\r\n", u64::MAX).is_ok());
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE, b'a');
        assert!(decode_all(&long, 10).is_ok());
        long.push(b'a');
        assert_eq!(
            decode_all(&long, 10).unwrap_err(),
            HttpError::BadChunk("chunk-size line too long")
        );
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_HEAD + 10 {
            trailers.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            decode_all(&trailers, 10).unwrap_err(),
            HttpError::TrailersTooLarge
        );
        // Leading zeros are fine, however many, up to the line limit.
        assert_eq!(
            decode_all(b"0000000000000000000000000001\r\nx\r\n0\r\n\r\n", 10)
                .unwrap()
                .1,
            b"x"
        );
    }
}

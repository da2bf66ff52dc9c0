//! Request heads: where one ends, and what its request line and fields say.

use super::{HttpError, MAX_HEADERS};

/// The result of looking for the end of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadScan {
    /// The head ends (its empty line included) at this offset.
    Complete(usize),
    /// No end yet; the next search may start at `resume`: no terminator starts
    /// before it.
    Partial { resume: usize },
}

/// Looks for the empty line ending a head in `buf`, starting at `from` (an earlier
/// `resume`, or 0). A line ends with `\n` or `\r\n`, so the head ends at the first
/// `\n\n` or `\n\r\n`.
pub(crate) fn find_end(buf: &[u8], from: usize) -> HeadScan {
    let mut i = from.min(buf.len());
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return HeadScan::Complete(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return HeadScan::Complete(nl + 3),
            // Cannot tell yet whether this newline starts the terminator.
            (None, _) | (Some(b'\r'), None) => return HeadScan::Partial { resume: nl },
            _ => i = nl + 1,
        }
    }
    HeadScan::Partial { resume: buf.len() }
}

/// The request methods the routes care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// The paths the session serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/`
    Root,
    /// `/echo`
    Echo,
    /// Anything else.
    Other,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the session needs to know about a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: Method,
    pub(crate) route: Route,
    /// The minor HTTP version: 0 or 1.
    pub(crate) minor: u8,
    /// Whether the client asked for (or defaulted to) a persistent connection.
    pub(crate) keep_alive: bool,
    pub(crate) framing: Framing,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub(crate) expect_continue: bool,
    /// The first `Content-Type` field's value.
    pub(crate) content_type: Option<&'a [u8]>,
}

/// Parses a complete head (as delimited by [`find_end`]) and checks its framing.
/// A `Content-Length` above `max_body` is refused here.
pub(crate) fn parse(head: &[u8], max_body: u64) -> Result<RequestHead<'_>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(HttpError::Malformed("request head ends unexpectedly")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(if names_a_version(request_line_version(head)) {
                HttpError::UnsupportedVersion
            } else {
                HttpError::Malformed("invalid HTTP version")
            });
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::Malformed("invalid header name"));
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::Malformed("invalid header value"));
        }
        Err(httparse::Error::NewLine) => return Err(HttpError::Malformed("invalid line ending")),
        Err(httparse::Error::Token | httparse::Error::Status) => {
            return Err(HttpError::Malformed("invalid request line"));
        }
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let route = match target_path(target.as_bytes()) {
        b"/" => Route::Root,
        b"/echo" => Route::Echo,
        _ => Route::Other,
    };
    let fields = Fields::collect(req.headers);
    if minor >= 1 && fields.hosts == 0 {
        return Err(HttpError::MissingHost);
    }
    if fields.hosts > 1 {
        return Err(HttpError::DuplicateHost);
    }
    let framing = fields.framing(minor, max_body)?;
    let keep_alive = !fields.conn_close && (minor >= 1 || fields.conn_keep_alive);
    Ok(RequestHead {
        method,
        route,
        minor,
        keep_alive,
        framing,
        expect_continue: minor >= 1 && fields.expect_continue,
        content_type: fields.content_type,
    })
}

/// The header fields that matter, gathered in one pass.
#[derive(Debug, Default)]
struct Fields<'a> {
    hosts: usize,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
    content_type: Option<&'a [u8]>,
    content_length: ContentLength,
    /// Whether any `Transfer-Encoding` field was present.
    te: bool,
    /// Whether a `Transfer-Encoding` field listed no coding at all.
    te_empty: bool,
    /// Transfer codings listed, over every `Transfer-Encoding` field.
    codings: usize,
    /// How many of them are `chunked`.
    chunked: usize,
}

/// What the `Content-Length` fields say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ContentLength {
    #[default]
    Absent,
    Value(u64),
    Invalid,
}

impl ContentLength {
    /// Folds in one more `Content-Length` field. A list of identical values, within a
    /// field or across fields, is one value (RFC 9110 §8.6); anything else is invalid.
    fn merge(self, value: &[u8]) -> Self {
        let mut acc = self;
        let mut any = false;
        for element in value.split(|&b| b == b',') {
            any = true;
            acc = match (acc, parse_decimal(trim_ows(element))) {
                (ContentLength::Invalid, _) | (_, None) => ContentLength::Invalid,
                (ContentLength::Absent, Some(n)) => ContentLength::Value(n),
                (ContentLength::Value(m), Some(n)) if m == n => ContentLength::Value(n),
                (ContentLength::Value(_), Some(_)) => ContentLength::Invalid,
            };
        }
        if any { acc } else { ContentLength::Invalid }
    }
}

impl<'a> Fields<'a> {
    fn collect(headers: &[httparse::Header<'a>]) -> Self {
        let mut f = Fields::default();
        for h in headers {
            let name = h.name.as_bytes();
            let value = trim_ows(h.value);
            if name.eq_ignore_ascii_case(b"host") {
                f.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn_keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                f.content_length = f.content_length.merge(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.te = true;
                let mut empty = true;
                for coding in list(value) {
                    empty = false;
                    f.codings += 1;
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        f.chunked += 1;
                    }
                }
                f.te_empty |= empty;
            } else if name.eq_ignore_ascii_case(b"expect") {
                if list(value).any(|e| e.eq_ignore_ascii_case(b"100-continue")) {
                    f.expect_continue = true;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") && f.content_type.is_none() {
                f.content_type = Some(value);
            }
        }
        f
    }

    /// How the body is delimited (RFC 9112 §6).
    fn framing(&self, minor: u8, max_body: u64) -> Result<Framing, HttpError> {
        if self.te {
            if self.content_length != ContentLength::Absent {
                return Err(HttpError::ConflictingFraming);
            }
            if minor == 0 {
                return Err(HttpError::BadTransferEncoding("not allowed in HTTP/1.0"));
            }
            if self.te_empty {
                return Err(HttpError::BadTransferEncoding("empty"));
            }
            if self.chunked < self.codings {
                // A coding we cannot decode, wherever it is in the list.
                return Err(HttpError::UnsupportedTransferCoding);
            }
            if self.chunked > 1 {
                return Err(HttpError::BadTransferEncoding("chunked applied twice"));
            }
            return Ok(Framing::Chunked);
        }
        match self.content_length {
            ContentLength::Absent => Ok(Framing::None),
            ContentLength::Invalid => Err(HttpError::BadContentLength),
            ContentLength::Value(n) if n > max_body => Err(HttpError::BodyTooLarge),
            ContentLength::Value(n) => Ok(Framing::Length(n)),
        }
    }
}

/// `1*DIGIT` as a number; `None` when empty, not all digits, or past `u64::MAX`.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// `value` without leading and trailing spaces and tabs.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The non-empty elements of a comma-separated field value, trimmed.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// The path of a request target: the query is dropped, and so are the scheme and
/// authority of an absolute-form target (`http://host/path`).
fn target_path(target: &[u8]) -> &[u8] {
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    let scheme_len = if has_prefix_ignore_case(path, b"http://") {
        7
    } else if has_prefix_ignore_case(path, b"https://") {
        8
    } else {
        return path;
    };
    let after = &path[scheme_len..];
    match after.iter().position(|&b| b == b'/') {
        Some(slash) => &after[slash..],
        None => b"/",
    }
}

fn has_prefix_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The last space-separated word of the request line: where the version goes.
fn request_line_version(head: &[u8]) -> &[u8] {
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(nl) => &head[..nl],
        None => head,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.rsplit(|&b| b == b' ').next().unwrap_or(line)
}

/// Whether `word` is a well-formed HTTP version, `HTTP/<digits>[.<digits>]`.
fn names_a_version(word: &[u8]) -> bool {
    let Some(number) = word.strip_prefix(b"HTTP/") else {
        return false;
    };
    let mut parts = number.splitn(2, |&b| b == b'.');
    let all_digits = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    parts.next().is_some_and(all_digits) && parts.next().is_none_or(all_digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n\r\n", 0),
            HeadScan::Complete(18)
        );
        assert_eq!(
            find_end(b"GET / HTTP/1.1\n\nrest", 0),
            HeadScan::Complete(16)
        );
        assert_eq!(find_end(b"GET / HTTP/1.1\n\r\n", 0), HeadScan::Complete(17));
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n", 0),
            HeadScan::Partial { resume: 15 }
        );
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n\r", 0),
            HeadScan::Partial { resume: 15 }
        );
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\nA: b", 0),
            HeadScan::Partial { resume: 20 }
        );
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n\rX\n\n", 0),
            HeadScan::Complete(20)
        );
        // Resuming where the last search stopped finds the same end.
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n\r\n", 15),
            HeadScan::Complete(18)
        );
        assert_eq!(find_end(b"ab", 99), HeadScan::Partial { resume: 2 });
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"000123"), Some(123));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"123456789012345678901234567890"), None);
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x10", b"1.0", b" 1"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_length_lists() {
        let cl = |vals: &[&[u8]]| {
            vals.iter()
                .fold(ContentLength::Absent, |acc, v| acc.merge(trim_ows(v)))
        };
        assert_eq!(cl(&[b"5"]), ContentLength::Value(5));
        assert_eq!(cl(&[b"5, 5"]), ContentLength::Value(5));
        assert_eq!(cl(&[b"5", b"5"]), ContentLength::Value(5));
        assert_eq!(cl(&[b"5", b"6"]), ContentLength::Invalid);
        assert_eq!(cl(&[b"5, 6"]), ContentLength::Invalid);
        assert_eq!(cl(&[b"5,"]), ContentLength::Invalid);
        assert_eq!(cl(&[b""]), ContentLength::Invalid);
        assert_eq!(cl(&[b"abc", b"5"]), ContentLength::Invalid);
    }

    #[test]
    fn lists_and_trimming() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        let items: Vec<&[u8]> = list(b" keep-alive ,, Upgrade,").collect();
        assert_eq!(items, [&b"keep-alive"[..], b"Upgrade"]);
    }

    #[test]
    fn target_paths() {
        assert_eq!(target_path(b"/"), b"/");
        assert_eq!(target_path(b"/?a=b"), b"/");
        assert_eq!(target_path(b"/echo?x"), b"/echo");
        assert_eq!(target_path(b"http://example.com/echo?x"), b"/echo");
        assert_eq!(target_path(b"HTTPS://example.com"), b"/");
        assert_eq!(target_path(b"http://example.com?q"), b"/");
        assert_eq!(target_path(b"*"), b"*");
        assert_eq!(target_path(b"/echo/"), b"/echo/");
    }

    #[test]
    fn versions() {
        assert_eq!(
            request_line_version(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            b"HTTP/2.0"
        );
        assert!(names_a_version(b"HTTP/2.0"));
        assert!(names_a_version(b"HTTP/3.1"));
        assert!(names_a_version(b"HTTP/2"));
        assert!(!names_a_version(b"HTTP/"));
        assert!(!names_a_version(b"HTTP/1.x"));
        assert!(!names_a_version(b"HTTP/1."));
        assert!(!names_a_version(b"FOO/1.1"));
        assert!(!names_a_version(b"/"));
    }

    fn head(text: &str) -> Result<RequestHead<'_>, HttpError> {
        parse(text.as_bytes(), 1000)
    }

    #[test]
    fn framing_rules() {
        let h = head("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h =
            head("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
        let err = |t| head(t).unwrap_err();
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            HttpError::UnsupportedTransferCoding
        );
        assert_eq!(
            err(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            HttpError::BadTransferEncoding("chunked applied twice")
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n"),
            HttpError::BadTransferEncoding("empty")
        );
        assert_eq!(
            err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::BadTransferEncoding("not allowed in HTTP/1.0")
        );
    }

    #[test]
    fn persistence_and_expectations() {
        let h = head("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!h.expect_continue, "HTTP/1.0 expectations are ignored");
        let h = head("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert!(h.expect_continue);
    }
}

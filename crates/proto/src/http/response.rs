//! Writing response heads.

use crate::Cx;

/// The status codes the session answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    NotImplemented,
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub(crate) fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::ContentTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::VersionNotSupported => 505,
        }
    }

    /// The status line, CRLF included.
    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Status::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\n",
            Status::ContentTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Status::HeaderFieldsTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Status::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
        }
    }

    /// A short text body for an error response.
    pub(crate) fn text(self) -> &'static [u8] {
        match self {
            Status::Ok => b"OK\n",
            Status::BadRequest => b"Bad Request\n",
            Status::NotFound => b"Not Found\n",
            Status::MethodNotAllowed => b"Method Not Allowed\n",
            Status::RequestTimeout => b"Request Timeout\n",
            Status::ContentTooLarge => b"Content Too Large\n",
            Status::HeaderFieldsTooLarge => b"Request Header Fields Too Large\n",
            Status::NotImplemented => b"Not Implemented\n",
            Status::VersionNotSupported => b"HTTP Version Not Supported\n",
        }
    }
}

/// The `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conn {
    /// None: HTTP/1.1 persistence is the default.
    Default,
    /// `Connection: keep-alive`, for a persistent HTTP/1.0 connection.
    KeepAlive,
    /// `Connection: close`: the session closes after this response.
    Close,
}

impl Conn {
    /// The header for a response to an HTTP/1.`minor` request.
    pub(crate) fn new(minor: u8, close: bool) -> Self {
        if close {
            Conn::Close
        } else if minor == 0 {
            Conn::KeepAlive
        } else {
            Conn::Default
        }
    }
}

/// A response head: status line and header fields.
#[derive(Debug)]
pub(crate) struct ResponseHead<'a> {
    pub(crate) status: Status,
    pub(crate) content_type: &'a [u8],
    pub(crate) content_length: u64,
    /// The `Allow` field value, for 405.
    pub(crate) allow: Option<&'static [u8]>,
    pub(crate) conn: Conn,
}

impl ResponseHead<'_> {
    /// Appends the head, the empty line included, to `out`.
    pub(crate) fn write(&self, cx: &Cx, out: &mut Vec<u8>) {
        out.extend_from_slice(self.status.line());
        out.extend_from_slice(b"Server: c10k\r\nDate: ");
        out.extend_from_slice(cx.http_date());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type);
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_decimal(out, self.content_length);
        out.extend_from_slice(b"\r\n");
        if let Some(allow) = self.allow {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(allow);
            out.extend_from_slice(b"\r\n");
        }
        match self.conn {
            Conn::Default => {}
            Conn::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Conn::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        for n in [0, 7, 10, 13, 999, 1000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn status_lines_match_codes() {
        for s in [
            Status::Ok,
            Status::BadRequest,
            Status::NotFound,
            Status::MethodNotAllowed,
            Status::ContentTooLarge,
            Status::HeaderFieldsTooLarge,
            Status::NotImplemented,
            Status::VersionNotSupported,
        ] {
            let line = format!("HTTP/1.1 {} ", s.code());
            assert!(s.line().starts_with(line.as_bytes()));
            assert!(s.line().ends_with(b"\r\n"));
        }
    }
}

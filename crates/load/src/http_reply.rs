//! Framing HTTP/1.x responses on the client side: where one response ends.
//!
//! The head is parsed with httparse; the body is `Content-Length` bytes. That is all a
//! load generator needs from the servers it measures (c10k's HTTP app, nginx's
//! `return 200`): chunked responses and bodies delimited by the close are reported as
//! unsupported rather than guessed at.

/// The most headers a response may have.
const MAX_HEADERS: usize = 64;

/// The longest response head accepted (beyond it the reply is called malformed).
pub const MAX_HEAD: usize = 64 * 1024;

/// One complete response at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFrame {
    /// Bytes the response takes, head and body.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The body's length.
    pub body_len: usize,
    /// The server said `Connection: close` (or answered HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Why bytes are not a response this framer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not HTTP/1.x (httparse's reason).
    Malformed(String),
    /// A head longer than [`MAX_HEAD`].
    HeadTooLong,
    /// No `Content-Length` (chunked, or delimited by the close), or an unreadable one.
    NoContentLength,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Malformed(why) => write!(f, "malformed HTTP response: {why}"),
            FrameError::HeadTooLong => write!(f, "HTTP response head over {MAX_HEAD} bytes"),
            FrameError::NoContentLength => {
                write!(f, "HTTP response without a usable Content-Length")
            }
        }
    }
}

/// Frames the first response in `input`: `Ok(None)` while it is incomplete.
pub fn frame_response(input: &[u8]) -> Result<Option<ResponseFrame>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Err(FrameError::HeadTooLong);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut body_len = None;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| FrameError::NoContentLength)?;
            let n: usize = text
                .trim()
                .parse()
                .map_err(|_| FrameError::NoContentLength)?;
            body_len = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if value.contains("close") {
                close = true;
            } else if value.contains("keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FrameError::NoContentLength);
        }
    }
    // 1xx, 204 and 304 responses have no body.
    let bodyless = status < 200 || status == 204 || status == 304;
    let body_len = match body_len {
        Some(n) => n,
        None if bodyless => 0,
        None => return Err(FrameError::NoContentLength),
    };
    let len = head_len + body_len;
    if input.len() < len {
        return Ok(None);
    }
    Ok(Some(ResponseFrame {
        len,
        status,
        body_len,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

    #[test]
    fn frames_a_response_at_every_split() {
        for cut in 0..OK.len() {
            assert_eq!(frame_response(&OK[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = OK.to_vec();
        two.extend_from_slice(OK);
        let frame = frame_response(&two).unwrap().unwrap();
        assert_eq!(frame.len, OK.len());
        assert_eq!(frame.status, 200);
        assert_eq!(frame.body_len, 13);
        assert!(!frame.close);
    }

    #[test]
    fn close_and_versions() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(frame_response(r).unwrap().unwrap().close);
        let r = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno";
        let f = frame_response(r).unwrap().unwrap();
        assert_eq!((f.status, f.close, f.len), (404, true, r.len()));
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(frame_response(r).unwrap().unwrap().body_len, 0);
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert!(matches!(
            frame_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            frame_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(FrameError::NoContentLength)
        );
        assert_eq!(
            frame_response(b"HTTP/1.1 200 OK\r\n\r\nbody until close"),
            Err(FrameError::NoContentLength)
        );
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(frame_response(&long), Err(FrameError::HeadTooLong));
    }
}

//! HTTP/1.x server session: a sans-IO state machine over the bytes of one connection.
//!
//! Routes:
//! - `GET /` and `HEAD /`: `200 OK`, `text/plain`, `Hello, World!` (the query string
//!   is ignored);
//! - `POST /echo`: `200 OK` whose body is the request body, with the request's
//!   `Content-Type` when it has a plain one, `application/octet-stream` otherwise;
//! - a known path with another method: `405` with `Allow`; any other path: `404`.
//!
//! Every response has a `HTTP/1.1` status line and carries `Server`, `Date` and
//! `Content-Length`. Responses to `HEAD` carry no body.
//!
//! # Bodies
//!
//! A `Content-Length` echo body is streamed: the response head (with the same
//! `Content-Length`) is written as soon as the request head is parsed, and body bytes
//! are copied to `out` and consumed as they are offered, so the session never holds
//! the body.
//!
//! A chunked echo body is decoded and accumulated (up to [`HttpConfig::max_body`]),
//! then answered with a `Content-Length` response. Streaming it back as a chunked
//! response would save that buffer, but an oversized body could then no longer be
//! answered with `413` (the `200` head would already be out), and every response
//! would no longer carry a `Content-Length`.
//!
//! Bodies of requests whose body is not used (`404`, `405`, `GET /` with a body) are
//! read and discarded before the response is written, so framing stays right; the
//! same [`HttpConfig::max_body`] limit applies to them.
//!
//! # Connection management
//!
//! HTTP/1.1 keeps the connection alive unless `Connection: close`; HTTP/1.0 closes
//! unless `Connection: keep-alive` (answered with `Connection: keep-alive`). A response
//! after which the session closes carries `Connection: close`, and input pipelined
//! behind that request is left unconsumed.
//!
//! `Expect: 100-continue` on an HTTP/1.1 request whose body will be read gets an
//! interim `100 Continue` first. If the body would not be used (`404`, `405`), the
//! final response is sent at once with `Connection: close` and the body is not read:
//! a client waiting for `100` may never send it, so the framing could not be trusted.
//!
//! # Errors
//!
//! A request that cannot be served gets an error response with `Connection: close`
//! and [`Session::handle_input`] returns the [`HttpError`]: see [`HttpError::status`]
//! for the mapping to status codes.
//!
//! # Strictness
//!
//! Heads are parsed by `httparse` with its default (strict) settings; a head may end
//! with a bare `\n\n`, and empty lines before a request line are skipped. Chunk
//! framing must use CRLF line endings. A `Transfer-Encoding` on an HTTP/1.0 request is
//! rejected with `400`, as is an HTTP/1.1 request without exactly one `Host` field.

mod chunked;
mod head;
mod response;
#[cfg(test)]
mod tests;

use crate::{App, Cx, OUT_BATCH_LIMIT, Peer, ProtoError, Session};
use chunked::ChunkedDecoder;
use head::{Framing, HeadScan, Method, RequestHead, Route};
use response::{Conn, ResponseHead, Status};

/// Largest request head accepted, request line and header fields included (431 past it).
pub const MAX_HEAD: usize = 64 * 1024;

/// Most header fields accepted in one request head (431 past it).
pub const MAX_HEADERS: usize = 100;

/// Default largest request body accepted (413 past it): 8 MiB.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Why an HTTP request could not be served.
///
/// The session has already written the matching error response (see
/// [`status`](HttpError::status)) with `Connection: close` when it returns one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request head did not end within [`MAX_HEAD`] bytes (431).
    #[error("request head larger than {} bytes", MAX_HEAD)]
    HeadTooLarge,
    /// The request head has more than [`MAX_HEADERS`] header fields (431).
    #[error("more than {} header fields", MAX_HEADERS)]
    TooManyHeaders,
    /// The chunked body's trailer section is larger than [`MAX_HEAD`] bytes (431).
    #[error("trailer section larger than {} bytes", MAX_HEAD)]
    TrailersTooLarge,
    /// The request body is larger than the configured limit (413).
    #[error("request body larger than the configured limit")]
    BodyTooLarge,
    /// The request line or a header field is malformed (400).
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// `Content-Length` is not a number, is too large to represent, or has
    /// conflicting values (400).
    #[error("invalid Content-Length")]
    BadContentLength,
    /// The request has both `Content-Length` and `Transfer-Encoding` (400).
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    /// `Transfer-Encoding` is malformed: empty, `chunked` twice, or sent in an
    /// HTTP/1.0 request (400).
    #[error("invalid Transfer-Encoding: {0}")]
    BadTransferEncoding(&'static str),
    /// `Transfer-Encoding` names a coding other than `chunked` (501).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The chunked body is malformed (400).
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    /// An HTTP/1.1 request without a `Host` field (400).
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// A request with more than one `Host` field (400).
    #[error("more than one Host field")]
    DuplicateHost,
    /// The request's HTTP version is well-formed but not 1.0 or 1.1 (505).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// The request was not complete within the server's request timeout (408).
    #[error("request not complete in time")]
    RequestTimeout,
}

impl HttpError {
    /// The status code of the response the session answers this error with.
    pub fn status(&self) -> u16 {
        self.response_status().code()
    }

    fn response_status(&self) -> Status {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::TrailersTooLarge => {
                Status::HeaderFieldsTooLarge
            }
            HttpError::BodyTooLarge => Status::ContentTooLarge,
            HttpError::Malformed(_)
            | HttpError::BadContentLength
            | HttpError::ConflictingFraming
            | HttpError::BadTransferEncoding(_)
            | HttpError::BadChunk(_)
            | HttpError::MissingHost
            | HttpError::DuplicateHost => Status::BadRequest,
            HttpError::UnsupportedTransferCoding => Status::NotImplemented,
            HttpError::UnsupportedVersion => Status::VersionNotSupported,
            HttpError::RequestTimeout => Status::RequestTimeout,
        }
    }
}

/// Settings shared by every session of an [`HttpApp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; larger ones are answered with `413`.
    /// Chunked echo bodies are buffered up to this size.
    pub max_body: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_body: MAX_BODY }
    }
}

/// Opens [`HttpSession`]s.
#[derive(Debug, Clone, Default)]
pub struct HttpApp {
    config: HttpConfig,
}

impl HttpApp {
    /// An app whose sessions use `config`.
    pub fn new(config: HttpConfig) -> Self {
        HttpApp { config }
    }

    /// The configuration the sessions use.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }
}

impl App for HttpApp {
    type Session = HttpSession;
    fn open(&self, _peer: &Peer) -> HttpSession {
        HttpSession::new(self.config)
    }
}

/// One HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpSession {
    max_body: u64,
    state: State,
    /// The connection is finished: the last response said `Connection: close`, an
    /// error was answered, or the peer sent EOF.
    closed: bool,
    /// The server is shutting down: close after the current or next response.
    draining: bool,
    /// The last call left unconsumed bytes of a request that has not been started
    /// (a partial head, or requests held back by [`OUT_BATCH_LIMIT`]).
    head_pending: bool,
    /// The request being handled is a `HEAD` request: its responses, error responses
    /// included, carry no body.
    head_only: bool,
    /// Requests answered since the last [`Session::take_requests`].
    answered: u64,
    /// Bytes examined looking for the end of heads (to check scanning is linear).
    #[cfg(test)]
    scan_work: usize,
}

/// Where the session is in the current request.
#[derive(Debug)]
enum State {
    /// Waiting for a request head. `scanned` bytes from its start (the start of the
    /// input the driver offers next) hold no head terminator.
    Head { scanned: usize },
    /// Reading a request body.
    Body(Body),
}

/// A request body being read.
#[derive(Debug)]
struct Body {
    framing: BodyFraming,
    sink: Sink,
    after: After,
}

/// How the end of the body is found.
#[derive(Debug)]
enum BodyFraming {
    /// This many bytes remain.
    Length { remaining: u64 },
    /// Chunked transfer coding.
    Chunked(ChunkedDecoder),
}

/// Where body bytes go.
#[derive(Debug)]
enum Sink {
    /// Dropped: the response does not use the body.
    Discard,
    /// Appended to `out`: the echo response head is already written.
    Stream,
    /// Kept until the body is complete, then echoed.
    Buffer(Vec<u8>),
}

/// What happens once the body is complete.
#[derive(Debug)]
enum After {
    /// The response is already complete once the body has been streamed; `close` is
    /// whether its head announced `Connection: close`.
    Done { close: bool },
    /// Write this response (with the buffered body, for an echo).
    Respond(Pending),
}

/// A response to write once the request is complete.
#[derive(Debug)]
struct Pending {
    reply: Reply,
    minor: u8,
    keep_alive: bool,
}

/// What a complete request is answered with.
#[derive(Debug)]
enum Reply {
    Hello,
    NotFound,
    MethodNotAllowed {
        allow: &'static [u8],
    },
    /// The request body, with this content type (the default when `None`).
    Echo {
        content_type: Option<Vec<u8>>,
    },
}

const HELLO: &[u8] = b"Hello, World!";
const TEXT_PLAIN: &[u8] = b"text/plain";
const OCTET_STREAM: &[u8] = b"application/octet-stream";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl HttpSession {
    /// A session for a new connection.
    pub fn new(config: HttpConfig) -> Self {
        HttpSession {
            max_body: u64::try_from(config.max_body).unwrap_or(u64::MAX),
            state: State::Head { scanned: 0 },
            closed: false,
            draining: false,
            head_pending: false,
            head_only: false,
            answered: 0,
            #[cfg(test)]
            scan_work: 0,
        }
    }

    /// Handles as much of `input` as possible, advancing `*pos` past what is consumed.
    fn drive(
        &mut self,
        cx: &Cx,
        input: &[u8],
        pos: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<(), HttpError> {
        while !self.closed {
            match &mut self.state {
                State::Body(_) => {
                    if !self.read_body(cx, &input[*pos..], pos, out)? {
                        // The body needs more bytes; all of the input is consumed.
                        break;
                    }
                }
                State::Head { scanned } => {
                    let skipped = skip_empty_lines(&input[*pos..]);
                    if skipped > 0 {
                        // What was scanned began with a lone `\r` that turned out
                        // to start an empty line: the head starts after it.
                        *scanned = 0;
                        *pos += skipped;
                    }
                    let rest = &input[*pos..];
                    if rest.is_empty() || out.len() >= OUT_BATCH_LIMIT {
                        break;
                    }
                    let window = &rest[..rest.len().min(MAX_HEAD)];
                    let from = (*scanned).min(window.len());
                    #[cfg(test)]
                    {
                        self.scan_work += window.len() - from;
                    }
                    match head::find_end(window, from) {
                        HeadScan::Partial { resume } => {
                            if window.len() >= MAX_HEAD {
                                // No terminator within MAX_HEAD bytes: none can come
                                // soon enough.
                                return Err(HttpError::HeadTooLarge);
                            }
                            *scanned = resume;
                            break;
                        }
                        HeadScan::Complete(end) => {
                            let head_bytes = &rest[..end];
                            self.head_only = head_bytes.starts_with(b"HEAD ");
                            let head = head::parse(head_bytes, self.max_body)?;
                            *pos += end;
                            self.state = State::Head { scanned: 0 };
                            self.start_request(cx, &head, out);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on a parsed request head: answers it at once, or sets up the body.
    fn start_request(&mut self, cx: &Cx, head: &RequestHead<'_>, out: &mut Vec<u8>) {
        let reply = match (head.route, head.method) {
            (Route::Root, Method::Get | Method::Head) => Reply::Hello,
            (Route::Root, _) => Reply::MethodNotAllowed {
                allow: b"GET, HEAD",
            },
            (Route::Echo, Method::Post) => Reply::Echo { content_type: None },
            (Route::Echo, _) => Reply::MethodNotAllowed { allow: b"POST" },
            (Route::Other, _) => Reply::NotFound,
        };
        let mut pending = Pending {
            reply,
            minor: head.minor,
            keep_alive: head.keep_alive,
        };
        let framing = match head.framing {
            Framing::None | Framing::Length(0) => {
                let close = self.respond(cx, out, &pending, &[]);
                self.finish_request(close);
                return;
            }
            Framing::Length(len) => BodyFraming::Length { remaining: len },
            Framing::Chunked => BodyFraming::Chunked(ChunkedDecoder::new()),
        };
        let echo = matches!(pending.reply, Reply::Echo { .. });
        if !echo && head.expect_continue {
            // The client may hold the body back until it sees `100 Continue`, which
            // it will not get: answer now and close, since the framing of what
            // follows is unknown.
            pending.keep_alive = false;
            let close = self.respond(cx, out, &pending, &[]);
            self.finish_request(close);
            return;
        }
        if head.expect_continue {
            out.extend_from_slice(CONTINUE);
        }
        let body = match framing {
            BodyFraming::Length { remaining } if echo => {
                // Stream: the head now, the body bytes as they arrive.
                let close = !head.keep_alive || self.draining;
                ResponseHead {
                    status: Status::Ok,
                    content_type: echo_content_type(head.content_type),
                    content_length: remaining,
                    allow: None,
                    conn: Conn::new(head.minor, close),
                }
                .write(cx, out);
                Body {
                    framing,
                    sink: Sink::Stream,
                    after: After::Done { close },
                }
            }
            _ => {
                let sink = if echo {
                    pending.reply = Reply::Echo {
                        content_type: head
                            .content_type
                            .filter(|ct| is_plain_content_type(ct))
                            .map(<[u8]>::to_vec),
                    };
                    Sink::Buffer(Vec::new())
                } else {
                    Sink::Discard
                };
                Body {
                    framing,
                    sink,
                    after: After::Respond(pending),
                }
            }
        };
        self.state = State::Body(body);
    }

    /// Reads body bytes from `rest` (the unconsumed input), advancing `*pos`. Returns
    /// whether the body (and so the request) is complete.
    fn read_body(
        &mut self,
        cx: &Cx,
        rest: &[u8],
        pos: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, HttpError> {
        let State::Body(body) = &mut self.state else {
            return Ok(true);
        };
        let done = match &mut body.framing {
            BodyFraming::Length { remaining } => {
                let n = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                body.sink.put(&rest[..n], out);
                *pos += n;
                // n <= *remaining, so this cannot underflow.
                *remaining -= n as u64;
                *remaining == 0
            }
            BodyFraming::Chunked(decoder) => {
                let sink = &mut body.sink;
                let used = decoder.decode(rest, self.max_body, |data| sink.put(data, out))?;
                *pos += used;
                decoder.is_done()
            }
        };
        if !done {
            return Ok(false);
        }
        let State::Body(body) = std::mem::replace(&mut self.state, State::Head { scanned: 0 })
        else {
            return Ok(true);
        };
        let close = match body.after {
            After::Done { close } => close || self.draining,
            After::Respond(pending) => {
                let data = match &body.sink {
                    Sink::Buffer(data) => data.as_slice(),
                    Sink::Discard | Sink::Stream => &[],
                };
                self.respond(cx, out, &pending, data)
            }
        };
        self.finish_request(close);
        Ok(true)
    }

    /// Writes the response to a complete request. Returns whether the session closes
    /// after it.
    fn respond(&self, cx: &Cx, out: &mut Vec<u8>, pending: &Pending, body: &[u8]) -> bool {
        let close = !pending.keep_alive || self.draining;
        let (status, content_type, content, allow): (_, &[u8], &[u8], _) = match &pending.reply {
            Reply::Hello => (Status::Ok, TEXT_PLAIN, HELLO, None),
            Reply::NotFound => (Status::NotFound, TEXT_PLAIN, b"Not Found\n", None),
            Reply::MethodNotAllowed { allow } => (
                Status::MethodNotAllowed,
                TEXT_PLAIN,
                b"Method Not Allowed\n",
                Some(*allow),
            ),
            Reply::Echo { content_type } => (
                Status::Ok,
                content_type.as_deref().unwrap_or(OCTET_STREAM),
                body,
                None,
            ),
        };
        ResponseHead {
            status,
            content_type,
            content_length: content.len() as u64,
            allow,
            conn: Conn::new(pending.minor, close),
        }
        .write(cx, out);
        if !self.head_only {
            out.extend_from_slice(content);
        }
        close
    }

    /// The request is answered: get ready for the next one, or close.
    fn finish_request(&mut self, close: bool) {
        self.answered += 1;
        self.state = State::Head { scanned: 0 };
        self.head_only = false;
        if close {
            self.closed = true;
        }
    }

    /// Answers `err` and closes.
    fn fail(&mut self, cx: &Cx, out: &mut Vec<u8>, err: &HttpError) {
        let status = err.response_status();
        let text = status.text();
        ResponseHead {
            status,
            content_type: TEXT_PLAIN,
            content_length: text.len() as u64,
            allow: None,
            conn: Conn::Close,
        }
        .write(cx, out);
        if !self.head_only {
            out.extend_from_slice(text);
        }
        self.close_now();
    }

    /// Closes, dropping any request state (and its buffer).
    fn close_now(&mut self) {
        self.closed = true;
        self.head_pending = false;
        self.head_only = false;
        self.state = State::Head { scanned: 0 };
    }
}

impl Sink {
    /// Takes body bytes.
    fn put(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            Sink::Discard => {}
            Sink::Stream => out.extend_from_slice(data),
            Sink::Buffer(buf) => buf.extend_from_slice(data),
        }
    }
}

/// How many bytes of empty lines (`\r\n` or `\n`) start `input`. A trailing lone `\r`
/// is left for the next call, which will know what follows it.
fn skip_empty_lines(input: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match input.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

/// Whether a request's content type can be repeated in the echo response as is:
/// short, non-empty, printable ASCII.
fn is_plain_content_type(ct: &[u8]) -> bool {
    !ct.is_empty() && ct.len() <= 256 && ct.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The content type of an echo response to a request with `request_ct`.
fn echo_content_type(request_ct: Option<&[u8]>) -> &[u8] {
    request_ct
        .filter(|ct| is_plain_content_type(ct))
        .unwrap_or(OCTET_STREAM)
}

impl Session for HttpSession {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        if self.closed {
            return Ok(0);
        }
        let mut pos = 0;
        match self.drive(cx, input, &mut pos, out) {
            Ok(()) => {
                self.head_pending =
                    !self.closed && matches!(self.state, State::Head { .. }) && pos < input.len();
                Ok(pos)
            }
            Err(err) => {
                self.fail(cx, out, &err);
                Err(err.into())
            }
        }
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.close_now();
    }

    fn wants_close(&self) -> bool {
        self.closed
    }

    fn mid_request(&self) -> bool {
        !self.closed && (self.head_pending || matches!(self.state, State::Body(_)))
    }

    fn start_drain(&mut self) {
        self.draining = true;
        if !self.mid_request() {
            self.close_now();
        }
    }

    fn take_requests(&mut self) -> u64 {
        std::mem::take(&mut self.answered)
    }

    fn handle_timeout(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        // A 408 is only possible while no response head is out; a streamed echo whose
        // head is already written can only be cut short.
        let head_written = matches!(
            &self.state,
            State::Body(Body {
                sink: Sink::Stream,
                ..
            })
        );
        if self.closed || head_written {
            self.close_now();
        } else {
            self.fail(cx, out, &HttpError::RequestTimeout);
        }
    }
}

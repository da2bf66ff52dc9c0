//! Session tests: request streams replayed split at every byte boundary, and one byte
//! at a time, must produce the same transcript as when offered whole.

use super::*;
use crate::{App, Cx, OUT_BATCH_LIMIT, Peer, ProtoError, Session};
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

fn cx() -> Cx {
    Cx::new(UNIX_EPOCH + Duration::from_secs(784_111_777))
}

/// Everything observable about a session after some input.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    out: Vec<u8>,
    err: Option<HttpError>,
    closed: bool,
    mid: bool,
}

impl Transcript {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// Drives a session the way a real driver does: received bytes are appended to a
/// buffer, the whole buffer is offered, and what was consumed is drained.
struct Driver {
    cx: Cx,
    s: HttpSession,
    buf: Vec<u8>,
    out: Vec<u8>,
    err: Option<HttpError>,
}

impl Driver {
    fn new(config: HttpConfig) -> Self {
        Driver {
            cx: cx(),
            s: HttpApp::new(config).open(&Peer::unknown()),
            buf: Vec::new(),
            out: Vec::new(),
            err: None,
        }
    }

    /// Receives `bytes`, offering the buffer until the session makes no progress.
    /// Each call gets a fresh `out`, as if the previous one had been flushed.
    fn feed(&mut self, bytes: &[u8]) {
        if self.s.wants_close() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let mut out = Vec::new();
            let result = self.s.handle_input(&self.cx, &self.buf, &mut out);
            self.out.extend_from_slice(&out);
            match result {
                Ok(n) => {
                    assert!(n <= self.buf.len());
                    self.buf.drain(..n);
                    if n == 0 || self.s.wants_close() {
                        break;
                    }
                }
                Err(ProtoError::Http(e)) => {
                    assert!(self.s.wants_close(), "an error must close");
                    self.err = Some(e);
                    break;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }

    fn transcript(self) -> Transcript {
        Transcript {
            out: self.out,
            err: self.err,
            closed: self.s.wants_close(),
            mid: self.s.mid_request(),
        }
    }
}

/// Feeds `input` in pieces ending at each of `cuts` (ascending), then the rest.
fn run_cuts(config: HttpConfig, input: &[u8], cuts: &[usize]) -> Transcript {
    let mut d = Driver::new(config);
    let mut start = 0;
    for &cut in cuts {
        let cut = cut.clamp(start, input.len());
        d.feed(&input[start..cut]);
        start = cut;
    }
    d.feed(&input[start..]);
    d.transcript()
}

fn run_bytewise(config: HttpConfig, input: &[u8]) -> Transcript {
    let mut d = Driver::new(config);
    for b in input {
        d.feed(std::slice::from_ref(b));
    }
    d.transcript()
}

/// The transcript of `input` offered whole, after checking that splitting it at every
/// byte boundary, or feeding it a byte at a time, changes nothing.
fn check_with(config: HttpConfig, input: &[u8]) -> Transcript {
    let whole = run_cuts(config, input, &[]);
    for cut in 0..=input.len() {
        let split = run_cuts(config, input, &[cut]);
        assert_eq!(
            split,
            whole,
            "split at {cut} of {:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(run_bytewise(config, input), whole, "fed a byte at a time");
    whole
}

fn check(input: &[u8]) -> Transcript {
    check_with(HttpConfig::default(), input)
}

/// Like [`check`] for large inputs: a sample of split points, and a byte at a time.
fn check_large(input: &[u8]) -> Transcript {
    let config = HttpConfig::default();
    let whole = run_cuts(config, input, &[]);
    let step = (input.len() / 97).max(1);
    let near_limit = (MAX_HEAD.saturating_sub(4)..MAX_HEAD + 4).collect::<Vec<_>>();
    for cut in (0..=input.len()).step_by(step).chain(near_limit) {
        assert_eq!(run_cuts(config, input, &[cut]), whole, "split at {cut}");
    }
    assert_eq!(run_bytewise(config, input), whole, "fed a byte at a time");
    whole
}

/// A response as the session writes it.
fn response(status: &str, content_type: &str, body: &str, extra: &[&str]) -> String {
    let mut s = response_head(status, content_type, body.len(), extra);
    s.push_str(body);
    s
}

/// A response head as the session writes it (a response to HEAD stops there).
fn response_head(status: &str, content_type: &str, len: usize, extra: &[&str]) -> String {
    let mut s = format!(
        "HTTP/1.1 {status}\r\nServer: c10k\r\nDate: {DATE}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n"
    );
    for line in extra {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

fn hello(extra: &[&str]) -> String {
    response("200 OK", "text/plain", "Hello, World!", extra)
}

/// The error response for `status`, e.g. `"400 Bad Request"`.
fn error_response(status: &str) -> String {
    let reason = status.split_once(' ').map_or(status, |(_, r)| r);
    response(
        status,
        "text/plain",
        &format!("{reason}\n"),
        &["Connection: close"],
    )
}

/// Checks that `input` ends in the error response for `status` and `err`.
fn assert_error(input: &[u8], status: &str, err: HttpError) -> Transcript {
    let t = check(input);
    assert_error_transcript(&t, status, err);
    t
}

fn assert_error_transcript(t: &Transcript, status: &str, err: HttpError) {
    assert!(
        t.text().ends_with(&error_response(status)),
        "expected {status}, got {:?}",
        t.text()
    );
    assert_eq!(t.err.as_ref(), Some(&err));
    assert_eq!(err.status().to_string(), status[..3]);
    assert!(t.closed);
    assert!(!t.mid);
}

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

// ---------------------------------------------------------------------------------
// Routes

#[test]
fn get_root() {
    let t = check(GET.as_bytes());
    assert_eq!(t.text(), hello(&[]));
    assert_eq!(t.err, None);
    assert!(!t.closed);
    assert!(!t.mid);
}

#[test]
fn get_root_ignores_the_query() {
    let t = check(b"GET /?name=value&x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(t.text(), hello(&[]));
}

#[test]
fn get_root_in_absolute_form() {
    let t = check(b"GET http://example.com/?q HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(t.text(), hello(&[]));
}

#[test]
fn head_root_has_no_body() {
    let t = check(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(t.text(), response_head("200 OK", "text/plain", 13, &[]));
    assert!(!t.closed);
}

#[test]
fn unknown_path_is_404_and_keeps_the_connection() {
    let input = format!("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n{GET}");
    let t = check(input.as_bytes());
    let not_found = response("404 Not Found", "text/plain", "Not Found\n", &[]);
    assert_eq!(t.text(), format!("{not_found}{}", hello(&[])));
    assert!(!t.closed);

    let t = check(b"HEAD /echo/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        t.text(),
        response_head("404 Not Found", "text/plain", 10, &[])
    );
}

#[test]
fn wrong_method_is_405_with_allow() {
    let t = check(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        t.text(),
        response(
            "405 Method Not Allowed",
            "text/plain",
            "Method Not Allowed\n",
            &["Allow: POST"]
        )
    );
    // A body of a request we do not use is read and discarded.
    let input = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         DELETE / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{GET}"
    );
    let t = check(input.as_bytes());
    let not_allowed = response(
        "405 Method Not Allowed",
        "text/plain",
        "Method Not Allowed\n",
        &["Allow: GET, HEAD"],
    );
    assert_eq!(
        t.text(),
        format!("{not_allowed}{not_allowed}{}", hello(&[]))
    );
    assert!(!t.closed);
}

#[test]
fn get_with_a_body_discards_it() {
    let input = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc{GET}");
    let t = check(input.as_bytes());
    assert_eq!(t.text(), hello(&[]).repeat(2));
}

// ---------------------------------------------------------------------------------
// Echo

#[test]
fn echo_content_length() {
    let input =
        format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world{GET}");
    let t = check(input.as_bytes());
    let echo = response("200 OK", "application/octet-stream", "hello world", &[]);
    assert_eq!(t.text(), format!("{echo}{}", hello(&[])));
}

#[test]
fn echo_repeats_a_plain_content_type() {
    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv; charset=utf-8\r\nContent-Length: 3\r\n\r\na,b",
    );
    assert_eq!(
        t.text(),
        response("200 OK", "text/csv; charset=utf-8", "a,b", &[])
    );
    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: \xff\r\nContent-Length: 3\r\n\r\na,b",
    );
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "a,b", &[])
    );
}

#[test]
fn echo_without_a_body() {
    let t = check(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "", &[])
    );
    let t = check(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "", &[])
    );
}

#[test]
fn echo_content_length_streams() {
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
    let mut input = head.to_vec();
    input.extend_from_slice(b"abcd");
    assert_eq!(s.handle_input(&cx, &input, &mut out).unwrap(), input.len());
    let expected_head = response_head("200 OK", "application/octet-stream", 10, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("{expected_head}abcd")
    );
    assert!(s.mid_request());
    out.clear();
    assert_eq!(s.handle_input(&cx, b"efg", &mut out).unwrap(), 3);
    assert_eq!(out, b"efg");
    out.clear();
    let rest = format!("hij{GET}");
    assert_eq!(
        s.handle_input(&cx, rest.as_bytes(), &mut out).unwrap(),
        rest.len()
    );
    assert_eq!(String::from_utf8_lossy(&out), format!("hij{}", hello(&[])));
    assert!(!s.mid_request());
    assert!(!s.wants_close());
}

#[test]
fn echo_chunked_with_extensions_and_trailers() {
    let input = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
         5;name=value\r\nhello\r\n6 ; a ; b=\"q;x\"\r\n world\r\n0;end\r\nX-Checksum: 1\r\nY: 2\r\n\r\n{GET}"
    );
    let t = check(input.as_bytes());
    let echo = response("200 OK", "text/plain", "hello world", &[]);
    assert_eq!(t.text(), format!("{echo}{}", hello(&[])));
    assert!(!t.closed);
}

#[test]
fn echo_chunked_empty() {
    let t = check(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "", &[])
    );
}

// ---------------------------------------------------------------------------------
// Pipelining and persistence

#[test]
fn pipelined_requests_are_answered_in_one_call() {
    let input = format!(
        "{GET}POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    assert_eq!(
        s.handle_input(&cx, input.as_bytes(), &mut out).unwrap(),
        input.len()
    );
    let expected = format!(
        "{}{}{}",
        hello(&[]),
        response("200 OK", "application/octet-stream", "hi", &[]),
        response("404 Not Found", "text/plain", "Not Found\n", &[])
    );
    assert_eq!(String::from_utf8_lossy(&out), expected);
    assert_eq!(check(input.as_bytes()).text(), expected);
}

#[test]
fn leading_empty_lines_and_bare_newlines() {
    let input = format!("\r\n\n\r\n{GET}\r\n\r\nGET / HTTP/1.1\nHost: x\n\n");
    let t = check(input.as_bytes());
    assert_eq!(t.text(), hello(&[]).repeat(2));
    assert!(!t.mid);
}

#[test]
fn lone_cr_before_a_request_waits_for_its_lf() {
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    assert_eq!(s.handle_input(&cx, b"\r", &mut out).unwrap(), 0);
    let input = format!("\r\n{GET}");
    assert_eq!(
        s.handle_input(&cx, input.as_bytes(), &mut out).unwrap(),
        input.len()
    );
    assert_eq!(String::from_utf8_lossy(&out), hello(&[]));
    let t = assert_error(
        b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "400 Bad Request",
        HttpError::Malformed("invalid line ending"),
    );
    assert_eq!(t.text(), error_response("400 Bad Request"));
}

#[test]
fn http10_closes_by_default() {
    let t = check(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    assert_eq!(t.text(), hello(&["Connection: close"]));
    assert!(t.closed);
    assert_eq!(t.err, None);
}

#[test]
fn http10_keep_alive() {
    let req = "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    let t = check(format!("{req}{req}").as_bytes());
    assert_eq!(t.text(), hello(&["Connection: keep-alive"]).repeat(2));
    assert!(!t.closed);
}

#[test]
fn connection_close_stops_the_pipeline() {
    let first = "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade, Close\r\n\r\n";
    let input = format!("{first}{GET}");
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    assert_eq!(
        s.handle_input(&cx, input.as_bytes(), &mut out).unwrap(),
        first.len()
    );
    assert_eq!(String::from_utf8_lossy(&out), hello(&["Connection: close"]));
    assert!(s.wants_close());
    // Nothing more is consumed once closed.
    assert_eq!(s.handle_input(&cx, GET.as_bytes(), &mut out).unwrap(), 0);

    let t = check(input.as_bytes());
    assert_eq!(t.text(), hello(&["Connection: close"]));
    assert!(t.closed);
}

#[test]
fn out_batch_limit_stops_early() {
    let n = OUT_BATCH_LIMIT / hello(&[]).len() + 50;
    let input = GET.repeat(n);
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let used = s.handle_input(&cx, input.as_bytes(), &mut out).unwrap();
    assert!(used < input.len());
    assert_eq!(used % GET.len(), 0);
    assert!(out.len() >= OUT_BATCH_LIMIT);
    assert!(out.len() < OUT_BATCH_LIMIT + hello(&[]).len());
    assert_eq!(out.len(), used / GET.len() * hello(&[]).len());
    assert!(s.mid_request(), "requests are waiting");
    // Nothing new starts while `out` is still full.
    assert_eq!(
        s.handle_input(&cx, &input.as_bytes()[used..], &mut out)
            .unwrap(),
        0
    );
    // Once flushed, the rest is answered.
    let mut total = used;
    let mut responses = out.len() / hello(&[]).len();
    while total < input.len() {
        let mut out = Vec::new();
        let used = s
            .handle_input(&cx, &input.as_bytes()[total..], &mut out)
            .unwrap();
        assert!(used > 0);
        total += used;
        responses += out.len() / hello(&[]).len();
    }
    assert_eq!(responses, n);
    assert!(!s.mid_request());
}

// ---------------------------------------------------------------------------------
// Expect: 100-continue

const CONTINUE_TEXT: &str = "HTTP/1.1 100 Continue\r\n\r\n";

#[test]
fn expect_continue_before_reading_the_body() {
    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    );
    let echo = response("200 OK", "application/octet-stream", "hello", &[]);
    assert_eq!(t.text(), format!("{CONTINUE_TEXT}{echo}"));

    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(t.text(), format!("{CONTINUE_TEXT}{echo}"));
}

#[test]
fn expect_continue_without_a_body_gets_no_100() {
    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "", &[])
    );
}

#[test]
fn expect_continue_is_ignored_in_http10() {
    let t = check(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(
        t.text(),
        response(
            "200 OK",
            "application/octet-stream",
            "hi",
            &["Connection: close"]
        )
    );
}

#[test]
fn expect_continue_on_an_unused_body_answers_and_closes() {
    let t = check(
        b"POST /nope HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(
        t.text(),
        response(
            "404 Not Found",
            "text/plain",
            "Not Found\n",
            &["Connection: close"]
        )
    );
    assert!(t.closed);
    assert_eq!(t.err, None);
}

#[test]
fn expect_continue_with_a_body_too_large_is_413() {
    let input = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let t = assert_error(
        input.as_bytes(),
        "413 Content Too Large",
        HttpError::BodyTooLarge,
    );
    assert!(!t.text().contains("100 Continue"));
}

// ---------------------------------------------------------------------------------
// Errors

#[test]
fn head_without_end_within_max_head_is_431() {
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    input.resize(MAX_HEAD + 100, b'a');
    let t = check_large(&input);
    assert_error_transcript(
        &t,
        "431 Request Header Fields Too Large",
        HttpError::HeadTooLarge,
    );
}

/// A head of exactly `len` bytes.
fn head_of_len(len: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(len - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[test]
fn head_of_max_head_bytes_is_fine() {
    let t = check_large(&head_of_len(MAX_HEAD));
    assert_eq!(t.text(), hello(&[]));
    let t = check_large(&head_of_len(MAX_HEAD + 1));
    assert_error_transcript(
        &t,
        "431 Request Header Fields Too Large",
        HttpError::HeadTooLarge,
    );
}

#[test]
fn head_scanning_is_linear() {
    let head = head_of_len(MAX_HEAD - 1000);
    let mut d = Driver::new(HttpConfig::default());
    for b in &head[..head.len() - 1] {
        d.feed(std::slice::from_ref(b));
    }
    assert!(d.s.mid_request());
    d.feed(&head[head.len() - 1..]);
    assert!(!d.s.mid_request());
    assert!(
        d.s.scan_work <= 3 * head.len(),
        "{} bytes scanned",
        d.s.scan_work
    );
    assert_eq!(String::from_utf8_lossy(&d.out), hello(&[]));
}

fn with_headers(count: usize) -> Vec<u8> {
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 1..count {
        input.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    input.extend_from_slice(b"\r\n");
    input
}

#[test]
fn header_count_limit() {
    let t = check_large(&with_headers(MAX_HEADERS));
    assert_eq!(t.text(), hello(&[]));
    let t = check_large(&with_headers(MAX_HEADERS + 1));
    assert_error_transcript(
        &t,
        "431 Request Header Fields Too Large",
        HttpError::TooManyHeaders,
    );
}

#[test]
fn content_length_too_large_is_413() {
    let input = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_error(
        input.as_bytes(),
        "413 Content Too Large",
        HttpError::BodyTooLarge,
    );
    // Also for a body we would discard.
    let input = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_error(
        input.as_bytes(),
        "413 Content Too Large",
        HttpError::BodyTooLarge,
    );
    // Exactly the limit is fine.
    let input = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\nabc");
    let t = run_cuts(HttpConfig::default(), input.as_bytes(), &[]);
    assert!(t.text().starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(t.mid);
}

#[test]
fn chunked_body_too_large_is_413() {
    let config = HttpConfig { max_body: 10 };
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
    let t = check_with(config, input);
    assert_error_transcript(&t, "413 Content Too Large", HttpError::BodyTooLarge);
    let ok = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
    let t = check_with(config, ok);
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "helloworld", &[])
    );
    // A size past the limit is refused before its data arrives.
    let t = check_with(
        HttpConfig::default(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n",
    );
    assert_error_transcript(&t, "413 Content Too Large", HttpError::BodyTooLarge);
}

#[test]
fn malformed_heads_are_400() {
    let cases: &[(&[u8], HttpError)] = &[
        (
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            HttpError::Malformed("invalid request line"),
        ),
        (
            b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
            HttpError::Malformed("invalid request line"),
        ),
        (
            b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n",
            HttpError::Malformed("invalid line ending"),
        ),
        (
            b"GET / FOO/1.1\r\nHost: x\r\n\r\n",
            HttpError::Malformed("invalid HTTP version"),
        ),
        (
            b"GET /\r\n\r\n",
            HttpError::Malformed("invalid request line"),
        ),
        (
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            HttpError::Malformed("invalid header name"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            HttpError::Malformed("invalid header name"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n",
            HttpError::Malformed("invalid header name"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\x01\r\n\r\n",
            HttpError::Malformed("invalid header value"),
        ),
        (
            b"\x00\r\n\r\n",
            HttpError::Malformed("invalid request line"),
        ),
    ];
    for (input, err) in cases {
        assert_error(input, "400 Bad Request", err.clone());
    }
}

#[test]
fn malformed_after_good_requests() {
    let input = format!("{GET}{GET}BAD\r\n\r\n{GET}");
    let t = assert_error(
        input.as_bytes(),
        "400 Bad Request",
        HttpError::Malformed("invalid request line"),
    );
    assert_eq!(
        t.text(),
        format!(
            "{}{}",
            hello(&[]).repeat(2),
            error_response("400 Bad Request")
        )
    );
}

#[test]
fn invalid_content_length_is_400() {
    for value in ["abc", "-1", "+5", "1 2", "0x5", "5,", "", "5, 6"] {
        let input = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        assert_error(
            input.as_bytes(),
            "400 Bad Request",
            HttpError::BadContentLength,
        );
    }
    let input =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert_error(input, "400 Bad Request", HttpError::BadContentLength);
    // Repeated identical values are one value.
    let t = check(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(
        t.text(),
        response("200 OK", "application/octet-stream", "hi", &[])
    );
}

#[test]
fn absurd_numbers_are_400() {
    let input =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 123456789012345678901234567890\r\n\r\n";
    assert_error(input, "400 Bad Request", HttpError::BadContentLength);
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n";
    assert_error(input, "400 Bad Request", HttpError::BadContentLength);
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n123456789abcdef0123\r\n";
    assert_error(
        input,
        "400 Bad Request",
        HttpError::BadChunk("chunk size overflows"),
    );
}

#[test]
fn bad_chunk_framing_is_400() {
    let head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: &[(&str, &str)] = &[
        ("zz\r\n", "missing chunk size"),
        ("5x\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
        ("5;a\x01\r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
        ("0\r\nX: y\nZ\r\n\r\n", "invalid trailer line"),
        ("0\r\n\rX", "trailer line not ended by CRLF"),
    ];
    for (body, what) in cases {
        let input = format!("{head}{body}");
        assert_error(
            input.as_bytes(),
            "400 Bad Request",
            HttpError::BadChunk(what),
        );
    }
}

#[test]
fn content_length_and_transfer_encoding_is_400() {
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_error(input, "400 Bad Request", HttpError::ConflictingFraming);
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    assert_error(input, "400 Bad Request", HttpError::ConflictingFraming);
}

#[test]
fn unknown_transfer_coding_is_501() {
    for value in ["gzip", "gzip, chunked", "chunked, gzip", "identity"] {
        let input = format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_error(
            input.as_bytes(),
            "501 Not Implemented",
            HttpError::UnsupportedTransferCoding,
        );
    }
}

#[test]
fn bad_transfer_encoding_is_400() {
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n";
    assert_error(
        input,
        "400 Bad Request",
        HttpError::BadTransferEncoding("chunked applied twice"),
    );
    let input = b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_error(
        input,
        "400 Bad Request",
        HttpError::BadTransferEncoding("not allowed in HTTP/1.0"),
    );
}

#[test]
fn host_is_required_once_in_http11() {
    assert_error(
        b"GET / HTTP/1.1\r\n\r\n",
        "400 Bad Request",
        HttpError::MissingHost,
    );
    assert_error(
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "400 Bad Request",
        HttpError::DuplicateHost,
    );
    let t = check(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(t.text(), hello(&["Connection: close"]));
}

#[test]
fn unsupported_versions_are_505() {
    for version in ["HTTP/2.0", "HTTP/3.1", "HTTP/1.2", "HTTP/2"] {
        let input = format!("GET / {version}\r\nHost: x\r\n\r\n");
        assert_error(
            input.as_bytes(),
            "505 HTTP Version Not Supported",
            HttpError::UnsupportedVersion,
        );
    }
    // The HTTP/2 connection preface.
    assert_error(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "505 HTTP Version Not Supported",
        HttpError::UnsupportedVersion,
    );
}

#[test]
fn error_responses_to_head_have_no_body() {
    let t = check(b"HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!(
        t.text(),
        response_head("400 Bad Request", "text/plain", 12, &["Connection: close"])
    );
    assert_eq!(t.err, Some(HttpError::MissingHost));
}

// ---------------------------------------------------------------------------------
// Drain, EOF, mid_request

#[test]
fn drain_when_idle_closes_at_once() {
    let mut s = HttpApp::default().open(&Peer::unknown());
    assert!(!s.mid_request());
    s.start_drain();
    assert!(s.wants_close());

    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    s.handle_input(&cx, GET.as_bytes(), &mut out).unwrap();
    assert!(!s.mid_request());
    s.start_drain();
    assert!(s.wants_close());
}

#[test]
fn drain_mid_head_closes_after_the_response() {
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let partial = b"GET / HTTP/1.1\r\nHo";
    assert_eq!(s.handle_input(&cx, partial, &mut out).unwrap(), 0);
    assert!(s.mid_request());
    s.start_drain();
    assert!(!s.wants_close());
    let input = format!("{GET}{GET}");
    assert_eq!(
        s.handle_input(&cx, input.as_bytes(), &mut out).unwrap(),
        GET.len()
    );
    assert_eq!(String::from_utf8_lossy(&out), hello(&["Connection: close"]));
    assert!(s.wants_close());
}

#[test]
fn drain_mid_body_closes_after_the_response() {
    let cx = cx();
    // Chunked echo: the response is not written yet, so it says close.
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n";
    assert_eq!(s.handle_input(&cx, head, &mut out).unwrap(), head.len());
    assert!(out.is_empty());
    assert!(s.mid_request());
    s.start_drain();
    assert!(!s.wants_close());
    s.handle_input(&cx, b"0\r\n\r\n", &mut out).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        response(
            "200 OK",
            "application/octet-stream",
            "hi",
            &["Connection: close"]
        )
    );
    assert!(s.wants_close());

    // Discarded body: likewise.
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab";
    assert_eq!(s.handle_input(&cx, head, &mut out).unwrap(), head.len());
    s.start_drain();
    assert_eq!(s.handle_input(&cx, b"cd", &mut out).unwrap(), 2);
    assert_eq!(
        String::from_utf8_lossy(&out),
        response(
            "404 Not Found",
            "text/plain",
            "Not Found\n",
            &["Connection: close"]
        )
    );
    assert!(s.wants_close());

    // Streamed echo: the head is already out; the session closes after the body.
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab";
    assert_eq!(s.handle_input(&cx, head, &mut out).unwrap(), head.len());
    s.start_drain();
    assert!(!s.wants_close());
    let rest = format!("cd{GET}");
    assert_eq!(s.handle_input(&cx, rest.as_bytes(), &mut out).unwrap(), 2);
    assert_eq!(
        String::from_utf8_lossy(&out),
        response("200 OK", "application/octet-stream", "abcd", &[])
    );
    assert!(s.wants_close());
}

#[test]
fn eof_closes_and_drops_a_partial_request() {
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    let partial = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
    s.handle_input(&cx, partial, &mut out).unwrap();
    assert!(s.mid_request());
    s.handle_eof(&cx, &mut out);
    assert!(s.wants_close());
    assert!(!s.mid_request());
    assert!(out.is_empty());
    assert_eq!(
        s.handle_input(&cx, b"lo\r\n0\r\n\r\n", &mut out).unwrap(),
        0
    );
}

#[test]
fn mid_request_tracks_heads_and_bodies() {
    let cx = cx();
    let mut s = HttpApp::default().open(&Peer::unknown());
    let mut out = Vec::new();
    assert!(!s.mid_request());
    // Empty lines alone are not a request.
    assert_eq!(s.handle_input(&cx, b"\r\n\r\n", &mut out).unwrap(), 4);
    assert!(!s.mid_request());
    assert_eq!(s.handle_input(&cx, b"GE", &mut out).unwrap(), 0);
    assert!(s.mid_request());
    let input = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na";
    assert_eq!(s.handle_input(&cx, input, &mut out).unwrap(), input.len());
    assert!(s.mid_request());
    assert_eq!(s.handle_input(&cx, b"bc", &mut out).unwrap(), 2);
    assert!(!s.mid_request());
}

// ---------------------------------------------------------------------------------
// Properties

/// Encodes `body` as chunks of the given sizes (cycled), with optional extensions
/// and trailers.
fn chunked(body: &[u8], sizes: &[usize], ext: bool, trailers: bool) -> Vec<u8> {
    let mut enc = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        i += 1;
        enc.extend_from_slice(format!("{n:x}").as_bytes());
        if ext && i % 2 == 0 {
            enc.extend_from_slice(b";i=\"x\"");
        }
        enc.extend_from_slice(b"\r\n");
        enc.extend_from_slice(&rest[..n]);
        enc.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    enc.extend_from_slice(b"0\r\n");
    if trailers {
        enc.extend_from_slice(b"X-Trailer: done\r\n");
    }
    enc.extend_from_slice(b"\r\n");
    enc
}

/// Splits `out` into (status code, body) pairs, using each response's Content-Length.
fn parse_responses(mut out: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut responses = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(out).unwrap() else {
            panic!("incomplete response");
        };
        let code = resp.code.unwrap();
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        responses.push((code, out[n..n + len].to_vec()));
        out = &out[n + len..];
    }
    responses
}

proptest! {
    #[test]
    fn chunked_echo_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in proptest::collection::vec(1usize..700, 1..8),
        ext in any::<bool>(),
        trailers in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut input =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(&chunked(&body, &sizes, ext, trailers));
        input.extend_from_slice(GET.as_bytes());
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let t = run_cuts(HttpConfig::default(), &input, &cuts);
        prop_assert_eq!(&t, &run_cuts(HttpConfig::default(), &input, &[]));
        prop_assert_eq!(t.err, None);
        let responses = parse_responses(&t.out);
        prop_assert_eq!(responses.len(), 2);
        prop_assert_eq!(responses[0].0, 200);
        prop_assert_eq!(&responses[0].1, &body);
        prop_assert_eq!(&responses[1].1, b"Hello, World!");
    }

    #[test]
    fn content_length_echo_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut input = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(&body);
        input.extend_from_slice(GET.as_bytes());
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let t = run_cuts(HttpConfig::default(), &input, &cuts);
        let responses = parse_responses(&t.out);
        prop_assert_eq!(responses.len(), 2);
        prop_assert_eq!(&responses[0].1, &body);
        prop_assert!(!t.closed);
    }

    #[test]
    fn any_input_any_split_same_transcript(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(GET.as_bytes().to_vec()),
                Just(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec()),
                Just(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
                Just(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
                Just(b"3;x\r\nabc\r\n".to_vec()),
                Just(b"0\r\n\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"Expect: 100-continue\r\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
            0..8,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let input = parts.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = run_cuts(HttpConfig { max_body: 64 }, &input, &[]);
        let split = run_cuts(HttpConfig { max_body: 64 }, &input, &cuts);
        prop_assert_eq!(&split, &whole);
        if let Some(err) = &whole.err {
            prop_assert!(whole.closed);
            let status = format!("HTTP/1.1 {} ", err.status());
            prop_assert!(whole.text().contains(&status));
        }
    }
}

#[test]
fn timeout_mid_head_answers_408_and_closes() {
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = HttpApp::default().open(&crate::Peer::unknown());
    let mut out = Vec::new();
    assert_eq!(
        s.handle_input(&cx, b"GET / HTTP/1.1\r\nHost: x\r\n", &mut out)
            .unwrap(),
        0
    );
    assert!(s.mid_request());
    s.handle_timeout(&cx, &mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
    assert!(s.wants_close());
}

#[test]
fn timeout_mid_streamed_echo_closes_without_a_second_head() {
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = HttpApp::default().open(&crate::Peer::unknown());
    let mut out = Vec::new();
    let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
    assert_eq!(s.handle_input(&cx, req, &mut out).unwrap(), req.len());
    out.clear();
    s.handle_timeout(&cx, &mut out);
    assert!(out.is_empty());
    assert!(s.wants_close());
}

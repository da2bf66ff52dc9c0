//! Session tests: transcripts replayed under every split, commands, errors, limits.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::{App, Cx, OUT_BATCH_LIMIT, Peer, ProtoError, Session};

/// Some Unix time in milliseconds (November 2023).
const T0: u64 = 1_700_000_000_000;

fn cx_at(ms: u64) -> Cx {
    Cx::new(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A multibulk request.
fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(args, &mut out);
    out
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Drives a session the way a server does: it keeps the bytes not consumed and offers
/// them again, with whatever arrives next appended; it flushes `out` after each call.
struct Conn {
    session: RespSession,
    pending: Vec<u8>,
    out: Vec<u8>,
    error: Option<RespError>,
}

impl Conn {
    fn new(app: &impl App<Session = RespSession>) -> Self {
        Conn {
            session: app.open(&Peer::unknown()),
            pending: Vec::new(),
            out: Vec::new(),
            error: None,
        }
    }

    fn send(&mut self, cx: &Cx, bytes: &[u8]) {
        if self.session.wants_close() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        loop {
            let mut out = Vec::new();
            let result = self.session.handle_input(cx, &self.pending, &mut out);
            self.out.extend_from_slice(&out);
            match result {
                Ok(used) => {
                    assert!(used <= self.pending.len());
                    self.pending.drain(..used);
                    if used == 0 || self.pending.is_empty() || self.session.wants_close() {
                        break;
                    }
                }
                Err(ProtoError::Resp(err)) => {
                    assert!(self.session.wants_close(), "an error must close");
                    self.error = Some(err);
                    break;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Sends one request and returns the replies it produced.
    fn request(&mut self, cx: &Cx, bytes: &[u8]) -> Vec<u8> {
        self.send(cx, bytes);
        self.take()
    }
}

/// Replays `request` whole, split in two at every byte boundary, and one byte at a
/// time; every run must produce exactly `expected`, and close iff `closes`.
fn transcript(request: &[u8], expected: &[u8], closes: bool) {
    let cx = cx_at(T0);
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>, how: &str| {
        let app = RespApp::new();
        let mut conn = Conn::new(&app);
        for chunk in chunks {
            conn.send(&cx, chunk);
        }
        assert_eq!(show(&conn.out), show(expected), "{how}");
        assert_eq!(conn.session.wants_close(), closes, "{how}");
        if !closes {
            assert!(
                conn.pending.is_empty(),
                "{how}: unconsumed {}",
                show(&conn.pending)
            );
            assert!(!conn.session.mid_request(), "{how}");
        }
    };
    run(&mut std::iter::once(request), "whole");
    for cut in 0..=request.len() {
        run(
            &mut [&request[..cut], &request[cut..]].into_iter(),
            &format!("split at {cut}"),
        );
    }
    run(&mut request.chunks(1), "byte by byte");
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn ping_and_echo() {
    transcript(
        &join(&[
            &cmd(&[b"PING"]),
            &cmd(&[b"ping", b"hello world"]),
            b"PING\r\nping\n",
            b"PiNg \"a b\"\r\n",
            &cmd(&[b"PING", b"a", b"b"]),
            &cmd(&[b"ECHO", b"x\r\n\0y"]),
            &cmd(&[b"echo"]),
            &cmd(&[b"ECHO", b""]),
        ]),
        &join(&[
            b"+PONG\r\n$11\r\nhello world\r\n+PONG\r\n+PONG\r\n$3\r\na b\r\n",
            b"-ERR wrong number of arguments for 'ping' command\r\n",
            b"$5\r\nx\r\n\0y\r\n",
            b"-ERR wrong number of arguments for 'echo' command\r\n",
            b"$0\r\n\r\n",
        ]),
        false,
    );
}

#[test]
fn set_and_get() {
    transcript(
        &join(&[
            &cmd(&[b"SET", b"k", b"v"]),
            &cmd(&[b"GET", b"k"]),
            &cmd(&[b"get", b"missing"]),
            &cmd(&[b"SET", b"a\r\nb\0", b"\0\r\n\r\n"]),
            &cmd(&[b"GET", b"a\r\nb\0"]),
            &cmd(&[b"SET", b"k", b""]),
            &cmd(&[b"GET", b"k"]),
            &cmd(&[b"GET"]),
            &cmd(&[b"GET", b"k", b"extra"]),
            &cmd(&[b"SET", b"k"]),
        ]),
        &join(&[
            b"+OK\r\n$1\r\nv\r\n$-1\r\n",
            b"+OK\r\n$5\r\n\0\r\n\r\n\r\n",
            b"+OK\r\n$0\r\n\r\n",
            b"-ERR wrong number of arguments for 'get' command\r\n",
            b"-ERR wrong number of arguments for 'get' command\r\n",
            b"-ERR wrong number of arguments for 'set' command\r\n",
        ]),
        false,
    );
}

#[test]
fn set_options() {
    transcript(
        &join(&[
            b"SET k v NX\r\nSET k w nx\r\nGET k\r\n",
            b"SET k w XX\r\nSET missing v xx\r\nGET missing\r\n",
            b"SET k x GET\r\nSET new x GET\r\nGET new\r\n",
            b"SET k y NX GET\r\nGET k\r\nSET gone y XX GET\r\nGET gone\r\n",
            b"SET k v EX 10 EX 20\r\nSET k v ex 10\r\nSET k v PX 5 KEEPTTL\r\n",
        ]),
        &join(&[
            b"+OK\r\n$-1\r\n$1\r\nv\r\n",
            b"+OK\r\n$-1\r\n$-1\r\n",
            b"$1\r\nw\r\n$-1\r\n$1\r\nx\r\n",
            b"$1\r\nx\r\n$1\r\nx\r\n$-1\r\n$-1\r\n",
            b"+OK\r\n+OK\r\n-ERR syntax error\r\n",
        ]),
        false,
    );
}

#[test]
fn set_option_errors() {
    let syntax = b"-ERR syntax error\r\n";
    let invalid = b"-ERR invalid expire time in 'set' command\r\n";
    let integer = b"-ERR value is not an integer or out of range\r\n";
    let cases: Vec<(&[u8], &[u8])> = vec![
        (b"SET k v NX XX\r\n", syntax),
        (b"SET k v XX NX\r\n", syntax),
        (b"SET k v EX\r\n", syntax),
        (b"SET k v EX 10 PX 10\r\n", syntax),
        (b"SET k v EX 10 KEEPTTL\r\n", syntax),
        (b"SET k v KEEPTTL EX 10\r\n", syntax),
        (b"SET k v FOO\r\n", syntax),
        (b"SET k v EX abc FOO\r\n", syntax),
        (b"SET k v EX 0\r\n", invalid),
        (b"SET k v PX -1\r\n", invalid),
        (b"SET k v PXAT 0\r\n", invalid),
        (b"SET k v EXAT -5\r\n", invalid),
        (b"SET k v EX 9223372036854775807\r\n", invalid),
        (b"SET k v PX 9223372036854775807\r\n", invalid),
        (b"SET k v EX 1.5\r\n", integer),
        (b"SET k v PX abc\r\n", integer),
        (b"SET k v EXAT 99999999999999999999\r\n", integer),
    ];
    for (request, reply) in cases {
        transcript(request, reply, false);
        // None of them wrote anything.
        let mut conn = Conn::new(&RespApp::new());
        conn.request(&cx_at(T0), request);
        assert_eq!(conn.request(&cx_at(T0), b"DBSIZE\r\n"), b":0\r\n");
    }
}

#[test]
fn del_and_exists() {
    transcript(
        &join(&[
            b"SET a 1\r\nSET b 2\r\n",
            b"EXISTS a b a c\r\nDEL a a c\r\nEXISTS a\r\nexists b\r\n",
            b"DEL\r\nEXISTS\r\nDEL b\r\nDBSIZE\r\n",
        ]),
        &join(&[
            b"+OK\r\n+OK\r\n",
            b":3\r\n:1\r\n:0\r\n:1\r\n",
            b"-ERR wrong number of arguments for 'del' command\r\n",
            b"-ERR wrong number of arguments for 'exists' command\r\n",
            b":1\r\n:0\r\n",
        ]),
        false,
    );
}

#[test]
fn counters() {
    transcript(
        &join(&[
            b"INCR n\r\nINCRBY n 10\r\nDECR n\r\nDECRBY n 20\r\nGET n\r\n",
            b"INCRBY n x\r\nINCRBY n 01\r\nDECRBY n 1.5\r\n",
            b"SET s abc\r\nINCR s\r\nSET s \" 1\"\r\nINCR s\r\nSET s 007\r\nDECR s\r\n",
            b"SET big 9223372036854775807\r\nINCR big\r\nINCRBY big 0\r\n",
            b"SET min -9223372036854775808\r\nDECR min\r\nINCR min\r\n",
            b"DECRBY n -9223372036854775808\r\nINCRBY n -9223372036854775808\r\n",
            b"INCR\r\nINCRBY n\r\nDECRBY n 1 2\r\n",
        ]),
        &join(&[
            b":1\r\n:11\r\n:10\r\n:-10\r\n$3\r\n-10\r\n",
            b"-ERR value is not an integer or out of range\r\n",
            b"-ERR value is not an integer or out of range\r\n",
            b"-ERR value is not an integer or out of range\r\n",
            b"+OK\r\n-ERR value is not an integer or out of range\r\n",
            b"+OK\r\n-ERR value is not an integer or out of range\r\n",
            b"+OK\r\n-ERR value is not an integer or out of range\r\n",
            b"+OK\r\n-ERR increment or decrement would overflow\r\n:9223372036854775807\r\n",
            b"+OK\r\n-ERR increment or decrement would overflow\r\n:-9223372036854775807\r\n",
            b"-ERR decrement would overflow\r\n",
            b"-ERR increment or decrement would overflow\r\n",
            b"-ERR wrong number of arguments for 'incr' command\r\n",
            b"-ERR wrong number of arguments for 'incrby' command\r\n",
            b"-ERR wrong number of arguments for 'decrby' command\r\n",
        ]),
        false,
    );
}

#[test]
fn mset_and_mget() {
    transcript(
        &join(&[
            b"MSET a 1 b 2 a 3\r\nMGET a b c a\r\n",
            b"MSET a\r\nMSET a 1 b\r\nMGET\r\nMGET c\r\n",
        ]),
        &join(&[
            b"+OK\r\n*4\r\n$1\r\n3\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n",
            b"-ERR wrong number of arguments for 'mset' command\r\n",
            b"-ERR wrong number of arguments for 'mset' command\r\n",
            b"-ERR wrong number of arguments for 'mget' command\r\n",
            b"*1\r\n$-1\r\n",
        ]),
        false,
    );
}

#[test]
fn config_command_select_flush_dbsize() {
    transcript(
        &join(&[
            b"CONFIG GET *\r\nconfig get save appendonly\r\nCONFIG GET maxmemory\r\n",
            b"CONFIG\r\nCONFIG GET\r\n",
            b"CONFIG SET a b\r\nCONFIG RESETSTAT\r\n",
            b"COMMAND\r\nCOMMAND DOCS\r\ncommand count\r\n",
            b"SELECT 0\r\nSELECT 1\r\nSELECT -1\r\nSELECT x\r\nSELECT 99999999999\r\nSELECT\r\n",
            b"SET a 1\r\nSET b 2\r\nDBSIZE\r\nFLUSHDB\r\nDBSIZE\r\nSET a 1\r\n",
            b"FLUSHALL ASYNC\r\nDBSIZE\r\nFLUSHALL foo\r\nflushall sync\r\nFLUSHDB a b\r\nDBSIZE x\r\n",
        ]),
        &join(&[
            b"*4\r\n$10\r\nappendonly\r\n$2\r\nno\r\n$4\r\nsave\r\n$0\r\n\r\n",
            b"*4\r\n$10\r\nappendonly\r\n$2\r\nno\r\n$4\r\nsave\r\n$0\r\n\r\n",
            b"*0\r\n",
            b"-ERR wrong number of arguments for 'config' command\r\n",
            b"-ERR wrong number of arguments for 'config|get' command\r\n",
            b"-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n+OK\r\n",
            b"*0\r\n*0\r\n*0\r\n",
            b"+OK\r\n-ERR DB index is out of range\r\n-ERR DB index is out of range\r\n",
            b"-ERR value is not an integer or out of range\r\n",
            b"-ERR value is not an integer or out of range\r\n",
            b"-ERR wrong number of arguments for 'select' command\r\n",
            b"+OK\r\n+OK\r\n:2\r\n+OK\r\n:0\r\n+OK\r\n",
            b"+OK\r\n:0\r\n-ERR syntax error\r\n+OK\r\n-ERR syntax error\r\n",
            b"-ERR wrong number of arguments for 'dbsize' command\r\n",
        ]),
        false,
    );
}

#[test]
fn unknown_commands() {
    let x200 = vec![b'x'; 200];
    let a100 = vec![b'a'; 100];
    let b100 = vec![b'b'; 100];
    let z200 = vec![b'z'; 200];
    let prefix = b"-ERR unknown command '";
    transcript(
        &join(&[
            b"FOO\r\nfoo a b\r\n",
            &cmd(&[b"nope", &x200]),
            &cmd(&[b"nope", &a100, &b100, b"c"]),
            &cmd(&[&z200, b"a"]),
            &cmd(&[b"nope", b"a\r\nb", b"c\0d"]),
            &cmd(&[b"", b"a"]),
            &cmd(&[b"GETX", b"a"]),
        ]),
        &join(&[
            b"-ERR unknown command 'FOO', with args beginning with: \r\n",
            b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
            prefix,
            b"nope', with args beginning with: '",
            &x200[..128],
            b"' \r\n",
            prefix,
            b"nope', with args beginning with: '",
            &a100,
            b"' '",
            &b100[..25],
            b"' \r\n",
            prefix,
            &z200[..128],
            b"', with args beginning with: 'a' \r\n",
            b"-ERR unknown command 'nope', with args beginning with: 'a  b' 'c' \r\n",
            b"-ERR unknown command '', with args beginning with: 'a' \r\n",
            b"-ERR unknown command 'GETX', with args beginning with: 'a' \r\n",
        ]),
        false,
    );
}

#[test]
fn quit_replies_then_closes() {
    transcript(b"PING\r\nQUIT\r\nPING\r\n", b"+PONG\r\n+OK\r\n", true);
    transcript(&join(&[&cmd(&[b"quit"]), b"garbage"]), b"+OK\r\n", true);
    let mut conn = Conn::new(&RespApp::new());
    conn.send(&cx_at(T0), b"QUIT\r\nPING\r\n");
    assert!(conn.error.is_none());
    assert_eq!(conn.pending, b"PING\r\n");
}

#[test]
fn empty_commands_are_ignored() {
    transcript(
        b"*0\r\n*-1\r\n*-5\r\n\r\n\n   \r\n\t\n*1\r\n$4\r\nPING\r\n",
        b"+PONG\r\n",
        false,
    );
}

#[test]
fn inline_commands_with_quotes() {
    transcript(
        &join(&[
            b"SET \"my key\" 'it\\'s'\r\nGET \"my key\"\r\n",
            b"ECHO \"\\x41\\x00\\n\\\"\\\\\"\n",
            b"  echo\t'two  spaces'  \r\n",
            b"MSET a \"\" b ''\r\nMGET a b\r\n",
        ]),
        &join(&[
            b"+OK\r\n$4\r\nit's\r\n",
            b"$5\r\nA\0\n\"\\\r\n",
            b"$11\r\ntwo  spaces\r\n",
            b"+OK\r\n*2\r\n$0\r\n\r\n$0\r\n\r\n",
        ]),
        false,
    );
}

#[test]
fn protocol_errors_reply_and_close() {
    let cases: Vec<(&[u8], &[u8])> = vec![
        (
            b"*abc\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1048577\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*3\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$-1\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$abc\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$536870913\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\nfoo\r\n",
            b"-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n:1\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1\r\n$3\r\nfooXY",
            b"-ERR Protocol error: expected CRLF after bulk data\r\n",
        ),
        (
            b"*1\r\n$3\r\nfoo\n\r",
            b"-ERR Protocol error: expected CRLF after bulk data\r\n",
        ),
        (
            b"ECHO \"abc\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"ECHO 'a'b\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (request, reply) in cases {
        transcript(request, reply, true);
        // Replies before the error are kept; nothing after it is processed.
        let mut stream = cmd(&[b"PING"]);
        stream.extend_from_slice(request);
        stream.extend_from_slice(b"PING\r\n");
        let mut expected = b"+PONG\r\n".to_vec();
        expected.extend_from_slice(reply);
        transcript(&stream, &expected, true);
    }
}

#[test]
fn protocol_error_is_reported_and_input_refused() {
    let mut conn = Conn::new(&RespApp::new());
    conn.send(&cx_at(T0), b"*x\r\n");
    assert_eq!(conn.error, Some(RespError::InvalidMultibulkLength));
    let mut out = Vec::new();
    let used = conn
        .session
        .handle_input(&cx_at(T0), b"PING\r\n", &mut out)
        .unwrap();
    assert_eq!((used, out.len()), (0, 0));
}

/// Sends `line` whole, in a few splits and byte by byte, expecting `reply` and a close
/// when `error` is given.
fn long_line(line: &[u8], reply: &[u8], error: Option<RespError>) {
    let cx = cx_at(T0);
    let len = line.len();
    let mut splits: Vec<Vec<&[u8]>> = vec![
        vec![line],
        line.chunks(1).collect(),
        line.chunks(4093).collect(),
    ];
    for cut in [1, 2, len / 2, len - 3, len - 2, len - 1] {
        splits.push(vec![&line[..cut], &line[cut..]]);
    }
    for chunks in splits {
        let mut conn = Conn::new(&RespApp::new());
        for chunk in &chunks {
            conn.send(&cx, chunk);
        }
        assert_eq!(show(&conn.out), show(reply), "{} chunks", chunks.len());
        assert_eq!(conn.error, error);
    }
}

#[test]
fn header_lines_are_limited() {
    let mut inline = b"ECHO ".to_vec();
    inline.resize(MAX_INLINE_LEN, b'a');
    let mut reply = format!("${}\r\n", MAX_INLINE_LEN - 5).into_bytes();
    reply.extend_from_slice(&inline[5..]);
    reply.extend_from_slice(b"\r\n");
    let mut ok = inline.clone();
    ok.extend_from_slice(b"\r\n");
    long_line(&ok, &reply, None);
    let mut ok = inline.clone();
    ok.push(b'\n');
    long_line(&ok, &reply, None);

    let mut too_long = inline.clone();
    too_long.extend_from_slice(b"a\r\n");
    long_line(
        &too_long,
        b"-ERR Protocol error: too big inline request\r\n",
        Some(RespError::TooBigInlineRequest),
    );
    // Without any newline at all.
    long_line(
        &vec![b'a'; MAX_INLINE_LEN + 2],
        b"-ERR Protocol error: too big inline request\r\n",
        Some(RespError::TooBigInlineRequest),
    );

    let mut mbulk = b"*".to_vec();
    mbulk.resize(MAX_INLINE_LEN + 10, b'1');
    long_line(
        &mbulk,
        b"-ERR Protocol error: too big mbulk count string\r\n",
        Some(RespError::TooBigMultibulkCount),
    );

    let mut bulk = b"*1\r\n$".to_vec();
    bulk.resize(MAX_INLINE_LEN + 10, b'1');
    long_line(
        &bulk,
        b"-ERR Protocol error: too big bulk count string\r\n",
        Some(RespError::TooBigBulkCount),
    );
}

#[test]
fn binary_values_round_trip() {
    let value: Vec<u8> = (0..=255u8).chain(b"\r\n\0\r\n".iter().copied()).collect();
    let request = join(&[
        &cmd(&[b"SET", b"\0key\r\n", &value]),
        &cmd(&[b"GET", b"\0key\r\n"]),
    ]);
    let mut expected = b"+OK\r\n".to_vec();
    Reply::Bulk(Some(value)).encode(&mut expected);
    transcript(&request, &expected, false);
}

#[test]
fn pipelined_commands_are_answered_in_one_call() {
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let key = format!("key:{i}");
        let value = format!("value {i}");
        if i % 2 == 0 {
            input.extend_from_slice(&cmd(&[b"SET", key.as_bytes(), value.as_bytes()]));
            expected.extend_from_slice(b"+OK\r\n");
        } else {
            let previous = format!("key:{}", i - 1);
            input.extend_from_slice(&cmd(&[b"GET", previous.as_bytes()]));
            Reply::Bulk(Some(format!("value {}", i - 1).into_bytes())).encode(&mut expected);
        }
    }
    let mut session = RespApp::new().open(&Peer::unknown());
    let mut out = Vec::new();
    assert_eq!(
        session.handle_input(&cx_at(T0), &input, &mut out).unwrap(),
        input.len()
    );
    assert_eq!(show(&out), show(&expected));
    assert!(!session.mid_request());
}

#[test]
fn stops_starting_commands_once_output_is_large() {
    let app = RespApp::new();
    let value = vec![b'v'; 100 * 1024];
    app.store().set(b"big", &value, None, T0);
    let get = cmd(&[b"GET", b"big"]);
    let input = get.repeat(10);
    let mut session = app.open(&Peer::unknown());
    let cx = cx_at(T0);
    let mut out = Vec::new();
    let used = session.handle_input(&cx, &input, &mut out).unwrap();
    // Three 100 KiB replies pass the 256 KiB limit; the rest waits.
    assert_eq!(used, 3 * get.len());
    assert!(out.len() >= OUT_BATCH_LIMIT);
    // With the output still unflushed, nothing more is started.
    assert_eq!(
        session.handle_input(&cx, &input[used..], &mut out).unwrap(),
        0
    );
    // Once flushed, the driver offers the rest again.
    let mut conn = Conn::new(&app);
    conn.send(&cx, &input);
    let mut one = Vec::new();
    Reply::Bulk(Some(value)).encode(&mut one);
    assert_eq!(conn.out.len(), 10 * one.len());
    assert!(conn.pending.is_empty());
}

#[test]
fn keys_expire_lazily_with_the_session_clock() {
    let app = RespApp::new();
    let mut conn = Conn::new(&app);
    let early = cx_at(T0);
    let late = cx_at(T0 + 1_500);
    let later = cx_at(T0 + 20_000);
    let set =
        |conn: &mut Conn, cx: &Cx, line: &str| conn.request(cx, format!("{line}\r\n").as_bytes());
    assert_eq!(set(&mut conn, &early, "SET px v PX 1000"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "SET ex v EX 10"), b"+OK\r\n");
    assert_eq!(
        set(&mut conn, &early, &format!("SET pxat v PXAT {}", T0 + 1000)),
        b"+OK\r\n"
    );
    assert_eq!(
        set(
            &mut conn,
            &early,
            &format!("SET exat v EXAT {}", T0 / 1000 + 10)
        ),
        b"+OK\r\n"
    );
    assert_eq!(set(&mut conn, &early, "SET keep v PX 1000"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "SET keep w KEEPTTL"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "SET cleared v PX 1000"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "SET cleared w"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "SET n 5 PX 1000"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &early, "INCR n"), b":6\r\n");
    assert_eq!(set(&mut conn, &early, "SET past v PXAT 1"), b"+OK\r\n");
    assert_eq!(
        set(
            &mut conn,
            &early,
            "EXISTS px ex pxat exat keep cleared n past"
        ),
        b":7\r\n"
    );
    assert_eq!(set(&mut conn, &early, "GET past"), b"$-1\r\n");
    assert_eq!(
        set(&mut conn, &late, "MGET px ex pxat exat keep cleared"),
        b"*6\r\n$-1\r\n$1\r\nv\r\n$-1\r\n$1\r\nv\r\n$-1\r\n$1\r\nw\r\n"
    );
    // INCR kept the expiry, and an expired counter starts again from 0.
    assert_eq!(set(&mut conn, &late, "INCR n"), b":1\r\n");
    assert_eq!(set(&mut conn, &late, "DBSIZE"), b":4\r\n");
    assert_eq!(set(&mut conn, &later, "DBSIZE"), b":2\r\n");
    // SET NX sees an expired key as absent; DEL does not count it.
    assert_eq!(set(&mut conn, &early, "SET x v PX 10"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &later, "SET x w NX GET"), b"$-1\r\n");
    assert_eq!(set(&mut conn, &later, "GET x"), b"$1\r\nw\r\n");
    assert_eq!(set(&mut conn, &early, "SET y v PX 10"), b"+OK\r\n");
    assert_eq!(set(&mut conn, &later, "DEL y"), b":0\r\n");
}

#[test]
fn a_huge_declared_bulk_is_not_allocated() {
    let mut session = RespApp::new().open(&Peer::unknown());
    let cx = cx_at(T0);
    let mut out = Vec::new();
    let header = b"*2\r\n$4\r\nECHO\r\n$536870912\r\nabc";
    assert_eq!(
        session.handle_input(&cx, header, &mut out).unwrap(),
        header.len()
    );
    assert!(out.is_empty());
    assert!(session.mid_request());
    assert!(
        session.parser.arena_capacity() <= 128 * 1024,
        "{}",
        session.parser.arena_capacity()
    );
    // Growth follows the bytes that arrive.
    let chunk = vec![b'x'; 1024 * 1024];
    assert_eq!(
        session.handle_input(&cx, &chunk, &mut out).unwrap(),
        chunk.len()
    );
    assert!(session.parser.arena_capacity() <= 3 * 1024 * 1024);
    assert!(session.mid_request());
}

#[test]
fn a_large_bulk_in_pieces_is_consumed_as_it_arrives() {
    let value: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let request = cmd(&[b"ECHO", &value]);
    let mut conn = Conn::new(&RespApp::new());
    for chunk in request.chunks(65_536) {
        conn.send(&cx_at(T0), chunk);
        // Everything but at most a header line or the final CRLF is taken at once.
        assert!(
            conn.pending.len() <= 16,
            "{} bytes left over",
            conn.pending.len()
        );
    }
    let mut expected = Vec::new();
    Reply::Bulk(Some(value)).encode(&mut expected);
    assert!(conn.out == expected);
}

#[test]
fn many_arguments_in_small_pieces() {
    let args: Vec<Vec<u8>> = (0..20_000).map(|i| format!("k{i}").into_bytes()).collect();
    let mut refs: Vec<&[u8]> = vec![b"EXISTS"];
    refs.extend(args.iter().map(Vec::as_slice));
    let request = cmd(&refs);
    let mut conn = Conn::new(&RespApp::new());
    for chunk in request.chunks(7) {
        conn.send(&cx_at(T0), chunk);
    }
    assert_eq!(conn.out, b":0\r\n");
}

#[test]
fn mid_request_tracks_partial_requests() {
    let mut conn = Conn::new(&RespApp::new());
    let cx = cx_at(T0);
    assert!(!conn.session.mid_request());
    conn.send(&cx, b"*2\r");
    assert!(conn.session.mid_request());
    conn.send(&cx, b"\n$4\r\nECHO\r\n$2\r\nh");
    assert!(conn.session.mid_request());
    conn.send(&cx, b"i\r");
    assert!(conn.session.mid_request());
    conn.send(&cx, b"\n");
    assert!(!conn.session.mid_request());
    conn.send(&cx, b"PIN");
    assert!(conn.session.mid_request());
    conn.send(&cx, b"G\r\n");
    assert!(!conn.session.mid_request());
    assert_eq!(conn.out, b"$2\r\nhi\r\n+PONG\r\n");
}

#[test]
fn drain_finishes_the_request_in_progress() {
    let mut conn = Conn::new(&RespApp::new());
    let cx = cx_at(T0);
    conn.send(&cx, b"*1\r\n$4\r\nPI");
    conn.session.start_drain();
    assert!(!conn.session.wants_close());
    conn.send(&cx, b"NG\r\nPING\r\n");
    assert!(conn.session.wants_close());
    assert_eq!(conn.out, b"+PONG\r\n");

    let mut idle = Conn::new(&RespApp::new());
    idle.session.start_drain();
    assert!(idle.session.wants_close());
}

#[test]
fn eof_closes() {
    let mut session = RespApp::new().open(&Peer::unknown());
    let cx = cx_at(T0);
    let mut out = Vec::new();
    session
        .handle_input(&cx, b"*1\r\n$4\r\nPI", &mut out)
        .unwrap();
    session.handle_eof(&cx, &mut out);
    assert!(session.wants_close());
    assert!(!session.mid_request());
    assert!(out.is_empty());
}

#[test]
fn sessions_of_one_app_share_the_store() {
    let app = RespApp::new();
    let cx = cx_at(T0);
    let mut a = Conn::new(&app);
    let mut b = Conn::new(&app);
    assert_eq!(a.request(&cx, b"SET shared 1\r\n"), b"+OK\r\n");
    assert_eq!(b.request(&cx, b"INCR shared\r\n"), b":2\r\n");
    assert_eq!(a.request(&cx, b"GET shared\r\n"), b"$1\r\n2\r\n");
    assert_eq!(app.store().get(b"shared", T0), Some(b"2".to_vec()));
    // Servers hold apps in an `Arc`; its sessions see the same store.
    let shared = Arc::new(app.clone());
    let mut c = Conn::new(&shared);
    assert_eq!(c.request(&cx, b"GET shared\r\n"), b"$1\r\n2\r\n");

    let store = Arc::new(Store::new());
    let first = RespApp::with_store(Arc::clone(&store));
    let second = RespApp::with_store(Arc::clone(&store));
    let mut d = Conn::new(&first);
    let mut e = Conn::new(&second);
    assert_eq!(d.request(&cx, b"SET k v\r\n"), b"+OK\r\n");
    assert_eq!(e.request(&cx, b"GET k\r\n"), b"$1\r\nv\r\n");
    assert_eq!(store.len(T0), 1);
}

#[test]
fn multi_key_commands_are_atomic_across_connections() {
    let app = RespApp::new();
    let keys: Vec<String> = (0..16).map(|i| format!("key{i}")).collect();
    let cx = cx_at(T0);
    std::thread::scope(|scope| {
        for writer in 0..2 {
            let (app, keys, cx) = (&app, &keys, &cx);
            scope.spawn(move || {
                let mut conn = Conn::new(app);
                for round in 0..300 {
                    let value = format!("{writer}-{round}");
                    let mut args: Vec<&[u8]> = vec![b"MSET"];
                    // The writers list the keys in opposite orders.
                    let ordered: Vec<&String> = if writer == 0 {
                        keys.iter().collect()
                    } else {
                        keys.iter().rev().collect()
                    };
                    for key in ordered {
                        args.push(key.as_bytes());
                        args.push(value.as_bytes());
                    }
                    assert_eq!(conn.request(cx, &cmd(&args)), b"+OK\r\n");
                }
            });
        }
        let (app, keys, cx) = (&app, &keys, &cx);
        scope.spawn(move || {
            let mut conn = Conn::new(app);
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            let request = cmd(&args);
            for _ in 0..300 {
                let reply = conn.request(cx, &request);
                let Some((Reply::Array(Some(values)), _)) = decode_reply(&reply).unwrap() else {
                    panic!("not an array: {}", show(&reply));
                };
                assert!(
                    values.windows(2).all(|pair| pair[0] == pair[1]),
                    "torn MSET: {values:?}"
                );
            }
        });
    });
}

#[test]
fn a_poisoned_shard_does_not_break_sessions() {
    let app = RespApp::new();
    let cx = cx_at(T0);
    let mut conn = Conn::new(&app);
    assert_eq!(conn.request(&cx, b"MSET a 1 b 2 c 3\r\n"), b"+OK\r\n");
    let store = app.store();
    for key in [b"a", b"b", b"c"] {
        let shard = super::store::shard_of(key);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = store.lock(shard);
            panic!("poison shard {shard}");
        }));
        assert!(result.is_err());
    }
    assert_eq!(
        conn.request(&cx, b"MGET a b c\r\n"),
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
    assert_eq!(conn.request(&cx, b"DBSIZE\r\n"), b":3\r\n");
}

#[test]
fn errors_display_like_redis() {
    assert_eq!(
        RespError::InvalidBulkLength.to_string(),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        RespError::ExpectedBulk(b'x').to_string(),
        "Protocol error: expected '$', got 'x'"
    );
    assert_eq!(
        RespError::ExpectedBulk(b'\r').to_string(),
        "Protocol error: expected '$', got '\\r'"
    );
    let err: ProtoError = RespError::UnbalancedQuotes.into();
    assert_eq!(
        err.to_string(),
        "resp: Protocol error: unbalanced quotes in request"
    );
}

proptest! {
    #[test]
    fn echo_returns_any_argument(arg in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
        let request = cmd(&[b"ECHO", &arg]);
        let cut = cut.index(request.len() + 1);
        let mut conn = Conn::new(&RespApp::new());
        conn.send(&cx_at(T0), &request[..cut]);
        conn.send(&cx_at(T0), &request[cut..]);
        let (reply, used) = decode_reply(&conn.out).unwrap().unwrap();
        prop_assert_eq!(used, conn.out.len());
        prop_assert_eq!(reply, Reply::Bulk(Some(arg)));
    }

    #[test]
    fn set_then_get_returns_the_value(
        pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..64)),
            1..8,
        ),
        chunk in 1usize..64,
    ) {
        let mut request = Vec::new();
        for (key, value) in &pairs {
            request.extend_from_slice(&cmd(&[b"SET", key, value]));
        }
        let keys: Vec<&[u8]> = std::iter::once(&b"MGET"[..]).chain(pairs.iter().map(|(k, _)| k.as_slice())).collect();
        request.extend_from_slice(&cmd(&keys));
        let mut conn = Conn::new(&RespApp::new());
        for piece in request.chunks(chunk) {
            conn.send(&cx_at(T0), piece);
        }
        let mut expected = Vec::new();
        for _ in &pairs {
            expected.extend_from_slice(b"+OK\r\n");
        }
        // The last value written under each key wins.
        let values = pairs
            .iter()
            .map(|(key, _)| {
                let last = pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                Reply::Bulk(last)
            })
            .collect();
        Reply::Array(Some(values)).encode(&mut expected);
        prop_assert_eq!(show(&conn.out), show(&expected));
    }
}

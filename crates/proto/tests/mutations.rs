//! A bounded, fuzz-like run for CI (cargo-fuzz needs nightly; see fuzz/README.md):
//! valid requests and replies, plus the bad-input corpus of the server tests
//! (crates/cli/tests/corpus), are mutated the way a fuzzer would (bit flips, inserted
//! and deleted bytes, "interesting" numbers and delimiters spliced in, truncation,
//! duplication, splicing of two seeds) and fed to every decoder:
//!
//! - the HTTP and RESP sessions, in pieces of a random size, the way a driver feeds
//!   them: no panic, never more consumed than offered, an error leaves its reply and
//!   asks to close, EOF asks to close, and the same bytes give the same transcript
//!   whether they arrive whole or in pieces;
//! - the echo session: returns what it got;
//! - the RESP reply decoder: no panic, and a decoded reply re-encodes and decodes to
//!   itself;
//! - pub/sub between RESP sessions in memory: random bytes read as operations
//!   (fuzz/fuzz_targets/pubsub.rs, the same code the `resp` fuzz target runs): whole
//!   replies on every connection, no subscription left behind once all are closed.
//!
//! 2,000 cases per property (`PROPTEST_CASES` overrides it for a longer local run).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::OnceLock;

use c10k_proto::echo::EchoApp;
use c10k_proto::http::{HttpApp, HttpConfig};
use c10k_proto::resp::{RespApp, decode_reply};
use c10k_proto::{App, Cx, Peer, Session};
use proptest::prelude::*;

#[path = "../../../fuzz/fuzz_targets/pubsub.rs"]
mod pubsub;

const INTERESTING: &[&[u8]] = &[
    b"-1",
    b"0",
    b"-0",
    b"+1",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"536870913",
    b"ffffffffffffffff",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\0",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"*",
    b"$",
    b"-",
    b"+",
    b"\"",
    b"\r\n ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"*1\r\n",
    b"*2\r\n$3\r\nGET\r\n",
    b"$-1\r\n",
    b"\xff\xfe",
];

type Idx = prop::sample::Index;

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Idx, u8),
    Insert(Idx, u8),
    Delete(Idx, u8),
    Interesting(Idx, Idx, bool),
    Truncate(Idx),
    Duplicate(Idx, Idx),
    Splice(Idx, Idx, Idx),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Idx>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Idx>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Idx>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Idx>(), any::<Idx>(), any::<bool>())
            .prop_map(|(i, w, r)| Mutation::Interesting(i, w, r)),
        any::<Idx>().prop_map(Mutation::Truncate),
        (any::<Idx>(), any::<Idx>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        (any::<Idx>(), any::<Idx>(), any::<Idx>()).prop_map(|(s, a, b)| Mutation::Splice(s, a, b)),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) {
    let len = data.len();
    match m {
        Mutation::FlipBit(i, b) if len > 0 => data[i.index(len)] ^= 1 << b,
        Mutation::Insert(i, b) => data.insert(i.index(len + 1), *b),
        Mutation::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            let end = (at + usize::from(*n)).min(len);
            data.drain(at..end);
        }
        Mutation::Interesting(i, w, replace) => {
            let at = i.index(len + 1);
            let with = INTERESTING[w.index(INTERESTING.len())];
            let mut end = at;
            if *replace {
                // Replace a run of digits or letters (a length, a count, a word).
                while end < len && data[end].is_ascii_alphanumeric() {
                    end += 1;
                }
            }
            data.splice(at..end, with.iter().copied());
        }
        Mutation::Truncate(i) => data.truncate(i.index(len + 1)),
        Mutation::Duplicate(a, b) if len > 0 => {
            let (x, y) = (a.index(len), b.index(len));
            let (lo, hi) = (x.min(y), x.max(y) + 1);
            let copy = data[lo..hi].to_vec();
            data.splice(hi..hi, copy);
        }
        Mutation::Splice(s, a, b) => {
            let other = &seeds[s.index(seeds.len())];
            let from = a.index(other.len() + 1);
            let at = b.index(len + 1);
            data.splice(at..at, other[from..].iter().copied());
        }
        _ => {}
    }
}

/// The server tests' bad-input corpus for `app`, each case cut to 2 KiB.
fn corpus(app: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cli/tests/corpus")
        .join(app);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let mut d = std::fs::read(p).unwrap();
            d.truncate(2048);
            d
        })
        .collect()
}

fn seeds(fixed: &[&[u8]], app: Option<&str>) -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = fixed.iter().map(|b| b.to_vec()).collect();
    if let Some(app) = app {
        s.extend(corpus(app));
    }
    s
}

fn http_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        seeds(
            &[
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /?a=b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
                b"GET http://example.com/echo HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ],
            Some("http"),
        )
    })
}

fn resp_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        seeds(
            &[
                b"*1\r\n$4\r\nPING\r\n",
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
                b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
                b"PING\r\nSET k \"a b\"\r\nGET k\r\n",
                b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nc\r\n",
                b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n-5\r\n",
                b"*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n*1\r\n$7\r\nCOMMAND\r\n",
            ],
            Some("resp"),
        )
    })
}

fn reply_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        seeds(
            &[
                b"+OK\r\n",
                b"-ERR unknown command\r\n",
                b":12345\r\n",
                b":-1\r\n",
                b"$5\r\nhello\r\n",
                b"$-1\r\n",
                b"*-1\r\n",
                b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
                b"*3\r\n+a\r\n-b\r\n$0\r\n\r\n",
            ],
            None,
        )
    })
}

fn mutate(seeds: &[Vec<u8>], pick: Idx, muts: &[Mutation]) -> Vec<u8> {
    let mut data = seeds[pick.index(seeds.len())].clone();
    for m in muts {
        apply(&mut data, m, seeds);
        data.truncate(16 * 1024);
    }
    data
}

/// What a session produced from a stream: its output and whether it asked to close.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    out: Vec<u8>,
    closed: bool,
}

/// Feed `data` in pieces of `step` bytes, as a driver does (unconsumed bytes are
/// offered again with more), checking the driver's side of the contract.
fn drive<S: Session>(mut session: S, data: &[u8], step: usize) -> Transcript {
    let cx = Cx::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        if session.wants_close() {
            return Transcript { out, closed: true };
        }
        pending.extend_from_slice(piece);
        // A session may stop early on a large batch: offer again while it progresses.
        loop {
            let before = out.len();
            match session.handle_input(&cx, &pending, &mut out) {
                Ok(used) => {
                    assert!(used <= pending.len(), "consumed more than offered");
                    pending.drain(..used);
                    if used == 0 || pending.is_empty() || session.wants_close() {
                        break;
                    }
                }
                Err(_) => {
                    assert!(session.wants_close(), "an error must ask for close");
                    assert!(out.len() > before, "an error must leave its reply in out");
                    return Transcript { out, closed: true };
                }
            }
        }
    }
    if session.wants_close() {
        return Transcript { out, closed: true };
    }
    session.handle_eof(&cx, &mut out);
    assert!(session.wants_close(), "EOF must ask for close");
    Transcript { out, closed: true }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn http_session_survives_mutated_requests(
        pick in any::<Idx>(),
        muts in proptest::collection::vec(mutation(), 1..8),
        step in 1usize..300,
    ) {
        let data = mutate(http_seeds(), pick, &muts);
        let app = HttpApp::new(HttpConfig { max_body: 64 * 1024 });
        let whole = drive(app.open(&Peer::unknown()), &data, usize::MAX);
        let split = drive(app.open(&Peer::unknown()), &data, step);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn resp_session_survives_mutated_commands(
        pick in any::<Idx>(),
        muts in proptest::collection::vec(mutation(), 1..8),
        step in 1usize..300,
    ) {
        let data = mutate(resp_seeds(), pick, &muts);
        // A fresh store each time: the transcripts of the two runs must match.
        let whole = drive(RespApp::new().open(&Peer::unknown()), &data, usize::MAX);
        let split = drive(RespApp::new().open(&Peer::unknown()), &data, step);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn echo_session_returns_mutated_bytes(
        pick in any::<Idx>(),
        muts in proptest::collection::vec(mutation(), 1..8),
        step in 1usize..300,
    ) {
        let data = mutate(http_seeds(), pick, &muts);
        let t = drive(EchoApp.open(&Peer::unknown()), &data, step);
        prop_assert_eq!(t.out, data);
    }

    #[test]
    fn pubsub_sessions_survive_random_operations(
        ops in proptest::collection::vec(any::<u8>(), 0..800),
    ) {
        pubsub::run(&ops);
    }

    #[test]
    fn reply_decoder_survives_mutated_replies(
        pick in any::<Idx>(),
        muts in proptest::collection::vec(mutation(), 1..8),
    ) {
        let data = mutate(reply_seeds(), pick, &muts);
        if let Ok(Some((reply, used))) = decode_reply(&data) {
            prop_assert!(used <= data.len());
            let mut again = Vec::new();
            reply.encode(&mut again);
            let (back, n) = decode_reply(&again).unwrap().unwrap();
            prop_assert_eq!(n, again.len());
            prop_assert_eq!(back, reply);
        }
    }
}

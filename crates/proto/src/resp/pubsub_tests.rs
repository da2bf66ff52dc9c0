//! Pub/sub tests, in memory: every command's reply bytes, subscribed mode, fan-out
//! counts and order, slow and closed subscribers, the bad inputs of issue 14.

use std::sync::Arc;

use super::*;
use crate::harness::Harness;
use crate::{Mailbox, PostError};

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(args, &mut out);
    out
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Every reply in `bytes`, which must hold whole replies only.
fn replies(bytes: &[u8]) -> Vec<Reply> {
    let mut all = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (reply, used) = decode_reply(&bytes[at..])
            .expect("valid RESP")
            .expect("whole replies");
        all.push(reply);
        at += used;
    }
    all
}

fn bulk(b: &[u8]) -> Reply {
    Reply::Bulk(Some(b.to_vec()))
}

/// `*3 <word> <name> :<count>` as a [`Reply`].
fn conf(word: &[u8], name: Option<&[u8]>, count: i64) -> Reply {
    Reply::Array(Some(vec![
        bulk(word),
        Reply::Bulk(name.map(<[u8]>::to_vec)),
        Reply::Integer(count),
    ]))
}

fn message(channel: &[u8], payload: &[u8]) -> Reply {
    Reply::Array(Some(vec![bulk(b"message"), bulk(channel), bulk(payload)]))
}

fn pmessage(pattern: &[u8], channel: &[u8], payload: &[u8]) -> Reply {
    Reply::Array(Some(vec![
        bulk(b"pmessage"),
        bulk(pattern),
        bulk(channel),
        bulk(payload),
    ]))
}

fn net() -> Harness<RespApp> {
    Harness::new(RespApp::new(), 1024)
}

/// Sends `args` on `id` and returns the raw output.
fn ask(net: &mut Harness<RespApp>, id: usize, args: &[&[u8]]) -> Vec<u8> {
    net.send(id, &cmd(args));
    net.take_output(id)
}

const NOT_IN_CONTEXT: &str =
    "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context";

fn cant(name: &str) -> Vec<u8> {
    format!("-ERR Can't execute '{name}{NOT_IN_CONTEXT}\r\n").into_bytes()
}

#[test]
fn subscribe_and_unsubscribe_replies() {
    let mut net = net();
    let c = net.open();
    assert_eq!(
        show(&ask(&mut net, c, &[b"SUBSCRIBE", b"a", b"b", b"a"])),
        show(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:2\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"psubscribe", b"n*"])),
        show(b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"UNSUBSCRIBE", b"b", b"never"])),
        show(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:2\r\n*3\r\n$11\r\nunsubscribe\r\n$5\r\nnever\r\n:2\r\n")
    );
    // PUNSUBSCRIBE with no pattern left to drop: nil, and the channels still count.
    assert_eq!(
        show(&ask(&mut net, c, &[b"PUNSUBSCRIBE"])),
        show(b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:1\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"PUNSUBSCRIBE"])),
        show(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:1\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"UNSUBSCRIBE"])),
        show(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n")
    );
    // Out of subscribed mode again.
    assert_eq!(ask(&mut net, c, &[b"PING"]), b"+PONG\r\n");
    assert_eq!(
        show(&ask(&mut net, c, &[b"UNSUBSCRIBE"])),
        show(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n")
    );
}

#[test]
fn unsubscribe_all_goes_through_every_subscription_with_falling_counts() {
    let mut net = net();
    let c = net.open();
    ask(&mut net, c, &[b"SUBSCRIBE", b"c", b"a", b"b"]);
    ask(&mut net, c, &[b"PSUBSCRIBE", b"p*"]);
    assert_eq!(
        replies(&ask(&mut net, c, &[b"UNSUBSCRIBE"])),
        vec![
            conf(b"unsubscribe", Some(b"a"), 3),
            conf(b"unsubscribe", Some(b"b"), 2),
            conf(b"unsubscribe", Some(b"c"), 1),
        ]
    );
    assert_eq!(
        replies(&ask(&mut net, c, &[b"PUNSUBSCRIBE"])),
        vec![conf(b"punsubscribe", Some(b"p*"), 0)]
    );
}

#[test]
fn unsubscribing_what_was_never_subscribed() {
    let mut net = net();
    let c = net.open();
    assert_eq!(
        show(&ask(&mut net, c, &[b"UNSUBSCRIBE", b"x"])),
        show(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nx\r\n:0\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"PUNSUBSCRIBE", b"x", b"y"])),
        show(b"*3\r\n$12\r\npunsubscribe\r\n$1\r\nx\r\n:0\r\n*3\r\n$12\r\npunsubscribe\r\n$1\r\ny\r\n:0\r\n")
    );
    assert_eq!(
        show(&ask(&mut net, c, &[b"PUNSUBSCRIBE"])),
        show(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n")
    );
    // None of that asks for a mailbox or enters subscribed mode.
    assert!(!net.session(c).is_some_and(Session::wants_mailbox));
    assert_eq!(ask(&mut net, c, &[b"GET", b"k"]), b"$-1\r\n");
}

#[test]
fn arity_and_subcommand_errors_are_redis_s() {
    let mut net = net();
    let c = net.open();
    let cases: &[(&[&[u8]], &[u8])] = &[
        (&[b"SUBSCRIBE"], b"-ERR wrong number of arguments for 'subscribe' command\r\n"),
        (&[b"PSUBSCRIBE"], b"-ERR wrong number of arguments for 'psubscribe' command\r\n"),
        (&[b"PUBLISH", b"a"], b"-ERR wrong number of arguments for 'publish' command\r\n"),
        (&[b"PUBLISH", b"a", b"b", b"c"], b"-ERR wrong number of arguments for 'publish' command\r\n"),
        (&[b"PUBSUB"], b"-ERR wrong number of arguments for 'pubsub' command\r\n"),
        (&[b"PUBSUB", b"FOO"], b"-ERR unknown subcommand 'FOO'. Try PUBSUB HELP.\r\n"),
        (&[b"pubsub", b"foo\r\nx"], b"-ERR unknown subcommand 'foo  x'. Try PUBSUB HELP.\r\n"),
        (
            &[b"PUBSUB", b"CHANNELS", b"a", b"b"],
            b"-ERR unknown subcommand or wrong number of arguments for 'CHANNELS'. Try PUBSUB HELP.\r\n",
        ),
        (
            &[b"PUBSUB", b"shardchannels", b"a", b"b"],
            b"-ERR unknown subcommand or wrong number of arguments for 'shardchannels'. Try PUBSUB HELP.\r\n",
        ),
        (&[b"PUBSUB", b"NUMPAT", b"x"], b"-ERR wrong number of arguments for 'pubsub|numpat' command\r\n"),
        (&[b"PUBSUB", b"HELP", b"x"], b"-ERR wrong number of arguments for 'pubsub|help' command\r\n"),
        (&[b"RESET", b"x"], b"-ERR wrong number of arguments for 'reset' command\r\n"),
    ];
    for &(args, want) in cases {
        assert_eq!(show(&ask(&mut net, c, args)), show(want), "{args:?}");
    }
}

#[test]
fn pubsub_introspection() {
    let mut net = net();
    let (a, b, p) = (net.open(), net.open(), net.open());
    ask(&mut net, a, &[b"SUBSCRIBE", b"news.x"]);
    ask(
        &mut net,
        a,
        &[b"PSUBSCRIBE", b"news.*", b"*", b"n[a-e]ws.?"],
    );
    ask(&mut net, b, &[b"SUBSCRIBE", b"news.x", b"other"]);
    ask(&mut net, b, &[b"PSUBSCRIBE", b"news.*"]);
    assert_eq!(
        show(&ask(
            &mut net,
            p,
            &[b"PUBSUB", b"NUMSUB", b"news.x", b"other", b"nope"]
        )),
        show(b"*6\r\n$6\r\nnews.x\r\n:2\r\n$5\r\nother\r\n:1\r\n$4\r\nnope\r\n:0\r\n")
    );
    assert_eq!(ask(&mut net, p, &[b"PUBSUB", b"NUMSUB"]), b"*0\r\n");
    // Distinct patterns, as Redis 7 counts them.
    assert_eq!(ask(&mut net, p, &[b"PUBSUB", b"NUMPAT"]), b":3\r\n");
    let mut channels = replies(&ask(&mut net, p, &[b"PUBSUB", b"CHANNELS"]));
    let Some(Reply::Array(Some(names))) = channels.pop() else {
        panic!("not an array");
    };
    let mut names: Vec<Reply> = names;
    names.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(names, vec![bulk(b"news.x"), bulk(b"other")]);
    assert_eq!(
        show(&ask(&mut net, p, &[b"pubsub", b"channels", b"n*"])),
        show(b"*1\r\n$6\r\nnews.x\r\n")
    );
    assert_eq!(
        ask(&mut net, p, &[b"PUBSUB", b"CHANNELS", b"zz*"]),
        b"*0\r\n"
    );
    assert_eq!(ask(&mut net, p, &[b"PUBSUB", b"SHARDCHANNELS"]), b"*0\r\n");
    assert_eq!(
        show(&ask(&mut net, p, &[b"PUBSUB", b"SHARDNUMSUB", b"news.x"])),
        show(b"*2\r\n$6\r\nnews.x\r\n:0\r\n")
    );
    let help = ask(&mut net, p, &[b"PUBSUB", b"HELP"]);
    assert!(help.starts_with(
        b"*14\r\n+PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:\r\n"
    ));
    assert!(help.ends_with(b"+HELP\r\n+    Prints this help.\r\n"));
    assert_eq!(replies(&help).len(), 1);
}

#[test]
fn subscribed_mode_allows_only_the_subscribe_family_ping_quit_and_reset() {
    let mut net = net();
    let c = net.open();
    ask(&mut net, c, &[b"SUBSCRIBE", b"a"]);
    let cases: &[(&[&[u8]], Vec<u8>)] = &[
        (&[b"GET", b"k"], cant("get")),
        (&[b"set", b"k", b"v"], cant("set")),
        (&[b"PUBLISH", b"a", b"m"], cant("publish")),
        (&[b"PUBSUB", b"NUMSUB"], cant("pubsub|numsub")),
        (&[b"PUBSUB", b"numpat"], cant("pubsub|numpat")),
        // The subcommand's arity passes; PUBSUB's own check would have failed.
        (
            &[b"PUBSUB", b"CHANNELS", b"a", b"b"],
            cant("pubsub|channels"),
        ),
        (&[b"CONFIG", b"GET", b"save"], cant("config|get")),
        (&[b"COMMAND"], cant("command")),
        (&[b"COMMAND", b"DOCS"], cant("command|docs")),
        (&[b"SELECT", b"0"], cant("select")),
        (&[b"ECHO", b"x"], cant("echo")),
        // Unknown commands and arity come first, as in Redis.
        (
            &[b"NOSUCH", b"x"],
            b"-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n".to_vec(),
        ),
        (
            &[b"GET"],
            b"-ERR wrong number of arguments for 'get' command\r\n".to_vec(),
        ),
        (
            &[b"ECHO"],
            b"-ERR wrong number of arguments for 'echo' command\r\n".to_vec(),
        ),
        (
            &[b"PUBSUB", b"foo"],
            b"-ERR unknown subcommand 'foo'. Try PUBSUB HELP.\r\n".to_vec(),
        ),
        (
            &[b"CONFIG", b"GET"],
            b"-ERR wrong number of arguments for 'config|get' command\r\n".to_vec(),
        ),
        (
            &[b"CONFIG", b"SET", b"a", b"b"],
            b"-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n".to_vec(),
        ),
        (
            &[b"SUBSCRIBE"],
            b"-ERR wrong number of arguments for 'subscribe' command\r\n".to_vec(),
        ),
        (&[b"PING"], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()),
        (
            &[b"ping", b"msg"],
            b"*2\r\n$4\r\npong\r\n$3\r\nmsg\r\n".to_vec(),
        ),
        (
            &[b"PING", b"a", b"b"],
            b"-ERR wrong number of arguments for 'ping' command\r\n".to_vec(),
        ),
    ];
    for (args, want) in cases {
        assert_eq!(show(&ask(&mut net, c, args)), show(want), "{args:?}");
    }
    // Inline commands are the same commands.
    net.send(c, b"get k\r\nping\r\n");
    assert_eq!(
        show(&net.take_output(c)),
        show(&[cant("get"), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()].concat())
    );
    assert_eq!(ask(&mut net, c, &[b"RESET"]), b"+RESET\r\n");
    assert_eq!(ask(&mut net, c, &[b"GET", b"k"]), b"$-1\r\n");
    assert_eq!(ask(&mut net, c, &[b"PING"]), b"+PONG\r\n");
    // RESET unregistered the subscription.
    assert_eq!(
        show(&ask(&mut net, c, &[b"PUBSUB", b"NUMSUB", b"a"])),
        show(b"*2\r\n$1\r\na\r\n:0\r\n")
    );
    ask(&mut net, c, &[b"PSUBSCRIBE", b"x"]);
    assert_eq!(ask(&mut net, c, &[b"QUIT"]), b"+OK\r\n");
    assert!(!net.is_open(c));
}

#[test]
fn reset_outside_subscribed_mode() {
    let mut net = net();
    let c = net.open();
    assert_eq!(ask(&mut net, c, &[b"reset"]), b"+RESET\r\n");
}

#[test]
fn publish_counts_channel_and_pattern_receivers_like_redis() {
    // The scenario checked against redis-server 7.0.15.
    let mut net = net();
    let (a, b, p) = (net.open(), net.open(), net.open());
    ask(&mut net, a, &[b"SUBSCRIBE", b"news.x"]);
    ask(
        &mut net,
        a,
        &[b"PSUBSCRIBE", b"news.*", b"*", b"n[a-e]ws.?"],
    );
    ask(&mut net, b, &[b"SUBSCRIBE", b"news.x", b"other"]);
    ask(&mut net, b, &[b"PSUBSCRIBE", b"news.*"]);
    assert_eq!(
        ask(&mut net, p, &[b"PUBLISH", b"news.x", b"hello"]),
        b":6\r\n"
    );
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"other", b"o"]), b":2\r\n");
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"nobody", b"o"]), b":1\r\n");
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"", b"o"]), b":0\r\n");
    net.deliver();
    let got_a = replies(&net.take_output(a));
    // The channel's message comes first; the patterns' order is the broker's.
    assert_eq!(got_a[0], message(b"news.x", b"hello"));
    let mut rest: Vec<String> = got_a[1..4].iter().map(|r| format!("{r:?}")).collect();
    rest.sort();
    let mut want: Vec<String> = [
        pmessage(b"news.*", b"news.x", b"hello"),
        pmessage(b"*", b"news.x", b"hello"),
        pmessage(b"n[a-e]ws.?", b"news.x", b"hello"),
    ]
    .iter()
    .map(|r| format!("{r:?}"))
    .collect();
    want.sort();
    assert_eq!(rest, want);
    assert_eq!(
        got_a[4..],
        [
            pmessage(b"*", b"other", b"o"),
            pmessage(b"*", b"nobody", b"o"),
        ]
    );
    assert_eq!(
        replies(&net.take_output(b)),
        vec![
            message(b"news.x", b"hello"),
            pmessage(b"news.*", b"news.x", b"hello"),
            message(b"other", b"o"),
        ]
    );
    let stats = net.app().pubsub_stats();
    assert_eq!((stats.published, stats.delivered), (4, 9));
    assert_eq!((stats.channels, stats.patterns), (2, 3));
}

#[test]
fn publish_to_nobody_is_zero() {
    let mut net = net();
    let p = net.open();
    assert_eq!(
        show(&ask(&mut net, p, &[b"PUBLISH", b"nobody", b"m"])),
        ":0\\r\\n"
    );
    net.send(p, b"publish nobody \"with space\"\r\n");
    assert_eq!(net.take_output(p), b":0\r\n");
}

#[test]
fn the_frames_are_exact() {
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    ask(&mut net, s, &[b"SUBSCRIBE", b"ch"]);
    ask(&mut net, s, &[b"PSUBSCRIBE", b"c?"]);
    ask(&mut net, p, &[b"PUBLISH", b"ch", b"a\r\nb"]);
    ask(&mut net, p, &[b"PUBLISH", b"ch", b""]);
    net.deliver();
    assert_eq!(
        show(&net.take_output(s)),
        show(
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n\
              *4\r\n$8\r\npmessage\r\n$2\r\nc?\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n\
              *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n\
              *4\r\n$8\r\npmessage\r\n$2\r\nc?\r\n$2\r\nch\r\n$0\r\n\r\n"
        )
    );
}

#[test]
fn a_client_subscribed_twice_receives_once() {
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    ask(&mut net, s, &[b"SUBSCRIBE", b"a", b"a"]);
    ask(&mut net, s, &[b"SUBSCRIBE", b"a"]);
    ask(&mut net, s, &[b"PSUBSCRIBE", b"a*", b"a*", b"?"]);
    // The channel once, each distinct matching pattern once.
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"a", b"m"]), b":3\r\n");
    assert_eq!(net.deliver(), 3);
}

#[test]
fn deliveries_keep_publish_order() {
    let mut net = net();
    let (s1, s2, p1, p2) = (net.open(), net.open(), net.open(), net.open());
    ask(&mut net, s1, &[b"SUBSCRIBE", b"ch"]);
    ask(&mut net, s2, &[b"PSUBSCRIBE", b"c*"]);
    let mut want1 = Vec::new();
    let mut want2 = Vec::new();
    for i in 0..500 {
        let payload = format!("m{i}").into_bytes();
        let publisher = if i % 3 == 0 { p1 } else { p2 };
        assert_eq!(
            ask(&mut net, publisher, &[b"PUBLISH", b"ch", &payload]),
            b":2\r\n"
        );
        want1.push(message(b"ch", &payload));
        want2.push(pmessage(b"c*", b"ch", &payload));
        // Deliver at irregular moments: order must not depend on it.
        if i % 7 == 0 {
            net.deliver_to(s1);
        }
        if i % 11 == 0 {
            net.deliver_to(s2);
        }
    }
    net.deliver();
    assert!(replies(&net.take_output(s1)) == want1, "s1 out of order");
    assert!(replies(&net.take_output(s2)) == want2, "s2 out of order");
}

#[test]
fn the_mailbox_is_asked_for_once_and_subscriptions_wait_for_it() {
    let app = RespApp::new();
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = app.open(&Peer::unknown());
    let mut p = app.open(&Peer::unknown());
    let mut out = Vec::new();
    assert!(!s.wants_mailbox());
    s.handle_input(&cx, &cmd(&[b"PING"]), &mut out).unwrap();
    assert!(!s.wants_mailbox());
    // Subscribe, drop one, add a pattern, all before the mailbox arrives.
    let batch = [
        cmd(&[b"SUBSCRIBE", b"a", b"b"]),
        cmd(&[b"UNSUBSCRIBE", b"b"]),
        cmd(&[b"PSUBSCRIBE", b"x*"]),
    ]
    .concat();
    s.handle_input(&cx, &batch, &mut out).unwrap();
    assert!(s.wants_mailbox());
    // Nothing is registered yet: a publisher does not see the subscriber.
    let mut pout = Vec::new();
    p.handle_input(&cx, &cmd(&[b"PUBLISH", b"a", b"early"]), &mut pout)
        .unwrap();
    assert_eq!(pout, b":0\r\n");
    let (mailbox, inbox) = Mailbox::memory(8);
    s.attach_mailbox(mailbox.clone());
    assert!(!s.wants_mailbox());
    pout.clear();
    for (channel, want) in [
        (&b"a"[..], &b":1\r\n"[..]),
        (b"b", b":0\r\n"),
        (b"xy", b":1\r\n"),
    ] {
        p.handle_input(&cx, &cmd(&[b"PUBLISH", channel, b"m"]), &mut pout)
            .unwrap();
        assert_eq!(pout, want);
        pout.clear();
    }
    out.clear();
    for message in inbox.take_all() {
        s.handle_message(&cx, message, &mut out);
    }
    assert_eq!(
        replies(&out),
        vec![message(b"a", b"m"), pmessage(b"x*", b"xy", b"m")]
    );
    // A second mailbox is ignored; messages of other types are ignored.
    let (other, other_inbox) = Mailbox::memory(8);
    s.attach_mailbox(other);
    p.handle_input(&cx, &cmd(&[b"PUBLISH", b"a", b"m"]), &mut pout)
        .unwrap();
    assert_eq!(pout, b":1\r\n");
    assert!(other_inbox.take_all().is_empty());
    out.clear();
    s.handle_message(&cx, Box::new(42u32), &mut out);
    assert!(out.is_empty());
    assert_eq!(inbox.take_all().len(), 1);
}

#[test]
fn a_session_that_quits_in_the_subscribing_batch_wants_no_mailbox() {
    let app = RespApp::new();
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = app.open(&Peer::unknown());
    let mut out = Vec::new();
    let batch = [cmd(&[b"SUBSCRIBE", b"a"]), cmd(&[b"QUIT"])].concat();
    s.handle_input(&cx, &batch, &mut out).unwrap();
    assert!(s.wants_close());
    assert!(!s.wants_mailbox());
    // Even if a driver attaches one, nothing is registered.
    let (mailbox, _inbox) = Mailbox::memory(8);
    s.attach_mailbox(mailbox);
    assert_eq!(app.pubsub_stats().channels, 0);
}

#[test]
fn closing_and_dropping_unregister_everything() {
    let mut net = net();
    let (a, b, c, p) = (net.open(), net.open(), net.open(), net.open());
    for id in [a, b, c] {
        ask(&mut net, id, &[b"SUBSCRIBE", b"ch", b"other"]);
        ask(&mut net, id, &[b"PSUBSCRIBE", b"c*"]);
    }
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"ch", b"m"]), b":6\r\n");
    net.eof(a);
    assert!(!net.is_open(a));
    ask(&mut net, b, &[b"QUIT"]);
    net.close(c);
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"ch", b"m"]), b":0\r\n");
    let stats = net.app().pubsub_stats();
    assert_eq!((stats.channels, stats.patterns, stats.closed), (0, 0, 0));
    // A session dropped without any of that unregisters too.
    let app = RespApp::new();
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = app.open(&Peer::unknown());
    s.handle_input(&cx, &cmd(&[b"SUBSCRIBE", b"ch"]), &mut Vec::new())
        .unwrap();
    let (mailbox, _inbox) = Mailbox::memory(8);
    s.attach_mailbox(mailbox);
    assert_eq!(app.pubsub_stats().channels, 1);
    drop(s);
    assert_eq!(app.pubsub_stats().channels, 0);
}

#[test]
fn a_drain_unregisters_an_idle_subscriber() {
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    ask(&mut net, s, &[b"SUBSCRIBE", b"ch"]);
    let app = net.app().clone();
    let mut session = app.open(&Peer::unknown());
    let cx = Cx::new(std::time::UNIX_EPOCH);
    session
        .handle_input(&cx, &cmd(&[b"SUBSCRIBE", b"ch"]), &mut Vec::new())
        .unwrap();
    let (mailbox, _inbox) = Mailbox::memory(8);
    session.attach_mailbox(mailbox);
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"ch", b"m"]), b":2\r\n");
    session.start_drain();
    assert!(session.wants_close());
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"ch", b"m"]), b":1\r\n");
}

#[test]
fn a_closed_mailbox_is_not_a_receiver_and_is_removed() {
    let app = RespApp::new();
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut s = app.open(&Peer::unknown());
    s.handle_input(&cx, &cmd(&[b"SUBSCRIBE", b"ch"]), &mut Vec::new())
        .unwrap();
    s.handle_input(&cx, &cmd(&[b"PSUBSCRIBE", b"*"]), &mut Vec::new())
        .unwrap();
    let (mailbox, inbox) = Mailbox::memory(8);
    s.attach_mailbox(mailbox);
    inbox.close();
    let mut p = app.open(&Peer::unknown());
    let mut out = Vec::new();
    p.handle_input(&cx, &cmd(&[b"PUBLISH", b"ch", b"m"]), &mut out)
        .unwrap();
    assert_eq!(out, b":0\r\n");
    let stats = app.pubsub_stats();
    assert_eq!((stats.closed, stats.slow_disconnects), (2, 0));
    assert_eq!((stats.channels, stats.patterns, stats.delivered), (0, 0, 0));
}

#[test]
fn a_full_mailbox_disconnects_the_slow_subscriber_and_nobody_else_loses() {
    let mut net = Harness::new(RespApp::new(), 4);
    let (slow, fast, p) = (net.open(), net.open(), net.open());
    ask(&mut net, slow, &[b"SUBSCRIBE", b"ch"]);
    ask(&mut net, slow, &[b"PSUBSCRIBE", b"c*"]);
    ask(&mut net, fast, &[b"SUBSCRIBE", b"ch"]);
    // The slow one stops reading: its driver takes no more messages.
    net.pause(slow, true);
    let mut counts = Vec::new();
    for i in 0..5 {
        let payload = format!("m{i}").into_bytes();
        let reply = ask(&mut net, p, &[b"PUBLISH", b"ch", &payload]);
        counts.push(replies(&reply)[0].clone());
        net.deliver();
    }
    // Two messages each fill the slow mailbox (message + pmessage); the third
    // publish finds it full: disconnected, not counted.
    assert_eq!(
        counts,
        vec![
            Reply::Integer(3),
            Reply::Integer(3),
            Reply::Integer(1),
            Reply::Integer(1),
            Reply::Integer(1)
        ]
    );
    assert!(!net.is_open(slow));
    let got: Vec<Reply> = replies(&net.take_output(fast));
    assert_eq!(got.len(), 5);
    for (i, reply) in got.iter().enumerate() {
        assert_eq!(*reply, message(b"ch", format!("m{i}").as_bytes()));
    }
    let stats = net.app().pubsub_stats();
    assert_eq!(stats.slow_disconnects, 1, "counted once for two full posts");
    assert_eq!((stats.channels, stats.patterns), (1, 0));
    // The disconnected subscriber got nothing: its mailbox was never taken from.
    assert!(net.take_output(slow).is_empty());
}

#[test]
fn nothing_arrives_after_the_unsubscribe_confirmation() {
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    ask(&mut net, s, &[b"SUBSCRIBE", b"a", b"b"]);
    ask(&mut net, s, &[b"PSUBSCRIBE", b"a*"]);
    // Published while subscribed, still in the mailbox when the client unsubscribes.
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"a", b"old"]), b":2\r\n");
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"b", b"kept"]), b":1\r\n");
    ask(&mut net, s, &[b"UNSUBSCRIBE", b"a"]);
    ask(&mut net, s, &[b"PUNSUBSCRIBE"]);
    // Subscribed again: only what is published from now on.
    ask(&mut net, s, &[b"SUBSCRIBE", b"a"]);
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"a", b"new"]), b":1\r\n");
    net.deliver();
    assert_eq!(
        replies(&net.take_output(s)),
        vec![message(b"b", b"kept"), message(b"a", b"new")]
    );
    assert_eq!(net.app().pubsub_stats().stale, 2);
    // Leaving subscribed mode altogether: replies only from then on.
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", b"a", b"late"]), b":1\r\n");
    ask(&mut net, s, &[b"UNSUBSCRIBE"]);
    net.deliver();
    net.take_output(s);
    assert_eq!(ask(&mut net, s, &[b"GET", b"k"]), b"$-1\r\n");
    assert_eq!(net.app().pubsub_stats().stale, 3);
}

#[test]
fn a_hundred_thousand_channels_in_one_subscribe() {
    const N: usize = 100_000;
    let names: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("channel:{i}").into_bytes())
        .collect();
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(names.iter().map(Vec::as_slice));
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    net.send(s, &cmd(&args));
    let got = net.take_output(s);
    let mut want = Vec::new();
    for (i, name) in names.iter().enumerate() {
        conf(b"subscribe", Some(name), i as i64 + 1).encode(&mut want);
    }
    assert!(got == want, "the {N} confirmations differ");
    assert_eq!(net.app().pubsub_stats().channels, N as u64);
    assert_eq!(
        ask(&mut net, p, &[b"PUBLISH", b"channel:99999", b"m"]),
        b":1\r\n"
    );
    assert_eq!(
        show(&ask(
            &mut net,
            p,
            &[b"PUBSUB", b"NUMSUB", b"channel:0", b"channel:100000"]
        )),
        show(b"*4\r\n$9\r\nchannel:0\r\n:1\r\n$14\r\nchannel:100000\r\n:0\r\n")
    );
    net.deliver();
    assert_eq!(
        replies(&net.take_output(s)),
        vec![message(b"channel:99999", b"m")]
    );
    // Unsubscribing them all answers each, counting down.
    net.send(s, &cmd(&[b"UNSUBSCRIBE"]));
    let got = replies(&net.take_output(s));
    assert_eq!(got.len(), N);
    let mut sorted = names.clone();
    sorted.sort();
    for (i, (reply, name)) in got.iter().zip(&sorted).enumerate() {
        assert_eq!(*reply, conf(b"unsubscribe", Some(name), (N - 1 - i) as i64));
    }
    assert_eq!(net.app().pubsub_stats().channels, 0);
    // And a client that closes with them all subscribed leaves nothing behind.
    net.send(s, &cmd(&args));
    net.take_output(s);
    assert_eq!(net.app().pubsub_stats().channels, N as u64);
    net.close(s);
    assert_eq!(net.app().pubsub_stats().channels, 0);
}

#[test]
fn a_one_mebibyte_channel_name() {
    // Redis accepts any bulk up to proto-max-bulk-len (512 MB); so does this parser
    // (MAX_BULK_LEN). As an inline command it is over the 64 KiB inline limit, as in
    // Redis.
    let name = vec![b'n'; 1 << 20];
    let mut net = net();
    let (s, p) = (net.open(), net.open());
    let got = ask(&mut net, s, &[b"SUBSCRIBE", &name]);
    assert_eq!(replies(&got), vec![conf(b"subscribe", Some(&name), 1)]);
    let mut pattern = name.clone();
    pattern[0] = b'*';
    ask(&mut net, s, &[b"PSUBSCRIBE", &pattern]);
    assert_eq!(ask(&mut net, p, &[b"PUBLISH", &name, b"m"]), b":2\r\n");
    assert_eq!(
        replies(&ask(&mut net, p, &[b"PUBSUB", b"CHANNELS"])),
        vec![Reply::Array(Some(vec![bulk(&name)]))]
    );
    net.deliver();
    assert_eq!(
        replies(&net.take_output(s)),
        vec![message(&name, b"m"), pmessage(&pattern, &name, b"m")]
    );
    let mut inline = b"SUBSCRIBE ".to_vec();
    inline.extend_from_slice(&name);
    inline.extend_from_slice(b"\r\n");
    net.send(p, &inline);
    assert_eq!(
        net.take_output(p),
        b"-ERR Protocol error: too big inline request\r\n"
    );
    assert!(!net.is_open(p));
}

#[test]
fn a_subscribe_session_replays_identically_under_every_split() {
    let request = [
        cmd(&[b"SUBSCRIBE", b"a", b"b"]),
        b"ping\r\n".to_vec(),
        cmd(&[b"GET", b"k"]),
        cmd(&[b"PSUBSCRIBE", b"a*"]),
        cmd(&[b"PING", b"x"]),
        cmd(&[b"UNSUBSCRIBE"]),
        b"punsubscribe a*\r\n".to_vec(),
        cmd(&[b"PING"]),
        cmd(&[b"UNSUBSCRIBE", b"z"]),
    ]
    .concat();
    let expected = [
        &b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"[..],
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        &cant("get"),
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:3\r\n",
        b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n",
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n",
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\na*\r\n:0\r\n",
        b"+PONG\r\n",
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nz\r\n:0\r\n",
    ]
    .concat();
    let run = |pieces: &[&[u8]], how: &str| {
        let mut net = net();
        let (s, p) = (net.open(), net.open());
        for piece in pieces {
            net.send(s, piece);
            // A publisher between every piece: what the subscriber gets must not depend
            // on where its input was split, only on what it had subscribed to.
            net.send(p, &cmd(&[b"PUBLISH", b"zzz", b"m"]));
            net.deliver();
        }
        assert_eq!(show(&net.take_output(s)), show(&expected), "{how}");
        assert!(net.pending(s).is_empty(), "{how}");
    };
    run(&[&request], "whole");
    for cut in 0..=request.len() {
        run(
            &[&request[..cut], &request[cut..]],
            &format!("split at {cut}"),
        );
    }
    let bytes: Vec<&[u8]> = request.chunks(1).collect();
    run(&bytes, "byte by byte");
}

#[test]
fn stats_count_published_and_delivered() {
    let mut net = net();
    let (s1, s2, p) = (net.open(), net.open(), net.open());
    ask(&mut net, s1, &[b"SUBSCRIBE", b"a"]);
    ask(&mut net, s2, &[b"PSUBSCRIBE", b"*"]);
    for _ in 0..10 {
        ask(&mut net, p, &[b"PUBLISH", b"a", b"m"]);
    }
    ask(&mut net, p, &[b"PUBLISH", b"b", b"m"]);
    assert_eq!(
        net.app().pubsub_stats(),
        PubSubStats {
            published: 11,
            delivered: 21,
            slow_disconnects: 0,
            closed: 0,
            stale: 0,
            channels: 1,
            patterns: 1,
        }
    );
}

#[test]
fn ten_thousand_subscribers_share_one_frame() {
    let mut net = Harness::new(RespApp::new(), 4);
    let subscribers: Vec<usize> = (0..10_000).map(|_| net.open()).collect();
    for &s in &subscribers {
        ask(&mut net, s, &[b"SUBSCRIBE", b"fanout"]);
    }
    let p = net.open();
    let payload = vec![b'x'; 64];
    assert_eq!(
        ask(&mut net, p, &[b"PUBLISH", b"fanout", &payload]),
        b":10000\r\n"
    );
    assert_eq!(net.deliver(), 10_000);
    let want = {
        let mut w = Vec::new();
        message(b"fanout", &payload).encode(&mut w);
        w
    };
    for &s in &subscribers {
        assert_eq!(net.take_output(s), want);
    }
    // Half of them go away; the broker forgets them.
    for &s in subscribers.iter().step_by(2) {
        net.close(s);
    }
    assert_eq!(
        ask(&mut net, p, &[b"PUBLISH", b"fanout", b"m"]),
        b":5000\r\n"
    );
    assert_eq!(
        show(&ask(&mut net, p, &[b"PUBSUB", b"NUMSUB", b"fanout"])),
        show(b"*2\r\n$6\r\nfanout\r\n:5000\r\n")
    );
}

#[test]
fn one_frame_is_posted_to_every_subscriber() {
    let app = RespApp::new();
    let cx = Cx::new(std::time::UNIX_EPOCH);
    let mut inboxes = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut s = app.open(&Peer::unknown());
        s.handle_input(&cx, &cmd(&[b"SUBSCRIBE", b"ch"]), &mut Vec::new())
            .unwrap();
        let (mailbox, inbox) = Mailbox::memory(4);
        s.attach_mailbox(mailbox);
        sessions.push(s);
        inboxes.push(inbox);
    }
    assert_eq!(app.broker().publish(b"ch", b"payload"), 3);
    let posted: Vec<_> = inboxes
        .iter()
        .map(|inbox| {
            let mut all = inbox.take_all();
            assert_eq!(all.len(), 1);
            all.pop()
                .and_then(|m| m.downcast::<Arc<broker::Delivery>>().ok())
                .expect("a delivery")
        })
        .collect();
    assert!(Arc::ptr_eq(&posted[0], &posted[1]) && Arc::ptr_eq(&posted[1], &posted[2]));
}

#[test]
fn a_post_error_gives_the_delivery_back() {
    // The policy relies on Mailbox's contract: a failed post returns the message.
    let (mailbox, inbox) = Mailbox::memory(0);
    assert!(matches!(mailbox.post(1u8), Err(PostError::Full(_))));
    inbox.close();
    assert!(matches!(mailbox.post(1u8), Err(PostError::Closed(_))));
}

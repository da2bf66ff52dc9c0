// Pub/sub between RESP sessions in memory, driven by the input read as a list of
// operations: which connection, then raw bytes, a pub/sub command built from a small
// vocabulary (names from a table or from the input), a delivery round, a pause (a
// connection over its output cap: its mailbox of 4 fills and PUBLISH disconnects it),
// an EOF, a close. A closed connection is replaced by a new one. Shared by the `resp` fuzz target and, through
// `#[path]`, by crates/proto/tests/mutations.rs (the bounded run CI does).
//
// Checked: no panic and the driver's contract (in `Harness`); every connection's output
// is a sequence of whole RESP replies, whatever was delivered to it when; once every
// connection is closed the broker holds no channel and no pattern; PUBLISH never counts
// more receivers than the broker delivered.

use c10k_proto::harness::Harness;
use c10k_proto::resp::{Reply, RespApp, decode_reply, encode_command};

const CONNS: usize = 4;

const NAMES: [&[u8]; 12] = [
    b"a", b"b", b"ab", b"", b"*", b"a*", b"[a-b]", b"?", b"\\*", b"[^", b"news.x", b"n*x",
];

const COMMANDS: [&[u8]; 16] = [
    b"SUBSCRIBE",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PSUBSCRIBE",
    b"PUNSUBSCRIBE",
    b"PUBLISH",
    b"PUBLISH",
    b"PUBLISH",
    b"PUBLISH",
    b"PUBSUB",
    b"PING",
    b"RESET",
    b"QUIT",
    b"GET",
    b"subscribe",
    b"punsubscribe",
];

const PUBSUB: [&[u8]; 6] = [
    b"CHANNELS",
    b"NUMSUB",
    b"NUMPAT",
    b"HELP",
    b"SHARDNUMSUB",
    b"nosuch",
];

/// Reads the input front to back; past its end every read is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// A name: from the table mostly, else a few bytes of the input.
    fn name(&mut self) -> Vec<u8> {
        let b = self.byte();
        if b < 0xe0 {
            NAMES[usize::from(b) % NAMES.len()].to_vec()
        } else {
            self.take(usize::from(b & 0x0f)).to_vec()
        }
    }
}

pub fn run(data: &[u8]) {
    let mut net = Harness::new(RespApp::new(), 4);
    let mut slots: Vec<usize> = (0..CONNS).map(|_| net.open()).collect();
    let mut outputs: Vec<Vec<u8>> = vec![Vec::new(); CONNS];
    let mut receivers = 0u64;
    let mut input = Input(data);
    let mut steps = 0;
    while !input.0.is_empty() && steps < 2_000 {
        steps += 1;
        let op = input.byte();
        let slot = usize::from(op) % CONNS;
        // A closed connection is replaced by a new one, to keep traffic going.
        if !net.is_open(slots[slot]) {
            slots[slot] = net.open();
            outputs.push(Vec::new());
        }
        let id = slots[slot];
        match op >> 2 {
            0..=3 => {
                let n = usize::from(input.byte() % 64);
                let raw = input.take(n);
                net.send(id, raw);
            }
            4..=39 => {
                let command = COMMANDS[usize::from(input.byte()) % COMMANDS.len()];
                let mut args: Vec<Vec<u8>> = vec![command.to_vec()];
                if command == b"PUBSUB" {
                    args.push(PUBSUB[usize::from(input.byte()) % PUBSUB.len()].to_vec());
                }
                let n = if command.eq_ignore_ascii_case(b"PUBLISH") {
                    // Mostly well-formed: channel and payload.
                    if input.byte() < 0xf0 { 2 } else { 1 }
                } else {
                    input.byte() % 4
                };
                for _ in 0..n {
                    args.push(input.name());
                }
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                let mut bytes = Vec::new();
                encode_command(&refs, &mut bytes);
                // With nothing pending, the output is exactly this command's replies.
                let whole = net.pending(id).is_empty();
                net.send(id, &bytes);
                let out = net.take_output(id);
                if whole
                    && command == b"PUBLISH"
                    && refs.len() == 3
                    && let Ok(Some((Reply::Integer(n), _))) = decode_reply(&out)
                {
                    receivers += u64::try_from(n).unwrap_or(0);
                }
                outputs[id].extend_from_slice(&out);
            }
            40..=45 => {
                net.deliver();
            }
            46..=51 => {
                net.deliver_to(id);
            }
            52..=59 => {
                let paused = input.byte() & 1 == 1;
                net.pause(id, paused);
            }
            60 | 61 => net.eof(id),
            _ => net.close(id),
        }
        for (i, out) in outputs.iter_mut().enumerate() {
            out.extend_from_slice(&net.take_output(i));
        }
    }
    let stats = net.app().pubsub_stats();
    assert!(
        receivers <= stats.delivered,
        "PUBLISH counted {receivers} receivers, the broker delivered {}",
        stats.delivered
    );
    for id in 0..outputs.len() {
        net.close(id);
    }
    let stats = net.app().pubsub_stats();
    assert_eq!(
        (stats.channels, stats.patterns),
        (0, 0),
        "closed connections left subscriptions behind"
    );
    for (id, out) in outputs.iter().enumerate() {
        let mut at = 0;
        while at < out.len() {
            match decode_reply(&out[at..]) {
                Ok(Some((_, used))) => at += used,
                other => panic!(
                    "connection {id}: output is not whole replies at byte {at}: {:?}",
                    other.map(|r| r.map(|(_, n)| n))
                ),
            }
        }
    }
}

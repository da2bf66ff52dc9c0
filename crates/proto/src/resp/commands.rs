//! The commands: lookup by name, arity checks, and their replies.

use super::broker::Kind;
use super::codec::{
    parse_i64, push_line_safe, write_array_header, write_bulk, write_error, write_integer,
    write_nil, write_ok, write_simple,
};
use super::parser::Args;
use super::pubsub::Subscriptions;
use super::store::{Condition, IncrError, Store, Ttl};

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Go on reading commands.
    Continue,
    /// Flush the replies and close (`QUIT`).
    Close,
}

/// Everything a command needs.
struct Ctx<'a, 'o> {
    store: &'a Store,
    subs: &'o mut Subscriptions,
    now: u64,
    args: Args<'a>,
    out: &'o mut Vec<u8>,
}

type Handler = fn(&mut Ctx<'_, '_>) -> Outcome;

/// How many arguments a command takes, its name included: exactly `n` when positive,
/// at least `-n` when negative (the Redis convention).
type Arity = i32;

/// The longest command name in the table.
const LONGEST_NAME: usize = 12;

/// Redis truncates the name and the arguments it echoes in errors to this many bytes.
const ECHOED_MAX: usize = 128;

/// Looks up a command by its lowercase name: canonical name, arity, handler.
fn lookup(name: &[u8]) -> Option<(&'static str, Arity, Handler)> {
    let entry: (&'static str, Arity, Handler) = match name {
        b"get" => ("get", 2, get),
        b"set" => ("set", -3, set),
        b"ping" => ("ping", -1, ping),
        b"echo" => ("echo", 2, echo),
        b"del" => ("del", -2, del),
        b"exists" => ("exists", -2, exists),
        b"incr" => ("incr", 2, incr),
        b"decr" => ("decr", 2, decr),
        b"incrby" => ("incrby", 3, incrby),
        b"decrby" => ("decrby", 3, decrby),
        b"mset" => ("mset", -3, mset),
        b"mget" => ("mget", -2, mget),
        b"config" => ("config", -2, config),
        b"command" => ("command", -1, command),
        b"quit" => ("quit", -1, quit),
        b"select" => ("select", 2, select),
        b"flushall" => ("flushall", -1, flush),
        b"flushdb" => ("flushdb", -1, flush),
        b"dbsize" => ("dbsize", 1, dbsize),
        b"subscribe" => ("subscribe", -2, subscribe),
        b"unsubscribe" => ("unsubscribe", -1, unsubscribe),
        b"psubscribe" => ("psubscribe", -2, psubscribe),
        b"punsubscribe" => ("punsubscribe", -1, punsubscribe),
        b"publish" => ("publish", 3, publish),
        b"pubsub" => ("pubsub", -2, pubsub),
        b"reset" => ("reset", 1, reset),
        _ => return None,
    };
    Some(entry)
}

/// The subcommands of a container command, each with its arity (the container's name
/// and the subcommand counted), as Redis 7.0 declares them. `PUBSUB` is checked
/// against this table always; `CONFIG` and `COMMAND` (whose handlers answer their own
/// way) only in subscribed mode, to name them in the error as Redis does.
fn subcommands(command: &str) -> Option<&'static [(&'static str, Arity)]> {
    match command {
        "pubsub" => Some(&[
            ("channels", -2),
            ("numsub", -2),
            ("numpat", 2),
            ("shardchannels", -2),
            ("shardnumsub", -2),
            ("help", 2),
        ]),
        "config" => Some(&[("get", -3), ("resetstat", 2)]),
        "command" => Some(&[
            ("count", 2),
            ("docs", -2),
            ("getkeys", -3),
            ("getkeysandflags", -3),
            ("help", 2),
            ("info", -2),
            ("list", -2),
        ]),
        _ => None,
    }
}

/// The commands a connection in subscribed mode may run (RESP2).
const SUBSCRIBED_MODE: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ping",
    "quit",
    "reset",
];

fn arity_ok(arity: Arity, count: usize) -> bool {
    match usize::try_from(arity) {
        Ok(exact) => count == exact,
        Err(_) => count >= arity.unsigned_abs() as usize,
    }
}

/// `-ERR unknown subcommand 'sub'. Try CMD HELP.`
fn unknown_subcommand(out: &mut Vec<u8>, command: &str, sub: &[u8]) {
    let mut message = b"ERR unknown subcommand '".to_vec();
    message.extend_from_slice(c_string(sub, ECHOED_MAX));
    message.extend_from_slice(b"'. Try ");
    message.extend_from_slice(command.to_ascii_uppercase().as_bytes());
    message.extend_from_slice(b" HELP.");
    write_error(out, &message);
}

/// Runs one complete command, appending its reply to `out`.
pub(crate) fn execute(
    store: &Store,
    subs: &mut Subscriptions,
    now: u64,
    args: Args<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let name = args.get(0);
    let mut lower = [0u8; LONGEST_NAME];
    let found = lower.get_mut(..name.len()).and_then(|lower| {
        for (l, n) in lower.iter_mut().zip(name) {
            *l = n.to_ascii_lowercase();
        }
        lookup(lower)
    });
    let Some((canonical, arity, handler)) = found else {
        unknown_command(args, out);
        return Outcome::Continue;
    };
    if !arity_ok(arity, args.len()) {
        wrong_arity(out, canonical);
        return Outcome::Continue;
    }
    // Redis looks a subcommand up, and checks its arity, before anything else.
    let mut full_name = std::borrow::Cow::Borrowed(canonical);
    if let Some(table) = subcommands(canonical)
        && args.len() >= 2
        && (canonical == "pubsub" || subs.active())
    {
        let sub = args.get(1);
        let Some(&(sub_name, sub_arity)) = table
            .iter()
            .find(|(name, _)| sub.eq_ignore_ascii_case(name.as_bytes()))
        else {
            unknown_subcommand(out, canonical, sub);
            return Outcome::Continue;
        };
        full_name = format!("{canonical}|{sub_name}").into();
        if !arity_ok(sub_arity, args.len()) {
            wrong_arity(out, &full_name);
            return Outcome::Continue;
        }
    }
    if subs.active() && !SUBSCRIBED_MODE.contains(&canonical) {
        let mut message = b"ERR Can't execute '".to_vec();
        message.extend_from_slice(full_name.as_bytes());
        message.extend_from_slice(
            b"': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
        );
        write_error(out, &message);
        return Outcome::Continue;
    }
    handler(&mut Ctx {
        store,
        subs,
        now,
        args,
        out,
    })
}

/// `-ERR unknown command 'name', with args beginning with: 'a' 'b' `, formatted and
/// truncated like Redis does.
fn unknown_command(args: Args<'_>, out: &mut Vec<u8>) {
    let mut message = b"ERR unknown command '".to_vec();
    message.extend_from_slice(c_string(args.get(0), ECHOED_MAX));
    message.extend_from_slice(b"', with args beginning with: ");
    let mut echoed = Vec::new();
    for arg in args.iter_from(1) {
        if echoed.len() >= ECHOED_MAX {
            break;
        }
        echoed.push(b'\'');
        echoed.extend_from_slice(c_string(arg, ECHOED_MAX - (echoed.len() - 1)));
        echoed.extend_from_slice(b"' ");
    }
    message.extend_from_slice(&echoed);
    write_error(out, &message);
}

/// `bytes` as C's `%.*s` prints it: up to the first NUL, at most `max` bytes.
fn c_string(bytes: &[u8], max: usize) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end.min(max)]
}

fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    let mut message = b"ERR wrong number of arguments for '".to_vec();
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(b"' command");
    write_error(out, &message);
}

const NOT_INTEGER: &[u8] = b"ERR value is not an integer or out of range";
const SYNTAX: &[u8] = b"ERR syntax error";

fn get(cx: &mut Ctx<'_, '_>) -> Outcome {
    let key = cx.args.get(1);
    let out = &mut *cx.out;
    cx.store.with_key(key, cx.now, |shard| {
        shard.read(key, cx.now, |value| match value {
            Some(value) => write_bulk(out, value),
            None => write_nil(out),
        });
    });
    Outcome::Continue
}

/// The unit of a `SET` expiry option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpireUnit {
    /// `EX`: seconds from now.
    Seconds,
    /// `PX`: milliseconds from now.
    Millis,
    /// `EXAT`: Unix time in seconds.
    UnixSeconds,
    /// `PXAT`: Unix time in milliseconds.
    UnixMillis,
}

/// The Unix millisecond deadline of `SET ... <unit> <amount>` at time `now`, or `None`
/// when Redis calls it an invalid expire time (not positive, or overflowing).
fn deadline(unit: ExpireUnit, amount: i64, now: u64) -> Option<u64> {
    if amount <= 0 {
        return None;
    }
    let now = i64::try_from(now).ok()?;
    let at = match unit {
        ExpireUnit::Seconds => amount.checked_mul(1000)?.checked_add(now)?,
        ExpireUnit::Millis => amount.checked_add(now)?,
        ExpireUnit::UnixSeconds => amount.checked_mul(1000)?,
        ExpireUnit::UnixMillis => amount,
    };
    u64::try_from(at).ok()
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
fn set(cx: &mut Ctx<'_, '_>) -> Outcome {
    let args = cx.args;
    let mut condition = Condition::Always;
    let mut return_old = false;
    let mut keep_ttl = false;
    let mut expire: Option<(ExpireUnit, &[u8])> = None;
    let mut i = 3;
    while i < args.len() {
        let option = args.get(i);
        let has_next = i + 1 < args.len();
        let unit = if option.eq_ignore_ascii_case(b"ex") {
            Some(ExpireUnit::Seconds)
        } else if option.eq_ignore_ascii_case(b"px") {
            Some(ExpireUnit::Millis)
        } else if option.eq_ignore_ascii_case(b"exat") {
            Some(ExpireUnit::UnixSeconds)
        } else if option.eq_ignore_ascii_case(b"pxat") {
            Some(ExpireUnit::UnixMillis)
        } else {
            None
        };
        if option.eq_ignore_ascii_case(b"nx") && condition != Condition::IfPresent {
            condition = Condition::IfAbsent;
        } else if option.eq_ignore_ascii_case(b"xx") && condition != Condition::IfAbsent {
            condition = Condition::IfPresent;
        } else if option.eq_ignore_ascii_case(b"get") {
            return_old = true;
        } else if option.eq_ignore_ascii_case(b"keepttl") && expire.is_none() {
            keep_ttl = true;
        } else if let Some(unit) = unit
            && !keep_ttl
            && expire.is_none_or(|(other, _)| other == unit)
            && has_next
        {
            expire = Some((unit, args.get(i + 1)));
            i += 1;
        } else {
            write_error(cx.out, SYNTAX);
            return Outcome::Continue;
        }
        i += 1;
    }
    let ttl = match expire {
        None if keep_ttl => Ttl::Keep,
        None => Ttl::Clear,
        Some((unit, amount)) => {
            let Some(amount) = parse_i64(amount) else {
                write_error(cx.out, NOT_INTEGER);
                return Outcome::Continue;
            };
            match deadline(unit, amount, cx.now) {
                Some(at) => Ttl::At(at),
                None => {
                    write_error(cx.out, b"ERR invalid expire time in 'set' command");
                    return Outcome::Continue;
                }
            }
        }
    };
    let (key, value) = (args.get(1), args.get(2));
    let out = &mut *cx.out;
    let now = cx.now;
    let written = cx.store.with_key(key, now, |shard| {
        shard.set(key, value, now, condition, ttl, |old| {
            if return_old {
                match old {
                    Some(old) => write_bulk(out, old),
                    None => write_nil(out),
                }
            }
        })
    });
    if !return_old {
        if written {
            write_ok(out);
        } else {
            write_nil(out);
        }
    }
    Outcome::Continue
}

fn ping(cx: &mut Ctx<'_, '_>) -> Outcome {
    match cx.args.len() {
        // In subscribed mode (RESP2): `*2 pong <argument or "">`.
        1 | 2 if cx.subs.active() => {
            write_array_header(cx.out, 2);
            write_bulk(cx.out, b"pong");
            write_bulk(cx.out, cx.args.get(1));
        }
        1 => write_simple(cx.out, b"PONG"),
        2 => write_bulk(cx.out, cx.args.get(1)),
        _ => wrong_arity(cx.out, "ping"),
    }
    Outcome::Continue
}

fn echo(cx: &mut Ctx<'_, '_>) -> Outcome {
    write_bulk(cx.out, cx.args.get(1));
    Outcome::Continue
}

fn del(cx: &mut Ctx<'_, '_>) -> Outcome {
    let mut removed = 0i64;
    cx.store
        .with_keys(cx.args.iter_from(1), cx.now, |_, key, shard| {
            removed += i64::from(shard.remove_live(key, cx.now));
        });
    write_integer(cx.out, removed);
    Outcome::Continue
}

fn exists(cx: &mut Ctx<'_, '_>) -> Outcome {
    let mut found = 0i64;
    cx.store
        .with_keys(cx.args.iter_from(1), cx.now, |_, key, shard| {
            found += i64::from(shard.contains(key, cx.now));
        });
    write_integer(cx.out, found);
    Outcome::Continue
}

/// Adds `delta` to the integer at `args[1]` and replies with the result.
fn add(cx: &mut Ctx<'_, '_>, delta: i64) -> Outcome {
    let key = cx.args.get(1);
    let now = cx.now;
    match cx
        .store
        .with_key(key, now, |shard| shard.incr(key, delta, now))
    {
        Ok(value) => write_integer(cx.out, value),
        Err(IncrError::NotInteger) => write_error(cx.out, NOT_INTEGER),
        Err(IncrError::Overflow) => {
            write_error(cx.out, b"ERR increment or decrement would overflow");
        }
    }
    Outcome::Continue
}

fn incr(cx: &mut Ctx<'_, '_>) -> Outcome {
    add(cx, 1)
}

fn decr(cx: &mut Ctx<'_, '_>) -> Outcome {
    add(cx, -1)
}

fn incrby(cx: &mut Ctx<'_, '_>) -> Outcome {
    match parse_i64(cx.args.get(2)) {
        Some(delta) => add(cx, delta),
        None => {
            write_error(cx.out, NOT_INTEGER);
            Outcome::Continue
        }
    }
}

fn decrby(cx: &mut Ctx<'_, '_>) -> Outcome {
    match parse_i64(cx.args.get(2)) {
        Some(i64::MIN) => {
            write_error(cx.out, b"ERR decrement would overflow");
            Outcome::Continue
        }
        Some(delta) => add(cx, -delta),
        None => {
            write_error(cx.out, NOT_INTEGER);
            Outcome::Continue
        }
    }
}

fn mset(cx: &mut Ctx<'_, '_>) -> Outcome {
    let args = cx.args;
    if args.len() % 2 == 0 {
        wrong_arity(cx.out, "mset");
        return Outcome::Continue;
    }
    let now = cx.now;
    let keys = args.iter_from(1).step_by(2);
    cx.store.with_keys(keys, now, |position, key, shard| {
        let value = args.get(2 + 2 * position);
        shard.set(key, value, now, Condition::Always, Ttl::Clear, |_| {});
    });
    write_ok(cx.out);
    Outcome::Continue
}

fn mget(cx: &mut Ctx<'_, '_>) -> Outcome {
    let out = &mut *cx.out;
    write_array_header(out, cx.args.len().saturating_sub(1));
    cx.store
        .with_keys(cx.args.iter_from(1), cx.now, |_, key, shard| {
            shard.read(key, cx.now, |value| match value {
                Some(value) => write_bulk(out, value),
                None => write_nil(out),
            });
        });
    Outcome::Continue
}

/// Parameters `CONFIG GET` reports: the ones `redis-benchmark` asks for at start-up
/// (without them it warns "Could not fetch server CONFIG"). No persistence here.
const CONFIG_PARAMS: [(&[u8], &[u8]); 2] = [(b"appendonly", b"no"), (b"save", b"")];

/// `CONFIG GET pattern...` answers name/value pairs for the parameters in
/// [`CONFIG_PARAMS`] that a pattern names exactly or with `*`; anything else matches
/// nothing (an empty array), as in Redis for an unknown parameter.
fn config(cx: &mut Ctx<'_, '_>) -> Outcome {
    let sub = cx.args.get(1);
    if sub.eq_ignore_ascii_case(b"get") {
        if cx.args.len() < 3 {
            wrong_arity(cx.out, "config|get");
        } else {
            let wanted: Vec<&(&[u8], &[u8])> = CONFIG_PARAMS
                .iter()
                .filter(|(name, _)| {
                    (2..cx.args.len()).any(|i| {
                        let pat = cx.args.get(i);
                        pat == b"*" || pat.eq_ignore_ascii_case(name)
                    })
                })
                .collect();
            write_array_header(cx.out, wanted.len() * 2);
            for (name, value) in wanted {
                write_bulk(cx.out, name);
                write_bulk(cx.out, value);
            }
        }
    } else if sub.eq_ignore_ascii_case(b"resetstat") {
        if cx.args.len() == 2 {
            write_ok(cx.out);
        } else {
            wrong_arity(cx.out, "config|resetstat");
        }
    } else {
        let mut message = b"ERR unknown subcommand '".to_vec();
        push_line_safe(&mut message, c_string(sub, ECHOED_MAX));
        message.extend_from_slice(b"'. Try CONFIG HELP.");
        write_error(cx.out, &message);
    }
    Outcome::Continue
}

/// `COMMAND` and all its subcommands answer an empty array (clients such as
/// `redis-cli` only use it for hints).
fn command(cx: &mut Ctx<'_, '_>) -> Outcome {
    write_array_header(cx.out, 0);
    Outcome::Continue
}

fn quit(cx: &mut Ctx<'_, '_>) -> Outcome {
    write_ok(cx.out);
    Outcome::Close
}

fn select(cx: &mut Ctx<'_, '_>) -> Outcome {
    match parse_i64(cx.args.get(1)) {
        Some(0) => write_ok(cx.out),
        Some(index) if i32::try_from(index).is_ok() => {
            write_error(cx.out, b"ERR DB index is out of range");
        }
        _ => write_error(cx.out, NOT_INTEGER),
    }
    Outcome::Continue
}

/// `FLUSHALL` and `FLUSHDB`, with an optional `ASYNC` or `SYNC` (both flush at once).
fn flush(cx: &mut Ctx<'_, '_>) -> Outcome {
    let mode_ok = match cx.args.len() {
        1 => true,
        2 => {
            let mode = cx.args.get(1);
            mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync")
        }
        _ => false,
    };
    if mode_ok {
        cx.store.clear();
        write_ok(cx.out);
    } else {
        write_error(cx.out, SYNTAX);
    }
    Outcome::Continue
}

fn dbsize(cx: &mut Ctx<'_, '_>) -> Outcome {
    let len = cx.store.len(cx.now);
    write_integer(cx.out, i64::try_from(len).unwrap_or(i64::MAX));
    Outcome::Continue
}

fn subscribe(cx: &mut Ctx<'_, '_>) -> Outcome {
    cx.subs
        .subscribe(Kind::Channel, cx.args.iter_from(1), cx.out);
    Outcome::Continue
}

fn unsubscribe(cx: &mut Ctx<'_, '_>) -> Outcome {
    cx.subs
        .unsubscribe(Kind::Channel, cx.args.iter_from(1), cx.out);
    Outcome::Continue
}

fn psubscribe(cx: &mut Ctx<'_, '_>) -> Outcome {
    cx.subs
        .subscribe(Kind::Pattern, cx.args.iter_from(1), cx.out);
    Outcome::Continue
}

fn punsubscribe(cx: &mut Ctx<'_, '_>) -> Outcome {
    cx.subs
        .unsubscribe(Kind::Pattern, cx.args.iter_from(1), cx.out);
    Outcome::Continue
}

fn publish(cx: &mut Ctx<'_, '_>) -> Outcome {
    let receivers = cx.subs.broker().publish(cx.args.get(1), cx.args.get(2));
    write_integer(cx.out, i64::try_from(receivers).unwrap_or(i64::MAX));
    Outcome::Continue
}

/// `RESET`: leaves subscribed mode without confirmations (the only connection state
/// this server has besides the database, which is always 0).
fn reset(cx: &mut Ctx<'_, '_>) -> Outcome {
    cx.subs.clear();
    write_simple(cx.out, b"RESET");
    Outcome::Continue
}

/// `PUBSUB HELP`, word for word as Redis 7.0 answers it.
const PUBSUB_HELP: [&[u8]; 14] = [
    b"PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CHANNELS [<pattern>]",
    b"    Return the currently active channels matching a <pattern> (default: '*').",
    b"NUMPAT",
    b"    Return number of subscriptions to patterns.",
    b"NUMSUB [<channel> ...]",
    b"    Return the number of subscribers for the specified channels, excluding",
    b"    pattern subscriptions(default: no channels).",
    b"SHARDCHANNELS [<pattern>]",
    b"    Return the currently active shard level channels matching a <pattern> (default: '*').",
    b"SHARDNUMSUB [<shardchannel> ...]",
    b"    Return the number of subscribers for the specified shard level channel(s)",
    b"HELP",
    b"    Prints this help.",
];

/// `PUBSUB CHANNELS [pattern] | NUMSUB [channel...] | NUMPAT | HELP`, and the shard
/// variants, which find nothing (there is no `SSUBSCRIBE` here). The subcommand and
/// its arity were checked by [`execute`].
fn pubsub(cx: &mut Ctx<'_, '_>) -> Outcome {
    let args = cx.args;
    let sub = args.get(1).to_ascii_lowercase();
    let broker = cx.subs.broker();
    let out = &mut *cx.out;
    match (&sub[..], args.len()) {
        (b"channels", 2 | 3) => {
            let names = broker.channels((args.len() == 3).then(|| args.get(2)));
            write_array_header(out, names.len());
            for name in names {
                write_bulk(out, &name);
            }
        }
        (b"shardchannels", 2 | 3) => write_array_header(out, 0),
        (b"numsub" | b"shardnumsub", _) => {
            write_array_header(out, 2 * (args.len() - 2));
            for channel in args.iter_from(2) {
                write_bulk(out, channel);
                let n = if sub == b"numsub" {
                    broker.numsub(channel)
                } else {
                    0
                };
                write_integer(out, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        (b"numpat", _) => {
            write_integer(out, i64::try_from(broker.numpat()).unwrap_or(i64::MAX));
        }
        (b"help", _) => {
            write_array_header(out, PUBSUB_HELP.len());
            for line in PUBSUB_HELP {
                write_simple(out, line);
            }
        }
        _ => {
            let mut message = b"ERR unknown subcommand or wrong number of arguments for '".to_vec();
            message.extend_from_slice(c_string(args.get(1), ECHOED_MAX));
            message.extend_from_slice(b"'. Try PUBSUB HELP.");
            write_error(out, &message);
        }
    }
    Outcome::Continue
}

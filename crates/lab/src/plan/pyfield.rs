//! The CPython field of `c10k compare --python`: the ways a CPython program serves
//! many connections, each a small echo server of `bench/py/field.py` doing the work
//! per request of `c10k serve --work`, in the interpreter of `--python-bin`.
//!
//! A row is a [`TargetKind::Peer`] whose command is a marker, `{pyfield:NAME:N}
//! PYTHON` ([`FieldPeer::command`], N the processes of a `-procs` row), which
//! [`crate::server`] starts as `PYTHON field.py --server NAME --procs N --conns C
//! --work SPEC --listen 127.0.0.1:0` from a fresh directory holding the runner and
//! `echo_protocol.py` (both compiled into the binary). Unlike other peers these rows do
//! the work, and every cell checks its server's echo and wait ([`check`]) before it
//! is measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use c10k_server::Work;

use super::python::{Scripts, not_importable};
use super::{Target, TargetKind};

/// The runner (`bench/py/field.py`).
pub const FIELD_RUNNER: &str = include_str!("../../../../bench/py/field.py");

/// The runner's exit status for a package it cannot import.
const MISSING: i32 = 3;

/// The runner's exit status for a package that cannot serve this way.
const UNSUPPORTED: i32 = 4;

/// `select()` watches descriptors below `FD_SETSIZE` only: the connections a select()
/// loop can hold, less the interpreter's own descriptors.
pub const SELECT_CONNS: usize = 1_000;

/// The most connections a row with one CPython process per connection is run at: at
/// 10,000 that is 10,000 interpreters, beyond what this lab starts on one machine.
pub const PROCESS_PER_CONN: usize = 1_000;

/// The levels of `c10k compare --python`.
pub const LEVELS: [usize; 4] = [10, 100, 1_000, 10_000];

/// The levels of `c10k compare --python --quick`.
pub const QUICK_LEVELS: [usize; 1] = [100];

/// How long the check before a cell waits for a reply.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A way of serving in CPython.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `socketserver.ThreadingMixIn`: a thread per connection.
    SocketserverThread,
    /// `socketserver.ForkingMixIn`: a process per connection.
    SocketserverFork,
    /// A `selectors.SelectSelector` loop (asyncore's way).
    Selectors,
    /// Stock asyncio, an `asyncio.Protocol`.
    Asyncio,
    /// The same Protocol on uvloop.
    Uvloop,
    /// gevent's `StreamServer`.
    Gevent,
    /// A Twisted `Protocol` on the default reactor.
    Twisted,
    /// The same Protocol on c10k's loop, epoll-et.
    C10kPy,
    /// The same Protocol on c10k's loop, io_uring.
    C10kPyUring,
    /// `c10k.serve_blocking(strategy="thread")`.
    C10kPyThread,
    /// `c10k.serve_blocking(strategy="prefork")`.
    C10kPyPrefork,
}

impl Server {
    /// Every one, in the report's order.
    pub const ALL: [Server; 11] = [
        Server::SocketserverThread,
        Server::SocketserverFork,
        Server::Selectors,
        Server::Asyncio,
        Server::Uvloop,
        Server::Gevent,
        Server::Twisted,
        Server::C10kPy,
        Server::C10kPyUring,
        Server::C10kPyThread,
        Server::C10kPyPrefork,
    ];

    /// The runner's `--server`, and the row's name.
    pub fn name(self) -> &'static str {
        match self {
            Server::SocketserverThread => "socketserver-thread",
            Server::SocketserverFork => "socketserver-fork",
            Server::Selectors => "selectors",
            Server::Asyncio => "asyncio",
            Server::Uvloop => "uvloop",
            Server::Gevent => "gevent",
            Server::Twisted => "twisted",
            Server::C10kPy => "c10k-py",
            Server::C10kPyUring => "c10k-py-uring",
            Server::C10kPyThread => "c10k-py-thread",
            Server::C10kPyPrefork => "c10k-py-prefork",
        }
    }

    /// The module it imports.
    pub fn module(self) -> &'static str {
        match self {
            Server::SocketserverThread | Server::SocketserverFork => "socketserver",
            Server::Selectors => "selectors",
            Server::Asyncio => "asyncio",
            Server::Uvloop => "uvloop",
            Server::Gevent => "gevent",
            Server::Twisted => "twisted",
            Server::C10kPy | Server::C10kPyUring | Server::C10kPyThread | Server::C10kPyPrefork => {
                "c10k"
            }
        }
    }

    /// What `pip install` takes (`None`: the standard library).
    pub fn pip_spec(self) -> Option<&'static str> {
        match self.module() {
            "uvloop" | "gevent" | "twisted" => Some(self.module()),
            "c10k" => Some("./crates/py"),
            _ => None,
        }
    }

    /// Served on c10k's engine.
    pub fn c10k_backed(self) -> bool {
        self.module() == "c10k"
    }

    /// It can run as `NAME-procs`, one process per server CPU (`c10k-py-prefork` is
    /// processes already).
    pub fn has_procs_row(self) -> bool {
        self != Server::C10kPyPrefork
    }

    /// How it serves, in words.
    pub fn how(self) -> &'static str {
        match self {
            Server::SocketserverThread => {
                "socketserver.ThreadingMixIn + TCPServer: a thread per connection, blocking \
                 recv/sendall"
            }
            Server::SocketserverFork => {
                "socketserver.ForkingMixIn + TCPServer: a process per connection \
                 (max_children raised from 40 to the level)"
            }
            Server::Selectors => {
                "selectors.SelectSelector loop (asyncore's way): nonblocking sockets, \
                 select(2), its own timer heap for an async wait"
            }
            Server::Asyncio => "asyncio.Protocol on the stock loop (epoll)",
            Server::Uvloop => "the same asyncio.Protocol on uvloop (libuv)",
            Server::Gevent => "gevent.server.StreamServer, a greenlet per connection",
            Server::Twisted => "a Twisted Protocol on the default reactor (epoll)",
            Server::C10kPy => "the same asyncio.Protocol on c10k's loop (epoll-et)",
            Server::C10kPyUring => "the same asyncio.Protocol on c10k's loop (io_uring)",
            Server::C10kPyThread => "c10k.serve_blocking(strategy=\"thread\"): a blocking handler",
            Server::C10kPyPrefork => {
                "c10k.serve_blocking(strategy=\"prefork\"): a blocking handler, processes = \
                 the level"
            }
        }
    }
}

/// A row of the field: a way of serving, once or as one process per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPeer {
    /// How it serves.
    pub server: Server,
    /// As `NAME-procs`: forked copies, each with its own `SO_REUSEPORT` listener.
    pub procs: bool,
}

impl FieldPeer {
    /// Every row, in the report's order: the single processes, then the `-procs` rows.
    pub fn all() -> Vec<FieldPeer> {
        let singles = Server::ALL.iter().map(|&server| FieldPeer {
            server,
            procs: false,
        });
        let procs = Server::ALL
            .iter()
            .filter(|s| s.has_procs_row())
            .map(|&server| FieldPeer {
                server,
                procs: true,
            });
        singles.chain(procs).collect()
    }

    /// The row's name: `asyncio`, `asyncio-procs`.
    pub fn name(self) -> String {
        if self.procs {
            format!("{}-procs", self.server.name())
        } else {
            self.server.name().to_string()
        }
    }

    /// The row called `name`.
    pub fn from_name(name: &str) -> Option<FieldPeer> {
        FieldPeer::all().into_iter().find(|p| p.name() == name)
    }

    /// The names, for messages.
    pub fn names() -> String {
        let names: Vec<String> = FieldPeer::all().iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// The marker command of the row with `procs` processes (1 for a single one).
    pub fn command(self, python: &Path, procs: usize) -> String {
        format!("{{pyfield:{}:{procs}}} {}", self.name(), python.display())
    }

    /// The peer, its processes and interpreter of a marker command.
    pub fn parse_command(command: &str) -> Option<(FieldPeer, usize, PathBuf)> {
        let rest = command.strip_prefix("{pyfield:")?;
        let (inner, python) = rest.split_once('}')?;
        let (name, procs) = inner.rsplit_once(':')?;
        let python = python.trim();
        (!python.is_empty()).then_some(())?;
        Some((
            FieldPeer::from_name(name)?,
            procs.parse().ok()?,
            PathBuf::from(python),
        ))
    }

    /// Why it cannot hold `conns` connections, if it cannot.
    pub fn cannot_serve(self, conns: usize) -> Option<String> {
        match self.server {
            Server::Selectors if conns > SELECT_CONNS => Some(format!(
                "select() watches descriptors below FD_SETSIZE (1024) only: {} connections \
                 need descriptors beyond it (the loop refuses those; a poll or epoll loop \
                 has no such limit)",
                super::super::report::fmt_conns(conns)
            )),
            Server::SocketserverFork | Server::C10kPyPrefork if conns > PROCESS_PER_CONN => {
                Some(format!(
                    "a CPython process per connection: {} interpreters are beyond what this lab \
                     starts ({} at most)",
                    super::super::report::fmt_conns(conns),
                    super::super::report::fmt_conns(PROCESS_PER_CONN)
                ))
            }
            _ => None,
        }
    }

    /// The row, with `procs` processes for a `-procs` row (the server CPUs): the
    /// version in the summary, or unavailable with why.
    pub fn target(self, python: &Path, procs: usize) -> Target {
        let n = if self.procs { procs } else { 1 };
        let (mut unavailable, version) = match version(self.server, python) {
            Ok(v) => (None, v),
            Err(why) => (Some(why), format!("{} (not installed)", self.server.name())),
        };
        if self.procs && procs < 2 && unavailable.is_none() {
            unavailable = Some(format!(
                "one process per core with {procs} server CPU is `{}` itself: give the servers \
                 more CPUs (--server-cpus 0,1) to measure it",
                self.server.name()
            ));
        }
        let shape = if self.procs {
            format!(
                "{n} forked copies, each with its own SO_REUSEPORT listener (one process per \
                 server CPU)"
            )
        } else {
            "one process".into()
        };
        Target {
            name: self.name(),
            kind: TargetKind::Peer {
                command: self.command(python, n),
            },
            unavailable,
            conn_limit: None,
            item: None,
            summary: format!(
                "CPython field: {version}; bench/py/field.py --server {}: {}; {shape}",
                self.server.name(),
                self.server.how()
            ),
        }
    }
}

/// Why the row `target` cannot hold `conns` connections, when it is a row of the
/// field that cannot ([`FieldPeer::cannot_serve`]).
pub fn cannot_serve(target: &Target, conns: usize) -> Option<String> {
    match &target.kind {
        TargetKind::Peer { command } => FieldPeer::parse_command(command)?.0.cannot_serve(conns),
        TargetKind::Strategy => None,
    }
}

/// What `python --version` says ("Python 3.11.7"), or why there is nothing.
pub fn interpreter_version(python: &Path) -> String {
    match Command::new(python).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.trim().to_string()
        }
        Ok(out) => format!("unknown ({} --version: {})", python.display(), out.status),
        Err(e) => format!("unknown (cannot run {}: {e})", python.display()),
    }
}

/// The rows of `--python` (`names`: a subset; unknown ones are an error), `procs`
/// processes for the `-procs` rows.
pub fn targets(
    names: Option<&[String]>,
    python: &Path,
    procs: usize,
) -> Result<Vec<Target>, String> {
    let peers: Vec<FieldPeer> = match names {
        None => FieldPeer::all(),
        Some(names) => names
            .iter()
            .map(|n| {
                FieldPeer::from_name(n.trim()).ok_or_else(|| {
                    format!(
                        "'{n}' is not in the CPython field: choose from {}",
                        FieldPeer::names()
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut rows: Vec<Target> = Vec::new();
    for p in peers {
        if !rows.iter().any(|r| r.name == p.name()) {
            rows.push(p.target(python, procs));
        }
    }
    Ok(rows)
}

/// Asks the runner for `server`'s version in `python`, or why it cannot serve.
pub fn version(server: Server, python: &Path) -> Result<String, String> {
    let dir = runner(server.name())?;
    let out = dir.output(python, &["--server", server.name(), "--version"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(MISSING) => Err(missing(server, python)),
        Some(UNSUPPORTED) => Err(stderr.trim().to_string()),
        _ => Err(format!(
            "{} field.py --server {} --version failed ({}): {}",
            python.display(),
            server.name(),
            out.status,
            stderr.trim()
        )),
    }
}

/// Why a row cannot run when its package is not importable by `python`.
fn missing(server: Server, python: &Path) -> String {
    let spec = server.pip_spec().unwrap_or(server.module());
    not_importable(server.module(), python, spec)
}

/// The field's runner (`field.py`) and the Protocol, in a fresh directory.
pub fn runner(name: &str) -> Result<Scripts, String> {
    Scripts::write(name, "field.py", FIELD_RUNNER)
}

impl FieldPeer {
    /// The runner's arguments that serve this row with `procs` processes, sized for
    /// `conns`, doing `work`, on an address the kernel picks.
    pub fn serve_args(self, procs: usize, conns: usize, work: &Work) -> Vec<String> {
        [
            "--server",
            self.server.name(),
            "--procs",
            &procs.to_string(),
            "--conns",
            &conns.to_string(),
            "--work",
            &work.to_string(),
            "--listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The payloads of the check: distinct, so that a reply to the wrong request shows.
const CHECK: [&[u8]; 2] = [
    b"c10k field check: one\n",
    b"c10k field check: two, longer\n",
];

/// Checks a field server before it is measured: on one connection, each of two
/// distinct requests comes back byte for byte, and not before its wait (blocking or async)
/// has passed. `Err` says what was wrong.
pub fn check(addr: SocketAddr, work: &Work) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, CHECK_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(CHECK_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(CHECK_TIMEOUT)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    let wait = work.blocking_wait() + work.async_wait();
    for request in CHECK {
        let sent = Instant::now();
        s.write_all(request)
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut reply = vec![0u8; request.len()];
        s.read_exact(&mut reply).map_err(|e| {
            format!(
                "no echo of {:?}: {e}",
                String::from_utf8_lossy(request).trim_end()
            )
        })?;
        let took = sent.elapsed();
        if reply != request {
            return Err(format!(
                "echoed {:?} for {:?}",
                String::from_utf8_lossy(&reply),
                String::from_utf8_lossy(request)
            ));
        }
        if took < wait {
            return Err(format!(
                "the reply came after {took:?}, before the request's wait of {wait:?}: the \
                 work is not done"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_command_round_trips() {
        let python = Path::new("/opt/py 3/bin/python3");
        for p in FieldPeer::all() {
            assert_eq!(
                FieldPeer::parse_command(&p.command(python, 2)),
                Some((p, 2, python.to_path_buf()))
            );
            assert_eq!(FieldPeer::from_name(&p.name()), Some(p));
        }
        assert_eq!(FieldPeer::parse_command("{python:asyncio} python3"), None);
        assert_eq!(FieldPeer::parse_command("{pyfield:trio:1} python3"), None);
        assert_eq!(FieldPeer::parse_command("{pyfield:asyncio:1}"), None);
        assert_eq!(FieldPeer::all().len(), 21);
        assert!(FieldPeer::from_name("c10k-py-thread-procs").is_some());
        assert!(FieldPeer::from_name("c10k-py-prefork-procs").is_none());
    }

    #[test]
    fn every_server_is_one_the_runner_knows() {
        for s in Server::ALL {
            assert!(
                FIELD_RUNNER.contains(&format!("\"{}\": (", s.name())),
                "field.py lacks {}",
                s.name()
            );
        }
        for s in Server::ALL.iter().filter(|s| s.has_procs_row()) {
            let procs = FIELD_RUNNER
                .split("PROCS = (")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap();
            assert!(procs.contains(&format!("\"{}\"", s.name())), "{}", s.name());
        }
    }

    #[test]
    fn levels_a_row_cannot_hold_say_why() {
        let row = |name: &str| FieldPeer::from_name(name).unwrap();
        assert!(row("selectors").cannot_serve(1_000).is_none());
        let why = row("selectors-procs").cannot_serve(10_000).unwrap();
        assert!(why.contains("FD_SETSIZE (1024)"), "{why}");
        assert!(row("socketserver-fork").cannot_serve(1_000).is_none());
        let why = row("socketserver-fork").cannot_serve(10_000).unwrap();
        assert!(why.contains("10,000 interpreters"), "{why}");
        assert!(row("c10k-py-prefork").cannot_serve(10_000).is_some());
        assert!(row("asyncio").cannot_serve(10_000).is_none());
        assert!(row("socketserver-thread").cannot_serve(10_000).is_none());
    }

    #[test]
    fn a_missing_package_names_its_pip_install() {
        assert_eq!(
            missing(Server::Gevent, Path::new("/v/bin/python")),
            "the Python package gevent is not importable by /v/bin/python: /v/bin/python -m \
             pip install gevent"
        );
        assert!(missing(Server::C10kPyThread, Path::new("p")).ends_with("install ./crates/py"));
        let why = version(Server::Asyncio, Path::new("/nonexistent-c10k/python3")).unwrap_err();
        assert!(why.contains("--python-bin"), "{why}");
    }

    #[test]
    fn a_subset_of_the_field_and_unknown_names() {
        let python = Path::new("/nonexistent-c10k/python3");
        let names = vec![
            "asyncio".to_string(),
            "asyncio".into(),
            "gevent-procs".into(),
        ];
        let rows = targets(Some(&names), python, 2).unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(got, ["asyncio", "gevent-procs"]);
        let TargetKind::Peer { command } = &rows[1].kind else {
            panic!()
        };
        assert_eq!(FieldPeer::parse_command(command).unwrap().1, 2);
        let why = targets(Some(&["trio".to_string()]), python, 1).unwrap_err();
        assert!(why.contains("socketserver-thread"), "{why}");
    }

    #[test]
    fn one_server_cpu_makes_the_procs_rows_na() {
        let p = FieldPeer::from_name("asyncio-procs").unwrap();
        // The stock library is there wherever python3 is.
        let row = p.target(Path::new("python3"), 1);
        let why = row.unavailable.unwrap();
        assert!(why.contains("--server-cpus"), "{why}");
    }

    /// A server that echoes after `delay`, for the check.
    fn echo_after(delay: Duration, mangle: bool) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    return;
                }
                std::thread::sleep(delay);
                if mangle {
                    buf[0] ^= 1;
                }
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[test]
    fn the_check_wants_the_bytes_and_the_wait() {
        let none = Work::NONE;
        let blocking: Work = "wait=2ms,blocking".parse().unwrap();
        assert_eq!(check(echo_after(Duration::ZERO, false), &none), Ok(()));
        assert_eq!(
            check(echo_after(Duration::from_millis(3), false), &blocking),
            Ok(())
        );
        let why = check(echo_after(Duration::ZERO, true), &none).unwrap_err();
        assert!(why.starts_with("echoed"), "{why}");
        // A wait far longer than any stall of a busy machine: an immediate echo is early.
        let long: Work = "wait=5s,blocking".parse().unwrap();
        let why = check(echo_after(Duration::ZERO, false), &long).unwrap_err();
        assert!(why.contains("the work is not done"), "{why}");
    }
}

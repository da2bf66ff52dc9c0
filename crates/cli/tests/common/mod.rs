//! Test harness shared by the integration tests of the `c10k` binary.
//!
//! - [`Server`] runs `c10k serve ...` as a child process, waits for its
//!   `listening on IP:PORT` line, collects its stderr, and kills it on drop.
//! - Client helpers: sockets with read/write timeouts (a server bug fails a test
//!   instead of hanging it), an HTTP/1.1 response parser, a RESP2 reply parser.
//! - [`XorShift`]: a tiny seeded PRNG for reproducible payloads.
//! - [`need_tool`] / [`run_tool`]: external clients (curl, redis-cli...), which are
//!   required, never silently skipped.
//! - [`strategy_tests!`] (in `strategies.rs`): one `#[test]` per strategy, checked
//!   against `Strategy::ALL`; timer windows; [`one_at_a_time`].
//! - `metrics.rs`: waiting on the server's `/metrics` counters instead of sleeping.
//!
//! Every loop here is bounded by a count or by a deadline.
#![allow(dead_code, unused_imports, unused_macros)] // each test crate uses a different subset

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Signal};

mod metrics;
mod strategies;

pub use metrics::*;
pub(crate) use strategies::strategy_tests;
pub use strategies::{
    TIMER_EARLY, assert_lists_every_strategy, assert_timed_out, one_at_a_time, strategy_under_test,
    timer_late,
};

/// Read and write timeout of every client socket: long enough never to trip on a
/// slow CI machine, short enough that a server bug fails the test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the server may take to print `listening on ...`.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's default `--drain-timeout`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Slack on top of the drain timeout before a server that has not exited is a failure.
pub const EXIT_MARGIN: Duration = Duration::from_secs(10);

/// Path of the `c10k` binary built by Cargo for these tests.
pub fn c10k_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_c10k"))
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, once. The server
/// inherits it; the 1,000-connection tests need more than 2,000 descriptors in all.
pub fn raise_nofile_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut limit = rustix::process::getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            limit.current = limit.maximum;
            if let Err(err) = rustix::process::setrlimit(Resource::Nofile, limit) {
                eprintln!("warning: could not raise RLIMIT_NOFILE: {err}");
            }
        }
    });
}

/// A running `c10k serve` child process.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    label: String,
    stderr: Arc<Mutex<String>>,
    stderr_done: Arc<AtomicBool>,
    stdout_rest: Arc<Mutex<String>>,
    stdout_done: Arc<AtomicBool>,
}

impl Server {
    /// Spawns `c10k serve --strategy S --app A --listen 127.0.0.1:0 EXTRA...` and
    /// waits (at most [`START_TIMEOUT`]) for its `listening on IP:PORT` line.
    pub fn start(strategy: &str, app: &str, extra: &[&str]) -> Server {
        Server::start_under(&[], strategy, app, extra)
    }

    /// Like [`start`](Server::start), run under a wrapper command (`wrapper[0]`
    /// with arguments `wrapper[1..]`, then the c10k command line), e.g.
    /// `["prlimit", "--nofile=64:64", "--"]`.
    pub fn start_under(wrapper: &[&str], strategy: &str, app: &str, extra: &[&str]) -> Server {
        Server::spawn(wrapper, "127.0.0.1:0", strategy, app, extra)
    }

    /// Like [`start`](Server::start), listening on `listen` (a loopback address with
    /// port 0, e.g. `[::1]:0`) instead of `127.0.0.1:0`.
    pub fn start_on(listen: &str, strategy: &str, app: &str, extra: &[&str]) -> Server {
        Server::spawn(&[], listen, strategy, app, extra)
    }

    fn spawn(wrapper: &[&str], listen: &str, strategy: &str, app: &str, extra: &[&str]) -> Server {
        let listen_addr: SocketAddr = listen
            .parse()
            .unwrap_or_else(|e| panic!("--listen {listen}: {e}"));
        assert!(
            listen_addr.ip().to_canonical().is_loopback() && listen_addr.port() == 0,
            "tests listen on a loopback address with port 0, not {listen}"
        );
        raise_nofile_limit();
        let label = format!("--strategy {strategy} --app {app} {}", extra.join(" "));
        let mut command = match wrapper.split_first() {
            None => Command::new(c10k_bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(c10k_bin());
                c
            }
        };
        let mut child = command
            .args([
                "serve",
                "--strategy",
                strategy,
                "--app",
                app,
                "--listen",
                listen,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot spawn c10k serve {label}: {err}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = Arc::new(AtomicBool::new(false));
        {
            let pipe = child.stderr.take().unwrap();
            let (text, done) = (Arc::clone(&stderr), Arc::clone(&stderr_done));
            thread::spawn(move || {
                let mut pipe = io::BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match pipe.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => text
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&line)),
                    }
                }
                done.store(true, Ordering::SeqCst);
            });
        }

        let stdout_rest = Arc::new(Mutex::new(String::new()));
        let stdout_done = Arc::new(AtomicBool::new(false));
        let (first_line_tx, first_line_rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().unwrap();
            let (rest, done) = (Arc::clone(&stdout_rest), Arc::clone(&stdout_done));
            thread::spawn(move || {
                let mut pipe = io::BufReader::new(pipe);
                let mut first = Vec::new();
                let _ = pipe.read_until(b'\n', &mut first);
                let _ = first_line_tx.send(String::from_utf8_lossy(&first).into_owned());
                let mut tail = Vec::new();
                let _ = pipe.read_to_end(&mut tail);
                rest.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&tail));
                done.store(true, Ordering::SeqCst);
            });
        }

        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            label,
            stderr,
            stderr_done,
            stdout_rest,
            stdout_done,
        };
        let line = match first_line_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "c10k serve {} printed no `listening on` line within {START_TIMEOUT:?}",
                server.label
            ),
        };
        if line.is_empty() {
            // stdout closed: the process exited (or closed stdout) before listening.
            let status = server.wait_exit(Duration::from_secs(5));
            panic!(
                "c10k serve {} exited ({status}) before printing `listening on`; stderr:\n{}",
                server.label,
                server.stderr_text()
            );
        }
        let addr = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix("listening on "))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!("first stdout line is not `listening on IP:PORT\\n`: {line:?}")
            });
        assert_eq!(addr.ip(), listen_addr.ip(), "{line:?}");
        assert_ne!(
            addr.port(),
            0,
            "--listen {listen} must report the bound port: {line:?}"
        );
        server.addr = addr;
        server
    }

    /// The address the server listens on (from its `listening on` line).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (`VmRSS`), summed over the process and its
    /// descendants, if it has any.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid();
        let own = vm_rss_kib(pid)
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status: has the server exited?"));
        own + descendants(pid)
            .into_iter()
            .filter_map(vm_rss_kib)
            .sum::<u64>()
    }

    /// Waits (at most 10 s) until the server's process tree stops growing: a
    /// `prefork` pool may still be forking right after `listening on`, which would
    /// count as memory growth in [`rss_kib`](Self::rss_kib).
    pub fn wait_tree_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = usize::MAX;
        let mut stable = 0;
        while stable < 3 && Instant::now() < deadline {
            let n = descendants(self.pid()).len();
            stable = if n == last { stable + 1 } else { 0 };
            last = n;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `sig` to the server process.
    pub fn signal(&self, sig: Signal) {
        let raw = i32::try_from(self.pid()).unwrap();
        rustix::process::kill_process(Pid::from_raw(raw).unwrap(), sig)
            .unwrap_or_else(|err| panic!("kill({raw}, {sig:?}): {err}"));
    }

    /// Sends SIGTERM to the server process.
    pub fn sigterm(&self) {
        self.signal(Signal::TERM);
    }

    /// Waits for the process to exit; panics if it is still running after `timeout`.
    /// Once it has exited, waits (briefly) for its stdout and stderr to be collected.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "c10k serve {} did not exit within {timeout:?}",
                self.label
            );
            thread::sleep(Duration::from_millis(10));
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(self.stderr_done.load(Ordering::SeqCst) && self.stdout_done.load(Ordering::SeqCst))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        status
    }

    /// SIGTERM, then expects a clean exit (status 0) within the drain timeout plus a
    /// margin, and no panic in the log.
    pub fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN);
        assert!(
            status.success(),
            "c10k serve {} exited with {status} after SIGTERM",
            self.label
        );
        self.assert_no_panic();
    }

    /// Fails if the server's stderr mentions a panic.
    pub fn assert_no_panic(&self) {
        let text = self.stderr_text();
        assert!(
            !text.contains("panicked"),
            "the server panicked; stderr:\n{text}"
        );
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What the server wrote to stdout after its `listening on` line; complete only
    /// once [`wait_exit`](Self::wait_exit) has returned.
    pub fn stdout_rest(&self) -> String {
        self.stdout_rest.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.pid();
            let children = descendants(pid);
            let _ = self.child.kill();
            for child in children {
                if let Some(pid) = i32::try_from(child).ok().and_then(Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "----- stderr of c10k serve {} -----\n{}----- end of stderr -----",
                self.label,
                self.stderr_text()
            );
        }
    }
}

/// `VmRSS` of one process in KiB, `None` if it is gone.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The state letter (`R`, `S`, `Z`...) and start time (clock ticks after boot) of a
/// process, from `/proc/PID/stat`; `None` once it is gone (reaped).
pub fn proc_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    // Field 22 of stat is the start time; `rest` begins at field 3.
    let start = rest.get(19)?.parse().ok()?;
    Some((state, start))
}

/// All descendants of `pid` (children, grandchildren...), from `/proc/*/stat`;
/// zombies included (a zombie is listed until its parent reaps it).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if c != pid && !found.contains(&c) && found.len() < 10_000 {
                found.push(c);
                queue.push(c);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------------

/// Finds `name` on `PATH`; panics (never skips) if it is missing.
pub fn need_tool(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    panic!("{name} not found: run scripts/test.sh, which installs it");
}

/// Runs `cmd` (stdin closed) to completion and returns its output; kills it and
/// panics if it takes longer than `timeout`.
pub fn run_tool(cmd: &mut Command, timeout: Duration) -> Output {
    run_tool_with_input(cmd, None, timeout)
}

/// [`run_tool`], with `input` written to the tool's stdin (then closed).
pub fn run_tool_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err}"));
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A thread, so that a tool that does not read cannot block the test; the
        // pipe closes when it is done.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap();
            let stderr = err.join().unwrap();
            panic!(
                "{shown} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A fresh path in the temporary directory (the caller creates and removes it).
pub fn temp_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("c10k-test-{}-{tag}-{nanos}", std::process::id()))
}

// ---------------------------------------------------------------------------------
// Client sockets
// ---------------------------------------------------------------------------------

/// Connects with a timeout and sets [`IO_TIMEOUT`] on reads and writes.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    assert!(
        addr.ip().is_loopback(),
        "tests only talk to 127.0.0.1, not {addr}"
    );
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// [`try_connect`], panicking on failure.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|err| panic!("connect to {addr}: {err}"))
}

/// One `read`, retried when a signal interrupts it (EINTR is not an answer from the
/// server).
pub fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads exactly `n` bytes.
pub fn read_exact_n(r: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut buf[got..]) {
            Ok(0) => panic!("{what}: EOF after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("{what}: read failed after {got} of {n} bytes: {err}"),
        }
    }
    buf
}

/// Waits until `stream` has a byte to read (or is closed), without consuming it: the
/// server has answered something. Bounded by the read timeout.
pub fn wait_readable(stream: &TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte) {
            Ok(_) => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("{what}: nothing to read: {err}"),
        }
    }
}

/// Waits until the bytes waiting in `stream`'s receive queue (FIONREAD) stop changing
/// (the same for 100 ms, at most 10 s): the server has sent what it could, and what
/// it has left waits for the client to read. Returns how many bytes are waiting.
pub fn wait_receive_queue_settled(stream: &TcpStream, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut same) = (u64::MAX, 0);
    loop {
        let queued = rustix::io::ioctl_fionread(stream)
            .unwrap_or_else(|err| panic!("{what}: FIONREAD: {err}"));
        same = if queued == last { same + 1 } else { 0 };
        if queued > 0 && same >= 5 {
            return queued;
        }
        last = queued;
        assert!(
            Instant::now() < deadline,
            "{what}: the receive queue did not settle in 10 s ({queued} bytes)"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until EOF (the read timeout bounds the wait).
pub fn read_to_eof(r: &mut impl Read, what: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Err(err) = r.read_to_end(&mut buf) {
        panic!("{what}: no EOF ({err}) after {} bytes", buf.len());
    }
    buf
}

/// True for the errors a peer's close (RST) shows up as.
pub fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Expects the peer to have closed: EOF (or a reset), and no further data.
pub fn expect_eof(r: &mut impl Read, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!(
                "{what}: expected EOF, got {n} more bytes: {:?}",
                String::from_utf8_lossy(&buf[..n.min(200)])
            ),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if is_reset(&err) => return,
            Err(err) => panic!("{what}: expected EOF, read failed (still open?): {err}"),
        }
    }
}

/// Compares byte strings without dumping megabytes on failure.
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes, want {}; first difference at offset {first} \
         (got {:?}..., want {:?}...)",
        got.len(),
        want.len(),
        &got[first..got.len().min(first + 16)],
        &want[first..want.len().min(first + 16)],
    );
}

/// After SIGTERM, a new connection must be refused, or closed without being served.
///
/// `probe` is one complete request of the app. A connection accepted in the short
/// window before the server handled the signal may legitimately be served, so a
/// served probe is retried, and fails the test only once `grace` has passed since
/// `signalled`. Returns how the probe ended, for messages.
pub fn expect_new_connections_rejected(
    addr: SocketAddr,
    probe: &[u8],
    signalled: Instant,
    grace: Duration,
) -> &'static str {
    for _attempt in 0..200 {
        let mut stream = match try_connect(addr) {
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => return "refused",
            // Reset during the handshake or right after it: the listener went away.
            Err(err) if is_reset(&err) => return "reset while connecting",
            Err(err) => panic!("connect after SIGTERM: unexpected error {err} ({err:?})"),
            Ok(stream) => stream,
        };
        // The write may fail if the server already reset the connection.
        let _ = stream.write_all(probe);
        let mut buf = [0u8; 256];
        match read_some(&mut stream, &mut buf) {
            Ok(0) => return "closed",
            Err(err) if is_reset(&err) => return "reset",
            Err(err) => {
                panic!("a connection made after SIGTERM was neither served nor closed: {err}")
            }
            Ok(_) => {
                assert!(
                    signalled.elapsed() < grace,
                    "a connection made {:?} after SIGTERM was still served",
                    signalled.elapsed()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    panic!("new connections were still served after 200 attempts");
}

// ---------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------

/// xorshift64: tiny, seeded, reproducible. Not for anything but test payloads.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        if s == 0 {
            s = 1;
        }
        Self(s)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = u64::try_from(hi - lo + 1).unwrap();
        lo + usize::try_from(self.next_u64() % span).unwrap()
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

// ---------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// `HTTP/1.1`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with a Host header.
pub fn http_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// `POST /echo` with a Content-Length body.
pub fn http_post_echo(body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads one CRLF-terminated line (at most 64 KiB), without the CRLF.
fn read_crlf_line(r: &mut impl BufRead, what: &str) -> String {
    let mut line = Vec::new();
    let n = r
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .unwrap_or_else(|err| panic!("{what}: read failed: {err}"));
    assert!(n > 0, "{what}: connection closed (EOF)");
    assert!(
        line.ends_with(b"\r\n"),
        "{what}: line not terminated by CRLF: {:?}",
        lossy(&line)
    );
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap_or_else(|err| panic!("{what}: line is not UTF-8: {err}"))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// Reads and parses one response: status line, headers, then a body framed by
/// `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection.
pub fn read_http_response(r: &mut impl BufRead) -> HttpResponse {
    let status_line = read_crlf_line(r, "HTTP status line");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let code = parts.next().unwrap_or_default();
    assert!(
        code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()),
        "bad status code in {status_line:?}"
    );
    let status: u16 = code.parse().unwrap();
    let reason = parts.next().unwrap_or_default().to_owned();

    let mut headers = Vec::new();
    for _ in 0..=100 {
        let line = read_crlf_line(r, "HTTP header line");
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("header without colon: {line:?}"));
        assert!(
            !name.is_empty() && !name.contains(' '),
            "bad header name in {line:?}"
        );
        headers.push((name.to_owned(), value.trim().to_owned()));
        assert!(headers.len() < 100, "more than 100 response headers");
    }
    let mut response = HttpResponse {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
    };

    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked_body(r)
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .unwrap_or_else(|_| panic!("bad Content-Length {len:?}"));
        read_exact_n(r, len, "HTTP response body")
    } else {
        read_to_eof(r, "close-delimited HTTP response body")
    };
    response
}

fn read_chunked_body(r: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..1_000_000 {
        let line = read_crlf_line(r, "chunk size line");
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        if size == 0 {
            for _ in 0..100 {
                if read_crlf_line(r, "chunked trailer").is_empty() {
                    return body;
                }
            }
            panic!("more than 100 trailer lines");
        }
        body.extend_from_slice(&read_exact_n(r, size, "chunk data"));
        let crlf = read_exact_n(r, 2, "chunk CRLF");
        assert_eq!(crlf, b"\r\n", "chunk data not followed by CRLF");
    }
    panic!("more than 1,000,000 chunks");
}

// ---------------------------------------------------------------------------------
// RESP2
// ---------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:...`
    Int(i64),
    /// `$...`; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*...`; `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// `+OK`
    pub fn ok() -> Resp {
        Resp::Simple("OK".into())
    }

    /// A non-null bulk string.
    pub fn bulk(bytes: &[u8]) -> Resp {
        Resp::Bulk(Some(bytes.to_vec()))
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn resp_cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one complete reply.
pub fn read_resp(r: &mut impl BufRead) -> Resp {
    read_resp_at_depth(r, 0)
}

fn read_resp_at_depth(r: &mut impl BufRead, depth: usize) -> Resp {
    assert!(depth < 16, "RESP reply nested deeper than 16");
    let line = read_crlf_line(r, "RESP reply");
    let (kind, rest) = line
        .split_at_checked(1)
        .unwrap_or_else(|| panic!("empty RESP line"));
    let int = |s: &str| -> i64 {
        s.parse()
            .unwrap_or_else(|_| panic!("bad RESP integer {line:?}"))
    };
    match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(int(rest)),
        "$" => match int(rest) {
            -1 => Resp::Bulk(None),
            n if n >= 0 => {
                let n = usize::try_from(n).unwrap();
                let mut data = read_exact_n(r, n + 2, "RESP bulk string");
                assert!(data.ends_with(b"\r\n"), "bulk string not followed by CRLF");
                data.truncate(n);
                Resp::Bulk(Some(data))
            }
            _ => panic!("bad bulk length {line:?}"),
        },
        "*" => match int(rest) {
            -1 => Resp::Array(None),
            n if (0..1_000_000).contains(&n) => Resp::Array(Some(
                (0..n).map(|_| read_resp_at_depth(r, depth + 1)).collect(),
            )),
            _ => panic!("bad array length {line:?}"),
        },
        _ => panic!("unknown RESP reply type in {line:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------

/// Serialises [`Server::start_with_listener`]: while it runs, a copy of the listener
/// without close-on-exec exists, which any other child spawned meanwhile would
/// inherit.
static INHERIT_LOCK: Mutex<()> = Mutex::new(());

impl Server {
    /// Like [`start`](Server::start), but the server inherits `listener` as fd 3 with
    /// `LISTEN_FDS=1`, `LISTEN_PID` = its pid and `LISTEN_FDNAMES=test`: the systemd
    /// socket-activation convention. A `bash` wrapper moves a non-close-on-exec copy
    /// of the listener to fd 3, sets the variables and `exec`s c10k (same pid), so no
    /// `unsafe` `pre_exec` is needed here. `listen_pid` overrides `LISTEN_PID`.
    pub fn start_with_listener(
        listener: &std::net::TcpListener,
        listen_pid: Option<&str>,
        strategy: &str,
        app: &str,
        extra: &[&str],
    ) -> Server {
        let _serial = INHERIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // dup(2) leaves close-on-exec clear on the copy.
        let copy = rustix::io::dup(listener).expect("dup the listener");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&copy);
        let pid = listen_pid.unwrap_or("$$");
        let script = format!(
            "if [ {fd} -ne 3 ]; then exec 3<&{fd} {fd}<&-; fi; \
             export LISTEN_FDS=1 LISTEN_PID={pid} LISTEN_FDNAMES=test; exec \"$0\" \"$@\""
        );
        let server = Server::start_under(&["bash", "-c", &script], strategy, app, extra);
        drop(copy);
        server
    }
}

/// Connections a server accepted, from its exit log (`...: accepted N ...` lines).
pub fn accepted_in_log(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split(": accepted ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

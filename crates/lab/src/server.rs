//! The server of one cell: `c10k serve`, a peer command, a peer preset (nginx,
//! redis) or a Python peer (asyncio, uvloop...), started pinned, found by its address,
//! stopped with SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::pin;
use crate::plan::peers::{self, Prefix, Preset, Sizing};
use crate::plan::pyfield::{self, FieldPeer};
use crate::plan::python::{self, PyPeer, Scripts};
use crate::proctree::{self, Proc};

/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a server's stderr is kept (its tail explains a failure).
const STDERR_KEEP: usize = 4096;

/// A running server process.
pub struct ServerProc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// The stderr reader saw EOF.
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
    /// A preset's directory: dropped, so removed, once the server has stopped.
    _prefix: Option<Prefix>,
}

/// What to start.
pub enum Launch<'a> {
    /// `BIN serve --strategy NAME --app APP --listen 127.0.0.1:0 --log-level warn`.
    C10k {
        /// The `c10k` binary.
        bin: &'a Path,
        /// The strategy's name.
        strategy: &'a str,
        /// The app's name.
        app: &'a str,
        /// `--workers`, when the strategy needs one sized to the cell (`prefork`
        /// serves one connection per process: its pool is sized to the concurrency).
        workers: Option<usize>,
        /// `--work` (not passed when none).
        work: c10k_server::Work,
        /// `--processes`, when one process's descriptors cannot hold the level.
        processes: Option<usize>,
    },
    /// `sh -c 'exec COMMAND'` with `{port}` replaced by a free port; a preset's
    /// marker ([`Preset::command`]) starts the preset, configured for the cell; a
    /// Python peer's ([`PyPeer::command`]) the runner, written to the cell's directory.
    Peer {
        /// The command.
        command: &'a str,
    },
    /// A row of the CPython field ([`crate::plan::pyfield`]): the runner, written to
    /// the cell's directory, serving with the cell's work.
    Field {
        /// The row.
        peer: FieldPeer,
        /// The interpreter.
        python: &'a Path,
        /// Its processes (1 but for a `-procs` row).
        procs: usize,
        /// The cell's concurrency, which some size themselves to.
        conns: usize,
        /// The work per request.
        work: c10k_server::Work,
    },
}

/// Substitutes `{port}` in a peer command.
pub fn substitute_port(command: &str, port: u16) -> String {
    command.replace("{port}", &port.to_string())
}

/// How a peer is told apart from c10k when it starts.
enum Ready {
    /// `c10k serve` prints `listening on IP:PORT`.
    Line,
    /// A peer command: something accepts connections at the address.
    Connectable(SocketAddr),
    /// A preset: its app answers at the address, and (nginx) its workers are up.
    Serving(SocketAddr, Preset, usize),
}

/// The command and directory of a preset listening on `port`, sized for the server
/// CPUs and this process's open files limit (which the server inherits).
fn preset_command(
    preset: Preset,
    bin: Option<std::path::PathBuf>,
    port: u16,
    cpus: Option<&[usize]>,
) -> Result<(Command, Prefix, Sizing), String> {
    let bin = match bin {
        Some(bin) => bin,
        None => preset.find()?,
    };
    let workers = cpus.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        <[usize]>::len,
    );
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let sizing = Sizing::for_limit(workers, nofile);
    let prepared = peers::prepare(preset, &bin, port, &sizing)?;
    let mut c = Command::new(&prepared.program);
    c.args(&prepared.args);
    Ok((c, prepared.prefix, sizing))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn keep_tail(buf: &Mutex<String>, text: &str) {
    if let Ok(mut b) = buf.lock() {
        b.push_str(text);
        if b.len() > STDERR_KEEP {
            let cut = b.len() - STDERR_KEEP;
            let cut = (cut..b.len()).find(|&i| b.is_char_boundary(i)).unwrap_or(0);
            b.drain(..cut);
        }
    }
}

impl ServerProc {
    /// Starts the server with the spawning thread pinned to `cpus`, and waits until it
    /// listens. `Err` says why it did not start, in words.
    pub fn start(launch: &Launch<'_>, cpus: Option<&[usize]>) -> Result<ServerProc, String> {
        let python_peer = match launch {
            Launch::Peer { command } => PyPeer::parse_command(command),
            Launch::C10k { .. } | Launch::Field { .. } => None,
        };
        let (mut cmd, ready, prefix) = match (launch, python_peer) {
            (
                Launch::C10k {
                    bin,
                    strategy,
                    app,
                    workers,
                    work,
                    processes,
                },
                _,
            ) => {
                let mut c = Command::new(bin);
                c.args(["serve", "--strategy", strategy, "--app", app])
                    .args(["--listen", "127.0.0.1:0", "--log-level", "warn"]);
                if let Some(n) = workers {
                    c.args(["--workers", &n.to_string()]);
                }
                if !work.is_none() {
                    c.args(["--work", &work.to_string()]);
                }
                if let Some(n) = processes {
                    c.args(["--processes", &n.to_string()]);
                }
                (c, Ready::Line, None)
            }
            (
                Launch::Field {
                    peer,
                    python,
                    procs,
                    conns,
                    work,
                },
                _,
            ) => {
                let runner = pyfield::runner(&peer.name())?;
                // The runner prints `listening on IP:PORT`, as `c10k serve` does.
                let c = runner.command(python, &peer.serve_args(*procs, *conns, work));
                (c, Ready::Line, Some(runner.into_prefix()))
            }
            (Launch::Peer { .. }, Some((peer, python))) => {
                let python = python.unwrap_or_else(|| python::DEFAULT_PYTHON.into());
                let runner = Scripts::serve(peer.name())?;
                // The runner prints `listening on IP:PORT`, as `c10k serve` does.
                let args = ["--loop", peer.loop_name(), "--listen", "127.0.0.1:0"];
                let c = runner.command(&python, &args);
                (c, Ready::Line, Some(runner.into_prefix()))
            }
            (Launch::Peer { command }, None) => {
                let port = free_port().map_err(|e| format!("no free port: {e}"))?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                match Preset::parse_command(command) {
                    Some((preset, bin)) => {
                        let (c, prefix, sizing) = preset_command(preset, bin, port, cpus)?;
                        let workers = match preset {
                            Preset::Nginx => sizing.workers,
                            Preset::Redis => 0,
                        };
                        (c, Ready::Serving(addr, preset, workers), Some(prefix))
                    }
                    None => {
                        let mut c = Command::new("sh");
                        c.arg("-c")
                            .arg(format!("exec {}", substitute_port(command, port)));
                        (c, Ready::Connectable(addr), None)
                    }
                }
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = pin::with_pinned(cpus, || cmd.spawn())?
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(pipe) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            let done = Arc::clone(&stderr_done);
            std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut line = Vec::new();
                // Ends at the server's exit (EOF).
                while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    keep_tail(&buf, &String::from_utf8_lossy(&line));
                    line.clear();
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(pipe) = child.stdout.take() {
            // A peer's stdout explains a failure as well as its stderr (redis logs
            // there); c10k's carries the `listening on` line only.
            let keep = (!matches!(ready, Ready::Line)).then(|| Arc::clone(&stderr));
            std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut first = String::new();
                let _ = pipe.read_line(&mut first);
                let _ = tx.send(first.clone());
                match keep {
                    Some(buf) => {
                        keep_tail(&buf, &first);
                        let mut line = Vec::new();
                        while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                            keep_tail(&buf, &String::from_utf8_lossy(&line));
                            line.clear();
                        }
                    }
                    // Drain the rest so the server never blocks on a full pipe.
                    None => {
                        let _ = std::io::copy(&mut pipe.take(u64::MAX), &mut std::io::sink());
                    }
                }
            });
        }
        let mut server = ServerProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            stderr_done,
            _prefix: prefix,
        };
        let found = match ready {
            Ready::Line => server.wait_listening_line(&rx),
            Ready::Connectable(addr) => server.wait_connectable(addr),
            Ready::Serving(addr, preset, workers) => server.wait_serving(addr, preset, workers),
        };
        match found {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(why) => {
                server.stop();
                Err(why)
            }
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some({
                // Its last words may still be in the pipe: read them (briefly: a
                // grandchild could hold the pipe open).
                let until = Instant::now() + Duration::from_millis(500);
                while !self.stderr_done.load(std::sync::atomic::Ordering::Acquire)
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                format!("the server exited ({status}): {}", self.stderr_tail())
            }),
            _ => None,
        }
    }

    fn wait_listening_line(&mut self, rx: &mpsc::Receiver<String>) -> Result<SocketAddr, String> {
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| format!("no `listening on` line within {START_TIMEOUT:?}"))?;
        if line.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(self
                .exited()
                .unwrap_or_else(|| "the server closed its stdout".into()));
        }
        line.trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))
    }

    fn wait_connectable(&mut self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(why) = self.exited() {
                return Err(why);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "nothing listened on {addr} within {START_TIMEOUT:?}"
        ))
    }

    /// Waits until `preset` answers its app's request at `addr` and has `workers`
    /// worker processes besides its master (0: a single process).
    fn wait_serving(
        &mut self,
        addr: SocketAddr,
        preset: Preset,
        workers: usize,
    ) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("nothing tried");
        while Instant::now() < deadline {
            if let Some(why) = self.exited() {
                return Err(why);
            }
            match peers::probe(preset, addr) {
                Ok(()) => {
                    let procs = proctree::tree(self.pid()).len();
                    if workers == 0 || procs > workers {
                        return Ok(addr);
                    }
                    last = format!("{} of {workers} workers up", procs.saturating_sub(1));
                }
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not serve on {addr} within {START_TIMEOUT:?} ({last}): {}",
            preset.name(),
            self.stderr_tail()
        ))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (the root of its tree).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it wrote to stderr, on one line.
    pub fn stderr_tail(&self) -> String {
        let text = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        let mut lines: Vec<&str> = lines.into_iter().rev().collect();
        lines.retain(|l| !l.trim().is_empty());
        if lines.is_empty() {
            "(no stderr)".into()
        } else {
            lines.join(" | ")
        }
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL; then ends any process of
    /// its tree left behind (by id, checked against its start time). Returns whether it
    /// exited by itself.
    pub fn stop(&mut self) -> bool {
        let left: Vec<Proc> = proctree::tree(self.pid())
            .into_iter()
            .skip(1)
            .map(|(p, _)| p)
            .collect();
        let Some(pid) = i32::try_from(self.pid()).ok().and_then(Pid::from_raw) else {
            return false;
        };
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut clean = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                clean = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !clean {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Children get a moment to follow their parent out.
        let deadline = Instant::now() + Duration::from_secs(2);
        while left.iter().any(|p| proctree::alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in left.into_iter().filter(|p| proctree::alive(*p)) {
            if let Some(pid) = i32::try_from(p.pid).ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        clean
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_substitution() {
        assert_eq!(
            substitute_port("srv --port {port} --x {port}", 7001),
            "srv --port 7001 --x 7001"
        );
        assert_eq!(substitute_port("srv", 1), "srv");
    }

    /// Starts `preset` as a cell would, checks it serves from its own directory with
    /// the sizing asked for, stops it, and checks the directory is gone.
    fn preset_round_trip(preset: Preset) {
        let command = preset.command(Some(
            &preset
                .find()
                .unwrap_or_else(|why| panic!("{why} (scripts/test.sh installs it)")),
        ));
        let mut server = ServerProc::start(&Launch::Peer { command: &command }, Some(&[0]))
            .unwrap_or_else(|why| panic!("{} did not start: {why}", preset.name()));
        peers::probe(preset, server.addr()).unwrap();
        let tree = proctree::tree(server.pid());
        let procs = match preset {
            Preset::Nginx => 2, // a master and one worker per server CPU
            Preset::Redis => 1,
        };
        assert_eq!(tree.len(), procs, "{tree:?}");
        let dir = server
            ._prefix
            .as_ref()
            .map(|p| p.path().to_path_buf())
            .unwrap();
        assert!(dir.is_dir());
        if preset == Preset::Nginx {
            assert!(
                dir.join("nginx.pid").is_file(),
                "the pid file is in the prefix"
            );
        }
        assert!(server.stop(), "{} exits on SIGTERM", preset.name());
        drop(server);
        assert!(!dir.exists(), "{} is removed", dir.display());
    }

    #[test]
    fn the_nginx_preset_serves_hello() {
        preset_round_trip(Preset::Nginx);
    }

    #[test]
    fn the_redis_preset_answers_ping() {
        preset_round_trip(Preset::Redis);
    }

    #[test]
    fn the_asyncio_peer_echoes_from_its_own_directory() {
        use std::io::Write;
        let command = PyPeer::Asyncio.command(None);
        let mut server = ServerProc::start(&Launch::Peer { command: &command }, None)
            .unwrap_or_else(|why| panic!("python3 asyncio did not start: {why}"));
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let dir = server
            ._prefix
            .as_ref()
            .map(|p| p.path().to_path_buf())
            .unwrap();
        assert!(dir.join("serve.py").is_file() && dir.join("echo_protocol.py").is_file());
        assert!(server.stop(), "the runner exits 0 on SIGTERM");
        drop(server);
        assert!(!dir.exists(), "{} is removed", dir.display());
    }

    #[test]
    fn a_preset_that_cannot_start_is_explained() {
        // The binary of another program: it exits at once, saying something.
        let command = Preset::Redis.command(Some(std::path::Path::new("/bin/false")));
        let err = ServerProc::start(&Launch::Peer { command: &command }, None)
            .err()
            .unwrap();
        assert!(err.contains("exited"), "{err}");
    }

    #[test]
    fn a_peer_that_never_listens_is_explained() {
        let launch = Launch::Peer {
            command: "echo 'no such server' >&2; exit 3",
        };
        let err = ServerProc::start(&launch, None).err().unwrap();
        assert!(
            err.contains("exited") && err.contains("no such server"),
            "{err}"
        );
    }
}

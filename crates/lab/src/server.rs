//! The server of one cell: `c10k serve` or a peer command, started pinned, found by its
//! address, stopped with SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::pin;
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
    },
    /// `sh -c 'exec COMMAND'` with `{port}` replaced by a free port.
    Peer {
        /// The command.
        command: &'a str,
    },
}

/// Substitutes `{port}` in a peer command.
pub fn substitute_port(command: &str, port: u16) -> String {
    command.replace("{port}", &port.to_string())
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
        let (mut cmd, peer_addr) = match launch {
            Launch::C10k {
                bin,
                strategy,
                app,
                workers,
            } => {
                let mut c = Command::new(bin);
                c.args(["serve", "--strategy", strategy, "--app", app])
                    .args(["--listen", "127.0.0.1:0", "--log-level", "warn"]);
                if let Some(n) = workers {
                    c.args(["--workers", &n.to_string()]);
                }
                (c, None)
            }
            Launch::Peer { command } => {
                let port = free_port().map_err(|e| format!("no free port: {e}"))?;
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("exec {}", substitute_port(command, port)));
                (c, Some(SocketAddr::from(([127, 0, 0, 1], port))))
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = pin::with_pinned(cpus, || cmd.spawn())?
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut line = Vec::new();
                // Ends at the server's exit (EOF).
                while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    keep_tail(&buf, &String::from_utf8_lossy(&line));
                    line.clear();
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(pipe) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut first = String::new();
                let _ = pipe.read_line(&mut first);
                let _ = tx.send(first);
                // Drain the rest so the server never blocks on a full pipe.
                let _ = std::io::copy(&mut pipe.take(u64::MAX), &mut std::io::sink());
            });
        }
        let mut server = ServerProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let found = match peer_addr {
            None => server.wait_listening_line(&rx),
            Some(addr) => server.wait_connectable(addr),
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
            Ok(Some(status)) => Some(format!(
                "the server exited ({status}): {}",
                self.stderr_tail()
            )),
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

//! Python peers: `--peer asyncio`, `uvloop`, `rloop`, `c10k-py` (c10k's asyncio loop,
//! epoll-et) and `c10k-py-uring`, each serving the echo `Protocol` of
//! `bench/py/echo_protocol.py` through the runner `bench/py/serve.py`, in the
//! interpreter of `c10k compare --python-bin` (default `python3`).
//!
//! Both files are compiled into the binary and written to the cell's own directory,
//! so an installed `c10k` needs no checkout. A row's command is a marker
//! (`{python:uvloop} /usr/bin/python3`, see [`PyPeer::command`]) that
//! [`crate::server`] recognises: it starts `PYTHON serve.py --loop LOOP --listen
//! 127.0.0.1:0` and reads the runner's `listening on` line, as for `c10k serve`.
//!
//! Whether the loop's package is importable is asked when the rows are made (the
//! runner's `--version`): a missing one is n/a with the `pip install` that installs it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::peers::{PRESET_MAX_CONNS, Prefix};
use super::{Target, TargetKind};

/// The runner (`bench/py/serve.py`).
pub const RUNNER: &str = include_str!("../../../../bench/py/serve.py");

/// The echo `Protocol` it serves (`bench/py/echo_protocol.py`).
pub const PROTOCOL: &str = include_str!("../../../../bench/py/echo_protocol.py");

/// The interpreter `c10k compare` uses without `--python-bin`.
pub const DEFAULT_PYTHON: &str = "python3";

/// The runner's exit status for a package it cannot import.
const MISSING: i32 = 3;

/// A Python event loop c10k knows how to serve the echo Protocol on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyPeer {
    /// The standard library's asyncio loop.
    Asyncio,
    /// uvloop (libuv).
    Uvloop,
    /// rloop (Rust, mio).
    Rloop,
    /// c10k's loop, `strategy="epoll-et"`.
    C10kPy,
    /// c10k's loop, `strategy="uring"`.
    C10kPyUring,
}

impl PyPeer {
    /// Every Python peer.
    pub const ALL: [PyPeer; 5] = [
        PyPeer::Asyncio,
        PyPeer::Uvloop,
        PyPeer::Rloop,
        PyPeer::C10kPy,
        PyPeer::C10kPyUring,
    ];

    /// The name after `--peer`, and the row's name.
    pub fn name(self) -> &'static str {
        match self {
            PyPeer::Asyncio => "asyncio",
            PyPeer::Uvloop => "uvloop",
            PyPeer::Rloop => "rloop",
            PyPeer::C10kPy => "c10k-py",
            PyPeer::C10kPyUring => "c10k-py-uring",
        }
    }

    /// The runner's `--loop`.
    pub fn loop_name(self) -> &'static str {
        match self {
            PyPeer::Asyncio => "asyncio",
            PyPeer::Uvloop => "uvloop",
            PyPeer::Rloop => "rloop",
            PyPeer::C10kPy => "c10k-epoll-et",
            PyPeer::C10kPyUring => "c10k-uring",
        }
    }

    /// The module the runner imports for the loop.
    pub fn module(self) -> &'static str {
        match self {
            PyPeer::Asyncio => "asyncio",
            PyPeer::Uvloop => "uvloop",
            PyPeer::Rloop => "rloop",
            PyPeer::C10kPy | PyPeer::C10kPyUring => "c10k",
        }
    }

    /// What `pip install` takes to install the loop (`None`: the standard library).
    pub fn pip_spec(self) -> Option<&'static str> {
        match self {
            PyPeer::Asyncio => None,
            PyPeer::Uvloop => Some("uvloop"),
            PyPeer::Rloop => Some("rloop"),
            PyPeer::C10kPy | PyPeer::C10kPyUring => Some("./crates/py"),
        }
    }

    /// The peer called `name`.
    pub fn from_name(name: &str) -> Option<PyPeer> {
        PyPeer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The names, for messages: "asyncio, uvloop, ...".
    pub fn names() -> String {
        let names: Vec<&str> = PyPeer::ALL.iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// Whether it serves `app`: the echo app only; `Err` says why not, in a line.
    pub fn serves(self, app: &str) -> Result<(), String> {
        if app == "echo" {
            Ok(())
        } else {
            Err(format!(
                "{} serves --app echo only (the echo Protocol of bench/py/echo_protocol.py)",
                self.name()
            ))
        }
    }

    /// The command of a row: a marker [`crate::server`] recognises, with the
    /// interpreter once `--python-bin` is known ([`with_interpreter`]).
    pub fn command(self, python: Option<&Path>) -> String {
        let marker = format!("{{python:{}}}", self.name());
        match python {
            Some(python) => format!("{marker} {}", python.display()),
            None => marker,
        }
    }

    /// The peer and interpreter of a row's command, when it is a Python peer's
    /// ([`PyPeer::command`]).
    pub fn parse_command(command: &str) -> Option<(PyPeer, Option<PathBuf>)> {
        let rest = command.strip_prefix("{python:")?;
        let (name, python) = rest.split_once('}')?;
        let peer = PyPeer::from_name(name)?;
        let python = python.trim();
        Some((peer, (!python.is_empty()).then(|| PathBuf::from(python))))
    }

    /// Asks the runner in `python` for the loop's version: `Ok("uvloop: uvloop 0.21.0
    /// (python 3.11.7 /usr/bin/python3)")`, or `Err` with why it cannot serve, the
    /// missing package's with the `pip install` that installs it.
    pub fn version(self, python: &Path) -> Result<String, String> {
        let dir = Scripts::serve(self.name())?;
        let out = dir.output(python, &["--loop", self.loop_name(), "--version"])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Ok(stdout.trim().to_string()),
            Some(MISSING) => Err(self.missing(python)),
            _ => Err(format!(
                "{} {} --version failed ({}): {}",
                python.display(),
                dir.runner().display(),
                out.status,
                stderr.trim()
            )),
        }
    }

    /// Why a row cannot run when its package is not importable by `python`.
    fn missing(self, python: &Path) -> String {
        not_importable(self.module(), python, self.pip_spec().unwrap_or("asyncio"))
    }

    /// The row `--peer NAME` adds (with `--python-bin` in its command): the version in
    /// the summary, or unavailable with what to install.
    pub fn target(self, name: &str, python: &Path) -> Target {
        let (unavailable, version) = match self.version(python) {
            Ok(v) => (None, v),
            Err(why) => (Some(why), format!("{} (not installed)", self.loop_name())),
        };
        Target {
            name: name.to_string(),
            kind: TargetKind::Peer {
                command: self.command(Some(python)),
            },
            unavailable,
            conn_limit: Some(PRESET_MAX_CONNS),
            item: None,
            summary: format!(
                "python peer: {version}; bench/py/serve.py --loop {} serving \
                 echo_protocol.Echo (data_received writes the data back), one process",
                self.loop_name()
            ),
        }
    }
}

/// The peers with the interpreter put into the Python markers that have none (what
/// `--peer uvloop` gives): `python` is `c10k compare --python-bin`.
pub fn with_interpreter(peers: &[(String, String)], python: &Path) -> Vec<(String, String)> {
    peers
        .iter()
        .map(|(name, command)| match PyPeer::parse_command(command) {
            Some((peer, None)) => (name.clone(), peer.command(Some(python))),
            _ => (name.clone(), command.clone()),
        })
        .collect()
}

/// A directory holding a runner script and the echo Protocol it imports, removed on
/// drop: `serve.py` for the `--peer` loops, `field.py` for the CPython field.
#[derive(Debug)]
pub struct Scripts {
    prefix: Prefix,
    main: &'static str,
}

impl Scripts {
    /// Writes `main` (holding `text`) and `echo_protocol.py` into a fresh directory.
    pub fn write(name: &str, main: &'static str, text: &str) -> Result<Scripts, String> {
        let prefix = Prefix::create_named(name)?;
        for (file, text) in [(main, text), ("echo_protocol.py", PROTOCOL)] {
            let path = prefix.path().join(file);
            std::fs::write(&path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(Scripts { prefix, main })
    }

    /// `serve.py`, the runner of the `--peer` loops.
    pub fn serve(name: &str) -> Result<Scripts, String> {
        Scripts::write(name, "serve.py", RUNNER)
    }

    /// The runner's path.
    pub fn runner(&self) -> PathBuf {
        self.prefix.path().join(self.main)
    }

    /// `python RUNNER ARGS`.
    pub fn command<S: AsRef<OsStr>>(&self, python: &Path, args: &[S]) -> Command {
        let mut c = Command::new(python);
        c.arg(self.runner())
            .args(args)
            // Output unbuffered: the `listening on` line is flushed anyway, a
            // traceback must not wait in a buffer.
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// Runs `python RUNNER ARGS` to its end (`Err`: the interpreter cannot run).
    pub fn output(&self, python: &Path, args: &[&str]) -> Result<Output, String> {
        self.command(python, args).output().map_err(|e| {
            format!(
                "cannot run {}: {e} (install Python 3 or pass --python-bin)",
                python.display()
            )
        })
    }

    /// Its directory, kept until the server has stopped.
    pub fn into_prefix(self) -> Prefix {
        self.prefix
    }
}

/// Why a row cannot run when `module` is not importable by `python`.
pub fn not_importable(module: &str, python: &Path, pip_spec: &str) -> String {
    format!(
        "the Python package {module} is not importable by {}: {} -m pip install {pip_spec}",
        python.display(),
        python.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_command_round_trips() {
        for p in PyPeer::ALL {
            let python = Path::new("/opt/py 3/bin/python3");
            assert_eq!(
                PyPeer::parse_command(&p.command(Some(python))),
                Some((p, Some(python.to_path_buf())))
            );
            assert_eq!(PyPeer::parse_command(&p.command(None)), Some((p, None)));
            assert_eq!(PyPeer::from_name(p.name()), Some(p));
        }
        assert_eq!(PyPeer::parse_command("{preset:nginx}"), None);
        assert_eq!(PyPeer::parse_command("{python:trio}"), None);
        assert_eq!(PyPeer::parse_command("python3 serve.py"), None);
    }

    #[test]
    fn the_interpreter_goes_into_bare_markers_only() {
        let peers = vec![
            ("uvloop".to_string(), PyPeer::Uvloop.command(None)),
            (
                "mine".to_string(),
                PyPeer::Rloop.command(Some(Path::new("/v/bin/python"))),
            ),
            ("x".to_string(), "srv --port {port}".to_string()),
        ];
        let got = with_interpreter(&peers, Path::new("/usr/bin/python3"));
        assert_eq!(got[0].1, "{python:uvloop} /usr/bin/python3");
        assert_eq!(got[1].1, "{python:rloop} /v/bin/python");
        assert_eq!(got[2].1, "srv --port {port}");
    }

    #[test]
    fn every_loop_is_one_the_runner_knows() {
        for p in PyPeer::ALL {
            let quoted = format!("\"{}\":", p.loop_name());
            assert!(RUNNER.contains(&quoted), "serve.py lacks {quoted}");
            if let Some(spec) = p.pip_spec() {
                assert!(RUNNER.contains(&format!("\"{spec}\")")), "{spec}");
            }
        }
        assert!(PROTOCOL.contains("class Echo(asyncio.Protocol)"));
    }

    #[test]
    fn python_peers_serve_echo_only() {
        assert!(PyPeer::Uvloop.serves("echo").is_ok());
        assert_eq!(
            PyPeer::Asyncio.serves("http").unwrap_err(),
            "asyncio serves --app echo only (the echo Protocol of bench/py/echo_protocol.py)"
        );
    }

    #[test]
    fn a_missing_interpreter_says_what_to_do() {
        let why = PyPeer::Asyncio
            .version(Path::new("/nonexistent-c10k/python3"))
            .unwrap_err();
        assert!(why.contains("--python-bin"), "{why}");
    }

    #[test]
    fn a_missing_package_names_its_pip_install() {
        assert_eq!(
            PyPeer::C10kPy.missing(Path::new("/v/bin/python")),
            "the Python package c10k is not importable by /v/bin/python: /v/bin/python -m pip \
             install ./crates/py"
        );
        assert!(
            PyPeer::Rloop
                .missing(Path::new("python3"))
                .ends_with("python3 -m pip install rloop")
        );
    }

    #[test]
    fn the_runner_directory_holds_both_files_and_goes() {
        let r = Scripts::serve("asyncio").unwrap();
        let dir = r.runner().parent().unwrap().to_path_buf();
        assert_eq!(std::fs::read_to_string(r.runner()).unwrap(), RUNNER);
        assert_eq!(
            std::fs::read_to_string(dir.join("echo_protocol.py")).unwrap(),
            PROTOCOL
        );
        drop(r);
        assert!(!dir.exists());
    }
}

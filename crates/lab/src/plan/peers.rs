//! Peers as presets: `--peer nginx` and `--peer redis`, the servers a user would
//! otherwise pick, found on PATH (and in /usr/sbin and /sbin, where Debian puts nginx)
//! and configured by c10k for the same job as c10k's own app: nginx answers `GET /`
//! with `Hello, World!` like `--app http`, redis answers `--app resp`.
//!
//! A preset row is a [`TargetKind::Peer`] whose command is a marker
//! (`{preset:nginx} /usr/sbin/nginx`, see [`Preset::command`]); the launch
//! ([`crate::server`]) recognises it and starts the binary itself, with a config
//! written for the cell: nginx gets an `nginx.conf` in a temporary prefix directory
//! of its own ([`Prefix`]), redis its settings as arguments.
//!
//! Sizing: the launch does not know the cell's concurrency, so a preset is sized for
//! the most connections any cell of the run can hold, the open files limit less
//! [`FD_MARGIN`] (what [`crate::plan::cannot_run`] allows), capped at
//! [`PRESET_MAX_CONNS`]. nginx allocates its connection table up front, about 420
//! bytes per slot and worker (nginx 1.22 here: a worker holds 1.8 MB at 1,000 slots,
//! 9.8 MB at 20,000, 43.5 MB at 100,000): that is in its memory under load, not in
//! its memory per idle connection, which is measured as growth.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use c10k_load::limits::FD_MARGIN;

use super::{Target, TargetKind};

/// The most client connections a preset is configured for.
pub const PRESET_MAX_CONNS: usize = 100_000;

/// The listen backlog nginx is given (c10k's own default; the kernel clamps it to
/// `net.core.somaxconn`).
pub const BACKLOG: i32 = c10k_server::DEFAULT_BACKLOG;

/// Connections nginx needs beyond the clients' (its listening socket, a readiness
/// probe): `worker_connections` counts them too.
const NGINX_SLACK: usize = 32;

/// Where a binary is looked for after PATH: Debian installs nginx in /usr/sbin, which a
/// normal user's PATH may lack.
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// How long a readiness probe waits for its reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A server c10k knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// nginx, serving `--app http`'s `GET /` with `return 200 "Hello, World!"`.
    Nginx,
    /// redis-server, serving `--app resp`.
    Redis,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 2] = [Preset::Nginx, Preset::Redis];

    /// The name after `--peer`, and the row's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Nginx => "nginx",
            Preset::Redis => "redis",
        }
    }

    /// The binary.
    pub fn program(self) -> &'static str {
        match self {
            Preset::Nginx => "nginx",
            Preset::Redis => "redis-server",
        }
    }

    /// The Debian package that installs [`Preset::program`].
    pub fn package(self) -> &'static str {
        match self {
            Preset::Nginx => "nginx",
            Preset::Redis => "redis-server",
        }
    }

    /// The app it serves (`c10k compare --app`).
    pub fn app(self) -> &'static str {
        match self {
            Preset::Nginx => "http",
            Preset::Redis => "resp",
        }
    }

    /// The preset called `name`.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The names, for messages: "nginx, redis".
    pub fn names() -> String {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// Whether it serves the load of `app` with request size `size` (`c10k load
    /// --size`); `Err` says why not, in a line.
    pub fn serves(self, app: &str, size: Option<usize>) -> Result<(), String> {
        if app != self.app() {
            return Err(format!("{} serves --app {} only", self.name(), self.app()));
        }
        if self == Preset::Nginx && size.is_some() {
            // With --size, `c10k load --app http` sends POST /echo with a body and
            // expects it back.
            return Err(
                "nginx cannot echo a request body (--size sends POST /echo): no \
                        stock module does"
                    .into(),
            );
        }
        Ok(())
    }

    /// Finds the binary on PATH, then in /usr/sbin and /sbin.
    pub fn find(self) -> Result<PathBuf, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        self.find_in(std::env::split_paths(&path).chain(SBIN.iter().map(PathBuf::from)))
    }

    /// [`Preset::find`] in `dirs`.
    fn find_in(self, dirs: impl Iterator<Item = PathBuf>) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        dirs.map(|d| d.join(self.program()))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| {
                format!(
                    "{} not found on PATH: apt install {}",
                    self.program(),
                    self.package()
                )
            })
    }

    /// The version `bin` reports (`nginx -v`, `redis-server --version`), e.g.
    /// "nginx/1.22.1" or "redis 7.0.15".
    pub fn version(self, bin: &Path) -> Result<String, String> {
        let flag = match self {
            Preset::Nginx => "-v",
            Preset::Redis => "--version",
        };
        let out = Command::new(bin)
            .arg(flag)
            .output()
            .map_err(|e| format!("cannot run {} {flag}: {e}", bin.display()))?;
        // nginx writes its version to stderr, redis to stdout.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_version(self, &text)
            .ok_or_else(|| format!("{} {flag} said {:?}", bin.display(), text.trim()))
    }

    /// The command of a preset row: a marker [`crate::server`] recognises, with the
    /// binary when it was found.
    pub fn command(self, bin: Option<&Path>) -> String {
        let marker = format!("{{preset:{}}}", self.name());
        match bin {
            Some(bin) => format!("{marker} {}", bin.display()),
            None => marker,
        }
    }

    /// The preset and binary of a row's command, when it is a preset's
    /// ([`Preset::command`]).
    pub fn parse_command(command: &str) -> Option<(Preset, Option<PathBuf>)> {
        let rest = command.strip_prefix("{preset:")?;
        let (name, bin) = rest.split_once('}')?;
        let preset = Preset::from_name(name)?;
        let bin = bin.trim();
        Some((preset, (!bin.is_empty()).then(|| PathBuf::from(bin))))
    }

    /// The row `--peer NAME` adds: the binary found and its version in the summary,
    /// or unavailable with what to install.
    pub fn target(self, name: &str) -> Target {
        let (bin, unavailable) = match self.find() {
            Ok(bin) => (Some(bin), None),
            Err(why) => (None, Some(why)),
        };
        let version = match &bin {
            Some(bin) => match self.version(bin) {
                Ok(v) => format!("{v} ({})", bin.display()),
                Err(why) => format!("version unknown: {why}"),
            },
            None => format!("{} (not installed)", self.program()),
        };
        let config = match self {
            Preset::Nginx => {
                "config written by c10k: worker_processes = the server CPUs, epoll, \
                 keep-alive, access_log off, return 200 \"Hello, World!\""
            }
            Preset::Redis => {
                "config written by c10k: --save '' --appendonly no --protected-mode no, \
                 io-threads left default"
            }
        };
        Target {
            name: name.to_string(),
            kind: TargetKind::Peer {
                command: self.command(bin.as_deref()),
            },
            unavailable,
            conn_limit: Some(PRESET_MAX_CONNS),
            item: None,
            summary: format!("peer preset: {version}; {config}"),
        }
    }
}

/// The version in `nginx -v` or `redis-server --version` output.
fn parse_version(preset: Preset, text: &str) -> Option<String> {
    match preset {
        // "nginx version: nginx/1.22.1"
        Preset::Nginx => text
            .split_whitespace()
            .find(|w| w.starts_with("nginx/"))
            .map(str::to_string),
        // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 ..."
        Preset::Redis => text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map(|v| format!("redis {v}")),
    }
}

/// nginx's version as numbers, from "nginx/1.22.1".
fn nginx_version_numbers(version: &str) -> Option<(u32, u32, u32)> {
    let v = version.strip_prefix("nginx/")?;
    let mut it = v.split('.').map(|n| n.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// What a preset is configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Worker processes (nginx): the server CPUs.
    pub workers: usize,
    /// The most client connections it must hold.
    pub conns: usize,
}

impl Sizing {
    /// For a launch on `workers` CPUs under an open files limit of `nofile`: the most
    /// connections a cell can have there ([`crate::plan::cannot_run`]), capped at
    /// [`PRESET_MAX_CONNS`].
    pub fn for_limit(workers: usize, nofile: u64) -> Sizing {
        let conns = nofile.saturating_sub(FD_MARGIN).max(1);
        Sizing {
            workers: workers.max(1),
            conns: usize::try_from(conns).map_or(PRESET_MAX_CONNS, |c| c.min(PRESET_MAX_CONNS)),
        }
    }

    /// `worker_connections`: the clients and nginx's own.
    pub fn worker_connections(&self) -> usize {
        self.conns + NGINX_SLACK
    }

    /// The open files limit a process of the preset needs (`worker_rlimit_nofile`).
    pub fn nofile(&self) -> usize {
        self.conns + FD_MARGIN as usize
    }
}

/// `s` as a quoted nginx config string.
fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            q.push('\\');
        }
        q.push(ch);
    }
    q.push('"');
    q
}

/// The `nginx.conf` of a cell: everything nginx writes is under `prefix`.
pub fn nginx_conf(prefix: &Path, port: u16, sizing: &Sizing) -> String {
    let p = |rel: &str| quoted(&prefix.join(rel).display().to_string());
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by c10k compare for one cell (peer preset nginx)."
    );
    let _ = writeln!(c, "daemon off;");
    let _ = writeln!(c, "master_process on;");
    let _ = writeln!(c, "worker_processes {};", sizing.workers);
    let _ = writeln!(c, "worker_rlimit_nofile {};", sizing.nofile());
    let _ = writeln!(c, "pid {};", p("nginx.pid"));
    let _ = writeln!(c, "error_log {} warn;", p("error.log"));
    // Also on stderr, whose tail explains a cell that failed.
    let _ = writeln!(c, "error_log stderr warn;");
    let _ = writeln!(c, "events {{");
    let _ = writeln!(c, "    worker_connections {};", sizing.worker_connections());
    let _ = writeln!(c, "    use epoll;");
    let _ = writeln!(c, "}}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "    access_log off;");
    let _ = writeln!(c, "    keepalive_requests 1000000;");
    let _ = writeln!(c, "    keepalive_timeout 120s;");
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "    {kind}_temp_path {};", p(&format!("tmp/{kind}")));
    }
    let _ = writeln!(c, "    server {{");
    let _ = writeln!(c, "        listen 127.0.0.1:{port} backlog={BACKLOG};");
    let _ = writeln!(c, "        location / {{");
    let _ = writeln!(c, "            default_type text/plain;");
    let _ = writeln!(c, "            return 200 \"Hello, World!\";");
    let _ = writeln!(c, "        }}");
    let _ = writeln!(c, "    }}");
    let _ = writeln!(c, "}}");
    c
}

/// nginx's arguments: prefix, config, and (nginx 1.19.5 and later) the error log
/// before the config is read, so that a non-root user is not refused the compiled-in
/// /var/log path.
pub fn nginx_args(prefix: &Path, conf: &Path, version: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "-p".to_string(),
        format!("{}/", prefix.display()),
        "-c".to_string(),
        conf.display().to_string(),
    ];
    if version
        .and_then(nginx_version_numbers)
        .is_some_and(|v| v >= (1, 19, 5))
    {
        args.push("-e".into());
        args.push(prefix.join("error.log").display().to_string());
    }
    args
}

/// redis-server's arguments: no persistence, every connection admitted.
pub fn redis_args(prefix: &Path, port: u16, sizing: &Sizing) -> Vec<String> {
    let mut args: Vec<String> = vec!["--port".into(), port.to_string()];
    args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
    args.extend(["--maxclients".into(), sizing.conns.to_string()]);
    args.extend(["--protected-mode", "no", "--loglevel", "warning"].map(String::from));
    args.extend(["--dir".into(), prefix.display().to_string()]);
    args
}

/// A directory of one cell's preset (config, pid, logs, temp files), removed on drop.
#[derive(Debug)]
pub struct Prefix(PathBuf);

impl Prefix {
    /// Creates a fresh one under the temporary directory.
    pub fn create(preset: Preset) -> Result<Prefix, String> {
        Prefix::create_named(preset.name())
    }

    /// Creates a fresh one under the temporary directory for the peer `name`.
    pub fn create_named(name: &str) -> Result<Prefix, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("c10k-peer-{name}-{}-{k}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Prefix(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!("no fresh directory under {}", base.display()))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A preset ready to start: the program, its arguments and its directory.
#[derive(Debug)]
pub struct Prepared {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The cell's directory (kept until the server has stopped).
    pub prefix: Prefix,
}

/// Writes the cell's config for `preset` listening on `port`.
pub fn prepare(preset: Preset, bin: &Path, port: u16, sizing: &Sizing) -> Result<Prepared, String> {
    let prefix = Prefix::create(preset)?;
    let args = match preset {
        Preset::Nginx => {
            let conf = prefix.path().join("nginx.conf");
            std::fs::write(&conf, nginx_conf(prefix.path(), port, sizing))
                .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
            let tmp = prefix.path().join("tmp");
            std::fs::create_dir(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let version = preset.version(bin).ok();
            nginx_args(prefix.path(), &conf, version.as_deref())
        }
        Preset::Redis => redis_args(prefix.path(), port, sizing),
    };
    Ok(Prepared {
        program: bin.to_path_buf(),
        args,
        prefix,
    })
}

/// The probe of the http app: `GET /`, the connection closed after the reply.
const HTTP_PROBE: &[u8] = b"GET / HTTP/1.1\r\nHost: c10k\r\nConnection: close\r\n\r\n";

fn http_answered(reply: &[u8]) -> bool {
    reply.starts_with(b"HTTP/1.1 200") && reply.ends_with(b"Hello, World!")
}

fn resp_answered(reply: &[u8]) -> bool {
    reply == b"+PONG\r\n"
}

/// One request of the preset's app over a fresh connection: `Ok` once the right reply
/// came back, `Err` with what happened.
pub fn probe(preset: Preset, addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let (request, good) = match preset {
        Preset::Nginx => (HTTP_PROBE, http_answered as fn(&[u8]) -> bool),
        Preset::Redis => (&b"PING\r\n"[..], resp_answered as fn(&[u8]) -> bool),
    };
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no reply: {e}")),
        }
        if good(&reply) || reply.len() > 64 * 1024 {
            break;
        }
    }
    if good(&reply) {
        Ok(())
    } else {
        Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(120)])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizing() -> Sizing {
        Sizing {
            workers: 2,
            conns: 10_000,
        }
    }

    #[test]
    fn nginx_conf_has_the_reference_settings() {
        let conf = nginx_conf(Path::new("/tmp/c10k-peer-nginx-1-0"), 7001, &sizing());
        for line in [
            "daemon off;",
            "master_process on;",
            "worker_processes 2;",
            "worker_rlimit_nofile 10064;",
            "pid \"/tmp/c10k-peer-nginx-1-0/nginx.pid\";",
            "error_log \"/tmp/c10k-peer-nginx-1-0/error.log\" warn;",
            "worker_connections 10032;",
            "use epoll;",
            "access_log off;",
            "keepalive_requests 1000000;",
            "client_body_temp_path \"/tmp/c10k-peer-nginx-1-0/tmp/client_body\";",
            "scgi_temp_path \"/tmp/c10k-peer-nginx-1-0/tmp/scgi\";",
            "listen 127.0.0.1:7001 backlog=4096;",
            "default_type text/plain;",
            "return 200 \"Hello, World!\";",
        ] {
            assert!(
                conf.lines().any(|l| l.trim() == line),
                "missing {line:?} in\n{conf}"
            );
        }
        // Balanced braces: the parser's first complaint otherwise.
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
        assert!(sizing().nofile() >= sizing().worker_connections());
    }

    #[test]
    fn nginx_paths_are_quoted() {
        let conf = nginx_conf(Path::new("/tmp/a b\"c"), 1, &sizing());
        assert!(conf.contains("pid \"/tmp/a b\\\"c/nginx.pid\";"), "{conf}");
    }

    #[test]
    fn nginx_gets_its_error_log_early_when_it_can() {
        let (p, c) = (Path::new("/x"), Path::new("/x/nginx.conf"));
        let new = nginx_args(p, c, Some("nginx/1.22.1"));
        assert_eq!(
            new,
            ["-p", "/x/", "-c", "/x/nginx.conf", "-e", "/x/error.log"]
        );
        assert_eq!(nginx_args(p, c, Some("nginx/1.18.0")).len(), 4);
        assert_eq!(nginx_args(p, c, None).len(), 4);
        assert_eq!(nginx_version_numbers("nginx/1.19.5"), Some((1, 19, 5)));
        assert_eq!(nginx_version_numbers("nginx/1.25"), Some((1, 25, 0)));
        assert_eq!(nginx_version_numbers("openresty/1.2"), None);
    }

    #[test]
    fn redis_args_disable_persistence_and_admit_the_level() {
        let args = redis_args(Path::new("/d"), 7002, &sizing());
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--port 7002 --bind 127.0.0.1"),
            "{joined}"
        );
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        assert_eq!(after("--save"), "");
        assert_eq!(after("--appendonly"), "no");
        assert_eq!(after("--maxclients"), "10000");
        assert_eq!(after("--protected-mode"), "no");
        assert_eq!(after("--dir"), "/d");
        assert!(!args.iter().any(|a| a == "--io-threads"));
    }

    #[test]
    fn sizing_follows_the_open_files_limit_up_to_the_cap() {
        let s = Sizing::for_limit(2, 20_000);
        assert_eq!((s.workers, s.conns), (2, 20_000 - FD_MARGIN as usize));
        assert!(
            s.nofile() as u64 <= 20_000,
            "within the limit the server inherits"
        );
        assert_eq!(Sizing::for_limit(0, 1 << 20).conns, PRESET_MAX_CONNS);
        assert_eq!(Sizing::for_limit(0, 1 << 20).workers, 1);
        assert_eq!(Sizing::for_limit(1, u64::MAX).conns, PRESET_MAX_CONNS);
        assert_eq!(Sizing::for_limit(1, 10).conns, 1);
    }

    #[test]
    fn versions_are_read_from_what_the_binaries_print() {
        assert_eq!(
            parse_version(Preset::Nginx, "nginx version: nginx/1.22.1\n"),
            Some("nginx/1.22.1".into())
        );
        assert_eq!(
            parse_version(
                Preset::Redis,
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d"
            ),
            Some("redis 7.0.15".into())
        );
        assert_eq!(parse_version(Preset::Redis, "command not found"), None);
    }

    #[test]
    fn a_preset_command_round_trips() {
        for p in Preset::ALL {
            let bin = Path::new("/usr/sbin/x y");
            assert_eq!(
                Preset::parse_command(&p.command(Some(bin))),
                Some((p, Some(bin.to_path_buf())))
            );
            assert_eq!(Preset::parse_command(&p.command(None)), Some((p, None)));
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
        assert_eq!(Preset::parse_command("nginx -c x"), None);
        assert_eq!(Preset::parse_command("{preset:apache}"), None);
    }

    #[test]
    fn a_preset_serves_its_app_only() {
        assert!(Preset::Nginx.serves("http", None).is_ok());
        assert_eq!(
            Preset::Nginx.serves("echo", None).unwrap_err(),
            "nginx serves --app http only"
        );
        assert!(
            Preset::Nginx
                .serves("http", Some(64))
                .unwrap_err()
                .contains("POST /echo")
        );
        assert!(Preset::Redis.serves("resp", Some(64)).is_ok());
        assert_eq!(
            Preset::Redis.serves("http", None).unwrap_err(),
            "redis serves --app resp only"
        );
    }

    #[test]
    fn a_missing_binary_says_what_to_install() {
        let nowhere = || [PathBuf::from("/nonexistent-c10k")].into_iter();
        assert_eq!(
            Preset::Nginx.find_in(nowhere()).unwrap_err(),
            "nginx not found on PATH: apt install nginx"
        );
        assert_eq!(
            Preset::Redis.find_in(nowhere()).unwrap_err(),
            "redis-server not found on PATH: apt install redis-server"
        );
        // A directory is not a binary, a later directory is looked in.
        let dir = Prefix::create(Preset::Redis).unwrap();
        std::fs::create_dir(dir.path().join("nginx")).unwrap();
        let dirs = [dir.path().to_path_buf(), PathBuf::from("/usr/sbin")].into_iter();
        match Preset::Nginx.find_in(dirs) {
            Ok(found) => assert_eq!(found, Path::new("/usr/sbin/nginx")),
            Err(why) => assert!(why.contains("apt install nginx"), "{why}"),
        }
    }

    #[test]
    fn a_prefix_is_fresh_and_removed() {
        let a = Prefix::create(Preset::Nginx).unwrap();
        let b = Prefix::create(Preset::Nginx).unwrap();
        assert_ne!(a.path(), b.path());
        let kept = a.path().to_path_buf();
        std::fs::write(kept.join("f"), "x").unwrap();
        drop(a);
        assert!(!kept.exists());
    }
}

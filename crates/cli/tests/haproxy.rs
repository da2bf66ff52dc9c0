//! A real HAProxy (Debian's; scripts/test.sh installs it) in front of two c10k HTTP
//! backends, configured from `deploy/haproxy.cfg` with its ports filled in: PROXY v2
//! to the backends, health checks, retries with redispatch. A bounded `c10k load` run
//! goes through HAProxy while one backend is stopped with SIGTERM; the run must end
//! with zero failed requests, the stopped backend must drain and exit 0, and both
//! backends must log the real client address (the load generator's), not HAProxy's.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    DRAIN_TIMEOUT, EXIT_MARGIN, IO_TIMEOUT, Server, c10k_bin, need_tool, read_http_response,
    run_tool, temp_path, try_connect,
};

/// HAProxy's own connections to the backends come from this address, so that a
/// backend's log tells the proxy (127.0.0.3) from the client (127.0.0.1).
const PROXY_SOURCE: &str = "127.0.0.3";

/// A HAProxy process, killed on drop.
struct Haproxy {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A port nobody listens on right now (the kernel's pick, released again).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `deploy/haproxy.cfg` with its addresses replaced.
fn config(frontend: SocketAddr, backends: [SocketAddr; 2]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
    let mut cfg =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (from, to) in [
        ("bind 127.0.0.1:8080", format!("bind {frontend}")),
        ("127.0.0.1:7001", backends[0].to_string()),
        ("127.0.0.1:7002", backends[1].to_string()),
        ("source 127.0.0.1", format!("source {PROXY_SOURCE}")),
    ] {
        assert!(
            cfg.contains(from),
            "deploy/haproxy.cfg no longer contains {from:?}"
        );
        cfg = cfg.replace(from, &to);
    }
    cfg
}

fn start_haproxy(cfg: &str) -> Haproxy {
    // Debian installs it in /usr/sbin, which a normal user's PATH may lack.
    let sbin = PathBuf::from("/usr/sbin/haproxy");
    let haproxy = if sbin.is_file() {
        sbin
    } else {
        need_tool("haproxy")
    };
    let dir = temp_path("haproxy");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("haproxy.cfg");
    fs::write(&file, cfg).unwrap();
    let check = run_tool(
        Command::new(&haproxy).arg("-c").arg("-f").arg(&file),
        IO_TIMEOUT,
    );
    assert!(
        check.status.success(),
        "haproxy -c rejects the generated config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let log = dir.join("haproxy.log");
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(&haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start haproxy: {e}"));
    Haproxy { child, log, dir }
}

/// Waits (bounded) until `GET /` through the frontend answers 200.
fn wait_serving(frontend: SocketAddr, haproxy: &Haproxy) {
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = try_connect(frontend)
            && s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
        {
            let resp = read_http_response(&mut BufReader::new(&mut s));
            if resp.status == 200 {
                return;
            }
        }
        assert!(
            t0.elapsed() < IO_TIMEOUT,
            "HAProxy did not serve GET / within {IO_TIMEOUT:?}; its log:\n{}",
            haproxy.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_log(server: &Server, needle: &str, what: &str) {
    let t0 = Instant::now();
    while !server.stderr_text().contains(needle) {
        assert!(
            t0.elapsed() < IO_TIMEOUT,
            "{what}: no log line with {needle:?}; stderr:\n{}",
            server.stderr_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn haproxy_with_proxy_v2_loses_no_request_when_a_backend_is_stopped() {
    let backend_args = ["--proxy-protocol", "v2", "--log-connections"];
    let mut b1 = Server::start("epoll-et", "http", &backend_args);
    let b2 = Server::start("pool", "http", &backend_args);
    let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let haproxy = start_haproxy(&config(frontend, [b1.addr(), b2.addr()]));
    wait_serving(frontend, &haproxy);
    // Both backends passed health checks (PROXY v2 LOCAL: logged with the socket's
    // own address, HAProxy's).
    for (b, name) in [(&b1, "backend 1"), (&b2, "backend 2")] {
        wait_log(b, &format!("connection from {PROXY_SOURCE}:"), name);
    }

    // Bounded load through HAProxy: keep-alive connections, GET /.
    let json = temp_path("haproxy-load.json");
    let load = Command::new(c10k_bin())
        .args(["load", "--connect", &frontend.to_string()])
        .args(["--app", "http", "--conns", "50", "--threads", "1"])
        .args(["--duration", "5s", "--warmup", "1s", "--timeout", "5s"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run (inside the measured window): stop backend 1.
    thread::sleep(Duration::from_millis(3000));
    b1.sigterm();
    let status = b1.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN);
    assert!(
        status.success(),
        "backend 1 exited with {status} after SIGTERM; stderr:\n{}",
        b1.stderr_text()
    );
    b1.assert_no_panic();

    let out = wait_child(load, Duration::from_secs(60));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c10k load failed:\n{text}");
    let report: serde_json::Value = serde_json::from_slice(
        &fs::read(&json).unwrap_or_else(|e| panic!("no load report ({e}):\n{text}")),
    )
    .unwrap();
    let _ = fs::remove_file(&json);
    let requests = report["requests"].as_u64().unwrap();
    let failed = report["errors"]["total"].as_u64().unwrap();
    assert!(requests > 0, "no request completed:\n{text}");
    assert_eq!(
        failed,
        0,
        "{failed} failed request(s) while a backend drained:\n{text}\nerrors: {}\nHAProxy:\n{}",
        report["errors"],
        haproxy.log_text()
    );
    // HAProxy noticed (its health check found the listener closed).
    assert!(
        haproxy.log_text().contains("is DOWN"),
        "HAProxy never marked the stopped backend down:\n{}",
        haproxy.log_text()
    );
    // The backends saw the load generator (127.0.0.1) behind HAProxy (127.0.0.3).
    for (b, name) in [(&b1, "backend 1"), (&b2, "backend 2")] {
        wait_log(
            b,
            "connection from 127.0.0.1:",
            &format!("{name}: the client's address"),
        );
        wait_log(
            b,
            &format!("(via proxy {PROXY_SOURCE}:"),
            &format!("{name}: the proxy's address"),
        );
    }
    let mut b2 = b2;
    b2.stop();
    drop(haproxy);
}

fn wait_child(mut child: Child, timeout: Duration) -> std::process::Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "c10k load did not finish within {timeout:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

//! Regression tests named after the bugs they pin.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use common::{Server, connect, resp_cmd, strategy_tests, wait_readable};

strategy_tests! {
    only: [epoll_lt, epoll_et, pool],
    tests: [regression_half_close_while_backpressured_does_not_spin],
}

/// utime+stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// epoll-lt registered EPOLLRDHUP even while backpressure had paused reading, so a
/// peer that half-closed without reading our output was reported on every wait: the
/// loop spun a core. A client doing that must cost (almost) no CPU while it waits.
fn regression_half_close_while_backpressured_does_not_spin(strategy: &str) {
    let server = Server::start(strategy, "resp", &["--output-cap", "64KiB"]);
    let mut c = connect(server.addr());
    let value = vec![b'v'; 1 << 20];
    c.write_all(&resp_cmd(&[b"SET", b"big", &value])).unwrap();
    let mut gets = Vec::new();
    for _ in 0..40 {
        gets.extend_from_slice(&resp_cmd(&[b"GET", b"big"]));
    }
    c.write_all(&gets).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    // The first reply (the SET's +OK): the 1 MiB value is consumed and the server
    // goes on to the GETs until --output-cap stops it; then the CPU is counted.
    wait_readable(&c, "the SET's reply");
    let before = cpu_ticks(server.pid());
    // The measurement window.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(server.pid()) - before;
    // 2 s at 100 ticks/s is 200 ticks when spinning; an idle wait uses ~0.
    eprintln!("{strategy}: {used} ticks");
    assert!(
        used < 40,
        "{strategy}: server used {used} ticks in 2 s while waiting"
    );
    drop(c);
}

//! Where the server's CPU goes per echo message: the same 64-byte TCP loopback echo on
//! one thread, with the server side done three ways, measured in thread CPU time (so a
//! busy neighbour on the same core does not count):
//!
//! - `epoll`: `epoll_wait` (edge-triggered) for the batch, then `recv` + `send` per
//!   message: what the `epoll-et` strategy does;
//! - `ring`: a multishot receive armed on every connection into the provided-buffer
//!   ring, one send per message, one `io_uring_enter` per batch of receives and one per
//!   batch of sends: what the `uring` strategy does (through `c10k_sys::uring::Ring`);
//! - plus the fixed cost of crossing into the kernel: an empty syscall.
//!
//! The client's writes and reads, and the kernel's TCP work in both directions, are the
//! same in every variant, so the differences between the round-trip figures are the
//! differences between the server mechanisms.
//!
//! Run: `cargo run --release -p c10k-sys --example uring_cost [connections] [rounds] [reps]`,
//! pinned with `taskset -c 0` for steadier figures. Traffic is 127.0.0.1 only, bounded
//! by the round count.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use c10k_sys::uring::{Completion, Event, Ring, RingConfig, Socket};
use rustix::event::epoll;
use rustix::time::{ClockId, clock_gettime};

const MSG: [u8; 64] = [7; 64];

fn cpu_ns() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

fn pair(l: &TcpListener) -> std::io::Result<(TcpStream, TcpStream)> {
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    c.set_nodelay(true)?;
    s.set_nodelay(true)?;
    Ok((c, s))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let k: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let l = TcpListener::bind("127.0.0.1:0")?;

    // Fixed costs.
    let n = 200_000;
    let t = cpu_ns();
    for _ in 0..n {
        let _ = rustix::process::getppid();
    }
    let syscall = (cpu_ns() - t) / n as f64;
    println!("empty syscall (getppid): {syscall:.0} ns");

    println!(
        "{k} connections, {rounds} rounds, {reps} repetitions (alternating); median thread CPU per echo round trip (client + server + TCP both ways), min-max:"
    );
    let (mut e, mut r, mut f) = (Vec::new(), Vec::new(), Vec::new());
    let mut enters = 0.0;
    for _ in 0..reps {
        e.push(epoll_pass(&l, k, rounds)?);
        let (rt, en) = ring_pass(&l, k, rounds, false)?;
        r.push(rt);
        enters = en;
        f.push(ring_pass(&l, k, rounds, true)?.0);
    }
    let epoll_rt = median(&mut e);
    println!(
        "  epoll-et (epoll_wait + recv + send):       {epoll_rt:7.0} ns  ({:.0}-{:.0})",
        e[0],
        e[e.len() - 1]
    );
    for (name, v) in [("uring", &mut r), ("uring, fixed files", &mut f)] {
        let m = median(v);
        println!(
            "  {name:<18} ({enters:.2} enters/message): {m:7.0} ns  ({:.0}-{:.0})  {:+.0} ns, {:+.1}%",
            v[0],
            v[v.len() - 1],
            m - epoll_rt,
            100.0 * (m - epoll_rt) / epoll_rt
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One pass of the epoll-et echo; returns ns per round trip.
fn epoll_pass(l: &TcpListener, k: usize, rounds: usize) -> std::io::Result<f64> {
    let mut buf = [0u8; 4096];
    let pairs: Vec<(TcpStream, TcpStream)> = (0..k).map(|_| pair(l)).collect::<Result<_, _>>()?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, (_, s)) in pairs.iter().enumerate() {
        s.set_nonblocking(true)?;
        epoll::add(
            &ep,
            s,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET,
        )?;
    }
    let mut events: Vec<epoll::Event> = Vec::with_capacity(k);
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    epoll::wait(
        &ep,
        rustix::buffer::spare_capacity(&mut events),
        Some(&zero),
    )?;
    let t = cpu_ns();
    for _ in 0..rounds {
        for (c, _) in &pairs {
            (&*c).write_all(&MSG)?;
        }
        let mut seen = 0;
        while seen < k {
            events.clear();
            epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
            for e in &events {
                let s = &pairs[e.data.u64() as usize].1;
                if let Ok(got) = (&*s).read(&mut buf) {
                    if got > 0 {
                        (&*s).write_all(&buf[..got])?;
                        seen += 1;
                    }
                }
            }
        }
        for (c, _) in &pairs {
            let _ = (&*c).read(&mut buf)?;
        }
    }
    let epoll_rt = (cpu_ns() - t) / (rounds * k) as f64;
    Ok(epoll_rt)
}

/// One pass of the io_uring echo; returns (ns per round trip, enters per message).
fn ring_pass(l: &TcpListener, k: usize, rounds: usize, fixed: bool) -> std::io::Result<(f64, f64)> {
    let mut buf = [0u8; 4096];
    let mut ring = Ring::new(RingConfig {
        entries: 1024,
        sqpoll: false,
        buf_count: 1024,
        buf_size: 4096,
    })?;
    if fixed {
        ring.register_files(u32::try_from(k).unwrap_or(u32::MAX))?;
    }
    let mut pairs: Vec<(TcpStream, Socket)> = (0..k)
        .map(|_| pair(l).map(|(c, s)| (c, Socket::from(std::os::fd::OwnedFd::from(s)))))
        .collect::<Result<_, _>>()?;
    for (_, s) in &mut pairs {
        if fixed && !ring.fix(s) {
            return Err(std::io::Error::other("could not register a socket"));
        }
    }
    for (i, (_, s)) in pairs.iter().enumerate() {
        ring.recv_multi(s, i as u64)?;
    }
    let mut done: Vec<Completion> = Vec::with_capacity(2 * k);
    let mut spare: Vec<Vec<u8>> = (0..k).map(|_| Vec::with_capacity(4096)).collect();
    let enters_before = ring.stats().enters;
    let t = cpu_ns();
    for _ in 0..rounds {
        for (c, _) in &pairs {
            (&*c).write_all(&MSG)?;
        }
        let (mut received, mut sent) = (0, 0);
        while sent < k {
            ring.submit_and_wait(None)?;
            ring.reap(&mut done);
            for c in done.drain(..) {
                match c.event {
                    Event::Received(Ok(Some(data))) => {
                        let mut out = spare.pop().unwrap_or_default();
                        out.extend_from_slice(&data);
                        drop(data);
                        let s = &pairs[c.tag as usize].1;
                        if let Err((e, _)) = ring.send(s, out, 0, c.tag) {
                            return Err(e);
                        }
                        received += 1;
                    }
                    Event::Sent { buf, .. } => {
                        let mut buf = buf;
                        buf.clear();
                        spare.push(buf);
                        sent += 1;
                    }
                    other => return Err(std::io::Error::other(format!("unexpected {other:?}"))),
                }
            }
        }
        debug_assert_eq!(received, k);
        for (c, _) in &pairs {
            let _ = (&*c).read(&mut buf)?;
        }
    }
    let ring_rt = (cpu_ns() - t) / (rounds * k) as f64;
    let enters = (ring.stats().enters - enters_before) as f64 / (rounds * k) as f64;
    for (_, s) in pairs {
        ring.close(s)?;
    }
    ring.shutdown(Duration::from_secs(1));

    Ok((ring_rt, enters))
}

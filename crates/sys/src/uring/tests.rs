//! Ring tests over real loopback sockets. They need io_uring: when it is not usable
//! here they fail with the probe's reason (never skip silently).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use super::*;

fn need_uring() {
    if let Err(why) = probe() {
        panic!("io_uring is not usable here, so this test cannot run: {why}");
    }
}

fn ring(buf_count: u16, buf_size: u32) -> Ring {
    need_uring();
    Ring::new(RingConfig {
        entries: 64,
        sqpoll: false,
        buf_count,
        buf_size,
    })
    .unwrap()
}

/// Wait for completions until `pred` holds for what was reaped so far (bounded).
fn reap_until(ring: &mut Ring, got: &mut Vec<Completion>, pred: impl Fn(&[Completion]) -> bool) {
    for _ in 0..200 {
        if pred(got) {
            return;
        }
        match ring.submit_and_wait(Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("wait: {e}"),
        }
        ring.reap(got);
    }
    panic!("condition not reached; completions: {got:?}");
}

/// A listener, a client, and the server side accepted through the ring.
fn accepted_pair(ring: &mut Ring) -> (Arc<TcpListener>, TcpStream, Socket) {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    ring.accept_multi(Arc::clone(&listener), 7).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut got = Vec::new();
    reap_until(ring, &mut got, |g| !g.is_empty());
    let c = got.pop().unwrap();
    assert_eq!(c.tag, 7);
    assert!(c.more, "multishot accept stays armed");
    let Event::Accepted(Ok(socket)) = c.event else {
        panic!("want an accepted socket: {:?}", c.event)
    };
    (listener, client, socket)
}

#[test]
fn accept_receive_send_round_trip() {
    let mut ring = ring(8, 256);
    let (_l, mut client, socket) = accepted_pair(&mut ring);
    ring.recv_multi(&socket, 9).unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    let c = got.pop().unwrap();
    assert_eq!((c.tag, c.more), (9, true));
    let Event::Received(Ok(Some(buf))) = c.event else {
        panic!("want bytes: {:?}", c.event)
    };
    assert_eq!(&buf[..], b"hello");
    let reply = buf.to_vec();
    drop(buf);
    ring.send(&socket, reply, 1, 10).unwrap();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    let c = got.pop().unwrap();
    let Event::Sent { result, buf, pos } = c.event else {
        panic!("want a send: {:?}", c.event)
    };
    assert_eq!((result.unwrap(), pos, &buf[..]), (4, 1, &b"hello"[..]));
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ello");
    // End of stream ends the multishot receive.
    drop(client);
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    let c = got.pop().unwrap();
    assert!(matches!(c.event, Event::Received(Ok(None))) && !c.more);
    ring.close(socket).unwrap();
    let s = ring.stats();
    assert_eq!((s.bufs_out, s.bufs_in), (1, 1));
    assert_eq!((s.sends_out, s.sends_in), (1, 1));
}

/// A socket closed while a receive is armed and a large send is stuck (the peer
/// does not read): both operations come back, with their buffers.
#[test]
fn close_with_operations_in_flight_parks_their_buffers() {
    let mut ring = ring(8, 256);
    let (_l, client, socket) = accepted_pair(&mut ring);
    ring.recv_multi(&socket, 1).unwrap();
    // More than loopback socket buffers hold: the send cannot finish.
    ring.send(&socket, vec![7u8; 64 << 20], 0, 2).unwrap();
    let mut got = Vec::new();
    ring.submit_and_wait(Some(Duration::from_millis(100)))
        .unwrap();
    ring.reap(&mut got);
    assert!(ring.in_flight() >= 2, "accept, receive and send in flight");
    ring.close(socket).unwrap();
    // The accept stays armed; everything else comes home.
    reap_until(&mut ring, &mut got, |_| true);
    for _ in 0..100 {
        if ring.in_flight() == 1 {
            break;
        }
        ring.submit_and_wait(Some(Duration::from_millis(50)))
            .unwrap();
        ring.reap(&mut got);
    }
    assert_eq!(ring.in_flight(), 1, "only the accept is left: {got:?}");
    let sent = got
        .iter()
        .find_map(|c| match &c.event {
            Event::Sent { buf, .. } => Some(buf.len()),
            _ => None,
        })
        .expect("the send's completion hands its buffer back");
    assert_eq!(sent, 64 << 20);
    drop(got);
    let s = ring.stats();
    assert_eq!(s.bufs_out, s.bufs_in, "every receive buffer came home");
    assert_eq!(s.sends_out, s.sends_in, "every send buffer came home");
    drop(client);
    assert_eq!(ring.shutdown(Duration::from_secs(1)), 0);
}

/// With every buffer held by user space the receive ends with ENOBUFS; given back,
/// a new receive gets the rest of the bytes.
#[test]
fn out_of_buffers_ends_the_receive_and_rearming_resumes() {
    let mut ring = ring(2, 16);
    let (_l, mut client, socket) = accepted_pair(&mut ring);
    client.write_all(&[1u8; 100]).unwrap();
    ring.recv_multi(&socket, 3).unwrap();
    let mut got = Vec::new();
    reap_until(&mut ring, &mut got, |g| {
        g.iter().any(|c| !c.more && c.tag == 3)
    });
    let held = got
        .iter()
        .filter(|c| matches!(c.event, Event::Received(Ok(Some(_)))))
        .count();
    assert_eq!(held, 2, "two buffers, then ENOBUFS: {got:?}");
    let last = got.last().unwrap();
    assert!(
        matches!(&last.event, Event::Received(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS)),
        "{last:?}"
    );
    assert_eq!(ring.stats().enobufs, 1);
    let mut total: usize = 32;
    got.clear();
    // Give the buffers back after each round and re-arm: the 100 bytes arrive.
    for _ in 0..50 {
        if total == 100 {
            break;
        }
        ring.recv_multi(&socket, 3).unwrap();
        let mut round = Vec::new();
        let want = 100 - total;
        // Until the receive ends (ENOBUFS again) or the rest has arrived.
        reap_until(&mut ring, &mut round, |g| {
            let bytes: usize = g
                .iter()
                .map(|c| match &c.event {
                    Event::Received(Ok(Some(b))) => b.len(),
                    _ => 0,
                })
                .sum();
            g.iter().any(|c| !c.more) || bytes == want
        });
        for c in round {
            if let Event::Received(Ok(Some(b))) = c.event {
                total += b.len();
            }
        }
    }
    assert_eq!(total, 100);
    ring.close(socket).unwrap();
    let s = ring.stats();
    assert_eq!(s.bufs_out, s.bufs_in);
}

/// Cancelling a multishot receive ends it with a final completion.
#[test]
fn cancel_ends_a_multishot_receive() {
    let mut ring = ring(4, 64);
    let (_l, _client, socket) = accepted_pair(&mut ring);
    let op = ring.recv_multi(&socket, 5).unwrap();
    ring.cancel(op).unwrap();
    let mut got = Vec::new();
    reap_until(&mut ring, &mut got, |g| {
        g.iter().any(|c| c.tag == 5 && !c.more)
    });
    // Cancelling a finished operation is a no-op.
    ring.cancel(op).unwrap();
    ring.close(socket).unwrap();
}

extern "C" fn on_signal(_: libc::c_int) {}

/// A signal interrupts the wait (`Interrupted`), and waiting again works: the loop
/// retries EINTR.
#[test]
fn a_signal_interrupts_the_wait_and_waiting_again_works() {
    need_uring();
    // SAFETY: installs a handler that does nothing (async-signal-safe) for SIGUSR2,
    // which nothing else in this test binary uses; no SA_RESTART, so the blocked
    // io_uring_enter returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut ring = ring(4, 64);
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        let first = ring.submit_and_wait(Some(Duration::from_secs(30)));
        let again = ring.submit_and_wait(Some(Duration::from_millis(10)));
        (first.map_err(|e| e.kind()), again.map_err(|e| e.kind()))
    });
    let thread = rx.recv().unwrap();
    let mut first_result = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: the thread is alive until it returns, which it cannot do before
        // a signal arrives (its wait lasts 30 s); the handler is installed above.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
        if waiter.is_finished() {
            first_result = Some(waiter.join().unwrap());
            break;
        }
    }
    let (first, again) = first_result.expect("the signal ended the wait");
    assert_eq!(first, Err(io::ErrorKind::Interrupted));
    assert_eq!(again, Ok(()), "the retried wait times out normally");
}

#[test]
fn shutdown_cancels_everything_and_leaks_nothing() {
    let mut ring = ring(8, 64);
    let (_l, _client, socket) = accepted_pair(&mut ring);
    ring.recv_multi(&socket, 1).unwrap();
    ring.send(&socket, vec![1u8; 32 << 20], 0, 2).unwrap();
    ring.submit_and_wait(Some(Duration::from_millis(50)))
        .unwrap();
    assert_eq!(ring.shutdown(Duration::from_secs(5)), 0);
    let s = ring.stats();
    assert_eq!((s.leaked_ops, s.in_flight), (0, 0));
    assert_eq!(s.sends_out, s.sends_in);
    assert_eq!(s.bufs_out, s.bufs_in);
    // The socket was never closed through the ring: close it for the test.
    drop(std::mem::ManuallyDrop::into_inner(socket.fd));
}

/// A socket in the registered file table: receives and sends name its slot, a close
/// with a receive armed cancels it, closes the slot and the descriptor, and the slot
/// is reused by the next socket.
#[test]
fn fixed_socket_round_trip_close_and_slot_reuse() {
    let mut ring = ring(8, 256);
    ring.register_files(1).unwrap();
    let (_l, mut client, mut socket) = accepted_pair(&mut ring);
    assert!(ring.fix(&mut socket) && socket.is_fixed());
    ring.recv_multi(&socket, 9).unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = Vec::new();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    let Event::Received(Ok(Some(buf))) = got.pop().unwrap().event else {
        panic!("want bytes")
    };
    let reply = buf.to_vec();
    drop(buf);
    ring.send(&socket, reply, 0, 10).unwrap();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    assert!(matches!(
        got.pop().unwrap().event,
        Event::Sent { result: Ok(4), .. }
    ));
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    // The table has one slot: a second socket finds it taken.
    let (_l2, _client2, mut other) = accepted_pair(&mut ring);
    assert!(!ring.fix(&mut other));
    // Close with the receive armed: the cancel ends it, then the slot and the
    // descriptor are closed.
    ring.close(socket).unwrap();
    reap_until(&mut ring, &mut got, |g| {
        g.iter().any(|c| c.tag == 9 && !c.more)
    });
    // The slot comes back when its close completes.
    for _ in 0..200 {
        if !ring.free_slots.is_empty() {
            break;
        }
        ring.submit_and_wait(Some(Duration::from_millis(50)))
            .unwrap();
        ring.reap(&mut got);
    }
    assert!(
        ring.fix(&mut other),
        "the closed socket's slot is free again"
    );
    ring.close(other).unwrap();
    let s = ring.stats();
    assert_eq!((s.fixed, s.unfixed), (2, 1));
    assert_eq!((s.bufs_out, s.bufs_in), (1, 1));
}

#[test]
fn a_single_receive_takes_one_buffer_and_ends() {
    let mut ring = ring(8, 256);
    let (_l, mut client, socket) = accepted_pair(&mut ring);
    // 1,000 bytes queued: a single receive hands out one 256-byte buffer of it.
    client.write_all(&[7u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    ring.recv_once(&socket, 4).unwrap();
    let mut got = Vec::new();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    let c = got.pop().unwrap();
    assert_eq!((c.tag, c.more), (4, false));
    let Event::Received(Ok(Some(buf))) = c.event else {
        panic!("want bytes: {:?}", c.event)
    };
    assert_eq!(buf.len(), 256);
    drop(buf);
    // Nothing else arrives until it is asked again.
    ring.submit_and_wait(Some(Duration::from_millis(20)))
        .unwrap();
    ring.reap(&mut got);
    assert!(got.is_empty(), "{got:?}");
    ring.recv_once(&socket, 4).unwrap();
    reap_until(&mut ring, &mut got, |g| !g.is_empty());
    assert!(matches!(&got[0].event, Event::Received(Ok(Some(b))) if b.len() == 256));
    got.clear();
    ring.close(socket).unwrap();
}

//! Socket activation: serve on a listening socket inherited from a service manager
//! (systemd's `LISTEN_FDS`/`LISTEN_PID`) or from the instance being replaced, instead
//! of binding `--listen`.
//!
//! One inherited socket is accepted, and it is the only listener: every worker
//! shares it (`EPOLLEXCLUSIVE` for the epoll strategies, multishot accept for uring;
//! the forking strategies share their one listener anyway), whatever `--accept` says.
//! No `SO_REUSEPORT` sibling is bound next to it: a sibling's accept queue would be
//! reset when this instance exits, which is exactly what a zero-downtime restart on a
//! shared, inherited socket avoids. `select` and `poll` have no `EPOLLEXCLUSIVE`, so
//! they serve an inherited socket with one worker only.

use std::io;
use std::net::{SocketAddr, TcpListener};

use c10k_sys::activation::{Activation, listen_fds};

/// Take the listening socket passed by the service manager, if any: `Ok(None)` when
/// the process was not socket-activated (or `LISTEN_PID` names another process,
/// which is logged). Call it from the main thread before any thread is spawned.
///
/// # Errors
///
/// Malformed variables, more or fewer than one socket, or a socket that is not a
/// listening TCP socket.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let sockets = match listen_fds()? {
        Activation::None => return Ok(None),
        Activation::OtherProcess { listen_pid } => {
            tracing::warn!(
                "ignoring LISTEN_FDS: LISTEN_PID={listen_pid} is not this process ({})",
                std::process::id()
            );
            return Ok(None);
        }
        Activation::Sockets(s) => s,
    };
    let n = sockets.len();
    let Some(first) = sockets.into_iter().next().filter(|_| n == 1) else {
        return Err(io::Error::other(format!(
            "socket activation passed {n} sockets (LISTEN_FDS={n}); c10k serves exactly one: \
             give the socket unit one ListenStream="
        )));
    };
    let name = first.name.unwrap_or_else(|| "unnamed".into());
    if !rustix::net::sockopt::socket_acceptconn(&first.fd)? {
        return Err(io::Error::other(format!(
            "inherited socket {name} (fd 3) is not listening"
        )));
    }
    if rustix::net::sockopt::socket_type(&first.fd)? != rustix::net::SocketType::STREAM {
        return Err(io::Error::other(format!(
            "inherited socket {name} (fd 3) is not a stream socket"
        )));
    }
    let addr = rustix::net::getsockname(&first.fd)?;
    let addr = SocketAddr::try_from(addr).map_err(|_| {
        io::Error::other(format!(
            "inherited socket {name} (fd 3) is not a TCP/IP socket"
        ))
    })?;
    let listener = TcpListener::from(first.fd);
    listener.set_nonblocking(true)?;
    tracing::info!("using the inherited listening socket {name} on {addr} (LISTEN_FDS)");
    Ok(Some(listener))
}

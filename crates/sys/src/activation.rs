//! Socket activation: take the listening sockets a service manager passed to this
//! process, by systemd's convention (`sd_listen_fds(3)`).
//!
//! The manager starts the program with the sockets at descriptors 3, 4, ... and sets
//! `LISTEN_FDS` (how many), `LISTEN_PID` (the process they are meant for) and
//! optionally `LISTEN_FDNAMES` (colon-separated names). [`listen_fds`] checks that
//! `LISTEN_PID` is this process, takes ownership of each descriptor (checking it is
//! an open socket), marks it close-on-exec (so a program this one starts does not
//! inherit it), and removes the three variables (so a child process does not take
//! the same descriptors for its own).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;
/// More inherited sockets than this is taken for a malformed `LISTEN_FDS`.
const MAX_FDS: i32 = 1024;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// One inherited descriptor.
#[derive(Debug)]
pub struct Inherited {
    /// The socket.
    pub fd: OwnedFd,
    /// Its name from `LISTEN_FDNAMES` (systemd: `FileDescriptorName=`, by default the
    /// socket unit's name), if given.
    pub name: Option<String>,
}

/// What the environment says about inherited sockets.
#[derive(Debug)]
pub enum Activation {
    /// No `LISTEN_FDS`/`LISTEN_PID`: the process was not socket-activated (or the
    /// sockets were already taken).
    None,
    /// `LISTEN_PID` names another process (the variables leaked from a parent): the
    /// descriptors are not ours, and are left alone.
    OtherProcess {
        /// The `LISTEN_PID` value.
        listen_pid: String,
    },
    /// The sockets, in descriptor order (3, 4, ...).
    Sockets(Vec<Inherited>),
}

/// Parse `LISTEN_PID`/`LISTEN_FDS` against this process's id: `Ok(None)` when the
/// variables are absent, `Ok(Some(Err(pid)))` when they are meant for another process,
/// `Ok(Some(Ok(n)))` for `n` descriptors.
fn parse(pid: Option<&str>, fds: Option<&str>, me: u32) -> io::Result<Option<Result<i32, String>>> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let bad = |what: &str, v: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: {what}={v:?} is not a number"),
        )
    };
    let pid_n: u32 = pid.trim().parse().map_err(|_| bad("LISTEN_PID", pid))?;
    if pid_n != me {
        return Ok(Some(Err(pid.to_string())));
    }
    let n: i32 = fds.trim().parse().map_err(|_| bad("LISTEN_FDS", fds))?;
    if !(0..=MAX_FDS).contains(&n) {
        return Err(bad("LISTEN_FDS", fds));
    }
    Ok(Some(Ok(n)))
}

/// Take the sockets passed by a service manager (see the module docs). Call it once,
/// early, before any thread is spawned: it removes environment variables, which is
/// sound only while no other thread can read the environment, and it refuses (with an
/// error) if the process has more than one thread. A second call returns
/// [`Activation::None`].
///
/// # Errors
///
/// Malformed variables, a descriptor that is not an open socket, or more than one
/// thread.
pub fn listen_fds() -> io::Result<Activation> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let me = std::process::id();
    let n = match parse(pid.as_deref(), fds.as_deref(), me)? {
        None => return Ok(Activation::None),
        Some(Err(listen_pid)) => return Ok(Activation::OtherProcess { listen_pid }),
        Some(Ok(n)) => n,
    };
    let threads = crate::process::thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "socket activation: take the inherited sockets before spawning threads (this process has {threads})"
        )));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Activation::None);
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the process has one thread (checked above; only this thread could
        // create another), so nothing reads or writes the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let mut out = Vec::with_capacity(n as usize);
    for (i, raw) in (LISTEN_FDS_START..LISTEN_FDS_START + n).enumerate() {
        // SAFETY: fstat on an integer descriptor: the kernel checks it (EBADF if not
        // open); `st` is a valid, writable stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(io::Error::other(format!(
                "socket activation: descriptor {raw} (of LISTEN_FDS={n}) is not open: {}",
                io::Error::last_os_error()
            )));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::other(format!(
                "socket activation: descriptor {raw} is not a socket"
            )));
        }
        // SAFETY: `raw` is open (fstat succeeded). By the activation protocol, checked
        // by LISTEN_PID == our pid, descriptors 3..3+LISTEN_FDS were handed to this
        // process for it to own, and `TAKEN` makes sure they are taken only once, so
        // no other owner of these descriptors exists in the process.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        out.push(Inherited {
            fd,
            name: names.get(i).filter(|s| !s.is_empty()).cloned(),
        });
    }
    Ok(Activation::Sockets(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_variables() {
        assert!(parse(None, Some("1"), 7).unwrap().is_none());
        assert!(parse(Some("7"), None, 7).unwrap().is_none());
        assert_eq!(parse(Some("7"), Some("2"), 7).unwrap(), Some(Ok(2)));
        assert_eq!(
            parse(Some("8"), Some("2"), 7).unwrap(),
            Some(Err("8".to_string()))
        );
        assert!(parse(Some("x"), Some("2"), 7).is_err());
        assert!(parse(Some("7"), Some("-1"), 7).is_err());
        assert!(parse(Some("7"), Some("99999"), 7).is_err());
    }
}

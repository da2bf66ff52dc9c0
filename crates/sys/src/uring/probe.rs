//! Is io_uring usable here, and if not, why? Probed, never assumed: io_uring can be
//! missing (old kernel), switched off (`sysctl kernel.io_uring_disabled`), blocked
//! (seccomp filters of container runtimes) or lack an operation we need.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use io_uring::{IoUring, Probe, opcode};

use super::{Event, Ring, RingConfig, Socket};

/// The operations the `uring` strategy submits.
const NEEDED: [(u8, &str); 6] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Close::CODE, "CLOSE"),
];

/// Check that this process can use io_uring the way [`Ring`] does: set up a ring,
/// find every opcode it submits, register a provided-buffer ring, and receive through
/// a multishot receive on a socket pair. Returns why not, in a sentence.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| explain_setup_error(&e))?;
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err("this kernel's io_uring cannot wait with a timeout \
                    (IORING_FEAT_EXT_ARG, Linux 5.11)"
            .into());
    }
    if !params.is_feature_nodrop() {
        return Err("this kernel's io_uring may drop completions \
                    (no IORING_FEAT_NODROP, Linux 5.5)"
            .into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot list the kernel's io_uring operations: {e}"))?;
    for (code, name) in NEEDED {
        if !probe.is_supported(code) {
            return Err(format!("this kernel's io_uring lacks the {name} operation"));
        }
    }
    drop(ring);
    multishot_receive()
}

/// Receive one byte through a multishot receive into a provided-buffer ring (Linux
/// 5.19 for buffer rings, 6.0 for multishot receive).
fn multishot_receive() -> Result<(), String> {
    let config = RingConfig {
        entries: 8,
        sqpoll: false,
        buf_count: 4,
        buf_size: 64,
    };
    let mut ring = Ring::new(config)
        .map_err(|e| format!("cannot register a provided-buffer ring (needs Linux 5.19): {e}"))?;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("probe: socketpair failed: {e}"))?;
    let socket = Socket::from(OwnedFd::from(a));
    let result = (|| {
        ring.recv_multi(&socket, 1)
            .map_err(|e| format!("cannot queue a multishot receive: {e}"))?;
        b.write_all(b"x")
            .map_err(|e| format!("probe: write failed: {e}"))?;
        let mut got = Vec::new();
        for _ in 0..10 {
            ring.submit_and_wait(Some(Duration::from_millis(200)))
                .or_else(|e| match e.kind() {
                    io::ErrorKind::Interrupted => Ok(()),
                    _ => Err(format!("io_uring_enter failed: {e}")),
                })?;
            ring.reap(&mut got);
            if !got.is_empty() {
                break;
            }
        }
        match got.into_iter().next() {
            Some(c) => match c.event {
                Event::Received(Ok(Some(buf))) if &buf[..] == b"x" && c.more => Ok(()),
                Event::Received(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => Err(
                    "this kernel's io_uring has no multishot receive (needs Linux 6.0)".to_string(),
                ),
                other => Err(format!(
                    "a multishot receive did not behave as expected: {other:?} (more: {})",
                    c.more
                )),
            },
            None => Err("a multishot receive produced no completion within 2 s".into()),
        }
    })();
    let _ = ring.close(socket);
    ring.shutdown(Duration::from_secs(1));
    result
}

/// Why `io_uring_setup(2)` failed, in a sentence.
pub fn explain_setup_error(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    explain(e, sysctl.as_deref())
}

fn explain(e: &io::Error, io_uring_disabled: Option<&str>) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "this kernel has no io_uring (io_uring_setup: ENOSYS; needs Linux 6.0 or later)".into()
        }
        Some(libc::EPERM | libc::EACCES) => match io_uring_disabled.map(str::trim) {
            Some("2") => {
                "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)".into()
            }
            Some("1") => "io_uring is limited to the group in sysctl kernel.io_uring_group \
                          (kernel.io_uring_disabled = 1) and this process is not in it"
                .into(),
            _ => "io_uring_setup was refused (EPERM): a seccomp filter or container \
                  policy blocks io_uring"
                .into(),
        },
        Some(libc::ENOMEM) => {
            "io_uring_setup failed for lack of memory (ENOMEM: locked-memory limit?)".into()
        }
        _ => format!("io_uring_setup failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_each_way_io_uring_can_be_off() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(explain(&eperm, Some("2\n")).contains("kernel.io_uring_disabled = 2"));
        assert!(explain(&eperm, Some("1\n")).contains("io_uring_group"));
        assert!(explain(&eperm, Some("0\n")).contains("seccomp"));
        assert!(explain(&eperm, None).contains("seccomp"));
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(explain(&enosys, None).contains("Linux 6.0"));
        let other = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(explain(&other, None).starts_with("io_uring_setup failed"));
    }
}

//! An epoll wait whose event buffer may cross threads.
//!
//! rustix's `epoll::Event` holds a union with a pointer, so a buffer of them is not
//! `Send`; an embedding interpreter that releases its global lock around the wait
//! (PyO3's `Python::detach`) needs the whole wait to be. [`Events`] keeps the
//! kernel's plain `epoll_event` records (a `u32` and a `u64`) and waits with
//! nanosecond timeouts (`epoll_pwait2`, Linux 5.11), falling back to `epoll_wait`
//! with the timeout rounded up to a millisecond.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The kernel has no epoll_pwait2 (found out once).
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// A buffer of readiness reports.
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    /// Room for `capacity` reports per wait (at least one).
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    /// Wait on `epfd` for at most `timeout` (`None`: no limit); returns how many
    /// reports arrived. A signal ends the wait early with none.
    pub fn wait(&mut self, epfd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<usize> {
        self.len = 0;
        let max = i32::try_from(self.buf.len()).unwrap_or(i32::MAX);
        let n = if NO_PWAIT2.load(Ordering::Relaxed) {
            self.wait_ms(epfd, timeout, max)
        } else {
            let ts = timeout.map(|d| libc::timespec {
                tv_sec: d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            let ts_ptr = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: the buffer holds `max` records and outlives the call; the
            // timespec (or null) is valid for the call; a null signal mask is allowed.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd.as_raw_fd(),
                    self.buf.as_mut_ptr(),
                    max,
                    ts_ptr,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                NO_PWAIT2.store(true, Ordering::Relaxed);
                self.wait_ms(epfd, timeout, max)
            } else {
                r as i64
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.len = n as usize;
        Ok(self.len)
    }

    fn wait_ms(&mut self, epfd: BorrowedFd<'_>, timeout: Option<Duration>, max: i32) -> i64 {
        let ms = timeout.map_or(-1, |d| {
            let ms = d.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        });
        // SAFETY: the buffer holds `max` records and outlives the call.
        i64::from(unsafe { libc::epoll_wait(epfd.as_raw_fd(), self.buf.as_mut_ptr(), max, ms) })
    }

    /// The reports of the last wait: (registration data, event flags).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buf[..self.len].iter().map(|e| {
            let data = e.u64;
            let flags = e.events;
            (data, flags)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::epoll;
    use std::os::fd::AsFd;

    #[test]
    fn reports_a_ready_socket_and_times_out() {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        epoll::add(&ep, &a, epoll::EventData::new_u64(7), epoll::EventFlags::IN).unwrap();
        let mut events = Events::with_capacity(8);
        assert_eq!(
            events
                .wait(ep.as_fd(), Some(Duration::from_millis(5)))
                .unwrap(),
            0
        );
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        assert_eq!(events.wait(ep.as_fd(), None).unwrap(), 1);
        let got: Vec<_> = events.iter().collect();
        assert_eq!(got, vec![(7, libc::EPOLLIN as u32)]);
    }

    #[test]
    fn events_cross_threads() {
        fn is_send<T: Send>(_: &T) {}
        is_send(&Events::with_capacity(1));
    }
}

//! epoll, level- or edge-triggered by value (C10K items 1 and 2): a [`Poller`] for
//! the shared [`reactor`](super::reactor).
//!
//! The two triggers differ in three places, and only there:
//! - registration: edge-triggered connections are registered once for
//!   `IN | OUT | RDHUP | ET` and never modified; level-triggered ones are registered for
//!   what they want now (`IN` unless backpressured, `OUT` only while output is pending)
//!   and modified when that changes, or an idle writable socket would be reported on
//!   every wait;
//! - reading: level-triggered reads once per report (the kernel reports again if more
//!   is left); edge-triggered reads until the kernel has nothing more;
//! - accepting: edge-triggered accepts until EAGAIN; level-triggered accepts a batch.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};

use super::poller::{Interest, Poller, Ready, Source, Watch};

/// How readiness is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Reported while the condition holds (epoll's default, like poll and select).
    Level,
    /// Reported when the condition changes (`EPOLLET`).
    Edge,
}

/// An epoll instance with a trigger mode.
pub(crate) struct Epoll {
    fd: OwnedFd,
    trigger: Trigger,
    events: Vec<epoll::Event>,
}

impl Epoll {
    pub(crate) fn new(trigger: Trigger) -> io::Result<Self> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            trigger,
            events: Vec::with_capacity(1024),
        })
    }

    fn flags(&self, interest: Interest, source: Source) -> EventFlags {
        let mut flags = EventFlags::empty();
        if interest.read {
            flags |= EventFlags::IN;
        }
        if interest.write {
            flags |= EventFlags::OUT;
        }
        match source {
            // RDHUP only while reading: a level-triggered half-close would otherwise be
            // reported on every wait while backpressure has reading paused (a spin).
            Source::Conn if interest.read => flags |= EventFlags::RDHUP,
            Source::Conn => {}
            Source::Listener { shared: true } => flags |= EventFlags::EXCLUSIVE,
            Source::Listener { shared: false } | Source::Wake => {}
        }
        // The shutdown pipe is never drained: it must stay level-triggered.
        if self.trigger == Trigger::Edge && source != Source::Wake {
            flags |= EventFlags::ET;
        }
        flags
    }
}

impl Poller for Epoll {
    fn edge(&self) -> bool {
        self.trigger == Trigger::Edge
    }

    fn add(&mut self, fd: BorrowedFd<'_>, watch: Watch) -> io::Result<()> {
        let Watch {
            token,
            interest,
            source,
            ..
        } = watch;
        let flags = self.flags(interest, source);
        Ok(epoll::add(&self.fd, fd, EventData::new_u64(token), flags)?)
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let flags = self.flags(interest, Source::Conn);
        Ok(epoll::modify(
            &self.fd,
            fd,
            EventData::new_u64(token),
            flags,
        )?)
    }

    fn delete(&mut self, fd: BorrowedFd<'_>, _token: u64) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    fn forget(&mut self, _fd: BorrowedFd<'_>, _token: u64) {
        // Closing the last descriptor of a socket removes it from every epoll set.
    }

    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.map(|d| rustix::time::Timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        self.events.clear();
        epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(&mut self.events),
            timeout.as_ref(),
        )?;
        out.extend(self.events.iter().map(|ev| {
            let f = ev.flags;
            Ready {
                token: ev.data.u64(),
                readable: f.contains(EventFlags::IN),
                writable: f.contains(EventFlags::OUT),
                hup: f.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR),
            }
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::poller::tests::contract;

    #[test]
    fn level_keeps_the_poller_contract() {
        contract(Epoll::new(Trigger::Level).unwrap());
    }

    #[test]
    fn edge_keeps_the_poller_contract() {
        contract(Epoll::new(Trigger::Edge).unwrap());
    }
}

//! The kernel interfaces the loop waits on: epoll (level- or edge-triggered) and
//! io_uring. Both report through [`Ready`] values tagged with a [`Tag`]; the uring
//! backend also hands over completions (received bytes, finished sends).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use c10k_sys::uring::{Completion, Ring, RingConfig};
use rustix::event::epoll::{self, EventData, EventFlags};

/// What an event is about: the high byte of a token says the kind, the next three
/// bytes a serial (a reused slot is told from the connection an old event was for),
/// the low four the slot (or the watched descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// A connection: slot and serial.
    Conn(usize, u32),
    /// A listening socket: slot.
    Listener(usize),
    /// A descriptor watched for `add_reader`.
    Reader(i32),
    /// A descriptor watched for `add_writer`.
    Writer(i32),
    /// A descriptor watched for both (epoll registers a descriptor once).
    Watch(i32),
    /// The self-pipe (`call_soon_threadsafe`, signals).
    Wake,
}

const CONN: u64 = 1;
const LISTENER: u64 = 2;
const READER: u64 = 3;
const WRITER: u64 = 4;
const WATCH: u64 = 5;
const WAKE: u64 = 6;

impl Tag {
    pub(crate) fn encode(self) -> u64 {
        let (kind, serial, low) = match self {
            Tag::Conn(slot, serial) => (CONN, serial, slot as u64),
            Tag::Listener(slot) => (LISTENER, 0, slot as u64),
            Tag::Reader(fd) => (READER, 0, fd as u32 as u64),
            Tag::Writer(fd) => (WRITER, 0, fd as u32 as u64),
            Tag::Watch(fd) => (WATCH, 0, fd as u32 as u64),
            Tag::Wake => (WAKE, 0, 0),
        };
        (kind << 56) | (u64::from(serial & 0x00ff_ffff) << 32) | (low & 0xffff_ffff)
    }

    pub(crate) fn decode(v: u64) -> Option<Tag> {
        let low = v & 0xffff_ffff;
        let serial = ((v >> 32) & 0x00ff_ffff) as u32;
        Some(match v >> 56 {
            CONN => Tag::Conn(low as usize, serial),
            LISTENER => Tag::Listener(low as usize),
            READER => Tag::Reader(low as u32 as i32),
            WRITER => Tag::Writer(low as u32 as i32),
            WATCH => Tag::Watch(low as u32 as i32),
            WAKE => Tag::Wake,
            _ => return None,
        })
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub tag: u64,
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error: a read will tell which.
    pub hup: bool,
}

/// Which kernel interface, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    EpollLevel,
    EpollEdge,
    Uring,
}

impl Kind {
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        match name {
            "epoll-lt" => Some(Kind::EpollLevel),
            "epoll-et" => Some(Kind::EpollEdge),
            "uring" => Some(Kind::Uring),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::EpollLevel => "epoll-lt",
            Kind::EpollEdge => "epoll-et",
            Kind::Uring => "uring",
        }
    }
}

/// An epoll instance.
pub(crate) struct Epoll {
    pub fd: OwnedFd,
    events: c10k_sys::epoll::Events,
}

/// Interest in a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            events: c10k_sys::epoll::Events::with_capacity(1024),
        })
    }

    fn flags(interest: Interest, edge: bool) -> EventFlags {
        let mut f = EventFlags::empty();
        if interest.read {
            f |= EventFlags::IN | EventFlags::RDHUP;
        }
        if interest.write {
            f |= EventFlags::OUT;
        }
        if edge {
            f |= EventFlags::ET;
        }
        f
    }

    /// Register `fd`; `edge` only for connections of an edge-triggered loop.
    pub(crate) fn add(
        &self,
        fd: impl AsFd,
        tag: Tag,
        interest: Interest,
        edge: bool,
    ) -> io::Result<()> {
        let flags = Self::flags(interest, edge);
        Ok(epoll::add(
            &self.fd,
            fd,
            EventData::new_u64(tag.encode()),
            flags,
        )?)
    }

    pub(crate) fn modify(
        &self,
        fd: impl AsFd,
        tag: Tag,
        interest: Interest,
        edge: bool,
    ) -> io::Result<()> {
        let flags = Self::flags(interest, edge);
        Ok(epoll::modify(
            &self.fd,
            fd,
            EventData::new_u64(tag.encode()),
            flags,
        )?)
    }

    pub(crate) fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// Wait for events (nanosecond timeouts where the kernel has epoll_pwait2).
    /// `detach` runs the wait with the interpreter's lock released.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Ready>,
        detach: impl FnOnce(&mut (dyn FnMut() -> io::Result<()> + Send)) -> io::Result<()>,
    ) -> io::Result<()> {
        let fd = self.fd.as_fd();
        let events = &mut self.events;
        let mut wait = || -> io::Result<()> { events.wait(fd, timeout).map(drop) };
        if timeout.is_some_and(|t| t.is_zero()) {
            // Nothing to wait for: poll without giving up the lock.
            wait()?;
        } else {
            detach(&mut wait)?;
        }
        out.extend(self.events.iter().map(|(tag, f)| {
            let f = EventFlags::from_bits_retain(f);
            Ready {
                tag,
                readable: f.contains(EventFlags::IN),
                writable: f.contains(EventFlags::OUT),
                hup: f.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR),
            }
        }));
        Ok(())
    }
}

/// An io_uring.
pub(crate) struct Uring {
    pub ring: Ring,
}

/// Receive buffers: 1,024 of 16 KiB. The ring hands them out in turn, so every buffer
/// is touched sooner or later and the pool ends up resident: 4,096 (64 MiB) made a
/// loop's RSS 92-106 MiB under load (uvloop's: 29), 1,024 makes it 43-57 MiB at the
/// same CPU per message within the noise (64 B and 1 KiB echoes at 1,000 and 10,000
/// connections), and 16 KiB pieces serve 64 KiB messages with 0.8x the CPU of 4 KiB
/// ones (docs/notes/python-loop.md). A burst larger than the pool ends a multishot
/// receive with `ENOBUFS`, which re-arms it.
const URING_CONFIG: RingConfig = RingConfig {
    entries: 4096,
    sqpoll: false,
    buf_count: 1024,
    buf_size: 16 * 1024,
};

impl Uring {
    pub(crate) fn new() -> io::Result<Uring> {
        if let Err(why) = c10k_sys::uring::probe() {
            return Err(io::Error::other(why.to_string()));
        }
        let mut ring = Ring::new(URING_CONFIG)?;
        // A registered file table: a connection's operations name its slot, which
        // spares the kernel a descriptor lookup per operation. As large as the
        // open-files limit allows (at most 65,536); none if the kernel refuses.
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(65_536)
            .min(65_536) as u32;
        let _ = ring.register_files(nofile);
        Ok(Uring { ring })
    }

    /// Submit what is queued and wait (lock released by `detach`), then reap.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        detach: impl FnOnce(&mut (dyn FnMut() -> io::Result<()> + Send)) -> io::Result<()>,
    ) -> io::Result<()> {
        let zero = timeout.is_some_and(|t| t.is_zero());
        let waiter = self.ring.waiter();
        let mut waiter = Some(waiter);
        let mut wait = || -> io::Result<()> {
            match waiter.take() {
                Some(w) => w.submit_and_wait(timeout),
                None => Ok(()),
            }
        };
        let waited = if zero { wait() } else { detach(&mut wait) };
        match waited {
            Ok(()) => {}
            // A signal: the loop's wakeup fd has it; reap what is there.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.ring.reap(out);
        Ok(())
    }
}

/// Whether `kind` can run here, and why not.
pub(crate) fn probe(kind: Kind) -> Result<(), String> {
    match kind {
        Kind::EpollLevel | Kind::EpollEdge => Epoll::new()
            .map(drop)
            .map_err(|e| format!("epoll_create1 failed: {e}")),
        Kind::Uring => c10k_sys::uring::probe().map_err(|e| e.to_string()),
    }
}

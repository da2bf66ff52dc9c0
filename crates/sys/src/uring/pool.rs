//! The provided-buffer ring: a group of equal-sized receive buffers that the kernel
//! picks from when a multishot receive completes.
//!
//! Ownership moves in a circle. A buffer in the ring belongs to the kernel: it may
//! write into it at any time. A completion hands one buffer to user space as a
//! [`RecvBuf`]; nobody else can see that buffer until the `RecvBuf` is dropped, which
//! puts it back at the ring's tail for the kernel to use again. The counters `out`
//! and `back` count the two directions, so a test can check that every buffer came
//! home.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::io;
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

/// `struct io_uring_buf`, one entry of a buffer ring (kernel ABI). The `resv` field of
/// entry 0 is the ring's tail, written by user space and read by the kernel.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufEntry>() == 16);

/// Largest number of buffers in one ring (the kernel's limit).
pub const MAX_BUFFERS: u16 = 32768;

/// The memory of one buffer group: the ring of entries the kernel reads, and the
/// buffers themselves.
pub(super) struct Pool {
    entries: NonNull<BufEntry>,
    entries_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    count: u16,
    size: u32,
    /// Our copy of the tail (the kernel only reads the shared one).
    tail: Cell<u16>,
    /// Buffers handed to user space by completions.
    out: Cell<u64>,
    /// Buffers given back to the kernel.
    back: Cell<u64>,
}

impl Pool {
    /// Allocate `count` buffers of `size` bytes and put them all in the ring.
    pub(super) fn new(count: u16, size: u32) -> io::Result<Pool> {
        if count == 0 || !count.is_power_of_two() || count > MAX_BUFFERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer count must be a power of two from 1 to {MAX_BUFFERS}, not {count}"),
            ));
        }
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer size must be at least 1 byte",
            ));
        }
        let page = rustix::param::page_size();
        let entries_layout =
            Layout::from_size_align(usize::from(count) * std::mem::size_of::<BufEntry>(), page)
                .map_err(io::Error::other)?;
        let total = usize::from(count)
            .checked_mul(size as usize)
            .ok_or_else(|| io::Error::other("buffer pool too large"))?;
        let bufs_layout = Layout::from_size_align(total, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufEntry>();
        let Some(entries) = NonNull::new(entries) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        // SAFETY: as above. Zeroed memory is mapped lazily, so an unused buffer costs
        // no resident memory.
        let bufs = unsafe { alloc::alloc_zeroed(bufs_layout) };
        let Some(bufs) = NonNull::new(bufs) else {
            // SAFETY: allocated just above with this layout.
            unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let pool = Pool {
            entries,
            entries_layout,
            bufs,
            bufs_layout,
            count,
            size,
            tail: Cell::new(0),
            out: Cell::new(0),
            back: Cell::new(0),
        };
        for bid in 0..count {
            pool.publish(bid);
        }
        Ok(pool)
    }

    /// Address of the entry ring, for registration with the kernel.
    pub(super) fn ring_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// Bytes per buffer.
    pub(super) fn size(&self) -> u32 {
        self.size
    }

    /// Buffers handed out by completions, and buffers given back.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.out.get(), self.back.get())
    }

    /// Put buffer `bid` at the tail of the ring: the kernel may fill it from now on.
    fn publish(&self, bid: u16) {
        let tail = self.tail.get();
        let idx = usize::from(tail & (self.count - 1));
        // SAFETY: idx < count, so the entry is inside the allocation. The kernel only
        // reads entries between its head and the published tail; this slot is at the
        // tail, outside that range (the ring never holds more than `count` buffers,
        // and `bid` is not in it: it was handed out and is being given back once).
        // The fields are written through raw pointers, never through a reference
        // covering `resv`, which for entry 0 is the tail the kernel reads.
        unsafe {
            let e = self.entries.as_ptr().add(idx);
            let addr = self
                .bufs
                .as_ptr()
                .add(usize::from(bid) * self.size as usize);
            ptr::addr_of_mut!((*e).addr).write(addr as u64);
            ptr::addr_of_mut!((*e).len).write(self.size);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail is the `resv` field of entry 0, a properly aligned u16 in
        // the allocation, only ever accessed atomically (by us and the kernel).
        let shared = unsafe { &*ptr::addr_of!((*self.entries.as_ptr()).resv).cast::<AtomicU16>() };
        // Release: the entry written above is visible before the new tail.
        shared.store(tail, Ordering::Release);
    }

    /// Take buffer `bid`, which a completion reported holding `len` bytes.
    pub(super) fn take(self: &Rc<Self>, bid: u16, len: u32) -> Option<RecvBuf> {
        if bid >= self.count {
            return None;
        }
        self.out.set(self.out.get() + 1);
        Some(RecvBuf {
            pool: Rc::clone(self),
            bid,
            len: len.min(self.size),
        })
    }

    fn give_back(&self, bid: u16) {
        self.back.set(self.back.get() + 1);
        self.publish(bid);
    }

    fn bytes(&self, bid: u16, len: u32) -> &[u8] {
        debug_assert!(bid < self.count && len <= self.size);
        // SAFETY: bid < count and len <= size (checked in `take`), so the slice lies
        // inside buffer `bid`. The kernel wrote these bytes before posting the
        // completion that handed the buffer out, and does not touch the buffer again
        // until `give_back` republishes it, which only happens when the `RecvBuf`
        // (and so every borrow of these bytes) is gone.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.size as usize),
                len as usize,
            )
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts. The ring drops its handle
        // (and so possibly the pool) only after the kernel can no longer use the
        // memory: the group is unregistered and no receive is in flight; otherwise
        // it leaks the pool instead.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

/// Received bytes in a buffer of the ring's pool, owned by user space until dropped;
/// dropping it gives the buffer back to the kernel.
pub struct RecvBuf {
    pool: Rc<Pool>,
    bid: u16,
    len: u32,
}

impl RecvBuf {
    /// The buffer's id in its group.
    pub fn id(&self) -> u16 {
        self.bid
    }
}

impl Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.pool.bytes(self.bid, self.len)
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.bid);
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("id", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_pool_publishes_every_buffer() {
        let pool = Rc::new(Pool::new(8, 64).unwrap());
        assert_eq!(pool.tail.get(), 8);
        // SAFETY: test: reading the entries we wrote, no kernel involved.
        let bids: Vec<u16> = (0..8)
            .map(|i| unsafe { (*pool.entries.as_ptr().add(i)).bid })
            .collect();
        assert_eq!(bids, (0..8).collect::<Vec<u16>>());
        let b = pool.take(3, 10).unwrap();
        assert_eq!(b.len(), 10);
        assert_eq!(pool.counts(), (1, 0));
        drop(b);
        assert_eq!(pool.counts(), (1, 1));
        assert_eq!(pool.tail.get(), 9);
        assert!(pool.take(8, 1).is_none(), "bid out of range");
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(Pool::new(0, 64).is_err());
        assert!(Pool::new(3, 64).is_err());
        assert!(Pool::new(4, 0).is_err());
    }
}

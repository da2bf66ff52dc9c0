//! Counters shared between a process and the children it forks: an anonymous
//! `MAP_SHARED` mapping of `AtomicU64` slots.
//!
//! Memory of a forked child is a copy of its parent's, so a counter the child bumps is
//! invisible to the parent. A `MAP_SHARED | MAP_ANONYMOUS` mapping created before the
//! fork is the one exception: both processes see the same physical pages, and atomic
//! read-modify-write instructions on them are atomic across processes too (they act
//! on the memory, not on a process). The `fork` and `prefork` strategies use this so
//! that the parent (which serves `/metrics`) sees what its children counted.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

// Cross-process atomics need native 64-bit atomic instructions (no lock tables).
#[cfg(not(target_has_atomic = "64"))]
compile_error!("c10k-sys::shm needs native 64-bit atomics");

/// `len` counters, zero at first, in memory shared with every child forked after
/// [`SharedCounters::new`]. Unmapped on drop (in each process separately).
#[derive(Debug)]
pub struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `&AtomicU64` (atomic operations),
// which is sound from any thread; the pointer is owned by this value alone.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: shared access is through atomics only.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Map `len` zeroed counters (at least one page).
    pub fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1);
        let bytes = len
            .checked_mul(std::mem::size_of::<AtomicU64>())
            .ok_or_else(|| io::Error::other("too many shared counters"))?;
        // SAFETY: a new anonymous mapping at an address the kernel picks: it cannot
        // alias any Rust object. No pointer argument is dereferenced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(SharedCounters { ptr, len })
    }

    /// The counters.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len * 8` bytes, page-aligned (so aligned for
        // AtomicU64), readable and writable, and zero-filled by the kernel (all-zero
        // bytes are a valid AtomicU64). It stays mapped until `self` is dropped, which
        // the borrow prevents while the slice lives. AtomicU64 permits shared mutation
        // through `&`, so aliasing with other processes' views is fine.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<AtomicU64>();
        // SAFETY: unmaps exactly the mapping created in `new`; no borrow of it can
        // outlive `self` (`slots` borrows `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn counters_start_at_zero_and_count() {
        let c = SharedCounters::new(3).unwrap();
        assert_eq!(c.slots().len(), 3);
        assert!(c.slots().iter().all(|s| s.load(Relaxed) == 0));
        c.slots()[2].fetch_add(5, Relaxed);
        assert_eq!(c.slots()[2].load(Relaxed), 5);
    }
}

//! A value that lives on one thread but may be owned, and dropped, from any.
//!
//! An interpreter's garbage collector frees an object on whichever thread happened to
//! trigger the collection. A native object whose state is single-threaded (`Rc`,
//! `RefCell`: an event loop's transport) can then be released on a thread it must not
//! be touched from. [`ThreadBound`] makes that case safe instead of leaking: the
//! value is reachable only on the thread that made it ([`ThreadBound::get`] is `None`
//! elsewhere), and a `ThreadBound` dropped elsewhere moves its value, untouched, to a
//! process-wide graveyard, from which the owning thread drops it the next time it
//! calls [`sweep`]. A value whose thread has ended stays there (it cannot be dropped
//! anywhere else soundly).
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A number for the current thread, unique for the process's lifetime (never reused,
/// unlike a pthread id), read without touching a shared counter after the first call.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(0) };
    }
    // 0 (no thread's number) while the thread's locals are being torn down: a value
    // dropped then goes to the graveyard rather than touching a dead thread local.
    NUMBER
        .try_with(|n| {
            if n.get() == 0 {
                n.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            n.get()
        })
        .unwrap_or(0)
}

/// A value dropped away from its thread, waiting for that thread to drop it.
struct Grave {
    owner: usize,
    /// Never read: held only to be dropped, on the owner's thread.
    _body: Box<dyn Any>,
}

// SAFETY: a `Grave` holds a value that may not be `Send`. The graveyard only moves it
// (a memory copy of the box pointer) and never reads, writes or drops it except in
// `sweep`, which drops a grave only on the thread whose number is `owner`, the thread
// that made the value; no other thread can reach the value through the graveyard.
unsafe impl Send for Grave {}

static GRAVEYARD: Mutex<Vec<Grave>> = Mutex::new(Vec::new());
/// Graves in the yard: lets [`sweep`] return without locking when there are none.
static GRAVES: AtomicUsize = AtomicUsize::new(0);

/// Drop the values that were dropped away from the current thread. Cheap when there
/// are none (one atomic load). Call it from the owning thread's loop.
pub fn sweep() {
    if GRAVES.load(Ordering::Acquire) == 0 {
        return;
    }
    let me = thread_number();
    let mine: Vec<Grave> = {
        let mut yard = GRAVEYARD.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<Grave>, Vec<Grave>) = yard.drain(..).partition(|g| g.owner == me);
        *yard = rest;
        GRAVES.fetch_sub(mine.len(), Ordering::AcqRel);
        mine
    };
    // Dropped with the lock released: a value's drop may drop other bound values.
    drop(mine);
}

/// Values waiting in the graveyard (all threads'): for tests and diagnostics.
pub fn graves() -> usize {
    GRAVES.load(Ordering::Acquire)
}

/// `T`, reachable only on the thread that made it (see the module docs).
pub struct ThreadBound<T: 'static> {
    owner: usize,
    value: ManuallyDrop<T>,
}

// SAFETY: the value is only ever reached through `get`/`into_inner`, which check that
// the calling thread is the owner; a reference obtained there cannot move to another
// thread unless `T: Sync` (then sharing it is sound anyway). Sending the wrapper moves
// the value's bytes without touching it, and `Drop` on another thread hands the value
// to the graveyard untouched (see `Grave`).
unsafe impl<T: 'static> Send for ThreadBound<T> {}
// SAFETY: as for `Send`: `&ThreadBound<T>` on another thread gives no access to `T`.
unsafe impl<T: 'static> Sync for ThreadBound<T> {}

impl<T: 'static> ThreadBound<T> {
    /// Bind `value` to the current thread.
    pub fn new(value: T) -> Self {
        ThreadBound {
            owner: thread_number(),
            value: ManuallyDrop::new(value),
        }
    }

    /// Whether the current thread is the value's.
    pub fn is_owner(&self) -> bool {
        thread_number() == self.owner
    }

    /// The value, on its own thread; `None` on any other.
    pub fn get(&self) -> Option<&T> {
        self.is_owner().then(|| &*self.value)
    }

    /// The value itself, on its own thread; the wrapper back on any other.
    pub fn into_inner(self) -> Result<T, Self> {
        if !self.is_owner() {
            return Err(self);
        }
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so the value is taken once.
        Ok(unsafe { ManuallyDrop::take(&mut this.value) })
    }
}

impl<T: 'static> Drop for ThreadBound<T> {
    fn drop(&mut self) {
        if self.is_owner() {
            // SAFETY: `drop` runs once, and the value is not used after it.
            unsafe { ManuallyDrop::drop(&mut self.value) };
            return;
        }
        // SAFETY: `drop` runs once, and the value is not used after it: it is moved,
        // untouched, into the graveyard for its own thread to drop.
        let value = unsafe { ManuallyDrop::take(&mut self.value) };
        let body: Box<dyn Any> = Box::new(value);
        let mut yard = GRAVEYARD.lock().unwrap_or_else(|p| p.into_inner());
        yard.push(Grave {
            owner: self.owner,
            _body: body,
        });
        GRAVES.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Counts its drops and the thread they ran on.
    struct Probe {
        dropped_on: Rc<Cell<usize>>,
    }
    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped_on.set(thread_number());
        }
    }

    #[test]
    fn a_value_dropped_elsewhere_is_dropped_by_its_own_thread_at_the_next_sweep() {
        let seen = Rc::new(Cell::new(0));
        let bound = ThreadBound::new(Probe {
            dropped_on: seen.clone(),
        });
        assert!(bound.get().is_some());
        let before = graves();
        // A closure cannot capture the Rc itself (it is not Send): only the wrapper.
        let other = std::thread::spawn(move || {
            assert!(bound.get().is_none(), "reachable off its thread");
            let mine = thread_number();
            drop(bound);
            mine
        })
        .join()
        .unwrap();
        assert_eq!(seen.get(), 0, "dropped on the other thread");
        assert!(graves() > before);
        // Another thread's sweep leaves it alone.
        std::thread::spawn(sweep).join().unwrap();
        assert_eq!(seen.get(), 0);
        sweep();
        assert_eq!(seen.get(), thread_number());
        assert_ne!(seen.get(), other);
        assert_eq!(
            Rc::strong_count(&seen),
            1,
            "the value was dropped, not leaked"
        );
    }

    #[test]
    fn on_its_own_thread_it_drops_at_once_and_gives_the_value_back() {
        let seen = Rc::new(Cell::new(0));
        let bound = ThreadBound::new(Probe {
            dropped_on: seen.clone(),
        });
        let probe = bound.into_inner().ok().expect("own thread");
        drop(probe);
        assert_eq!(seen.get(), thread_number());
        let again = ThreadBound::new(5u32);
        let back = std::thread::spawn(move || again.into_inner().err().map(|b| b.owner))
            .join()
            .unwrap();
        assert!(
            back.is_some(),
            "into_inner off its thread returns the wrapper"
        );
    }
}

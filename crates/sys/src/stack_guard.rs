//! Reporting a green thread's stack overflow instead of dying silently.
//!
//! A coroutine stack (corosensei's `DefaultStack`) has a guard page below it: a
//! handler that recurses too deep touches the guard page and the kernel raises
//! `SIGSEGV`. Without a handler, the process just dies with "Segmentation fault" and
//! nothing says why. [`install_overflow_report`] installs a `SIGSEGV`/`SIGBUS`
//! handler (on the thread's alternate signal stack, since the faulting stack is
//! exhausted) that checks the fault address against the guard page of the green
//! thread running on this OS thread ([`set_running_guard`]). A hit prints
//!
//! ```text
//! c10k: green thread stack overflow (stack of N bytes); raise --stack-size. Aborting.
//! ```
//!
//! to stderr and aborts. Any other fault is handed to the handler that was installed
//! before (Rust's own reports main- and OS-thread stack overflows) by restoring it and
//! returning: the faulting instruction runs again and faults into it.
//!
//! Recovering (unwinding the one coroutine and closing its connection) is not
//! attempted: the fault can hit in the middle of an allocator call or with a lock
//! held, and nothing after that point can be trusted.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;

thread_local! {
    /// The running green thread's guard page `[lo, hi)` and its stack size; zeros
    /// when none runs. `const`-initialised and without a destructor, so reading it
    /// from a signal handler touches no lazy-initialisation code.
    static GUARD: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
    /// This thread's alternate signal stack, when [`ensure_alt_stack`] made one.
    static ALT_STACK: AltStack = const { AltStack { base: Cell::new(0), len: Cell::new(0) } };
}

/// The handlers that were installed before ours, for faults that are not ours.
static PREVIOUS: OnceLock<(Sigaction, Sigaction)> = OnceLock::new();

/// `libc::sigaction` is plain data; this wrapper says so to `OnceLock`.
#[derive(Clone, Copy)]
struct Sigaction(libc::sigaction);
// SAFETY: a `sigaction` is plain data (a function address, flags and a mask); sharing
// it between threads is sound.
unsafe impl Send for Sigaction {}
// SAFETY: as above; it is only read after initialisation.
unsafe impl Sync for Sigaction {}

/// Say which guard page belongs to the green thread about to run on this OS thread
/// (`lo..hi`, its stack `size` for the message), or `None` when it switched back to
/// its scheduler.
pub fn set_running_guard(guard: Option<(usize, usize, usize)>) {
    GUARD.with(|g| g.set(guard.unwrap_or((0, 0, 0))));
}

/// Install the overflow report (once per process; later calls do nothing).
pub fn install_overflow_report() -> io::Result<()> {
    let mut result = Ok(());
    PREVIOUS.get_or_init(|| {
        let segv = install(libc::SIGSEGV);
        let bus = install(libc::SIGBUS);
        match (segv, bus) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                result = Err(e);
                // SAFETY: an all-zero `sigaction` is SIG_DFL with no flags.
                let dfl = Sigaction(unsafe { std::mem::zeroed() });
                (dfl, dfl)
            }
        }
    });
    result
}

fn install(sig: libc::c_int) -> io::Result<Sigaction> {
    // SAFETY: zeroed `sigaction` is a valid value (SIG_DFL, empty mask, no flags);
    // the fields are filled in below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_fault as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `action.sa_mask` is a valid, writable sigset.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers point to valid `sigaction` values; `on_fault` is an
    // `extern "C"` function with the SA_SIGINFO signature that only calls
    // async-signal-safe functions.
    if unsafe { libc::sigaction(sig, &action, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Sigaction(old))
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (lo, hi, size) = GUARD.with(|g| g.get());
    if lo <= addr && addr < hi {
        let mut msg = [0u8; 160];
        let mut n = 0;
        for part in [
            &b"c10k: green thread stack overflow (stack of "[..],
            itoa(size, &mut [0u8; 20]),
            b" bytes); raise --stack-size. Aborting.\n",
        ] {
            let take = part.len().min(msg.len() - n);
            msg[n..n + take].copy_from_slice(&part[..take]);
            n += take;
        }
        // SAFETY: write(2) and abort(3) are async-signal-safe; `msg[..n]` is valid.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), n);
            libc::abort();
        }
    }
    // Not a green thread's guard page: restore the previous handler and return; the
    // instruction faults again and the previous handler (or the default) takes it.
    if let Some((segv, bus)) = PREVIOUS.get() {
        let prev = if sig == libc::SIGBUS { bus } else { segv };
        // SAFETY: restoring a `sigaction` the kernel gave us; sigaction(2) is
        // async-signal-safe.
        unsafe { libc::sigaction(sig, &prev.0, std::ptr::null_mut()) };
    } else {
        // SAFETY: as above, with the default action.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Decimal digits of `v` in `buf`, without allocating (signal handler).
fn itoa(mut v: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

struct AltStack {
    base: Cell<usize>,
    len: Cell<usize>,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let (base, len) = (self.base.get(), self.len.get());
        if base == 0 {
            return;
        }
        // SAFETY: a zeroed `stack_t` with SS_DISABLE switches the alternate stack off,
        // so that no signal can run on the memory unmapped below.
        let mut off: libc::stack_t = unsafe { std::mem::zeroed() };
        off.ss_flags = libc::SS_DISABLE;
        // SAFETY: valid `stack_t`; the old value is not wanted.
        unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) };
        // SAFETY: `base..base+len` is the mapping made by `ensure_alt_stack`, no longer
        // in use.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
}

/// Give this thread an alternate signal stack if it has none (Rust gives one to the
/// threads it starts; a thread made otherwise may lack it). The report runs on it.
pub fn ensure_alt_stack() -> io::Result<()> {
    // SAFETY: zeroed `stack_t` is a valid out-parameter.
    let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; `cur` is valid and writable.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if cur.ss_flags & libc::SS_DISABLE == 0 {
        return Ok(());
    }
    let len = 64 * 1024;
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed `stack_t`, filled in below.
    let mut st: libc::stack_t = unsafe { std::mem::zeroed() };
    st.ss_sp = base;
    st.ss_size = len;
    // SAFETY: `st` describes the mapping just made, which stays mapped until this
    // thread's `ALT_STACK` is dropped (which first disables it).
    if unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the mapping made above, unused.
        unsafe { libc::munmap(base, len) };
        return Err(e);
    }
    ALT_STACK.with(|a| {
        a.base.set(base as usize);
        a.len.set(len);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa_writes_digits() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(65536, &mut [0; 20]), b"65536");
        assert_eq!(itoa(usize::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn install_twice_is_fine_and_alt_stack_exists() {
        install_overflow_report().unwrap();
        install_overflow_report().unwrap();
        std::thread::spawn(|| ensure_alt_stack().unwrap())
            .join()
            .unwrap();
    }
}

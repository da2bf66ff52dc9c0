//! c10k for Python: the native half of the `c10k` package.
//!
//! `engine::Engine` is the I/O engine under `c10k`'s asyncio event loop (the loop
//! itself, asyncio's scheduling, is Python: `python/c10k/_loop.py`), and
//! `transport::Transport` is asyncio's socket transport with its I/O in Rust. See
//! ARCHITECTURE.md ("Python") for how they fit. `blocking` runs blocking-style
//! handlers (`c10k.serve_blocking`) on threads or processes.

use pyo3::prelude::*;

mod backend;
mod blocking;
mod engine;
mod transport;

/// The native module `c10k._engine`.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<transport::Transport>()?;
    m.add_function(wrap_pyfunction!(engine::probe, m)?)?;
    m.add_class::<blocking::Gate>()?;
    m.add_class::<blocking::Acceptor>()?;
    m.add_class::<blocking::Connection>()?;
    m.add("STRATEGIES", ("epoll-et", "epoll-lt", "uring"))?;
    Ok(())
}

//! c10k-sys: the only crate of the workspace with `unsafe` code.
//!
//! Each module wraps a kernel interface that rustix or io-uring does not offer safely
//! in the shape the strategies need, and keeps whatever makes it sound (who owns a
//! buffer, when a descriptor may be closed) inside the module, so that callers stay
//! in safe Rust. Every `unsafe` block carries a `// SAFETY:` comment; `unsafe` is
//! allowed per file, never crate-wide.

pub mod uring;

//! c10k-sys: the only crate of the workspace with `unsafe` code.
//!
//! Each module wraps a syscall that rustix does not offer safely, and checks whatever
//! makes the call sound before making it, so that callers stay in safe Rust. Every
//! `unsafe` block carries a `// SAFETY:` comment; `unsafe` is allowed per file, never
//! crate-wide.

pub mod process;

//! The server's lifecycle, written once and sans-IO: [`conn::ConnCore`] for one
//! connection, [`worker::WorkerCore`] for one event loop. Drivers (readiness,
//! io_uring, blocking) move bytes and report events; these decide everything else.

pub(crate) mod conn;
pub(crate) mod mailbox;
pub(crate) mod worker;

pub(crate) use conn::{ConnCore, Env, Limits, LoopClock, OutputPool, Phase};
pub(crate) use worker::{Armed, ConnTable, DrainClock, Keyed, LingerQueue, Settled, WorkerCore};

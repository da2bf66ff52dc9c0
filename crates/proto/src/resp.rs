//! RESP2 server session (to be written).
/// Errors of the RESP session.
#[derive(Debug, thiserror::Error)]
pub enum RespError {}

//! HTTP/1.x server session (to be written).
/// Errors of the HTTP session.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {}

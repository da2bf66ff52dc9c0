//! The context a driver hands to every session call: the time, as a parameter.
//!
//! Sessions never read a clock themselves; the driver sets the time once per loop
//! iteration, and the HTTP `Date` header is rendered at most once per second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
const HTTP_DATE_LEN: usize = 29;

/// Per-worker context passed to [`crate::Session`] calls.
#[derive(Debug, Clone)]
pub struct Cx {
    unix_ms: u64,
    date_secs: u64,
    http_date: [u8; HTTP_DATE_LEN],
    /// The driver's monotonic clock, when it sets one (for session timers).
    instant: Option<Instant>,
}

impl Cx {
    /// A context at time `now`.
    pub fn new(now: SystemTime) -> Self {
        let mut cx = Cx {
            unix_ms: 0,
            date_secs: u64::MAX,
            http_date: [b' '; HTTP_DATE_LEN],
            instant: None,
        };
        cx.set_now(now);
        cx
    }

    /// Move the context's clock to `now` (cheap when the second has not changed).
    pub fn set_now(&mut self, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        self.unix_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let secs = since.as_secs();
        if secs != self.date_secs {
            self.date_secs = secs;
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            let bytes = text.as_bytes();
            let n = bytes.len().min(HTTP_DATE_LEN);
            self.http_date[..n].copy_from_slice(&bytes[..n]);
        }
    }

    /// Move the context's monotonic clock to `now` (drivers set it with the wall
    /// clock; a session computes its timer deadlines from it).
    pub fn set_instant(&mut self, now: Instant) {
        self.instant = Some(now);
    }

    /// The driver's monotonic now, if the driver keeps one (every c10k strategy
    /// does; an in-memory test sets it with [`set_instant`](Cx::set_instant)).
    pub fn instant(&self) -> Option<Instant> {
        self.instant
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> u64 {
        self.unix_ms
    }

    /// The current time as an HTTP `Date` header value (IMF-fixdate).
    pub fn http_date(&self) -> &[u8] {
        &self.http_date
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_imf_fixdate() {
        let cx = Cx::new(UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(cx.http_date(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(cx.unix_millis(), 784_111_777_000);
    }

    #[test]
    fn rerenders_only_when_the_second_changes() {
        let mut cx = Cx::new(UNIX_EPOCH);
        cx.set_now(UNIX_EPOCH + Duration::from_millis(999));
        assert_eq!(cx.http_date(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        cx.set_now(UNIX_EPOCH + Duration::from_millis(1000));
        assert_eq!(cx.http_date(), b"Thu, 01 Jan 1970 00:00:01 GMT");
    }
}

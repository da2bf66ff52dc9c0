//! Rate-limited logging: a condition that can repeat thousands of times a second
//! (EMFILE, refusals) logs at most once per interval, with the count it stands for.

use std::time::{Duration, Instant};

/// Remembers when a message was last logged and how many were held back since.
#[derive(Debug)]
pub(crate) struct RateLog {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLog {
    pub(crate) fn new(every: Duration) -> Self {
        RateLog {
            every,
            last: None,
            held: 0,
        }
    }

    /// Record one occurrence at `now`. Returns `Some(n)` when a line should be logged
    /// now, `n` being the occurrences it stands for (this one included).
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.held += 1;
        match self.last {
            Some(last) if now.duration_since(last) < self.every => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_within_the_interval_and_reports_the_count() {
        let t0 = Instant::now();
        let mut log = RateLog::new(Duration::from_secs(1));
        assert_eq!(log.hit(t0), Some(1));
        assert_eq!(log.hit(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.hit(t0 + Duration::from_millis(20)), None);
        assert_eq!(log.hit(t0 + Duration::from_millis(1001)), Some(3));
    }
}

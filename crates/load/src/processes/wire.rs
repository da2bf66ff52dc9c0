//! What a `--processes` parent and its children say to each other, one JSON object per
//! line: the parent writes the child's [`ChildSpec`] and then `go` or `stop` on the
//! child's stdin; the child writes [`ToParent`] messages on its stdout.
//!
//! Histograms travel whole, as the list of their non-empty buckets (`[value, count]`,
//! the bucket's highest equivalent value): recorded again into a histogram of the same
//! bounds, each count lands in the bucket it came from, so the parent's merge is the
//! merge of the real histograms and its percentiles are exact, not averages.

use std::net::IpAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::LoadConfig;
use crate::cpu::CpuTimes;
use crate::engine::{ThreadResult, new_histogram};
use crate::report::ErrorCounts;

/// The parent's first line to child `index`: its share of the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildSpec {
    /// The child's number, from 0.
    pub(crate) index: usize,
    /// The child's own run: its connections, its share of the rates.
    pub(crate) config: LoadConfig,
    /// Connections per source address.
    pub(crate) per_source: usize,
    /// The child's source addresses, disjoint from every other child's (empty: the
    /// kernel picks).
    pub(crate) sources: Vec<IpAddr>,
}

/// The parent's word to start the window (after every child is connected).
pub(crate) const GO: &str = "go";
/// The parent's word to end the run now (its [`crate::Progress::stop`]).
pub(crate) const STOP: &str = "stop";

/// A child's line to the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ToParent {
    /// Live counters (sent every few tens of milliseconds, and once at the end).
    Progress {
        /// Connections open now.
        open: usize,
        /// Replies so far.
        replies: u64,
        /// Errors so far.
        errors: u64,
    },
    /// The connect phase is over; the child waits for [`GO`].
    Ready {
        /// Connections open.
        open: usize,
    },
    /// What the child measured, thread by thread.
    Done(ChildResult),
    /// The child could not run.
    Failed(String),
}

/// A child's measurements.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildResult {
    pub(crate) threads: Vec<WireThread>,
    pub(crate) warnings: Vec<String>,
}

/// A histogram as its non-empty buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireHistogram(Vec<(u64, u64)>);

impl WireHistogram {
    pub(crate) fn new(h: &Histogram<u64>) -> Self {
        WireHistogram(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub(crate) fn histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(value, count) in &self.0 {
            h.saturating_record_n(value, count);
        }
        h
    }
}

/// One load thread's [`ThreadResult`] on the wire (pub/sub never: the parent refuses it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireThread {
    latency: WireHistogram,
    connect: WireHistogram,
    requests: u64,
    scheduled: u64,
    errors: ErrorCounts,
    connected: usize,
    connect_phase: Duration,
    window: Duration,
    cpu_user_s: f64,
    cpu_sys_s: f64,
    first_error: Option<String>,
    /// Connections never answered at the end (see `ThreadResult::unanswered`).
    #[serde(default)]
    unanswered: u64,
}

impl From<&ThreadResult> for WireThread {
    fn from(r: &ThreadResult) -> Self {
        WireThread {
            latency: WireHistogram::new(&r.latency),
            connect: WireHistogram::new(&r.connect),
            requests: r.requests,
            scheduled: r.scheduled,
            errors: r.errors,
            connected: r.connected,
            connect_phase: r.connect_phase,
            window: r.window,
            cpu_user_s: r.cpu.user,
            cpu_sys_s: r.cpu.sys,
            first_error: r.first_error.clone(),
            unanswered: r.unanswered,
        }
    }
}

impl From<WireThread> for ThreadResult {
    fn from(w: WireThread) -> Self {
        ThreadResult {
            latency: w.latency.histogram(),
            connect: w.connect.histogram(),
            requests: w.requests,
            scheduled: w.scheduled,
            errors: w.errors,
            connected: w.connected,
            connect_phase: w.connect_phase,
            window: w.window,
            cpu: CpuTimes {
                user: w.cpu_user_s,
                sys: w.cpu_sys_s,
            },
            first_error: w.first_error,
            pubsub: None,
            unanswered: w.unanswered,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::report::percentiles;

    #[test]
    fn a_histogram_survives_the_wire_bucket_for_bucket() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        // Two skewed populations: their merge has a p99 neither has alone.
        for v in 1..=10_000u64 {
            a.record(v * 37).unwrap();
        }
        for v in 1..=500u64 {
            b.record(v * 1_000_003).unwrap();
        }
        a.saturating_record(u64::MAX);
        let text = serde_json::to_string(&WireHistogram::new(&a)).unwrap();
        let back: WireHistogram = serde_json::from_str(&text).unwrap();
        let a2 = back.histogram();
        assert_eq!(a2, a);
        let mut merged = new_histogram();
        merged.add(&a).unwrap();
        merged.add(&b).unwrap();
        let mut merged2 = WireHistogram::new(&b).histogram();
        merged2.add(&a2).unwrap();
        assert_eq!(percentiles(&merged2), percentiles(&merged));
        assert_eq!(merged2.len(), 10_501);
    }

    #[test]
    fn a_thread_result_round_trips() {
        let mut latency = new_histogram();
        latency.record(1234).unwrap();
        let mut errors = ErrorCounts::default();
        errors.add(crate::report::ErrorKind::Reset);
        let r = ThreadResult {
            latency,
            connect: new_histogram(),
            requests: 7,
            scheduled: 9,
            errors,
            connected: 3,
            connect_phase: Duration::from_millis(12),
            window: Duration::from_secs(1),
            cpu: CpuTimes {
                user: 0.5,
                sys: 0.25,
            },
            first_error: Some("x".into()),
            pubsub: None,
            unanswered: 2,
        };
        let msg = ToParent::Done(ChildResult {
            threads: vec![WireThread::from(&r)],
            warnings: vec![],
        });
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        let ToParent::Done(back) = serde_json::from_str(&line).unwrap() else {
            panic!("{line}");
        };
        let t = ThreadResult::from(back.threads.into_iter().next().unwrap());
        assert_eq!(t.latency, r.latency);
        assert_eq!((t.requests, t.scheduled, t.connected), (7, 9, 3));
        assert_eq!(t.errors, r.errors);
        assert_eq!(t.unanswered, 2);
        assert_eq!(t.window, r.window);
        assert_eq!(t.cpu, r.cpu);
    }
}

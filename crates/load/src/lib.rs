//! c10k-load: a load generator worth trusting, for echo, HTTP/1.1 and RESP servers.
//!
//! - **Closed loop** (`pipeline` requests outstanding per connection) or **open loop**
//!   (`rate` requests per second in total, sent on schedule; latency from the intended
//!   send time, so a stalled server cannot hide its stall: no coordinated omission).
//! - **HdrHistogram** latencies (p50, p90, p99, p99.9, max), throughput, errors by kind,
//!   connect times.
//! - **Thousands of connections from one thread**: one edge-triggered epoll loop per
//!   thread (one thread by default, so that it does not take the server's core), paced
//!   connects, source addresses 127.0.0.2 and up once one address runs out of ports.
//! - **It measures itself**: its own CPU time from /proc, and a flag when a load thread
//!   saturated its core (the figures then describe the load generator, not the server).
//! - **More connections than one process may open** ([`processes`]): `--processes N`
//!   children, each with its own descriptor limit and source addresses, started
//!   together, their histograms and counters merged into one report.
//! - **Redis pub/sub** ([`pubsub`]): subscribers on channels, publishers at a rate,
//!   delivery latency from publish to receipt, lost, duplicate and out-of-order
//!   deliveries, subscribers the server disconnected.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use c10k_load::{AppKind, LoadConfig, Progress, run};
//!
//! let mut config = LoadConfig::new(
//!     "127.0.0.1:7000".parse().unwrap(),
//!     AppKind::Echo,
//!     100,
//!     Duration::from_secs(5),
//! );
//! config.pipeline = 4;
//! let report = run(&config, Arc::new(Progress::new())).unwrap();
//! println!("{} req/s, p99 {} us", report.throughput_rps, report.p99_us);
//! ```

pub mod config;
pub mod cpu;
mod engine;
pub mod http_reply;
pub mod limits;
pub mod processes;
pub mod progress;
pub mod pubsub;
pub mod report;
pub mod resp_frame;
pub mod workload;

use std::sync::{Arc, Barrier};
use std::time::Duration;

pub use config::{AppKind, LoadConfig};
pub use engine::{HIST_MAX_NS, RETRY_DELAY, new_histogram};
pub use processes::{Launcher, run_processes, run_processes_with};
pub use progress::{Phase, Progress};
pub use report::{ErrorCounts, ErrorKind, LoadReport, PubSubReport};

use engine::{PubSubShared, Shared, ThreadResult};
use limits::{SourcePlan, check_fd_limit, port_range};
use workload::Workload;

/// A load run that could not start (bad configuration, no threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// A thread at or above this share of one core is saturated (the run is load-bound).
pub const SATURATED: f64 = 0.9;

/// Runs the load `config` describes and reports what it measured. Blocks for the
/// connect phase (at most [`LoadConfig::connect_budget`]), the warm-up and the
/// duration; [`Progress::stop`] ends it early.
pub fn run(config: &LoadConfig, progress: Arc<Progress>) -> Result<LoadReport, LoadError> {
    config.validate().map_err(LoadError)?;
    let mut warnings = Vec::new();
    if let Err(w) = check_fd_limit(config.conns) {
        warnings.push(w);
    }
    let (lo, hi) = port_range();
    let ports = usize::from(hi - lo) + 1;
    let plan = SourcePlan::new(config.conns, config.target, ports).map_err(LoadError)?;
    let (results, pubsub_plan) = run_threads(config, &progress, &plan, None)?;
    Ok(merge(
        config,
        &plan,
        pubsub_plan.as_ref(),
        results,
        warnings,
    ))
}

/// Runs the load threads of one process over `plan`'s sources; `go` (a `--processes`
/// child) is called between the connect phase and the window.
pub(crate) fn run_threads(
    config: &LoadConfig,
    progress: &Arc<Progress>,
    plan: &SourcePlan,
    go: Option<Box<dyn Fn() + Send + Sync>>,
) -> Result<(Vec<ThreadResult>, Option<pubsub::Plan>), LoadError> {
    let threads = config.threads;
    let shared = Shared {
        config: config.clone(),
        workload: Workload::new(config),
        progress: Arc::clone(progress),
        barrier: Barrier::new(threads),
        pubsub: (config.app == AppKind::PubSub).then(|| {
            PubSubShared::new(pubsub::Plan::new(
                config.subscribers,
                config.publishers,
                config.channels,
                config.size.unwrap_or(pubsub::DEFAULT_MESSAGE_SIZE),
            ))
        }),
        go,
    };
    // Connection i goes to thread i % threads.
    let per_thread: Vec<Vec<_>> = (0..threads)
        .map(|t| {
            (t..config.conns)
                .step_by(threads)
                .map(|i| (i, plan.source(i)))
                .collect()
        })
        .collect();
    let results: Vec<Result<ThreadResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .enumerate()
            .map(|(t, sources)| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("c10k-load-{t}"))
                    .spawn_scoped(scope, move || engine::run_thread(shared, sources))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => match h.join() {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(format!("load thread failed: {e}")),
                    Err(_) => Err("a load thread panicked".to_string()),
                },
                Err(e) => Err(format!("cannot start a load thread: {e}")),
            })
            .collect()
    });
    progress.set_phase(Phase::Done);
    let mut ok = Vec::new();
    for r in results {
        ok.push(r.map_err(LoadError)?);
    }
    Ok((ok, shared.pubsub.map(|p| p.plan)))
}

pub(crate) fn merge(
    config: &LoadConfig,
    plan: &SourcePlan,
    pubsub_plan: Option<&pubsub::Plan>,
    mut results: Vec<ThreadResult>,
    mut warnings: Vec<String>,
) -> LoadReport {
    let pubsub = pubsub_plan.map(|p| merge_pubsub(config, p, &mut results, &mut warnings));
    let mut latency = new_histogram();
    let mut connect = new_histogram();
    let mut errors = ErrorCounts::default();
    let (mut requests, mut scheduled, mut connected) = (0, 0, 0);
    let mut connect_phase = Duration::ZERO;
    let mut window = Duration::ZERO;
    let mut cpu = cpu::CpuTimes::default();
    let mut busiest: f64 = 0.0;
    let mut first_error = None;
    let mut unanswered = 0;
    for r in results {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = latency.add(&r.latency);
        let _ = connect.add(&r.connect);
        errors.merge(&r.errors);
        requests += r.requests;
        scheduled += r.scheduled;
        connected += r.connected;
        connect_phase = connect_phase.max(r.connect_phase);
        window = window.max(r.window);
        cpu = cpu + r.cpu;
        if !r.window.is_zero() {
            busiest = busiest.max(r.cpu.total() / r.window.as_secs_f64());
        }
        if first_error.is_none() {
            first_error = r.first_error;
        }
        unanswered += r.unanswered;
    }
    let load_bound = busiest >= SATURATED;
    if load_bound {
        warnings.push(format!(
            "a load thread used {:.0}% of its core: the figures may measure the load \
             generator, not the server (add --threads, or pin the load to its own core)",
            busiest * 100.0
        ));
    }
    if connected < config.conns {
        warnings.push(format!(
            "only {connected} of {} connections were open when the connect phase ended",
            config.conns
        ));
    }
    if let Some(e) = first_error {
        warnings.push(format!("first error: {e}"));
    }
    let never_served = errors.first_reply_timeout + unanswered;
    if never_served > 0 {
        warnings.push(format!(
            "the server left connections unserved: {} timed out waiting for their first \
             reply and {unanswered} more had none at the end (the connect had succeeded: \
             the server had not accepted them, or not run their thread or process)",
            errors.first_reply_timeout
        ));
    }
    let window_s = window.as_secs_f64();
    let [p50, p90, p99, p999, max, mean] = report::percentiles(&latency);
    let [c50, _, c99, _, cmax, _] = report::percentiles(&connect);
    LoadReport {
        app: config.app.name().into(),
        target: config.target.to_string(),
        mode: config.mode().into(),
        conns: config.conns,
        connected,
        threads: config.threads,
        processes: None,
        pipeline: config.pipeline,
        rate_rps: config.rate,
        size_bytes: config.size,
        source_addresses: plan.sources.iter().map(|a| a.to_string()).collect(),
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        connect_phase_s: connect_phase.as_secs_f64(),
        window_s,
        requests,
        throughput_rps: if window_s > 0.0 {
            requests as f64 / window_s
        } else {
            0.0
        },
        scheduled,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        p999_us: p999,
        max_us: max,
        mean_us: mean,
        connects: connect.len(),
        connect_p50_us: c50,
        connect_p99_us: c99,
        connect_max_us: cmax,
        errors,
        unanswered_conns: unanswered,
        cpu_user_s: cpu.user,
        cpu_sys_s: cpu.sys,
        cpu_busiest_thread_percent: busiest * 100.0,
        load_bound,
        warnings,
        pubsub,
    }
}

fn merge_pubsub(
    config: &LoadConfig,
    plan: &pubsub::Plan,
    results: &mut [ThreadResult],
    warnings: &mut Vec<String>,
) -> PubSubReport {
    let mut delivery = new_histogram();
    let mut published = vec![0u64; plan.channels.len()];
    let (mut receivers, mut unconfirmed) = (0, 0);
    let mut subscribers = Vec::with_capacity(plan.subscribers);
    let mut grace = Duration::ZERO;
    let mut settled = true;
    let mut window = Duration::ZERO;
    for r in results.iter_mut() {
        window = window.max(r.window);
        let Some(p) = r.pubsub.take() else {
            continue;
        };
        let _ = delivery.add(&p.delivery);
        for (total, n) in published.iter_mut().zip(&p.published) {
            *total += n;
        }
        receivers += p.receivers;
        unconfirmed += p.unconfirmed;
        subscribers.extend(p.subscribers);
        grace = grace.max(p.grace);
        settled &= p.settled;
    }
    let t = pubsub::tally(&published, &subscribers);
    if (t.counted_subscribers as usize) < plan.subscribers {
        warnings.push(format!(
            "only {} of {} subscriptions were confirmed when publishing began; the others \
             were closed and expect nothing",
            t.counted_subscribers, plan.subscribers
        ));
    }
    if !settled {
        warnings.push(format!(
            "deliveries were still missing {:.1} s after the last publish (--grace {:?}): \
             they count as lost",
            grace.as_secs_f64(),
            config.grace
        ));
    }
    let window_s = window.as_secs_f64();
    let [p50, p90, p99, p999, max, mean] = report::percentiles(&delivery);
    PubSubReport {
        subscribers: plan.subscribers,
        subscribed: t.counted_subscribers,
        publishers: plan.publishers,
        channels: plan.channels.len(),
        message_bytes: plan.size,
        published: t.published,
        unconfirmed_publishes: unconfirmed,
        receivers_reported: receivers,
        expected: t.expected,
        delivered: t.delivered,
        delivered_per_s: if window_s > 0.0 {
            t.delivered as f64 / window_s
        } else {
            0.0
        },
        lost: t.lost,
        duplicates: t.duplicates,
        out_of_order: t.out_of_order,
        unexpected: t.unexpected,
        disconnected_subscribers: t.disconnected,
        undelivered_to_disconnected: t.undelivered_to_disconnected,
        delivery_p50_us: p50,
        delivery_p90_us: p90,
        delivery_p99_us: p99,
        delivery_p999_us: p999,
        delivery_max_us: max,
        delivery_mean_us: mean,
        delivery_samples: delivery.len(),
        grace_s: grace.as_secs_f64(),
        settled,
    }
}

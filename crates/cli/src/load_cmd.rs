//! `c10k load`: the command line of the load generator (crate `c10k-load`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use c10k_load::{AppKind, LoadConfig, Phase, Progress};

use crate::units;

/// Arguments of `c10k load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// The server's address.
    #[arg(long, required_unless_present = "processes_child")]
    connect: Option<SocketAddr>,
    /// The protocol: echo, http (GET /, or POST /echo with --size), resp (PING, or a
    /// SET/GET mix with --keys) or pubsub (Redis SUBSCRIBE/PUBLISH: --subscribers,
    /// --publishers, --channels, --rate).
    #[arg(long, default_value = "echo")]
    app: AppKind,
    /// Connections to hold open [default: 100]. Not with pubsub, which holds
    /// --subscribers + --publishers.
    #[arg(long)]
    conns: Option<usize>,
    /// The measured window (pubsub: how long the publishers publish).
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    duration: Duration,
    /// Load before the measured window, once every connection is up (not recorded)
    /// [default: 1s; pubsub: 0s, it has none].
    #[arg(long, value_parser = units::parse_duration)]
    warmup: Option<Duration>,
    /// Pubsub: subscriber connections; each SUBSCRIBEs to one channel, and publishing
    /// starts once every subscription is confirmed.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Pubsub: publisher connections, sharing --rate.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Pubsub: channels; subscriber i subscribes to channel i % N, and each publisher
    /// sends to the channels in turn.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Pubsub: after the last publish, how long deliveries may stay quiet before what
    /// is missing counts as lost (the run goes on sooner once every delivery the server
    /// announced has arrived).
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    grace: Duration,
    /// Open loop: requests per second in total, sent on schedule; latency counts from
    /// the intended send time. Without it: closed loop. Pubsub: messages published per
    /// second, all publishers together (required).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: requests outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Echo: message bytes (default 64). HTTP: POST /echo with this body instead of
    /// GET /. RESP: SET value bytes (default 16). Pubsub: message payload bytes
    /// (default 64, at least 24: the send time and sequence number).
    #[arg(long, value_parser = units::parse_size)]
    size: Option<usize>,
    /// RESP: a 50/50 SET/GET mix over this many keys instead of PING.
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Event-loop threads (each with its own epoll and share of the connections).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// New connections per second (default: as fast as they complete, 256 in flight
    /// per thread).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// A connect or a reply slower than this is an error: connect_timeout,
    /// first_reply_timeout (the connection never had a reply: the server has not
    /// served it) or reply_timeout.
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    timeout: Duration,
    /// Hold the connections open without sending (for memory measurements).
    #[arg(long)]
    idle: bool,
    /// Write the report as JSON to this file (latencies in microseconds).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Spread the connections over N load processes (each with its own open-files
    /// limit and source addresses 127.0.0.x, --threads each, started together), and
    /// merge their histograms and counters into one report. Not with pubsub.
    #[arg(long)]
    processes: Option<usize>,
    /// Internal: run as a child of --processes (the protocol is on stdin and stdout).
    #[arg(long = "processes-child", hide = true)]
    processes_child: bool,
}

/// Runs `c10k load`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.processes_child {
        return Ok(c10k_load::processes::child_main()?);
    }
    let Some(target) = args.connect else {
        anyhow::bail!("--connect IP:PORT is required");
    };
    let pubsub = args.app == AppKind::PubSub;
    let conns = match (pubsub, args.conns) {
        (true, Some(_)) => {
            anyhow::bail!("--conns does not apply to pubsub: use --subscribers and --publishers")
        }
        (true, None) => args.subscribers + args.publishers,
        (false, n) => n.unwrap_or(100),
    };
    let default_warmup = if pubsub {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    let config = LoadConfig {
        target,
        app: args.app,
        conns,
        duration: args.duration,
        warmup: args.warmup.unwrap_or(default_warmup),
        rate: args.rate,
        pipeline: args.pipeline,
        size: args.size,
        keys: args.keys,
        threads: args.threads,
        connect_rate: args.connect_rate,
        timeout: args.timeout,
        idle: args.idle,
        subscribers: if pubsub { args.subscribers } else { 0 },
        publishers: if pubsub { args.publishers } else { 0 },
        channels: args.channels,
        grace: args.grace,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    if let Some(n) = args.processes {
        c10k_load::processes::check(&config, n).map_err(anyhow::Error::msg)?;
    }
    let progress = Arc::new(Progress::new());
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| spawn_bar(&config, Arc::clone(&progress)));
    // Without a bar, pub/sub says on stderr when publishing starts and when the
    // deliveries have settled (connections still open): bench/cpu_per_request.py reads
    // the server's CPU at these two lines.
    let marks = (pubsub && !terminal).then(|| spawn_marks(&config, Arc::clone(&progress)));
    let result = match args.processes {
        Some(n) => c10k_load::run_processes(&config, n, Arc::clone(&progress)),
        None => c10k_load::run(&config, Arc::clone(&progress)),
    };
    progress.set_phase(Phase::Done);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    if let Some(marks) = marks {
        let _ = marks.join();
    }
    let report = result?;
    for w in &report.warnings {
        eprintln!("c10k load: warning: {w}");
    }
    print!("{}", report.summary());
    if let Some(path) = args.json {
        std::fs::write(&path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Pub/sub without a terminal: one stderr line when publishing starts, one when the
/// deliveries have settled.
fn spawn_marks(config: &LoadConfig, progress: Arc<Progress>) -> std::thread::JoinHandle<()> {
    let subscribers = config.subscribers;
    std::thread::spawn(move || {
        let mut said = Phase::Connecting;
        // Bounded: the run sets Done when it ends, whatever happened.
        while said != Phase::Done {
            let now = progress.phase();
            if now >= Phase::Measuring && said < Phase::Measuring {
                eprintln!("c10k load: {subscribers} subscribers, subscribe phase over; publishing");
            }
            if now == Phase::Done {
                eprintln!("c10k load: deliveries settled");
            }
            said = now;
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// A progress bar on stderr: phase, open connections, replies per second, errors.
fn spawn_bar(config: &LoadConfig, progress: Arc<Progress>) -> std::thread::JoinHandle<()> {
    let total = config.connect_budget() + config.warmup + config.duration;
    let conns = config.conns;
    std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64);
        // Bounded: the run ends within `total` plus its thread joins.
        while progress.phase() != Phase::Done && start.elapsed() < total * 2 {
            std::thread::sleep(Duration::from_millis(200));
            let replies = progress.replies.load(std::sync::atomic::Ordering::Relaxed);
            let rate = (replies - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
            last = (Instant::now(), replies);
            let phase = match progress.phase() {
                Phase::Connecting => "connecting",
                Phase::Warmup => "warm-up",
                Phase::Measuring => "measuring",
                Phase::Done => "done",
            };
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{phase}: {}/{conns} open, {rate:.0} req/s, {} errors",
                progress.open.load(std::sync::atomic::Ordering::Relaxed),
                progress.errors.load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
        bar.finish_and_clear();
    })
}

//! `c10k compare`: the command line of the strategy matrix (crate `c10k-lab`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use c10k_lab::CompareConfig;
use c10k_lab::pin::parse_cpus;
use c10k_lab::plan::parse_peer;
use c10k_load::AppKind;

use crate::units;

/// Arguments of `c10k compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Short cells (1 s after 0.3 s of warm-up) at 10 and 1,000 connections.
    #[arg(long)]
    quick: bool,
    /// Strategies to compare, comma-separated (default: every strategy; the ones not
    /// available here show as n/a).
    #[arg(long, value_delimiter = ',')]
    strategies: Option<Vec<String>>,
    /// Concurrency levels, comma-separated (default 10,100,1000,10000; --quick 10,1000).
    #[arg(long, value_delimiter = ',')]
    conns: Option<Vec<usize>>,
    /// The app.
    #[arg(long, default_value = "echo")]
    app: AppKind,
    /// Output directory for report.md, results.json and the SVG charts.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// CPUs for the servers ("none": not pinned).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for the load ("none": not pinned).
    #[arg(long, default_value = "1")]
    load_cpus: String,
    /// Measured window per cell (default 5s; --quick 1s).
    #[arg(long, value_parser = units::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up per cell (default 1s; --quick 300ms).
    #[arg(long, value_parser = units::parse_duration)]
    warmup: Option<Duration>,
    /// Requests outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Request size (see `c10k load --size`).
    #[arg(long, value_parser = units::parse_size)]
    size: Option<usize>,
    /// Load threads.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// Skip the idle-connection memory phase.
    #[arg(long)]
    no_idle: bool,
    /// A server to add to the matrix (repeatable): the preset nginx (--app http) or redis
    /// (--app resp), configured by c10k, or NAME=COMMAND with {port} in COMMAND.
    #[arg(long, value_parser = parse_peer)]
    peer: Vec<(String, String)>,
}

fn cpus(s: &str) -> anyhow::Result<Option<Vec<usize>>> {
    if s == "none" {
        return Ok(None);
    }
    parse_cpus(s).map(Some).map_err(anyhow::Error::msg)
}

/// Runs `c10k compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("finding the c10k binary to run the servers")?;
    let mut cfg = CompareConfig::new(bin);
    if args.quick {
        cfg = cfg.quick();
    }
    cfg.strategies = args.strategies;
    if let Some(c) = args.conns {
        cfg.conns = c;
    }
    cfg.app = args.app;
    cfg.out = args.out;
    cfg.server_cpus = cpus(&args.server_cpus)?;
    cfg.load_cpus = cpus(&args.load_cpus)?;
    if let Some(d) = args.duration {
        cfg.duration = d;
    }
    if let Some(w) = args.warmup {
        cfg.warmup = w;
    }
    anyhow::ensure!(args.pipeline >= 1, "--pipeline must be at least 1");
    anyhow::ensure!(args.load_threads >= 1, "--load-threads must be at least 1");
    anyhow::ensure!(!cfg.duration.is_zero(), "--duration must be above zero");
    cfg.pipeline = args.pipeline;
    cfg.size = args.size;
    cfg.load_threads = args.load_threads;
    cfg.idle_phase = !args.no_idle;
    cfg.peers = args.peer;
    let results = c10k_lab::compare(&cfg)?;
    let ran = results.cells.iter().filter(|c| c.metrics.is_some()).count();
    println!(
        "c10k compare: {ran} of {} cells ran in {:.0} s; wrote {}/report.md, results.json and \
         the SVG charts",
        results.cells.len(),
        results.elapsed_s,
        cfg.out.display()
    );
    Ok(())
}

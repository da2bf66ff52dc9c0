//! `c10k compare`: the command line of the strategy matrix (crate `c10k-lab`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use c10k_lab::CompareConfig;
use c10k_lab::pin::parse_cpus;
use c10k_lab::plan::parse_peer;
use c10k_load::AppKind;
use c10k_server::Work;

use crate::units;

/// Arguments of `c10k compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// About a minute: one round of short cells (1 s after 0.3 s of warm-up), work
    /// none at 10 and 1,000 connections and wait=2ms,blocking at 100.
    #[arg(long)]
    quick: bool,
    /// Work per request in the server (repeatable; the matrix runs for each): none,
    /// cpu=200us, wait=2ms,blocking, wait=2ms,async, or combined (see `c10k serve
    /// --work`). Default: those four (--quick: none and wait=2ms,blocking).
    #[arg(long, value_parser = parse_work)]
    work: Vec<Work>,
    /// Rounds of the whole matrix, interleaved (a cell reports the median and min-max
    /// of its rounds). Default 3 (--quick 1).
    #[arg(long, value_parser = parse_rounds)]
    rounds: Option<usize>,
    /// --workers for every strategy (default: one per server CPU). prefork runs as many
    /// processes as connections; pool under a blocking wait gets 64 per server CPU.
    #[arg(long, value_parser = parse_workers)]
    workers: Option<usize>,
    /// Strategies to compare, comma-separated (default: every strategy; the ones not
    /// available here show as n/a).
    #[arg(long, value_delimiter = ',')]
    strategies: Option<Vec<String>>,
    /// Concurrency levels for every workload, comma-separated (default: 100,1000,10000
    /// for work none, 100,1000 with work; --quick: 10,1000 and 100).
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
    /// Measured window per cell (default 2s; --quick 1s).
    #[arg(long, value_parser = units::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up per cell (default 500ms; --quick 300ms).
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
    /// Skip the idle-connection memory phase (otherwise run in round 1 of work none).
    #[arg(long)]
    no_idle: bool,
    /// A server to add to the matrix (repeatable): the preset nginx (--app http) or redis
    /// (--app resp), configured by c10k; a Python event loop serving an echo Protocol
    /// (--app echo): asyncio, uvloop, rloop, c10k-py (c10k's loop, epoll-et) or
    /// c10k-py-uring; or NAME=COMMAND with {port} in COMMAND.
    #[arg(long, value_parser = parse_peer)]
    peer: Vec<(String, String)>,
    /// The Python interpreter of the Python peers (--peer asyncio...); a peer whose
    /// package it cannot import is n/a with the pip install that installs it.
    #[arg(long, default_value = c10k_lab::plan::python::DEFAULT_PYTHON)]
    python_bin: PathBuf,
    /// Answer "which strategy should I use in CPython?": the CPython field (socketserver
    /// thread and fork, a select() loop, asyncio, uvloop, gevent, Twisted, each also as
    /// NAME-procs, one process per server CPU behind SO_REUSEPORT; c10k's loop and
    /// blocking handlers) in --python-bin under the four workloads at 10, 100, 1000 and
    /// 10000 connections (--quick: 100), and a "What to use in CPython" section. No
    /// c10k strategy runs unless --strategies names some.
    #[arg(long)]
    python: bool,
    /// With --python: the rows of the field to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', requires = "python")]
    python_peers: Option<Vec<String>>,
}

fn parse_work(s: &str) -> Result<Work, String> {
    s.parse()
}

fn parse_rounds(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a number of rounds from 1 to 100")),
    }
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a number of workers from 1 to 1024")),
    }
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
    if args.python {
        cfg = cfg.python_field();
        cfg.python_peers = args.python_peers;
    }
    cfg.strategies = args.strategies;
    if !args.work.is_empty() {
        cfg.set_works(&args.work);
    }
    if let Some(c) = args.conns {
        cfg.set_conns(&c);
    }
    if let Some(r) = args.rounds {
        cfg.rounds = r;
    }
    cfg.workers = args.workers;
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
    cfg.python_bin = args.python_bin;
    let results = c10k_lab::compare(&cfg)?;
    let ran = results.cells.iter().filter(|c| c.is_ok()).count();
    println!(
        "c10k compare: {ran} of {} cells ran in {:.0} s; wrote {}/report.md, results.json and \
         the SVG charts",
        results.cells.len(),
        results.elapsed_s,
        cfg.out.display()
    );
    Ok(())
}

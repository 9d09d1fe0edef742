//! `ringway-load`: the WebSocket load generator. Each subcommand runs for a
//! bounded time, stops by itself and prints its numbers (`--json` for one
//! JSON object on stdout).

use anyhow::bail;
use clap::{Parser, Subcommand};
use ringway_e2e::load::{
    self, Report, handshakes::HandshakesArgs, hostile::HostileArgs, idle::IdleArgs,
    latency::LatencyArgs, probe::ProbeArgs, steady::SteadyArgs, throughput::ThroughputArgs,
};

/// Load generator for WebSocket echo servers and the proxies in front of them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,

    /// Print one JSON object with every number on stdout; the human lines go
    /// to stderr.
    #[arg(long, global = true)]
    json: bool,

    /// Runtime worker threads (default: one per CPU this process may run on).
    #[arg(long, global = true, env = "RINGWAY_LOAD_THREADS")]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round-trip latency at a fixed total rate (open loop).
    Latency(LatencyArgs),
    /// Messages echoed per second with a window in flight per connection
    /// (closed loop).
    Throughput(ThroughputArgs),
    /// Hold idle connections; with --until-closed, report how the server
    /// closes them (codes, closes per second).
    Idle(IdleArgs),
    /// Check that a URL echoes and routes each key to one backend.
    Probe(ProbeArgs),
    /// Attack a gateway with hostile clients while a legitimate one is
    /// timed; its memory and descriptors before, at the peak and after.
    Hostile(HostileArgs),
    /// One client at a steady pace that prints each round trip as it comes,
    /// until its standard input closes.
    Steady(SteadyArgs),
    /// Connections opened and closed in loops: handshakes per second (TLS
    /// with wss://, resumed with --resume).
    Handshakes(HandshakesArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let report = runtime.enable_all().build()?.block_on(run(args.command))?;
    report.print(args.json);
    if let Some(problem) = report.problem {
        bail!(problem);
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<Report> {
    match command {
        Command::Latency(args) => load::latency::run(args).await,
        Command::Throughput(args) => load::throughput::run(args).await,
        Command::Idle(args) => load::idle::run(args).await,
        Command::Probe(args) => load::probe::run(args).await,
        Command::Hostile(args) => load::hostile::run(args).await,
        Command::Steady(args) => load::steady::run(args).await,
        Command::Handshakes(args) => load::handshakes::run(args).await,
    }
}

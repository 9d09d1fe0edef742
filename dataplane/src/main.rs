//! `ringway-dataplane`: the data-plane binary.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

/// Holds client WebSockets and routes each one by a consistent hash of its key.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Standalone configuration file (routes and static backends, no operator).
    #[arg(long, env = "RINGWAY_CONFIG")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::metadata(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    bail!("the data plane is not built yet (issue 3); nothing is listening")
}

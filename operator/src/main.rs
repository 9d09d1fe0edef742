//! `ringway-operator`: the controller binary.

use anyhow::bail;
use clap::Parser;

/// Reconciles WebSocketGateway resources into sharded data-plane pods.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    bail!("the operator is not built yet (issue 5)")
}

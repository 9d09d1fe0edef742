//! `ringway-fleet`: a sharded gateway on this machine for the benchmark
//! scripts. Starts `ringway-dataplane` shards and `ringway-echo` backends
//! on their own 127.x.y.z addresses, creates the control channel's CA and
//! certificates, pushes one snapshot, writes `fleet.json` (addresses,
//! process ids, the operator's certificate files for `ringway-ctl`) to its
//! directory, and holds everything up until SIGTERM or SIGINT; then it
//! stops every process.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ringway_e2e::fleet::{Binaries, Fleet, ShardSettings};
use serde_json::json;

/// A sharded Ringway gateway on this machine, for benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Shard processes.
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Echo backends.
    #[arg(long, default_value_t = 2)]
    backends: usize,
    /// Which shards own keys: `all` of them, or only the `last` (the others
    /// hand every connection to it: the hand-off benchmark).
    #[arg(long, value_enum, default_value_t = Ring::All)]
    ring: Ring,
    /// Connections one shard takes.
    #[arg(long, default_value_t = 9_900)]
    max_connections: usize,
    /// Seconds between the shards' pings to each client.
    #[arg(long, default_value_t = 30)]
    heartbeat_seconds: u32,
    /// The `ringway-dataplane` binary.
    #[arg(long)]
    dataplane: PathBuf,
    /// The `ringway-echo` binary.
    #[arg(long)]
    echo: PathBuf,
    /// Where `fleet.json`, configs, certificates and logs go (kept).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Ring {
    All,
    Last,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binaries = Binaries {
        dataplane: args.dataplane,
        echo: args.echo,
    };
    let settings = ShardSettings {
        max_connections: args.max_connections,
        heartbeat_interval_seconds: args.heartbeat_seconds,
        ..ShardSettings::default()
    };
    let mut fleet = Fleet::start_with(binaries, args.shards, args.backends, settings).await?;
    fleet.keep_files();
    let all: Vec<usize> = (0..args.shards).collect();
    let ring: Vec<usize> = match args.ring {
        Ring::All => all.clone(),
        Ring::Last => vec![args.shards - 1],
    };
    let backends: Vec<usize> = (0..args.backends).collect();
    let snapshot = fleet.snapshot(&ring, &[], 0, &backends);
    fleet.push(&snapshot).await?;
    fleet.wait_ready(&all).await?;
    let dir = fleet.dir().to_path_buf();
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let cert = write("operator.pem", &fleet.pki.operator.cert_pem)?;
    let key = write("operator.key", &fleet.pki.operator.key_pem)?;
    let description = json!({
        "dir": dir,
        "ca": fleet.pki.ca_file,
        "cert": cert,
        "key": key,
        "epoch": fleet.epoch,
        "shards": fleet.shards.iter().map(|s| json!({
            "id": s.id,
            "client": s.client.to_string(),
            "peer": s.peer.to_string(),
            "control": s.control.to_string(),
            "admin": s.admin.to_string(),
            "pid": s.pid(),
            "owns_keys": ring.iter().any(|&r| fleet.shards[r].id == s.id),
        })).collect::<Vec<_>>(),
        "backends": fleet.backends.iter().map(|b| json!({
            "id": b.id,
            "address": b.address.to_string(),
            "pid": b.pid(),
        })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("fleet.json");
    std::fs::write(&path, serde_json::to_string_pretty(&description)?)?;
    eprintln!(
        "fleet up: {} shards, {} backends; {}",
        args.shards,
        args.backends,
        path.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("fleet down; files kept in {}", dir.display());
    drop(fleet);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

//! `ringway-echo`: the WebSocket echo backend of the benchmarks and of the
//! RFC 6455 conformance run. Echoes every text and binary message and names
//! itself in the `X-Ringway-Backend` upgrade response header.

use std::net::SocketAddr;

use clap::Parser;
use ringway_e2e::{
    echo::{self, DEFAULT_READ_BUFFER_BYTES, EchoConfig},
    process,
};

/// Listen backlog: room for a ramp of a few thousand connections per second.
const LISTEN_BACKLOG: u32 = 4096;

/// A WebSocket echo backend that says which backend it is.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "RINGWAY_ECHO_LISTEN", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,

    /// Name sent in the X-Ringway-Backend header of every upgrade response.
    #[arg(long, env = "RINGWAY_ECHO_ID", default_value = "echo")]
    id: String,

    /// Runtime worker threads (default: one per CPU this process may run on).
    #[arg(long, env = "RINGWAY_ECHO_WORKERS")]
    workers: Option<usize>,

    /// Read buffer per connection, in bytes; tungstenite allocates it for
    /// every connection, idle or not.
    #[arg(long, default_value_t = DEFAULT_READ_BUFFER_BYTES)]
    read_buffer: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::log_to_stderr();
    process::runtime(args.workers)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = EchoConfig::new(&args.id)?;
    config.read_buffer_bytes = args.read_buffer.max(64);
    let listener = process::listen("ringway-echo", &args.id, args.listen, LISTEN_BACKLOG)?;
    echo::serve(listener, config, process::shutdown_signal()).await?;
    Ok(())
}

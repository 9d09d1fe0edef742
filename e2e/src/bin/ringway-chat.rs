//! `ringway-chat`: the chat demo backend. Serves the demo page at `GET /`,
//! `GET /healthz` for probes, and chat rooms on `/chat?room=<room>`
//! (WebSocket); see [`ringway_e2e::chat`] for the protocol and its limits.

use std::net::SocketAddr;

use clap::Parser;
use ringway_e2e::{
    chat::{self, ChatConfig},
    process,
};

/// Listen backlog.
const LISTEN_BACKLOG: u32 = 1024;

/// A WebSocket chat backend with rooms, and the demo page for a browser.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (HTTP and WebSocket on one port).
    #[arg(long, env = "RINGWAY_CHAT_LISTEN", default_value = "127.0.0.1:9101")]
    listen: SocketAddr,

    /// This backend's name, in every welcome and message it sends and in
    /// the X-Ringway-Backend header of its upgrade responses.
    #[arg(long, env = "RINGWAY_CHAT_ID", default_value = "chat")]
    id: String,

    /// Runtime worker threads (default: one per CPU this process may run on).
    #[arg(long, env = "RINGWAY_CHAT_WORKERS")]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::log_to_stderr();
    process::runtime(args.workers)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = ChatConfig::new(&args.id)?;
    let listener = process::listen("ringway-chat", &args.id, args.listen, LISTEN_BACKLOG)?;
    chat::serve(listener, config, process::shutdown_signal()).await?;
    Ok(())
}

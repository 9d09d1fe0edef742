//! End-to-end tooling for Ringway: the `ringway-echo` backend, the
//! `ringway-chat` demo backend, the `ringway-load` load generator, and the
//! pieces they share. The benchmark scripts in `e2e/bench/` drive the echo
//! backend and the load generator as processes on 127.0.0.0/8.
//!
//! - [`echo`]: a WebSocket echo server that names itself in the upgrade
//!   response, so a client sees which backend a proxy routed it to;
//! - [`chat`]: the chat demo backend (rooms, and the demo page for a
//!   browser);
//! - [`load`]: the load generator's subcommands (latency, throughput, idle,
//!   probe) and their reports;
//! - [`target`]: the URL a connection dials, with its routing key appended;
//! - [`sources`]: source-address ranges (`127.0.0.2-127.0.0.40`), so one
//!   machine opens more connections than one address has ephemeral ports;
//! - [`stamp`]: the send timestamp carried in each load message;
//! - [`limits`]: the file-descriptor budget of one process;
//! - [`process`]: the backends' listening socket and shutdown signal;
//! - [`fleet`]: shard processes, echo (or chat) backends and the control
//!   client of a gateway on one machine, for the sharding and browser tests;
//! - [`keyed`]: keyed clients that see which shard and backend serve them;
//! - [`sidecar`]: `ringway-dataplane sidecar` as a process, and its preStop hook.
//!
//! This is test tooling, not a library for users: errors are `anyhow`
//! throughout, as in binaries and tests.

pub mod chat;
pub mod echo;
pub mod fleet;
pub mod keyed;
pub mod limits;
pub mod load;
pub mod process;
pub mod sidecar;
pub mod sources;
pub mod stamp;
pub mod target;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The largest message and frame both binaries accept (64 MiB), so 1 MiB
/// benchmark messages pass with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The WebSocket settings both binaries use: a read buffer of
/// `read_buffer_size` bytes (tungstenite allocates it eagerly for every
/// connection, 128 KiB by default, which would dwarf everything else an idle
/// connection holds) and [`MAX_MESSAGE_BYTES`] for messages and frames.
pub fn ws_config(read_buffer_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_size)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

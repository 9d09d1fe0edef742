//! The echo backend: a WebSocket server that sends every text and binary
//! message back unchanged and names itself in the upgrade response
//! (`X-Ringway-Backend: <id>`), so a client behind a proxy sees which backend
//! its key was routed to. It also sends back the `X-Ringway-Shard` header
//! that a Ringway shard puts on the requests it relays, so the client sees
//! which shard owned its key too.
//!
//! It is the backend of every benchmark and of the RFC 6455 conformance run,
//! so it leaves the protocol to tungstenite: pings are answered, a close is
//! echoed, and a protocol error ends the connection the way tungstenite
//! ends it. It holds ~20,000 idle connections in little memory: each one has
//! only tungstenite's state and a small read buffer.

use std::future::Future;
use std::io;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn};

/// The response header naming the backend that accepted a connection.
pub const BACKEND_HEADER: &str = "x-ringway-backend";

/// The request header naming the shard that relayed a connection; the
/// echo sends it back on its upgrade response.
pub const SHARD_HEADER: &str = "x-ringway-shard";

/// Default read buffer per connection: enough for small messages in one
/// read, small enough that 20,000 idle connections hold 80 MiB of it.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 4096;

/// How long a client may take to send its upgrade request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What an echo server says about itself and how it reads.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// The value of [`BACKEND_HEADER`] on every upgrade response.
    pub id: HeaderValue,
    /// Read buffer per connection, in bytes.
    pub read_buffer_bytes: usize,
}

impl EchoConfig {
    /// A config for the backend named `id`, with the default read buffer.
    pub fn new(id: &str) -> anyhow::Result<Self> {
        let id = HeaderValue::from_str(id)
            .map_err(|_| anyhow::anyhow!("backend id {id:?} is not a valid header value"))?;
        Ok(Self {
            id,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
        })
    }
}

/// Accepts connections on `listener` and echoes on each until `shutdown`
/// completes. Connections still open then are dropped with the runtime.
pub async fn serve(
    listener: TcpListener,
    config: EchoConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        match accepted {
            Ok((stream, peer)) => {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(e) = echo_connection(stream, &config).await {
                        debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(crate::process::ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One connection: the upgrade, then echo until the client closes.
async fn echo_connection(stream: TcpStream, config: &EchoConfig) -> anyhow::Result<()> {
    // Small messages go out at once instead of waiting for an ACK.
    stream.set_nodelay(true)?;
    let name_backend = NameBackend(config.id.clone());
    let ws_config = crate::ws_config(config.read_buffer_bytes);
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, name_backend, Some(ws_config));
    let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await??;
    match echo_messages(ws).await {
        Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds [`BACKEND_HEADER`] (and [`SHARD_HEADER`], when the request has
/// it) to the upgrade response; accepts every request, whatever its path,
/// query or subprotocol.
struct NameBackend(HeaderValue);

impl Callback for NameBackend {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response.headers_mut().insert(BACKEND_HEADER, self.0);
        if let Some(shard) = request.headers().get(SHARD_HEADER) {
            response.headers_mut().insert(SHARD_HEADER, shard.clone());
        }
        Ok(response)
    }
}

/// Echoes what has arrived, then flushes once: a client with many messages
/// in flight gets them back in a few writes instead of one write each.
async fn echo_messages(mut ws: WebSocketStream<TcpStream>) -> Result<(), WsError> {
    while let Some(first) = ws.next().await {
        let mut arrived = Some(first);
        while let Some(result) = arrived.take() {
            match result {
                Ok(message) if is_echoed(&message) => ws.feed(message).await?,
                // Pings, pongs and closes are tungstenite's: it queues the
                // answer and sends it on the next read or flush.
                Ok(_) => {}
                Err(e) => {
                    // Deliver the echoes of what came before the error, as a
                    // server that writes each echo at once would have.
                    let _ = ws.flush().await;
                    return Err(e);
                }
            }
            match ws.next().now_or_never() {
                Some(Some(next)) => arrived = Some(next),
                Some(None) => break,
                None => {}
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// Whether `message` is one the echo sends back.
pub fn is_echoed(message: &Message) -> bool {
    message.is_text() || message.is_binary()
}

//! The chat demo backend: rooms of WebSocket clients on one port, plus the
//! demo page (`examples/chat/index.html`, built in) for a browser.
//!
//! - `GET /` (or `/index.html`): the page, `text/html`;
//! - `GET /healthz`: 200 `ok`, for a Kubernetes probe;
//! - a WebSocket upgrade on `/chat?room=R`: joins room `R` (1 to 64 letters,
//!   digits, `-`, `_` or `.`). The backend first sends
//!   `{"type":"welcome","backend":"<id>","room":"R"}`, then every text
//!   message any member of `R` on this backend sends, the sender's own
//!   included, as `{"type":"message","backend":"<id>","room":"R","text":"..."}`.
//!   The upgrade response names the backend (`X-Ringway-Backend`) and echoes
//!   `X-Ringway-Shard`, like the echo backend.
//!
//! Everything is bounded: the request head ([`MAX_HEAD_BYTES`]), messages
//! ([`MAX_MESSAGE_BYTES`], larger ones close with 1009), members per room
//! ([`MAX_ROOM_MEMBERS`]), rooms ([`MAX_ROOMS`]), connections
//! ([`MAX_CONNECTIONS`], beyond which accepting waits) and each room's queue
//! ([`ROOM_QUEUE`] messages: a member that falls that far behind is closed
//! with 1008). A request it cannot serve gets a 4xx or 503 answer. Rooms'
//! queues hold at most `MAX_ROOMS × ROOM_QUEUE` messages of about
//! `MAX_MESSAGE_BYTES` (16 MiB; 6 times that if every character needed a
//! JSON escape), connections some 16 KiB each: well under 256 MiB in all.
//!
//! Rooms are per backend: two backends of one gateway never share messages.
//! A gateway that routes by room puts all of a room's members on one
//! backend, which is what makes this work behind Ringway.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, warn};

use crate::echo::{BACKEND_HEADER, SHARD_HEADER};

/// The demo page, served at `GET /`.
pub const PAGE: &str = include_str!("../../examples/chat/index.html");

/// The largest message a client may send, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The most members one room has on one backend.
pub const MAX_ROOM_MEMBERS: usize = 256;

/// The most rooms one backend holds at once.
pub const MAX_ROOMS: usize = 512;

/// The most connections (HTTP or WebSocket) one backend serves at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Messages a room queues for its slowest member.
pub const ROOM_QUEUE: usize = 32;

/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 8192;

/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a close handshake, and the backend's shutdown, may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The page's Content-Security-Policy: its own inline script and style,
/// WebSockets anywhere, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src ws: wss:; base-uri 'none'; form-action 'none'";

/// What a chat backend calls itself.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Its name, sent in every welcome and message and in the
    /// `X-Ringway-Backend` header.
    pub id: String,
}

impl ChatConfig {
    /// A config for the backend named `id` (1 to 253 printable ASCII
    /// characters, so that it fits in a header; a pod name does).
    pub fn new(id: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !id.is_empty() && id.len() <= 253 && id.bytes().all(|b| b.is_ascii_graphic()),
            "backend id {id:?} must be 1 to 253 printable ASCII characters without spaces"
        );
        Ok(Self { id: id.to_owned() })
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then closes
/// every chat connection with 1001 and waits (at most 2 s) for them to end.
pub async fn serve(
    listener: TcpListener,
    config: ChatConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        id: config.id,
        rooms: Mutex::new(HashMap::new()),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Beyond MAX_CONNECTIONS, new connections wait in the listen backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &shared, stopped).await {
                        debug!(%peer, error = %e, "connection ended");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(crate::process::ACCEPT_BACKOFF).await;
            }
        }
    }
    let _ = stop.send(true);
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, slots.acquire_many(all)).await;
    Ok(())
}

/// The backend's name and its rooms.
struct Shared {
    id: String,
    rooms: Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>,
}

/// Why a client could not join a room.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    Room,
    Backend,
}

/// A client's place in a room; leaving removes a room without members.
struct Member {
    shared: Arc<Shared>,
    room: String,
    tx: broadcast::Sender<Utf8Bytes>,
    rx: broadcast::Receiver<Utf8Bytes>,
}

impl Shared {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Utf8Bytes>>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn join(self: &Arc<Self>, room: &str) -> Result<Member, Full> {
        let mut rooms = self.rooms();
        let tx = match rooms.get(room) {
            Some(tx) if tx.receiver_count() >= MAX_ROOM_MEMBERS => return Err(Full::Room),
            Some(tx) => tx.clone(),
            None if rooms.len() >= MAX_ROOMS => return Err(Full::Backend),
            None => {
                let (tx, _) = broadcast::channel(ROOM_QUEUE);
                rooms.insert(room.to_owned(), tx.clone());
                tx
            }
        };
        let rx = tx.subscribe();
        Ok(Member {
            shared: Arc::clone(self),
            room: room.to_owned(),
            tx,
            rx,
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut rooms = self.shared.rooms();
        // Joins take the same lock, so nobody joins between the count and
        // the removal; the count still includes this member's receiver.
        let last = rooms
            .get(&self.room)
            .is_some_and(|tx| tx.same_channel(&self.tx) && tx.receiver_count() <= 1);
        if last {
            rooms.remove(&self.room);
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Head<'a> {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// Whether header `name` lists `token` (comma-separated, any case).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The first value of query parameter `name`, as written.
    fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Parses a request head (without its final blank line): request line and
/// headers, printable text only.
fn parse_head(text: &str) -> Result<Head<'_>, &'static str> {
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err("malformed request line");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("malformed header");
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err("control character in a header");
        }
        headers.push((name, value.trim()));
    }
    if headers.len() > 100 {
        return Err("too many headers");
    }
    Ok(Head {
        method,
        path,
        query,
        headers,
    })
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
enum Action<'a> {
    Page,
    Health,
    Join { room: &'a str, key: &'a str },
    Refuse(u16, &'static str),
}

/// Whether `room` is a room name: 1 to 64 letters, digits, `-`, `_`, `.`.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn decide<'a>(head: &Head<'a>) -> Action<'a> {
    let upgrade = head.has_token("upgrade", "websocket");
    match head.path {
        "/" | "/index.html" | "/healthz" if head.method != "GET" => {
            Action::Refuse(405, "method not allowed")
        }
        "/" | "/index.html" => Action::Page,
        "/healthz" => Action::Health,
        "/chat" if head.method != "GET" || !upgrade || !head.has_token("connection", "upgrade") => {
            Action::Refuse(
                400,
                "expected a WebSocket upgrade (GET, Upgrade: websocket)",
            )
        }
        "/chat" if head.header("sec-websocket-version") != Some("13") => {
            Action::Refuse(400, "unsupported Sec-WebSocket-Version (13 only)")
        }
        "/chat" => match (head.header("sec-websocket-key"), head.query_param("room")) {
            (None, _) => Action::Refuse(400, "missing Sec-WebSocket-Key"),
            (Some(key), Some(room)) if valid_room(room) => Action::Join { room, key },
            (Some(_), _) => Action::Refuse(
                400,
                "room must be 1 to 64 letters, digits, '-', '_' or '.' (/chat?room=lobby)",
            ),
        },
        _ => Action::Refuse(404, "not found"),
    }
}

/// Reads up to the end of the request head. Returns the head (without the
/// blank line) and whatever came after it.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::ensure!(buf.is_empty(), "connection closed mid-request");
            return Ok(None);
        }
        // Search only where the new bytes could complete the terminator.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + end;
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok(Some((String::from_utf8(buf)?, rest)));
        }
        anyhow::ensure!(buf.len() <= MAX_HEAD_BYTES, "request head too large");
    }
}

/// Writes a whole HTTP response and closes the connection.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// A plain-text answer: a refusal's reason, or the probe's `ok`.
async fn plain(stream: &mut TcpStream, status: u16, text: &str) -> anyhow::Result<()> {
    respond(
        stream,
        status,
        "text/plain; charset=utf-8",
        &[],
        &format!("{text}\n"),
    )
    .await?;
    Ok(())
}

/// One connection: its request, then the page, the probe's answer, or a
/// room member's life.
async fn connection(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let (text, rest) = match read {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return plain(&mut stream, 400, &e.to_string()).await,
        Err(_) => return plain(&mut stream, 400, "request head timed out").await,
    };
    let head = match parse_head(&text) {
        Ok(head) => head,
        Err(why) => return plain(&mut stream, 400, why).await,
    };
    let (room, key) = match decide(&head) {
        Action::Page => {
            let headers = [("Content-Security-Policy", PAGE_CSP)];
            respond(&mut stream, 200, "text/html; charset=utf-8", &headers, PAGE).await?;
            return Ok(());
        }
        Action::Health => return plain(&mut stream, 200, "ok").await,
        Action::Refuse(status, why) => return plain(&mut stream, status, why).await,
        Action::Join { room, key } => (room, key),
    };
    let member = match shared.join(room) {
        Ok(member) => member,
        Err(Full::Room) => return plain(&mut stream, 503, "room is full").await,
        Err(Full::Backend) => return plain(&mut stream, 503, "too many rooms").await,
    };
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{BACKEND_HEADER}: {}\r\n",
        derive_accept_key(key.as_bytes()),
        shared.id
    );
    if let Some(shard) = head.header(SHARD_HEADER) {
        answer.push_str(&format!("{SHARD_HEADER}: {shard}\r\n"));
    }
    answer.push_str("\r\n");
    stream.write_all(answer.as_bytes()).await?;
    // Every send waits for its flush, so the write buffer holds about one
    // message; its cap is a backstop.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 << 10)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    match chat(ws, member, &shared.id, stopped).await {
        Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
        Err(e) => Err(e).context("chat connection"),
    }
}

/// A member's life: the welcome, then the client's messages out to the room
/// and the room's messages in to the client, until either side ends.
async fn chat(
    mut ws: WebSocketStream<TcpStream>,
    mut member: Member,
    id: &str,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), WsError> {
    let welcome = json!({"type": "welcome", "backend": id, "room": member.room});
    ws.send(Message::text(welcome.to_string())).await?;
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                None => return Ok(()),
                Some(Ok(Message::Text(text))) => {
                    let out = json!({
                        "type": "message",
                        "backend": id,
                        "room": member.room,
                        "text": text.as_str(),
                    });
                    // Fails only without receivers, and this member is one.
                    let _ = member.tx.send(Utf8Bytes::from(out.to_string()));
                }
                Some(Ok(Message::Binary(_))) => {
                    return close(ws, CloseCode::Unsupported, "text messages only").await;
                }
                // Pings, pongs and the client's close are tungstenite's.
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(_))) => {
                    let reason = format!("message over {MAX_MESSAGE_BYTES} bytes");
                    return close(ws, CloseCode::Size, &reason).await;
                }
                Some(Err(e)) => return Err(e),
            },
            out = member.rx.recv() => match out {
                Ok(text) => ws.send(Message::Text(text)).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let reason = format!("too slow: missed {missed} messages");
                    return close(ws, CloseCode::Policy, &reason).await;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = stopped.changed() => {
                return close(ws, CloseCode::Away, "backend stopping").await;
            }
        }
    }
}

/// Sends a close frame and waits (at most [`CLOSE_TIMEOUT`]) for the
/// client's answer.
async fn close(
    mut ws: WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &str,
) -> Result<(), WsError> {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    ws.close(Some(frame)).await?;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head<'_> {
        parse_head(text).expect("parses")
    }

    const UPGRADE: &str = "GET /chat?room=lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn requests_map_to_actions() {
        assert_eq!(decide(&head("GET / HTTP/1.1\r\nHost: x")), Action::Page);
        assert_eq!(decide(&head("GET /healthz HTTP/1.1")), Action::Health);
        assert_eq!(
            decide(&head(UPGRADE)),
            Action::Join {
                room: "lobby",
                key: "dGhlIHNhbXBsZSBub25jZQ=="
            }
        );
        let status = |text: &str| match decide(&head(text)) {
            Action::Refuse(status, _) => status,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(status("POST / HTTP/1.1"), 405);
        assert_eq!(status("GET /nope HTTP/1.1"), 404);
        assert_eq!(status("GET /chat?room=lobby HTTP/1.1"), 400);
        assert_eq!(status(&UPGRADE.replace("room=lobby", "room=")), 400);
        assert_eq!(status(&UPGRADE.replace("room=lobby", "room=a%20b")), 400);
        assert_eq!(status(&UPGRADE.replace("room=lobby", "x=1")), 400);
        assert_eq!(status(&UPGRADE.replace("Version: 13", "Version: 8")), 400);
        assert_eq!(
            status(&UPGRADE.replace("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "")),
            400
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "",
            "GET /",
            "GET / HTTP/1.1 extra",
            "GET x HTTP/1.1",
            "GET / SPDY/3",
            "GET / HTTP/1.1\r\nno colon",
            "GET / HTTP/1.1\r\nX-Evil: a\u{b}b",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rooms_are_capped_and_removed_with_their_last_member() {
        let shared = Arc::new(Shared {
            id: "b".into(),
            rooms: Mutex::new(HashMap::new()),
        });
        let members: Vec<Member> = (0..MAX_ROOM_MEMBERS)
            .map(|_| shared.join("r").expect("room has space"))
            .collect();
        assert_eq!(shared.join("r").err(), Some(Full::Room));
        assert_eq!(shared.rooms().len(), 1);
        drop(members);
        assert!(shared.rooms().is_empty());
        let kept: Vec<Member> = (0..MAX_ROOMS)
            .map(|i| shared.join(&format!("r{i}")).expect("backend has space"))
            .collect();
        assert_eq!(shared.join("one-more").err(), Some(Full::Backend));
        drop(kept);
        assert!(shared.rooms().is_empty());
    }

    #[test]
    fn the_local_demo_config_loads() {
        let path = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
        )
        .join("../examples/chat/standalone.yaml");
        let config = ringway_dataplane::config::Config::load(&path)
            .expect("examples/chat/standalone.yaml is valid");
        assert_eq!(config.routes[0].path_prefix, "/chat");
        assert_eq!(config.routes[0].backends.len(), 2);
    }
}

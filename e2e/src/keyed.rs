//! Keyed WebSocket clients for the sharding tests: each connects with a
//! routing key (`/chat?room=<key>`), learns from the upgrade response
//! which shard and backend serve it (`X-Ringway-Shard`,
//! `X-Ringway-Backend`, see [`crate::echo`]), and runs in its own task so a
//! test can hold a thousand of them, ask each to echo a message, and see
//! how each one ended.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::echo::{BACKEND_HEADER, SHARD_HEADER};

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame arrived with this code and reason.
    Close(u16, String),
    /// The connection was cut without a close frame.
    Dropped(String),
}

impl Ended {
    /// The close code, if a close frame came.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Close(code, _) => Some(*code),
            Self::Dropped(_) => None,
        }
    }
}

type EchoRequest = (String, oneshot::Sender<()>);

/// One live keyed connection, driven by its own task.
#[derive(Debug)]
pub struct KeyedConn {
    /// The routing key.
    pub key: String,
    /// The index of the shard it dialed.
    pub edge: usize,
    /// The shard that relays it to its backend (`X-Ringway-Shard`).
    pub shard: String,
    /// The backend that accepted it (`X-Ringway-Backend`).
    pub backend: String,
    requests: mpsc::Sender<EchoRequest>,
    ended: watch::Receiver<Option<Ended>>,
}

/// Time an echo may take before it counts as lost.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(3);

impl KeyedConn {
    /// Connects to the shard at `address` (index `edge`) with `key`.
    pub async fn open(address: SocketAddr, edge: usize, key: &str) -> anyhow::Result<Self> {
        let url = format!("ws://{address}/chat?room={key}");
        let request = url.as_str().into_client_request()?;
        let (ws, response) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .with_context(|| format!("{url}: no upgrade in 10 s"))?
        .with_context(|| format!("{url}: upgrade failed"))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (shard, backend) = (header(SHARD_HEADER), header(BACKEND_HEADER));
        let (requests, rx) = mpsc::channel(16);
        let (ended_tx, ended) = watch::channel(None);
        tokio::spawn(drive(ws, rx, ended_tx));
        Ok(Self {
            key: key.to_owned(),
            edge,
            shard,
            backend,
            requests,
            ended,
        })
    }

    /// Sends `text` and waits for its echo; false when it did not come
    /// back within [`ECHO_TIMEOUT`] (or the connection is gone).
    pub async fn echo(&self, text: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.requests.send((text.to_owned(), tx)).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(ECHO_TIMEOUT, rx).await, Ok(Ok(())))
    }

    /// How it ended, if it has.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// Waits up to `timeout` for it to end.
    pub async fn wait_ended(&self, timeout: Duration) -> Option<Ended> {
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(timeout, ended.wait_for(Option::is_some)).await;
        self.ended()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn drive(
    mut ws: Ws,
    mut requests: mpsc::Receiver<EchoRequest>,
    ended: watch::Sender<Option<Ended>>,
) {
    let mut waiting: std::collections::VecDeque<EchoRequest> = Default::default();
    let end = loop {
        tokio::select! {
            request = requests.recv(), if ended.borrow().is_none() => {
                let Some((text, reply)) = request else { break None };
                if ws.send(Message::text(text.clone())).await.is_err() {
                    break Some(Ended::Dropped("send failed".into()));
                }
                waiting.push_back((text, reply));
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(t))) => {
                    if let Some(i) = waiting.iter().position(|(sent, _)| sent.as_str() == t.as_str())
                        && let Some((_, reply)) = waiting.remove(i)
                    {
                        let _ = reply.send(());
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Answer the close and let the server end the TCP
                    // connection.
                    let _ = ws.flush().await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while ws.next().await.is_some() {}
                    })
                    .await;
                    break Some(Ended::Close(code, reason));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(Ended::Dropped(e.to_string())),
                None => break Some(Ended::Dropped("closed without a close frame".into())),
            },
        }
    };
    if let Some(end) = end {
        let _ = ended.send(Some(end));
    }
}

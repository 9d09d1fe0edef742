//! The backend side of the upgrade: connect, send the client's request,
//! read and check the answer. Every step has a deadline.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// The largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A backend that accepted the upgrade.
pub struct BackendUpgrade {
    /// The connection, now speaking WebSocket.
    pub stream: TcpStream,
    /// The backend's `101` response head, to relay to the client unchanged.
    pub response_head: Vec<u8>,
    /// Bytes the backend sent after its response head (already frames).
    pub leftover: Vec<u8>,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
}

/// Why a backend upgrade failed.
#[derive(Debug)]
pub enum BackendFailure {
    /// The connection was refused or failed: 502.
    Connect(std::io::Error),
    /// Connecting took too long: 504.
    ConnectTimeout,
    /// The backend did not answer the upgrade in time: 504.
    HandshakeTimeout,
    /// The backend's answer was not a valid upgrade response: 502.
    BadResponse(BadResponse),
    /// The backend answered with another status (e.g. 401): relayed as it is.
    Rejected {
        /// The backend's status.
        status: u16,
        /// Its response head and whatever body bytes had arrived.
        response: Vec<u8>,
    },
}

/// What was wrong with a backend's answer to the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    /// The request could not be sent.
    #[error("sending the upgrade: {0}")]
    Send(#[source] std::io::Error),
    /// The answer could not be read.
    #[error("reading the answer: {0}")]
    Read(#[source] std::io::Error),
    /// The backend closed the connection without answering.
    #[error("closed before answering the upgrade")]
    Closed,
    /// The response head is larger than we read.
    #[error("response head too large")]
    HeadTooLarge,
    /// The response is not HTTP.
    #[error("malformed response: {0}")]
    Malformed(#[source] httparse::Error),
    /// The accept key does not answer the client's key.
    #[error("wrong or missing Sec-WebSocket-Accept")]
    WrongAccept,
}

impl BackendFailure {
    /// Label for `ringway_handshakes_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Connect(_) => "backend_refused",
            Self::ConnectTimeout => "backend_connect_timeout",
            Self::HandshakeTimeout => "backend_timeout",
            Self::BadResponse(_) => "backend_bad_response",
            Self::Rejected { .. } => "backend_rejected",
        }
    }
}

/// Connects to `address` and performs the upgrade with `request`.
pub async fn upgrade_backend(
    address: SocketAddr,
    request: &[u8],
    ws_key: &str,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<BackendUpgrade, BackendFailure> {
    let stream = match timeout(connect_timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(BackendFailure::ConnectTimeout),
        Ok(Err(e)) => return Err(BackendFailure::Connect(e)),
        Ok(Ok(s)) => s,
    };
    // Every message is latency-sensitive and already framed: no Nagle.
    let _ = stream.set_nodelay(true);
    timeout(handshake_timeout, exchange(stream, request, ws_key))
        .await
        .unwrap_or(Err(BackendFailure::HandshakeTimeout))
}

async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    ws_key: &str,
) -> Result<BackendUpgrade, BackendFailure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| BackendFailure::BadResponse(BadResponse::Send(e)))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let filled = buf.len();
        buf.resize(filled + 2048, 0);
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| BackendFailure::BadResponse(BadResponse::Read(e)))?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(BackendFailure::BadResponse(BadResponse::Closed));
        }
        let mut headers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(BackendFailure::BadResponse(BadResponse::HeadTooLarge));
            }
            Err(e) => {
                return Err(BackendFailure::BadResponse(BadResponse::Malformed(e)));
            }
        };
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            return Err(BackendFailure::Rejected {
                status,
                response: buf,
            });
        }
        let find = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.trim_ascii())
        };
        let expected = tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
        if find("sec-websocket-accept") != Some(expected.as_bytes()) {
            return Err(BackendFailure::BadResponse(BadResponse::WrongAccept));
        }
        let deflate = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .any(|h| {
                h.value
                    .windows(18)
                    .any(|w| w.eq_ignore_ascii_case(b"permessage-deflate"))
            });
        let leftover = buf.split_off(head_len);
        return Ok(BackendUpgrade {
            stream,
            response_head: buf,
            leftover,
            deflate,
        });
    }
}

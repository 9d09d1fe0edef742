//! `ringway-echo-client`: the client of the RFC 6455 conformance run's
//! backend leg. It drives Autobahn|Testsuite's `fuzzingserver` (wstest
//! playing the server): asks how many cases there are, runs each one,
//! echoing every text and binary message until the close, and has the
//! server write its report for the agent.
//!
//! The protocol is tungstenite's; what it leaves to its user this client
//! does as a browser would: a connection that breaks the protocol is failed
//! with a close frame whose code names the violation (1002, 1007 invalid
//! UTF-8, 1009 too big), and the server's answer is awaited before the
//! socket is dropped.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{
        Error as WsError, Message,
        client::IntoClientRequest,
        error::ProtocolError,
        http::{HeaderValue, header::HOST},
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

/// Read buffer per connection: the suite's messages go up to 16 MiB, and
/// there is one connection at a time.
const READ_BUFFER_BYTES: usize = 128 << 10;

/// How long a case may take before it is given up (the slowest of the
/// suite's cases take a few seconds).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for the server's answer to our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs every case of an Autobahn fuzzingserver as an echoing client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The fuzzingserver's address (or a gateway in front of it), e.g.
    /// ws://127.0.0.1:9001.
    #[arg(long, env = "RINGWAY_ECHO_CLIENT_URL")]
    url: String,

    /// The agent name the cases are reported under.
    #[arg(long, env = "RINGWAY_ECHO_CLIENT_AGENT")]
    agent: String,

    /// The Host header to send (default: the URL's host and port). The
    /// fuzzingserver refuses a Host whose port is not the one it listens
    /// on, so through a gateway this names the fuzzingserver's address.
    #[arg(long, env = "RINGWAY_ECHO_CLIENT_HOST")]
    host: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ringway_e2e::process::log_to_stderr();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let agent = &args.agent;
    let host = args.host.as_deref();
    let count = case_count(&format!("{base}/getCaseCount"), host).await?;
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        match tokio::time::timeout(CASE_TIMEOUT, run_case(&url, host)).await {
            Ok(Ok(())) => tracing::debug!(case, "done"),
            Ok(Err(e)) => tracing::debug!(case, error = %e, "ended with an error"),
            Err(_) => tracing::warn!(case, "timed out; going on with the next case"),
        }
    }
    let mut ws = connect(&format!("{base}/updateReports?agent={agent}"), host).await?;
    while let Some(Ok(_)) = ws.next().await {}
    println!("ringway-echo-client {agent}: ran {count} cases against {base}");
    Ok(())
}

/// Connects to `url`, naming `host` in the Host header if given.
async fn connect(url: &str, host: Option<&str>) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    if let Some(host) = host {
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(host)?);
    }
    let config = ringway_e2e::ws_config(READ_BUFFER_BYTES);
    let (ws, _) = connect_async_with_config(request, Some(config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// The server's answer to `/getCaseCount`: one text message, a number.
async fn case_count(url: &str, host: Option<&str>) -> anyhow::Result<u32> {
    let mut ws = connect(url, host).await?;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            let count = text
                .trim()
                .parse()
                .with_context(|| format!("case count {text:?}"))?;
            while let Some(Ok(_)) = ws.next().await {}
            return Ok(count);
        }
    }
    bail!("{url} closed without a case count")
}

/// One case: echo until the connection ends; fail it on a protocol error.
async fn run_case(url: &str, host: Option<&str>) -> anyhow::Result<()> {
    let mut ws = connect(url, host).await?;
    while let Some(message) = ws.next().await {
        match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => ws.send(message).await?,
            // Pings, pongs and the close are tungstenite's to answer.
            Ok(_) => {}
            Err(e) => {
                if let Some(close) = failure(&e) {
                    fail(&mut ws, close).await;
                }
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The close frame that fails the connection after `e`, or `None` when
/// the connection is already over.
fn failure(e: &WsError) -> Option<CloseFrame> {
    let (code, reason) = match e {
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
        WsError::Capacity(_) => (CloseCode::Size, "too big"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Sends `close`, then waits (briefly) for the server's answer, so that
/// the socket is not dropped with its bytes unread.
async fn fail(ws: &mut Ws, close: CloseFrame) {
    if ws.close(Some(close)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

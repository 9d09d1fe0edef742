//! `ringway-load probe`: is the thing at this URL up, echoing, and routing
//! by key? It connects a few keys several times each, sends one message on
//! every connection and reads the backend each one reached from the echo
//! backend's `X-Ringway-Backend` header. A key that reached two backends
//! means the proxy in front does not hash on that key. The benchmark scripts
//! probe each proxy before they measure it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{ConnectArgs, Connected, Connector, Ws, connect_all};
use super::report::{Report, Tally, describe_counts};

/// How long one echo may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// The payload of the probe message.
const PROBE_MESSAGE: &str = "ringway-load probe";

/// Check that a URL echoes and routes by key.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Keys to try: k<offset> to k<offset + keys - 1>.
    #[arg(long, default_value_t = 16)]
    pub keys: usize,

    /// Connections per key; each must reach the same backend.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
}

/// Runs the probe; the report's `problem` says what was wrong, if anything.
pub async fn run(args: ProbeArgs) -> anyhow::Result<Report> {
    ensure!(
        args.keys > 0 && args.keys <= 1000,
        "--keys must be between 1 and 1000"
    );
    ensure!(
        args.repeat > 0 && args.repeat <= 10,
        "--repeat must be between 1 and 10"
    );
    let connector = Arc::new(Connector::new(&args.connect, 4096)?);

    let failures = Tally::default();
    // The backends each key reached, one entry per connection.
    let mut reached: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for _ in 0..args.repeat {
        let established = connect_all(connector.clone(), args.keys, 0).await;
        for (reason, n) in established.failures.counts() {
            for _ in 0..n {
                failures.add(reason.clone());
            }
        }
        let mut echoes = JoinSet::new();
        for connected in established.connections {
            echoes.spawn(echo_once(connected));
        }
        while let Some(done) = echoes.join_next().await {
            match done {
                Ok((index, Ok(backend))) => reached.entry(index).or_default().push(backend),
                Ok((_, Err(reason))) => failures.add(reason),
                Err(e) => failures.add(format!("probe task: {e}")),
            }
        }
    }

    let mut keys_per_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut moved = Vec::new();
    for (index, backends) in &reached {
        *keys_per_backend.entry(backends[0].clone()).or_default() += 1;
        if backends.iter().any(|b| *b != backends[0]) {
            moved.push(format!(
                "{} -> {}",
                connector.key(*index),
                backends.join(",")
            ));
        }
    }
    let failed = failures.total();
    let problem = if failed > 0 {
        Some(format!(
            "{failed} probe connection(s) failed: {}",
            describe_counts(&failures.counts())
        ))
    } else if !moved.is_empty() {
        Some(format!(
            "keys reached more than one backend: {}",
            moved.join("; ")
        ))
    } else {
        None
    };
    let lines = vec![
        format!(
            "probe: {} keys x {} to {}: {} echoed, {failed} failed ({})",
            args.keys,
            args.repeat,
            args.connect.url,
            reached.values().map(Vec::len).sum::<usize>(),
            describe_counts(&failures.counts())
        ),
        format!(
            "keys per backend: {}; {}",
            describe_counts(&keys_per_backend),
            if reached.is_empty() {
                "no key reached a backend".to_owned()
            } else if moved.is_empty() {
                "every key stayed on its backend".to_owned()
            } else {
                format!("{} key(s) moved", moved.len())
            }
        ),
    ];
    let json = json!({
        "mode": "probe",
        "url": args.connect.url,
        "keys": args.keys,
        "repeat": args.repeat,
        "failed": failed,
        "failures": failures.counts(),
        "keys_per_backend": keys_per_backend,
        "sticky": moved.is_empty(),
        "moved": moved,
        "ok": problem.is_none(),
    });
    Ok(Report {
        lines,
        json,
        problem,
    })
}

/// Sends one message, checks its echo and closes; the backend that answered.
async fn echo_once(connected: Connected) -> (usize, Result<String, String>) {
    let Connected {
        index,
        mut ws,
        backend,
        ..
    } = connected;
    let result = check_echo(&mut ws, Message::text(PROBE_MESSAGE))
        .await
        .map(|()| backend.unwrap_or_else(|| "(no X-Ringway-Backend header)".to_owned()));
    close(&mut ws, ECHO_TIMEOUT).await;
    (index, result)
}

/// Sends `message` and waits for the same message back (pings and pongs
/// aside); on failure, the reason to count it by.
pub(super) async fn check_echo(ws: &mut Ws, message: Message) -> Result<(), String> {
    ws.send(message.clone())
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match tokio::time::timeout(ECHO_TIMEOUT, ws.next()).await {
            Err(_) => return Err("no echo within 5 s".to_owned()),
            Ok(None) => return Err("closed before the echo".to_owned()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(echoed))) if echoed == message => return Ok(()),
            Ok(Some(Ok(_))) => return Err("wrong echo".to_owned()),
        }
    }
}

/// Closes with the WebSocket close handshake, waiting at most `within`.
pub(super) async fn close(ws: &mut Ws, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        let _ = ws.close(None).await;
        while ws.next().await.is_some() {}
    })
    .await;
}

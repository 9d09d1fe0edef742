//! How the gateway answers a client whose upgrade went no further: the
//! refusal's or the failed upstream's HTTP answer, written briefly, then a
//! lingering close so that the client can read it.

use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};

use crate::{
    handshake::{self, BackendFailure, Refusal},
    io::Io,
    metrics::Metrics,
};

/// Counts a refusal, logs it and answers it.
pub(super) async fn refuse(client: &mut Io, metrics: &Metrics, refusal: &Refusal) {
    metrics.handshake(refusal.outcome);
    tracing::debug!(
        status = refusal.status,
        outcome = refusal.outcome,
        "upgrade refused"
    );
    answer(client, &refusal.response()).await;
}

/// How long a refused client may go on sending after its answer.
const LINGER: Duration = Duration::from_secs(1);
/// How much of what it sends then is read (and dropped).
const LINGER_BYTES: usize = 256 * 1024;

/// Writes `response` to the client, briefly, then closes so that the
/// client can read it: a socket closed with unread bytes (the rest of a
/// request too large to read) sends a reset, which may destroy the answer
/// in flight. So the gateway half-closes and reads what comes for a
/// bounded time and amount first, like nginx's lingering close.
pub(super) async fn answer(client: &mut Io, response: &[u8]) {
    if let Ok(Ok(())) = timeout(Duration::from_secs(1), client.write_all(response)).await {
        linger(client).await;
    }
}

async fn linger(client: &mut Io) {
    let deadline = Instant::now() + LINGER;
    let shut = std::future::poll_fn(|cx| client.poll_shutdown(cx));
    if !matches!(timeout_at(deadline, shut).await, Ok(Ok(()))) {
        return;
    }
    // Only refused connections get here, and only for a second: the
    // buffer is not part of every connection's future.
    let mut sink = vec![0; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match timeout_at(deadline, client.read_some(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// What a failed upgrade toward a backend (or an owner shard) tells the client.
pub(super) fn failure_response(failure: BackendFailure) -> Vec<u8> {
    match failure {
        BackendFailure::Rejected { response, .. } => response,
        BackendFailure::Connect(e) => handshake::error_response(
            502,
            &format!("the backend refused the connection: {e}"),
            &[],
        ),
        BackendFailure::ConnectTimeout => handshake::error_response(
            504,
            "the backend did not accept the connection in time",
            &[],
        ),
        BackendFailure::HandshakeTimeout => {
            handshake::error_response(504, "the backend did not answer the upgrade in time", &[])
        }
        BackendFailure::BadResponse(m) => handshake::error_response(
            502,
            &format!("the backend's answer was not a WebSocket upgrade: {m}"),
            &[],
        ),
    }
}

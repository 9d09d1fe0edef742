//! The HTTP/1.1 server behind Ringway's small ports: the data plane's admin
//! port and the operator's metrics and health port. Each describes its
//! routes as an axum [`Router`]; [`serve`] runs it on hyper with the limits
//! both ports share, so that no slow, silent or hostile client can take a
//! port away from the kubelet's probes:
//!
//! - at most `max_connections` connections at once; more wait in the
//!   listen backlog;
//! - the request head must arrive within [`HEADER_READ_TIMEOUT`] (else
//!   408) and fit in [`MAX_HEAD_BYTES`] (else 431); a malformed one gets
//!   400;
//! - the client must read the response within [`WRITE_TIMEOUT`] of it being
//!   ready;
//! - one request per connection, answered with `Connection: close`;
//! - an accept error (most often EMFILE: every file descriptor in use)
//!   backs off for [`ACCEPT_BACKOFF`] instead of spinning;
//! - after shutdown, connections in flight get [`SHUTDOWN_GRACE`] to finish.
//!
//! [`serve_with`] speaks HTTP over what a handshake (TLS, for the
//! operator's admission webhook) makes of each connection, which must
//! finish within [`HANDSHAKE_TIMEOUT`]; [`serve`] speaks it over plain TCP.
//!
//! Unknown paths get 404 `not found`; a known path asked with another
//! method gets 405 `method not allowed` with `Allow`. Every request carries
//! the client's address as a [`Peer`] extension.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, http::StatusCode};
use hyper::{
    Request,
    body::Incoming,
    server::conn::http1,
    service::{Service as _, service_fn},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{Instrument, debug, debug_span, warn};

/// How long a client may take to send its whole request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection's handshake (for [`serve_with`]) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response once it is ready.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read, in bytes:
/// hyper's smallest read buffer.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long connections in flight may take to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait before accepting again after an accept error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection lingers after the response, reading what the
/// client still sends, so that closing it does not reset it.
const LINGER: Duration = Duration::from_secs(1);

/// The answer to a client that sent no whole request head in time: hyper
/// closes such a connection silently, and a probe deserves a status.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n";

/// The address of the client that sent a request; every request served by
/// [`serve`] carries it as an extension (`Extension<Peer>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Serves `router` on `listener`, at most `max_connections` connections at
/// once, until `shutdown` resolves; then lets connections in flight finish
/// for up to [`SHUTDOWN_GRACE`] and closes the rest.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let plain = |tcp| std::future::ready(Ok(tcp));
    serve_with(listener, router, max_connections, shutdown, plain).await;
}

/// Like [`serve`], speaking HTTP over what `handshake` makes of each
/// accepted connection (a TLS acceptor's `accept`, for instance). The
/// handshake runs in the connection's task and must finish within
/// [`HANDSHAKE_TIMEOUT`]; a connection whose handshake fails or times out
/// is closed. `handshake` sees every failure first, so it can count them.
pub async fn serve_with<H, F, S>(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    handshake: H,
) where
    H: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(finished) = connections.join_next() => {
                if let Err(e) = finished {
                    warn!(error = %e, "an HTTP connection task failed");
                }
                continue;
            }
            accepted = accept(&listener, &permits) => accepted,
        };
        let (stream, peer, permit) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let router = router.clone();
        let shaking = handshake(stream);
        connections.spawn(
            async move {
                match timeout(HANDSHAKE_TIMEOUT, shaking).await {
                    Ok(Ok(stream)) => connection(stream, peer, router).await,
                    Ok(Err(e)) => debug!(error = %e, "handshake failed"),
                    Err(_) => debug!("no handshake within the deadline"),
                }
                drop(permit);
            }
            .instrument(debug_span!("http", %peer)),
        );
    }
    drop(listener);
    let drained = timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            connections = connections.len(),
            "closing HTTP connections still open"
        );
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection semaphore closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}

/// One connection: one request read, answered, and the connection closed.
async fn connection<S>(mut stream: S, peer: SocketAddr, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answered = Notify::new();
    let outcome = {
        let router = TowerToHyperService::new(router);
        let answered = &answered;
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            let response = router.call(request);
            async move {
                let response = response.await;
                answered.notify_one();
                response
            }
        });
        let serving = http1().serve_connection(TokioIo::new(&mut stream), service);
        tokio::select! {
            outcome = serving => outcome,
            () = async {
                answered.notified().await;
                tokio::time::sleep(WRITE_TIMEOUT).await;
            } => {
                debug!("the client did not read the response in time");
                return;
            }
        }
    };
    match outcome {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            debug!("no complete request head within the deadline");
            let _ = stream.write_all(REQUEST_TIMEOUT).await;
        }
        // A malformed or oversized head: hyper has answered 400 or 431.
        Err(e) => debug!(error = %e, "request failed"),
    }
    close(&mut stream).await;
}

/// How hyper serves a connection: HTTP/1.1, one request, the head within
/// its deadline and size, header names written as `Content-Type`.
fn http1() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        // A client that closes its sending side after the request still
        // gets the answer.
        .half_close(true)
        .title_case_headers(true);
    builder
}

/// Ends our side, then reads what the client still sends, briefly: closing
/// with unread bytes (a body, the rest of an oversized head) would reset
/// the connection, and the client could lose the response.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The answer to a path no route knows.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// The answer to a known path asked with another method; the router adds
/// `Allow`.
async fn method_not_allowed() -> (StatusCode, &'static str) {
    (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

#[cfg(test)]
mod tests;

//! The operator's HTTP port: `/metrics` for Prometheus, `/healthz` for the
//! liveness probe and `/readyz` for the readiness probe. A small HTTP/1.1
//! server: one `GET` per connection, answered and closed.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::timeout,
};
use tracing::{Instrument, debug, debug_span, warn};

use crate::metrics::Metrics;

/// How long a client may take to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read, in bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long connections in flight may take to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a connection lingers after the response, reading what the
/// client still sends, so that closing it does not reset it.
const LINGER: Duration = Duration::from_secs(1);
/// How long to wait before accepting again after an accept error (most
/// often EMFILE: every file descriptor is in use).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the exposition that `prometheus-client` writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` resolves, then lets requests in flight finish for up to
/// [`SHUTDOWN_GRACE`].
///
/// `/healthz` answers 200 as long as the process serves. `/readyz` answers
/// 200 while `ready` holds `true` and 503 otherwise: the owner of the
/// `watch::Sender` sets it once the controller runs (the last value stays
/// readable if the sender is dropped).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let metrics = Arc::clone(&metrics);
        let ready = ready.clone();
        connections.spawn(
            async move {
                if let Err(e) = handle(stream, &metrics, &ready).await {
                    debug!(error = %e, "request failed");
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
) -> io::Result<(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection semaphore closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}

/// One connection: read the request head, answer, close.
async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &watch::Receiver<bool>,
) -> io::Result<()> {
    let response = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => {
            debug!("no complete request within the read deadline");
            plain(408, "Request Timeout", "request timeout\n")
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => plain(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Ok(Ok(Head::Complete(head))) => {
            let ready = *ready.borrow();
            route(&head, ready, metrics)
        }
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the response"))??;
    // Closing with unread bytes (a body, the rest of an oversized head)
    // would reset the connection, and the client could lose the response:
    // read until the client closes, briefly.
    let mut sink = [0u8; 1024];
    let _ = timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

/// What reading a request head gave.
#[derive(Debug, PartialEq)]
enum Head {
    /// The bytes up to and including the blank line that ends the head.
    Complete(Vec<u8>),
    /// No blank line within [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// The client closed before sending a whole head.
    Closed,
}

/// Reads until the blank line that ends the request head. A body, if any,
/// is not read: no route takes one.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // Look for the end from just before the new bytes: it may straddle
        // two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(Head::Complete(head));
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// The length of the head in `bytes` (through `\r\n\r\n`, or a bare
/// `\n\n`, which HTTP/1.1 tolerates), if it is complete.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The response to the request whose head is `head`.
fn route(head: &[u8], ready: bool, metrics: &Metrics) -> Vec<u8> {
    let Some((method, path)) = request_line(head) else {
        return plain(400, "Bad Request", "bad request\n");
    };
    match (method, path) {
        ("GET", "/healthz") => plain(200, "OK", "ok\n"),
        ("GET", "/readyz") if ready => plain(200, "OK", "ready\n"),
        ("GET", "/readyz") => plain(503, "Service Unavailable", "not ready\n"),
        ("GET", "/metrics") => response(
            200,
            "OK",
            METRICS_CONTENT_TYPE,
            "",
            metrics.render().as_bytes(),
        ),
        (_, "/healthz" | "/readyz" | "/metrics") => response(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8",
            "Allow: GET\r\n",
            b"method not allowed\n",
        ),
        _ => plain(404, "Not Found", "not found\n"),
    }
}

/// The method and path (without the query) of an HTTP/1.x request line:
/// `GET /metrics?x=y HTTP/1.1`.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if !valid {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some((method, path))
}

/// A `text/plain` response.
fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        "",
        body.as_bytes(),
    )
}

/// A whole response; `headers` are extra header lines, each ending `\r\n`.
fn response(status: u16, reason: &str, content_type: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::sync::oneshot;

    use super::*;

    /// A server on 127.0.0.1:0; it stops when the returned sender is used
    /// or dropped.
    struct Server {
        address: SocketAddr,
        ready: watch::Sender<bool>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(metrics: Arc<Metrics>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (ready, ready_rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, metrics, ready_rx, async {
            let _ = stopped.await;
        }));
        Server {
            address,
            ready,
            stop,
            task,
        }
    }

    /// Sends `request` as is and reads the whole response.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        response
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nUser-Agent: test\r\n\r\n");
        exchange(address, request.as_bytes()).await
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    #[tokio::test]
    async fn probes_answer_and_readiness_follows_the_controller() {
        let server = start(Arc::new(Metrics::new())).await;
        let healthz = get(server.address, "/healthz").await;
        assert_eq!(status_line(&healthz), "HTTP/1.1 200 OK");
        assert_eq!(body(&healthz), "ok\n");
        assert!(healthz.contains("\r\nContent-Length: 3\r\n"), "{healthz}");
        assert!(healthz.contains("\r\nConnection: close\r\n"), "{healthz}");

        let readyz = get(server.address, "/readyz").await;
        assert_eq!(status_line(&readyz), "HTTP/1.1 503 Service Unavailable");
        server.ready.send_replace(true);
        let readyz = get(server.address, "/readyz?verbose").await;
        assert_eq!(status_line(&readyz), "HTTP/1.1 200 OK");
        // Still ready when the controller's sender is gone.
        let Server {
            address,
            ready,
            stop,
            task,
        } = server;
        drop(ready);
        assert_eq!(
            status_line(&get(address, "/readyz").await),
            "HTTP/1.1 200 OK"
        );
        drop(stop);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_exposition_format() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_leader(true);
        metrics.set_pods_steered("default/echo", 3);
        let server = start(Arc::clone(&metrics)).await;
        let response = get(server.address, "/metrics").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert!(
            response.contains(&format!("\r\nContent-Type: {METRICS_CONTENT_TYPE}\r\n")),
            "{response}"
        );
        let body = body(&response);
        assert!(
            body.lines().any(|l| l == "ringway_operator_leader 1"),
            "{body}"
        );
        assert!(
            body.lines()
                .any(|l| l == "ringway_operator_pods_steered{gateway=\"default/echo\"} 3"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn unknown_paths_wrong_methods_and_garbage_are_refused() {
        let server = start(Arc::new(Metrics::new())).await;
        let a = server.address;
        assert_eq!(status_line(&get(a, "/").await), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status_line(&get(a, "/metrics/x").await),
            "HTTP/1.1 404 Not Found"
        );
        let post = exchange(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
        for garbage in [
            &b"hello\r\n\r\n"[..],
            b"GET /healthz\r\n\r\n",
            b"GET /healthz HTTP/2\r\n\r\n",
            b"GET  /healthz HTTP/1.1\r\n\r\n",
            b"get /healthz HTTP/1.1\r\n\r\n",
            b"GET healthz HTTP/1.1\r\n\r\n",
            b"\xff\xfe /healthz HTTP/1.1\r\n\r\n",
        ] {
            let response = exchange(a, garbage).await;
            assert_eq!(
                status_line(&response),
                "HTTP/1.1 400 Bad Request",
                "{garbage:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_in_pieces_is_read_whole() {
        let server = start(Arc::new(Metrics::new())).await;
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        for piece in [
            &b"GET /hea"[..],
            b"lthz HTTP/1.1\r\nHost: x\r",
            b"\n\r",
            b"\n",
        ] {
            stream.write_all(piece).await.expect("write");
            stream.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused() {
        let server = start(Arc::new(Metrics::new())).await;
        let mut request = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while request.len() <= MAX_REQUEST_BYTES {
            request.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        // The server may stop reading (and close) before all of it is sent.
        let _ = stream.write_all(&request).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_at_the_read_deadline() {
        let server = start(Arc::new(Metrics::new())).await;
        let started = tokio::time::Instant::now();
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
        assert!(started.elapsed() >= READ_TIMEOUT);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let server = start(Arc::new(Metrics::new())).await;
        // A connection in flight when shutdown comes still gets its answer.
        let mut in_flight = TcpStream::connect(server.address).await.expect("connect");
        in_flight
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;

        server.stop.send(()).expect("serving");
        in_flight.write_all(b"\r\n").await.expect("write");
        let mut response = String::new();
        in_flight.read_to_string(&mut response).await.expect("read");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        drop(in_flight);

        timeout(Duration::from_secs(5), server.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(TcpStream::connect(server.address).await.is_err());
    }

    #[test]
    fn request_lines_are_parsed_by_hand() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_line(b"GET /readyz?full=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\n\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_line(b"GET /metrics HTTP/1.1 x\r\n\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}

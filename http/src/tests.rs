use axum::{Extension, routing::get};
use tokio::{sync::oneshot, time::Instant};

use super::*;

/// A server on 127.0.0.1:0 with a few routes; it stops when `stop` is
/// used or dropped.
struct Server {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A body larger than what the kernel buffers between two sockets.
const BIG: usize = 64 << 20;

async fn start(max_connections: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/peer",
            get(|Extension(Peer(peer)): Extension<Peer>| async move { peer.to_string() }),
        )
        .route("/big", get(|| async { vec![b'x'; BIG] }));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, max_connections, async {
        let _ = stopped.await;
    }));
    Server {
        address,
        stop,
        task,
    }
}

/// Sends `request` as is and reads the whole response.
async fn exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // The server may stop reading (and answer) before all of it is sent.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn one_request_is_answered_and_the_connection_closed() {
    let server = start(4).await;
    let response = exchange(
        server.address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert_eq!(body(&response), "ok\n");
    for header in [
        "Content-Type: text/plain; charset=utf-8",
        "Content-Length: 3",
        "Connection: close",
    ] {
        assert!(
            response.contains(&format!("\r\n{header}\r\n")),
            "{response}"
        );
    }
    let head = exchange(server.address, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
    assert_eq!(body(&head), "");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_with_a_reason() {
    let server = start(4).await;
    let missing = exchange(server.address, b"GET /nothing HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&missing), "HTTP/1.1 404 Not Found");
    assert_eq!(body(&missing), "not found\n");
    let post = exchange(
        server.address,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
    assert!(post.contains("\r\nAllow: GET,HEAD\r\n"), "{post}");
    assert_eq!(body(&post), "method not allowed\n");
}

#[tokio::test]
async fn every_request_knows_its_peer() {
    let server = start(4).await;
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    let local = stream.local_addr().expect("address");
    stream
        .write_all(b"GET /peer HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert_eq!(body(&response), local.to_string());
}

#[tokio::test]
async fn malformed_request_lines_are_refused() {
    let server = start(4).await;
    for garbage in [
        &b"hello\r\n\r\n"[..],
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1 x\r\n\r\n",
        b"\xff\xfe /healthz HTTP/1.1\r\n\r\n",
    ] {
        let response = exchange(server.address, garbage).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 400 Bad Request",
            "{garbage:?}"
        );
    }
    // Well formed, though no route takes them: a method is case-sensitive
    // (`get` is not `GET`), and `healthz` is an authority, not a path.
    let lower = exchange(server.address, b"get /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&lower), "HTTP/1.1 405 Method Not Allowed");
    let authority = exchange(server.address, b"GET healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&authority), "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn the_query_http_1_0_and_bare_line_feeds_are_understood() {
    let server = start(4).await;
    for request in [
        &b"GET /healthz?full=1 HTTP/1.1\r\n\r\n"[..],
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\n\n",
    ] {
        let response = exchange(server.address, request).await;
        // HTTP/1.0 is answered in HTTP/1.0.
        assert!(status_line(&response).ends_with(" 200 OK"), "{response}");
        assert_eq!(body(&response), "ok\n", "{request:?}");
    }
}

#[tokio::test]
async fn a_request_in_pieces_is_read_whole() {
    let server = start(4).await;
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
async fn a_client_that_stops_sending_still_gets_its_answer() {
    let server = start(4).await;
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn an_oversized_request_is_refused() {
    let server = start(4).await;
    let mut request = b"GET /healthz HTTP/1.1\r\n".to_vec();
    while request.len() <= MAX_HEAD_BYTES {
        request.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let response = exchange(server.address, &request).await;
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_cut_off_at_the_read_deadline() {
    let server = start(4).await;
    let started = Instant::now();
    let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n").await;
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    assert_eq!(body(&response), "request timeout\n");
    assert!(started.elapsed() >= HEADER_READ_TIMEOUT);
}

/// With one connection allowed, a second client waits until the first,
/// silent one is cut off.
#[tokio::test(start_paused = true)]
async fn connections_beyond_the_limit_wait() {
    let server = start(1).await;
    let started = Instant::now();
    let _silent = TcpStream::connect(server.address).await.expect("connect");
    let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(started.elapsed() >= HEADER_READ_TIMEOUT);
}

/// A client that never reads its (large) response is dropped at the write
/// deadline, and its slot serves the next client.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_cut_off_at_the_write_deadline() {
    let server = start(1).await;
    let started = Instant::now();
    let mut stuck = TcpStream::connect(server.address).await.expect("connect");
    stuck
        .write_all(b"GET /big HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(started.elapsed() >= WRITE_TIMEOUT);
    let mut received = Vec::new();
    let _ = stuck.read_to_end(&mut received).await;
    assert!(received.len() < BIG, "the whole body arrived");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_requests_in_flight_finish() {
    let server = start(4).await;
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
        .expect("serve does not panic");
    assert!(TcpStream::connect(server.address).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_what_is_left_after_the_grace() {
    let server = start(4).await;
    let _silent = TcpStream::connect(server.address).await.expect("connect");
    // Let the server accept it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    server.stop.send(()).expect("serving");
    server.task.await.expect("serve does not panic");
    let waited = started.elapsed();
    assert!(
        (SHUTDOWN_GRACE..HEADER_READ_TIMEOUT).contains(&waited),
        "{waited:?}"
    );
}

/// A server whose handshake wants a `!` before HTTP begins.
async fn start_with_greeting() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let router = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let greeting = |mut tcp: TcpStream| async move {
        let mut first = [0u8];
        tcp.read_exact(&mut first).await?;
        match first {
            [b'!'] => Ok(tcp),
            _ => Err(io::Error::other("no greeting")),
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    tokio::spawn(serve_with(listener, router, 4, shutdown, greeting));
    (address, stop)
}

#[tokio::test]
async fn the_handshake_runs_before_http_and_a_failed_one_closes_the_connection() {
    let (address, _stop) = start_with_greeting().await;
    let greeted = exchange(address, b"!GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_line(&greeted), "HTTP/1.1 200 OK");
    let refused = exchange(address, b"?GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(refused, "", "no answer without the handshake");
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_never_ends_is_cut_off_at_its_deadline() {
    let (address, _stop) = start_with_greeting().await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(address).await.expect("connect");
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT);
}

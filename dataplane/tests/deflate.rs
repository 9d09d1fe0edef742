//! permessage-deflate passes through: the backend's answer is relayed, and
//! compressed frames (RSV1) travel unchanged both ways.

mod support;

use std::time::Duration;

use support::Gateway;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

/// Reads an HTTP head (up to the blank line).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

const SERVER_FRAME: [u8; 7] = [0xC1, 0x05, 0xF2, 0x48, 0xCD, 0xC9, 0x01]; // RSV1 text, unmasked
const CLIENT_FRAME: [u8; 11] = [0xC2, 0x85, 1, 2, 3, 4, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE]; // RSV1 binary, masked

/// A raw backend that negotiates permessage-deflate when offered, sends one
/// compressed frame, and reports the first frame bytes it receives.
async fn deflate_backend() -> (std::net::SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let head = read_head(&mut s).await;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("key")
            .trim()
            .to_owned();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let ext = if head.contains("permessage-deflate") {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
        );
        s.write_all(resp.as_bytes()).await.expect("write");
        s.write_all(&SERVER_FRAME).await.expect("write");
        let mut got = vec![0u8; CLIENT_FRAME.len()];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await;
        let _ = tx.send(got);
    });
    (addr, rx)
}

#[tokio::test]
async fn compressed_frames_pass_through_unchanged() {
    let (backend, received) = deflate_backend().await;
    let gw = Gateway::echo(&[backend], "").await;
    let mut c = TcpStream::connect(gw.addr).await.expect("connect");
    c.write_all(&support::upgrade_request(
        "/echo?room=1",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    ))
    .await
    .expect("write");
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        "the backend's answer is relayed: {head}"
    );
    let mut frame = [0u8; SERVER_FRAME.len()];
    c.read_exact(&mut frame).await.expect("frame");
    assert_eq!(frame, SERVER_FRAME);
    c.write_all(&CLIENT_FRAME).await.expect("write");
    assert_eq!(
        received.await.expect("backend"),
        CLIENT_FRAME.to_vec(),
        "the client's frame arrives byte for byte, still masked"
    );
}

#[tokio::test]
async fn compressed_frames_without_deflate_are_a_protocol_error() {
    let (backend, _received) = deflate_backend().await;
    let gw = Gateway::echo(&[backend], "").await;
    let mut c = TcpStream::connect(gw.addr).await.expect("connect");
    c.write_all(&support::upgrade_request("/echo?room=1", ""))
        .await
        .expect("write");
    let head = read_head(&mut c).await;
    assert!(!head.contains("permessage-deflate"));
    // The backend's RSV1 frame is not valid on this connection: the client
    // gets a close (1011: the backend broke the protocol) instead of it.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert_eq!(
        rest.first(),
        Some(&0x88),
        "a close frame, not the RSV1 frame: {rest:?}"
    );
    assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1011);
}

//! Requests a hostile or broken client sends before any upgrade: each is
//! refused with its status, which the client gets to read, and counted.

mod support;

use std::time::Duration;

use support::{Gateway, echo_backend};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Found by a hostile-client probe: these were answered 101, their headers
/// went to the backend unchanged, and the body bytes were then parsed as
/// WebSocket frames.
#[tokio::test]
async fn an_upgrade_that_carries_a_body_is_refused_before_anything_is_upgraded() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], "").await;
    let cases: [(&str, &str, &str); 4] = [
        ("Content-Length: 5\r\n", "hello", "request_body"),
        (
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            "request_body",
        ),
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "hello",
            "conflicting_framing",
        ),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "hello",
            "conflicting_framing",
        ),
    ];
    for (headers, body, _) in cases {
        let mut request = support::upgrade_request("/echo?room=1", headers);
        request.extend_from_slice(body.as_bytes());
        let response = support::raw(gw.addr, &request).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{headers:?}: {response}"
        );
    }
    let metrics = gw.shared.metrics.render();
    for (outcome, count) in [("request_body", 2), ("conflicting_framing", 2)] {
        let line = format!("ringway_handshakes_total{{outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(
        !metrics.contains("ringway_handshakes_total{outcome=\"ok\"}"),
        "nothing was upgraded:\n{metrics}"
    );
}

/// Found by the same probe: a request head over the limit was counted,
/// but 5 clients in 6 got a reset instead of the 431, because the socket
/// was closed with the rest of their request unread.
#[tokio::test]
async fn every_client_with_an_oversized_head_reads_its_431() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], "connections: {maxRequestHeaderBytes: 4096}\n").await;
    let long_line = format!(
        "GET /echo?room=1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let long_uri = format!(
        "GET /echo?room={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "7".repeat(64 * 1024)
    );
    for (i, request) in std::iter::repeat_n([&long_line, &long_uri], 10)
        .flatten()
        .enumerate()
    {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        // The whole request, as a client that does not wait for an answer
        // sends it, a piece at a time (the gateway stops reading at its
        // limit); then it reads.
        let mut sent = Ok(());
        for chunk in request.as_bytes().chunks(1024) {
            sent = stream.write_all(chunk).await;
            if sent.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut out = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        // Most clients send their whole request before they read: a reset
        // while they write is an answer they never see.
        assert!(
            sent.is_ok() && text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "client {i}: sent {sent:?}, read {got:?}: {:?}",
            &text[..text.len().min(200)]
        );
    }
    let metrics = gw.shared.metrics.render();
    assert!(
        metrics.contains("ringway_handshakes_total{outcome=\"headers_too_large\"} 20"),
        "{metrics}"
    );
}

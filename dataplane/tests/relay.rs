//! The data plane end to end in one process: real tokio-tungstenite clients
//! and backends on 127.0.0.1, the gateway between them.

mod support;

use std::{collections::HashMap, time::Duration};

use futures_util::{SinkExt, StreamExt};
use support::{Gateway, close_of, connect, connect_with, echo_backend, next_data};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn text_binary_and_large_messages_echo_through() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], "").await;
    let (mut ws, id) = connect(&gw.url("/echo?room=1")).await;
    assert_eq!(id, "b1", "the backend's upgrade headers reach the client");
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::text("hello")));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    assert_eq!(
        next_data(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::binary(big)));
    // Many small messages back to back arrive whole and in order.
    for i in 0..500 {
        ws.feed(Message::text(format!("m{i}"))).await.expect("feed");
    }
    ws.flush().await.expect("flush");
    for i in 0..500 {
        assert_eq!(
            next_data(&mut ws).await,
            Some(Message::text(format!("m{i}")))
        );
    }
    ws.close(None).await.expect("close");
    gw.stop(ringway_dataplane::Shutdown::Fast).await;
}

#[tokio::test]
async fn the_same_key_always_reaches_the_same_backend() {
    let backends = [
        echo_backend("b1").await,
        echo_backend("b2").await,
        echo_backend("b3").await,
    ];
    let gw = Gateway::echo(&backends, "").await;
    let mut placed: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for key in 0..40 {
            let (mut ws, id) = connect(&gw.url(&format!("/echo?room=k{key}"))).await;
            if round == 0 {
                placed.insert(format!("k{key}"), id);
            } else {
                assert_eq!(placed[&format!("k{key}")], id, "key k{key} moved");
            }
            ws.close(None).await.expect("close");
        }
    }
    let used: std::collections::HashSet<_> = placed.values().collect();
    assert_eq!(
        used.len(),
        3,
        "40 keys should reach all 3 backends: {placed:?}"
    );
}

#[tokio::test]
async fn subprotocols_are_negotiated_with_the_backend() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], "").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        gw.url("/echo?room=1"),
    )
    .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v2, chat.v1".parse().expect("header"),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii")),
        Some("chat.v2")
    );
}

#[tokio::test]
async fn pings_from_the_client_reach_the_backend_and_pongs_come_back() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], "").await;
    let (mut ws, _) = connect(&gw.url("/echo?room=1")).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
}

const FAST_HEARTBEAT: &str =
    "connections: {heartbeat: {intervalSeconds: 0.2, timeoutSeconds: 0.3}}\n";

#[tokio::test]
async fn clients_that_answer_pings_stay_connected() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], FAST_HEARTBEAT).await;
    let (mut ws, _) = connect(&gw.url("/echo?room=1")).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(p))) => {
                assert_eq!(p.len(), 8, "the gateway's ping carries an 8-byte token");
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pings >= 4,
        "expected a ping every 0.2 s, got {pings} in 1.5 s"
    );
    // Still open: an echo works.
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::text("still here")));
}

#[tokio::test]
async fn clients_that_do_not_answer_pings_are_closed_with_1011() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(&[backend], FAST_HEARTBEAT).await;
    // A raw client: completes the upgrade, then reads without answering.
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, &support::upgrade_request("/echo?room=1", ""))
        .await
        .expect("write");
    let start = tokio::time::Instant::now();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut bytes),
    )
    .await;
    let took = start.elapsed();
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a 101 response")
        + 4;
    // The gateway's frames, walked by their headers (unmasked, each under
    // 126 bytes): a ping's payload may hold any byte, a close's opcode too.
    let mut frames = Vec::new();
    let mut rest = &bytes[head_end..];
    while let [first, len, tail @ ..] = rest {
        let len = usize::from(len & 0x7f);
        assert!(len < 126 && tail.len() >= len, "a short control frame");
        frames.push((first & 0x0f, &tail[..len]));
        rest = &tail[len..];
    }
    assert_eq!(frames.first().map(|f| f.0), Some(0x9), "first a ping");
    let (_, close) = frames
        .iter()
        .find(|(opcode, _)| *opcode == 0x8)
        .expect("then a close frame");
    let code = u16::from_be_bytes([close[0], close[1]]);
    assert_eq!(code, 1011);
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}

#[tokio::test]
async fn oversize_messages_are_closed_with_1009() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(
        &[backend],
        "connections: {maxFrameBytes: 1024, maxMessageBytes: 4096}\n",
    )
    .await;
    let (mut ws, _) = connect(&gw.url("/echo?room=1")).await;
    ws.send(Message::binary(vec![1u8; 1000]))
        .await
        .expect("send");
    assert_eq!(
        next_data(&mut ws).await,
        Some(Message::binary(vec![1u8; 1000]))
    );
    ws.send(Message::binary(vec![1u8; 2000]))
        .await
        .expect("send");
    let (code, reason) = close_of(&mut ws).await.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(
        gw.shared
            .metrics
            .render()
            .contains("ringway_closes_total{code=\"1009\",reason=\"client_protocol_error\"} 1")
    );
}

#[tokio::test]
async fn http_answers_for_requests_the_gateway_refuses() {
    let backend = echo_backend("b1").await;
    let yaml = "listener: {address: 127.0.0.1:0}\nconnections: {maxConnections: 1, backendConnectTimeoutSeconds: 1}\nroutes:\n  - {name: echo, pathPrefix: /echo, key: {source: Query, name: room}, backends: {BACKENDS}}\n  - {name: dead, pathPrefix: /dead, key: {source: Header, name: X-Id}, missingKey: Random, backends: [\"127.0.0.1:1\"]}\n";
    let gw = Gateway::start(yaml, &[backend]).await;
    let status = |resp: String| resp.lines().next().unwrap_or("").to_owned();
    assert_eq!(
        status(support::raw(gw.addr, &support::upgrade_request("/nowhere", "")).await),
        "HTTP/1.1 404 Not Found"
    );
    let missing = support::raw(gw.addr, &support::upgrade_request("/echo", "")).await;
    assert_eq!(status(missing.clone()), "HTTP/1.1 400 Bad Request");
    assert!(
        missing.contains("needs a key: query parameter room"),
        "{missing}"
    );
    let v8 = String::from_utf8(support::upgrade_request("/echo?room=1", ""))
        .expect("utf-8")
        .replace("Version: 13", "Version: 8");
    let wrong = support::raw(gw.addr, v8.as_bytes()).await;
    assert_eq!(status(wrong.clone()), "HTTP/1.1 426 Upgrade Required");
    assert!(wrong.contains("Sec-WebSocket-Version: 13"));
    assert_eq!(
        status(support::raw(gw.addr, b"GET /echo?room=1 HTTP/1.1\r\nHost: x\r\n\r\n").await),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status(support::raw(gw.addr, &support::upgrade_request("/dead", "")).await),
        "HTTP/1.1 502 Bad Gateway"
    );
    // The connection limit: one connection held, the next is refused.
    let (_held, _) = connect(&gw.url("/echo?room=1")).await;
    let over = support::raw(gw.addr, &support::upgrade_request("/echo?room=2", "")).await;
    assert_eq!(status(over), "HTTP/1.1 503 Service Unavailable");
    let metrics = gw.shared.metrics.render();
    for outcome in [
        "no_route",
        "missing_key",
        "wrong_version",
        "not_websocket",
        "backend_refused",
        "over_limit",
        "ok",
    ] {
        assert!(
            metrics.contains(&format!(
                "ringway_handshakes_total{{outcome=\"{outcome}\"}} 1"
            )),
            "{outcome} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_does_not_answer_gets_504() {
    // Accepts TCP, never answers the upgrade.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = Gateway::echo(
        &[addr],
        "connections: {backendHandshakeTimeoutSeconds: 0.3}\n",
    )
    .await;
    let resp = support::raw(gw.addr, &support::upgrade_request("/echo?room=1", "")).await;
    assert!(resp.starts_with("HTTP/1.1 504 Gateway Timeout"), "{resp}");
}

#[tokio::test]
async fn slow_or_huge_handshakes_are_cut_off() {
    let backend = echo_backend("b1").await;
    let gw = Gateway::echo(
        &[backend],
        "connections: {handshakeTimeoutSeconds: 0.3, maxRequestHeaderBytes: 1024}\n",
    )
    .await;
    let start = tokio::time::Instant::now();
    let slow = support::raw(gw.addr, b"GET /echo?room=1 HTTP/1.1\r\nHost: x\r\n").await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let huge = format!(
        "GET /echo?room=1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let resp = support::raw(gw.addr, huge.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let metrics = gw.shared.metrics.render();
    assert!(
        metrics.contains("ringway_handshakes_total{outcome=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringway_handshakes_total{outcome=\"headers_too_large\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_header_key_routes_like_a_query_key() {
    let backends = [echo_backend("b1").await, echo_backend("b2").await];
    let yaml = "listener: {address: 127.0.0.1:0}\nroutes:\n  - {name: dev, pathPrefix: /, key: {source: Header, name: X-Device}, backends: {BACKENDS}}\n";
    let gw = Gateway::start(yaml, &backends).await;
    let (_a, first) = connect_with(&gw.url("/"), &[("x-device", "d-42")])
        .await
        .expect("connect");
    for _ in 0..5 {
        let (_b, again) = connect_with(&gw.url("/any/path"), &[("X-Device", "d-42")])
            .await
            .expect("connect");
        assert_eq!(first, again);
    }
}

/// The close `(code, reason)` counts in a status's owner tally.
fn owned_closes(status: &ringway_dataplane_api::v1::PodStatus) -> Vec<(u32, String, u64)> {
    let owned = status.owned.as_ref().expect("the owner's tally");
    owned
        .closes
        .iter()
        .map(|c| (c.code, c.reason.clone(), c.count))
        .collect()
}

#[tokio::test]
async fn the_status_reports_the_upgrades_closes_and_lifetimes_of_owned_connections() {
    let backend = echo_backend("b1").await;
    let yaml = "listener: {address: 127.0.0.1:0}\nconnections: {maxFrameBytes: 1024, maxMessageBytes: 4096, backendConnectTimeoutSeconds: 1}\nroutes:\n  - {name: echo, pathPrefix: /echo, key: {source: Query, name: room}, backends: {BACKENDS}}\n  - {name: dead, pathPrefix: /dead, key: {source: Query, name: room}, backends: [\"127.0.0.1:1\"]}\n";
    let gw = Gateway::start(yaml, &[backend]).await;
    let (mut kept, _) = connect(&gw.url("/echo?room=1")).await;
    let (mut too_big, _) = connect(&gw.url("/echo?room=2")).await;
    let refused = support::raw(gw.addr, &support::upgrade_request("/dead?room=3", "")).await;
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = gw.shared.status();
    let owned = before.owned.clone().expect("the owner's tally");
    assert_eq!(owned.upgrades, 3, "two to the echo backend, one refused");
    let failures: Vec<(&str, u64)> = owned
        .upgrade_failures
        .iter()
        .map(|r| (r.reason.as_str(), r.count))
        .collect();
    assert_eq!(failures, [("backend_refused", 1)]);
    assert!(owned.connection_millis >= 2 * 50, "{owned:?}");
    assert!(owned_closes(&before).is_empty());

    too_big
        .send(Message::binary(vec![1u8; 5000]))
        .await
        .expect("send");
    let (code, _) = close_of(&mut too_big).await.expect("a close frame");
    assert_eq!(code, 1009);
    let closed = (1009, "client_protocol_error".to_owned(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let status = gw.shared.status();
        if owned_closes(&status).contains(&closed) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let later = after.owned.expect("the owner's tally");
    assert_eq!(owned_closes(&gw.shared.status()), [closed]);
    assert_eq!(later.boot, owned.boot, "the same process");
    assert_eq!(later.upgrades, 3);
    assert!(later.connection_millis > owned.connection_millis);
    assert!(later.failures.is_empty(), "{later:?}");

    kept.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        next_data(&mut kept).await,
        Some(Message::text("still here"))
    );
    kept.close(None).await.expect("close");
    gw.stop(ringway_dataplane::Shutdown::Fast).await;
}

//! Sidecar mode in this process: the application's preStop request (from
//! the pod's loopback here; the drain token's check is admin.rs's unit
//! tests) drains every client with 1001 and the reconnect hint and is
//! answered once they are gone, then the sidecar stays up refusing new
//! clients until it is stopped, and then stops at once.

mod support;

use std::{net::SocketAddr, time::Duration};

use futures_util::SinkExt;
use ringway_dataplane::{Server, Shutdown};
use support::{Gateway, connect, loopback, next_data, prestop};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

/// A sidecar in front of the application at `app`, draining over `window`
/// seconds, without a drain token.
async fn sidecar(app: SocketAddr, window: f64) -> Gateway {
    let args = support::sidecar_args(app, window);
    let config = args.config().expect("valid flags");
    Gateway::serve(
        Server::bind_sidecar(config, None, args.control())
            .await
            .expect("the sidecar binds"),
    )
}

/// Stops `gw` (SIGTERM) and checks that it took at most `within`.
async fn stops_within(gw: Gateway, within: Duration) {
    let start = Instant::now();
    gw.stop(Shutdown::Graceful).await;
    assert!(
        start.elapsed() <= within,
        "the sidecar took {:?} to stop",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prestop_drain_closes_every_client_then_the_sidecar_refuses_new_ones_until_stopped() {
    let app = support::echo_backend("app").await;
    let gw = sidecar(app, 0.5).await;
    let client_port = loopback(gw.addr);
    let admin = loopback(gw.admin.expect("an admin port"));
    let mut clients = Vec::new();
    for i in 0..10 {
        let (mut ws, backend) = connect(&format!("ws://{client_port}/chat?room={i}")).await;
        assert_eq!(backend, "app");
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        assert_eq!(
            next_data(&mut ws).await,
            Some(Message::text(format!("hello {i}")))
        );
        clients.push(ws);
    }
    let drained = tokio::spawn(async move {
        let answer = support::raw(admin, &prestop()).await;
        (answer, Instant::now())
    });
    let mut last_close = Instant::now();
    for mut ws in clients {
        let (code, reason) = support::close_of(&mut ws).await.expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
        assert!(
            reason.starts_with("pod stopping; retry-after-ms="),
            "{reason}"
        );
        last_close = Instant::now();
    }
    let (answer, answered) = drained.await.expect("the preStop request");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("drained\n"),
        "{answer}"
    );
    assert!(answered >= last_close, "answered before the last close");
    assert!(
        !gw.task.is_finished(),
        "the sidecar stays up after the drain"
    );
    let ready = support::raw(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let refused = support::raw(
        client_port,
        &support::upgrade_request("/chat?room=late", ""),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let metrics = gw.shared.metrics.render();
    for line in [
        "ringway_drains_total{cause=\"shutdown\"} 10",
        "ringway_drain_cut_connections_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    stops_within(gw, Duration::from_secs(2)).await;
}

/// An application that takes WebSockets and then never reads from them, so
/// that it never answers a close.
async fn deaf_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(ws);
            });
        }
    });
    addr
}

/// A connection whose close is not answered within the drain window and the
/// close timeout is counted as cut, and the answer says so; the stop that
/// follows does not wait for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_time_is_up_says_how_many_it_cut() {
    let gw = sidecar(deaf_app().await, 0.2).await;
    let admin = loopback(gw.admin.expect("an admin port"));
    let (_ws, _) = connect(&format!("ws://{}/", loopback(gw.addr))).await;
    let start = Instant::now();
    // Not `support::raw`, which gives up after 5 s: the drain takes the
    // window and the close timeout (5 s).
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        let mut stream = TcpStream::connect(admin).await.expect("connect");
        stream.write_all(&prestop()).await.expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("the drain answers within its time");
    let took = start.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.ends_with("drain time is up; connections cut: 1\n"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_secs(5) && took <= Duration::from_secs(7),
        "answered after {took:?} (window 0.2 s + close timeout 5 s)"
    );
    let metrics = gw.shared.metrics.render();
    assert!(
        metrics.contains("ringway_drain_cut_connections_total 1"),
        "{metrics}"
    );
    stops_within(gw, Duration::from_secs(2)).await;
}

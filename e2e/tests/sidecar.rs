//! Sidecar mode end to end, with real processes: `ringway-chat` as the
//! application and `ringway-dataplane sidecar` in front of it, as the
//! injector sets them up in a pod. Clients chat through the sidecar; the
//! application's preStop request (`GET /drain?wait=true` with the drain
//! token) closes every one of them with 1001 and the reconnect hint at a
//! message boundary, without losing a message, and is answered only once
//! the last is gone, while the application keeps serving throughout. Then
//! the sidecar refuses new clients (503) until its SIGTERM, on which it
//! exits at once.

use std::{net::SocketAddr, path::Path, time::Duration};

use futures_util::{SinkExt, StreamExt};
use ringway_e2e::{
    fleet::{Binaries, EchoProcess},
    sidecar::SidecarProcess,
};
use serde_json::Value;
use tokio::{
    net::TcpStream,
    process::Command,
    sync::watch,
    time::{Instant, timeout},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The room every client joins.
const ROOM: &str = "lobby";

/// Clients that chat through the sidecar.
const CLIENTS: usize = 6;

/// Joins the room at `address` (the sidecar or the application itself)
/// and reads the welcome.
async fn join(address: SocketAddr) -> Ws {
    let url = format!("ws://{address}/chat?room={ROOM}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("joins");
    let welcome = next_event(&mut ws).await.expect("a welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// What a chat client reads next: a chat event, or how it ended.
enum Read {
    Event(Value),
    Closed(u16, String),
}

async fn read(ws: &mut Ws) -> Read {
    loop {
        let next = timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("something within 10 s");
        match next {
            Some(Ok(Message::Text(text))) => {
                return Read::Event(serde_json::from_str(&text).expect("chat JSON"));
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                return Read::Closed(u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn next_event(ws: &mut Ws) -> Option<Value> {
    match read(ws).await {
        Read::Event(event) => Some(event),
        Read::Closed(..) => None,
    }
}

/// The text of a chat message event.
fn text(event: &Value) -> &str {
    assert_eq!(event["type"], "message", "{event}");
    event["text"].as_str().expect("a text")
}

/// What one client through the sidecar saw until its close.
struct Seen {
    texts: Vec<String>,
    code: u16,
    reason: String,
    closed_at: Instant,
}

async fn read_until_closed(mut ws: Ws) -> Seen {
    let mut texts = Vec::new();
    loop {
        match read(&mut ws).await {
            Read::Event(event) => texts.push(text(&event).to_owned()),
            Read::Closed(code, reason) => {
                return Seen {
                    texts,
                    code,
                    reason,
                    closed_at: Instant::now(),
                };
            }
        }
    }
}

/// Says `d0`, `d1`, ... to the room directly on the application, each
/// once its previous one came back, until `stop` turns true; how many it
/// said. Panics if the application stops answering.
async fn talk_directly(mut ws: Ws, stop: watch::Receiver<bool>) -> (Ws, usize) {
    let mut said = 0;
    while !*stop.borrow() {
        let mine = format!("d{said}");
        ws.send(Message::text(mine.clone()))
            .await
            .expect("the application takes it");
        while let Some(event) = next_event(&mut ws).await {
            if text(&event) == mine {
                break;
            }
        }
        said += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ws, said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prestop_drain_closes_every_client_without_loss_while_the_application_serves() {
    let binaries = Binaries::beside(env!("CARGO_BIN_EXE_ringway-echo")).expect("binaries");
    let chat = Path::new(env!("CARGO_BIN_EXE_ringway-chat"));
    let app = EchoProcess::start(chat, "app", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the chat application starts");
    let window = [
        "--drain-window-seconds",
        "1",
        "--max-closes-per-second",
        "100",
    ];
    let window: Vec<String> = window.map(str::to_owned).to_vec();
    let mut sidecar = SidecarProcess::start(&binaries.dataplane, app.address.port(), &window)
        .await
        .expect("the sidecar starts");

    // Clients chat through the sidecar: each hears everyone.
    let direct = join(app.address).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(join(sidecar.client).await);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("c{i}"))).await.expect("send");
    }
    let everyone: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    for ws in &mut clients {
        let mut heard = Vec::new();
        while heard.len() < CLIENTS {
            heard.push(text(&next_event(ws).await.expect("a message")).to_owned());
        }
        heard.sort();
        assert_eq!(heard, everyone);
    }
    let mut direct = direct;
    for _ in 0..CLIENTS {
        next_event(&mut direct)
            .await
            .expect("the direct client hears them too");
    }

    // The application keeps talking to the room while the sidecar drains.
    let (stop_talking, stop) = watch::channel(false);
    let talker = tokio::spawn(talk_directly(direct, stop));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(read_until_closed(ws)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let answer = sidecar.pre_stop().await;
    let answered = Instant::now();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("drained\n"),
        "{answer}"
    );
    for reader in readers {
        let seen = reader.await.expect("a client");
        assert_eq!(seen.code, 1001, "{}", seen.reason);
        assert!(
            seen.reason.starts_with("pod stopping; retry-after-ms="),
            "{}",
            seen.reason
        );
        assert!(
            seen.closed_at <= answered,
            "the drain answered before a client was gone"
        );
        // Every message the application said reached it, in order, up to
        // its close: nothing lost or cut in the middle.
        let numbers: Vec<usize> = seen
            .texts
            .iter()
            .map(|t| {
                t.strip_prefix('d')
                    .and_then(|n| n.parse().ok())
                    .expect("d<n>")
            })
            .collect();
        assert_eq!(
            numbers,
            (0..numbers.len()).collect::<Vec<_>>(),
            "a gap or a reorder"
        );
        assert!(
            !numbers.is_empty(),
            "the client heard the application before its close"
        );
    }
    assert!(
        answered - started >= Duration::from_millis(700),
        "{CLIENTS} closes paced over a 1 s window took {:?}",
        answered - started
    );

    // The application served throughout, and still does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_talking.send(true).expect("the talker listens");
    let (mut direct, said) = talker.await.expect("the application kept answering");
    assert!(
        said > 10,
        "the application answered only {said} messages during the drain"
    );

    // Drained: the sidecar is up but not ready, and refuses new clients.
    assert!(
        sidecar.child.try_wait().expect("status").is_none(),
        "the sidecar stays up"
    );
    assert!(sidecar.get("/readyz", "").await.starts_with("HTTP/1.1 503"));
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/chat?room={ROOM}", sidecar.client)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("a new client must get 503, got {other:?}"),
    }
    let metrics = sidecar.get("/metrics", "").await;
    assert!(
        metrics.contains(&format!(
            "ringway_drains_total{{cause=\"shutdown\"}} {CLIENTS}"
        )),
        "{metrics}"
    );

    // SIGTERM (the kubelet's, after the application exited): at once.
    let pid = sidecar.child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = timeout(Duration::from_secs(3), sidecar.child.wait())
        .await
        .expect("the sidecar exits at once")
        .expect("its status");
    assert!(status.success(), "{status:?}");
    direct
        .send(Message::text("still here"))
        .await
        .expect("send");
    assert_eq!(
        next_event(&mut direct).await.as_ref().map(text),
        Some("still here")
    );
}

//! The load generator and the echo backend as processes: what each
//! subcommand reports against a real `ringway-echo`, and how `idle
//! --until-closed` sees a server that drains its connections at a bounded
//! rate.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A `ringway-echo` process on a port of its choosing, killed on drop.
struct Echo {
    _child: Child,
    url: String,
}

async fn start_echo(id: &str) -> Echo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway-echo"))
        .args(["--listen", "127.0.0.1:0", "--id", id, "--workers", "1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ringway-echo starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("ringway-echo says where it listens")
    .expect("reading ringway-echo's stdout");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("an address")
        .to_owned();
    Echo {
        _child: child,
        url: format!("ws://{addr}/echo"),
    }
}

/// Runs `ringway-load <args> --json`; its exit status and JSON report.
async fn load(args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringway-load"))
        .args(args)
        .arg("--json")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("ringway-load stops by itself")
        .expect("ringway-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.success(), json, stderr)
}

#[tokio::test]
async fn a_probe_sees_the_backend_named_in_the_upgrade_response() {
    let echo = start_echo("b7").await;
    let (ok, report, stderr) = load(&["probe", "--url", &echo.url, "--keys", "5"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(report["keys_per_backend"]["b7"], 5, "{report}");
    assert_eq!(report["sticky"], true);
}

#[tokio::test]
async fn a_probe_of_nothing_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    drop(listener);
    let (ok, report, _) = load(&["probe", "--url", &url, "--keys", "2", "--repeat", "1"]).await;
    assert!(!ok);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["failed"], 2);
}

#[tokio::test]
async fn latency_measures_the_round_trip_of_every_message_sent() {
    let echo = start_echo("b1").await;
    let (ok, report, stderr) = load(&[
        "latency",
        "--url",
        &echo.url,
        "--connections",
        "20",
        "--rate",
        "400",
        "--duration",
        "1",
        "--warmup",
        "0.3",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(report["opened"], 20, "{report}");
    let sent = report["sent"].as_u64().unwrap();
    assert!(
        (340..=460).contains(&sent),
        "about 400 sent in 1 s: {report}"
    );
    assert_eq!(report["received"], sent, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["round_trip"]["count"], sent, "{report}");
    assert!(report["round_trip"]["p50_us"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn throughput_echoes_megabyte_messages_in_a_window() {
    let echo = start_echo("b1").await;
    let (ok, report, stderr) = load(&[
        "throughput",
        "--url",
        &echo.url,
        "--connections",
        "2",
        "--window",
        "2",
        "--size",
        "1048576",
        "--duration",
        "0.5",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(report["echoed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["echoed_total"], report["sent_total"], "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

#[tokio::test]
async fn idle_holds_connections_from_several_source_addresses() {
    let echo = start_echo("b1").await;
    let (ok, report, stderr) = load(&[
        "idle",
        "--url",
        &echo.url,
        "--connections",
        "200",
        "--hold",
        "0.5",
        "--sources",
        "127.0.0.2-127.0.0.5",
        "--ramp",
        "0",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(report["opened"], 200, "{report}");
    assert_eq!(report["still_open"], 200, "{report}");
    assert_eq!(report["closed"], 0, "{report}");
}

#[tokio::test]
async fn idle_connections_that_echo_get_every_message_back() {
    let echo = start_echo("b1").await;
    let (ok, report, stderr) = load(&[
        "idle",
        "--url",
        &echo.url,
        "--connections",
        "20",
        "--hold",
        "1.5",
        "--echo-every",
        "0.2",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(report["still_open"], 20, "{report}");
    let echo = &report["echo"];
    let count = |field: &str| echo[field].as_u64().unwrap_or_else(|| panic!("{report}"));
    // About 7 per connection in 1.5 s.
    assert!(count("sent") > 20, "{report}");
    assert_eq!(count("lost"), 0, "{report}");
    assert_eq!(
        count("echoed") + count("in_flight_at_close"),
        count("sent"),
        "{report}"
    );
    assert_eq!(echo["lost_examples"], serde_json::json!([]), "{report}");
}

#[tokio::test]
async fn idle_connections_that_do_not_echo_report_nothing_about_echoes() {
    let echo = start_echo("b1").await;
    let (ok, report, stderr) = load(&[
        "idle",
        "--url",
        &echo.url,
        "--connections",
        "2",
        "--hold",
        "0.2",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(report.get("echo").is_none(), "{report}");
}

#[tokio::test]
async fn more_connections_than_one_process_may_hold_are_refused() {
    let (ok, _, stderr) = load(&[
        "idle",
        "--url",
        "ws://127.0.0.1:9/",
        "--connections",
        "19001",
    ])
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("run several ringway-load processes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_echo_answers_pings_and_closes_and_echoes_text_and_binary() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let echo = start_echo("b1").await;
    let (mut ws, response) = tokio_tungstenite::connect_async(echo.url.as_str())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-ringway-backend"], "b1");
    ws.send(Message::text("héllo")).await.unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("héllo"));
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.close(Some(normal.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Close(Some(normal))
    );
    assert!(
        ws.next().await.is_none(),
        "the echo closes the socket after the close handshake"
    );
}

/// A server that takes `count` connections, then closes them with 1001
/// (going away), one every `every`, as a drain capped at a rate does.
async fn draining_server(listener: TcpListener, count: usize, every: Duration) {
    let mut held = Vec::new();
    while held.len() < count {
        let (stream, _) = listener.accept().await.expect("accept");
        held.push(
            tokio_tungstenite::accept_async(stream)
                .await
                .expect("upgrade"),
        );
    }
    let mut tick = tokio::time::interval(every);
    for ws in held {
        tick.tick().await;
        tokio::spawn(close_going_away(ws));
    }
}

/// Closes with 1001 "draining" and reads until the client's answer ends it.
async fn close_going_away(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    let going_away = CloseFrame {
        code: CloseCode::Away,
        reason: "draining".into(),
    };
    let _ = ws.close(Some(going_away)).await;
    while ws.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_until_closed_reports_close_codes_and_closes_per_second() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    // 30 closes at 20/s: about 1.5 s, about 20 in one second.
    let server = tokio::spawn(draining_server(listener, 30, Duration::from_millis(50)));
    let (ok, report, stderr) = load(&[
        "idle",
        "--url",
        &url,
        "--connections",
        "30",
        "--hold",
        "20",
        "--until-closed",
    ])
    .await;
    server.await.unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(report["closed"], 30, "{report}");
    assert_eq!(report["still_open"], 0, "{report}");
    assert_eq!(report["close_codes"]["1001"], 30, "{report}");
    // Loose bounds: a busy machine delays the server's ticks and the
    // generator's reads, and both catch up in bursts.
    let span = report["close_span_seconds"].as_f64().unwrap();
    assert!((1.0..6.0).contains(&span), "{report}");
    let peak = report["peak_closes_per_second"].as_u64().unwrap();
    assert!((10..=30).contains(&peak), "{report}");
    let per_second: Vec<u64> = serde_json::from_value(report["closes_per_second"].clone()).unwrap();
    assert_eq!(per_second.iter().sum::<u64>(), 30);
}

/// A server that takes `count` connections, reads what each sends without
/// echoing it, and closes each with 1001 after `after`: every message sent
/// well before the close is lost.
async fn silent_closing_server(listener: TcpListener, count: usize, after: Duration) {
    let mut connections = Vec::new();
    for _ in 0..count {
        let (stream, _) = listener.accept().await.expect("accept");
        connections.push(tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(stream)
                .await
                .expect("upgrade");
            let _ = tokio::time::timeout(after, async { while ws.next().await.is_some() {} }).await;
            close_going_away(ws).await;
        }));
    }
    for connection in connections {
        connection.await.expect("a connection of the server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_server_never_echoes_before_its_close_are_lost() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(silent_closing_server(listener, 5, Duration::from_secs(2)));
    let (ok, report, stderr) = load(&[
        "idle",
        "--url",
        &url,
        "--connections",
        "5",
        "--hold",
        "20",
        "--until-closed",
        "--echo-every",
        "0.2",
    ])
    .await;
    server.await.unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(report["close_codes"]["1001"], 5, "{report}");
    let echo = &report["echo"];
    let count = |field: &str| echo[field].as_u64().unwrap_or_else(|| panic!("{report}"));
    assert_eq!(count("echoed"), 0, "{report}");
    // About 10 per connection in 2 s, all but the last 0.5 s's lost.
    assert!(count("lost") >= 10, "{report}");
    assert_eq!(
        count("lost") + count("in_flight_at_close"),
        count("sent"),
        "{report}"
    );
    let examples = echo["lost_examples"].as_array().unwrap();
    assert_eq!(examples.len(), 5, "{report}");
    assert!(
        examples
            .iter()
            .all(|e| e.as_str().unwrap().ends_with(" s before close")),
        "{report}"
    );
}

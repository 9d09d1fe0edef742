use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};

use super::*;

/// A server on 127.0.0.1:0, neither synced nor leading; it stops when
/// `stop` is used or dropped.
struct Server {
    address: SocketAddr,
    synced: watch::Sender<bool>,
    leading: watch::Sender<bool>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(metrics: Arc<Metrics>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (synced, synced_rx) = watch::channel(false);
    let (leading, leading_rx) = watch::channel(false);
    let readiness = Readiness {
        synced: synced_rx,
        leading: leading_rx,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, metrics, readiness, async {
        let _ = stopped.await;
    }));
    Server {
        address,
        synced,
        leading,
        stop,
        task,
    }
}

/// Sends `method path` and reads the whole response.
async fn request(address: SocketAddr, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: operator\r\nUser-Agent: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    response
}

async fn get(address: SocketAddr, path: &str) -> String {
    request(address, "GET", path).await
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
    server.synced.send_replace(true);
    server.leading.send_replace(true);
    let readyz = get(server.address, "/readyz?verbose").await;
    assert_eq!(status_line(&readyz), "HTTP/1.1 200 OK");
    // Still ready when the controller's senders are gone.
    let Server {
        address,
        synced,
        leading,
        stop,
        task,
    } = server;
    drop((synced, leading));
    assert_eq!(
        status_line(&get(address, "/readyz").await),
        "HTTP/1.1 200 OK"
    );
    drop(stop);
    task.await.expect("serve does not panic");
}

/// Every combination of synced and leading, as each readiness path answers
/// it.
#[tokio::test]
async fn readiness_is_synced_and_leading_and_informer_sync_is_synced_alone() {
    let server = start(Arc::new(Metrics::new())).await;
    let status = |ok: bool| {
        if ok {
            "HTTP/1.1 200 OK"
        } else {
            "HTTP/1.1 503 Service Unavailable"
        }
    };
    for synced in [false, true] {
        for leading in [false, true] {
            server.synced.send_replace(synced);
            server.leading.send_replace(leading);
            let case = format!("synced {synced}, leading {leading}");
            for (path, ok) in [
                ("/readyz", synced && leading),
                ("/readyz/informer-sync", synced),
                ("/readyz/leader-election", leading),
            ] {
                let response = get(server.address, path).await;
                assert_eq!(status_line(&response), status(ok), "{path}, {case}");
                let expected = if ok { "ready\n" } else { "not ready\n" };
                assert_eq!(body(&response), expected, "{path}, {case}");
            }
            let sync_line = if synced {
                "[+]informer-sync ok"
            } else {
                "[-]informer-sync failed: the controller's watches have not synced"
            };
            let lease_line = if leading {
                "[+]leader-election ok"
            } else {
                "[-]leader-election failed: this replica does not hold the leader Lease"
            };
            let verdict = if synced && leading {
                "passed"
            } else {
                "failed"
            };
            let verbose = get(server.address, "/readyz?verbose").await;
            assert_eq!(
                body(&verbose),
                format!("{sync_line}\n{lease_line}\nreadyz check {verdict}\n"),
                "{case}"
            );
            let verbose = get(server.address, "/readyz/informer-sync?verbose=1").await;
            let verdict = if synced { "passed" } else { "failed" };
            assert_eq!(
                body(&verbose),
                format!("{sync_line}\nreadyz check {verdict}\n"),
                "{case}"
            );
        }
    }
}

#[test]
fn verbose_is_a_query_parameter_with_or_without_a_value() {
    for (uri, wanted) in [
        ("/readyz", false),
        ("/readyz?verbose", true),
        ("/readyz?verbose=1", true),
        ("/readyz?exclude=x&verbose", true),
        ("/readyz?verbosely", false),
        ("/readyz?x=verbose", false),
    ] {
        let uri: Uri = uri.parse().expect("a URI");
        assert_eq!(verbose(&uri), wanted, "{uri}");
    }
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

/// Malformed requests, oversized or slow ones and shutdown are
/// ringway-http's tests.
#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_refused() {
    let server = start(Arc::new(Metrics::new())).await;
    let a = server.address;
    for path in ["/", "/metrics/x", "/readyz/ping", "/readyz/"] {
        assert_eq!(
            status_line(&get(a, path).await),
            "HTTP/1.1 404 Not Found",
            "{path}"
        );
    }
    let post = request(a, "POST", "/metrics").await;
    assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
    assert!(post.contains("\r\nAllow: GET,HEAD\r\n"), "{post}");
}

//! The admin port: `/healthz`, `/readyz`, `/metrics` and `POST /drain`
//! (also `GET /drain?wait=true`, for a preStop hook). A small HTTP/1.1
//! server, one request per connection.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use crate::{handshake::error_response, server::Shared};

const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin port until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &shared).await {
                tracing::debug!(error = %e, "admin request failed");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let (method, path) = loop {
        let n = match timeout(READ_TIMEOUT, stream.read(&mut buf[len..])).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                stream
                    .write_all(&error_response(400, "bad request", &[]))
                    .await?;
                return Ok(());
            }
        }
    };
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    let response = match (method.as_str(), route) {
        ("GET", "/healthz") => ok("text/plain", "ok\n".into()),
        ("GET", "/readyz") if shared.is_ready() => ok("text/plain", "ready\n".into()),
        ("GET", "/readyz") => error_response(503, "not ready", &[]),
        ("GET", "/metrics") => ok(
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        ("POST", "/drain") => drain(shared, wants_wait(query)).await,
        // The kubelet's preStop `httpGet` hook can only send GET, so GET
        // drains too, but only with `wait=true`: that is what the hook
        // sends, and a stray GET (a browser, a crawler, a curious `curl`)
        // must not stop the pod.
        ("GET", "/drain") if wants_wait(query) => drain(shared, true).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/drain") => {
            error_response(405, "method not allowed", &[])
        }
        _ => error_response(404, "not found", &[]),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Stops accepting and drains every connection, then the process exits
/// (see `Server::run`); with `wait`, answers once every connection has
/// closed.
async fn drain(shared: &Shared, wait: bool) -> Vec<u8> {
    shared.request_drain();
    if wait {
        shared.wait_drained().await;
        ok("text/plain", "drained\n".into())
    } else {
        ok(
            "text/plain",
            format!("draining {} connections\n", shared.registry.len()),
        )
    }
}

/// `wait=true` (or `wait=1`) among the query parameters: answer once the
/// drain has finished.
fn wants_wait(query: &str) -> bool {
    query.split('&').any(|p| p == "wait=true" || p == "wait=1")
}

fn ok(content_type: &str, body: String) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

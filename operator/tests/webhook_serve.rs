//! The sidecar injector's webhook as the API server sees it: a TLS
//! handshake with a client that trusts only the webhook's CA, then
//! `POST /mutate-pods` answered by the handler; what it refuses (too
//! large, not JSON, other paths and methods, clients that do not trust
//! the CA), and a new certificate served without a restart.

#![allow(clippy::unwrap_used, missing_docs)]

use std::{net::SocketAddr, sync::Arc};

use axum::body::Bytes;
use ringway_operator::{
    metrics::Metrics,
    webhook::{
        Handler,
        certs::{Decision, WebhookTls},
        serve::{self, MAX_BODY_BYTES, ServingCert},
    },
};
use rustls::{ClientConfig, RootCertStore, crypto::ring};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_rustls::TlsConnector;

const HOST: &str = "hook.ringway.svc";

fn issue() -> WebhookTls {
    let names = [HOST.to_owned(), format!("{HOST}.cluster.local")];
    WebhookTls::issue(Decision::Create, None, &names).unwrap()
}

struct Webhook {
    address: SocketAddr,
    cert: Arc<ServingCert>,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
}

/// The webhook on 127.0.0.1, serving `tls`, its handler answering
/// `answer:` and the review it got.
async fn start(tls: &WebhookTls) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let cert = Arc::new(ServingCert::default());
    cert.store(&tls.cert, &tls.key).unwrap();
    let metrics = Arc::new(Metrics::new());
    let handler: Handler = Arc::new(|review: Bytes| {
        Box::pin(async move { [b"answer:".as_slice(), &review].concat() })
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve::serve(
        listener,
        Arc::clone(&cert),
        handler,
        Arc::clone(&metrics),
        async move {
            let _ = stopped.await;
        },
    ));
    Webhook {
        address,
        cert,
        metrics,
        _stop: stop,
    }
}

/// Sends `request` over TLS trusting only `ca_pem`; the whole response,
/// or the handshake's error.
async fn exchange(address: SocketAddr, ca_pem: &str, request: &[u8]) -> std::io::Result<String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(address).await?;
    let server = ServerName::try_from(HOST).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await?;
    tls.write_all(request).await?;
    let mut response = Vec::new();
    // The server closes after its answer; a TLS close without close_notify
    // after the answer still leaves the answer read.
    let _ = tls.read_to_end(&mut response).await;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn post(path: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn assert_counted(webhook: &Webhook, result: &str) {
    assert!(counted(webhook, result), "{}", webhook.metrics.render());
}

fn counted(webhook: &Webhook, result: &str) -> bool {
    webhook
        .metrics
        .render()
        .lines()
        .any(|l| l == format!("ringway_operator_webhook_requests_total{{result=\"{result}\"}} 1"))
}

#[tokio::test]
async fn a_review_is_answered_by_the_handler_over_tls() {
    let tls = issue();
    let webhook = start(&tls).await;
    let review = r#"{"kind":"AdmissionReview","request":{"uid":"u-1"}}"#;
    let response = exchange(
        webhook.address,
        &tls.ca_cert,
        &post("/mutate-pods", "application/json", review),
    )
    .await
    .unwrap();
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
    assert!(
        response.contains("Content-Type: application/json"),
        "{response}"
    );
    assert!(
        response.ends_with(&format!("answer:{review}")),
        "{response}"
    );
    assert_counted(&webhook, "answered");
}

#[tokio::test]
async fn a_body_over_a_mebibyte_is_refused() {
    let tls = issue();
    let webhook = start(&tls).await;
    let declared = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        MAX_BODY_BYTES + 1
    );
    let response = exchange(webhook.address, &tls.ca_cert, declared.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 413 Payload Too Large",
        "{response}"
    );
    // Chunked, so that only reading tells the size.
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let chunked = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let response = exchange(webhook.address, &tls.ca_cert, chunked.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 413 Payload Too Large",
        "{response}"
    );
}

#[tokio::test]
async fn other_paths_methods_and_media_types_are_refused() {
    let tls = issue();
    let webhook = start(&tls).await;
    let ask = |request: Vec<u8>| {
        let (address, ca) = (webhook.address, tls.ca_cert.clone());
        async move { exchange(address, &ca, &request).await }
    };
    let other_path = ask(post("/validate", "application/json", "{}"))
        .await
        .unwrap();
    assert_eq!(status_line(&other_path), "HTTP/1.1 404 Not Found");
    let get = format!("GET /mutate-pods HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes();
    let get = ask(get).await.unwrap();
    assert_eq!(status_line(&get), "HTTP/1.1 405 Method Not Allowed");
    let text = ask(post("/mutate-pods", "text/plain", "{}")).await.unwrap();
    assert_eq!(status_line(&text), "HTTP/1.1 415 Unsupported Media Type");
    assert_counted(&webhook, "refused");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let tls = issue();
    let webhook = start(&tls).await;
    let stranger = issue();
    let request = post("/mutate-pods", "application/json", "{}");
    assert!(
        exchange(webhook.address, &stranger.ca_cert, &request)
            .await
            .is_err()
    );
    // The server counts the failure once the handshake has ended.
    for _ in 0..100 {
        if counted(&webhook, "tls_failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_counted(&webhook, "tls_failed");
}

#[tokio::test]
async fn a_new_certificate_is_served_from_the_next_handshake() {
    let old = issue();
    let webhook = start(&old).await;
    let new = issue();
    webhook.cert.store(&new.cert, &new.key).unwrap();
    let request = post("/mutate-pods", "application/json", "{}");
    let response = exchange(webhook.address, &new.ca_cert, &request)
        .await
        .unwrap();
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(
        exchange(webhook.address, &old.ca_cert, &request)
            .await
            .is_err()
    );
}
